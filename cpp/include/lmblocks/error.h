// Exceptions that cross into Python as the matching built-in type (see python/bindings/module.cpp).
#pragma once
#include <stdexcept>
#include <string>

namespace lb {

struct TypeError : std::runtime_error { using std::runtime_error::runtime_error; };   // -> TypeError
struct ValueError : std::runtime_error { using std::runtime_error::runtime_error; };  // -> ValueError
struct IndexError : std::runtime_error { using std::runtime_error::runtime_error; };  // -> IndexError
struct IOError : std::runtime_error { using std::runtime_error::runtime_error; };     // -> OSError

}  // namespace lb

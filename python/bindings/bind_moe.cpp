// lb._core.nn's Mixture-of-Experts blocks (cpp/include/lmblocks/moe.h).
#include "lmblocks/blocks.h"

#include "bindings.h"

namespace lb::py_bind {

void bind_moe(py::module_ m) { (void)m; }

}  // namespace lb::py_bind

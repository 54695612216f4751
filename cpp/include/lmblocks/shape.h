// lb::Shape: a tensor's extents (or byte strides), at most kMaxDims of them, held inline.
// Tensors are made, viewed and reshaped thousands of times per decoded token. With a std::vector
// each of those cost two heap allocations (shape and strides): ~6,000 malloc/free pairs per
// SmolLM2 decode step, 8% of its time. The interface is the subset of std::vector's the code uses;
// growing past kMaxDims throws ValueError (a tensor that large is refused anyway).
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <type_traits>

#include "lmblocks/error.h"

namespace lb {

constexpr int kMaxDims = 8;

class Shape {
 public:
  using value_type = int64_t;
  using size_type = size_t;
  using iterator = int64_t*;
  using const_iterator = const int64_t*;
  using reference = int64_t&;
  using const_reference = const int64_t&;

  Shape() = default;
  Shape(std::initializer_list<int64_t> v) : Shape(v.begin(), v.end()) {}
  explicit Shape(size_t n, int64_t fill = 0) { assign(n, fill); }
  template <class It, class = std::enable_if_t<!std::is_integral_v<It>>>
  Shape(It first, It last) {
    for (; first != last; ++first) push_back(int64_t(*first));
  }

  size_t size() const { return n_; }
  bool empty() const { return n_ == 0; }
  static constexpr size_t max_size() { return kMaxDims; }
  int64_t* data() { return v_; }
  const int64_t* data() const { return v_; }
  iterator begin() { return v_; }
  iterator end() { return v_ + n_; }
  const_iterator begin() const { return v_; }
  const_iterator end() const { return v_ + n_; }
  int64_t& operator[](size_t i) { return v_[i]; }
  int64_t operator[](size_t i) const { return v_[i]; }
  int64_t& front() { return v_[0]; }
  int64_t front() const { return v_[0]; }
  int64_t& back() { return v_[n_ - 1]; }
  int64_t back() const { return v_[n_ - 1]; }

  void clear() { n_ = 0; }
  void reserve(size_t n) const { check(n); }
  void push_back(int64_t x) {
    check(size_t(n_) + 1);
    v_[n_++] = x;
  }
  void pop_back() { --n_; }
  void resize(size_t n, int64_t fill = 0) {
    check(n);
    for (size_t i = n_; i < n; ++i) v_[i] = fill;
    n_ = uint8_t(n);
  }
  void assign(size_t n, int64_t fill) {
    n_ = 0;
    resize(n, fill);
  }
  iterator insert(const_iterator pos, int64_t x) {
    const size_t i = size_t(pos - v_);
    check(size_t(n_) + 1);
    std::copy_backward(v_ + i, v_ + n_, v_ + n_ + 1);
    v_[i] = x;
    ++n_;
    return v_ + i;
  }
  iterator erase(const_iterator pos) {
    const size_t i = size_t(pos - v_);
    std::copy(v_ + i + 1, v_ + n_, v_ + i);
    --n_;
    return v_ + i;
  }

  friend bool operator==(const Shape& a, const Shape& b) {
    return a.n_ == b.n_ && std::equal(a.begin(), a.end(), b.begin());
  }
  friend bool operator!=(const Shape& a, const Shape& b) { return !(a == b); }

 private:
  static void check(size_t n) {
    if (n > size_t(kMaxDims))
      throw ValueError("a shape has at most " + std::to_string(kMaxDims) + " dimensions, got " + std::to_string(n));
  }
  int64_t v_[kMaxDims] = {};
  uint8_t n_ = 0;
};

}  // namespace lb

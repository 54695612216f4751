// Checks the blocks share: a weight matrix's dtype and shape, told in the block's own words.
#pragma once
#include <string>

#include "lmblocks/dtype.h"
#include "lmblocks/error.h"
#include "lmblocks/tensor.h"

namespace lb::blocks::detail {

// A (rows, cols) weight that linear() can read (f32, f16, bf16 or a ggml block type); cols < 0: any.
inline void check_matrix(const Tensor& w, int64_t rows, int64_t cols, const char* block, const char* name) {
  if (!w.defined() || w.ndim() != 2 || w.dim(0) != rows || (cols >= 0 && w.dim(1) != cols))
    throw ValueError(std::string(block) + ": " + name + " has shape " +
                     (w.defined() ? shape_str(w.shape()) : std::string("none")) + "; expected (" +
                     std::to_string(rows) + ", " + (cols >= 0 ? std::to_string(cols) : std::string("D")) + ")");
  if (!traits(w.dtype()).to_float || w.dtype() == DType::f64)
    throw TypeError(std::string(block) + ": " + name + " has dtype " + lb::name(w.dtype()) +
                    "; expected f32, f16, bf16 or a ggml block type");
}

// An optional (n,) vector (a bias, a norm weight): undefined, or 1-D of n.
inline void check_vector(const Tensor& b, int64_t n, const char* block, const char* name) {
  if (b.defined() && (b.ndim() != 1 || b.dim(0) != n))
    throw ValueError(std::string(block) + ": " + name + " has shape " + shape_str(b.shape()) + "; expected (" +
                     std::to_string(n) + ",)");
}

}  // namespace lb::blocks::detail

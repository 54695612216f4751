// Checks the blocks share: a weight matrix's dtype and shape, told in the block's own words.
#pragma once
#include <string>

#include "lmblocks/blocks.h"
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

// A low-rank adapter for a (rows, cols) projection: undefined, or A (r, cols) and B (rows, r).
inline void check_adapter(const LowRank& a, int64_t rows, int64_t cols, const char* block, const std::string& proj) {
  if (!a.A.defined() && !a.B.defined()) return;
  if (!a.A.defined() || !a.B.defined())
    throw ValueError(std::string(block) + ": adapter " + proj + " needs both lora_A and lora_B");
  const std::string na = proj + ".lora_A", nb = proj + ".lora_B";
  if (a.A.ndim() != 2) throw ValueError(std::string(block) + ": " + na + " has shape " + shape_str(a.A.shape()) + "; expected (r, " + std::to_string(cols) + ")");
  check_matrix(a.A, a.A.dim(0), cols, block, na.c_str());
  check_matrix(a.B, rows, a.A.dim(0), block, nb.c_str());
}

}  // namespace lb::blocks::detail

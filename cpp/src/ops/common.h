// Checks and plumbing shared by the Tensor-level ops (baseline build only).
#pragma once
#include <algorithm>
#include <initializer_list>
#include <string>

#include "lmblocks/error.h"
#include "lmblocks/ops.h"
#include "lmblocks/runtime.h"
#include "lmblocks/tensor.h"

namespace lb::ops::detail {

inline bool is_float_input(DType t) { return t == DType::f32 || t == DType::f16 || t == DType::bf16; }

inline void check_float(const Tensor& t, const char* op, const char* arg) {
  if (!t.defined()) throw TypeError(std::string(op) + ": " + arg + " is missing");
  if (!is_float_input(t.dtype()))
    throw TypeError(std::string(op) + ": " + arg + " has dtype " + name(t.dtype()) + "; expected f32, f16 or bf16");
}

inline void check_ndim(const Tensor& t, int lo, int hi, const char* op, const char* arg) {
  if (t.ndim() < lo || t.ndim() > hi)
    throw ValueError(std::string(op) + ": " + arg + " must have " +
                     (lo == hi ? std::to_string(lo) : std::to_string(lo) + " to " + std::to_string(hi)) +
                     " dimensions, got shape " + shape_str(t.shape()));
}

// The input as a contiguous f32 tensor: itself when it already is one, else a converted copy.
inline Tensor f32_contiguous(const Tensor& t, const char* op, const char* arg) {
  check_float(t, op, arg);
  if (t.dtype() == DType::f32 && t.is_contiguous()) return t;
  Tensor r = Tensor::empty(t.shape(), DType::f32);
  copy(t, r);
  return r;
}

// f32 with its address and every stride a multiple of 4 bytes: readable as floats in place.
inline bool is_f32_aligned(const Tensor& t) {
  bool ok = t.dtype() == DType::f32 && reinterpret_cast<uintptr_t>(t.raw()) % 4 == 0;
  for (int i = 0; ok && i < t.ndim(); ++i) ok = t.strides()[i] % 4 == 0;
  return ok;
}

// The tensor itself when it is f32 with a contiguous last axis and float-aligned strides (kernels
// then read its rows in place, whatever the outer strides), else a contiguous f32 copy.
inline Tensor f32_rows(const Tensor& t, const char* op, const char* arg) {
  check_float(t, op, arg);
  bool ok = is_f32_aligned(t);
  if (ok && t.ndim() > 0 && t.dim(-1) > 1) ok = t.strides().back() == 4;
  return ok ? t : f32_contiguous(t, op, arg);
}

inline bool overlaps(const Tensor& a, const Tensor& b) {
  if (!a.defined() || !b.defined() || a.numel() == 0 || b.numel() == 0) return false;
  auto [alo, ahi] = a.byte_span();
  auto [blo, bhi] = b.byte_span();
  return alo < bhi && blo < ahi;
}

inline bool same_view(const Tensor& a, const Tensor& b) {
  return a.raw() == b.raw() && a.shape() == b.shape() && a.strides() == b.strides() && a.dtype() == b.dtype();
}

struct Input {
  const Tensor& t;
  const char* name;
  bool in_place_ok;  // the op reads each element before writing the same element of out
};

// The output: allocated when undefined, else checked (shape, f32, contiguous, writable, aliasing).
inline Tensor prepare_out(Tensor out, const Shape& shape, const char* op, std::initializer_list<Input> inputs) {
  if (!out.defined()) return Tensor::empty(shape, DType::f32);
  if (out.dtype() != DType::f32)
    throw TypeError(std::string(op) + ": out has dtype " + name(out.dtype()) + "; expected f32");
  if (out.shape() != shape)
    throw ValueError(std::string(op) + ": out has shape " + shape_str(out.shape()) + "; expected " + shape_str(shape));
  if (!out.is_contiguous()) throw ValueError(std::string(op) + ": out must be contiguous");
  if (out.readonly()) throw ValueError(std::string(op) + ": out is read-only");
  for (const Input& in : inputs) {
    if (!overlaps(out, in.t)) continue;
    if (in.in_place_ok && same_view(out, in.t)) continue;
    throw ValueError(std::string(op) + ": out overlaps " + in.name +
                     (in.in_place_ok ? " without being the same array (only exact in-place is safe)"
                                     : "; this op cannot run in place"));
  }
  return out;
}

// Rows of a (rows, d) problem split over the pool in chunks of about 16K elements.
template <class F>
void for_rows(int64_t rows, int64_t d, F&& fn) {
  parallel_for(rows, std::max<int64_t>(1, 16384 / std::max<int64_t>(d, 1)), fn);
}

inline int64_t leading_rows(const Tensor& t) { return t.ndim() == 0 ? 1 : t.numel() / std::max<int64_t>(t.dim(-1), 1); }

}  // namespace lb::ops::detail

// Conversions between element types, and the strided copy every op uses to make inputs contiguous.
#include <cstring>

#include "ops/convert.h"


namespace lb::kernels {
#if LB_SIMD
namespace LB_ISA {
using namespace simd;
void f16_to_f32(const uint16_t* x, float* y, int64_t n) {
  int64_t i = 0;
  for (; i + W <= n; i += W) store(y + i, load_f16(x + i));
  for (; i < n; ++i) y[i] = lb::f16_to_f32(x[i]);
}
void bf16_to_f32(const uint16_t* x, float* y, int64_t n) {
  int64_t i = 0;
  for (; i + W <= n; i += W) store(y + i, load_bf16(x + i));
  for (; i < n; ++i) y[i] = lb::bf16_to_f32(x[i]);
}
void f32_to_f16(const float* x, uint16_t* y, int64_t n) {
  int64_t i = 0;
  for (; i + W <= n; i += W) store_f16(y + i, load(x + i));
  for (; i < n; ++i) y[i] = lb::f32_to_f16(x[i]);
}
}  // namespace LB_ISA
#else
void f16_to_f32_ref(const uint16_t* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = lb::f16_to_f32(x[i]);
}
void bf16_to_f32_ref(const uint16_t* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = lb::bf16_to_f32(x[i]);
}
void f32_to_f16_ref(const float* x, uint16_t* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = lb::f32_to_f16(x[i]);
}
#endif
}  // namespace lb::kernels

#if !LB_SIMD
#include "ops/common.h"

namespace lb::ops {
LB_REGISTER_FAMILY(convert, true, "f16/bf16 <-> f32");

namespace {

double load_as_double(const std::byte* p, DType t) {
  switch (t) {
    case DType::f32: { float v; std::memcpy(&v, p, 4); return v; }
    case DType::f64: { double v; std::memcpy(&v, p, 8); return v; }
    case DType::f16: { uint16_t v; std::memcpy(&v, p, 2); return f16_to_f32(v); }
    case DType::bf16: { uint16_t v; std::memcpy(&v, p, 2); return bf16_to_f32(v); }
    case DType::i8: return double(*reinterpret_cast<const int8_t*>(p));
    case DType::u8: return double(*reinterpret_cast<const uint8_t*>(p));
    case DType::i16: { int16_t v; std::memcpy(&v, p, 2); return v; }
    case DType::i32: { int32_t v; std::memcpy(&v, p, 4); return v; }
    case DType::i64: { int64_t v; std::memcpy(&v, p, 8); return double(v); }
    default: throw TypeError(std::string("copy: cannot convert from ") + name(t));
  }
}

template <class T> void put(std::byte* p, T v) { std::memcpy(p, &v, sizeof(T)); }

void store_from_double(std::byte* p, DType t, double v) {
  switch (t) {
    case DType::f32: return put(p, float(v));
    case DType::f64: return put(p, v);
    case DType::f16: return put(p, f32_to_f16(float(v)));
    case DType::bf16: return put(p, f32_to_bf16(float(v)));
    case DType::i8: return put(p, int8_t(v));
    case DType::u8: return put(p, uint8_t(v));
    case DType::i16: return put(p, int16_t(v));
    case DType::i32: return put(p, int32_t(v));
    case DType::i64: return put(p, int64_t(v));
    default: throw TypeError(std::string("copy: cannot convert to ") + name(t));
  }
}

// Calls fn(src_row, dst_row, n, src_step, dst_step) for every innermost row of the two views.
template <class F>
void for_each_row(const Tensor& s, const Tensor& d, F&& fn) {
  const int nd = s.ndim();
  if (nd == 0) return fn(static_cast<const std::byte*>(s.raw()), static_cast<std::byte*>(d.raw()), 1, 0, 0);
  const int64_t inner = s.shape().back();
  const int64_t rows = s.numel() / std::max<int64_t>(inner, 1);
  if (inner == 0) return;
  for (int64_t r = 0; r < rows; ++r) {
    int64_t rem = r, so = 0, dof = 0;
    for (int i = nd - 2; i >= 0; --i) {
      const int64_t idx = rem % s.shape()[i];
      rem /= s.shape()[i];
      so += idx * s.strides()[i];
      dof += idx * d.strides()[i];
    }
    fn(static_cast<const std::byte*>(s.raw()) + so, static_cast<std::byte*>(d.raw()) + dof, inner,
       s.strides().back(), d.strides().back());
  }
}

}  // namespace

void copy(const Tensor& src, Tensor& dst) {
  if (src.shape() != dst.shape())
    throw ValueError("copy: shape " + shape_str(src.shape()) + " does not match " + shape_str(dst.shape()));
  if (dst.readonly()) throw ValueError("copy: destination is read-only");
  const int64_t n = src.numel();
  if (n == 0) return;
  const DType st = src.dtype(), dt = dst.dtype();
  if (is_quantized(st) || is_quantized(dt)) {
    if (st != dt) throw TypeError(std::string("copy: cannot convert ") + name(st) + " to " + name(dt) + "; use lb.dequantize / lb.quantize");
    const int64_t rb = row_bytes(st, src.shape().back()), rows = n / src.shape().back();
    for (int64_t r = 0; r < rows; ++r) {
      int64_t rem = r, so = 0, dof = 0;
      for (int i = src.ndim() - 2; i >= 0; --i) {
        const int64_t idx = rem % src.shape()[i];
        rem /= src.shape()[i];
        so += idx * src.strides()[i];
        dof += idx * dst.strides()[i];
      }
      std::memcpy(static_cast<std::byte*>(dst.raw()) + dof, static_cast<const std::byte*>(src.raw()) + so, size_t(rb));
    }
    return;
  }
  if (src.is_contiguous() && dst.is_contiguous()) {
    if (st == dt) {
      std::memcpy(dst.raw(), src.raw(), size_t(src.nbytes()));
      return;
    }
    if (dt == DType::f32 && (st == DType::f16 || st == DType::bf16)) {
      auto fn = st == DType::f16 ? LB_DISPATCH(f16_to_f32) : LB_DISPATCH(bf16_to_f32);
      const uint16_t* x = src.data<uint16_t>();
      float* y = dst.data<float>();
      parallel_for(n, 1 << 16, [&](int64_t b, int64_t e) { fn(x + b, y + b, e - b); });
      return;
    }
    if (st == DType::f32 && dt == DType::f16) {
      auto fn = LB_DISPATCH(f32_to_f16);
      parallel_for(n, 1 << 16, [&](int64_t b, int64_t e) { fn(src.data<float>() + b, dst.data<uint16_t>() + b, e - b); });
      return;
    }
  }
  for_each_row(src, dst, [&](const std::byte* s, std::byte* d, int64_t len, int64_t ss, int64_t ds) {
    if (st == dt) {
      const int64_t item = src.itemsize();
      for (int64_t i = 0; i < len; ++i) std::memcpy(d + i * ds, s + i * ss, size_t(item));
    } else if (st == DType::f32 && dt == DType::f32) {
      for (int64_t i = 0; i < len; ++i) put(d + i * ds, *reinterpret_cast<const float*>(s + i * ss));
    } else {
      for (int64_t i = 0; i < len; ++i) store_from_double(d + i * ds, dt, load_as_double(s + i * ss, st));
    }
  });
}

}  // namespace lb::ops
#endif

// Elementwise a + b and a * b with NumPy broadcasting. Both operands are viewed at the broadcast
// shape, dims that are laid out alike are merged, and the innermost run goes to a vector kernel
// (both contiguous, or one a scalar); any other inner stride takes a strided scalar loop.
#include <algorithm>
#include <cmath>

#include "ops/kernel.h"

// a, b, y: (n,).
LB_DECLARE_KERNEL(void, add_vv, (const float* a, const float* b, float* y, int64_t n))
LB_DECLARE_KERNEL(void, mul_vv, (const float* a, const float* b, float* y, int64_t n))
// a, y: (n,); s a scalar.
LB_DECLARE_KERNEL(void, add_vs, (const float* a, float s, float* y, int64_t n))
LB_DECLARE_KERNEL(void, mul_vs, (const float* a, float s, float* y, int64_t n))

namespace lb::kernels {
#if LB_SIMD
namespace LB_ISA {
using namespace simd;
namespace {

// y = f(a, b); loads precede stores within a step, so y may equal a or b.
template <class F>
inline void zip(const float* a, const float* b, float* y, int64_t n, F f) {
  int64_t i = 0;
  for (; i + 2 * W <= n; i += 2 * W) {
    const V r0 = f(load(a + i), load(b + i)), r1 = f(load(a + i + W), load(b + i + W));
    store(y + i, r0);
    store(y + i + W, r1);
  }
  for (; i < n; i += W) {
    const int k = int(std::min<int64_t>(W, n - i));
    store_n(y + i, f(load_n(a + i, k), load_n(b + i, k)), k);
  }
}

template <class F>
inline void map_scalar(const float* a, float s, float* y, int64_t n, F f) {
  const V vs = set1(s);
  int64_t i = 0;
  for (; i + 2 * W <= n; i += 2 * W) {
    const V r0 = f(load(a + i), vs), r1 = f(load(a + i + W), vs);
    store(y + i, r0);
    store(y + i + W, r1);
  }
  for (; i < n; i += W) {
    const int k = int(std::min<int64_t>(W, n - i));
    store_n(y + i, f(load_n(a + i, k), vs), k);
  }
}

}  // namespace

void add_vv(const float* a, const float* b, float* y, int64_t n) { zip(a, b, y, n, [](V p, V q) { return p + q; }); }
void mul_vv(const float* a, const float* b, float* y, int64_t n) { zip(a, b, y, n, [](V p, V q) { return p * q; }); }
void add_vs(const float* a, float s, float* y, int64_t n) { map_scalar(a, s, y, n, [](V p, V q) { return p + q; }); }
void mul_vs(const float* a, float s, float* y, int64_t n) { map_scalar(a, s, y, n, [](V p, V q) { return p * q; }); }
}  // namespace LB_ISA
#else
void add_vv_ref(const float* a, const float* b, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = a[i] + b[i];
}
void mul_vv_ref(const float* a, const float* b, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = a[i] * b[i];
}
void add_vs_ref(const float* a, float s, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = a[i] + s;
}
void mul_vs_ref(const float* a, float s, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = a[i] * s;
}
#endif
}  // namespace lb::kernels

#if !LB_SIMD
#include <cstdint>

#include "ops/common.h"

namespace lb::ops {
LB_REGISTER_FAMILY(elementwise, true, "add, mul");

namespace {

using VVFn = void (*)(const float*, const float*, float*, int64_t);
using VSFn = void (*)(const float*, float, float*, int64_t);

Shape broadcast_shape(const Tensor& a, const Tensor& b, const char* op) {
  const int nd = std::max(a.ndim(), b.ndim());
  Shape s(size_t(nd), 1);
  for (int i = 0; i < nd; ++i) {
    const int ia = i - (nd - a.ndim()), ib = i - (nd - b.ndim());
    const int64_t da = ia >= 0 ? a.shape()[ia] : 1, db = ib >= 0 ? b.shape()[ib] : 1;
    if (da != db && da != 1 && db != 1)
      throw ValueError(std::string(op) + ": shapes " + shape_str(a.shape()) + " and " + shape_str(b.shape()) +
                       " cannot be broadcast together");
    s[i] = da == 1 ? db : da;
  }
  return s;
}

// f32 with element-aligned strides can be read in place; anything else is converted to a contiguous copy.
Tensor as_f32(const Tensor& t, const char* op, const char* arg) {
  detail::check_float(t, op, arg);
  bool ok = t.dtype() == DType::f32 && reinterpret_cast<uintptr_t>(t.raw()) % alignof(float) == 0;
  for (int64_t s : t.strides()) ok = ok && s % int64_t(sizeof(float)) == 0;
  return ok ? t : detail::f32_contiguous(t, op, arg);
}

// The broadcast problem with size-1 dims dropped and mergeable neighbours fused; strides in
// elements, outermost first. The output is contiguous in the same order.
struct Layout {
  int k = 0;
  int64_t n[kMaxDims], sa[kMaxDims], sb[kMaxDims];
};

Layout collapse(const Shape& shape, const Tensor& av, const Tensor& bv) {
  Layout l;
  for (int i = int(shape.size()) - 1; i >= 0; --i) {
    if (shape[i] == 1) continue;
    const int64_t sa = av.strides()[i] / int64_t(sizeof(float)), sb = bv.strides()[i] / int64_t(sizeof(float));
    // l.k - 1 is the dim just inside this one (collected innermost first); merging keeps its stride.
    if (l.k > 0 && sa == l.sa[l.k - 1] * l.n[l.k - 1] && sb == l.sb[l.k - 1] * l.n[l.k - 1]) {
      l.n[l.k - 1] *= shape[i];
    } else {
      l.n[l.k] = shape[i];
      l.sa[l.k] = sa;
      l.sb[l.k] = sb;
      ++l.k;
    }
  }
  std::reverse(l.n, l.n + l.k);
  std::reverse(l.sa, l.sa + l.k);
  std::reverse(l.sb, l.sb + l.k);
  return l;
}

template <class Op>
Tensor binary(const Tensor& a_in, const Tensor& b_in, Tensor out, const char* op, VVFn vv, VSFn vs, Op f) {
  detail::check_float(a_in, op, "a");
  detail::check_float(b_in, op, "b");
  const Shape shape = broadcast_shape(a_in, b_in, op);
  // Every output element reads only the same element of a same-shaped a or b, so exact in-place is safe.
  out = detail::prepare_out(out, shape, op, {{a_in, "a", true}, {b_in, "b", true}});
  const Tensor a = as_f32(a_in, op, "a"), b = as_f32(b_in, op, "b");
  if (out.numel() == 0) return out;

  const Layout l = collapse(shape, a.broadcast_to(shape), b.broadcast_to(shape));
  const float* ap = a.data<float>();
  const float* bp = b.data<float>();
  float* yp = out.data<float>();
  if (l.k == 0) {
    yp[0] = f(ap[0], bp[0]);
    return out;
  }
  const int64_t inner = l.n[l.k - 1], ia = l.sa[l.k - 1], ib = l.sb[l.k - 1];
  // One inner run: y[0:len] = a[0:len:ia] op b[0:len:ib]. Addition and multiplication commute
  // exactly in IEEE arithmetic, so a scalar a can go through the (vector, scalar) kernel.
  auto run = [&](const float* pa, const float* pb, float* py, int64_t len) {
    if (ia == 1 && ib == 1) vv(pa, pb, py, len);
    else if (ia == 1 && ib == 0) vs(pa, *pb, py, len);
    else if (ia == 0 && ib == 1) vs(pb, *pa, py, len);
    else
      for (int64_t i = 0; i < len; ++i) py[i] = f(pa[i * ia], pb[i * ib]);
  };

  const int64_t rows = out.numel() / inner;
  if (rows == 1) {
    parallel_for(inner, 1 << 15, [&](int64_t c0, int64_t c1) { run(ap + c0 * ia, bp + c0 * ib, yp + c0, c1 - c0); });
    return out;
  }
  detail::for_rows(rows, inner, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      int64_t rem = r, oa = 0, ob = 0;
      for (int i = l.k - 2; i >= 0; --i) {
        const int64_t idx = rem % l.n[i];
        rem /= l.n[i];
        oa += idx * l.sa[i];
        ob += idx * l.sb[i];
      }
      run(ap + oa, bp + ob, yp + r * inner, inner);
    }
  });
  return out;
}

}  // namespace

Tensor add(const Tensor& a, const Tensor& b, Tensor out) {
  return binary(a, b, std::move(out), "add", LB_DISPATCH(add_vv), LB_DISPATCH(add_vs),
                [](float x, float y) { return x + y; });
}

Tensor mul(const Tensor& a, const Tensor& b, Tensor out) {
  return binary(a, b, std::move(out), "mul", LB_DISPATCH(mul_vv), LB_DISPATCH(mul_vs),
                [](float x, float y) { return x * y; });
}

}  // namespace lb::ops
#endif

// RMSNorm (Zhang & Sennrich 2019): y = x / sqrt(mean(x^2) + eps) * (offset + w).
// offset = 1 gives Gemma's (1 + w) form without rewriting its weights.
#include "ops/kernel.h"

// x, y: (d,) one row; w: (d,) or null for no scale.
LB_DECLARE_KERNEL(void, rms_norm, (const float* x, const float* w, float* y, int64_t d, float eps, float offset))

namespace lb::kernels {
#if LB_SIMD
namespace LB_ISA {
using namespace simd;
void rms_norm(const float* x, const float* w, float* y, int64_t d, float eps, float offset) {
  V acc0 = set1(0.f), acc1 = set1(0.f);
  int64_t i = 0;
  for (; i + 2 * W <= d; i += 2 * W) {
    V a = load(x + i), b = load(x + i + W);
    acc0 = fma(a, a, acc0);
    acc1 = fma(b, b, acc1);
  }
  for (; i < d; i += W) {
    V a = load_n(x + i, int(std::min<int64_t>(W, d - i)));
    acc0 = fma(a, a, acc0);
  }
  const V scale = set1(1.f / std::sqrt(hsum(acc0 + acc1) / float(d) + eps));
  const V off = set1(offset);
  for (i = 0; i < d; i += W) {
    const int n = int(std::min<int64_t>(W, d - i));
    V v = (n == W ? load(x + i) : load_n(x + i, n)) * scale;
    if (w) v = v * ((n == W ? load(w + i) : load_n(w + i, n)) + off);
    n == W ? store(y + i, v) : store_n(y + i, v, n);
  }
}
}  // namespace LB_ISA
#else
void rms_norm_ref(const float* x, const float* w, float* y, int64_t d, float eps, float offset) {
  float ss = 0.f;
  for (int64_t i = 0; i < d; ++i) ss += x[i] * x[i];
  const float scale = 1.f / std::sqrt(ss / float(d) + eps);
  for (int64_t i = 0; i < d; ++i) y[i] = x[i] * scale * (w ? offset + w[i] : 1.f);
}
#endif
}  // namespace lb::kernels

#if !LB_SIMD
#include "ops/common.h"

namespace lb::ops {
LB_REGISTER_FAMILY(rms_norm, true, "");

Tensor rms_norm(const Tensor& x_in, const Tensor& w_in, float eps, float offset, Tensor out) {
  constexpr const char* op = "rms_norm";
  detail::check_ndim(x_in, 1, kMaxDims, op, "x");
  const int64_t d = x_in.dim(-1);
  Tensor w;
  if (w_in.defined()) {
    if (w_in.ndim() != 1 || w_in.dim(0) != d)
      throw ValueError(std::string(op) + ": weight has shape " + shape_str(w_in.shape()) + "; expected (" +
                       std::to_string(d) + ",) to match the last axis of x " + shape_str(x_in.shape()));
    w = detail::f32_contiguous(w_in, op, "weight");
  }
  if (!(eps >= 0.f)) throw ValueError(std::string(op) + ": eps must be >= 0");
  const Tensor x = detail::f32_contiguous(x_in, op, "x");
  out = detail::prepare_out(out, x_in.shape(), op, {{x_in, "x", true}, {w_in, "weight", false}});
  const auto fn = LB_DISPATCH(rms_norm);
  const float* xp = x.data<float>();
  const float* wp = w.defined() ? w.data<float>() : nullptr;
  float* yp = out.data<float>();
  detail::for_rows(detail::leading_rows(x), d, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) fn(xp + r * d, wp, yp + r * d, d, eps, offset);
  });
  return out;
}

}  // namespace lb::ops
#endif

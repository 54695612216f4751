// LayerNorm (Ba et al. 2016): y = (x - mean) / sqrt(var + eps) * w + b, biased variance (as PyTorch).
// Two passes per row: the mean, then centered sums of (x - m) and (x - m)^2. The first sum
// corrects the mean for the rounding of pass one (Chan, Golub & LeVeque's corrected two-pass),
// so rows with a large offset keep full relative accuracy.
#include <algorithm>
#include <cmath>

#include "ops/kernel.h"

// x, y: (d,) one row; w, b: (d,) or null (scale 1, shift 0).
LB_DECLARE_KERNEL(void, layer_norm, (const float* x, const float* w, const float* b, float* y, int64_t d, float eps))

namespace lb::kernels {
#if LB_SIMD
namespace LB_ISA {
using namespace simd;
void layer_norm(const float* x, const float* w, const float* b, float* y, int64_t d, float eps) {
  if (d <= 0) return;
  V a0 = set1(0.f), a1 = a0;
  int64_t i = 0;
  for (; i + 2 * W <= d; i += 2 * W) {
    a0 = a0 + load(x + i);
    a1 = a1 + load(x + i + W);
  }
  for (; i < d; i += W) a0 = a0 + load_n(x + i, int(std::min<int64_t>(W, d - i)));
  const float m0 = hsum(a0 + a1) / float(d);

  // Padding lanes load m0, so they add exactly 0 to both sums.
  const V vm0 = set1(m0);
  V c0 = set1(0.f), c1 = c0, q0 = c0, q1 = c0;
  for (i = 0; i + 2 * W <= d; i += 2 * W) {
    const V t0 = load(x + i) - vm0, t1 = load(x + i + W) - vm0;
    c0 = c0 + t0;
    c1 = c1 + t1;
    q0 = fma(t0, t0, q0);
    q1 = fma(t1, t1, q1);
  }
  for (; i < d; i += W) {
    const V t = load_n(x + i, int(std::min<int64_t>(W, d - i)), m0) - vm0;
    c0 = c0 + t;
    q0 = fma(t, t, q0);
  }
  const float dm = hsum(c0 + c1) / float(d);
  const float var = std::max(0.f, hsum(q0 + q1) / float(d) - dm * dm);
  // (x - m0) - dm rather than x - (m0 + dm): the first difference is exact for x near m0.
  const V vdm = set1(dm), rstd = set1(1.f / std::sqrt(var + eps));

  for (i = 0; i < d; i += W) {
    const int n = int(std::min<int64_t>(W, d - i));
    V v = ((n == W ? load(x + i) : load_n(x + i, n)) - vm0 - vdm) * rstd;
    if (w) v = v * (n == W ? load(w + i) : load_n(w + i, n));
    if (b) v = v + (n == W ? load(b + i) : load_n(b + i, n));
    n == W ? store(y + i, v) : store_n(y + i, v, n);
  }
}
}  // namespace LB_ISA
#else
void layer_norm_ref(const float* x, const float* w, const float* b, float* y, int64_t d, float eps) {
  if (d <= 0) return;
  // Sums in double: a serial float sum would lose ~d ulps.
  double s = 0.0;
  for (int64_t i = 0; i < d; ++i) s += x[i];
  const float m0 = float(s / double(d));
  double c = 0.0, q = 0.0;
  for (int64_t i = 0; i < d; ++i) {
    const float t = x[i] - m0;
    c += t;
    q += double(t) * t;
  }
  const float dm = float(c / double(d));
  const float var = float(std::max(0.0, q / double(d) - double(dm) * dm));
  const float rstd = 1.f / std::sqrt(var + eps);
  for (int64_t i = 0; i < d; ++i) {
    float v = (x[i] - m0 - dm) * rstd;
    if (w) v *= w[i];
    if (b) v += b[i];
    y[i] = v;
  }
}
#endif
}  // namespace lb::kernels

#if !LB_SIMD
#include "ops/common.h"

namespace lb::ops {
LB_REGISTER_FAMILY(layer_norm, true, "");

namespace {

// weight or bias: undefined, or (d,) converted to contiguous f32.
Tensor row_param(const Tensor& p, int64_t d, const Tensor& x, const char* arg) {
  if (!p.defined()) return p;
  detail::check_float(p, "layer_norm", arg);
  if (p.ndim() != 1 || p.dim(0) != d)
    throw ValueError(std::string("layer_norm: ") + arg + " has shape " + shape_str(p.shape()) + "; expected (" +
                     std::to_string(d) + ",) to match the last axis of x " + shape_str(x.shape()));
  return detail::f32_contiguous(p, "layer_norm", arg);
}

}  // namespace

Tensor layer_norm(const Tensor& x_in, const Tensor& w_in, const Tensor& b_in, float eps, Tensor out) {
  constexpr const char* op = "layer_norm";
  detail::check_float(x_in, op, "x");
  detail::check_ndim(x_in, 1, kMaxDims, op, "x");
  const int64_t d = x_in.dim(-1);
  const Tensor w = row_param(w_in, d, x_in, "weight");
  const Tensor b = row_param(b_in, d, x_in, "bias");
  if (!(eps >= 0.f)) throw ValueError(std::string(op) + ": eps must be >= 0");
  const Tensor x = detail::f32_contiguous(x_in, op, "x");
  out = detail::prepare_out(out, x_in.shape(), op,
                            {{x_in, "x", true}, {w_in, "weight", false}, {b_in, "bias", false}});
  const auto fn = LB_DISPATCH(layer_norm);
  const float* xp = x.data<float>();
  const float* wp = w.defined() ? w.data<float>() : nullptr;
  const float* bp = b.defined() ? b.data<float>() : nullptr;
  float* yp = out.data<float>();
  detail::for_rows(detail::leading_rows(x), d, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) fn(xp + r * d, wp, bp, yp + r * d, d, eps);
  });
  return out;
}

}  // namespace lb::ops
#endif

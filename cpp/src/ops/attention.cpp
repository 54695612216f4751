// Reference scaled dot-product attention (Vaswani et al. 2017) with grouped kv heads (Ainslie et al.
// 2023), sliding windows, an additive mask and Gemma 2's logit softcap. One query row at a time over
// its visible keys: scores, a stable softmax and the weighted sum of values, no (T, S) matrix.
#include "ops/kernel.h"

// One query row against the n keys it sees. q: (hd,); k: n rows (hd,) `ks` floats apart; v: n rows
// (hdv,) `vs` floats apart; mask: (n,) additive, or null; s: (n,) scratch; out: (hdv,).
// Zeros when no key is left (n == 0 or every score is -inf).
LB_DECLARE_KERNEL(void, attention_row,
                  (const float* q, const float* k, const float* v, const float* mask, float* s, float* out,
                   int64_t n, int64_t hd, int64_t hdv, int64_t ks, int64_t vs, float scale, float softcap))

namespace lb::kernels {
#if LB_SIMD
namespace LB_ISA {
using namespace simd;

namespace {
// tanh as Cephes tanhf: an odd polynomial below |x| = 0.625, where (1 - e) / (1 + e) with
// e = exp(-2|x|) would cancel; that form above, which cannot overflow.
inline V tanh_v(V x) {
  const V z = x * x, ax = abs(x);
  V p = set1(-5.70498872745e-3f);
  p = fma(p, z, set1(2.06390887954e-2f));
  p = fma(p, z, set1(-5.37397155531e-2f));
  p = fma(p, z, set1(1.33314422036e-1f));
  p = fma(p, z, set1(-3.33332819422e-1f));
  const V small = fma(p * z, x, x);
  const V e = exp_nonpos(ax * set1(-2.f));
  const V big = (set1(1.f) - e) / (set1(1.f) + e);
  return select_lt(ax, set1(0.625f), small, select_lt(x, set1(0.f), set1(0.f) - big, big));
}

inline V ld(const float* p, int n, float fill = 0.f) { return n == W ? load(p) : load_n(p, n, fill); }
inline void st(float* p, V a, int n) { n == W ? store(p, a) : store_n(p, a, n); }
}  // namespace

void attention_row(const float* q, const float* k, const float* v, const float* mask, float* s, float* out,
                   int64_t n, int64_t hd, int64_t hdv, int64_t ks, int64_t vs, float scale, float softcap) {
  // Scores, four keys per pass so each q chunk is loaded once for four dot products.
  int64_t j = 0;
  for (; j + 4 <= n; j += 4) {
    const float* k0 = k + j * ks;
    const float *k1 = k0 + ks, *k2 = k1 + ks, *k3 = k2 + ks;
    V a0 = set1(0.f), a1 = a0, a2 = a0, a3 = a0;
    for (int64_t i = 0; i < hd; i += W) {
      const int m = int(std::min<int64_t>(W, hd - i));
      const V qv = ld(q + i, m);
      a0 = fma(qv, ld(k0 + i, m), a0);
      a1 = fma(qv, ld(k1 + i, m), a1);
      a2 = fma(qv, ld(k2 + i, m), a2);
      a3 = fma(qv, ld(k3 + i, m), a3);
    }
    s[j] = hsum(a0) * scale;
    s[j + 1] = hsum(a1) * scale;
    s[j + 2] = hsum(a2) * scale;
    s[j + 3] = hsum(a3) * scale;
  }
  for (; j < n; ++j) {
    const float* kj = k + j * ks;
    V a = set1(0.f);
    for (int64_t i = 0; i < hd; i += W) {
      const int m = int(std::min<int64_t>(W, hd - i));
      a = fma(ld(q + i, m), ld(kj + i, m), a);
    }
    s[j] = hsum(a) * scale;
  }
  if (softcap > 0.f || mask) {
    const V c = set1(softcap), inv_c = set1(1.f / softcap);
    for (int64_t i = 0; i < n; i += W) {
      const int m = int(std::min<int64_t>(W, n - i));
      V x = ld(s + i, m);
      if (softcap > 0.f) x = c * tanh_v(x * inv_c);
      if (mask) x = x + ld(mask + i, m);
      st(s + i, x, m);
    }
  }
  V mx = set1(-INFINITY);
  for (int64_t i = 0; i < n; i += W) mx = max(mx, ld(s + i, int(std::min<int64_t>(W, n - i)), -INFINITY));
  const float smax = hmax(mx);
  if (n == 0 || smax == -INFINITY) {
    for (int64_t c = 0; c < hdv; c += W) st(out + c, set1(0.f), int(std::min<int64_t>(W, hdv - c)));
    return;
  }
  V sum = set1(0.f);
  const V mv = set1(smax);
  for (int64_t i = 0; i < n; i += W) {
    const int m = int(std::min<int64_t>(W, n - i));
    const V e = exp_nonpos(ld(s + i, m, -INFINITY) - mv);  // tail lanes give exp(-inf) = 0
    st(s + i, e, m);
    sum = sum + e;
  }
  const V inv = set1(1.f / hsum(sum));
  // Weighted values, a block of 4 vectors of out held in registers across all keys.
  int64_t c = 0;
  for (; c + 4 * W <= hdv; c += 4 * W) {
    V o0 = set1(0.f), o1 = o0, o2 = o0, o3 = o0;
    for (int64_t i = 0; i < n; ++i) {
      const float* vi = v + i * vs + c;
      const V e = set1(s[i]);
      o0 = fma(e, load(vi), o0);
      o1 = fma(e, load(vi + W), o1);
      o2 = fma(e, load(vi + 2 * W), o2);
      o3 = fma(e, load(vi + 3 * W), o3);
    }
    store(out + c, o0 * inv);
    store(out + c + W, o1 * inv);
    store(out + c + 2 * W, o2 * inv);
    store(out + c + 3 * W, o3 * inv);
  }
  for (; c < hdv; c += W) {
    const int m = int(std::min<int64_t>(W, hdv - c));
    V o = set1(0.f);
    for (int64_t i = 0; i < n; ++i) o = fma(set1(s[i]), ld(v + i * vs + c, m), o);
    st(out + c, o * inv, m);
  }
}
}  // namespace LB_ISA
#else
void attention_row_ref(const float* q, const float* k, const float* v, const float* mask, float* s, float* out,
                       int64_t n, int64_t hd, int64_t hdv, int64_t ks, int64_t vs, float scale, float softcap) {
  float smax = -INFINITY;
  for (int64_t j = 0; j < n; ++j) {
    float d = 0.f;
    for (int64_t i = 0; i < hd; ++i) d += q[i] * k[j * ks + i];
    float x = d * scale;
    if (softcap > 0.f) x = softcap * std::tanh(x / softcap);
    if (mask) x += mask[j];
    s[j] = x;
    smax = std::max(smax, x);
  }
  for (int64_t c = 0; c < hdv; ++c) out[c] = 0.f;
  if (n == 0 || smax == -INFINITY) return;
  float sum = 0.f;
  for (int64_t j = 0; j < n; ++j) {
    s[j] = std::exp(s[j] - smax);
    sum += s[j];
  }
  for (int64_t j = 0; j < n; ++j)
    for (int64_t c = 0; c < hdv; ++c) out[c] += s[j] * v[j * vs + c];
  const float inv = 1.f / sum;
  for (int64_t c = 0; c < hdv; ++c) out[c] *= inv;
}
#endif
}  // namespace lb::kernels

#if !LB_SIMD
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "ops/common.h"

namespace lb::ops {
LB_REGISTER_FAMILY(attention, true, "");

namespace {

float mask_value(const std::byte* p, DType t) {
  if (t == DType::f32) {
    float v;
    std::memcpy(&v, p, 4);
    return v;
  }
  uint16_t h;
  std::memcpy(&h, p, 2);
  return t == DType::f16 ? f16_to_f32(h) : bf16_to_f32(h);
}

}  // namespace

AttentionRowKernel attention_row_kernel() { return LB_DISPATCH(attention_row); }

Tensor attention(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in, const Tensor& mask_in,
                 const Attention& cfg, Tensor out) {
  constexpr const char* op = "attention";
  detail::check_float(q_in, op, "q");
  detail::check_float(k_in, op, "k");
  detail::check_float(v_in, op, "v");
  detail::check_ndim(q_in, 3, 4, op, "q");
  const int nd = q_in.ndim();
  const bool batched = nd == 4;
  const int64_t B = batched ? q_in.dim(0) : 1, T = q_in.dim(-3), H = q_in.dim(-2), hd = q_in.dim(-1);
  const std::string lead = batched ? "B=" + std::to_string(B) + ", " : "";
  if (k_in.ndim() != nd || (batched && k_in.dim(0) != B) || k_in.dim(-1) != hd || k_in.dim(-2) < 1 ||
      H % k_in.dim(-2) != 0)
    throw ValueError(std::string(op) + ": k has shape " + shape_str(k_in.shape()) + "; expected (" + lead +
                     "S, Hkv, " + std::to_string(hd) + ") with H=" + std::to_string(H) + " divisible by Hkv");
  const int64_t S = k_in.dim(-3), Hkv = k_in.dim(-2);
  if (v_in.ndim() != nd || (batched && v_in.dim(0) != B) || v_in.dim(-3) != S || v_in.dim(-2) != Hkv)
    throw ValueError(std::string(op) + ": v has shape " + shape_str(v_in.shape()) + "; expected (" + lead +
                     "S=" + std::to_string(S) + ", Hkv=" + std::to_string(Hkv) + ", hdv) to match k " +
                     shape_str(k_in.shape()));
  const int64_t hdv = v_in.dim(-1);
  if (T > S)
    throw ValueError(std::string(op) + ": q has T=" + std::to_string(T) + " tokens but k has S=" + std::to_string(S) +
                     "; expected T <= S (query t sits at position S - T + t)");
  if (cfg.window < 0)
    throw ValueError(std::string(op) + ": window must be >= 0 (0 means none), got " + std::to_string(cfg.window));
  if (!(cfg.softcap >= 0.f) || std::isinf(cfg.softcap))
    throw ValueError(std::string(op) + ": softcap must be finite and >= 0 (0 means none), got " +
                     std::to_string(cfg.softcap));

  Shape mshape = batched ? Shape{B, H, T, S} : Shape{H, T, S};
  Tensor mask;
  if (mask_in.defined()) {
    detail::check_float(mask_in, op, "mask");
    if (mask_in.ndim() > int(mshape.size()))
      throw ValueError(std::string(op) + ": mask has shape " + shape_str(mask_in.shape()) +
                       "; expected one broadcastable to " + shape_str(mshape));
    try {
      mask = mask_in.broadcast_to(mshape);
    } catch (const ValueError&) {
      throw ValueError(std::string(op) + ": mask has shape " + shape_str(mask_in.shape()) +
                       "; expected one broadcastable to " + (batched ? "(B, H, T, S) = " : "(H, T, S) = ") +
                       shape_str(mshape));
    }
  }

  Shape oshape = q_in.shape();
  oshape.back() = hdv;
  out = detail::prepare_out(out, oshape, op,
                            {{q_in, "q", false}, {k_in, "k", false}, {v_in, "v", false}, {mask_in, "mask", false}});
  if (out.numel() == 0) return out;
  const Tensor q = detail::f32_rows(q_in, op, "q"), k = detail::f32_rows(k_in, op, "k"), v = detail::f32_rows(v_in, op, "v");

  // Element strides; batch strides are 0 for 3-D inputs.
  const auto es = [&](const Tensor& t, int i) { return i < 0 ? int64_t(0) : t.strides()[size_t(i)] / 4; };
  const int o = batched ? 1 : 0;
  const int64_t qsb = es(q, o - 1), qst = es(q, o), qsh = es(q, o + 1);
  const int64_t ksb = es(k, o - 1), kss = es(k, o), ksh = es(k, o + 1);
  const int64_t vsb = es(v, o - 1), vss = es(v, o), vsh = es(v, o + 1);
  const float* qp = q.data<float>();
  const float* kp = k.data<float>();
  const float* vp = v.data<float>();
  float* yp = out.data<float>();

  const bool mask_direct =
      mask.defined() && detail::is_f32_aligned(mask) && (S == 1 || mask.strides().back() == 4);
  const int64_t msb = mask.defined() && batched ? mask.strides()[0] : 0;
  const int64_t msh = mask.defined() ? mask.strides()[size_t(o)] : 0;
  const int64_t mst = mask.defined() ? mask.strides()[size_t(o + 1)] : 0;
  const int64_t mss = mask.defined() ? mask.strides()[size_t(o + 2)] : 0;
  const std::byte* mp = mask.defined() ? static_cast<const std::byte*>(mask.raw()) : nullptr;

  const float scale = cfg.scale != 0.f ? cfg.scale : hd > 0 ? float(1.0 / std::sqrt(double(hd))) : 1.f;
  const float softcap = cfg.softcap;
  const int64_t w = cfg.window > 0 ? std::min<int64_t>(cfg.window, S) : 0;  // w >= S restricts nothing
  const int64_t group = H / Hkv;
  const auto fn = LB_DISPATCH(attention_row);

  // Rows (b, t, h). Causal rows grow with t, so t runs 0, T-1, 1, T-2, ... to give every contiguous
  // chunk of rows about the same work.
  const int64_t rows = B * T * H;
  const int64_t cost = std::max<int64_t>(1, S * (hd + hdv + 4));
  parallel_for(rows, std::max<int64_t>(1, 32768 / cost), [&](int64_t r0, int64_t r1) {
    std::vector<float> s(static_cast<size_t>(S)), mbuf(mask.defined() && !mask_direct ? static_cast<size_t>(S) : 0);
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t h = r % H, bt = r / H, b = bt / T, i = bt % T;
      const int64_t t = i % 2 == 0 ? i / 2 : T - 1 - i / 2;
      const int64_t p = S - T + t;  // absolute position of the query
      // Visible keys [lo, hi]. Causal: j <= p, and p - j < w with a window. Without causality the
      // window is symmetric, |p - j| < w (one-sided, it would leave every later key visible).
      int64_t lo = 0, hi = S - 1;
      if (cfg.causal) hi = p;
      if (w > 0) {
        lo = std::max<int64_t>(0, p - w + 1);
        if (!cfg.causal) hi = std::min<int64_t>(S - 1, p + w - 1);
      }
      const int64_t n = std::max<int64_t>(0, hi - lo + 1);
      const int64_t g = h / group;
      const float* mrow = nullptr;
      if (mask.defined() && n > 0) {
        const std::byte* m0 = mp + b * msb + h * msh + t * mst + lo * mss;
        if (mask_direct) {
          mrow = reinterpret_cast<const float*>(m0);
        } else {
          for (int64_t j = 0; j < n; ++j) mbuf[size_t(j)] = mask_value(m0 + j * mss, mask.dtype());
          mrow = mbuf.data();
        }
      }
      fn(qp + b * qsb + t * qst + h * qsh, kp + b * ksb + lo * kss + g * ksh, vp + b * vsb + lo * vss + g * vsh, mrow,
         s.data(), yp + ((b * T + t) * H + h) * hdv, n, hd, hdv, kss, vss, scale, softcap);
    }
  });
  return out;
}

}  // namespace lb::ops
#endif

// State-space model kernels for Mamba (Gu & Dao 2023) and Mamba2 / SSD (Dao & Gu 2024), defined as
// transformers' modeling_mamba.py and modeling_mamba2.py compute them (causal_conv1d_fn/_update,
// mamba_selective_scan / _state_update, mamba2_chunk_scan / mamba2_selective_state_update,
// MambaRMSNormGated). Everything runs in float32, the scan states included.
//
// The vector kernels: the depthwise conv and the Mamba scan run across channels (one lane a
// channel, so any N works and no horizontal sums are needed); the Mamba2 one-step recurrence runs
// across the state size N. The chunked SSD (matrix form inside a chunk, recurrence across chunks)
// lives in the baseline build on top of lb::sgemm; its spec is the sequential recurrence.
#include <algorithm>
#include <cmath>

#include "ops/kernel.h"

namespace lb::kernels {
// One Mamba (v1) scan over T tokens. All arrays contiguous; dt is already dt_bias-added and softplus'd.
struct SsmScanArgs {
  const float* x;   // (T, Dm)
  const float* dt;  // (T, Dm)
  const float* z;   // (T, Dm) gate, or null
  const float* At;  // (N, Dm): A transposed
  const float* B;   // (T, N)
  const float* C;   // (T, N)
  const float* D;   // (Dm,) or null
  float* ht;        // (N, Dm): the state, transposed
  float* y;         // (T, Dm)
  int64_t T, Dm, N;
};
// The Mamba2 one-step recurrence of one head over T tokens; dt is final (bias, softplus, clamp done).
struct SsdHeadArgs {
  const float* x;  // token t's (P,) at x + t * ldx
  int64_t ldx;
  const float* dt;  // dt[t * lddt]
  int64_t lddt;
  float A;
  const float* B;  // token t's (N,) of this head's group at B + t * ldbc; C likewise
  const float* C;
  int64_t ldbc;
  const float* D;  // D[p * ldd] (ldd 0: one value per head), or null
  int64_t ldd;
  float* h;  // (P, N) state
  float* y;  // token t's (P,) at y + t * ldy
  int64_t ldy;
  int64_t T, P, N;
};
}  // namespace lb::kernels

// Channels [0, nc) of a depthwise causal conv (pointers offset to the first channel). x: T rows ldx
// apart; hist: the K-1 inputs before x, rows ld apart; wt: (K, ld) the weight transposed; y rows ldy apart.
LB_DECLARE_KERNEL(void, ssm_conv1d,
                  (const float* x, int64_t ldx, const float* hist, const float* wt, int64_t ld, const float* bias,
                   float* y, int64_t ldy, int64_t T, int64_t K, int64_t nc, bool silu))
// Channels [c0, c0 + nc) of a Mamba scan.
LB_DECLARE_KERNEL(void, ssm_scan, (const SsmScanArgs& a, int64_t c0, int64_t nc))
// One Mamba2 head, token by token.
LB_DECLARE_KERNEL(void, ssd_head, (const SsdHeadArgs& a))
// One row (d,) of MambaRMSNormGated: v = x * silu(z) (z may be null), RMS-normalized over groups of gs,
// times w (d,) (or null).
LB_DECLARE_KERNEL(void, rms_norm_gated_row,
                  (const float* x, const float* z, const float* w, float* y, int64_t d, int64_t gs, float eps))

namespace lb::kernels {
#if LB_SIMD
namespace LB_ISA {
using namespace simd;
namespace {
inline V load_k(const float* p, int k) { return k == W ? load(p) : load_n(p, k); }
inline void store_k(float* p, V v, int k) { k == W ? store(p, v) : store_n(p, v, k); }
}  // namespace

void ssm_conv1d(const float* x, int64_t ldx, const float* hist, const float* wt, int64_t ld, const float* bias,
                float* y, int64_t ldy, int64_t T, int64_t K, int64_t nc, bool act) {
  for (int64_t t = 0; t < T; ++t)
    for (int64_t c = 0; c < nc; c += W) {
      const int k = int(std::min<int64_t>(W, nc - c));
      V acc = bias ? load_k(bias + c, k) : set1(0.f);
      for (int64_t j = 0; j < K; ++j) {
        const int64_t tau = t - (K - 1) + j;  // the input this tap reads; < 0 is history
        const float* in = tau >= 0 ? x + tau * ldx : hist + (K - 1 + tau) * ld;
        acc = fma(load_k(wt + j * ld + c, k), load_k(in + c, k), acc);
      }
      store_k(y + t * ldy + c, act ? silu(acc) : acc, k);
    }
}

void ssm_scan(const SsmScanArgs& a, int64_t c0, int64_t nc) {
  const int64_t Dm = a.Dm, N = a.N;
  for (int64_t c = c0; c < c0 + nc; c += W) {
    const int k = int(std::min<int64_t>(W, c0 + nc - c));
    const V d = a.D ? load_k(a.D + c, k) : set1(0.f);
    for (int64_t t = 0; t < a.T; ++t) {
      const V dt = load_k(a.dt + t * Dm + c, k), xv = load_k(a.x + t * Dm + c, k);
      const V dtx = dt * xv;
      V acc = set1(0.f);
      for (int64_t n = 0; n < N; ++n) {
        float* hp = a.ht + n * Dm + c;
        const V dA = exp(dt * load_k(a.At + n * Dm + c, k));
        const V h = fma(dA, load_k(hp, k), dtx * set1(a.B[t * N + n]));
        store_k(hp, h, k);
        acc = fma(set1(a.C[t * N + n]), h, acc);
      }
      acc = fma(d, xv, acc);
      if (a.z) acc = mul_sigmoid(acc * load_k(a.z + t * Dm + c, k), load_k(a.z + t * Dm + c, k));
      store_k(a.y + t * Dm + c, acc, k);
    }
  }
}

void ssd_head(const SsdHeadArgs& a) {
  const int64_t N = a.N;
  for (int64_t t = 0; t < a.T; ++t) {
    const float dt = a.dt[t * a.lddt];
    const V dA = set1(std::exp(dt * a.A));
    const float* B = a.B + t * a.ldbc;
    const float* C = a.C + t * a.ldbc;
    for (int64_t p = 0; p < a.P; ++p) {
      const float xv = a.x[t * a.ldx + p];
      const V xd = set1(dt * xv);
      float* h = a.h + p * N;
      V acc0 = set1(0.f), acc1 = acc0;
      int64_t n = 0;
      for (; n + 2 * W <= N; n += 2 * W) {
        const V h0 = fma(xd, load(B + n), load(h + n) * dA), h1 = fma(xd, load(B + n + W), load(h + n + W) * dA);
        store(h + n, h0);
        store(h + n + W, h1);
        acc0 = fma(load(C + n), h0, acc0);
        acc1 = fma(load(C + n + W), h1, acc1);
      }
      for (; n < N; n += W) {
        const int k = int(std::min<int64_t>(W, N - n));
        const V h0 = fma(xd, load_k(B + n, k), load_k(h + n, k) * dA);
        store_k(h + n, h0, k);
        acc0 = fma(load_k(C + n, k), h0, acc0);
      }
      a.y[t * a.ldy + p] = hsum(acc0 + acc1) + (a.D ? a.D[p * a.ldd] * xv : 0.f);
    }
  }
}

void rms_norm_gated_row(const float* x, const float* z, const float* w, float* y, int64_t d, int64_t gs, float eps) {
  for (int64_t i0 = 0; i0 < d; i0 += gs) {
    V ss = set1(0.f);
    for (int64_t i = i0; i < i0 + gs; i += W) {
      const int k = int(std::min<int64_t>(W, i0 + gs - i));
      V v = load_k(x + i, k);
      if (z) {
        const V zv = load_k(z + i, k);
        v = mul_sigmoid(v * zv, zv);
      }
      store_k(y + i, v, k);
      ss = fma(v, v, ss);
    }
    const V scale = set1(1.f / std::sqrt(hsum(ss) / float(gs) + eps));
    for (int64_t i = i0; i < i0 + gs; i += W) {
      const int k = int(std::min<int64_t>(W, i0 + gs - i));
      const V v = load_k(y + i, k) * scale;
      store_k(y + i, w ? v * load_k(w + i, k) : v, k);
    }
  }
}
}  // namespace LB_ISA
#else
namespace {
inline float silu1(float v) { return v / (1.f + std::exp(-v)); }
}  // namespace

void ssm_conv1d_ref(const float* x, int64_t ldx, const float* hist, const float* wt, int64_t ld, const float* bias,
                    float* y, int64_t ldy, int64_t T, int64_t K, int64_t nc, bool act) {
  for (int64_t t = 0; t < T; ++t)
    for (int64_t c = 0; c < nc; ++c) {
      float acc = bias ? bias[c] : 0.f;
      for (int64_t j = 0; j < K; ++j) {
        const int64_t tau = t - (K - 1) + j;
        acc += wt[j * ld + c] * (tau >= 0 ? x[tau * ldx + c] : hist[(K - 1 + tau) * ld + c]);
      }
      y[t * ldy + c] = act ? silu1(acc) : acc;
    }
}

void ssm_scan_ref(const SsmScanArgs& a, int64_t c0, int64_t nc) {
  const int64_t Dm = a.Dm, N = a.N;
  for (int64_t c = c0; c < c0 + nc; ++c)
    for (int64_t t = 0; t < a.T; ++t) {
      const float dt = a.dt[t * Dm + c], xv = a.x[t * Dm + c];
      float acc = 0.f;
      for (int64_t n = 0; n < N; ++n) {
        float& h = a.ht[n * Dm + c];
        h = std::exp(dt * a.At[n * Dm + c]) * h + dt * a.B[t * N + n] * xv;
        acc += a.C[t * N + n] * h;
      }
      if (a.D) acc += a.D[c] * xv;
      if (a.z) acc *= silu1(a.z[t * Dm + c]);
      a.y[t * Dm + c] = acc;
    }
}

void ssd_head_ref(const SsdHeadArgs& a) {
  const int64_t N = a.N;
  for (int64_t t = 0; t < a.T; ++t) {
    const float dt = a.dt[t * a.lddt], dA = std::exp(dt * a.A);
    const float* B = a.B + t * a.ldbc;
    const float* C = a.C + t * a.ldbc;
    for (int64_t p = 0; p < a.P; ++p) {
      const float xv = a.x[t * a.ldx + p];
      float* h = a.h + p * N;
      float acc = 0.f;
      for (int64_t n = 0; n < N; ++n) {
        h[n] = h[n] * dA + dt * xv * B[n];
        acc += C[n] * h[n];
      }
      a.y[t * a.ldy + p] = acc + (a.D ? a.D[p * a.ldd] * xv : 0.f);
    }
  }
}

void rms_norm_gated_row_ref(const float* x, const float* z, const float* w, float* y, int64_t d, int64_t gs, float eps) {
  for (int64_t i0 = 0; i0 < d; i0 += gs) {
    float ss = 0.f;
    for (int64_t i = i0; i < i0 + gs; ++i) {
      y[i] = z ? x[i] * silu1(z[i]) : x[i];
      ss += y[i] * y[i];
    }
    const float scale = 1.f / std::sqrt(ss / float(gs) + eps);
    for (int64_t i = i0; i < i0 + gs; ++i) y[i] = y[i] * scale * (w ? w[i] : 1.f);
  }
}
#endif
}  // namespace lb::kernels

#if !LB_SIMD
#include <limits>

#include "ops/common.h"

namespace lb::ops {
LB_REGISTER_FAMILY(ssm, true, "");
LB_REGISTER_FAMILY(rms_norm_gated, true, "");

namespace {
using detail::f32_contiguous;

// Throws unless t is a float tensor of exactly the sizes `want` (-1: any); `letters` names them, e.g. "(T, H, P)".
void check_shape(const Tensor& t, std::initializer_list<int64_t> want, const char* op, const char* arg,
                 const char* letters) {
  detail::check_float(t, op, arg);
  bool ok = t.ndim() == int(want.size());
  int i = 0;
  for (int64_t w : want) ok = ok && (w < 0 || t.dim(i++) == w);
  if (ok) return;
  std::string s = "(";
  i = 0;
  for (int64_t w : want) s += (i++ ? ", " : "") + (w < 0 ? std::string("any") : std::to_string(w));
  if (want.size() == 1) s += ",";
  throw ValueError(std::string(op) + ": " + arg + " has shape " + shape_str(t.shape()) + "; expected " + letters +
                   " = " + s + ")");
}

// An optional float input of the given shape, as contiguous f32 (undefined stays undefined).
Tensor optional_input(const Tensor& t, std::initializer_list<int64_t> want, const char* op, const char* arg,
                      const char* letters) {
  if (!t.defined()) return t;
  check_shape(t, want, op, arg, letters);
  return f32_contiguous(t, op, arg);
}

// The state argument: written in place, so it must be f32, contiguous, writable and apart from the inputs.
void check_state(const Tensor& s, std::initializer_list<int64_t> want, const char* op, const char* letters,
                 std::initializer_list<const Tensor*> inputs) {
  if (!s.defined()) return;
  if (s.dtype() != DType::f32)
    throw TypeError(std::string(op) + ": state has dtype " + name(s.dtype()) + "; expected f32 (it is updated in place)");
  check_shape(s, want, op, "state", letters);
  if (!s.is_contiguous()) throw ValueError(std::string(op) + ": state must be contiguous (it is updated in place)");
  if (s.readonly()) throw ValueError(std::string(op) + ": state is read-only (it is updated in place)");
  for (const Tensor* t : inputs)
    if (detail::overlaps(s, *t)) throw ValueError(std::string(op) + ": state overlaps an input (it is updated in place)");
}

// As torch.nn.functional.softplus (beta 1, threshold 20).
inline float softplus(float v) { return v > 20.f ? v : std::log1p(std::exp(v)); }

}  // namespace

Tensor ssm_steps(const Tensor& dt_in, const Tensor& dt_bias_in, bool dt_softplus, float lo, float hi) {
  constexpr const char* op = "ssm_steps";
  check_shape(dt_in, {-1, -1}, op, "dt", "(T, W)");
  const int64_t T = dt_in.dim(0), W = dt_in.dim(1);
  const Tensor dtb = optional_input(dt_bias_in, {W}, op, "dt_bias", "(W,)");
  const Tensor raw = f32_contiguous(dt_in, op, "dt");
  Tensor out = Tensor::empty({T, W}, DType::f32);
  const float* dtp = raw.data<float>();
  const float* bp = dtb.defined() ? dtb.data<float>() : nullptr;
  float* o = out.data<float>();
  detail::for_rows(T, W, [&](int64_t r0, int64_t r1) {
    for (int64_t i = r0 * W; i < r1 * W; ++i) {
      float v = dtp[i] + (bp ? bp[i % W] : 0.f);
      if (dt_softplus) v = softplus(v);
      o[i] = std::min(std::max(v, lo), hi);
    }
  });
  return out;
}

Tensor causal_conv1d(const Tensor& x_in, const Tensor& w_in, const Tensor& b_in, Tensor state, bool silu) {
  constexpr const char* op = "causal_conv1d";
  check_shape(x_in, {-1, -1}, op, "x", "(T, C)");
  const int64_t T = x_in.dim(0), Cn = x_in.dim(1);
  check_shape(w_in, {Cn, -1}, op, "weight", "(C, K)");
  const int64_t K = w_in.dim(1);
  if (K < 1) throw ValueError(std::string(op) + ": weight needs a kernel size K >= 1");
  const Tensor bias = optional_input(b_in, {Cn}, op, "bias", "(C,)");
  if (state.defined()) {
    check_state(state, {Cn, -1}, op, "(C, S)", {&x_in, &w_in, &b_in});
    if (state.dim(1) < K - 1)
      throw ValueError(std::string(op) + ": state has shape " + shape_str(state.shape()) + "; expected (C, S) with S >= K - 1 = " +
                       std::to_string(K - 1));
  }
  const Tensor x = f32_contiguous(x_in, op, "x"), w = f32_contiguous(w_in, op, "weight");
  Tensor out = Tensor::empty({T, Cn}, DType::f32);
  const int64_t S = state.defined() ? state.dim(1) : 0;
  // Time-major copies: the weight (K, C) and the K-1 inputs before x (K-1, C), zeros without a state.
  Buffer<float> wt(size_t(K * Cn)), hist(size_t(std::max<int64_t>(K - 1, 1) * Cn), 0.f);
  const float* wp = w.data<float>();
  for (int64_t c = 0; c < Cn; ++c)
    for (int64_t j = 0; j < K; ++j) wt[j * Cn + c] = wp[c * K + j];
  float* sp = state.defined() ? state.data<float>() : nullptr;
  if (sp)
    for (int64_t c = 0; c < Cn; ++c)
      for (int64_t j = 0; j < K - 1; ++j) hist[j * Cn + c] = sp[c * S + S - (K - 1) + j];
  if (T > 0) {
    const auto fn = LB_DISPATCH(ssm_conv1d);
    const float* xp = x.data<float>();
    const float* bp = bias.defined() ? bias.data<float>() : nullptr;
    float* yp = out.data<float>();
    constexpr int64_t kBlock = 64;  // channels a task
    parallel_for((Cn + kBlock - 1) / kBlock, std::max<int64_t>(1, 4096 / std::max<int64_t>(T * K * kBlock / 64, 1)),
                 [&](int64_t b0, int64_t b1) {
                   for (int64_t b = b0; b < b1; ++b) {
                     const int64_t c = b * kBlock, nc = std::min(kBlock, Cn - c);
                     fn(xp + c, Cn, hist.data() + c, wt.data() + c, Cn, bp ? bp + c : nullptr, yp + c, Cn, T, K, nc, silu);
                   }
                 });
    // The state becomes the last S inputs of [state | x]; shifting left reads ahead of the writes.
    if (sp)
      for (int64_t c = 0; c < Cn; ++c) {
        float* row = sp + c * S;
        for (int64_t j = 0; j < S; ++j) {
          const int64_t src = j + T;  // index into [state | x]
          row[j] = src < S ? row[src] : xp[(src - S) * Cn + c];
        }
      }
  }
  return out;
}

Tensor selective_scan(const Tensor& x_in, const Tensor& dt_in, const Tensor& A_in, const Tensor& B_in, const Tensor& C_in,
                      const Tensor& D_in, const Tensor& z_in, const Tensor& dt_bias_in, Tensor state, bool dt_softplus) {
  constexpr const char* op = "selective_scan";
  check_shape(x_in, {-1, -1}, op, "x", "(T, D)");
  const int64_t T = x_in.dim(0), Dm = x_in.dim(1);
  check_shape(A_in, {Dm, -1}, op, "A", "(D, N)");
  const int64_t N = A_in.dim(1);
  check_shape(dt_in, {T, Dm}, op, "dt", "(T, D)");
  check_shape(B_in, {T, N}, op, "B", "(T, N)");
  check_shape(C_in, {T, N}, op, "C", "(T, N)");
  const Tensor D = optional_input(D_in, {Dm}, op, "D", "(D,)");
  const Tensor z = optional_input(z_in, {T, Dm}, op, "z", "(T, D)");
  const Tensor dtb = optional_input(dt_bias_in, {Dm}, op, "dt_bias", "(D,)");
  check_state(state, {Dm, N}, op, "(D, N)", {&x_in, &dt_in, &A_in, &B_in, &C_in, &D_in, &z_in, &dt_bias_in});
  const Tensor x = f32_contiguous(x_in, op, "x"), dt_raw = f32_contiguous(dt_in, op, "dt");
  const Tensor A = f32_contiguous(A_in, op, "A"), B = f32_contiguous(B_in, op, "B"), C = f32_contiguous(C_in, op, "C");
  Tensor out = Tensor::empty({T, Dm}, DType::f32);

  // dt + dt_bias, softplus'd, once per (t, channel); A and the state transposed to (N, D).
  const Tensor dt = ssm_steps(dt_raw, dtb, dt_softplus, -std::numeric_limits<float>::infinity(),
                              std::numeric_limits<float>::infinity());
  Buffer<float> At(size_t(N * Dm)), ht(size_t(N * Dm), 0.f);
  const float* ap = A.data<float>();
  float* sp = state.defined() ? state.data<float>() : nullptr;
  for (int64_t c = 0; c < Dm; ++c)
    for (int64_t n = 0; n < N; ++n) {
      At[n * Dm + c] = ap[c * N + n];
      if (sp) ht[n * Dm + c] = sp[c * N + n];
    }
  kernels::SsmScanArgs a{x.data<float>(), dt.data<float>(), z.defined() ? z.data<float>() : nullptr, At.data(),
                         B.data<float>(), C.data<float>(), D.defined() ? D.data<float>() : nullptr, ht.data(),
                         out.data<float>(), T, Dm, N};
  const auto fn = LB_DISPATCH(ssm_scan);
  constexpr int64_t kBlock = 32;  // channels a task: two AVX-512 vectors
  parallel_for((Dm + kBlock - 1) / kBlock, std::max<int64_t>(1, 65536 / std::max<int64_t>(T * N * kBlock, 1)),
               [&](int64_t b0, int64_t b1) {
                 const int64_t c0 = b0 * kBlock;
                 fn(a, c0, std::min(b1 * kBlock, Dm) - c0);
               });
  if (sp)
    for (int64_t c = 0; c < Dm; ++c)
      for (int64_t n = 0; n < N; ++n) sp[c * N + n] = ht[n * Dm + c];
  return out;
}

namespace {

// Mamba2's chunked SSD for one head (transformers' mamba2_chunk_scan, one chunk at a time, no padding:
// a short last chunk is exact). Per chunk of L tokens, with dA_l = exp(dt_l A) and the decay from
// token s to token l, w(l, s) = dA_{s+1} ... dA_l (transformers' exp(segment_sum)):
//   y_l  = sum_{s<=l} (C_l . B_s) w(l, s) dt_s x_s  +  w(l, -1) C_l . h
//   h   <- w(L-1, -1) h + sum_s w(L-1, s) dt_s x_s B_s^T
// The decays are running products of the same factors the token-by-token recurrence multiplies by
// (every factor <= 1: nothing overflows), so L exps a chunk rather than L^2 / 2.
struct SsdChunked {
  const float* x;  // (T, H, P)
  const float* dt;  // (T, H), final
  const float* A;  // (H,)
  const float* B;  // (T, G, N)
  const float* C;
  const float* G;  // (chunks of this pass, G, L, L): C_l . B_s of each chunk and group
  float* y;  // (T, H, P)
  int64_t T, H, P, Gn, N, L;

  // Chunks [c0, c1) of head hh, carrying its state h (P, N); G holds those chunks' products from c0 on.
  void head(int64_t hh, float* h, int64_t c0, int64_t c1) const {
    const int64_t g = hh / (H / Gn), HP = H * P, GN = Gn * N;
    Buffer<float> M(size_t(L * L)), Cs(size_t(L * N)), Bw(size_t(L * N)), dts(static_cast<size_t>(L)),
        w(static_cast<size_t>(L));
    for (int64_t ci = c0; ci < c1; ++ci) {
      const int64_t s0 = ci * L, n = std::min(L, T - s0);
      for (int64_t l = 0; l < n; ++l) dts[l] = dt[(s0 + l) * H + hh];
      const float* Gc = G + ((ci - c0) * Gn + g) * L * L;
      const float* Bc = B + s0 * GN + g * N;
      const float* Cc = C + s0 * GN + g * N;
      const float* xc = x + s0 * HP + hh * P;
      float* yc = y + s0 * HP + hh * P;
      // Row l: w[s] = w(l, s); M[l, s] = G[l, s] w(l, s) dt_s (lower triangle); Cs_l = w(l, -1) C_l.
      float from_start = 1.f;
      for (int64_t l = 0; l < n; ++l) {
        const float dA = std::exp(dts[l] * A[hh]);
        for (int64_t s = 0; s < l; ++s) w[s] *= dA;
        w[l] = 1.f;
        from_start *= dA;
        float* Ml = M.data() + l * n;
        for (int64_t s = 0; s <= l; ++s) Ml[s] = Gc[l * L + s] * w[s] * dts[s];
        for (int64_t s = l + 1; s < n; ++s) Ml[s] = 0.f;
        for (int64_t k = 0; k < N; ++k) Cs[l * N + k] = from_start * Cc[l * GN + k];
      }
      // Bw_s = w(n-1, s) dt_s B_s: what token s adds to the next chunk's start state.
      for (int64_t s = 0; s < n; ++s)
        for (int64_t k = 0; k < N; ++k) Bw[s * N + k] = w[s] * dts[s] * Bc[s * GN + k];
      const float decay = from_start;
      sgemm(false, false, n, P, n, 1.f, M.data(), n, xc, HP, 0.f, yc, HP);       // y = M x
      sgemm(false, true, n, P, N, 1.f, Cs.data(), N, h, N, 1.f, yc, HP);        // y += Cs h^T
      sgemm(true, false, P, N, n, 1.f, xc, HP, Bw.data(), N, decay, h, N);      // h = decay h + x^T Bw
    }
  }
};

}  // namespace

Tensor ssd_scan(const Tensor& x_in, const Tensor& dt_in, const Tensor& A_in, const Tensor& B_in, const Tensor& C_in,
                const Tensor& D_in, const Tensor& dt_bias_in, Tensor state, const Ssd& cfg) {
  constexpr const char* op = "ssd_scan";
  check_shape(x_in, {-1, -1, -1}, op, "x", "(T, H, P)");
  const int64_t T = x_in.dim(0), H = x_in.dim(1), P = x_in.dim(2);
  check_shape(dt_in, {T, H}, op, "dt", "(T, H)");
  check_shape(A_in, {H}, op, "A", "(H,)");
  check_shape(B_in, {T, -1, -1}, op, "B", "(T, G, N)");
  const int64_t Gn = B_in.dim(1), N = B_in.dim(2);
  if (Gn < 1 || H % Gn != 0)
    throw ValueError(std::string(op) + ": B has " + std::to_string(Gn) + " groups; H = " + std::to_string(H) +
                     " heads must be a multiple of them");
  check_shape(C_in, {T, Gn, N}, op, "C", "(T, G, N)");
  Tensor D;
  if (D_in.defined() && D_in.ndim() == 2)
    D = optional_input(D_in, {H, P}, op, "D", "(H,) or (H, P)");
  else
    D = optional_input(D_in, {H}, op, "D", "(H,) or (H, P)");
  const Tensor dtb = optional_input(dt_bias_in, {H}, op, "dt_bias", "(H,)");
  check_state(state, {H, P, N}, op, "(H, P, N)", {&x_in, &dt_in, &A_in, &B_in, &C_in, &D_in, &dt_bias_in});
  if (cfg.chunk_size < 0) throw ValueError(std::string(op) + ": chunk_size must be >= 0 (0: sequential)");
  if (!(cfg.dt_min <= cfg.dt_max)) throw ValueError(std::string(op) + ": dt_limit must be (lo, hi) with lo <= hi");
  const Tensor x = f32_contiguous(x_in, op, "x"), dt_raw = f32_contiguous(dt_in, op, "dt");
  const Tensor A = f32_contiguous(A_in, op, "A"), B = f32_contiguous(B_in, op, "B"), C = f32_contiguous(C_in, op, "C");
  Tensor out = Tensor::empty({T, H, P}, DType::f32);
  if (T == 0) return out;

  // dt + dt_bias, softplus'd, clamped to dt_limit (as mamba2_chunk_scan), once per (t, head).
  const Tensor dt = ssm_steps(dt_raw, dtb, cfg.dt_softplus, cfg.dt_min, cfg.dt_max);
  Buffer<float> zeros(state.defined() ? 0 : size_t(H * P * N), 0.f);  // the state when none is given
  float* hp = state.defined() ? state.data<float>() : zeros.data();
  const float* xp = x.data<float>();
  const float* Ap = A.data<float>();
  const float* Bp = B.data<float>();
  const float* Cp = C.data<float>();
  float* yp = out.data<float>();
  const int64_t hpg = H / Gn;

  if (cfg.chunk_size <= 1 || T == 1) {
    const auto fn = LB_DISPATCH(ssd_head);
    const int64_t ldd = D.defined() && D.ndim() == 2 ? 1 : 0;
    parallel_for(H, 1, [&](int64_t h0, int64_t h1) {
      for (int64_t hh = h0; hh < h1; ++hh) {
        const int64_t g = hh / hpg;
        kernels::SsdHeadArgs a{xp + hh * P, H * P, dt.data<float>() + hh, H, Ap[hh], Bp + g * N, Cp + g * N, Gn * N,
                               D.defined() ? D.data<float>() + hh * (ldd ? P : 1) : nullptr, ldd,
                               hp + hh * P * N, yp + hh * P, H * P, T, P, N};
        fn(a);
      }
    });
    return out;
  }

  // Passes over runs of chunks: first C_l . B_s of each chunk and group (heads of a group share it),
  // then every head through those chunks. A pass holds at most ~16 MiB of products.
  const int64_t L = std::min(cfg.chunk_size, T), chunks = (T + L - 1) / L;
  const int64_t per_pass = std::clamp<int64_t>((int64_t(4) << 20) / (Gn * L * L), 1, chunks);
  Buffer<float> Gm(size_t(per_pass * Gn * L * L));
  const SsdChunked run{xp, dt.data<float>(), Ap, Bp, Cp, Gm.data(), yp, T, H, P, Gn, N, L};
  for (int64_t c0 = 0; c0 < chunks; c0 += per_pass) {
    const int64_t c1 = std::min(chunks, c0 + per_pass);
    parallel_for((c1 - c0) * Gn, 1, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t g = i % Gn, s0 = (c0 + i / Gn) * L, n = std::min(L, T - s0);
        const float* Cc = Cp + s0 * Gn * N + g * N;
        const float* Bc = Bp + s0 * Gn * N + g * N;
        sgemm(false, true, n, n, N, 1.f, Cc, Gn * N, Bc, Gn * N, 0.f, Gm.data() + i * L * L, L);
      }
    });
    parallel_for(H, 1, [&](int64_t h0, int64_t h1) {
      for (int64_t hh = h0; hh < h1; ++hh) run.head(hh, hp + hh * P * N, c0, c1);
    });
  }
  if (D.defined()) {
    const float* dp = D.data<float>();
    const bool per_p = D.ndim() == 2;
    detail::for_rows(T, H * P, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t)
        for (int64_t i = 0; i < H * P; ++i) yp[t * H * P + i] += dp[per_p ? i : i / P] * xp[t * H * P + i];
    });
  }
  return out;
}

Tensor rms_norm_gated(const Tensor& x_in, const Tensor& z_in, const Tensor& w_in, float eps, int64_t group_size) {
  constexpr const char* op = "rms_norm_gated";
  detail::check_float(x_in, op, "x");
  detail::check_ndim(x_in, 1, kMaxDims, op, "x");
  const int64_t d = x_in.dim(-1);
  const int64_t gs = group_size == 0 ? d : group_size;
  if (gs < 1 || d % gs != 0)
    throw ValueError(std::string(op) + ": group_size " + std::to_string(group_size) + " must divide the last axis of x (" +
                     std::to_string(d) + ")");
  if (!(eps >= 0.f)) throw ValueError(std::string(op) + ": eps must be >= 0");
  Tensor z;
  if (z_in.defined()) {
    detail::check_float(z_in, op, "z");
    if (z_in.shape() != x_in.shape())
      throw ValueError(std::string(op) + ": z has shape " + shape_str(z_in.shape()) + "; expected the shape of x " +
                       shape_str(x_in.shape()));
    z = f32_contiguous(z_in, op, "z");
  }
  const Tensor w = optional_input(w_in, {d}, op, "weight", "(D,)");
  const Tensor x = f32_contiguous(x_in, op, "x");
  Tensor out = Tensor::empty(x_in.shape(), DType::f32);
  const float* xp = x.data<float>();
  const float* zp = z.defined() ? z.data<float>() : nullptr;
  const float* wp = w.defined() ? w.data<float>() : nullptr;
  float* yp = out.data<float>();
  const auto fn = LB_DISPATCH(rms_norm_gated_row);
  detail::for_rows(detail::leading_rows(x), d, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) fn(xp + r * d, zp ? zp + r * d : nullptr, wp, yp + r * d, d, gs, eps);
  });
  return out;
}

}  // namespace lb::ops
#endif

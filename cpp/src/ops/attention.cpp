// Scaled dot-product attention (Vaswani et al. 2017) with grouped kv heads (Ainslie et al. 2023), sliding
// windows, an additive mask and Gemma 2's logit softcap, over keys and values in memory: the op's
// tensors or the engine's KV cache (f32 or f16 rings). No (T, S) score matrix is ever formed.
// - Prefill: a tile of query rows (the G heads of a kv head x up to 64 / G positions) meets the keys in
//   blocks, with an online softmax (FlashAttention, Dao et al. 2022): scores as a register-blocked
//   product, a running max and sum per row, the output rescaled whenever the max grows.
// - Decode (one position): its G heads share every key and value load, read in the stored type.
// A piece of work whose keys cross a thread's share is split along its keys and the parts' (max, sum,
// output) merged afterwards (flash-decoding, Dao et al. 2023), so a few long heads still fill the pool.
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "lmblocks/ops.h"
#include "ops/kernel.h"

namespace lb::kernels {
// What every head of one call shares. A query at position p sees keys [p - left, p + right] of [0, S).
struct AttentionDims {
  int64_t G, hd, hdv, left, right;
  float scale, softcap;
};
}  // namespace lb::kernels

// Query rows of positions [t0, t1) of head h (position-major, G rows per position) against keys
// [j0, j1), a part of those they see. part null: the normalized rows go to h.out. Else row r goes to
// part + r (hdv + 2): the unnormalized weighted sum of values (hdv), the max score and the sum of
// exp(score - max); a row that saw no key has max -inf, sum 0, zeros.
LB_DECLARE_KERNEL(void, attention_block,
                  (const lb::ops::AttentionHead& h, const lb::kernels::AttentionDims& d, int64_t t0, int64_t t1,
                   int64_t j0, int64_t j1, float* part))

namespace lb::kernels {
#if LB_SIMD
namespace LB_ISA {
using namespace simd;
using ops::AttentionHead;

namespace {

// Register blocks sized to the register file: 16 vectors on AVX2, 32 on AVX-512 and NEON.
constexpr bool kRegs32 = W != 8;
// Prefill: keys per block; a score block is kScoreVecs vectors of rows x kScoreKeys keys, an output
// block kOutRows rows x kOutVecs vectors of features.
constexpr int64_t kBlockKeys = 64;
constexpr int kScoreVecs = kRegs32 ? 4 : 2, kScoreKeys = kRegs32 ? 6 : 4;
constexpr int kOutRows = 4, kOutVecs = kRegs32 ? 4 : 2;
// Decode: keys per block; a block of kHeads heads x kKeys keys (scores) or x kVecs vectors (output).
constexpr int64_t kDecodeKeys = 256;
constexpr int kHeads = kRegs32 ? 4 : 3, kKeys = kRegs32 ? 4 : 3, kVecs = kRegs32 ? 4 : 3;

// f(std::integral_constant<int, n>) for a run-time n in [1, N]: register blocks get compile-time sizes.
template <int N, class F>
inline void with_n(int n, F&& f) {
  if constexpr (N > 1)
    if (n < N) return with_n<N - 1>(n, f);
  f(std::integral_constant<int, N>{});
}

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// n <= W elements; f16 is widened in registers.
inline V ld(const float* p, int n, float fill = 0.f) { return n == W ? load(p) : load_n(p, n, fill); }
inline V ld(const uint16_t* p, int n) {
  if (n == W) return load_f16(p);
  uint16_t b[W] = {};
  std::memcpy(b, p, sizeof(uint16_t) * size_t(n));
  return load_f16(b);
}
inline void st(float* p, V a, int n) { n == W ? store(p, a) : store_n(p, a, n); }

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

inline V cap(V x, float softcap) { return softcap > 0.f ? set1(softcap) * tanh_v(x * set1(1.f / softcap)) : x; }

// The max to subtract: 0 while a row has seen only -inf, so exp(-inf - 0) = 0 rather than NaN.
inline V shift(V m) { return select_lt(m, set1(-FLT_MAX), set1(0.f), m); }

// Per-thread scratch, grown to the largest tile seen.
float* scratch(int64_t n) {
  thread_local std::vector<float> buf;
  if (int64_t(buf.size()) < n) buf.resize(size_t(n));
  return buf.data();
}

// n rows of w elements, `stride` apart, as f32 rows `ldd` (a multiple of W >= w) apart, zero-padded.
template <class T>
void widen(const T* x, int64_t stride, int64_t n, int64_t w, float* y, int64_t ldd) {
  for (int64_t i = 0; i < n; ++i)
    for (int64_t c = 0; c < ldd; c += W) {
      const int k = int(std::min<int64_t>(W, w - c));
      store(y + i * ldd + c, k > 0 ? ld(x + i * stride + c, k) : set1(0.f));
    }
}

// Finished row (t, g): the weighted sum o (padded to whole vectors), max m, sum l.
void emit(const AttentionHead& h, int64_t hdv, int64_t t, int64_t g, const float* o, float m, float l, float* part) {
  if (part) {
    std::memcpy(part, o, sizeof(float) * size_t(hdv));
    part[hdv] = m;
    part[hdv + 1] = l;
    return;
  }
  float* y = h.out + t * h.o_t + g * h.o_h;
  const V inv = set1(l > 0.f ? 1.f / l : 0.f);
  for (int64_t c = 0; c < hdv; c += W) st(y + c, load(o + c) * inv, int(std::min<int64_t>(W, hdv - c)));
}

// ---- Prefill: rows in vector lanes ----

// s[k][i] = scale * q_i . k_k (then softcap) for NK keys x NV vectors of rows. qt: queries transposed,
// (hd, ldq); kb: key rows `ks` apart; s: (keys, ldq).
template <int NK, int NV>
inline void score_block(const float* qt, int64_t ldq, const float* kb, int64_t ks, int64_t hd, float* s, float scale,
                        float softcap) {
  V acc[NK][NV];
  for (auto& a : acc)
    for (V& x : a) x = set1(0.f);
  for (int64_t c = 0; c < hd; ++c) {
    V q[NV];
    for (int i = 0; i < NV; ++i) q[i] = load(qt + c * ldq + i * W);
    for (int k = 0; k < NK; ++k) {
      const V kv = set1(kb[k * ks + c]);
      for (int i = 0; i < NV; ++i) acc[k][i] = fma(kv, q[i], acc[k][i]);
    }
  }
  for (int k = 0; k < NK; ++k)
    for (int i = 0; i < NV; ++i) store(s + k * ldq + i * W, cap(acc[k][i] * set1(scale), softcap));
}

// o[r] = o[r] * corr[r] + sum_j p[j][r] v[j] for kOutRows rows x NV vectors of features.
// p: (nb, ldp); vb: value rows `vs` apart, readable as whole vectors; o: rows `ldo` apart.
template <int NV>
inline void pv_block(const float* p, int64_t ldp, int64_t nb, const float* vb, int64_t vs, float* o, int64_t ldo,
                     const float* corr) {
  V acc[kOutRows][NV];
  for (int r = 0; r < kOutRows; ++r) {
    const V c = set1(corr[r]);
    for (int n = 0; n < NV; ++n) acc[r][n] = load(o + r * ldo + n * W) * c;
  }
  for (int64_t j = 0; j < nb; ++j) {
    V v[NV];
    for (int n = 0; n < NV; ++n) v[n] = load(vb + j * vs + n * W);
    for (int r = 0; r < kOutRows; ++r) {
      const V pj = set1(p[j * ldp + r]);
      for (int n = 0; n < NV; ++n) acc[r][n] = fma(pj, v[n], acc[r][n]);
    }
  }
  for (int r = 0; r < kOutRows; ++r)
    for (int n = 0; n < NV; ++n) store(o + r * ldo + n * W, acc[r][n]);
}

// Rows in lanes make the softmax vertical: each row's max and sum are elementwise over the keys.
template <class T>
void tile(const AttentionHead& h, const AttentionDims& d, int64_t t0, int64_t t1, int64_t j0, int64_t j1,
          float* part) {
  const int64_t G = d.G, hd = d.hd, hdv = d.hdv, M = (t1 - t0) * G;
  const int64_t Mp = round_up(M, W), hvp = round_up(hdv, W), hkp = round_up(hd, W), Bk = kBlockKeys;
  // f16 blocks are widened once per tile and block; f32 is read in place, values only when their
  // rows are whole vectors.
  constexpr bool half = std::is_same_v<T, uint16_t>;
  const bool widen_v = half || hdv % W != 0;
  float* qt = scratch(hd * Mp + Mp * hvp + Bk * Mp + 3 * Mp + (half ? Bk * hkp : 0) + (widen_v ? Bk * hvp : 0));
  float *o = qt + hd * Mp, *s = o + Mp * hvp, *m = s + Bk * Mp, *l = m + Mp, *corr = l + Mp;
  float *kw = corr + Mp, *vw = kw + (half ? Bk * hkp : 0);

  for (int64_t r = 0; r < Mp; ++r) {  // queries transposed, (hd, Mp); padding rows are zero
    const float* q = r < M ? h.q + (t0 + r / G) * h.q_t + (r % G) * h.q_h : nullptr;
    for (int64_t c = 0; c < hd; ++c) qt[c * Mp + r] = q ? q[c] : 0.f;
  }
  std::fill(o, o + Mp * hvp, 0.f);
  std::fill(m, m + Mp, -INFINITY);
  std::fill(l, l + Mp, 0.f);
  const int64_t p_first = h.p0 + t0, p_last = h.p0 + t1 - 1;

  for (int64_t b0 = j0; b0 < j1;) {
    const int64_t slot = b0 % h.ring, b1 = std::min({j1, b0 + Bk, b0 - slot + h.ring}), nb = b1 - b0;
    const T* kr = static_cast<const T*>(h.k) + slot * h.k_s;
    const T* vr = static_cast<const T*>(h.v) + slot * h.v_s;
    const float *kb, *vb;
    int64_t ks, vs;
    if constexpr (half) {
      widen(kr, h.k_s, nb, hd, kw, hkp);
      kb = kw, ks = hkp;
    } else {
      kb = kr, ks = h.k_s;
    }
    if (widen_v) {
      widen(vr, h.v_s, nb, hdv, vw, hvp);
      vb = vw, vs = hvp;
    } else {
      vb = reinterpret_cast<const float*>(vr), vs = h.v_s;
    }

    for (int64_t j = 0; j < nb; j += kScoreKeys)
      with_n<kScoreKeys>(int(std::min<int64_t>(kScoreKeys, nb - j)), [&](auto NK) {
        for (int64_t i = 0; i < Mp / W; i += kScoreVecs)
          with_n<kScoreVecs>(int(std::min<int64_t>(kScoreVecs, Mp / W - i)), [&](auto NV) {
            score_block<decltype(NK)::value, decltype(NV)::value>(qt + i * W, Mp, kb + j * ks, ks, hd,
                                                                 s + j * Mp + i * W, d.scale, d.softcap);
          });
      });

    // The mask, then -inf where a row does not see a key: only on blocks some row sees in part
    // (a causal tile's diagonal, a window's edge).
    if (h.mask || b0 < p_last - d.left || b1 - 1 > p_first + d.right)
      for (int64_t r = 0; r < M; ++r) {
        const int64_t t = t0 + r / G, p = h.p0 + t;
        if (h.mask) {
          const float* mr = h.mask + t * h.m_t + (r % G) * h.m_h;
          for (int64_t j = 0; j < nb; ++j) s[j * Mp + r] += mr[(b0 + j) * h.m_s];
        }
        const int64_t lo = std::clamp<int64_t>(p - d.left - b0, 0, nb);
        const int64_t hi = std::clamp<int64_t>(p + d.right + 1 - b0, lo, nb);
        for (int64_t j = 0; j < lo; ++j) s[j * Mp + r] = -INFINITY;
        for (int64_t j = hi; j < nb; ++j) s[j * Mp + r] = -INFINITY;
      }

    for (int64_t r = 0; r < Mp; r += W) {  // online softmax, W rows at a time
      V mx = set1(-INFINITY);
      for (int64_t j = 0; j < nb; ++j) mx = max(mx, load(s + j * Mp + r));
      const V m_old = load(m + r), m_new = max(m_old, mx), mu = shift(m_new);
      const V c = exp_nonpos(m_old - mu);
      V sum = set1(0.f);
      for (int64_t j = 0; j < nb; ++j) {
        const V e = exp_nonpos(load(s + j * Mp + r) - mu);
        store(s + j * Mp + r, e);
        sum = sum + e;
      }
      store(l + r, fma(load(l + r), c, sum));
      store(m + r, m_new);
      store(corr + r, c);
    }

    for (int64_t r = 0; r < round_up(M, kOutRows); r += kOutRows)
      for (int64_t c = 0; c < hvp; c += kOutVecs * W)
        with_n<kOutVecs>(int(std::min<int64_t>(kOutVecs, (hvp - c) / W)), [&](auto NV) {
          pv_block<decltype(NV)::value>(s + r, Mp, nb, vb + c, vs, o + r * hvp + c, hvp, corr + r);
        });
    b0 = b1;
  }
  for (int64_t r = 0; r < M; ++r)
    emit(h, hdv, t0 + r / G, r % G, o + r * hvp, m[r], l[r], part ? part + r * (hdv + 2) : nullptr);
}

// ---- Decode: one position, its G heads sharing every load ----

// Decode streams its keys and values from memory once and is bound by that. The hardware prefetcher
// alone leaves DRAM latency exposed (half the bandwidth on SmolLM2's cache), so the score loop asks
// for the key and value rows ~4 KB ahead: the values are in cache before their pass.
constexpr int64_t kPrefetchBytes = 4096;

template <class T>
inline void prefetch_rows(const T* p, int64_t stride, int64_t rows, int64_t n) {
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t b = 0; b < n * int64_t(sizeof(T)); b += 64)
      __builtin_prefetch(reinterpret_cast<const char*>(p + i * stride) + b);
}

// s[g][k] = scale * q_g . k_k for NG heads (rows `qs` apart) x NK keys (rows `ks` apart, type T).
template <int NG, int NK, class T>
inline void dot_block(const float* q, int64_t qs, const T* k, int64_t ks, int64_t hd, float* s, int64_t ss,
                      float scale) {
  V acc[NG][NK];
  for (auto& a : acc)
    for (V& x : a) x = set1(0.f);
  const auto step = [&](int64_t c, int n) {
    V kv[NK];
    for (int j = 0; j < NK; ++j) kv[j] = ld(k + j * ks + c, n);
    for (int g = 0; g < NG; ++g) {
      const V qv = ld(q + g * qs + c, n);
      for (int j = 0; j < NK; ++j) acc[g][j] = fma(qv, kv[j], acc[g][j]);
    }
  };
  int64_t c = 0;
  for (; c + W <= hd; c += W) step(c, W);
  if (c < hd) step(c, int(hd - c));
  for (int g = 0; g < NG; ++g)
    for (int j = 0; j < NK; ++j) s[g * ss + j] = hsum(acc[g][j]) * scale;
}

// o[g] = o[g] * corr[g] + sum_j p[g][j] v[j] for NG heads x NV vectors of features, the last vector
// holding `last` lanes. p: rows `ps` apart; v: rows `vs` apart, type T; o: rows `os` apart.
template <int NG, int NV, class T>
inline void pv_rows(const float* p, int64_t ps, int64_t nb, const T* v, int64_t vs, int last, float* o, int64_t os,
                    const float* corr) {
  V acc[NG][NV];
  for (int g = 0; g < NG; ++g) {
    const V c = set1(corr[g]);
    for (int n = 0; n < NV; ++n) acc[g][n] = load(o + g * os + n * W) * c;
  }
  for (int64_t j = 0; j < nb; ++j) {
    V vv[NV];
    for (int n = 0; n < NV; ++n) vv[n] = ld(v + j * vs + n * W, n == NV - 1 ? last : W);
    for (int g = 0; g < NG; ++g) {
      const V pj = set1(p[g * ps + j]);
      for (int n = 0; n < NV; ++n) acc[g][n] = fma(pj, vv[n], acc[g][n]);
    }
  }
  for (int g = 0; g < NG; ++g)
    for (int n = 0; n < NV; ++n) store(o + g * os + n * W, acc[g][n]);
}

template <class T>
void decode(const AttentionHead& h, const AttentionDims& d, int64_t t, int64_t j0, int64_t j1, float* part) {
  const int64_t G = d.G, hd = d.hd, hdv = d.hdv, hvp = round_up(hdv, W), Bk = kDecodeKeys, p = h.p0 + t;
  j0 = std::max(j0, p - d.left);  // one position: its keys are one range, no per-key masking
  j1 = std::min(j1, p + d.right + 1);
  float* s = scratch(G * Bk + G * hvp + 3 * G);
  float *o = s + G * Bk, *m = o + G * hvp, *l = m + G, *corr = l + G;
  std::fill(o, o + G * hvp, 0.f);
  std::fill(m, m + G, -INFINITY);
  std::fill(l, l + G, 0.f);
  const float* q = h.q + t * h.q_t;
  const int64_t ahead = std::max<int64_t>(1, kPrefetchBytes / int64_t(hd * sizeof(T)));  // rows

  for (int64_t b0 = j0; b0 < j1;) {
    const int64_t slot = b0 % h.ring, b1 = std::min({j1, b0 + Bk, b0 - slot + h.ring}), nb = b1 - b0;
    const T* kb = static_cast<const T*>(h.k) + slot * h.k_s;
    const T* vb = static_cast<const T*>(h.v) + slot * h.v_s;
    for (int64_t g = 0; g < G; g += kHeads)
      with_n<kHeads>(int(std::min<int64_t>(kHeads, G - g)), [&](auto NG) {
        for (int64_t j = 0; j < nb; j += kKeys) {
          if (g == 0 && slot + j + ahead + kKeys <= h.ring) {
            prefetch_rows(kb + (j + ahead) * h.k_s, h.k_s, kKeys, hd);
            prefetch_rows(vb + (j + ahead) * h.v_s, h.v_s, kKeys, hdv);
          }
          with_n<kKeys>(int(std::min<int64_t>(kKeys, nb - j)), [&](auto NK) {
            dot_block<decltype(NG)::value, decltype(NK)::value>(q + g * h.q_h, h.q_h, kb + j * h.k_s, h.k_s, hd,
                                                                s + g * Bk + j, Bk, d.scale);
          });
        }
      });

    for (int64_t g = 0; g < G; ++g) {  // softcap, mask, online softmax of each head's row of scores
      float* sg = s + g * Bk;
      if (d.softcap > 0.f)
        for (int64_t i = 0; i < nb; i += W) {
          const int n = int(std::min<int64_t>(W, nb - i));
          st(sg + i, cap(ld(sg + i, n), d.softcap), n);
        }
      if (h.mask) {
        const float* mr = h.mask + t * h.m_t + g * h.m_h + b0 * h.m_s;
        for (int64_t j = 0; j < nb; ++j) sg[j] += mr[j * h.m_s];
      }
      V mx = set1(-INFINITY);
      for (int64_t i = 0; i < nb; i += W) mx = max(mx, ld(sg + i, int(std::min<int64_t>(W, nb - i)), -INFINITY));
      const float m_new = std::max(m[g], hmax(mx)), mu = m_new == -INFINITY ? 0.f : m_new;
      const V mv = set1(mu);
      V sum = set1(0.f);
      for (int64_t i = 0; i < nb; i += W) {
        const int n = int(std::min<int64_t>(W, nb - i));
        const V e = exp_nonpos(ld(sg + i, n, -INFINITY) - mv);  // tail lanes: exp(-inf) = 0
        st(sg + i, e, n);
        sum = sum + e;
      }
      corr[g] = std::exp(m[g] - mu);
      l[g] = l[g] * corr[g] + hsum(sum);
      m[g] = m_new;
    }

    for (int64_t g = 0; g < G; g += kHeads)
      with_n<kHeads>(int(std::min<int64_t>(kHeads, G - g)), [&](auto NG) {
        for (int64_t c = 0; c < hvp; c += kVecs * W) {
          const int nv = int(std::min<int64_t>(kVecs, (hvp - c) / W));
          const int last = int(std::min<int64_t>(W, hdv - c - (nv - 1) * W));
          with_n<kVecs>(nv, [&](auto NV) {
            pv_rows<decltype(NG)::value, decltype(NV)::value>(s + g * Bk, Bk, nb, vb + c, h.v_s, last,
                                                              o + g * hvp + c, hvp, corr + g);
          });
        }
      });
    b0 = b1;
  }
  for (int64_t g = 0; g < G; ++g) emit(h, hdv, t, g, o + g * hvp, m[g], l[g], part ? part + g * (hdv + 2) : nullptr);
}

}  // namespace

void attention_block(const AttentionHead& h, const AttentionDims& d, int64_t t0, int64_t t1, int64_t j0, int64_t j1,
                     float* part) {
  if (t1 - t0 == 1)
    h.f16 ? decode<uint16_t>(h, d, t0, j0, j1, part) : decode<float>(h, d, t0, j0, j1, part);
  else
    h.f16 ? tile<uint16_t>(h, d, t0, t1, j0, j1, part) : tile<float>(h, d, t0, t1, j0, j1, part);
}

}  // namespace LB_ISA
#else
// The spec: each row's scores over the keys it sees in [j0, j1), a two-pass softmax, the weighted sum.
void attention_block_ref(const ops::AttentionHead& h, const AttentionDims& d, int64_t t0, int64_t t1, int64_t j0,
                         int64_t j1, float* part) {
  const auto at = [&](const void* base, int64_t stride, int64_t j, int64_t c) {  // element c of key/value j
    const int64_t i = (j % h.ring) * stride + c;
    return h.f16 ? f16_to_f32(static_cast<const uint16_t*>(base)[i]) : static_cast<const float*>(base)[i];
  };
  std::vector<float> s, o(size_t(d.hdv));
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t p = h.p0 + t, lo = std::max(j0, p - d.left), hi = std::min(j1, p + d.right + 1);
    s.assign(size_t(std::max<int64_t>(0, hi - lo)), 0.f);
    for (int64_t g = 0; g < d.G; ++g) {
      const float* q = h.q + t * h.q_t + g * h.q_h;
      float m = -INFINITY;
      for (int64_t j = lo; j < hi; ++j) {
        float dot = 0.f;
        for (int64_t c = 0; c < d.hd; ++c) dot += q[c] * at(h.k, h.k_s, j, c);
        float x = dot * d.scale;
        if (d.softcap > 0.f) x = d.softcap * std::tanh(x / d.softcap);
        if (h.mask) x += h.mask[t * h.m_t + g * h.m_h + j * h.m_s];
        s[size_t(j - lo)] = x;
        m = std::max(m, x);
      }
      std::fill(o.begin(), o.end(), 0.f);
      float l = 0.f;
      if (m > -INFINITY)
        for (int64_t j = lo; j < hi; ++j) {
          const float e = std::exp(s[size_t(j - lo)] - m);
          l += e;
          for (int64_t c = 0; c < d.hdv; ++c) o[size_t(c)] += e * at(h.v, h.v_s, j, c);
        }
      if (part) {
        float* r = part + ((t - t0) * d.G + g) * (d.hdv + 2);
        std::copy(o.begin(), o.end(), r);
        r[d.hdv] = m;
        r[d.hdv + 1] = l;
      } else {
        float* y = h.out + t * h.o_t + g * h.o_h;
        for (int64_t c = 0; c < d.hdv; ++c) y[c] = l > 0.f ? o[size_t(c)] / l : 0.f;
      }
    }
  }
}
#endif
}  // namespace lb::kernels

#if !LB_SIMD
#include "ops/common.h"

namespace lb::ops {
LB_REGISTER_FAMILY(attention, true, "");

namespace {

constexpr int64_t kTileRows = 64;        // query rows (G heads x positions) per prefill tile
constexpr int64_t kMinTile = 4;          // fewer positions than this run one at a time (decode)
constexpr double kShareFlops = 1 << 17;  // least work worth a thread of its own
constexpr int64_t kUnbounded = int64_t(1) << 62;

// A piece of work: rows of positions [t0, t1) of head h against keys [j0, j1). part >= 0: the offset
// of its partial rows, when the piece is one of several parts over disjoint keys.
struct Piece {
  int64_t h, t0, t1, j0, j1, part = -1;
};

// Merges the parts of one piece: out = sum_i e^(m_i - m) o_i / sum_i e^(m_i - m) l_i, m = max_i m_i.
void merge(const AttentionHead& h, int64_t G, int64_t hdv, const Piece& p, const float* parts,
           const std::vector<int64_t>& offsets) {
  for (int64_t r = 0; r < (p.t1 - p.t0) * G; ++r) {
    float m = -INFINITY, l = 0.f;
    for (int64_t off : offsets) m = std::max(m, parts[off + r * (hdv + 2) + hdv]);
    float* y = h.out + (p.t0 + r / G) * h.o_t + (r % G) * h.o_h;
    std::fill(y, y + hdv, 0.f);
    if (m == -INFINITY) continue;
    for (int64_t off : offsets) {
      const float* x = parts + off + r * (hdv + 2);
      const float w = std::exp(x[hdv] - m);
      l += w * x[hdv + 1];
      for (int64_t c = 0; c < hdv; ++c) y[c] += w * x[c];
    }
    for (int64_t c = 0; c < hdv; ++c) y[c] /= l;
  }
}

void check_cfg(const Attention& cfg, const char* op) {
  if (cfg.window < 0)
    throw ValueError(std::string(op) + ": window must be >= 0 (0 means none), got " + std::to_string(cfg.window));
  if (!(cfg.softcap >= 0.f) || std::isinf(cfg.softcap))
    throw ValueError(std::string(op) + ": softcap must be finite and >= 0 (0 means none), got " +
                     std::to_string(cfg.softcap));
}

// k and v as the kernels read them: f16 in place when both are f16 rows, else f32 rows.
bool half_rows(const Tensor& t) {
  bool ok = t.dtype() == DType::f16 && reinterpret_cast<uintptr_t>(t.raw()) % 2 == 0;
  for (int i = 0; ok && i < t.ndim(); ++i) ok = t.strides()[size_t(i)] % 2 == 0;
  return ok && (t.dim(-1) <= 1 || t.strides().back() == 2);
}

}  // namespace

void attention_heads(const std::vector<AttentionHead>& heads, const Attention& cfg, int64_t G, int64_t hd,
                     int64_t hdv) {
  const int64_t w = cfg.window;
  const kernels::AttentionDims d{G,
                                 hd,
                                 hdv,
                                 w > 0 ? w - 1 : kUnbounded,
                                 cfg.causal ? 0 : w > 0 ? w - 1 : kUnbounded,
                                 cfg.scale != 0.f ? cfg.scale : hd > 0 ? float(1.0 / std::sqrt(double(hd))) : 1.f,
                                 cfg.softcap};

  // Tiles of positions; each against the union of the keys its rows see.
  std::vector<Piece> pieces;
  double total = 0;  // rows x keys
  for (int64_t h = 0; h < int64_t(heads.size()); ++h) {
    const AttentionHead& a = heads[size_t(h)];
    const int64_t tq = a.T >= kMinTile ? std::max<int64_t>(1, kTileRows / G) : 1;
    for (int64_t t0 = 0; t0 < a.T; t0 += tq) {
      const int64_t t1 = std::min(a.T, t0 + tq);
      const int64_t j0 = std::clamp<int64_t>(a.p0 + t0 - d.left, 0, a.S);
      const int64_t j1 = std::clamp<int64_t>(a.p0 + t1 + d.right, j0, a.S);
      pieces.push_back({h, t0, t1, j0, j1});
      total += double((t1 - t0) * G) * double(j1 - j0);
    }
  }

  // One contiguous share of equal cost per thread. A piece crossing a share's end is cut along its
  // keys; its parts keep partial rows (max, sum, unnormalized output) that merge() combines.
  const int64_t nt = std::clamp<int64_t>(int64_t(total * double(hd + hdv) / kShareFlops), 1, num_threads());
  std::vector<std::vector<Piece>> share(static_cast<size_t>(nt));
  std::vector<std::pair<Piece, std::vector<int64_t>>> cut;  // pieces cut, with their parts' offsets
  int64_t part_floats = 0;
  double done = 0;
  size_t b = 0;
  for (Piece p : pieces) {
    const int64_t rows = (p.t1 - p.t0) * G;
    const auto take = [&](Piece& a) {
      a.part = part_floats;
      part_floats += rows * (hdv + 2);
      cut.back().second.push_back(a.part);
    };
    bool is_cut = false;
    for (; b + 1 < size_t(nt); ++b) {
      const double end = total * double(b + 1) / double(nt);
      const int64_t n = std::llround((end - done) / double(rows));  // keys of p that fill share b
      if (n >= p.j1 - p.j0) break;
      if (n <= 0) continue;
      if (!is_cut) cut.push_back({p, {}});
      is_cut = true;
      Piece a = p;
      a.j1 = p.j0 + n;
      take(a);
      share[b].push_back(a);
      done += double(rows * n);
      p.j0 = a.j1;
    }
    if (is_cut) take(p);
    share[b].push_back(p);
    done += double(rows * (p.j1 - p.j0));
  }

  std::vector<float> parts(static_cast<size_t>(part_floats));
  const auto fn = LB_DISPATCH(attention_block);
  parallel_for(nt, 1, [&](int64_t s0, int64_t s1) {
    for (int64_t s = s0; s < s1; ++s)
      for (const Piece& p : share[size_t(s)])
        fn(heads[size_t(p.h)], d, p.t0, p.t1, p.j0, p.j1, p.part < 0 ? nullptr : parts.data() + p.part);
  });
  for (const auto& [p, offsets] : cut) merge(heads[size_t(p.h)], G, hdv, p, parts.data(), offsets);
}

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
  check_cfg(cfg, op);

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
    // The kernels read f32 at any element strides (0 where broadcast); other masks become f32 first.
    if (!detail::is_f32_aligned(mask)) mask = detail::f32_contiguous(mask_in, op, "mask").broadcast_to(mshape);
  }

  Shape oshape = q_in.shape();
  oshape.back() = hdv;
  out = detail::prepare_out(out, oshape, op,
                            {{q_in, "q", false}, {k_in, "k", false}, {v_in, "v", false}, {mask_in, "mask", false}});
  if (out.numel() == 0) return out;
  const bool f16 = half_rows(k_in) && half_rows(v_in);
  const Tensor q = detail::f32_rows(q_in, op, "q");
  const Tensor k = f16 ? k_in : detail::f32_rows(k_in, op, "k"), v = f16 ? v_in : detail::f32_rows(v_in, op, "v");

  // Element strides; batch strides are 0 for 3-D inputs.
  const int o = batched ? 1 : 0;
  const auto es = [&](const Tensor& t, int i) { return i < 0 ? int64_t(0) : t.strides()[size_t(i)] / t.itemsize(); };
  const int64_t G = H / Hkv, esize = k.itemsize();
  std::vector<AttentionHead> heads;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t g = 0; g < Hkv; ++g) {
      AttentionHead a{};
      a.q = q.data<float>() + b * es(q, o - 1) + g * G * es(q, o + 1);
      a.q_t = es(q, o), a.q_h = es(q, o + 1);
      a.out = out.data<float>() + (b * T * H + g * G) * hdv;
      a.o_t = H * hdv, a.o_h = hdv;
      a.k = static_cast<const std::byte*>(k.raw()) + (b * es(k, o - 1) + g * es(k, o + 1)) * esize;
      a.v = static_cast<const std::byte*>(v.raw()) + (b * es(v, o - 1) + g * es(v, o + 1)) * esize;
      a.k_s = es(k, o), a.v_s = es(v, o), a.ring = S, a.f16 = f16;
      a.T = T, a.p0 = S - T, a.S = S;
      if (mask.defined()) {
        a.mask = mask.data<float>() + b * (batched ? es(mask, 0) : 0) + g * G * es(mask, o);
        a.m_t = es(mask, o + 1), a.m_h = es(mask, o), a.m_s = es(mask, o + 2);
      }
      heads.push_back(a);
    }
  attention_heads(heads, cfg, G, hd, hdv);
  return out;
}

Tensor attention_cache(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in, int64_t pos, const Attention& cfg,
                       Tensor out) {
  constexpr const char* op = "attention_cache";
  detail::check_float(q_in, op, "q");
  detail::check_float(k_in, op, "k");
  detail::check_float(v_in, op, "v");
  detail::check_ndim(q_in, 3, 3, op, "q");
  const int64_t T = q_in.dim(0), H = q_in.dim(1), hd = q_in.dim(2);
  if (k_in.ndim() != 3 || k_in.dim(2) != hd || k_in.dim(0) < 1 || H % k_in.dim(0) != 0)
    throw ValueError(std::string(op) + ": k has shape " + shape_str(k_in.shape()) + "; expected (Hkv, C, " +
                     std::to_string(hd) + ") with H=" + std::to_string(H) + " divisible by Hkv");
  const int64_t Hkv = k_in.dim(0), C = k_in.dim(1);
  if (v_in.ndim() != 3 || v_in.dim(0) != Hkv || v_in.dim(1) != C)
    throw ValueError(std::string(op) + ": v has shape " + shape_str(v_in.shape()) + "; expected (Hkv=" +
                     std::to_string(Hkv) + ", C=" + std::to_string(C) + ", hdv) to match k " + shape_str(k_in.shape()));
  if (!cfg.causal) throw ValueError(std::string(op) + ": attention over a cache is causal; causal must be true");
  if (pos < 0) throw ValueError(std::string(op) + ": pos must be >= 0, got " + std::to_string(pos));
  check_cfg(cfg, op);
  const int64_t need = T == 0 ? 0 : pos + T - (cfg.window > 0 ? std::max<int64_t>(0, pos - cfg.window + 1) : 0);
  if (need > C)
    throw ValueError(std::string(op) + ": k holds C=" + std::to_string(C) + " positions but the queries at " +
                     std::to_string(pos) + ".." + std::to_string(pos + T - 1) + " see " + std::to_string(need) +
                     " keys; the ring must hold them all");
  const int64_t hdv = v_in.dim(2);
  out = detail::prepare_out(out, {T, H, hdv}, op, {{q_in, "q", false}, {k_in, "k", false}, {v_in, "v", false}});
  if (out.numel() == 0) return out;
  const bool f16 = half_rows(k_in) && half_rows(v_in);
  const Tensor q = detail::f32_rows(q_in, op, "q");
  const Tensor k = f16 ? k_in : detail::f32_rows(k_in, op, "k"), v = f16 ? v_in : detail::f32_rows(v_in, op, "v");
  const auto es = [](const Tensor& t, int i) { return t.strides()[size_t(i)] / t.itemsize(); };
  const int64_t G = H / Hkv, esize = k.itemsize();
  std::vector<AttentionHead> heads;
  for (int64_t g = 0; g < Hkv; ++g) {
    AttentionHead a{};
    a.q = q.data<float>() + g * G * es(q, 1);
    a.q_t = es(q, 0), a.q_h = es(q, 1);
    a.out = out.data<float>() + g * G * hdv;
    a.o_t = H * hdv, a.o_h = hdv;
    a.k = static_cast<const std::byte*>(k.raw()) + g * es(k, 0) * esize;
    a.v = static_cast<const std::byte*>(v.raw()) + g * es(v, 0) * esize;
    a.k_s = es(k, 1), a.v_s = es(v, 1), a.ring = C, a.f16 = f16;
    a.T = T, a.p0 = pos, a.S = pos + T;
    heads.push_back(a);
  }
  attention_heads(heads, cfg, G, hd, hdv);
  return out;
}

}  // namespace lb::ops
#endif

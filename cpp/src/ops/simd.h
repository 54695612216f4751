// One f32 vector type per instruction-set build (LB_ISA = avx512 | avx2 | neon), so a kernel body is
// written once against `simd::V` and compiled per ISA (CTranslate2's scheme). Tails use partial
// loads/stores that never touch memory past the end, so kernels need no scalar tail loops.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(LB_ISA)
#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#elif defined(__ARM_NEON)
#include <arm_neon.h>
#endif

// The inline namespace gives each ISA build its own linker names: a copy the compiler chose not to
// inline must never be merged with another ISA's copy (the ODR would let the linker keep either).
namespace lb::simd {
inline namespace LB_ISA {

#if defined(__AVX512F__)
struct V { __m512 v; };
constexpr int W = 16;
inline __mmask16 tail_mask(int n) { return __mmask16((1u << n) - 1u); }
inline V load(const float* p) { return {_mm512_loadu_ps(p)}; }
inline V load_n(const float* p, int n, float fill = 0.f) { return {_mm512_mask_loadu_ps(_mm512_set1_ps(fill), tail_mask(n), p)}; }
inline void store(float* p, V a) { _mm512_storeu_ps(p, a.v); }
inline void store_n(float* p, V a, int n) { _mm512_mask_storeu_ps(p, tail_mask(n), a.v); }
inline V set1(float x) { return {_mm512_set1_ps(x)}; }
inline V operator+(V a, V b) { return {_mm512_add_ps(a.v, b.v)}; }
inline V operator-(V a, V b) { return {_mm512_sub_ps(a.v, b.v)}; }
inline V operator*(V a, V b) { return {_mm512_mul_ps(a.v, b.v)}; }
inline V operator/(V a, V b) { return {_mm512_div_ps(a.v, b.v)}; }
inline V fma(V a, V b, V c) { return {_mm512_fmadd_ps(a.v, b.v, c.v)}; }  // a*b + c
inline V max(V a, V b) { return {_mm512_max_ps(a.v, b.v)}; }
inline V min(V a, V b) { return {_mm512_min_ps(a.v, b.v)}; }
inline V abs(V a) { return {_mm512_abs_ps(a.v)}; }
inline float hsum(V a) { return _mm512_reduce_add_ps(a.v); }
inline float hmax(V a) { return _mm512_reduce_max_ps(a.v); }
// where(a < b, x, y)
inline V select_lt(V a, V b, V x, V y) { return {_mm512_mask_blend_ps(_mm512_cmp_ps_mask(a.v, b.v, _CMP_LT_OQ), y.v, x.v)}; }
inline V select_gt(V a, V b, V x, V y) { return {_mm512_mask_blend_ps(_mm512_cmp_ps_mask(a.v, b.v, _CMP_GT_OQ), y.v, x.v)}; }
// 2^n for integral-valued n in [-126, 127]
inline V exp2i(V n) {
  __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n.v), _mm512_set1_epi32(127)), 23);
  return {_mm512_castsi512_ps(e)};
}
inline V round(V a) { return {_mm512_roundscale_ps(a.v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)}; }
inline V load_f16(const uint16_t* p) { return {_mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)))}; }
inline V load_bf16(const uint16_t* p) {
  return {_mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))), 16))};
}
inline void store_f16(uint16_t* p, V a) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtps_ph(a.v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}

#elif defined(__AVX2__)
struct V { __m256 v; };
constexpr int W = 8;
inline __m256i tail_mask(int n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
inline V load(const float* p) { return {_mm256_loadu_ps(p)}; }
inline V load_n(const float* p, int n, float fill = 0.f) {
  __m256i m = tail_mask(n);
  return {_mm256_blendv_ps(_mm256_set1_ps(fill), _mm256_maskload_ps(p, m), _mm256_castsi256_ps(m))};
}
inline void store(float* p, V a) { _mm256_storeu_ps(p, a.v); }
inline void store_n(float* p, V a, int n) { _mm256_maskstore_ps(p, tail_mask(n), a.v); }
inline V set1(float x) { return {_mm256_set1_ps(x)}; }
inline V operator+(V a, V b) { return {_mm256_add_ps(a.v, b.v)}; }
inline V operator-(V a, V b) { return {_mm256_sub_ps(a.v, b.v)}; }
inline V operator*(V a, V b) { return {_mm256_mul_ps(a.v, b.v)}; }
inline V operator/(V a, V b) { return {_mm256_div_ps(a.v, b.v)}; }
inline V fma(V a, V b, V c) { return {_mm256_fmadd_ps(a.v, b.v, c.v)}; }
inline V max(V a, V b) { return {_mm256_max_ps(a.v, b.v)}; }
inline V min(V a, V b) { return {_mm256_min_ps(a.v, b.v)}; }
inline V abs(V a) { return {_mm256_andnot_ps(_mm256_set1_ps(-0.f), a.v)}; }
inline float hsum(V a) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(a.v), _mm256_extractf128_ps(a.v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
inline float hmax(V a) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(a.v), _mm256_extractf128_ps(a.v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
inline V select_lt(V a, V b, V x, V y) { return {_mm256_blendv_ps(y.v, x.v, _mm256_cmp_ps(a.v, b.v, _CMP_LT_OQ))}; }
inline V select_gt(V a, V b, V x, V y) { return {_mm256_blendv_ps(y.v, x.v, _mm256_cmp_ps(a.v, b.v, _CMP_GT_OQ))}; }
inline V exp2i(V n) {
  __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n.v), _mm256_set1_epi32(127)), 23);
  return {_mm256_castsi256_ps(e)};
}
inline V round(V a) { return {_mm256_round_ps(a.v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)}; }
inline V load_f16(const uint16_t* p) { return {_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)))}; }
inline V load_bf16(const uint16_t* p) {
  return {_mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))), 16))};
}
inline void store_f16(uint16_t* p, V a) {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph(a.v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}

#elif defined(__ARM_NEON)
struct V { float32x4_t v; };
constexpr int W = 4;
inline V load(const float* p) { return {vld1q_f32(p)}; }
inline V load_n(const float* p, int n, float fill = 0.f) {
  float b[4] = {fill, fill, fill, fill};
  std::memcpy(b, p, sizeof(float) * n);
  return {vld1q_f32(b)};
}
inline void store(float* p, V a) { vst1q_f32(p, a.v); }
inline void store_n(float* p, V a, int n) {
  float b[4];
  vst1q_f32(b, a.v);
  std::memcpy(p, b, sizeof(float) * n);
}
inline V set1(float x) { return {vdupq_n_f32(x)}; }
inline V operator+(V a, V b) { return {vaddq_f32(a.v, b.v)}; }
inline V operator-(V a, V b) { return {vsubq_f32(a.v, b.v)}; }
inline V operator*(V a, V b) { return {vmulq_f32(a.v, b.v)}; }
inline V operator/(V a, V b) { return {vdivq_f32(a.v, b.v)}; }
inline V fma(V a, V b, V c) { return {vfmaq_f32(c.v, a.v, b.v)}; }
inline V max(V a, V b) { return {vmaxq_f32(a.v, b.v)}; }
inline V min(V a, V b) { return {vminq_f32(a.v, b.v)}; }
inline V abs(V a) { return {vabsq_f32(a.v)}; }
inline float hsum(V a) { return vaddvq_f32(a.v); }
inline float hmax(V a) { return vmaxvq_f32(a.v); }
inline V select_lt(V a, V b, V x, V y) { return {vbslq_f32(vcltq_f32(a.v, b.v), x.v, y.v)}; }
inline V select_gt(V a, V b, V x, V y) { return {vbslq_f32(vcgtq_f32(a.v, b.v), x.v, y.v)}; }
inline V exp2i(V n) {
  int32x4_t e = vshlq_n_s32(vaddq_s32(vcvtnq_s32_f32(n.v), vdupq_n_s32(127)), 23);
  return {vreinterpretq_f32_s32(e)};
}
inline V round(V a) { return {vrndnq_f32(a.v)}; }
inline V load_f16(const uint16_t* p) { return {vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p)))}; }
inline V load_bf16(const uint16_t* p) { return {vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(p), 16))}; }
inline void store_f16(uint16_t* p, V a) { vst1_u16(p, vreinterpret_u16_f16(vcvt_f16_f32(a.v))); }
#else
#error "LB_ISA is set but no vector extension is enabled for this build"
#endif

// The Cephes expf core for xc in [-87.34, 88.72]: Cody-Waite reduction by n = round(xc / ln 2),
// degree-6 polynomial p ~ exp(r). Returns p and n; the result is p * 2^n.
inline V exp_reduce(V xc, V& n) {
  n = round(xc * set1(1.44269504088896341f));
  V r = fma(n, set1(-0.693359375f), xc);
  r = fma(n, set1(2.12194440e-4f), r);
  V p = set1(1.9875691500e-4f);
  p = fma(p, r, set1(1.3981999507e-3f));
  p = fma(p, r, set1(8.3334519073e-3f));
  p = fma(p, r, set1(4.1665795894e-2f));
  p = fma(p, r, set1(1.6666665459e-1f));
  p = fma(p, r, set1(5.0000001201e-1f));
  return fma(p, r * r, r + set1(1.f));
}

// exp(x) to ~1 ulp. Flushes to 0 below -87.34 (where the result would be subnormal), +inf above
// 88.72; NaN stays NaN (the operand order of min/max is chosen so NaN propagates on x86).
inline V exp(V x) {
  const V hi = set1(88.72283905206835f), lo = set1(-87.33654475f);
  V n;
  const V p = exp_reduce(min(hi, max(lo, x)), n);  // n in [-126, 128]
  // 2^128 is not a float: scale by 2^(n-1) then 2 for positive n.
  V y = select_gt(n, set1(0.f), p * exp2i(n - set1(1.f)) * set1(2.f), p * exp2i(n));
  y = select_lt(x, lo, set1(0.f), y);
  return select_gt(x, hi, set1(INFINITY), y);
}

// exp(x) for x <= 0 (or NaN): no overflow branch, which softmax and sigmoids never need.
inline V exp_nonpos(V x) {
  const V lo = set1(-87.33654475f);
  V n;
  const V p = exp_reduce(max(lo, x), n);  // n in [-126, 0]
  return select_lt(x, lo, set1(0.f), p * exp2i(n));
}

// x * sigmoid(z) with e = exp(-|z|) <= 1: sigmoid(z) = 1 / (1 + e) for z >= 0, e / (1 + e) below,
// so nothing overflows and both tails keep their relative accuracy.
inline V mul_sigmoid(V x, V z) {
  const V e = exp_nonpos(set1(0.f) - abs(z));
  return x * select_lt(z, set1(0.f), e, set1(1.f)) / (set1(1.f) + e);
}

// SiLU: x * sigmoid(x).
inline V silu(V x) { return mul_sigmoid(x, x); }

// GELU, tanh form: 0.5 x (1 + tanh(u)) == x * sigmoid(2u), u = sqrt(2/pi) (x + 0.044715 x^3).
inline V gelu_tanh(V x) {
  const V z = x * fma(x * x, set1(2.f * 0.7978845608028654f * 0.044715f), set1(2.f * 0.7978845608028654f));
  return mul_sigmoid(x, z);
}

// erfc(z) for z >= 0 (Numerical Recipes' Chebyshev fit, fractional error < 1.2e-7).
inline V erfc_nonneg(V z) {
  V t = set1(1.f) / fma(z, set1(0.5f), set1(1.f));
  V p = set1(0.17087277f);
  p = fma(p, t, set1(-0.82215223f));
  p = fma(p, t, set1(1.48851587f));
  p = fma(p, t, set1(-1.13520398f));
  p = fma(p, t, set1(0.27886807f));
  p = fma(p, t, set1(-0.18628806f));
  p = fma(p, t, set1(0.09678418f));
  p = fma(p, t, set1(0.37409196f));
  p = fma(p, t, set1(1.00002368f));
  p = fma(p, t, set1(-1.26551223f));
  return t * exp(p - z * z);
}

// Exact GELU: x * Phi(x) = 0.5 x erfc(-x / sqrt 2). Using erfc (not 1 + erf) keeps the left tail accurate.
inline V gelu_erf(V x) {
  V z = abs(x) * set1(0.70710678118654752f);
  V c = erfc_nonneg(z);                           // erfc(|x|/sqrt2)
  V e = select_lt(x, set1(0.f), c, set1(2.f) - c);  // erfc(-x/sqrt2)
  return set1(0.5f) * x * e;
}

}  // namespace LB_ISA
}  // namespace lb::simd
#endif  // LB_ISA

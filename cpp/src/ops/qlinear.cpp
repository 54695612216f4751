// Quantized linear: y = x @ W^T with W in a ggml block format, read as stored (no f32 copy).
//
// Each row of x is quantized on the fly to int16 in blocks of 32 (q = round(x / d), d = max|x| / 32639:
// the largest int16 range whose values split into two int8 halves, q = 256 h + l, for vpdpbusd)
// with, per 16 elements, s = d * sum(q). int16, not int8 as ggml's q8_0/q8_K: int8 activations moved
// the logits of SmolLM2 and Gemma 3 by 3-5% (top-1 96-98% on wikitext), int16 by ~1e-4 of their range.
// (activation_bits() == 8 opts into int8 for prefill: the same blocks with d = max|x| / 127, multiplied
// four elements per vpdpbusd by the packed kernels; see packed_gemm8.) Every weight type is then read as 32-element chunks of
// unsigned integers u with, per 16 elements, a scale a and an offset c (element = a * u + c):
//
//   q4_0: u = nibble, a = d, c = -8d          q4_1: u = nibble, a = d, c = m
//   q5_0: u = 5 bits, a = d, c = -16d         q5_1: u = 5 bits, a = d, c = m
//   q8_0: u = q + 128, a = d, c = -128d       q4_k/q5_k: a = d * sc, c = -dmin * m (per 32)
//   q6_k: u = 6 bits, a = d * sc, c = -32a    q2_k: a = d * (sc & 15), c = -dmin * (sc >> 4)
//   q3_k: u = 2 bits + 4 * high bit, a = d * (sc - 32), c = -4a
//
// so one dot product serves all ten types: sum over halves h of a_h * d * (u . q)_h + c_h * s_h.
// The integer part (u . q) is a 16-bit dot product into int32 lanes: AVX-512 VNNI's vpdpwssd (the
// avx512 level requires VNNI); u <= 255 and |q| <= 32639, so a half's 16 products stay below 2^31.
#include <algorithm>
#include <cstddef>
#include <cstring>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "lmblocks/error.h"
#include "lmblocks/quant.h"

#include "ops/kernel.h"
#include "quant/blocks.h"

namespace lb::kernels {

// One 32-element chunk of a weight row: element i = a[i / 16] * u[i] + c[i / 16].
struct Chunk {
  alignas(32) uint8_t u[32];
  float a[2], c[2];
};

// The largest |q| of an int16 activation: the widest range that splits into int8 halves q = 256 h + l
// (split_act), so packed weights can meet activations in vpdpbusd.
constexpr float kActMax = 32639.f;
// ... and of an int8 one (activation_bits() == 8): ggml's q8_0 range, one vpdpbusd per four elements.
constexpr float kAct8Max = 127.f;

// ---- The packed layout (lb::ops::PackedWeight) -----------------------------------------------------
//
// Rows go in groups of 16; a group is a run of units in element order, one per 32-element chunk
// (q4_0 ... q8_0) or per 256-element super-block (k-quants). A "quad vector" is 64 bytes: byte 4r + b is
// element 4q + b of row r, so the 16 dword lanes of one vpdpbusd are the 16 rows. Planes hold the quants:
//   nibbles (256 B per chunk): vector i, low nibbles = quad 2i, high nibbles = quad 2i + 1
//   fifth bits (64 B): eight u64 masks, mask q bit 4r + b = bit 4 of quad q's byte 4r + b
//   q6_k high bits (128 B): vector m, bits 2t..2t+1 of byte 4r + b = bits 4..5 of quad 4m + t
//   bytes (q8_0, 512 B): quad q as it is, u = q8 + 128
// Units: q4_0/q5_0 d[16] | nibbles | (fifth);  q4_1/q5_1 d[16] m[16] | nibbles | (fifth);  q8_0 d[16] | bytes;
// q4_k/q5_k d[16] dmin[16] sc[8][16] m[8][16] | 8 x (nibbles | (fifth));  q6_k d[16] sc[16][16] | 8 x (nibbles |
// high bits). d, m, dmin: raw f16; sc, m: the 6-bit sub-block values as bytes (q6_k: int8). Packed sizes
// equal the original's, but for q4_k/q5_k (+2.8%: unpacked 6-bit scales).
constexpr int kGroup = 16;

constexpr bool is_k_type(DType t) { return t == DType::q4_k || t == DType::q5_k || t == DType::q6_k; }
constexpr int64_t unit_chunks(DType t) { return is_k_type(t) ? 8 : 1; }
constexpr int64_t unit_bytes(DType t) {
  switch (t) {
    case DType::q4_0: return 32 + 256;
    case DType::q5_0: return 32 + 256 + 64;
    case DType::q4_1: return 64 + 256;
    case DType::q5_1: return 64 + 256 + 64;
    case DType::q8_0: return 32 + 512;
    case DType::q4_k: return 320 + 8 * 256;
    case DType::q5_k: return 320 + 8 * (256 + 64);
    case DType::q6_k: return 288 + 8 * (256 + 128);
    default: return 0;
  }
}

}  // namespace lb::kernels

// Vector variants: avx512 (VNNI: matrix-vector and the prefill tile) and avx2 (matrix-vector; prefill
// keeps the dequantize-and-sgemm path there). The references here are the spec the tests hold them to.
namespace lb::kernels {
// x (K,), K % 32 == 0 -> q (K,), d (K / 32,), s (K / 16,).
void quantize_act_ref(const float* x, int64_t K, int16_t* q, float* d, float* s, float qmax);
// y[r] = dot(row r of W, activation) for r in [0, n): W's rows are `row_bytes` apart, of type `type`.
void qdot_rows_ref(DType type, const std::byte* w, int64_t row_bytes, int64_t n, int64_t K, const int16_t* q,
                   const float* d, const float* s, float* y);
namespace avx512 {
void quantize_act(const float* x, int64_t K, int16_t* q, float* d, float* s, float qmax);
void qdot_rows(DType type, const std::byte* w, int64_t row_bytes, int64_t n, int64_t K, const int16_t* q,
               const float* d, const float* s, float* y);
// Activation rows (q, d, s of row m at m * K, m * K / 32, m * K / 16) regrouped in tiles of kTokens for
// qgemm_rows; made once per product and shared by every panel.
constexpr int kTokens = 12;  // 12 int32 + 12 float accumulators fit the 32 zmm registers
using PackedTokens = ops::PackedActivations;  // the M >= 4 form
// bits = 8: q quantized with |q| <= 127, packed as int8 quads (pair p of the int16 layout becomes quad p of
// four int8, eight per chunk) for packed_gemm8. s holds per chunk its halves' s and their sum.
PackedTokens pack_tokens(const int16_t* q, const float* d, const float* s, int64_t M, int64_t K, int bits = 16);
// y[m * ldy + r] for the M packed activation rows and n <= 16 weight rows: the rows are decoded once into a
// panel (rows as lanes), then multiplied 16 rows x 12 tokens at a time.
void qgemm_rows(DType type, const std::byte* w, int64_t row_bytes, int64_t n, const PackedTokens& a, float* y,
                int64_t ldy);
// Packed weights. split_act: one row of q (K,), |q| <= 32639, as int8 halves q = 256 h + l, per chunk
// the eight dwords of h's quads then the eight of l's (hl: K / 2 int32). packed_rows: output rows
// [16 g0, 16 g1) (at most N) for M <= 3 split rows (hl, d, s of row m at m * K / 2, m * K / 32, m * K / 16).
void split_act(const int16_t* q, int64_t K, int32_t* hl);
void packed_rows(DType type, const uint8_t* w, int64_t group_bytes, int64_t g0, int64_t g1, int64_t N, int64_t K,
                 const int32_t* hl, const float* d, const float* s, int64_t M, float* y, int64_t ldy);
// qgemm_rows for the n <= 16 rows of one packed group.
void packed_gemm(DType type, const uint8_t* group, int64_t n, const PackedTokens& a, float* y, int64_t ldy);
// packed_gemm for int8 tokens: the group's unsigned quads times them directly, one vpdpbusd per four
// elements instead of one vpdpwssd per two.
void packed_gemm8(DType type, const uint8_t* group, int64_t n, const PackedTokens& a, float* y, int64_t ldy);
}  // namespace avx512
namespace avx2 {  // matrix-vector only: prefill on AVX2 dequantizes panels for OpenBLAS's sgemm
void quantize_act(const float* x, int64_t K, int16_t* q, float* d, float* s, float qmax);
void qdot_rows(DType type, const std::byte* w, int64_t row_bytes, int64_t n, int64_t K, const int16_t* q,
               const float* d, const float* s, float* y);
}  // namespace avx2

// ---- chunk decoders: the spec of every weight format, shared by the reference and SIMD paths -------

namespace {

template <class Block>
const Block& block_at(const std::byte* row, int64_t i) {
  return reinterpret_cast<const Block*>(row)[i];
}

void nibbles(const uint8_t* qs, uint8_t* u) {  // element l in qs[l]'s low nibble, l + 16 in its high one
  for (int l = 0; l < 16; ++l) {
    u[l] = qs[l] & 0x0F;
    u[l + 16] = qs[l] >> 4;
  }
}
void fifth_bits(const uint8_t* qh, uint8_t* u) {  // bit l of the little-endian u32 qh is bit 4 of element l
  uint32_t h;
  std::memcpy(&h, qh, 4);
  for (int l = 0; l < 32; ++l) u[l] |= uint8_t(((h >> l) & 1) << 4);
}
void same_halves(Chunk& ch, float a, float c) {
  ch.a[0] = ch.a[1] = a;
  ch.c[0] = ch.c[1] = c;
}

void chunk_q4_0(const std::byte* row, int64_t j, Chunk& ch) {
  const auto& b = block_at<block_q4_0>(row, j);
  nibbles(b.qs, ch.u);
  const float d = f16_to_f32(b.d);
  same_halves(ch, d, -8.f * d);
}
void chunk_q4_1(const std::byte* row, int64_t j, Chunk& ch) {
  const auto& b = block_at<block_q4_1>(row, j);
  nibbles(b.qs, ch.u);
  same_halves(ch, f16_to_f32(b.d), f16_to_f32(b.m));
}
void chunk_q5_0(const std::byte* row, int64_t j, Chunk& ch) {
  const auto& b = block_at<block_q5_0>(row, j);
  nibbles(b.qs, ch.u);
  fifth_bits(b.qh, ch.u);
  const float d = f16_to_f32(b.d);
  same_halves(ch, d, -16.f * d);
}
void chunk_q5_1(const std::byte* row, int64_t j, Chunk& ch) {
  const auto& b = block_at<block_q5_1>(row, j);
  nibbles(b.qs, ch.u);
  fifth_bits(b.qh, ch.u);
  same_halves(ch, f16_to_f32(b.d), f16_to_f32(b.m));
}
void chunk_q8_0(const std::byte* row, int64_t j, Chunk& ch) {
  const auto& b = block_at<block_q8_0>(row, j);
  for (int l = 0; l < 32; ++l) ch.u[l] = uint8_t(b.qs[l] + 128);
  const float d = f16_to_f32(b.d);
  same_halves(ch, d, -128.f * d);
}
// k-quants: chunk j is sub-range [32 (j % 8), +32) of super-block j / 8.
void chunk_q4_k(const std::byte* row, int64_t j, Chunk& ch) {
  const auto& b = block_at<block_q4_k>(row, j / 8);
  const int c = int(j % 8), shift = 4 * (c & 1);
  const uint8_t* q = b.qs + 32 * (c / 2);
  for (int l = 0; l < 32; ++l) ch.u[l] = (q[l] >> shift) & 0x0F;
  uint8_t sc, m;
  scale_min_k4(c, b.scales, sc, m);
  same_halves(ch, f16_to_f32(b.d) * sc, -(f16_to_f32(b.dmin) * m));
}
void chunk_q5_k(const std::byte* row, int64_t j, Chunk& ch) {
  const auto& b = block_at<block_q5_k>(row, j / 8);
  const int c = int(j % 8), shift = 4 * (c & 1);
  const uint8_t* q = b.qs + 32 * (c / 2);
  for (int l = 0; l < 32; ++l) ch.u[l] = uint8_t(((q[l] >> shift) & 0x0F) | (((b.qh[l] >> c) & 1) << 4));
  uint8_t sc, m;
  scale_min_k4(c, b.scales, sc, m);
  same_halves(ch, f16_to_f32(b.d) * sc, -(f16_to_f32(b.dmin) * m));
}
void chunk_q6_k(const std::byte* row, int64_t j, Chunk& ch) {
  const auto& b = block_at<block_q6_k>(row, j / 8);
  const int c = int(j % 8), half = c / 4, k = c % 4;
  const uint8_t* ql = b.ql + 64 * half + 32 * (k & 1);
  const uint8_t* qh = b.qh + 32 * half;
  for (int l = 0; l < 32; ++l) ch.u[l] = uint8_t(((ql[l] >> (4 * (k >> 1))) & 0x0F) | (((qh[l] >> (2 * k)) & 3) << 4));
  const float d = f16_to_f32(b.d);
  for (int h = 0; h < 2; ++h) {
    ch.a[h] = d * b.scales[8 * half + 2 * k + h];
    ch.c[h] = -32.f * ch.a[h];
  }
}
void chunk_q2_k(const std::byte* row, int64_t j, Chunk& ch) {
  const auto& b = block_at<block_q2_k>(row, j / 8);
  const int c = int(j % 8), half = c / 4, shift = 2 * (c % 4);
  const uint8_t* q = b.qs + 32 * half;
  for (int l = 0; l < 32; ++l) ch.u[l] = (q[l] >> shift) & 3;
  const float d = f16_to_f32(b.d), dmin = f16_to_f32(b.dmin);
  for (int h = 0; h < 2; ++h) {
    const uint8_t sc = b.scales[8 * half + 2 * (c % 4) + h];
    ch.a[h] = d * (sc & 0x0F);
    ch.c[h] = -(dmin * (sc >> 4));
  }
}
void chunk_q3_k(const std::byte* row, int64_t j, Chunk& ch) {
  const auto& b = block_at<block_q3_k>(row, j / 8);
  const int c = int(j % 8), half = c / 4, shift = 2 * (c % 4);
  const uint8_t* q = b.qs + 32 * half;
  for (int l = 0; l < 32; ++l) ch.u[l] = uint8_t(((q[l] >> shift) & 3) | (((b.hmask[l] >> c) & 1) << 2));
  int8_t sc[16];
  q3_k_scales(b.scales, sc);
  const float d = f16_to_f32(b.d);
  for (int h = 0; h < 2; ++h) {
    ch.a[h] = d * sc[8 * half + 2 * (c % 4) + h];
    ch.c[h] = -4.f * ch.a[h];
  }
}

using ChunkFn = void (*)(const std::byte*, int64_t, Chunk&);

// Types whose two halves of a chunk have their own scale (16-element sub-blocks).
template <DType T>
constexpr bool kHalves = T == DType::q6_k || T == DType::q2_k || T == DType::q3_k;

// Types whose chunks have an offset term c (q8_0's panel holds its signed quants; f16/bf16 panels are
// symmetric int16 too).
template <DType T>
constexpr bool kOffset = T != DType::q8_0 && T != DType::f16 && T != DType::bf16;

// Every weight type with a chunk decoder, for the per-ISA switches.
#define LB_QLINEAR_TYPES(X) X(q4_0) X(q4_1) X(q5_0) X(q5_1) X(q8_0) X(q2_k) X(q3_k) X(q4_k) X(q5_k) X(q6_k)

ChunkFn chunk_fn(DType t) {
  switch (t) {
    case DType::q4_0: return chunk_q4_0;
    case DType::q4_1: return chunk_q4_1;
    case DType::q5_0: return chunk_q5_0;
    case DType::q5_1: return chunk_q5_1;
    case DType::q8_0: return chunk_q8_0;
    case DType::q2_k: return chunk_q2_k;
    case DType::q3_k: return chunk_q3_k;
    case DType::q4_k: return chunk_q4_k;
    case DType::q5_k: return chunk_q5_k;
    case DType::q6_k: return chunk_q6_k;
    default: return nullptr;
  }
}

}  // namespace

// ---- byte-level chunk decoders, shared by the avx512 and avx2 builds (-mavx512f implies AVX2) --------
#if LB_SIMD && defined(__AVX2__)
namespace LB_ISA {
namespace {

inline float h2f(uint16_t h) { return _cvtsh_ss(h); }

// q4_k/q5_k: the bytes of chunk c of super-block b, and the super-block's eight (a, c) pairs.
template <DType T>
using KBlock = std::conditional_t<T == DType::q4_k, block_q4_k, block_q5_k>;

template <DType T>
[[gnu::always_inline]] inline __m256i k_bytes(const KBlock<T>& b, int c) {
  const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b.qs + 32 * (c / 2)));
  __m256i u = _mm256_and_si256(c & 1 ? _mm256_srli_epi16(v, 4) : v, _mm256_set1_epi8(0x0F));
  if constexpr (T == DType::q5_k) {  // bit c of qh[l]: shifted to bit 0 of its byte, then to bit 4
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b.qh));
    u = _mm256_or_si256(u, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, c), _mm256_set1_epi8(1)), 4));
  }
  return u;
}

struct KScales {
  float a[8], c[8];
};

template <class B>
inline KScales k_scales(const B& b) {
  KScales k;
  const float dd = h2f(b.d), dm = h2f(b.dmin);
  for (int c = 0; c < 8; ++c) {
    uint8_t sc, m;
    scale_min_k4(c, b.scales, sc, m);
    k.a[c] = dd * float(sc);
    k.c[c] = -(dm * float(m));
  }
  return k;
}

// One 32-element chunk as unsigned bytes in element order, and its a, c (per half).
struct B32 {
  __m256i u;
  float a0, a1, c0, c1;
};

inline __m256i nibbles256(const uint8_t* qs) {
  const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
  const __m128i m = _mm_set1_epi8(0x0F);
  return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(v, 4), m), _mm_and_si128(v, m));
}
// Byte l = 0x10 where bit l of the little-endian u32 at qh is set, else 0.
inline __m256i fifth_bits256(const uint8_t* qh) {
  uint32_t h;
  std::memcpy(&h, qh, 4);
  const __m256i spread = _mm256_shuffle_epi8(  // bytes 8i..8i+7 <- byte i of h
      _mm256_set1_epi32(int(h)), _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0));
  const __m256i bit = _mm256_set1_epi64x(int64_t(0x8040201008040201));
  return _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit), _mm256_set1_epi8(0x10));
}

template <DType T>
[[gnu::always_inline]] inline B32 load_bytes(const std::byte* row, int64_t j) {
  if constexpr (T == DType::q4_0 || T == DType::q5_0) {
    using B = std::conditional_t<T == DType::q4_0, block_q4_0, block_q5_0>;
    const auto& b = block_at<B>(row, j);
    const float d = h2f(b.d), c = (T == DType::q4_0 ? -8.f : -16.f) * d;
    __m256i u = nibbles256(b.qs);
    if constexpr (T == DType::q5_0) u = _mm256_or_si256(u, fifth_bits256(b.qh));
    return {u, d, d, c, c};
  } else if constexpr (T == DType::q4_1 || T == DType::q5_1) {
    using B = std::conditional_t<T == DType::q4_1, block_q4_1, block_q5_1>;
    const auto& b = block_at<B>(row, j);
    const float d = h2f(b.d), m = h2f(b.m);
    __m256i u = nibbles256(b.qs);
    if constexpr (T == DType::q5_1) u = _mm256_or_si256(u, fifth_bits256(b.qh));
    return {u, d, d, m, m};
  } else if constexpr (T == DType::q8_0) {
    const auto& b = block_at<block_q8_0>(row, j);
    const float d = h2f(b.d);
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b.qs));
    return {_mm256_xor_si256(v, _mm256_set1_epi8(char(0x80))), d, d, -128.f * d, -128.f * d};
  } else if constexpr (T == DType::q4_k || T == DType::q5_k) {
    const auto& b = block_at<KBlock<T>>(row, j / 8);
    const int c = int(j % 8);
    uint8_t sc, m;
    scale_min_k4(c, b.scales, sc, m);
    const float a = h2f(b.d) * sc, off = -(h2f(b.dmin) * m);
    return {k_bytes<T>(b, c), a, a, off, off};
  } else if constexpr (T == DType::q6_k) {
    const auto& b = block_at<block_q6_k>(row, j / 8);
    const int c = int(j % 8), half = c / 4, k = c % 4;
    const __m256i l = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b.ql + 64 * half + 32 * (k & 1)));
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b.qh + 32 * half));
    const __m256i lo = _mm256_and_si256(k >> 1 ? _mm256_srli_epi16(l, 4) : l, _mm256_set1_epi8(0x0F));
    const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(h, 2 * k), _mm256_set1_epi8(3));
    const float d = h2f(b.d);
    const float a0 = d * b.scales[8 * half + 2 * k], a1 = d * b.scales[8 * half + 2 * k + 1];
    return {_mm256_or_si256(lo, _mm256_slli_epi16(hi, 4)), a0, a1, -32.f * a0, -32.f * a1};
  } else {
    Chunk ch;
    chunk_fn(T)(row, j, ch);
    return {_mm256_load_si256(reinterpret_cast<const __m256i*>(ch.u)), ch.a[0], ch.a[1], ch.c[0], ch.c[1]};
  }
}

}  // namespace
}  // namespace LB_ISA
#endif

#if LB_SIMD && defined(__AVX512F__)
namespace LB_ISA {

void quantize_act(const float* x, int64_t K, int16_t* q, float* d, float* s, float qmax) {
  for (int64_t j = 0; j < K / 32; ++j) {
    const __m512 v0 = _mm512_loadu_ps(x + 32 * j), v1 = _mm512_loadu_ps(x + 32 * j + 16);
    const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
    const float dj = amax / qmax, id = amax > 0.f ? qmax / amax : 0.f;
    const __m512 vid = _mm512_set1_ps(id);
    const __m512i i0 = _mm512_cvtps_epi32(_mm512_mul_ps(v0, vid)), i1 = _mm512_cvtps_epi32(_mm512_mul_ps(v1, vid));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + 32 * j), _mm512_cvtsepi32_epi16(i0));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + 32 * j + 16), _mm512_cvtsepi32_epi16(i1));
    d[j] = dj;
    s[2 * j] = dj * float(_mm512_reduce_add_epi32(i0));
    s[2 * j + 1] = dj * float(_mm512_reduce_add_epi32(i1));
  }
}

namespace {

// One 32-element chunk: its integer values as int16 lanes in element order (unsigned u of the chunk
// decoders, except q8_0, whose signed quants are used as they are, with c = 0), and its a, c (per half).
struct U32 {
  __m512i u;
  float a0, a1, c0, c1;
};

inline __m512i widen(__m256i bytes) { return _mm512_cvtepu8_epi16(bytes); }
// 16 packed bytes -> 32 int16: low nibbles (elements 0-15), then high nibbles (16-31).
inline __m512i nibbles512(const uint8_t* qs) {
  const __m256i v = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(qs)));
  return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_and_si256(v, _mm256_set1_epi16(0x0F))),
                            _mm256_srli_epi16(v, 4), 1);
}
inline __m512i fifth_bits512(const uint8_t* qh) {
  uint32_t h;
  std::memcpy(&h, qh, 4);
  return _mm512_maskz_mov_epi16(__mmask32(h), _mm512_set1_epi16(0x10));
}

template <DType T>
[[gnu::always_inline]] inline U32 load_chunk(const std::byte* row, int64_t j) {
  if constexpr (T == DType::q4_0) {
    const auto& b = block_at<block_q4_0>(row, j);
    const float d = h2f(b.d);
    return {nibbles512(b.qs), d, d, -8.f * d, -8.f * d};
  } else if constexpr (T == DType::q4_1) {
    const auto& b = block_at<block_q4_1>(row, j);
    const float d = h2f(b.d), m = h2f(b.m);
    return {nibbles512(b.qs), d, d, m, m};
  } else if constexpr (T == DType::q5_0) {
    const auto& b = block_at<block_q5_0>(row, j);
    const float d = h2f(b.d);
    return {_mm512_or_si512(nibbles512(b.qs), fifth_bits512(b.qh)), d, d, -16.f * d, -16.f * d};
  } else if constexpr (T == DType::q5_1) {
    const auto& b = block_at<block_q5_1>(row, j);
    const float d = h2f(b.d), m = h2f(b.m);
    return {_mm512_or_si512(nibbles512(b.qs), fifth_bits512(b.qh)), d, d, m, m};
  } else if constexpr (T == DType::q8_0) {
    const auto& b = block_at<block_q8_0>(row, j);
    const float d = h2f(b.d);
    // signed int16 lanes straight from the int8 quants: no +128 offset, so no offset term (c = 0)
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b.qs));
    return {_mm512_cvtepi8_epi16(v), d, d, 0.f, 0.f};
  } else {
    const B32 b = load_bytes<T>(row, j);
    return {widen(b.u), b.a0, b.a1, b.c0, b.c1};
  }
}

// sum over chunks j of a_h * d_j * (u . q)_h + c_h * s_h: one vpdpwssd per chunk, whose 16 int32 lanes
// hold half 0 (lanes 0-7) and half 1 (8-15). One row at a time: interleaving 2 or 4 rows to share the
// activation's loads measured slower (2-3x on q8_0 rows streamed from DRAM).
template <DType T>
float dot_row(const std::byte* row, int64_t K, const int16_t* q, const float* d, const float* s) {
  const __m512i lane_half = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
  __m512 acc = _mm512_setzero_ps();
  float cs = 0.f;
  if constexpr (T == DType::q4_k || T == DType::q5_k) {  // the scales once per super-block, not per chunk
    for (int64_t sb = 0; sb < K / 256; ++sb) {
      const auto& b = block_at<KBlock<T>>(row, sb);
      const KScales k = k_scales(b);
      for (int c = 0; c < 8; ++c) {
        const int64_t j = 8 * sb + c;
        const __m512i dot = _mm512_dpwssd_epi32(_mm512_setzero_si512(), widen(k_bytes<T>(b, c)),
                                                _mm512_loadu_si512(q + 32 * j));
        acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_set1_ps(k.a[c] * d[j]), acc);
        cs += k.c[c] * (s[2 * j] + s[2 * j + 1]);
      }
    }
    return _mm512_reduce_add_ps(acc) + cs;
  }
  for (int64_t j = 0; j < K / 32; ++j) {
    const __m512i qa = _mm512_loadu_si512(q + 32 * j);
    const float dj = d[j], s0 = s[2 * j], s1 = s[2 * j + 1];
    const U32 x = load_chunk<T>(row, j);
    const __m512i dot = _mm512_dpwssd_epi32(_mm512_setzero_si512(), x.u, qa);
    __m512 f;
    if constexpr (kHalves<T>) {
      const __m128 ad = _mm_mul_ps(_mm_set_ps(0.f, 0.f, x.a1, x.a0), _mm_set1_ps(dj));
      f = _mm512_permutexvar_ps(lane_half, _mm512_castps128_ps512(ad));
      cs += x.c0 * s0 + x.c1 * s1;
    } else {
      f = _mm512_set1_ps(x.a0 * dj);
      if constexpr (T != DType::q8_0) cs += x.c0 * (s0 + s1);
    }
    acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), f, acc);
  }
  return _mm512_reduce_add_ps(acc) + cs;
}

template <DType T>
void rows(const std::byte* w, int64_t row_bytes, int64_t n, int64_t K, const int16_t* q, const float* d,
          const float* s, float* y) {
  for (int64_t r = 0; r < n; ++r) y[r] = dot_row<T>(w + r * row_bytes, K, q, d, s);
}

// ---- many activation rows: a 16-row panel decoded once, then rows as lanes ------------------------------
//
// The panel holds the int16 values of 16 weight rows interleaved by element pairs: vector (j, p) is
// elements 2p, 2p+1 of chunk j for rows 0..15, so one vpdpwssd against the broadcast pair (q[2p], q[2p+1])
// of a token adds two products to each row's lane. A chunk is 16 such instructions per token, then its
// scales once as vectors over the 16 rows; a tile of tokens shares every weight load. No horizontal sums.
constexpr int kPanel = 16;  // weight rows per panel: the 16 int32 lanes of a zmm

struct Panel {
  std::vector<int32_t> u;   // (nc, 16 pairs, 16 rows): int16 pairs as dwords
  std::vector<float> a, c;  // (nc, 2 halves, 16 rows)

  void zero(int64_t nc) {  // rows that are never put stay zero
    u.assign(size_t(nc * 256), 0);
    a.assign(size_t(nc * 32), 0.f);
    c.assign(size_t(nc * 32), 0.f);
  }
  // Chunk j of row r: its 32 int16 values in element order, and its scales and offsets per half.
  void put(int64_t r, int64_t j, __m512i v, float a0, float a1, float c0, float c1) {
    const __m512i pair_at = _mm512_set_epi32(240, 224, 208, 192, 176, 160, 144, 128, 112, 96, 80, 64, 48, 32, 16, 0);
    _mm512_i32scatter_epi32(u.data() + j * 256, _mm512_add_epi32(pair_at, _mm512_set1_epi32(int(r))), v, 4);
    a[size_t(j * 32 + r)] = a0;
    a[size_t(j * 32 + 16 + r)] = a1;
    c[size_t(j * 32 + r)] = c0;
    c[size_t(j * 32 + 16 + r)] = c1;
  }
};

template <DType T>
void decode_panel(const std::byte* w, int64_t row_bytes, int64_t n, int64_t K, Panel& P) {
  P.zero(K / 32);
  for (int64_t r = 0; r < n; ++r)
    for (int64_t j = 0; j < K / 32; ++j) {
      const U32 x = load_chunk<T>(w + r * row_bytes, j);
      P.put(r, j, x.u, x.a0, x.a1, x.c0, x.c1);
    }
}

// acc += pairs of w times the int16 pair at *q, broadcast from memory inside the instruction ({1to16}):
// GCC emits a separate vpbroadcastd for the intrinsic form, one more instruction per 32 MACs.
[[gnu::always_inline]] inline __m512i dpwssd_bcast(__m512i acc, __m512i w, const int32_t* q) {
#if defined(__GNUC__) && !defined(__clang__)
  __asm__("vpdpwssd %[q]%{1to16%}, %[w], %[acc]" : [acc] "+v"(acc) : [w] "v"(w), [q] "m"(*q));
  return acc;
#else
  return _mm512_dpwssd_epi32(acc, w, _mm512_set1_epi32(*q));
#endif
}

// acc += quads of w (unsigned) times the four int8 at *q, broadcast inside the instruction.
[[gnu::always_inline]] inline __m512i dpbusd_bcast(__m512i acc, __m512i w, const int32_t* q) {
#if defined(__GNUC__) && !defined(__clang__)
  __asm__("vpdpbusd %[q]%{1to16%}, %[w], %[acc]" : [acc] "+v"(acc) : [w] "v"(w), [q] "m"(*q));
  return acc;
#else
  return _mm512_dpbusd_epi32(acc, w, _mm512_set1_epi32(*q));
#endif
}

// The activations of a tile of kTokens tokens, interleaved so that every broadcast in the kernel is a
// constant displacement from one pointer: pair p of chunk j of token t is dword (j * 16 + p) * kTokens + t
// (Int8: quad p, dword (j * 8 + p) * kTokens + t, eight per chunk), d is j * NT + t, and s
// (j * 3 + {0, 1, 2}) * NT + t for the first half, the second and the whole chunk, so that types whose
// halves share a and c take one offset term per chunk. The last tile is padded with zero tokens. The Int8
// panel holds unsigned quads, so every type has an offset there.
template <int NT, bool Halves, bool Offset, bool Int8 = false>
[[gnu::always_inline]] inline void panel_tile(const Panel& P, int64_t nc, const int32_t* q, const float* d,
                                              const float* s, float* y, int64_t ldy, int mt, __mmask16 rows) {
  constexpr int kDwords = Int8 ? 8 : 16;  // per chunk and token
  __m512 acc[NT];
#pragma GCC unroll 16
  for (int t = 0; t < NT; ++t) acc[t] = _mm512_setzero_ps();
  for (int64_t j = 0; j < nc; ++j, q += kDwords * NT, d += NT, s += 3 * NT) {
    const int32_t* wj = P.u.data() + j * kDwords * kPanel;
#pragma GCC unroll 2
    for (int h = 0; h < (Halves ? 2 : 1); ++h) {
      __m512i i[NT];
#pragma GCC unroll 16
      for (int t = 0; t < NT; ++t) i[t] = _mm512_setzero_si512();
      const int p0 = Halves ? kDwords / 2 * h : 0, p1 = Halves ? p0 + kDwords / 2 : kDwords;
#pragma GCC unroll 16
      for (int p = p0; p < p1; ++p) {
        const __m512i wv = _mm512_loadu_si512(wj + p * kPanel);
#pragma GCC unroll 16
        for (int t = 0; t < NT; ++t)
          i[t] = Int8 ? dpbusd_bcast(i[t], wv, q + p * NT + t) : dpwssd_bcast(i[t], wv, q + p * NT + t);
      }
      const __m512 a = _mm512_loadu_ps(P.a.data() + j * 32 + 16 * h);
#pragma GCC unroll 16
      for (int t = 0; t < NT; ++t)
        acc[t] = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(i[t]), a), _mm512_set1_ps(d[t]), acc[t]);
    }
    if constexpr ((Offset || Int8) && !Halves) {  // one a and c for the chunk
      const __m512 c = _mm512_loadu_ps(P.c.data() + j * 32);
#pragma GCC unroll 16
      for (int t = 0; t < NT; ++t) acc[t] = _mm512_fmadd_ps(c, _mm512_set1_ps(s[2 * NT + t]), acc[t]);
    } else if constexpr (Offset || Int8) {
      const __m512 c0 = _mm512_loadu_ps(P.c.data() + j * 32), c1 = _mm512_loadu_ps(P.c.data() + j * 32 + 16);
#pragma GCC unroll 16
      for (int t = 0; t < NT; ++t) {
        acc[t] = _mm512_fmadd_ps(c0, _mm512_set1_ps(s[t]), acc[t]);
        acc[t] = _mm512_fmadd_ps(c1, _mm512_set1_ps(s[NT + t]), acc[t]);
      }
    }
  }
  // Unrolled with the bound inside: a loop to the run-time mt made GCC keep acc[] in memory, storing all
  // twelve accumulators on every chunk.
#pragma GCC unroll 16
  for (int t = 0; t < NT; ++t)
    if (t < mt) _mm512_mask_storeu_ps(y + t * ldy, rows, acc[t]);
}

// Every tile of tokens against one decoded panel of n <= 16 rows.
template <DType T, bool Int8 = false>
void panel_tiles(const Panel& P, int64_t n, const PackedTokens& a, float* y, int64_t ldy) {
  const __mmask16 rows = __mmask16((1u << n) - 1u);
  const int64_t nc = a.K / 32;
  constexpr int64_t kQ = Int8 ? 8 : 16, kS = 3;  // dwords of q and floats of s per chunk and token
  for (int64_t tile = 0; tile * kTokens < a.M; ++tile) {
    const int mt = int(std::min<int64_t>(kTokens, a.M - tile * kTokens));
    panel_tile<kTokens, kHalves<T>, kOffset<T>, Int8>(P, nc, a.q.data() + tile * nc * kQ * kTokens,
                                                      a.d.data() + tile * nc * kTokens, a.s.data() + tile * nc * kS * kTokens,
                                                      y + tile * kTokens * ldy, ldy, mt, rows);
  }
}

template <DType T>
void gemm(const std::byte* w, int64_t row_bytes, int64_t n, const PackedTokens& a, float* y, int64_t ldy) {
  thread_local Panel P;
  decode_panel<T>(w, row_bytes, n, a.K, P);
  panel_tiles<T>(P, n, a, y, ldy);
}

// f16/bf16 rows for prefill: each 32-element chunk rounded to 12-bit integers on its own scale
// (max|w| / 2047: an error of at most 1/4094 of the chunk's largest weight, finer than f16's own
// spacing near that weight), so halves run the int16 panel kernel at twice the f32 FMA rate instead of
// widening to f32 for sgemm. 12 bits, not 16: 32 products of 2047 x 32639 are the most an int32 lane holds.
template <DType T>
void half_gemm(const std::byte* w, int64_t row_bytes, int64_t n, const PackedTokens& a, float* y, int64_t ldy) {
  thread_local Panel P;
  const int64_t nc = a.K / 32;
  P.zero(nc);
  auto widen = [](const uint16_t* p) {
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    if constexpr (T == DType::f16) return _mm512_cvtph_ps(h);
    else return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  };
  for (int64_t r = 0; r < n; ++r) {
    const auto* row = reinterpret_cast<const uint16_t*>(w + r * row_bytes);
    for (int64_t j = 0; j < nc; ++j) {
      const __m512 v0 = widen(row + 32 * j), v1 = widen(row + 32 * j + 16);
      const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
      const __m512 id = _mm512_set1_ps(amax > 0.f ? 2047.f / amax : 0.f);
      const __m256i q0 = _mm512_cvtsepi32_epi16(_mm512_cvtps_epi32(_mm512_mul_ps(v0, id)));
      const __m256i q1 = _mm512_cvtsepi32_epi16(_mm512_cvtps_epi32(_mm512_mul_ps(v1, id)));
      const float d = amax / 2047.f;
      P.put(r, j, _mm512_inserti64x4(_mm512_castsi256_si512(q0), q1, 1), d, d, 0.f, 0.f);
    }
  }
  panel_tiles<T>(P, n, a, y, ldy);
}

// ---- packed weights (the layout at the top of this file): rows as lanes for decode too -------------

// One chunk of a packed group: its eight quad vectors (unsigned bytes) and, per half, the scale a and
// offset c of each of the 16 rows.
struct GroupChunk {
  __m512i quad[8];
  __m512 a0, a1, c0, c1;
};

inline __m512 f16x16(const uint8_t* p) { return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
inline __m512 u8x16(const uint8_t* p) {
  return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}
inline __m512 i8x16(const uint8_t* p) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}

[[gnu::always_inline]] inline void nibble_quads(const uint8_t* p, __m512i* quad) {
  const __m512i m = _mm512_set1_epi8(0x0F);
  for (int i = 0; i < 4; ++i) {
    const __m512i v = _mm512_loadu_si512(p + 64 * i);
    quad[2 * i] = _mm512_and_si512(v, m);
    quad[2 * i + 1] = _mm512_and_si512(_mm512_srli_epi16(v, 4), m);
  }
}
[[gnu::always_inline]] inline void fifth_bit_quads(const uint8_t* p, __m512i* quad) {
  const __m512i bit = _mm512_set1_epi8(0x10);
  for (int q = 0; q < 8; ++q) {
    uint64_t m;
    std::memcpy(&m, p + 8 * q, 8);
    quad[q] = _mm512_or_si512(quad[q], _mm512_maskz_mov_epi8(__mmask64(m), bit));
  }
}
[[gnu::always_inline]] inline void q6_high_quads(const uint8_t* p, __m512i* quad) {
  const __m512i m = _mm512_set1_epi8(0x30);
  for (int k = 0; k < 2; ++k) {  // bits 2t..2t+1 of each byte -> bits 4..5 of quad 4k + t
    const __m512i h = _mm512_loadu_si512(p + 64 * k);
    quad[4 * k] = _mm512_or_si512(quad[4 * k], _mm512_and_si512(_mm512_slli_epi16(h, 4), m));
    quad[4 * k + 1] = _mm512_or_si512(quad[4 * k + 1], _mm512_and_si512(_mm512_slli_epi16(h, 2), m));
    quad[4 * k + 2] = _mm512_or_si512(quad[4 * k + 2], _mm512_and_si512(h, m));
    quad[4 * k + 3] = _mm512_or_si512(quad[4 * k + 3], _mm512_and_si512(_mm512_srli_epi16(h, 2), m));
  }
}

// Chunk c of the unit at u (c = 0 for the 32-element types).
template <DType T>
[[gnu::always_inline]] inline void load_group_chunk(const uint8_t* u, int c, GroupChunk& x) {
  if constexpr (T == DType::q4_0 || T == DType::q5_0) {
    const __m512 d = f16x16(u);
    x.a0 = x.a1 = d;
    x.c0 = x.c1 = _mm512_mul_ps(d, _mm512_set1_ps(T == DType::q4_0 ? -8.f : -16.f));
    nibble_quads(u + 32, x.quad);
    if constexpr (T == DType::q5_0) fifth_bit_quads(u + 32 + 256, x.quad);
  } else if constexpr (T == DType::q4_1 || T == DType::q5_1) {
    x.a0 = x.a1 = f16x16(u);
    x.c0 = x.c1 = f16x16(u + 32);
    nibble_quads(u + 64, x.quad);
    if constexpr (T == DType::q5_1) fifth_bit_quads(u + 64 + 256, x.quad);
  } else if constexpr (T == DType::q8_0) {
    const __m512 d = f16x16(u);
    x.a0 = x.a1 = d;
    x.c0 = x.c1 = _mm512_mul_ps(d, _mm512_set1_ps(-128.f));
    for (int q = 0; q < 8; ++q) x.quad[q] = _mm512_loadu_si512(u + 32 + 64 * q);
  } else if constexpr (T == DType::q4_k || T == DType::q5_k) {
    x.a0 = x.a1 = _mm512_mul_ps(f16x16(u), u8x16(u + 64 + 16 * c));
    x.c0 = x.c1 = _mm512_mul_ps(f16x16(u + 32), _mm512_sub_ps(_mm512_setzero_ps(), u8x16(u + 192 + 16 * c)));
    constexpr int plane = T == DType::q4_k ? 256 : 320;
    nibble_quads(u + 320 + plane * c, x.quad);
    if constexpr (T == DType::q5_k) fifth_bit_quads(u + 320 + plane * c + 256, x.quad);
  } else {
    static_assert(T == DType::q6_k);
    const __m512 d = f16x16(u);
    x.a0 = _mm512_mul_ps(d, i8x16(u + 32 + 32 * c));
    x.a1 = _mm512_mul_ps(d, i8x16(u + 32 + 32 * c + 16));
    x.c0 = _mm512_mul_ps(x.a0, _mm512_set1_ps(-32.f));
    x.c1 = _mm512_mul_ps(x.a1, _mm512_set1_ps(-32.f));
    nibble_quads(u + 288 + 384 * c, x.quad);
    q6_high_quads(u + 288 + 384 * c + 256, x.quad);
  }
}

// The integer dot products of quads [q0, q1) with one token's split activations (h: its chunk's hi
// dwords, h + 8 its lo dwords): 256 * (u . h) + (u . l) = u . q per row lane, exact in int32
// (32 products of u <= 255 and |h| <= 128 stay below 2^23 before the shift).
template <int Q0, int Q1>
[[gnu::always_inline]] inline __m512 quad_dots(const __m512i* quad, const int32_t* h) {
  __m512i hi0 = _mm512_setzero_si512(), hi1 = hi0, lo0 = hi0, lo1 = hi0;
  for (int q = Q0; q < Q1; q += 2) {
    hi0 = _mm512_dpbusd_epi32(hi0, quad[q], _mm512_set1_epi32(h[q]));
    lo0 = _mm512_dpbusd_epi32(lo0, quad[q], _mm512_set1_epi32(h[8 + q]));
    hi1 = _mm512_dpbusd_epi32(hi1, quad[q + 1], _mm512_set1_epi32(h[q + 1]));
    lo1 = _mm512_dpbusd_epi32(lo1, quad[q + 1], _mm512_set1_epi32(h[8 + q + 1]));
  }
  const __m512i hi = _mm512_add_epi32(hi0, hi1), lo = _mm512_add_epi32(lo0, lo1);
  return _mm512_cvtepi32_ps(_mm512_add_epi32(_mm512_slli_epi32(hi, 8), lo));
}

template <DType T, int NT>
void group_rows(const uint8_t* g, int64_t K, const int32_t* const hl[NT], const float* const d[NT],
                const float* const s[NT], float* const y[NT], __mmask16 rows) {
  constexpr int64_t kChunks = unit_chunks(T);
  __m512 acc[NT];
  for (auto& v : acc) v = _mm512_setzero_ps();
  GroupChunk x;
  // Every line 8 KiB ahead (into the next groups): the hardware prefetcher alone left one thread at
  // ~70% of the DRAM read bandwidth; this reaches it (TinyLlama-shaped Q4_0: 48 -> 68 tokens/s).
  constexpr int64_t kAhead = 8192, kChunkBytes = unit_bytes(T) / kChunks;
  for (int64_t j0 = 0; j0 < K / 32; j0 += kChunks, g += unit_bytes(T)) {
    for (int c = 0; c < kChunks; ++c) {
      const int64_t j = j0 + c;
      for (int64_t o = 0; o < kChunkBytes; o += 64)
        _mm_prefetch(reinterpret_cast<const char*>(g + c * kChunkBytes + kAhead + o), _MM_HINT_T0);
      load_group_chunk<T>(g, c, x);
      for (int t = 0; t < NT; ++t) {
        const int32_t* h = hl[t] + 16 * j;
        const __m512 dj = _mm512_set1_ps(d[t][j]);
        if constexpr (kHalves<T>) {
          acc[t] = _mm512_fmadd_ps(_mm512_mul_ps(quad_dots<0, 4>(x.quad, h), x.a0), dj, acc[t]);
          acc[t] = _mm512_fmadd_ps(_mm512_mul_ps(quad_dots<4, 8>(x.quad, h), x.a1), dj, acc[t]);
          acc[t] = _mm512_fmadd_ps(x.c0, _mm512_set1_ps(s[t][2 * j]), acc[t]);
          acc[t] = _mm512_fmadd_ps(x.c1, _mm512_set1_ps(s[t][2 * j + 1]), acc[t]);
        } else {
          acc[t] = _mm512_fmadd_ps(_mm512_mul_ps(quad_dots<0, 8>(x.quad, h), x.a0), dj, acc[t]);
          acc[t] = _mm512_fmadd_ps(x.c0, _mm512_set1_ps(s[t][2 * j] + s[t][2 * j + 1]), acc[t]);
        }
      }
    }
  }
  for (int t = 0; t < NT; ++t) _mm512_mask_storeu_ps(y[t], rows, acc[t]);
}

template <DType T, int NT>
void packed_rows_n(const uint8_t* w, int64_t group_bytes, int64_t g0, int64_t g1, int64_t N, int64_t K,
                   const int32_t* hl, const float* d, const float* s, float* y, int64_t ldy) {
  const int32_t* hp[NT];
  const float *dp[NT], *sp[NT];
  float* yp[NT];
  for (int64_t g = g0; g < g1; ++g) {
    for (int t = 0; t < NT; ++t) {
      hp[t] = hl + t * K / 2;
      dp[t] = d + t * K / 32;
      sp[t] = s + t * K / 16;
      yp[t] = y + t * ldy + g * kGroup;
    }
    const int64_t n = std::min<int64_t>(kGroup, N - g * kGroup);
    group_rows<T, NT>(w + g * group_bytes, K, hp, dp, sp, yp, __mmask16((1u << n) - 1u));
  }
}

template <DType T>
void packed_rows_t(const uint8_t* w, int64_t group_bytes, int64_t g0, int64_t g1, int64_t N, int64_t K,
                   const int32_t* hl, const float* d, const float* s, int64_t M, float* y, int64_t ldy) {
  switch (M) {
    case 1: return packed_rows_n<T, 1>(w, group_bytes, g0, g1, N, K, hl, d, s, y, ldy);
    case 2: return packed_rows_n<T, 2>(w, group_bytes, g0, g1, N, K, hl, d, s, y, ldy);
    case 3: return packed_rows_n<T, 3>(w, group_bytes, g0, g1, N, K, hl, d, s, y, ldy);
    default: throw ValueError("packed_rows: M must be 1, 2 or 3");
  }
}

// The panel of the prefill kernel from a packed group: int16, quad q widened to element pairs 2q, 2q + 1;
// Int8 (activation_bits() == 8), the quads as they are, unsigned bytes: byte 4r + b of quad p is element
// 4p + b of row r, and a chunk is eight vpdpbusd per token (u <= 255 times |q| <= 127: 32 products stay
// below 2^20), then its scales.
template <DType T, bool Int8 = false>
void decode_packed_panel(const uint8_t* g, int64_t K, Panel& P) {
  const int64_t nc = K / 32, kDwords = Int8 ? 128 : 256;  // per chunk
  P.u.resize(size_t(nc * kDwords));
  P.a.resize(size_t(nc * 32));
  P.c.resize(size_t(nc * 32));
  const __m512i even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
  const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
  GroupChunk x;
  for (int64_t j0 = 0; j0 < nc; j0 += unit_chunks(T), g += unit_bytes(T))
    for (int c = 0; c < unit_chunks(T); ++c) {
      const int64_t j = j0 + c;
      load_group_chunk<T>(g, c, x);
      for (int q = 0; q < 8; ++q) {
        if constexpr (Int8) {
          _mm512_storeu_si512(P.u.data() + j * kDwords + q * kPanel, x.quad[q]);
          continue;
        }
        __m512i lo = _mm512_cvtepu8_epi16(_mm512_castsi512_si256(x.quad[q]));      // rows 0-7
        __m512i hi = _mm512_cvtepu8_epi16(_mm512_extracti64x4_epi64(x.quad[q], 1));  // rows 8-15
        if constexpr (T == DType::q8_0) {  // back to the signed quants: the panel kernel has no q8_0 offset
          lo = _mm512_sub_epi16(lo, _mm512_set1_epi16(128));
          hi = _mm512_sub_epi16(hi, _mm512_set1_epi16(128));
        }
        _mm512_storeu_si512(P.u.data() + j * kDwords + (2 * q) * kPanel, _mm512_permutex2var_epi32(lo, even, hi));
        _mm512_storeu_si512(P.u.data() + j * kDwords + (2 * q + 1) * kPanel, _mm512_permutex2var_epi32(lo, odd, hi));
      }
      _mm512_storeu_ps(P.a.data() + j * 32, x.a0);
      _mm512_storeu_ps(P.a.data() + j * 32 + 16, x.a1);
      _mm512_storeu_ps(P.c.data() + j * 32, x.c0);
      _mm512_storeu_ps(P.c.data() + j * 32 + 16, x.c1);
    }
}

template <DType T, bool Int8 = false>
void packed_gemm_t(const uint8_t* group, int64_t n, const PackedTokens& a, float* y, int64_t ldy) {
  thread_local Panel P;
  decode_packed_panel<T, Int8>(group, a.K, P);
  panel_tiles<T, Int8>(P, n, a, y, ldy);
}

}  // namespace

void qdot_rows(DType type, const std::byte* w, int64_t row_bytes, int64_t n, int64_t K, const int16_t* q,
               const float* d, const float* s, float* y) {
  switch (type) {
#define LB_QDOT_CASE(t) \
  case DType::t: return rows<DType::t>(w, row_bytes, n, K, q, d, s, y);
    LB_QLINEAR_TYPES(LB_QDOT_CASE)
#undef LB_QDOT_CASE
    default: throw TypeError(std::string("qdot_rows: no kernel for ") + name(type));
  }
}

PackedTokens pack_tokens(const int16_t* q, const float* d, const float* s, int64_t M, int64_t K, int bits) {
  const int64_t nc = K / 32, tiles = (M + kTokens - 1) / kTokens, kQ = bits == 8 ? 8 : 16;  // dwords per chunk
  PackedTokens a{M, K, Buffer<int32_t>(size_t(tiles * nc * kQ * kTokens), 0),
                 Buffer<float>(size_t(tiles * nc * kTokens), 0.f), Buffer<float>(size_t(tiles * nc * 3 * kTokens), 0.f),
                 bits};
  for (int64_t m = 0; m < M; ++m) {
    const int64_t tile = m / kTokens, t = m % kTokens;
    int32_t* qt = a.q.data() + tile * nc * kQ * kTokens + t;
    float* dt = a.d.data() + tile * nc * kTokens + t;
    float* st = a.s.data() + tile * nc * 3 * kTokens + t;
    for (int64_t j = 0; j < nc; ++j) {
      const int16_t* qj = q + m * K + 32 * j;
      if (bits == 8) {
        int8_t b[32];
        for (int l = 0; l < 32; ++l) b[l] = int8_t(qj[l]);  // |q| <= 127: quantized with bits = 8
        for (int p = 0; p < 8; ++p) std::memcpy(qt + (j * 8 + p) * kTokens, b + 4 * p, 4);
      } else {
        for (int p = 0; p < 16; ++p) std::memcpy(qt + (j * 16 + p) * kTokens, qj + 2 * p, 4);
      }
      dt[j * kTokens] = d[m * nc + j];
      const float s0 = s[m * 2 * nc + 2 * j], s1 = s[m * 2 * nc + 2 * j + 1];
      st[(j * 3) * kTokens] = s0;
      st[(j * 3 + 1) * kTokens] = s1;
      st[(j * 3 + 2) * kTokens] = s0 + s1;
    }
  }
  return a;
}

void qgemm_rows(DType type, const std::byte* w, int64_t row_bytes, int64_t n, const PackedTokens& a, float* y,
                int64_t ldy) {
  switch (type) {
#define LB_QGEMM_CASE(t) \
  case DType::t: return gemm<DType::t>(w, row_bytes, n, a, y, ldy);
    LB_QLINEAR_TYPES(LB_QGEMM_CASE)
#undef LB_QGEMM_CASE
    case DType::f16: return half_gemm<DType::f16>(w, row_bytes, n, a, y, ldy);
    case DType::bf16: return half_gemm<DType::bf16>(w, row_bytes, n, a, y, ldy);
    default: throw TypeError(std::string("qgemm_rows: no kernel for ") + name(type));
  }
}

void split_act(const int16_t* q, int64_t K, int32_t* hl) {
  for (int64_t j = 0; j < K / 32; ++j) {
    const __m512i v = _mm512_loadu_si512(q + 32 * j);
    const __m512i h = _mm512_srai_epi16(_mm512_add_epi16(v, _mm512_set1_epi16(128)), 8);  // round(q / 256)
    const __m512i l = _mm512_sub_epi16(v, _mm512_slli_epi16(h, 8));                      // in [-128, 127]
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(hl + 16 * j), _mm512_cvtepi16_epi8(h));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(hl + 16 * j + 8), _mm512_cvtepi16_epi8(l));
  }
}

#define LB_PACKED_TYPES(X) X(q4_0) X(q4_1) X(q5_0) X(q5_1) X(q8_0) X(q4_k) X(q5_k) X(q6_k)

void packed_rows(DType type, const uint8_t* w, int64_t group_bytes, int64_t g0, int64_t g1, int64_t N, int64_t K,
                 const int32_t* hl, const float* d, const float* s, int64_t M, float* y, int64_t ldy) {
  switch (type) {
#define LB_PACKED_CASE(t) \
  case DType::t: return packed_rows_t<DType::t>(w, group_bytes, g0, g1, N, K, hl, d, s, M, y, ldy);
    LB_PACKED_TYPES(LB_PACKED_CASE)
#undef LB_PACKED_CASE
    default: throw TypeError(std::string("packed_rows: no kernel for ") + name(type));
  }
}

void packed_gemm(DType type, const uint8_t* group, int64_t n, const PackedTokens& a, float* y, int64_t ldy) {
  switch (type) {
#define LB_PACKED_CASE(t) \
  case DType::t: return packed_gemm_t<DType::t>(group, n, a, y, ldy);
    LB_PACKED_TYPES(LB_PACKED_CASE)
#undef LB_PACKED_CASE
    default: throw TypeError(std::string("packed_gemm: no kernel for ") + name(type));
  }
}

void packed_gemm8(DType type, const uint8_t* group, int64_t n, const PackedTokens& a, float* y, int64_t ldy) {
  switch (type) {
#define LB_PACKED_CASE(t) \
  case DType::t: return packed_gemm_t<DType::t, true>(group, n, a, y, ldy);
    LB_PACKED_TYPES(LB_PACKED_CASE)
#undef LB_PACKED_CASE
    default: throw TypeError(std::string("packed_gemm8: no kernel for ") + name(type));
  }
}

}  // namespace LB_ISA
#elif LB_SIMD && defined(__AVX2__)
namespace LB_ISA {

namespace {

inline int32_t hsum_epi32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
  return _mm_cvtsi128_si32(s);
}

// As the avx512 dot_row, with vpmaddwd on the two halves (8 int32 lanes each).
template <DType T>
float dot_row(const std::byte* row, int64_t K, const int16_t* q, const float* d, const float* s) {
  __m256 acc = _mm256_setzero_ps();
  float cs = 0.f;
  for (int64_t j = 0; j < K / 32; ++j) {
    const __m256i q0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + 32 * j));
    const __m256i q1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + 32 * j + 16));
    const float dj = d[j], s0 = s[2 * j], s1 = s[2 * j + 1];
    const B32 x = load_bytes<T>(row, j);
    const __m256i d0 = _mm256_madd_epi16(_mm256_cvtepu8_epi16(_mm256_castsi256_si128(x.u)), q0);
    const __m256i d1 = _mm256_madd_epi16(_mm256_cvtepu8_epi16(_mm256_extracti128_si256(x.u, 1)), q1);
    if constexpr (kHalves<T>) {
      acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d0), _mm256_set1_ps(x.a0 * dj), acc);
      acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d1), _mm256_set1_ps(x.a1 * dj), acc);
      cs += x.c0 * s0 + x.c1 * s1;
    } else {
      acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_add_epi32(d0, d1)), _mm256_set1_ps(x.a0 * dj), acc);
      cs += x.c0 * (s0 + s1);
    }
  }
  __m128 r = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
  r = _mm_add_ps(r, _mm_movehl_ps(r, r));
  return _mm_cvtss_f32(_mm_add_ss(r, _mm_movehdup_ps(r))) + cs;
}

template <DType T>
void rows(const std::byte* w, int64_t row_bytes, int64_t n, int64_t K, const int16_t* q, const float* d,
          const float* s, float* y) {
  for (int64_t r = 0; r < n; ++r) y[r] = dot_row<T>(w + r * row_bytes, K, q, d, s);
}

}  // namespace

void quantize_act(const float* x, int64_t K, int16_t* q, float* d, float* s, float qmax) {
  const __m256 sign = _mm256_set1_ps(-0.f);
  for (int64_t j = 0; j < K / 32; ++j) {
    __m256 v[4], m = _mm256_setzero_ps();
    for (int i = 0; i < 4; ++i) {
      v[i] = _mm256_loadu_ps(x + 32 * j + 8 * i);
      m = _mm256_max_ps(m, _mm256_andnot_ps(sign, v[i]));
    }
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    const float amax = _mm_cvtss_f32(_mm_max_ss(m4, _mm_movehdup_ps(m4)));
    const float dj = amax / qmax, id = amax > 0.f ? qmax / amax : 0.f;
    __m256i iv[4];
    for (int i = 0; i < 4; ++i) iv[i] = _mm256_cvtps_epi32(_mm256_mul_ps(v[i], _mm256_set1_ps(id)));
    // packs works per 128-bit lane ([a0-3 b0-3 | a4-7 b4-7]): put the 64-bit quarters back in order
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + 32 * j),
                        _mm256_permute4x64_epi64(_mm256_packs_epi32(iv[0], iv[1]), 0xD8));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + 32 * j + 16),
                        _mm256_permute4x64_epi64(_mm256_packs_epi32(iv[2], iv[3]), 0xD8));
    d[j] = dj;
    s[2 * j] = dj * float(hsum_epi32(_mm256_add_epi32(iv[0], iv[1])));
    s[2 * j + 1] = dj * float(hsum_epi32(_mm256_add_epi32(iv[2], iv[3])));
  }
}

void qdot_rows(DType type, const std::byte* w, int64_t row_bytes, int64_t n, int64_t K, const int16_t* q,
               const float* d, const float* s, float* y) {
  switch (type) {
#define LB_QDOT_CASE(t) \
  case DType::t: return rows<DType::t>(w, row_bytes, n, K, q, d, s, y);
    LB_QLINEAR_TYPES(LB_QDOT_CASE)
#undef LB_QDOT_CASE
    default: throw TypeError(std::string("qdot_rows: no kernel for ") + name(type));
  }
}

}  // namespace LB_ISA
#elif !LB_SIMD

void quantize_act_ref(const float* x, int64_t K, int16_t* q, float* d, float* s, float qmax) {
  for (int64_t j = 0; j < K / 32; ++j) {
    float amax = 0.f;
    for (int l = 0; l < 32; ++l) amax = std::max(amax, std::fabs(x[32 * j + l]));
    const float dj = amax / qmax, id = amax > 0.f ? qmax / amax : 0.f;
    d[j] = dj;
    for (int h = 0; h < 2; ++h) {
      int32_t sum = 0;
      for (int l = 16 * h; l < 16 * h + 16; ++l) {
        const int v = int(std::nearbyint(x[32 * j + l] * id));  // ties to even, as cvtps2dq
        q[32 * j + l] = int16_t(std::clamp(v, -int(qmax), int(qmax)));
        sum += q[32 * j + l];
      }
      s[2 * j + h] = dj * float(sum);
    }
  }
}

void qdot_rows_ref(DType type, const std::byte* w, int64_t row_bytes, int64_t n, int64_t K, const int16_t* q,
                   const float* d, const float* s, float* y) {
  const ChunkFn chunk = chunk_fn(type);
  if (!chunk) throw TypeError(std::string("qdot_rows: no kernel for ") + name(type));
  for (int64_t r = 0; r < n; ++r) {
    const std::byte* row = w + r * row_bytes;
    float acc = 0.f;
    Chunk ch;
    for (int64_t j = 0; j < K / 32; ++j) {
      chunk(row, j, ch);
      for (int h = 0; h < 2; ++h) {
        int32_t dot = 0;
        for (int l = 16 * h; l < 16 * h + 16; ++l) dot += int32_t(ch.u[l]) * q[32 * j + l];
        acc += ch.a[h] * d[j] * float(dot) + ch.c[h] * s[2 * j + h];
      }
    }
    y[r] = acc;
  }
}

#endif
}  // namespace lb::kernels

#if !LB_SIMD
#include "ops/common.h"
#include "lmblocks/quant.h"

namespace lb::ops {
static RegisterKernelFamily lb_family_qlinear(
    "qlinear", kernels::simd_variants(),
    "int16 activations x ggml blocks; avx512 (VNNI) also prefill, avx2 prefill dequantizes for sgemm");

namespace {

// The vector kernels for the active ISA (avx512 > avx2), or none.
Isa qlinear_isa() {
#ifdef LB_HAVE_avx512
  if (active_isa() == Isa::avx512) return Isa::avx512;
#endif
#ifdef LB_HAVE_avx2
  if (active_isa() == Isa::avx2 || active_isa() == Isa::avx512) return Isa::avx2;
#endif
  return Isa::scalar;
}

using QuantizeFn = void (*)(const float*, int64_t, int16_t*, float*, float*, float);
using QdotFn = void (*)(DType, const std::byte*, int64_t, int64_t, int64_t, const int16_t*, const float*,
                        const float*, float*);

std::pair<QuantizeFn, QdotFn> kernels_for(bool reference) {
  switch (reference ? Isa::scalar : qlinear_isa()) {
#ifdef LB_HAVE_avx512
    case Isa::avx512: return {&kernels::avx512::quantize_act, &kernels::avx512::qdot_rows};
#endif
#ifdef LB_HAVE_avx2
    case Isa::avx2: return {&kernels::avx2::quantize_act, &kernels::avx2::qdot_rows};
#endif
    default: return {&kernels::quantize_act_ref, &kernels::qdot_rows_ref};
  }
}

}  // namespace

bool qlinear_fast(DType t, int64_t M) {
  const Isa isa = qlinear_isa();
  if (t == DType::f16 || t == DType::bf16) return isa == Isa::avx512 && M >= 4;  // prefill; decode: half_linear
  return kernels::chunk_fn(t) != nullptr && (isa == Isa::avx512 || (isa == Isa::avx2 && M < 4));
}

int activation_bits_for(int64_t M) { return M >= 4 ? activation_bits() : 16; }

QuantizedRows quantize_rows(const float* x, int64_t M, int64_t K, int64_t ld, bool reference, int bits) {
  if (bits != 8 && bits != 16) throw ValueError("quantize_rows: bits must be 8 or 16, got " + std::to_string(bits));
  QuantizedRows a;
  a.M = M;
  a.K = K;
  a.bits = bits;
  const float qmax = bits == 8 ? kernels::kAct8Max : kernels::kActMax;
  a.q.resize(size_t(M * K));
  a.d.resize(size_t(M * K / 32));
  a.s.resize(size_t(M * K / 16));
  const QuantizeFn fn = kernels_for(reference).first;
  detail::for_rows(M, K, [&](int64_t r0, int64_t r1) {
    for (int64_t m = r0; m < r1; ++m)
      fn(x + m * ld, K, a.q.data() + m * K, a.d.data() + m * K / 32, a.s.data() + m * K / 16, qmax);
  });
  return a;
}

void qlinear_rows(const QuantizedRows& a, DType type, const std::byte* w, int64_t row_bytes, int64_t N, float* y,
                  bool reference) {
  const bool half = type == DType::f16 || type == DType::bf16;
  if (!kernels::chunk_fn(type) && !(half && !reference && qlinear_isa() == Isa::avx512 && a.M >= 4))
    throw TypeError(std::string("qlinear: no kernel for ") + name(type));
  const QdotFn fn = kernels_for(reference).second;
  const int64_t K = a.K;
#ifdef LB_HAVE_avx512
  if (!reference && qlinear_isa() == Isa::avx512 && a.M >= 4) {  // prefill: decode each weight row once
    const int64_t tile = 16;
    const auto packed = kernels::avx512::pack_tokens(a.q.data(), a.d.data(), a.s.data(), a.M, K);
    parallel_for((N + tile - 1) / tile, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t n0 = t * tile, n = std::min(N, n0 + tile) - n0;
        kernels::avx512::qgemm_rows(type, w + n0 * row_bytes, row_bytes, n, packed, y + n0, N);
      }
    });
    return;
  }
#endif
  // Tiles of weight rows small enough to stay in L1 while every activation row passes over them.
  const int64_t tile = std::max<int64_t>(1, std::min<int64_t>(64, (16 << 10) / std::max<int64_t>(row_bytes, 1)));
  parallel_for((N + tile - 1) / tile, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n0 = t * tile, n = std::min(N, n0 + tile) - n0;
      for (int64_t m = 0; m < a.M; ++m)
        fn(type, w + n0 * row_bytes, row_bytes, n, K, a.q.data() + m * K, a.d.data() + m * K / 32,
           a.s.data() + m * K / 16, y + m * N + n0);
    }
  });
}


// ---- packing (the layout is described at the top of this file) ------------------------------------

bool packable(DType t) {
  return qlinear_isa() == Isa::avx512 && kernels::unit_bytes(t) > 0;
}

namespace {

using Quants = uint8_t[kernels::kGroup][32];  // u of one chunk for the 16 rows of a group

void put_nibbles(uint8_t* dst, const Quants& u) {
  for (int i = 0; i < 4; ++i)
    for (int r = 0; r < 16; ++r)
      for (int b = 0; b < 4; ++b)
        dst[64 * i + 4 * r + b] = uint8_t((u[r][8 * i + b] & 15) | ((u[r][8 * i + 4 + b] & 15) << 4));
}
void put_fifth_bits(uint8_t* dst, const Quants& u) {
  for (int q = 0; q < 8; ++q) {
    uint64_t m = 0;
    for (int r = 0; r < 16; ++r)
      for (int b = 0; b < 4; ++b) m |= uint64_t((u[r][4 * q + b] >> 4) & 1) << (4 * r + b);
    std::memcpy(dst + 8 * q, &m, 8);
  }
}
void put_q6_high_bits(uint8_t* dst, const Quants& u) {
  for (int m = 0; m < 2; ++m)
    for (int r = 0; r < 16; ++r)
      for (int b = 0; b < 4; ++b) {
        uint8_t v = 0;
        for (int t = 0; t < 4; ++t) v |= uint8_t(((u[r][4 * (4 * m + t) + b] >> 4) & 3) << (2 * t));
        dst[64 * m + 4 * r + b] = v;
      }
}
void put_bytes(uint8_t* dst, const Quants& u) {
  for (int q = 0; q < 8; ++q)
    for (int r = 0; r < 16; ++r)
      for (int b = 0; b < 4; ++b) dst[64 * q + 4 * r + b] = u[r][4 * q + b];
}

template <class Block>
const Block& block_of(const std::byte* w, int64_t row_bytes, int64_t r, int64_t i) {
  return reinterpret_cast<const Block*>(w + r * row_bytes)[i];
}

// One group: rows [r0, r0 + n) of w into dst (group_bytes, zeroed; absent rows stay zero).
void pack_group(DType t, const std::byte* w, int64_t row_bytes, int64_t r0, int64_t n, int64_t K, uint8_t* dst) {
  const auto chunk = kernels::chunk_fn(t);
  const int64_t units = K / 32 / kernels::unit_chunks(t);
  Quants u{};
  auto quants = [&](int64_t j) {
    kernels::Chunk ch;
    for (int64_t r = 0; r < n; ++r) {
      chunk(w + (r0 + r) * row_bytes, j, ch);
      std::memcpy(u[r], ch.u, 32);
    }
  };
  auto f16s = [&](uint8_t* out, auto field) {  // 16 raw f16 values, one per row
    for (int64_t r = 0; r < n; ++r) {
      const uint16_t v = field(r0 + r);
      std::memcpy(out + 2 * r, &v, 2);
    }
  };
  for (int64_t i = 0; i < units; ++i, dst += kernels::unit_bytes(t)) {
    switch (t) {
      case DType::q4_0:
      case DType::q5_0: {
        if (t == DType::q4_0)
          f16s(dst, [&](int64_t r) { return block_of<block_q4_0>(w, row_bytes, r, i).d; });
        else
          f16s(dst, [&](int64_t r) { return block_of<block_q5_0>(w, row_bytes, r, i).d; });
        quants(i);
        put_nibbles(dst + 32, u);
        if (t == DType::q5_0) put_fifth_bits(dst + 32 + 256, u);
        break;
      }
      case DType::q4_1:
      case DType::q5_1: {
        if (t == DType::q4_1) {
          f16s(dst, [&](int64_t r) { return block_of<block_q4_1>(w, row_bytes, r, i).d; });
          f16s(dst + 32, [&](int64_t r) { return block_of<block_q4_1>(w, row_bytes, r, i).m; });
        } else {
          f16s(dst, [&](int64_t r) { return block_of<block_q5_1>(w, row_bytes, r, i).d; });
          f16s(dst + 32, [&](int64_t r) { return block_of<block_q5_1>(w, row_bytes, r, i).m; });
        }
        quants(i);
        put_nibbles(dst + 64, u);
        if (t == DType::q5_1) put_fifth_bits(dst + 64 + 256, u);
        break;
      }
      case DType::q8_0:
        f16s(dst, [&](int64_t r) { return block_of<block_q8_0>(w, row_bytes, r, i).d; });
        quants(i);
        put_bytes(dst + 32, u);
        break;
      case DType::q4_k:
      case DType::q5_k: {
        for (int64_t r = 0; r < n; ++r) {
          const uint16_t* dd = reinterpret_cast<const uint16_t*>(w + (r0 + r) * row_bytes + i * traits(t).type_size);
          const uint8_t* scales = reinterpret_cast<const uint8_t*>(dd + 2);  // d, dmin, scales[12] lead both blocks
          std::memcpy(dst + 2 * r, dd, 2);
          std::memcpy(dst + 32 + 2 * r, dd + 1, 2);
          for (int c = 0; c < 8; ++c) scale_min_k4(c, scales, dst[64 + 16 * c + r], dst[192 + 16 * c + r]);
        }
        const int64_t plane = t == DType::q4_k ? 256 : 320;
        for (int c = 0; c < 8; ++c) {
          quants(8 * i + c);
          put_nibbles(dst + 320 + plane * c, u);
          if (t == DType::q5_k) put_fifth_bits(dst + 320 + plane * c + 256, u);
        }
        break;
      }
      case DType::q6_k: {
        for (int64_t r = 0; r < n; ++r) {
          const auto& b = block_of<block_q6_k>(w, row_bytes, r0 + r, i);
          std::memcpy(dst + 2 * r, &b.d, 2);
          for (int h = 0; h < 16; ++h) dst[32 + 16 * h + r] = uint8_t(b.scales[h]);
        }
        for (int c = 0; c < 8; ++c) {
          quants(8 * i + c);
          put_nibbles(dst + 288 + 384 * c, u);
          put_q6_high_bits(dst + 288 + 384 * c + 256, u);
        }
        break;
      }
      default: throw TypeError(std::string("pack_weight: no packed layout for ") + name(t));
    }
  }
}

struct Registered {
  std::weak_ptr<PackedWeight> packed;
  DType type;
  int64_t N, K, row_bytes;
};
struct Registry {
  std::shared_mutex mu;
  std::unordered_map<const void*, Registered> map;
};
Registry& registry() {
  static Registry* r = new Registry;  // never destroyed: models may be freed during interpreter shutdown
  return *r;
}

}  // namespace

std::shared_ptr<PackedWeight> pack_weight(const Tensor& w) {
  const DType t = w.dtype();
  if (kernels::unit_bytes(t) == 0) throw TypeError(std::string("pack_weight: no packed layout for ") + name(t));
  if (w.ndim() != 2 || w.strides()[1] != traits(t).type_size)
    throw ValueError("pack_weight: expected a 2-D weight with contiguous rows, got shape " + shape_str(w.shape()));
  auto p = std::make_shared<PackedWeight>();
  p->type = t;
  p->N = w.dim(0);
  p->K = w.dim(1);
  p->group_bytes = p->K / 32 / kernels::unit_chunks(t) * kernels::unit_bytes(t);
  const int64_t groups = (p->N + kernels::kGroup - 1) / kernels::kGroup;
  p->data.assign(size_t(groups * p->group_bytes), 0);
  const auto* wb = static_cast<const std::byte*>(w.raw());
  const int64_t row_bytes = w.strides()[0];
  parallel_for(groups, 1, [&](int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; ++g)
      pack_group(t, wb, row_bytes, g * kernels::kGroup, std::min<int64_t>(kernels::kGroup, p->N - g * kernels::kGroup),
                 p->K, p->data.data() + g * p->group_bytes);
  });
  return p;
}

void register_packed(const Tensor& w, const std::shared_ptr<PackedWeight>& p) {
  Registry& reg = registry();
  std::unique_lock lock(reg.mu);
  for (auto it = reg.map.begin(); it != reg.map.end();) it = it->second.packed.expired() ? reg.map.erase(it) : ++it;
  reg.map[w.raw()] = {p, p->type, p->N, p->K, w.strides()[0]};
}

std::shared_ptr<const PackedWeight> find_packed(const Tensor& w) {
  Registry& reg = registry();
  std::shared_lock lock(reg.mu);
  const auto it = reg.map.find(w.raw());
  if (it == reg.map.end() || w.ndim() != 2) return nullptr;
  const Registered& e = it->second;
  if (e.type != w.dtype() || e.N != w.dim(0) || e.K != w.dim(1) || e.row_bytes != w.strides()[0]) return nullptr;
  return e.packed.lock();
}

void packed_row_to_float(const PackedWeight& w, int64_t r, float* y) {
  // The arithmetic of each type's dequantize_*_ref, in the same order, on quants read back from the planes.
  const int lane = int(r % kernels::kGroup);
  const uint8_t* u = w.data.data() + r / kernels::kGroup * w.group_bytes;
  auto f16 = [&](const uint8_t* p) {
    uint16_t h;
    std::memcpy(&h, p + 2 * lane, 2);
    return f16_to_f32(h);
  };
  auto nib = [&](const uint8_t* p, int k) {  // element k of a chunk's nibble plane
    const uint8_t b = p[64 * (k / 8) + 4 * lane + k % 4];
    return k % 8 < 4 ? b & 15 : b >> 4;
  };
  auto fifth = [&](const uint8_t* p, int k) {
    uint64_t m;
    std::memcpy(&m, p + 8 * (k / 4), 8);
    return int((m >> (4 * lane + k % 4)) & 1) << 4;
  };
  auto high2 = [&](const uint8_t* p, int k) {
    const int q = k / 4;
    return ((p[64 * (q / 4) + 4 * lane + k % 4] >> (2 * (q % 4))) & 3) << 4;
  };
  const int64_t units = w.K / 32 / kernels::unit_chunks(w.type);
  for (int64_t i = 0; i < units; ++i, u += kernels::unit_bytes(w.type)) {
    switch (w.type) {
      case DType::q4_0:
      case DType::q5_0: {
        const float d = f16(u);
        for (int k = 0; k < 32; ++k, ++y) {
          const int v = w.type == DType::q4_0 ? nib(u + 32, k) - 8 : (nib(u + 32, k) | fifth(u + 288, k)) - 16;
          *y = v * d;
        }
        break;
      }
      case DType::q4_1:
      case DType::q5_1: {
        const float d = f16(u), m = f16(u + 32);
        for (int k = 0; k < 32; ++k, ++y) {
          const int v = w.type == DType::q4_1 ? nib(u + 64, k) : nib(u + 64, k) | fifth(u + 320, k);
          *y = v * d + m;
        }
        break;
      }
      case DType::q8_0: {
        const float d = f16(u);
        for (int k = 0; k < 32; ++k, ++y) *y = (int(u[32 + 64 * (k / 4) + 4 * lane + k % 4]) - 128) * d;
        break;
      }
      case DType::q4_k:
      case DType::q5_k: {
        const float d = f16(u), dmin = f16(u + 32);
        const int64_t plane = w.type == DType::q4_k ? 256 : 320;
        for (int c = 0; c < 8; ++c) {
          const float d1 = d * u[64 + 16 * c + lane], m1 = dmin * u[192 + 16 * c + lane];
          const uint8_t* p = u + 320 + plane * c;
          for (int k = 0; k < 32; ++k, ++y) {
            const int v = w.type == DType::q4_k ? nib(p, k) : nib(p, k) + fifth(p + 256, k);
            *y = d1 * v - m1;
          }
        }
        break;
      }
      case DType::q6_k: {
        const float d = f16(u);
        for (int c = 0; c < 8; ++c) {
          const uint8_t* p = u + 288 + 384 * c;
          for (int k = 0; k < 32; ++k, ++y) {
            const int8_t sc = int8_t(u[32 + 16 * (2 * c + k / 16) + lane]);
            *y = d * sc * ((nib(p, k) | high2(p + 256, k)) - 32);
          }
        }
        break;
      }
      default: throw TypeError(std::string("packed_row_to_float: no packed layout for ") + name(w.type));
    }
  }
}

PackedActivations pack_activations(const int16_t* q, const float* d, const float* s, int64_t M, int64_t K,
                                   int bits) {
#ifdef LB_HAVE_avx512
  if (M >= 4) return kernels::avx512::pack_tokens(q, d, s, M, K, bits);
  PackedActivations a{M, K, Buffer<int32_t>(size_t(M * K / 2)), Buffer<float>(d, d + M * K / 32),
                      Buffer<float>(s, s + M * K / 16)};
  for (int64_t m = 0; m < M; ++m) kernels::avx512::split_act(q + m * K, K, a.q.data() + m * K / 2);
  return a;
#else
  (void)q, (void)d, (void)s, (void)M, (void)K, (void)bits;
  throw TypeError("pack_activations: this build has no avx512 kernels");
#endif
}

void qlinear_packed_groups(const PackedActivations& a, const PackedWeight& w, int64_t g0, int64_t g1, float* y,
                           int64_t ldy) {
#ifdef LB_HAVE_avx512
  const int64_t K = a.K, N = w.N;
  if (K != w.K) throw ValueError("qlinear_packed: activations have K = " + std::to_string(K) + ", weights " +
                                 std::to_string(w.K));
  if (a.M < 4) {
    kernels::avx512::packed_rows(w.type, w.data.data(), w.group_bytes, g0, g1, N, K, a.q.data(), a.d.data(),
                                 a.s.data(), a.M, y, ldy);
    return;
  }
  const auto gemm = a.bits == 8 ? kernels::avx512::packed_gemm8 : kernels::avx512::packed_gemm;
  for (int64_t g = g0; g < g1; ++g)
    gemm(w.type, w.data.data() + g * w.group_bytes, std::min<int64_t>(kernels::kGroup, N - g * kernels::kGroup), a,
         y + g * kernels::kGroup, ldy);
#else
  (void)a, (void)w, (void)g0, (void)g1, (void)y, (void)ldy;
  throw TypeError("qlinear_packed: this build has no avx512 kernels");
#endif
}

void qlinear_packed(const PackedActivations& a, std::span<const PackedWeight* const> ws, std::span<float* const> ys) {
  std::vector<int64_t> first{0};  // weight i's groups are [first[i], first[i + 1]) of the job
  for (const PackedWeight* w : ws) first.push_back(first.back() + (w->N + kernels::kGroup - 1) / kernels::kGroup);
  // One contiguous run of groups per thread (the pool's partitioner is static), across the weights' boundaries.
  parallel_for(first.back(), 1, [&](int64_t g0, int64_t g1) {
    for (size_t i = 0; i < ws.size(); ++i) {
      const int64_t lo = std::max(g0, first[i]), hi = std::min(g1, first[i + 1]);
      if (lo < hi) qlinear_packed_groups(a, *ws[i], lo - first[i], hi - first[i], ys[i], ws[i]->N);
    }
  });
}

void qlinear_packed(const QuantizedRows& a, const PackedWeight& w, float* y) {
  const PackedWeight* ws[] = {&w};
  float* ys[] = {y};
  qlinear_packed(pack_activations(a.q.data(), a.d.data(), a.s.data(), a.M, a.K, a.bits), ws, ys);
}

}  // namespace lb::ops
#endif

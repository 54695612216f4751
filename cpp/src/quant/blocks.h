// ggml's block layouts, byte for byte (ggml-common.h): a GGUF tensor's bytes are an array of these.
// f16 fields are raw IEEE half bits (lb::f16_to_f32). Sizes are checked against the type table
// (cpp/src/quant/type_traits.cpp); the scalar _ref dequantizers here are the spec for SIMD versions.
#pragma once
#include <cstdint>

namespace lb {

constexpr int QK4_0 = 32, QK4_1 = 32, QK5_0 = 32, QK5_1 = 32, QK8_0 = 32, QK8_1 = 32;
constexpr int QK_K = 256;        // k-quant super-block
constexpr int K_SCALE_SIZE = 12;  // q4_k/q5_k: eight 6-bit scales and eight 6-bit mins

// ---- 32-element blocks: x = d * q (+ m) ------------------------------------------------------
struct block_q4_0 {
  uint16_t d;             // f16 scale
  uint8_t qs[QK4_0 / 2];  // element j in the low nibble of qs[j], element j+16 in the high one; q - 8
};
struct block_q4_1 {
  uint16_t d, m;          // f16 scale and min: x = d*q + m
  uint8_t qs[QK4_1 / 2];
};
struct block_q5_0 {
  uint16_t d;
  uint8_t qh[4];          // bit j (little-endian u32) = 5th bit of element j; q - 16
  uint8_t qs[QK5_0 / 2];
};
struct block_q5_1 {
  uint16_t d, m;
  uint8_t qh[4];
  uint8_t qs[QK5_1 / 2];
};
struct block_q8_0 {
  uint16_t d;
  int8_t qs[QK8_0];
};
struct block_q8_1 {
  uint16_t d, s;          // s = d * sum(qs), used by dot products only
  int8_t qs[QK8_1];
};

// ---- 256-element super-blocks (k-quants) -------------------------------------------------------
struct block_q2_k {       // 16 sub-blocks of 16: x = d*(sc & 15)*q - dmin*(sc >> 4)
  uint8_t scales[QK_K / 16];
  uint8_t qs[QK_K / 4];   // 2 bits; byte l of each 32-byte group holds elements l, l+32, l+64, l+96
  uint16_t d, dmin;       // note: the f16 super-scales come last
};
struct block_q3_k {       // 16 sub-blocks of 16: x = d*(s6 - 32)*(q2 - (hbit ? 0 : 4))
  uint8_t hmask[QK_K / 8];  // high bit of element e: hmask[e % 32] bit (e / 32)
  uint8_t qs[QK_K / 4];
  uint8_t scales[12];     // sixteen 6-bit scales: low nibbles in bytes 0..7, high 2 bits in bytes 8..11
  uint16_t d;
};
struct block_q4_k {       // 8 sub-blocks of 32: x = d*sc*q - dmin*m, sc/m 6-bit
  uint16_t d, dmin;
  uint8_t scales[K_SCALE_SIZE];
  uint8_t qs[QK_K / 2];   // per 64 elements, 32 bytes: low nibbles first 32, high nibbles next 32
};
struct block_q5_k {
  uint16_t d, dmin;
  uint8_t scales[K_SCALE_SIZE];
  uint8_t qh[QK_K / 8];   // 5th bit of element e: qh[e % 32] bit (e / 32)
  uint8_t qs[QK_K / 2];
};
struct block_q6_k {       // 16 sub-blocks of 16: x = d*sc*(q6 - 32), sc signed 8-bit
  uint8_t ql[QK_K / 2];
  uint8_t qh[QK_K / 4];
  int8_t scales[QK_K / 16];
  uint16_t d;
};
struct block_q8_k {       // the activation format of k-quant dot products
  float d;                // f32, unlike every other block
  int8_t qs[QK_K];
  int16_t bsums[QK_K / 16];  // sums of each 16 quants
};

static_assert(sizeof(block_q4_0) == 18 && sizeof(block_q4_1) == 20, "q4 block size");
static_assert(sizeof(block_q5_0) == 22 && sizeof(block_q5_1) == 24, "q5 block size");
static_assert(sizeof(block_q8_0) == 34 && sizeof(block_q8_1) == 36, "q8 block size");
static_assert(sizeof(block_q2_k) == 84 && sizeof(block_q3_k) == 110, "q2_k/q3_k block size");
static_assert(sizeof(block_q4_k) == 144 && sizeof(block_q5_k) == 176, "q4_k/q5_k block size");
static_assert(sizeof(block_q6_k) == 210 && sizeof(block_q8_k) == 292, "q6_k/q8_k block size");

// q4_k/q5_k: the 6-bit scale and min of sub-block j (0..7). Bytes 0..3 hold scales 0..3 and bytes
// 4..7 mins 0..3 in their low 6 bits; sub-blocks 4..7 take their low nibbles from bytes 8..11 and
// their top 2 bits from the top bits of bytes 0..3 (scales) and 4..7 (mins).
inline void scale_min_k4(int j, const uint8_t* q, uint8_t& sc, uint8_t& m) {
  if (j < 4) {
    sc = q[j] & 63;
    m = q[j + 4] & 63;
  } else {
    sc = (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4);
    m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

// q3_k: its sixteen 6-bit scales, minus 32.
inline void q3_k_scales(const uint8_t* s, int8_t out[16]) {
  for (int j = 0; j < 16; ++j) {
    const int lo = j < 8 ? s[j] & 0x0F : s[j - 8] >> 4;
    const int hi = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
    out[j] = int8_t((lo | (hi << 4)) - 32);
  }
}

// Scalar reference dequantizers: n elements (a multiple of the block size) from contiguous blocks,
// with ggml's arithmetic in ggml's order, so results match dequantize_row_* bit for bit.
void dequantize_q4_0_ref(const void* blocks, float* y, int64_t n);  // q4_q5.cpp
void dequantize_q4_1_ref(const void* blocks, float* y, int64_t n);
void dequantize_q5_0_ref(const void* blocks, float* y, int64_t n);
void dequantize_q5_1_ref(const void* blocks, float* y, int64_t n);
void dequantize_q8_0_ref(const void* blocks, float* y, int64_t n);  // q8.cpp
void dequantize_q8_1_ref(const void* blocks, float* y, int64_t n);
void dequantize_q8_k_ref(const void* blocks, float* y, int64_t n);
void dequantize_q2_k_ref(const void* blocks, float* y, int64_t n);  // k_quants.cpp
void dequantize_q3_k_ref(const void* blocks, float* y, int64_t n);
void dequantize_q4_k_ref(const void* blocks, float* y, int64_t n);
void dequantize_q5_k_ref(const void* blocks, float* y, int64_t n);
void dequantize_q6_k_ref(const void* blocks, float* y, int64_t n);

// Scalar reference quantizers (quantize.cpp): n floats (a multiple of the block size) to contiguous
// blocks, ggml's quantize_row_*_ref arithmetic in ggml's order, so the bytes match ggml's bit for bit.
void quantize_q4_0_ref(const float* x, void* blocks, int64_t n);
void quantize_q4_1_ref(const float* x, void* blocks, int64_t n);
void quantize_q5_0_ref(const float* x, void* blocks, int64_t n);
void quantize_q5_1_ref(const float* x, void* blocks, int64_t n);
void quantize_q8_0_ref(const float* x, void* blocks, int64_t n);
void quantize_q8_1_ref(const float* x, void* blocks, int64_t n);
void quantize_q2_k_ref(const float* x, void* blocks, int64_t n);
void quantize_q3_k_ref(const float* x, void* blocks, int64_t n);
void quantize_q4_k_ref(const float* x, void* blocks, int64_t n);
void quantize_q5_k_ref(const float* x, void* blocks, int64_t n);
void quantize_q6_k_ref(const float* x, void* blocks, int64_t n);

}  // namespace lb

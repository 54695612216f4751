// THE table of element types: name, block size, bytes per block, ggml id. Quantized formats keep
// ggml's names and block layouts so files and results compare one to one with GGUF/llama.cpp.
// to_float is the scalar reference path (dequantize.cpp runs it row by row); the fast-kernels work
// adds from_float / vec_dot columns here.
#include <array>
#include <cstring>
#include <string>

#include "blocks.h"
#include "lmblocks/dtype.h"
#include "lmblocks/error.h"

namespace lb {
namespace {

void f32_to_float(const void* src, float* dst, int64_t n) { std::memcpy(dst, src, size_t(n) * 4); }
void f16_to_float(const void* src, float* dst, int64_t n) {
  const auto* h = static_cast<const uint16_t*>(src);
  for (int64_t i = 0; i < n; ++i) dst[i] = f16_to_f32(h[i]);
}
void bf16_to_float(const void* src, float* dst, int64_t n) {
  const auto* h = static_cast<const uint16_t*>(src);
  for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(h[i]);
}
void f64_to_float(const void* src, float* dst, int64_t n) {
  const auto* d = static_cast<const double*>(src);
  for (int64_t i = 0; i < n; ++i) dst[i] = float(d[i]);
}

//                                   name    block  bytes  quant  float  ggml  to_float
constexpr std::array<DTypeTraits, size_t(DType::count_)> kTraits = {{
    {"f32", 1, 4, false, true, 0, f32_to_float},
    {"f16", 1, 2, false, true, 1, f16_to_float},
    {"bf16", 1, 2, false, true, 30, bf16_to_float},
    {"i8", 1, 1, false, false, 24, nullptr},
    {"u8", 1, 1, false, false, -1, nullptr},
    {"i16", 1, 2, false, false, 25, nullptr},
    {"i32", 1, 4, false, false, 26, nullptr},
    {"i64", 1, 8, false, false, 27, nullptr},
    {"f64", 1, 8, false, true, 28, f64_to_float},
    {"q4_0", 32, 18, true, false, 2, dequantize_q4_0_ref},     // f16 d, 16 B of 4-bit quants
    {"q4_1", 32, 20, true, false, 3, dequantize_q4_1_ref},     // f16 d, f16 m, 16 B
    {"q5_0", 32, 22, true, false, 6, dequantize_q5_0_ref},     // f16 d, 4 B high bits, 16 B
    {"q5_1", 32, 24, true, false, 7, dequantize_q5_1_ref},     // f16 d, f16 m, 4 B high bits, 16 B
    {"q8_0", 32, 34, true, false, 8, dequantize_q8_0_ref},     // f16 d, 32 x i8
    {"q8_1", 32, 36, true, false, 9, dequantize_q8_1_ref},     // f16 d, f16 s, 32 x i8
    {"q2_k", 256, 84, true, false, 10, dequantize_q2_k_ref},
    {"q3_k", 256, 110, true, false, 11, dequantize_q3_k_ref},
    {"q4_k", 256, 144, true, false, 12, dequantize_q4_k_ref},
    {"q5_k", 256, 176, true, false, 13, dequantize_q5_k_ref},
    {"q6_k", 256, 210, true, false, 14, dequantize_q6_k_ref},
    {"q8_k", 256, 292, true, false, 15, dequantize_q8_k_ref},  // f32 d, 256 x i8, 16 x i16 sums
}};

// The table and the block structs must agree on every layout.
constexpr bool block_is(DType t, int64_t block_size, size_t bytes) {
  return kTraits[size_t(t)].block_size == block_size && kTraits[size_t(t)].type_size == int64_t(bytes);
}
static_assert(block_is(DType::q4_0, QK4_0, sizeof(block_q4_0)) && block_is(DType::q4_1, QK4_1, sizeof(block_q4_1)) &&
              block_is(DType::q5_0, QK5_0, sizeof(block_q5_0)) && block_is(DType::q5_1, QK5_1, sizeof(block_q5_1)) &&
              block_is(DType::q8_0, QK8_0, sizeof(block_q8_0)) && block_is(DType::q8_1, QK8_1, sizeof(block_q8_1)) &&
              block_is(DType::q2_k, QK_K, sizeof(block_q2_k)) && block_is(DType::q3_k, QK_K, sizeof(block_q3_k)) &&
              block_is(DType::q4_k, QK_K, sizeof(block_q4_k)) && block_is(DType::q5_k, QK_K, sizeof(block_q5_k)) &&
              block_is(DType::q6_k, QK_K, sizeof(block_q6_k)) && block_is(DType::q8_k, QK_K, sizeof(block_q8_k)),
              "cpp/src/quant/blocks.h and the type table disagree on a block layout");

struct Alias {
  const char* alias;
  DType dtype;
};
constexpr Alias kAliases[] = {
    {"float32", DType::f32}, {"float16", DType::f16}, {"half", DType::f16}, {"bfloat16", DType::bf16},
    {"int8", DType::i8},     {"uint8", DType::u8},    {"int16", DType::i16}, {"int32", DType::i32},
    {"int64", DType::i64},   {"float64", DType::f64}, {"float", DType::f32}, {"double", DType::f64},
};

}  // namespace

const DTypeTraits& traits(DType t) { return kTraits.at(size_t(t)); }

DType dtype_from_name(std::string_view s) {
  std::string low(s);
  for (char& c : low) c = char(std::tolower(static_cast<unsigned char>(c)));
  for (size_t i = 0; i < kTraits.size(); ++i)
    if (low == kTraits[i].name) return DType(i);
  for (const Alias& a : kAliases)
    if (low == a.alias) return a.dtype;
  throw TypeError("unknown dtype '" + std::string(s) + "'");
}

DType dtype_from_ggml(int ggml_type) {
  for (size_t i = 0; i < kTraits.size(); ++i)
    if (kTraits[i].ggml_type == ggml_type) return DType(i);
  throw ValueError("unsupported ggml tensor type " + std::to_string(ggml_type));
}

std::vector<DType> all_dtypes() {
  std::vector<DType> v;
  for (size_t i = 0; i < kTraits.size(); ++i) v.push_back(DType(i));
  return v;
}

// IEEE half <-> single, round to nearest even; subnormals, inf and NaN handled.
float f16_to_f32(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1F, mant = h & 0x3FF, bits;
  if (exp == 0x1F) {
    bits = sign | 0x7F800000u | (mant << 13);
  } else if (exp != 0) {
    bits = sign | ((exp + 112) << 23) | (mant << 13);
  } else if (mant == 0) {
    bits = sign;
  } else {  // subnormal half: normalize
    int e = -1;
    do {
      ++e;
      mant <<= 1;
    } while ((mant & 0x400) == 0);
    bits = sign | (uint32_t(112 - e) << 23) | ((mant & 0x3FF) << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

uint16_t f32_to_f16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint16_t sign = uint16_t((x >> 16) & 0x8000);
  const uint32_t ax = x & 0x7FFFFFFFu;
  if (ax >= 0x7F800000u) return sign | (ax > 0x7F800000u ? 0x7E00 : 0x7C00);  // NaN / inf
  if (ax >= 0x477FF000u) return sign | 0x7C00;                                  // rounds to inf
  if (ax < 0x38800000u) {                                                       // subnormal or zero
    if (ax < 0x33000000u) return sign;                                         // below half of min subnormal
    const uint32_t e = ax >> 23, m = (ax & 0x7FFFFF) | 0x800000;
    const uint32_t shift = 126 - e;                                            // 14..24
    uint32_t r = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (r & 1))) ++r;
    return sign | uint16_t(r);
  }
  uint32_t r = ax - 0x38000000u;  // rebias exponent 127 -> 15 (shifted)
  const uint32_t rem = r & 0x1FFF;
  r >>= 13;
  if (rem > 0x1000 || (rem == 0x1000 && (r & 1))) ++r;
  return sign | uint16_t(r);
}

uint16_t f32_to_bf16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  if ((x & 0x7FFFFFFFu) > 0x7F800000u) return uint16_t((x >> 16) | 0x40);  // quiet NaN
  x += 0x7FFF + ((x >> 16) & 1);
  return uint16_t(x >> 16);
}

}  // namespace lb

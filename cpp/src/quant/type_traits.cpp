// THE table of element types: name, block size, bytes per block, ggml id. Quantized formats keep
// ggml's names and block layouts so files and results compare one to one with GGUF/llama.cpp.
// The fast-kernels work adds to_float / from_float / vec_dot columns here.
#include <array>
#include <cstring>
#include <string>

#include "lmblocks/dtype.h"
#include "lmblocks/error.h"

namespace lb {
namespace {

//                                   name    block  bytes  quant  float  ggml
constexpr std::array<DTypeTraits, size_t(DType::count_)> kTraits = {{
    {"f32", 1, 4, false, true, 0},
    {"f16", 1, 2, false, true, 1},
    {"bf16", 1, 2, false, true, 30},
    {"i8", 1, 1, false, false, 24},
    {"u8", 1, 1, false, false, -1},
    {"i16", 1, 2, false, false, 25},
    {"i32", 1, 4, false, false, 26},
    {"i64", 1, 8, false, false, 27},
    {"f64", 1, 8, false, true, 28},
    {"q4_0", 32, 18, true, false, 2},     // f16 d, 16 B of 4-bit quants
    {"q4_1", 32, 20, true, false, 3},     // f16 d, f16 m, 16 B
    {"q5_0", 32, 22, true, false, 6},     // f16 d, 4 B high bits, 16 B
    {"q5_1", 32, 24, true, false, 7},     // f16 d, f16 m, 4 B high bits, 16 B
    {"q8_0", 32, 34, true, false, 8},     // f16 d, 32 x i8
    {"q8_1", 32, 36, true, false, 9},     // f16 d, f16 s, 32 x i8
    {"q2_k", 256, 84, true, false, 10},
    {"q3_k", 256, 110, true, false, 11},
    {"q4_k", 256, 144, true, false, 12},
    {"q5_k", 256, 176, true, false, 13},
    {"q6_k", 256, 210, true, false, 14},
    {"q8_k", 256, 292, true, false, 15},  // f32 d, 256 x i8, 16 x i16 sums
}};

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

// Element types. Plain types are one element per item; quantized types store `block_size` elements
// in `type_size` bytes (ggml's block formats). The one table of traits is cpp/src/quant/type_traits.cpp.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace lb {

enum class DType : uint8_t {
  f32, f16, bf16, i8, u8, i16, i32, i64, f64,
  // ggml block types; the fast-kernels work attaches to_float / from_float / dot to their rows.
  q4_0, q4_1, q5_0, q5_1, q8_0, q8_1, q2_k, q3_k, q4_k, q5_k, q6_k, q8_k,
  count_
};

struct DTypeTraits {
  const char* name;      // ggml-style short name: "f32", "bf16", "q4_0", "q6_k"
  int64_t block_size;    // elements per block (1 for plain types)
  int64_t type_size;     // bytes per block
  bool quantized;
  bool is_float;         // plain floating point (f32/f16/bf16/f64)
  int ggml_type;         // the GGUF/ggml type id, -1 where ggml has none
  // n elements (a multiple of block_size) from contiguous src to f32; null where no conversion exists.
  void (*to_float)(const void* src, float* dst, int64_t n);
};

const DTypeTraits& traits(DType t);
inline const char* name(DType t) { return traits(t).name; }
inline bool is_quantized(DType t) { return traits(t).quantized; }
// Bytes for n elements; n must be a multiple of the block size (checked by callers that take sizes
// from outside, e.g. Tensor constructors).
inline int64_t row_bytes(DType t, int64_t n) { return n / traits(t).block_size * traits(t).type_size; }
// Accepts ggml names ("f32", "q4_k") and NumPy-style aliases ("float32", "bfloat16", "int64").
DType dtype_from_name(std::string_view s);  // throws lb::TypeError
DType dtype_from_ggml(int ggml_type);       // throws lb::ValueError
std::vector<DType> all_dtypes();

// Scalar conversions (the reference path; bulk versions live in ops/convert.cpp).
float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);  // round to nearest even, with inf/nan handling
inline float bf16_to_f32(uint16_t h) {
  uint32_t u = uint32_t(h) << 16;
  float f;
  __builtin_memcpy(&f, &u, 4);
  return f;
}
uint16_t f32_to_bf16(float f);  // round to nearest even, nan kept quiet

// One i32 or i64 element (token ids, positions) at p, whatever its alignment.
inline int64_t index_at(const void* p, DType t) {
  if (t == DType::i64) {
    int64_t v;
    __builtin_memcpy(&v, p, 8);
    return v;
  }
  int32_t v;
  __builtin_memcpy(&v, p, 4);
  return v;
}

}  // namespace lb

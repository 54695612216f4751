// q8_0, q8_1 (32 x i8 with an f16 scale) and q8_k (256 x i8 with an f32 scale): x = d * q.
// q8_1's s and q8_k's bsums only serve dot products and play no part here.
#include <cstring>

#include "blocks.h"
#include "lmblocks/dtype.h"

namespace lb {

void dequantize_q8_0_ref(const void* blocks, float* y, int64_t n) {
  const auto* x = static_cast<const block_q8_0*>(blocks);
  for (int64_t i = 0; i < n / QK8_0; ++i, y += QK8_0) {
    const float d = f16_to_f32(x[i].d);
    for (int j = 0; j < QK8_0; ++j) y[j] = x[i].qs[j] * d;
  }
}

void dequantize_q8_1_ref(const void* blocks, float* y, int64_t n) {
  const auto* x = static_cast<const block_q8_1*>(blocks);
  for (int64_t i = 0; i < n / QK8_1; ++i, y += QK8_1) {
    const float d = f16_to_f32(x[i].d);
    for (int j = 0; j < QK8_1; ++j) y[j] = x[i].qs[j] * d;
  }
}

void dequantize_q8_k_ref(const void* blocks, float* y, int64_t n) {
  const auto* x = static_cast<const block_q8_k*>(blocks);
  for (int64_t i = 0; i < n / QK_K; ++i, y += QK_K) {
    float d;
    std::memcpy(&d, &x[i].d, 4);  // a view of raw bytes need not be 4-byte aligned
    for (int j = 0; j < QK_K; ++j) y[j] = d * x[i].qs[j];
  }
}

}  // namespace lb

// q4_0, q4_1, q5_0, q5_1: 32-element blocks with an f16 scale (and f16 min for the _1 kinds).
// Element j of a block sits in the low nibble of qs[j % 16] for j < 16 and in the high nibble for
// j >= 16; q5 adds a fifth bit from the little-endian u32 qh (bit j for element j).
#include <cstring>

#include "blocks.h"
#include "lmblocks/dtype.h"

namespace lb {

void dequantize_q4_0_ref(const void* blocks, float* y, int64_t n) {
  const auto* x = static_cast<const block_q4_0*>(blocks);
  for (int64_t i = 0; i < n / QK4_0; ++i, y += QK4_0) {
    const float d = f16_to_f32(x[i].d);
    for (int j = 0; j < QK4_0 / 2; ++j) {
      const int x0 = (x[i].qs[j] & 0x0F) - 8, x1 = (x[i].qs[j] >> 4) - 8;
      y[j] = x0 * d;
      y[j + QK4_0 / 2] = x1 * d;
    }
  }
}

void dequantize_q4_1_ref(const void* blocks, float* y, int64_t n) {
  const auto* x = static_cast<const block_q4_1*>(blocks);
  for (int64_t i = 0; i < n / QK4_1; ++i, y += QK4_1) {
    const float d = f16_to_f32(x[i].d), m = f16_to_f32(x[i].m);
    for (int j = 0; j < QK4_1 / 2; ++j) {
      const int x0 = x[i].qs[j] & 0x0F, x1 = x[i].qs[j] >> 4;
      y[j] = x0 * d + m;
      y[j + QK4_1 / 2] = x1 * d + m;
    }
  }
}

void dequantize_q5_0_ref(const void* blocks, float* y, int64_t n) {
  const auto* x = static_cast<const block_q5_0*>(blocks);
  for (int64_t i = 0; i < n / QK5_0; ++i, y += QK5_0) {
    const float d = f16_to_f32(x[i].d);
    uint32_t qh;
    std::memcpy(&qh, x[i].qh, 4);
    for (int j = 0; j < QK5_0 / 2; ++j) {
      const int h0 = (qh >> j) & 1, h1 = (qh >> (j + 16)) & 1;
      const int x0 = ((x[i].qs[j] & 0x0F) | (h0 << 4)) - 16, x1 = ((x[i].qs[j] >> 4) | (h1 << 4)) - 16;
      y[j] = x0 * d;
      y[j + QK5_0 / 2] = x1 * d;
    }
  }
}

void dequantize_q5_1_ref(const void* blocks, float* y, int64_t n) {
  const auto* x = static_cast<const block_q5_1*>(blocks);
  for (int64_t i = 0; i < n / QK5_1; ++i, y += QK5_1) {
    const float d = f16_to_f32(x[i].d), m = f16_to_f32(x[i].m);
    uint32_t qh;
    std::memcpy(&qh, x[i].qh, 4);
    for (int j = 0; j < QK5_1 / 2; ++j) {
      const int h0 = (qh >> j) & 1, h1 = (qh >> (j + 16)) & 1;
      const int x0 = (x[i].qs[j] & 0x0F) | (h0 << 4), x1 = (x[i].qs[j] >> 4) | (h1 << 4);
      y[j] = x0 * d + m;
      y[j + QK5_1 / 2] = x1 * d + m;
    }
  }
}

}  // namespace lb

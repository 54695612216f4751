// lb::quantize: f32 rows to ggml block formats with ggml's reference quantizers (quantize_row_*_ref in
// ggml-quants.c), same float32 operations in the same order, so the bytes match ggml's bit for bit.
// The library builds with -ffp-contract=off: no fused multiply-adds may change a rounding here.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <string>

#include "blocks.h"
#include "lmblocks/dtype.h"
#include "lmblocks/error.h"
#include "lmblocks/quant.h"
#include "lmblocks/runtime.h"

namespace lb {
namespace {

constexpr float GROUP_MAX_EPS = 1e-15f;

// Round to nearest (ties to even) for |f| <= 2^22, as ggml's nearest_int: through the float mantissa.
inline int nearest_int(float f) {
  const float v = f + 12582912.f;
  int i;
  std::memcpy(&i, &v, 4);
  return (i & 0x007fffff) - 0x00400000;
}

// ---- 32-element blocks ------------------------------------------------------------------------------
// The value of largest magnitude, sign kept (the first one on ties).
inline float signed_absmax(const float* x, int n) {
  float amax = 0.f, max = 0.f;
  for (int j = 0; j < n; ++j) {
    if (amax < std::fabs(x[j])) {
      amax = std::fabs(x[j]);
      max = x[j];
    }
  }
  return max;
}

inline void min_max(const float* x, int n, float& min, float& max) {
  min = 3.402823466e+38f;
  max = -3.402823466e+38f;
  for (int j = 0; j < n; ++j) {
    min = std::min(min, x[j]);
    max = std::max(max, x[j]);
  }
}

}  // namespace

void quantize_q4_0_ref(const float* x, void* blocks, int64_t n) {
  auto* y = static_cast<block_q4_0*>(blocks);
  for (int64_t i = 0; i < n / QK4_0; ++i, x += QK4_0) {
    const float d = signed_absmax(x, QK4_0) / -8, id = d ? 1.0f / d : 0.0f;
    y[i].d = f32_to_f16(d);
    for (int j = 0; j < QK4_0 / 2; ++j) {
      const uint8_t x0 = uint8_t(std::min(15, int(int8_t(x[j] * id + 8.5f))));
      const uint8_t x1 = uint8_t(std::min(15, int(int8_t(x[j + QK4_0 / 2] * id + 8.5f))));
      y[i].qs[j] = uint8_t(x0 | (x1 << 4));
    }
  }
}

void quantize_q4_1_ref(const float* x, void* blocks, int64_t n) {
  auto* y = static_cast<block_q4_1*>(blocks);
  for (int64_t i = 0; i < n / QK4_1; ++i, x += QK4_1) {
    float min, max;
    min_max(x, QK4_1, min, max);
    const float d = (max - min) / 15, id = d ? 1.0f / d : 0.0f;
    y[i].d = f32_to_f16(d);
    y[i].m = f32_to_f16(min);
    for (int j = 0; j < QK4_1 / 2; ++j) {
      const uint8_t x0 = uint8_t(std::min(15, int(int8_t((x[j] - min) * id + 0.5f))));
      const uint8_t x1 = uint8_t(std::min(15, int(int8_t((x[j + QK4_1 / 2] - min) * id + 0.5f))));
      y[i].qs[j] = uint8_t(x0 | (x1 << 4));
    }
  }
}

void quantize_q5_0_ref(const float* x, void* blocks, int64_t n) {
  auto* y = static_cast<block_q5_0*>(blocks);
  for (int64_t i = 0; i < n / QK5_0; ++i, x += QK5_0) {
    const float d = signed_absmax(x, QK5_0) / -16, id = d ? 1.0f / d : 0.0f;
    y[i].d = f32_to_f16(d);
    uint32_t qh = 0;
    for (int j = 0; j < QK5_0 / 2; ++j) {
      const uint8_t x0 = uint8_t(std::min(31, int(int8_t(x[j] * id + 16.5f))));
      const uint8_t x1 = uint8_t(std::min(31, int(int8_t(x[j + QK5_0 / 2] * id + 16.5f))));
      y[i].qs[j] = uint8_t((x0 & 0x0F) | ((x1 & 0x0F) << 4));
      qh |= uint32_t((x0 & 0x10) >> 4) << j;
      qh |= uint32_t((x1 & 0x10) >> 4) << (j + QK5_0 / 2);
    }
    std::memcpy(y[i].qh, &qh, 4);
  }
}

void quantize_q5_1_ref(const float* x, void* blocks, int64_t n) {
  auto* y = static_cast<block_q5_1*>(blocks);
  for (int64_t i = 0; i < n / QK5_1; ++i, x += QK5_1) {
    float min, max;
    min_max(x, QK5_1, min, max);
    const float d = (max - min) / 31, id = d ? 1.0f / d : 0.0f;
    y[i].d = f32_to_f16(d);
    y[i].m = f32_to_f16(min);
    uint32_t qh = 0;
    for (int j = 0; j < QK5_1 / 2; ++j) {
      const uint8_t x0 = uint8_t(int8_t((x[j] - min) * id + 0.5f));
      const uint8_t x1 = uint8_t(int8_t((x[j + QK5_1 / 2] - min) * id + 0.5f));
      y[i].qs[j] = uint8_t((x0 & 0x0F) | ((x1 & 0x0F) << 4));
      qh |= uint32_t((x0 & 0x10) >> 4) << j;
      qh |= uint32_t((x1 & 0x10) >> 4) << (j + QK5_1 / 2);
    }
    std::memcpy(y[i].qh, &qh, 4);
  }
}

void quantize_q8_0_ref(const float* x, void* blocks, int64_t n) {
  auto* y = static_cast<block_q8_0*>(blocks);
  for (int64_t i = 0; i < n / QK8_0; ++i, x += QK8_0) {
    float amax = 0.f;
    for (int j = 0; j < QK8_0; ++j) amax = std::max(amax, std::fabs(x[j]));
    const float d = amax / 127, id = d ? 1.0f / d : 0.0f;
    y[i].d = f32_to_f16(d);
    for (int j = 0; j < QK8_0; ++j) y[i].qs[j] = int8_t(std::round(x[j] * id));  // half away from zero
  }
}

void quantize_q8_1_ref(const float* x, void* blocks, int64_t n) {
  auto* y = static_cast<block_q8_1*>(blocks);
  for (int64_t i = 0; i < n / QK8_1; ++i, x += QK8_1) {
    float amax = 0.f;
    for (int j = 0; j < QK8_1; ++j) amax = std::max(amax, std::fabs(x[j]));
    const float d = amax / 127, id = d ? 1.0f / d : 0.0f;
    y[i].d = f32_to_f16(d);
    int sum = 0;
    for (int j = 0; j < QK8_1 / 2; ++j) {
      y[i].qs[j] = int8_t(std::round(x[j] * id));
      y[i].qs[j + QK8_1 / 2] = int8_t(std::round(x[j + QK8_1 / 2] * id));
      sum += y[i].qs[j] + y[i].qs[j + QK8_1 / 2];
    }
    y[i].s = f32_to_f16(float(sum) * d);
  }
}

// ---- k-quants: ggml's scale searches ---------------------------------------------------------------
namespace {

// Symmetric quants in [-nmax, nmax-1] (+nmax stored) with the scale refined by a weighted least-squares
// search over 18 candidate inverse scales (rmse_type 1: weights x^2). ggml's make_qx_quants.
float make_qx_quants(int n, int nmax, const float* x, int8_t* L) {
  const float max = signed_absmax(x, n), amax = std::fabs(max);
  if (amax < GROUP_MAX_EPS) {
    for (int i = 0; i < n; ++i) L[i] = 0;
    return 0.f;
  }
  float iscale = -nmax / max;
  float sumlx = 0, suml2 = 0;
  for (int i = 0; i < n; ++i) {
    const int l = std::max(-nmax, std::min(nmax - 1, nearest_int(iscale * x[i])));
    L[i] = int8_t(l + nmax);
    const float w = x[i] * x[i];
    sumlx += w * x[i] * l;
    suml2 += w * l * l;
  }
  float scale = suml2 ? sumlx / suml2 : 0.0f;
  float best = scale * sumlx;
  for (int is = -9; is <= 9; ++is) {
    if (is == 0) continue;
    iscale = -(nmax + 0.1f * is) / max;
    sumlx = suml2 = 0;
    for (int i = 0; i < n; ++i) {
      const int l = std::max(-nmax, std::min(nmax - 1, nearest_int(iscale * x[i])));
      const float w = x[i] * x[i];
      sumlx += w * x[i] * l;
      suml2 += w * l * l;
    }
    if (suml2 > 0 && sumlx * sumlx > best * suml2) {
      for (int i = 0; i < n; ++i) L[i] = int8_t(nmax + std::max(-nmax, std::min(nmax - 1, nearest_int(iscale * x[i]))));
      scale = sumlx / suml2;
      best = scale * sumlx;
    }
  }
  return scale;
}

// q3_k's variant: start from the plain rounding, then move single quants while the weighted cosine
// improves (up to 5 sweeps). Quants stored + nmax. ggml's make_q3_quants with do_rmse.
float make_q3_quants(int n, int nmax, const float* x, int8_t* L) {
  const float max = signed_absmax(x, n), amax = std::fabs(max);
  if (amax < GROUP_MAX_EPS) {
    for (int i = 0; i < n; ++i) L[i] = 0;
    return 0.f;
  }
  const float iscale = -nmax / max;
  float sumlx = 0, suml2 = 0;
  for (int i = 0; i < n; ++i) {
    const int l = std::max(-nmax, std::min(nmax - 1, nearest_int(iscale * x[i])));
    L[i] = int8_t(l);
    const float w = x[i] * x[i];
    sumlx += w * x[i] * l;
    suml2 += w * l * l;
  }
  for (int itry = 0; itry < 5; ++itry) {
    int n_changed = 0;
    for (int i = 0; i < n; ++i) {
      const float w = x[i] * x[i];
      float slx = sumlx - w * x[i] * L[i];
      if (slx > 0) {
        float sl2 = suml2 - w * L[i] * L[i];
        const int new_l = std::max(-nmax, std::min(nmax - 1, nearest_int(x[i] * sl2 / slx)));
        if (new_l != L[i]) {
          slx += w * x[i] * new_l;
          sl2 += w * new_l * new_l;
          if (sl2 > 0 && slx * slx * suml2 > sumlx * sumlx * sl2) {
            L[i] = int8_t(new_l);
            sumlx = slx;
            suml2 = sl2;
            ++n_changed;
          }
        }
      }
    }
    if (!n_changed) break;
  }
  for (int i = 0; i < n; ++i) L[i] = int8_t(L[i] + nmax);
  return sumlx / suml2;
}

// Asymmetric quants in [0, nmax]: x ~ scale * L - the_min. Weighted least squares for (scale, min) at
// nstep+1 candidate inverse scales, keeping the one with the least weighted error (|e| if use_mad, else
// e^2). ggml's make_qkx2_quants.
float make_qkx2_quants(int n, int nmax, const float* x, const float* weights, uint8_t* L, float* the_min,
                       uint8_t* Laux, float rmin, float rdelta, int nstep, bool use_mad) {
  float min = x[0], max = x[0];
  float sum_w = weights[0], sum_x = sum_w * x[0];
  for (int i = 1; i < n; ++i) {
    if (x[i] < min) min = x[i];
    if (x[i] > max) max = x[i];
    const float w = weights[i];
    sum_w += w;
    sum_x += w * x[i];
  }
  if (min > 0) min = 0;
  if (max == min) {
    for (int i = 0; i < n; ++i) L[i] = 0;
    *the_min = -min;
    return 0.f;
  }
  float iscale = nmax / (max - min);
  float scale = 1 / iscale;
  float best_mad = 0;
  for (int i = 0; i < n; ++i) {
    const int l = nearest_int(iscale * (x[i] - min));
    L[i] = uint8_t(std::max(0, std::min(nmax, l)));
    float diff = scale * L[i] + min - x[i];
    diff = use_mad ? std::fabs(diff) : diff * diff;
    best_mad += weights[i] * diff;
  }
  for (int is = 0; is <= nstep; ++is) {
    iscale = (rmin + rdelta * is + nmax) / (max - min);
    float sum_l = 0, sum_l2 = 0, sum_xl = 0;
    for (int i = 0; i < n; ++i) {
      const int l = std::max(0, std::min(nmax, nearest_int(iscale * (x[i] - min))));
      Laux[i] = uint8_t(l);
      const float w = weights[i];
      sum_l += w * l;
      sum_l2 += w * l * l;
      sum_xl += w * l * x[i];
    }
    const float D = sum_w * sum_l2 - sum_l * sum_l;
    if (D > 0) {
      float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
      float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
      if (this_min > 0) {
        this_min = 0;
        this_scale = sum_xl / sum_l2;
      }
      float mad = 0;
      for (int i = 0; i < n; ++i) {
        float diff = this_scale * Laux[i] + this_min - x[i];
        diff = use_mad ? std::fabs(diff) : diff * diff;
        mad += weights[i] * diff;
      }
      if (mad < best_mad) {
        for (int i = 0; i < n; ++i) L[i] = Laux[i];
        best_mad = mad;
        scale = this_scale;
        min = this_min;
      }
    }
  }
  *the_min = -min;
  return scale;
}

// Byte l of each 32-byte group of a 2-bit array holds elements l, l+32, l+64, l+96 of its 128.
inline void pack_2bit(const uint8_t* L, uint8_t* qs) {
  for (int j = 0; j < QK_K; j += 128)
    for (int l = 0; l < 32; ++l)
      qs[j / 4 + l] = uint8_t(L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4) | (L[j + l + 96] << 6));
}

}  // namespace

void quantize_q2_k_ref(const float* x, void* blocks, int64_t n) {
  auto* y = static_cast<block_q2_k*>(blocks);
  uint8_t L[QK_K], Laux[16];
  float weights[16], mins[QK_K / 16], scales[QK_K / 16];
  const float q4scale = 15.f;
  for (int64_t i = 0; i < n / QK_K; ++i, x += QK_K) {
    float max_scale = 0, max_min = 0;  // scales and mins are non-negative
    for (int j = 0; j < QK_K / 16; ++j) {
      for (int l = 0; l < 16; ++l) weights[l] = std::fabs(x[16 * j + l]);
      scales[j] = make_qkx2_quants(16, 3, x + 16 * j, weights, L + 16 * j, &mins[j], Laux, -0.5f, 0.1f, 15, true);
      max_scale = std::max(max_scale, scales[j]);
      max_min = std::max(max_min, mins[j]);
    }
    if (max_scale > 0) {
      const float iscale = q4scale / max_scale;
      for (int j = 0; j < QK_K / 16; ++j) y[i].scales[j] = uint8_t(nearest_int(iscale * scales[j]));
      y[i].d = f32_to_f16(max_scale / q4scale);
    } else {
      for (int j = 0; j < QK_K / 16; ++j) y[i].scales[j] = 0;
      y[i].d = f32_to_f16(0.f);
    }
    if (max_min > 0) {
      const float iscale = q4scale / max_min;
      for (int j = 0; j < QK_K / 16; ++j) y[i].scales[j] |= uint8_t(nearest_int(iscale * mins[j]) << 4);
      y[i].dmin = f32_to_f16(max_min / q4scale);
    } else {
      y[i].dmin = f32_to_f16(0.f);
    }
    for (int j = 0; j < QK_K / 16; ++j) {  // requantize against the rounded scales
      const float d = f16_to_f32(y[i].d) * (y[i].scales[j] & 0xF);
      if (!d) continue;
      const float dm = f16_to_f32(y[i].dmin) * (y[i].scales[j] >> 4);
      for (int ii = 0; ii < 16; ++ii)
        L[16 * j + ii] = uint8_t(std::max(0, std::min(3, nearest_int((x[16 * j + ii] + dm) / d))));
    }
    pack_2bit(L, y[i].qs);
  }
}

void quantize_q3_k_ref(const float* x, void* blocks, int64_t n) {
  auto* y = static_cast<block_q3_k*>(blocks);
  int8_t L[QK_K];
  float scales[QK_K / 16];
  for (int64_t i = 0; i < n / QK_K; ++i, x += QK_K) {
    for (int j = 0; j < QK_K / 16; ++j) scales[j] = make_q3_quants(16, 4, x + 16 * j, L + 16 * j);
    const float max_scale = signed_absmax(scales, QK_K / 16), amax = std::fabs(max_scale);
    std::memset(y[i].scales, 0, 12);
    if (max_scale) {
      const float iscale = -32.f / max_scale;
      for (int j = 0; j < QK_K / 16; ++j) {
        int8_t l = int8_t(nearest_int(iscale * scales[j]));
        l = int8_t(std::max<int>(-32, std::min<int>(31, l)) + 32);
        if (j < 8)
          y[i].scales[j] = uint8_t(l & 0xF);
        else
          y[i].scales[j - 8] |= uint8_t((l & 0xF) << 4);
        l >>= 4;
        y[i].scales[j % 4 + 8] |= uint8_t(l << (2 * (j / 4)));
      }
      y[i].d = f32_to_f16(1 / iscale);
    } else {
      y[i].d = f32_to_f16(0.f);
    }
    int8_t sc[16];
    q3_k_scales(y[i].scales, sc);
    for (int j = 0; j < QK_K / 16; ++j) {
      const float d = f16_to_f32(y[i].d) * sc[j];
      if (!d) continue;
      for (int ii = 0; ii < 16; ++ii)
        L[16 * j + ii] = int8_t(std::max(-4, std::min(3, nearest_int(x[16 * j + ii] / d))) + 4);
    }
    std::memset(y[i].hmask, 0, QK_K / 8);
    uint8_t U[QK_K];
    for (int j = 0; j < QK_K; ++j) {  // high bit of element j: hmask[j % 32] bit j / 32
      U[j] = uint8_t(L[j]);
      if (U[j] > 3) {
        y[i].hmask[j % (QK_K / 8)] |= uint8_t(1 << (j / (QK_K / 8)));
        U[j] -= 4;
      }
    }
    pack_2bit(U, y[i].qs);
  }
}

namespace {

// q4_k / q5_k: 8 sub-blocks of 32 with 6-bit scales and mins under f16 d and dmin.
template <int NMAX, class Block>
void quantize_qk_sub32(const float* x, Block& y, uint8_t* L, float rmin, int nstep) {
  uint8_t Laux[32];
  float weights[32], mins[QK_K / 32], scales[QK_K / 32];
  float max_scale = 0, max_min = 0;
  for (int j = 0; j < QK_K / 32; ++j) {
    float sum_x2 = 0;
    for (int l = 0; l < 32; ++l) sum_x2 += x[32 * j + l] * x[32 * j + l];
    const float av_x = std::sqrt(sum_x2 / 32);
    for (int l = 0; l < 32; ++l) weights[l] = av_x + std::fabs(x[32 * j + l]);
    scales[j] = make_qkx2_quants(32, NMAX, x + 32 * j, weights, L + 32 * j, &mins[j], Laux, rmin, 0.1f, nstep, false);
    max_scale = std::max(max_scale, scales[j]);
    max_min = std::max(max_min, mins[j]);
  }
  const float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
  const float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
  for (int j = 0; j < QK_K / 32; ++j) {
    const uint8_t ls = std::min<uint8_t>(63, uint8_t(nearest_int(inv_scale * scales[j])));
    const uint8_t lm = std::min<uint8_t>(63, uint8_t(nearest_int(inv_min * mins[j])));
    if (j < 4) {
      y.scales[j] = ls;
      y.scales[j + 4] = lm;
    } else {  // low nibbles in bytes 8..11, top 2 bits on top of bytes 0..7
      y.scales[j + 4] = uint8_t((ls & 0xF) | ((lm & 0xF) << 4));
      y.scales[j - 4] |= uint8_t((ls >> 4) << 6);
      y.scales[j] |= uint8_t((lm >> 4) << 6);
    }
  }
  y.d = f32_to_f16(max_scale / 63.f);
  y.dmin = f32_to_f16(max_min / 63.f);
  for (int j = 0; j < QK_K / 32; ++j) {  // requantize against the rounded scales
    uint8_t sc, m;
    scale_min_k4(j, y.scales, sc, m);
    const float d = f16_to_f32(y.d) * sc;
    if (!d) continue;
    const float dm = f16_to_f32(y.dmin) * m;
    for (int ii = 0; ii < 32; ++ii)
      L[32 * j + ii] = uint8_t(std::max(0, std::min(NMAX, nearest_int((x[32 * j + ii] + dm) / d))));
  }
}

}  // namespace

void quantize_q4_k_ref(const float* x, void* blocks, int64_t n) {
  auto* y = static_cast<block_q4_k*>(blocks);
  uint8_t L[QK_K];
  for (int64_t i = 0; i < n / QK_K; ++i, x += QK_K) {
    quantize_qk_sub32<15>(x, y[i], L, -1.f, 20);
    uint8_t* q = y[i].qs;
    for (int j = 0; j < QK_K; j += 64, q += 32)
      for (int l = 0; l < 32; ++l) q[l] = uint8_t(L[j + l] | (L[j + l + 32] << 4));
  }
}

void quantize_q5_k_ref(const float* x, void* blocks, int64_t n) {
  auto* y = static_cast<block_q5_k*>(blocks);
  uint8_t L[QK_K];
  for (int64_t i = 0; i < n / QK_K; ++i, x += QK_K) {
    quantize_qk_sub32<31>(x, y[i], L, -0.5f, 15);
    uint8_t* qh = y[i].qh;
    uint8_t* ql = y[i].qs;
    std::memset(qh, 0, QK_K / 8);
    uint8_t m1 = 1, m2 = 2;
    for (int j = 0; j < QK_K; j += 64, ql += 32, m1 <<= 2, m2 <<= 2) {
      for (int l = 0; l < 32; ++l) {
        int l1 = L[j + l], l2 = L[j + l + 32];
        if (l1 > 15) {
          l1 -= 16;
          qh[l] |= m1;
        }
        if (l2 > 15) {
          l2 -= 16;
          qh[l] |= m2;
        }
        ql[l] = uint8_t(l1 | (l2 << 4));
      }
    }
  }
}

void quantize_q6_k_ref(const float* x, void* blocks, int64_t n) {
  auto* y = static_cast<block_q6_k*>(blocks);
  int8_t L[QK_K];
  float scales[QK_K / 16];
  for (int64_t i = 0; i < n / QK_K; ++i, x += QK_K) {
    for (int ib = 0; ib < QK_K / 16; ++ib) scales[ib] = make_qx_quants(16, 32, x + 16 * ib, L + 16 * ib);
    const float max_scale = signed_absmax(scales, QK_K / 16), max_abs_scale = std::fabs(max_scale);
    if (max_abs_scale < GROUP_MAX_EPS) {
      std::memset(&y[i], 0, sizeof(block_q6_k));
      continue;
    }
    const float iscale = -128.f / max_scale;
    y[i].d = f32_to_f16(1 / iscale);
    for (int ib = 0; ib < QK_K / 16; ++ib) y[i].scales[ib] = int8_t(std::min(127, nearest_int(iscale * scales[ib])));
    for (int j = 0; j < QK_K / 16; ++j) {  // requantize against the rounded scales
      const float d = f16_to_f32(y[i].d) * y[i].scales[j];
      if (!d) continue;
      for (int ii = 0; ii < 16; ++ii)
        L[16 * j + ii] = int8_t(std::max(-32, std::min(31, nearest_int(x[16 * j + ii] / d))) + 32);
    }
    uint8_t* ql = y[i].ql;
    uint8_t* qh = y[i].qh;
    for (int j = 0; j < QK_K; j += 128, ql += 64, qh += 32) {
      for (int l = 0; l < 32; ++l) {
        const int q1 = L[j + l], q2 = L[j + l + 32], q3 = L[j + l + 64], q4 = L[j + l + 96];
        ql[l] = uint8_t((q1 & 0xF) | ((q3 & 0xF) << 4));
        ql[l + 32] = uint8_t((q2 & 0xF) | ((q4 & 0xF) << 4));
        qh[l] = uint8_t((q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6));
      }
    }
  }
}

// ---- Tensor level --------------------------------------------------------------------------------
namespace {

using QuantizeFn = void (*)(const float* x, void* blocks, int64_t n);

struct Quantizer {
  DType type;
  QuantizeFn fn;
};

constexpr Quantizer kQuantizers[] = {
    {DType::q4_0, quantize_q4_0_ref}, {DType::q4_1, quantize_q4_1_ref}, {DType::q5_0, quantize_q5_0_ref},
    {DType::q5_1, quantize_q5_1_ref}, {DType::q8_0, quantize_q8_0_ref}, {DType::q8_1, quantize_q8_1_ref},
    {DType::q2_k, quantize_q2_k_ref}, {DType::q3_k, quantize_q3_k_ref}, {DType::q4_k, quantize_q4_k_ref},
    {DType::q5_k, quantize_q5_k_ref}, {DType::q6_k, quantize_q6_k_ref},
};

std::string supported_names() {
  std::string s;
  for (const Quantizer& q : kQuantizers) s += std::string(s.empty() ? "" : ", ") + name(q.type);
  return s;
}

std::string index_str(const Shape& shape, int64_t flat) {
  std::string s;
  for (int i = int(shape.size()) - 1; i >= 0; --i) {
    s = std::to_string(flat % shape[i]) + (s.empty() ? "" : ", ") + s;
    flat /= shape[i];
  }
  return "(" + s + (shape.size() == 1 ? ",)" : ")");
}

}  // namespace

Tensor quantize(const Tensor& x, DType t) {
  QuantizeFn fn = nullptr;
  for (const Quantizer& q : kQuantizers)
    if (q.type == t) fn = q.fn;
  if (!fn)
    throw ValueError(std::string("quantize: no quantizer for ") + name(t) + "; supported types: " + supported_names());
  if (!x.defined()) throw ValueError("quantize: the tensor is undefined");
  if (!traits(x.dtype()).is_float)
    throw TypeError(std::string("quantize: expected a floating-point tensor, got ") + name(x.dtype()));
  if (x.ndim() == 0) throw ValueError("quantize: expected an array (..., K), got a scalar");
  const int64_t K = x.dim(-1), bs = traits(t).block_size;
  if (K % bs)
    throw ValueError("quantize: the last axis K = " + std::to_string(K) + " is not a multiple of " + name(t) +
                     "'s block size " + std::to_string(bs));
  // A contiguous f32 copy unless x already is one (dequantize converts f16/bf16/f64 and gathers views).
  const Tensor src = x.dtype() == DType::f32 && x.is_contiguous() ? x : dequantize(x);

  Tensor out = Tensor::empty(x.shape(), t);  // (..., K)
  const int64_t n = src.numel();
  if (n == 0) return out;
  const int64_t rows = n / K, rb = row_bytes(t, K);
  const float* xp = src.data<const float>();
  auto* yp = out.data<std::byte>();
  std::atomic<int64_t> bad{n};  // the first non-finite element, n when none
  parallel_for(rows, std::max<int64_t>(1, (bs == QK_K ? 2048 : 16384) / K), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* row = xp + r * K;
      int64_t j = 0;
      while (j < K && std::isfinite(row[j])) ++j;
      if (j < K) {
        for (int64_t cur = bad.load(), idx = r * K + j; idx < cur && !bad.compare_exchange_weak(cur, idx);) {}
        continue;
      }
      fn(row, yp + r * rb, K);
    }
  });
  if (const int64_t b = bad.load(); b < n)
    throw ValueError("quantize: non-finite value " + std::to_string(xp[b]) + " at index " + index_str(x.shape(), b));
  return out;
}

}  // namespace lb

// Matrix-vector products on f16/bf16/f32 weights: y[r] = dot(W[r], x) with x in f32, each weight row
// widened in registers as it streams by, the next rows prefetched. Decode (few rows of x) reads the weights
// at memory speed this way (OpenBLAS's sgemv reached ~77% of DRAM bandwidth on one Zen 5 thread where this
// loop reaches ~95%); many rows of x (prefill) go to the int16 panel kernel with avx512 (qlinear.cpp),
// else to sgemm.
#include "ops/kernel.h"

// t: f16, bf16 or f32; W: n rows of K elements, `row_bytes` apart.
LB_DECLARE_KERNEL(void, half_dot_rows,
                  (DType t, const std::byte* w, int64_t row_bytes, int64_t n, int64_t K, const float* x, float* y))

namespace lb::kernels {
#if LB_SIMD
namespace LB_ISA {
using namespace simd;

namespace {
float widen1(DType t, const std::byte* p, int64_t k) {
  if (t == DType::f32) return reinterpret_cast<const float*>(p)[k];
  const uint16_t h = reinterpret_cast<const uint16_t*>(p)[k];
  return t == DType::bf16 ? bf16_to_f32(h) : f16_to_f32(h);
}

template <class T, class Widen>
void rows(DType t, const std::byte* w, int64_t row_bytes, int64_t n, int64_t K, const float* x, float* y, Widen widen) {
  constexpr int64_t ahead = 8192 / sizeof(T);  // 8 KiB ahead, into the next rows: one thread reads at DRAM speed
  for (int64_t r = 0; r < n; ++r) {
    const auto* p = reinterpret_cast<const T*>(w + r * row_bytes);
    V a0 = set1(0.f), a1 = set1(0.f);
    int64_t k = 0;
    for (; k + 2 * W <= K; k += 2 * W) {
      __builtin_prefetch(p + k + ahead);
      if constexpr (sizeof(T) == 4) __builtin_prefetch(p + k + ahead + W);  // 2 W floats span two lines
      a0 = fma(widen(p + k), load(x + k), a0);
      a1 = fma(widen(p + k + W), load(x + k + W), a1);
    }
    for (; k + W <= K; k += W) a0 = fma(widen(p + k), load(x + k), a0);
    float acc = hsum(a0 + a1);
    for (; k < K; ++k) acc += widen1(t, w + r * row_bytes, k) * x[k];
    y[r] = acc;
  }
}
}  // namespace

void half_dot_rows(DType t, const std::byte* w, int64_t row_bytes, int64_t n, int64_t K, const float* x, float* y) {
  if (t == DType::f32) return rows<float>(t, w, row_bytes, n, K, x, y, [](const float* p) { return load(p); });
  if (t == DType::bf16) return rows<uint16_t>(t, w, row_bytes, n, K, x, y, [](const uint16_t* p) { return load_bf16(p); });
  rows<uint16_t>(t, w, row_bytes, n, K, x, y, [](const uint16_t* p) { return load_f16(p); });
}
}  // namespace LB_ISA
#else
void half_dot_rows_ref(DType t, const std::byte* w, int64_t row_bytes, int64_t n, int64_t K, const float* x,
                       float* y) {
  for (int64_t r = 0; r < n; ++r) {
    const std::byte* row = w + r * row_bytes;
    float acc = 0.f;
    for (int64_t k = 0; k < K; ++k) {
      const uint16_t* h = reinterpret_cast<const uint16_t*>(row);
      const float wk = t == DType::f32 ? reinterpret_cast<const float*>(row)[k]
                       : t == DType::bf16 ? bf16_to_f32(h[k]) : f16_to_f32(h[k]);
      acc += wk * x[k];
    }
    y[r] = acc;
  }
}
#endif
}  // namespace lb::kernels

#if !LB_SIMD
#include "lmblocks/quant.h"
#include "ops/common.h"

namespace lb::ops {
LB_REGISTER_FAMILY(half_linear, true, "f16/bf16/f32 weights x f32 activations (decode)");

void half_linear_rows(const float* x, int64_t M, int64_t K, int64_t ldx, DType t, const std::byte* w,
                      int64_t row_bytes, int64_t N, float* y) {
  const auto fn = LB_DISPATCH(half_dot_rows);
  const int64_t tile = std::max<int64_t>(1, std::min<int64_t>(64, (32 << 10) / std::max<int64_t>(row_bytes, 1)));
  parallel_for((N + tile - 1) / tile, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t i = t0; i < t1; ++i) {
      const int64_t n0 = i * tile, n = std::min(N, n0 + tile) - n0;
      for (int64_t m = 0; m < M; ++m) fn(t, w + n0 * row_bytes, row_bytes, n, K, x + m * ldx, y + m * N + n0);
    }
  });
}

}  // namespace lb::ops
#endif

// Matrix-vector products on f16/bf16 weights: y[r] = dot(W[r], x) with x in f32, each weight row widened
// in registers as it streams by. Decode (few rows of x) reads f16/bf16 checkpoints at memory speed this
// way; many rows of x (prefill) go to the int16 panel kernel with avx512 (qlinear.cpp), else to sgemm.
#include "ops/kernel.h"

// t: f16 or bf16; W: n rows of K halves, `row_bytes` apart.
LB_DECLARE_KERNEL(void, half_dot_rows,
                  (DType t, const std::byte* w, int64_t row_bytes, int64_t n, int64_t K, const float* x, float* y))

namespace lb::kernels {
#if LB_SIMD
namespace LB_ISA {
using namespace simd;

namespace {
template <bool BF16>
void rows(const std::byte* w, int64_t row_bytes, int64_t n, int64_t K, const float* x, float* y) {
  const auto widen = [](const uint16_t* p) { return BF16 ? load_bf16(p) : load_f16(p); };
  for (int64_t r = 0; r < n; ++r) {
    const auto* p = reinterpret_cast<const uint16_t*>(w + r * row_bytes);
    V a0 = set1(0.f), a1 = set1(0.f);
    int64_t k = 0;
    for (; k + 2 * W <= K; k += 2 * W) {
      __builtin_prefetch(p + k + 4096);  // 8 KiB ahead, into the next rows: one thread then reads at DRAM speed
      a0 = fma(widen(p + k), load(x + k), a0);
      a1 = fma(widen(p + k + W), load(x + k + W), a1);
    }
    for (; k + W <= K; k += W) a0 = fma(widen(p + k), load(x + k), a0);
    float acc = hsum(a0 + a1);
    for (; k < K; ++k) acc += (BF16 ? bf16_to_f32(p[k]) : f16_to_f32(p[k])) * x[k];
    y[r] = acc;
  }
}
}  // namespace

void half_dot_rows(DType t, const std::byte* w, int64_t row_bytes, int64_t n, int64_t K, const float* x, float* y) {
  t == DType::bf16 ? rows<true>(w, row_bytes, n, K, x, y) : rows<false>(w, row_bytes, n, K, x, y);
}
}  // namespace LB_ISA
#else
void half_dot_rows_ref(DType t, const std::byte* w, int64_t row_bytes, int64_t n, int64_t K, const float* x,
                       float* y) {
  for (int64_t r = 0; r < n; ++r) {
    const auto* p = reinterpret_cast<const uint16_t*>(w + r * row_bytes);
    float acc = 0.f;
    for (int64_t k = 0; k < K; ++k) acc += (t == DType::bf16 ? bf16_to_f32(p[k]) : f16_to_f32(p[k])) * x[k];
    y[r] = acc;
  }
}
#endif
}  // namespace lb::kernels

#if !LB_SIMD
#include "lmblocks/quant.h"
#include "ops/common.h"

namespace lb::ops {
LB_REGISTER_FAMILY(half_linear, true, "f16/bf16 weights x f32 activations (decode)");

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

// sgemm over OpenBLAS. OpenBLAS itself is kept at one thread; large products are split into
// column (or row) panels across the lmblocks pool, so there is one pool and no oversubscription.
#include <algorithm>
#include <mutex>
#include <string>

#include "lmblocks/error.h"
#include "lmblocks/runtime.h"

#define LB_XCAT(a, b) a##b
#define LB_CAT(a, b) LB_XCAT(a, b)
#define LB_BLAS(name) LB_CAT(LB_BLAS_PREFIX, name)

extern "C" {
// The CBLAS ABI (LP64, enums passed as int): 101 row-major, 111 no-trans, 112 trans.
void LB_BLAS(cblas_sgemm)(int order, int trans_a, int trans_b, int M, int N, int K, float alpha,
                          const float* A, int lda, const float* B, int ldb, float beta, float* C, int ldc);
void LB_BLAS(openblas_set_num_threads)(int n);
char* LB_BLAS(openblas_get_config)(void);
}

namespace lb {
namespace {

void blas_init() {
  static std::once_flag once;
  std::call_once(once, [] { LB_BLAS(openblas_set_num_threads)(1); });
}

constexpr int64_t kMaxBlasDim = 2147483647;

void gemm1(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
           const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  LB_BLAS(cblas_sgemm)(101, ta ? 112 : 111, tb ? 112 : 111, int(M), int(N), int(K), alpha, A, int(lda), B,
                       int(ldb), beta, C, int(ldc));
}

}  // namespace

void sgemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
           const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  for (int64_t v : {M, N, K, lda, ldb, ldc})
    if (v < 0 || v > kMaxBlasDim) throw ValueError("sgemm: dimension " + std::to_string(v) + " is out of BLAS range");
  if (M == 0 || N == 0) return;
  blas_init();
  const int threads = num_threads();
  const double flops = 2.0 * double(M) * double(N) * double(K);
  if (threads == 1 || flops < 4e6) {
    gemm1(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    return;
  }
  // Split the larger of M and N into one panel per thread, multiples of 16 so panels stay
  // aligned to the SIMD width of the micro-kernels.
  const bool split_n = N >= M;
  const int64_t len = split_n ? N : M;
  const int64_t parts = std::min<int64_t>(threads, (len + 15) / 16);
  const int64_t step = ((len + parts - 1) / parts + 15) / 16 * 16;
  parallel_for(parts, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t s = p * step, e = std::min(len, s + step);
      if (s >= e) continue;
      if (split_n) {
        const float* Bp = tb ? B + s * ldb : B + s;
        gemm1(ta, tb, M, e - s, K, alpha, A, lda, Bp, ldb, beta, C + s, ldc);
      } else {
        const float* Ap = ta ? A + s : A + s * lda;
        gemm1(ta, tb, e - s, N, K, alpha, Ap, lda, B, ldb, beta, C + s * ldc, ldc);
      }
    }
  });
}

std::string blas_info() {
  blas_init();
  const char* c = LB_BLAS(openblas_get_config)();
  return std::string("OpenBLAS (single-threaded, split over the lmblocks pool): ") + (c ? c : "?");
}

}  // namespace lb

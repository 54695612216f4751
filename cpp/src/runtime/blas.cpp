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
void LB_BLAS(cblas_sgemv)(int order, int trans, int M, int N, float alpha, const float* A, int lda, const float* x,
                          int incx, float beta, float* y, int incy);
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

// Rows [s, e) of y (L,) = alpha * op(A) x + beta * y with op(A) (L, K); `trans`: A is stored (K, L).
void gemv_rows(bool trans, int64_t K, float alpha, const float* A, int64_t lda, const float* x, int64_t incx,
               float beta, float* y, int64_t incy, int64_t s, int64_t e) {
  if (beta == 0.f)  // y may be uninitialized, and BLAS may compute 0 * y
    for (int64_t i = s; i < e; ++i) y[i * incy] = 0.f;
  if (trans)
    LB_BLAS(cblas_sgemv)(101, 112, int(K), int(e - s), alpha, A + s, int(lda), x, int(incx), beta, y + s * incy,
                         int(incy));
  else
    LB_BLAS(cblas_sgemv)(101, 111, int(e - s), int(K), alpha, A + s * lda, int(lda), x, int(incx), beta,
                         y + s * incy, int(incy));
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
  // One row or column is a matrix-vector product. OpenBLAS's sgemm would pack the whole matrix first,
  // 5-7x slower than sgemv on the memory-bound decode path (T = 1).
  if ((M == 1 || N == 1) && K > 0) {
    const bool row = M == 1;  // C^T (N,) = op(B)^T a, else C (M,) = op(A) b
    const int64_t L = row ? N : M;
    const float* mat = row ? B : A;
    const int64_t ld = row ? ldb : lda;
    const bool mt = row ? !tb : ta;  // the (L, K) operator is stored (K, L)
    const float* vec = row ? A : B;
    const int64_t inc = row ? (ta ? lda : 1) : (tb ? 1 : ldb);
    const int64_t incy = row ? 1 : ldc;
    const int64_t parts = (threads == 1 || flops < 4e6) ? 1 : std::min<int64_t>(threads, (L + 63) / 64);
    const int64_t step = ((L + parts - 1) / parts + 15) / 16 * 16;
    parallel_for(parts, 1, [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t s = p * step, e = std::min(L, s + step);
        if (s < e) gemv_rows(mt, K, alpha, mat, ld, vec, inc, beta, C, incy, s, e);
      }
    });
    return;
  }
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

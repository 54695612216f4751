// Softmax: y = exp(x - max) / sum(exp(x - max)) along one axis.
// The last axis runs row by row (max, exp + sum, scale: the row stays in L1 between passes). Any
// other axis sweeps whole rows of a block of columns, vectorized across the contiguous inner
// dimension, with the per-column max and sums in small stack arrays.
#include <algorithm>
#include <cmath>

#include "ops/kernel.h"

// x, y: (d,) one row.
LB_DECLARE_KERNEL(void, softmax_row, (const float* x, float* y, int64_t d))
// x, y: (n, cols) with row stride ld; softmax down each of the `cols` columns.
LB_DECLARE_KERNEL(void, softmax_cols, (const float* x, float* y, int64_t n, int64_t cols, int64_t ld))

namespace lb::kernels {
#if LB_SIMD
namespace LB_ISA {
using namespace simd;
namespace {

// Sums run in blocks (a row's elements, a column's rows) so no lane adds more than ~64 terms serially.
constexpr int64_t kSumBlock = 1024;  // a multiple of 2 W for every ISA
constexpr int64_t kColSumBlock = 64;
// Columns handled per sweep; the per-column max and sums live in stack arrays of this size.
constexpr int64_t kColChunk = 256;

inline V load_k(const float* p, int k) { return k == W ? load(p) : load_n(p, k); }
inline void store_k(float* p, V v, int k) { k == W ? store(p, v) : store_n(p, v, k); }

// Calls f(j, k) for lanes [j, j + k) of a row of w columns.
template <class F>
inline void each_vec(int64_t w, F f) {
  for (int64_t j = 0; j < w; j += W) f(j, int(std::min<int64_t>(W, w - j)));
}

}  // namespace

void softmax_row(const float* x, float* y, int64_t d) {
  if (d <= 0) return;
  V m0 = set1(-INFINITY), m1 = m0;
  int64_t i = 0;
  for (; i + 2 * W <= d; i += 2 * W) {
    m0 = max(m0, load(x + i));
    m1 = max(m1, load(x + i + W));
  }
  for (; i < d; i += W) m0 = max(m0, load_n(x + i, int(std::min<int64_t>(W, d - i)), -INFINITY));
  const V m = set1(hmax(max(m0, m1)));

  // Padding lanes load -inf, so their exp is 0 and the sum is untouched.
  V s = set1(0.f);
  for (int64_t b0 = 0; b0 < d; b0 += kSumBlock) {
    const int64_t b1 = std::min(d, b0 + kSumBlock);
    V s0 = set1(0.f), s1 = s0;
    for (i = b0; i + 2 * W <= b1; i += 2 * W) {
      const V e0 = exp_nonpos(load(x + i) - m), e1 = exp_nonpos(load(x + i + W) - m);
      store(y + i, e0);
      store(y + i + W, e1);
      s0 = s0 + e0;
      s1 = s1 + e1;
    }
    for (; i < b1; i += W) {
      const int n = int(std::min<int64_t>(W, b1 - i));
      const V e = exp_nonpos(load_n(x + i, n, -INFINITY) - m);
      store_n(y + i, e, n);
      s0 = s0 + e;
    }
    s = s + (s0 + s1);
  }
  const V inv = set1(1.f / hsum(s));

  for (i = 0; i + 2 * W <= d; i += 2 * W) {
    store(y + i, load(y + i) * inv);
    store(y + i + W, load(y + i + W) * inv);
  }
  for (; i < d; i += W) {
    const int n = int(std::min<int64_t>(W, d - i));
    store_n(y + i, load_n(y + i, n) * inv, n);
  }
}

// Sweeps whole rows of a chunk of columns (contiguous memory) rather than walking down one
// column at a time, which would touch one cache line per row at a large stride.
void softmax_cols(const float* x, float* y, int64_t n, int64_t cols, int64_t ld) {
  alignas(64) float m[kColChunk], s[kColChunk], p[kColChunk];
  for (int64_t c0 = 0; c0 < cols; c0 += kColChunk) {
    const int64_t w = std::min(kColChunk, cols - c0);
    const float* xc = x + c0;
    float* yc = y + c0;
    each_vec(w, [&](int64_t j, int k) {
      store_k(m + j, set1(-INFINITY), k);
      store_k(s + j, set1(0.f), k);
    });
    for (int64_t r = 0; r < n; ++r)
      each_vec(w, [&](int64_t j, int k) { store_k(m + j, max(load_k(m + j, k), load_k(xc + r * ld + j, k)), k); });
    for (int64_t r0 = 0; r0 < n; r0 += kColSumBlock) {
      const int64_t r1 = std::min(n, r0 + kColSumBlock);
      each_vec(w, [&](int64_t j, int k) { store_k(p + j, set1(0.f), k); });
      for (int64_t r = r0; r < r1; ++r)
        each_vec(w, [&](int64_t j, int k) {
          const V e = exp_nonpos(load_k(xc + r * ld + j, k) - load_k(m + j, k));
          store_k(yc + r * ld + j, e, k);
          store_k(p + j, load_k(p + j, k) + e, k);
        });
      each_vec(w, [&](int64_t j, int k) { store_k(s + j, load_k(s + j, k) + load_k(p + j, k), k); });
    }
    each_vec(w, [&](int64_t j, int k) { store_k(s + j, set1(1.f) / load_k(s + j, k), k); });
    for (int64_t r = 0; r < n; ++r)
      each_vec(w, [&](int64_t j, int k) { store_k(yc + r * ld + j, load_k(yc + r * ld + j, k) * load_k(s + j, k), k); });
  }
}
}  // namespace LB_ISA
#else
void softmax_row_ref(const float* x, float* y, int64_t d) {
  if (d <= 0) return;
  float m = -INFINITY;
  for (int64_t i = 0; i < d; ++i) m = std::max(m, x[i]);
  double s = 0.0;  // a serial float sum would lose ~d ulps
  for (int64_t i = 0; i < d; ++i) s += (y[i] = std::exp(x[i] - m));
  const float inv = float(1.0 / s);
  for (int64_t i = 0; i < d; ++i) y[i] *= inv;
}

void softmax_cols_ref(const float* x, float* y, int64_t n, int64_t cols, int64_t ld) {
  for (int64_t c = 0; c < cols; ++c) {
    float m = -INFINITY;
    for (int64_t r = 0; r < n; ++r) m = std::max(m, x[r * ld + c]);
    double s = 0.0;
    for (int64_t r = 0; r < n; ++r) s += (y[r * ld + c] = std::exp(x[r * ld + c] - m));
    const float inv = float(1.0 / s);
    for (int64_t r = 0; r < n; ++r) y[r * ld + c] *= inv;
  }
}
#endif
}  // namespace lb::kernels

#if !LB_SIMD
#include "ops/common.h"

namespace lb::ops {
LB_REGISTER_FAMILY(softmax, true, "");

Tensor softmax(const Tensor& x_in, int axis, Tensor out) {
  constexpr const char* op = "softmax";
  detail::check_float(x_in, op, "x");
  detail::check_ndim(x_in, 1, kMaxDims, op, "x");
  const int ax = normalize_axis(axis, x_in.ndim(), op);
  const Tensor x = detail::f32_contiguous(x_in, op, "x");
  // Each element is read before its own output is written, so exact in-place is safe.
  out = detail::prepare_out(out, x_in.shape(), op, {{x_in, "x", true}});
  if (x.numel() == 0) return out;

  // x viewed as (outer, n, inner) with the softmax over n.
  const Shape& s = x.shape();
  int64_t outer = 1, inner = 1;
  for (int i = 0; i < ax; ++i) outer *= s[i];
  for (int i = ax + 1; i < x.ndim(); ++i) inner *= s[i];
  const int64_t n = s[ax];
  const float* xp = x.data<float>();
  float* yp = out.data<float>();

  if (inner == 1) {
    const auto fn = LB_DISPATCH(softmax_row);
    detail::for_rows(outer, n, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) fn(xp + r * n, yp + r * n, n);
    });
    return out;
  }
  // Tasks are (outer index, block of kColBlock columns): each row of a block is a few cache lines.
  constexpr int64_t kColBlock = 128;
  const auto fn = LB_DISPATCH(softmax_cols);
  const int64_t blocks = (inner + kColBlock - 1) / kColBlock;
  parallel_for(outer * blocks, std::max<int64_t>(1, 16384 / (n * kColBlock)), [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t o = t / blocks, c = (t % blocks) * kColBlock;
      const int64_t off = o * n * inner + c;
      fn(xp + off, yp + off, n, std::min(kColBlock, inner - c), inner);
    }
  });
  return out;
}

}  // namespace lb::ops
#endif

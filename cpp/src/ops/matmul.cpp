// Matrix products on lb::sgemm (OpenBLAS, split over the lmblocks pool). np.matmul semantics for
// matmul; PyTorch's x @ W^T + b for linear. Strided operands BLAS can describe (row or column major
// with a leading dimension) are passed as they are; anything else is copied once.
#include "ops/kernel.h"

#if !LB_SIMD
#include <cstdint>
#include <cstring>
#include <vector>

#include "ops/common.h"
#include "lmblocks/quant.h"

namespace lb::ops {
LB_REGISTER_FAMILY(matmul, false, "OpenBLAS sgemm");
LB_REGISTER_FAMILY(linear, false, "OpenBLAS sgemm");

namespace {

// Below this many flops sgemm runs on one thread, so a batch of such products is spread instead.
constexpr double kSmallGemm = 4e6;

// A (rows, cols) matrix as sgemm sees it: op(p) with leading dimension ld.
struct Mat {
  const float* p = nullptr;
  bool trans = false;
  int64_t ld = 1;
};

// Can a matrix with element strides (sr, sc) be given to BLAS as it is? Strides of unit dims are free.
bool blas_layout(int64_t rows, int64_t cols, int64_t sr, int64_t sc, bool& trans, int64_t& ld) {
  const int64_t r1 = std::max<int64_t>(1, rows), c1 = std::max<int64_t>(1, cols);
  if ((cols <= 1 || sc == 1) && (rows <= 1 || sr >= c1)) {
    trans = false;
    ld = rows <= 1 ? c1 : sr;
    return true;
  }
  if ((rows <= 1 || sr == 1) && (cols <= 1 || sc >= r1)) {
    trans = true;
    ld = cols <= 1 ? r1 : sc;
    return true;
  }
  return false;
}

// Element strides of the matrix part (rows, cols) of t: a 1-D t is a row (as_row) or a column.
void matrix_strides(const Tensor& t, bool as_row, int64_t& sr, int64_t& sc) {
  if (t.ndim() == 1) {
    sr = as_row ? 0 : t.strides()[0] / 4;
    sc = as_row ? t.strides()[0] / 4 : 0;
  } else {
    sr = t.strides()[size_t(t.ndim() - 2)] / 4;
    sc = t.strides()[size_t(t.ndim() - 1)] / 4;
  }
}

// The operand as it will be read: itself when BLAS can take its matrices in place, else a
// contiguous f32 copy; `m` gets the layout (p is the first matrix).
Tensor blas_operand(const Tensor& t, bool as_row, int64_t rows, int64_t cols, Mat& m, const char* op,
                    const char* arg) {
  if (detail::is_f32_aligned(t)) {
    int64_t sr, sc;
    matrix_strides(t, as_row, sr, sc);
    if (blas_layout(rows, cols, sr, sc, m.trans, m.ld)) {
      m.p = t.data<float>();
      return t;
    }
  }
  Tensor c = detail::f32_contiguous(t, op, arg);
  m.p = c.data<float>();
  m.trans = false;
  m.ld = std::max<int64_t>(1, cols);
  return c;
}

}  // namespace

Tensor matmul(const Tensor& a_in, const Tensor& b_in, Tensor out) {
  constexpr const char* op = "matmul";
  detail::check_float(a_in, op, "a");
  detail::check_float(b_in, op, "b");
  if (a_in.ndim() == 0 || b_in.ndim() == 0)
    throw ValueError(std::string(op) + ": " + (a_in.ndim() == 0 ? "a" : "b") +
                     " is 0-dimensional; matmul needs at least 1 dimension (use mul for scalars)");
  const int na = a_in.ndim(), nb = b_in.ndim();
  const int64_t M = na == 1 ? 1 : a_in.dim(-2), K = a_in.dim(-1);
  const int64_t Kb = nb == 1 ? b_in.dim(0) : b_in.dim(-2), N = nb == 1 ? 1 : b_in.dim(-1);
  if (K != Kb)
    throw ValueError(std::string(op) + ": a has shape " + shape_str(a_in.shape()) + " and b has shape " +
                     shape_str(b_in.shape()) + "; the last dimension of a (" + std::to_string(K) + ") must equal " +
                     (nb == 1 ? "the length of b" : "the second-to-last dimension of b") + " (" +
                     std::to_string(Kb) + ")");

  // Broadcast batch dims (NumPy rules, aligned from the right).
  const int ba = std::max(0, na - 2), bb = std::max(0, nb - 2), bn = std::max(ba, bb);
  Shape batch(static_cast<size_t>(bn), 1);
  for (int i = 0; i < bn; ++i) {
    const int ia = i - (bn - ba), ib = i - (bn - bb);
    const int64_t da = ia >= 0 ? a_in.dim(ia) : 1, db = ib >= 0 ? b_in.dim(ib) : 1;
    if (da != db && da != 1 && db != 1)
      throw ValueError(std::string(op) + ": the batch dimensions of a " + shape_str(a_in.shape()) + " and b " +
                       shape_str(b_in.shape()) + " do not broadcast");
    batch[size_t(i)] = da == 1 ? db : da;
  }
  Shape oshape = batch;
  if (na > 1) oshape.push_back(M);
  if (nb > 1) oshape.push_back(N);
  out = detail::prepare_out(out, oshape, op, {{a_in, "a", false}, {b_in, "b", false}});
  if (out.numel() == 0) return out;
  float* yp = out.data<float>();
  if (K == 0) {
    std::memset(yp, 0, size_t(out.nbytes()));
    return out;
  }

  Mat ma, mb;
  const Tensor a = blas_operand(a_in, true, M, K, ma, op, "a");
  const Tensor b = blas_operand(b_in, false, K, N, mb, op, "b");
  // Per-operand element strides over the broadcast batch dims (0 where broadcast).
  std::vector<int64_t> sa(static_cast<size_t>(bn), 0), sb(static_cast<size_t>(bn), 0);
  for (int i = 0; i < bn; ++i) {
    const int ia = i - (bn - ba), ib = i - (bn - bb);
    if (ia >= 0 && a.dim(ia) != 1) sa[size_t(i)] = a.strides()[size_t(ia)] / 4;
    if (ib >= 0 && b.dim(ib) != 1) sb[size_t(i)] = b.strides()[size_t(ib)] / 4;
  }
  int64_t entries = 1;
  for (int64_t d : batch) entries *= d;

  // b shared by the whole batch and a's row-major matrices evenly spaced: one (entries * M, K) product.
  bool fold = entries > 1 && !ma.trans;
  int64_t expect = M * ma.ld;
  for (int i = bn - 1; fold && i >= 0; --i) {
    if (batch[size_t(i)] == 1) continue;
    fold = sb[size_t(i)] == 0 && sa[size_t(i)] == expect;
    expect *= batch[size_t(i)];
  }
  if (fold || entries == 1) {
    sgemm(ma.trans, mb.trans, fold ? entries * M : M, N, K, 1.f, ma.p, ma.ld, mb.p, mb.ld, 0.f, yp, N);
    return out;
  }

  const auto entry = [&](int64_t e) {
    int64_t oa = 0, ob = 0;
    for (int i = bn - 1; i >= 0; --i) {
      const int64_t idx = e % batch[size_t(i)];
      e /= batch[size_t(i)];
      oa += idx * sa[size_t(i)];
      ob += idx * sb[size_t(i)];
    }
    return std::pair<int64_t, int64_t>(oa, ob);
  };
  const double flops = 2.0 * double(M) * double(N) * double(K);
  const auto run = [&](int64_t e0, int64_t e1) {
    for (int64_t e = e0; e < e1; ++e) {
      const auto [oa, ob] = entry(e);
      sgemm(ma.trans, mb.trans, M, N, K, 1.f, ma.p + oa, ma.ld, mb.p + ob, mb.ld, 0.f, yp + e * M * N, N);
    }
  };
  if (flops < kSmallGemm)
    parallel_for(entries, std::max<int64_t>(1, int64_t(2e5 / flops)), run);
  else
    run(0, entries);  // each product is split over the pool by sgemm
  return out;
}

Tensor linear(const Tensor& x_in, const Tensor& w_in, const Tensor& bias_in, Tensor out) {
  constexpr const char* op = "linear";
  detail::check_float(x_in, op, "x");
  if (!w_in.defined() || !traits(w_in.dtype()).to_float || w_in.dtype() == DType::f64)
    throw TypeError(std::string(op) + ": weight has dtype " + (w_in.defined() ? name(w_in.dtype()) : "none") +
                    "; expected f32, f16, bf16 or a ggml block type");
  detail::check_ndim(x_in, 1, kMaxDims, op, "x");
  const int64_t K = x_in.dim(-1);
  if (w_in.ndim() != 2 || w_in.dim(1) != K)
    throw ValueError(std::string(op) + ": weight has shape " + shape_str(w_in.shape()) + "; expected (N, " +
                     std::to_string(K) + ") to match the last axis of x " + shape_str(x_in.shape()));
  const int64_t N = w_in.dim(0);
  if (bias_in.defined()) {
    detail::check_float(bias_in, op, "bias");
    if (bias_in.ndim() != 1 || bias_in.dim(0) != N)
      throw ValueError(std::string(op) + ": bias has shape " + shape_str(bias_in.shape()) + "; expected (" +
                       std::to_string(N) + ",) to match weight " + shape_str(w_in.shape()));
  }
  Shape oshape = x_in.shape();
  oshape.back() = N;
  out = detail::prepare_out(out, oshape, op, {{x_in, "x", false}, {w_in, "weight", false}, {bias_in, "bias", false}});
  if (out.numel() == 0) return out;
  const int64_t M = out.numel() / N;
  float* yp = out.data<float>();

  // Bias rows first, then sgemm accumulates onto them (beta = 1): this pass replaces the one in which
  // BLAS would clear out for beta = 0.
  if (bias_in.defined()) {
    const Tensor bias = detail::f32_contiguous(bias_in, op, "bias");
    const float* bp = bias.data<float>();
    detail::for_rows(M, N, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) std::memcpy(yp + r * N, bp, sizeof(float) * size_t(N));
    });
  } else if (K == 0) {
    std::memset(yp, 0, size_t(out.nbytes()));
  }
  if (K == 0) return out;

  // x as (M, K): a view when its strides allow one, else a contiguous copy.
  const Tensor xv = x_in.can_view({M, K}) ? x_in.view({M, K}) : detail::f32_contiguous(x_in, op, "x").view({M, K});
  Mat mx, mw;
  const Tensor x = blas_operand(xv, true, M, K, mx, op, "x");
  const float beta = bias_in.defined() ? 1.f : 0.f;

  // Weights read as stored: f16/bf16/f32 rows (widened) in registers against a few rows of x (decode), ggml
  // blocks (repacked at load, or as in the file) and f16/bf16 prefill against int16-quantized activations. The product lands in y, or beside it and then onto the
  // bias rows already there.
  // f32 weights too: this streaming loop reads them nearer DRAM speed than sgemv does.
  const DType wt_ = w_in.dtype();
  const bool half = (wt_ == DType::f16 || wt_ == DType::bf16 || wt_ == DType::f32) && M < 4 &&
                    w_in.strides()[1] == w_in.itemsize() && w_in.strides()[0] % w_in.itemsize() == 0;
  // f16/bf16 prefill rounds weights to 12 bits per chunk: only for a model's own matrices (CausalLM
  // registers them), never for weights handed to lb.ops.linear, which stays exact for them.
  const bool blocks = activation_quantization() && qlinear_fast(w_in.dtype(), M) && K % 32 == 0 &&
                      (is_quantized(w_in.dtype()) || (w_in.strides()[1] == 2 && find_packed(w_in)));
  if (half || blocks) {
    const Tensor xr = mx.trans ? detail::f32_contiguous(xv, op, "x") : x;  // rows of K contiguous floats
    const int64_t ldx = mx.trans ? K : mx.ld;
    std::vector<float> product(bias_in.defined() ? size_t(M * N) : 0);
    float* dst = bias_in.defined() ? product.data() : yp;
    const auto* wb = static_cast<const std::byte*>(w_in.raw());
    if (half)
      half_linear_rows(xr.data<float>(), M, K, ldx, w_in.dtype(), wb, w_in.strides()[0], N, dst);
    else if (const auto packed = packable(w_in.dtype()) ? find_packed(w_in) : nullptr)  // repacked at load
      qlinear_packed(quantize_rows(xr.data<float>(), M, K, ldx, false, activation_bits_for(M)), *packed, dst);
    else
      qlinear_rows(quantize_rows(xr.data<float>(), M, K, ldx), w_in.dtype(), wb, w_in.strides()[0], N, dst);
    if (bias_in.defined())
      detail::for_rows(M, N, [&](int64_t r0, int64_t r1) {
        for (int64_t i = r0 * N; i < r1 * N; ++i) yp[i] += product[size_t(i)];
      });
    return out;
  }
  // Weights that are not f32 (f16, bf16, ggml blocks) with whole rows in memory: convert them panel by
  // panel into per-thread f32 scratch and multiply there, so no f32 copy of the matrix is ever made.
  // This is the reference path for quantized models; the fast-kernels work replaces it.
  const bool rows_whole = is_quantized(w_in.dtype()) || w_in.strides()[1] == w_in.itemsize();
  if (w_in.dtype() != DType::f32 && rows_whole) {
    const auto to_float = traits(w_in.dtype()).to_float;
    const int64_t panel = std::min(N, std::max<int64_t>(16, (int64_t(256) << 10) / (4 * K)));  // ~256 KB
    const auto* wb = static_cast<const std::byte*>(w_in.raw());
    const int64_t wrow = w_in.strides()[0];
    parallel_for((N + panel - 1) / panel, 1, [&](int64_t p0, int64_t p1) {
      std::vector<float> scratch(size_t(panel * K));  // (panel, K)
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t n0 = p * panel, n = std::min(N, n0 + panel) - n0;
        for (int64_t r = 0; r < n; ++r) to_float(wb + (n0 + r) * wrow, scratch.data() + r * K, K);
        sgemm(mx.trans, true, M, n, K, 1.f, mx.p, mx.ld, scratch.data(), K, beta, yp + n0, N);
      }
    });
    return out;
  }
  // weight^T (K, N) is the right operand; a row-major weight is passed as BLAS's transposed case.
  const Tensor wt = (detail::is_f32_aligned(w_in) ? w_in : detail::f32_contiguous(w_in, op, "weight")).transpose(0, 1);
  const Tensor w = blas_operand(wt, false, K, N, mw, op, "weight");
  sgemm(mx.trans, mw.trans, M, N, K, 1.f, mx.p, mx.ld, mw.p, mw.ld, beta, yp, N);
  return out;
}

std::vector<Tensor> linears(const Tensor& x, std::span<const Tensor> weights, std::span<const Tensor> biases) {
  if (!biases.empty() && biases.size() != weights.size())
    throw ValueError("linears: " + std::to_string(biases.size()) + " biases for " + std::to_string(weights.size()) +
                     " weights; pass one per weight (undefined for none) or none");
  const auto bias = [&](size_t i) { return biases.empty() ? Tensor() : biases[i]; };
  const bool x_ok = x.defined() && x.dtype() == DType::f32 && x.ndim() >= 1 && x.numel() > 0;
  const int64_t K = x_ok ? x.dim(-1) : 0, M = x_ok ? x.numel() / K : 0;
  std::vector<std::shared_ptr<const PackedWeight>> packed;
  if (x_ok && K % 32 == 0 && activation_quantization()) {
    for (size_t i = 0; i < weights.size(); ++i) {
      const Tensor& w = weights[i];
      const Tensor b = bias(i);
      if (!w.defined() || w.ndim() != 2 || w.dim(1) != K || !packable(w.dtype()) || !qlinear_fast(w.dtype(), M) ||
          (b.defined() && (b.dtype() != DType::f32 || b.ndim() != 1 || b.dim(0) != w.dim(0))))
        break;
      auto p = find_packed(w);
      if (!p) break;
      packed.push_back(std::move(p));
    }
  }
  std::vector<Tensor> ys;
  ys.reserve(weights.size());
  if (weights.empty() || packed.size() != weights.size()) {  // one at a time, with linear's checks and errors
    for (size_t i = 0; i < weights.size(); ++i) ys.push_back(linear(x, weights[i], bias(i)));
    return ys;
  }
  const Tensor xc = detail::f32_contiguous(x, "linears", "x");
  const QuantizedRows q = quantize_rows(xc.data<float>(), M, K, K, false, activation_bits_for(M));
  std::vector<const PackedWeight*> ws;
  std::vector<float*> outs;
  for (const auto& p : packed) {
    Shape shape = x.shape();
    shape.back() = p->N;
    ys.push_back(Tensor::empty(shape));
    ws.push_back(p.get());
    outs.push_back(ys.back().data<float>());
  }
  qlinear_packed(pack_activations(q.q.data(), q.d.data(), q.s.data(), M, K, q.bits), ws, outs);
  for (size_t i = 0; i < ys.size(); ++i) {
    const Tensor b = bias(i);
    if (!b.defined()) continue;
    const Tensor bc = detail::f32_contiguous(b, "linears", "bias");
    const float* bp = bc.data<float>();
    float* yp = ys[i].data<float>();
    const int64_t N = packed[i]->N;
    detail::for_rows(M, N, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t n = 0; n < N; ++n) yp[r * N + n] = bp[n] + yp[r * N + n];
    });
  }
  return ys;
}

}  // namespace lb::ops
#endif

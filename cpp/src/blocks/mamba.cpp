// Mamba's and Mamba2's mixers over the batch's runs: each sequence's tokens continue its conv window and
// SSM state, both kept in the model's cache (KVCache::state), so prefill and one-token decode share one
// path. Projections run over the whole batch; the conv and the scan run per sequence.
#include <cmath>
#include <cstring>

#include "blocks/common.h"
#include "lmblocks/blocks.h"
#include "lmblocks/error.h"

namespace lb::blocks {

namespace {

constexpr const char* kBlock = "Mamba2";

void check_vec(const Tensor& t, int64_t n, const char* name, bool required, const char* block = kBlock) {
  if (required && !t.defined()) throw ValueError(std::string(block) + ": " + name + " is required");
  detail::check_vector(t, n, block, name);
}

Tensor f32(const Tensor& t) { return !t.defined() || t.dtype() == DType::f32 ? t : t.to(DType::f32); }

// ---- hook points: "dt" and "state_norm" ----------------------------------------------------------
// "dt": the step the scan takes per token (ops::ssm_steps), (N, heads or channels).
// "state_norm": the L2 norm of each head's (P, N) or channel's (N,) state after each token. To see every
// state the scan then runs one token at a time (the recurrence; the chunked form sums in another order).

// Runs `step(t)` (token t of a run, updating `state` (W, ...) in place, returning its output row) for
// each token, writing the norm of each of the W state rows after it into norms[t * W ...].
template <class Step>
Tensor scan_one_by_one(int64_t n, const Tensor& state, float* norms, Step&& step) {
  const int64_t W = state.dim(0), per = state.numel() / W;
  std::vector<Tensor> rows;
  for (int64_t t = 0; t < n; ++t) {
    rows.push_back(step(t).contiguous());
    const float* s = state.data<float>();
    for (int64_t w = 0; w < W; ++w) {
      double acc = 0;
      for (int64_t j = 0; j < per; ++j) acc += double(s[w * per + j]) * s[w * per + j];
      norms[t * W + w] = float(std::sqrt(acc));
    }
  }
  const int64_t row = rows[0].numel();
  Tensor y = Tensor::empty({n, row});
  for (int64_t t = 0; t < n; ++t) std::memcpy(y.data<float>() + t * row, rows[size_t(t)].raw(), size_t(row) * 4);
  return y;
}

}  // namespace

Mamba2::Mamba2(const Mamba2Config& c, Tensor ip, Tensor cw, Tensor cb, Tensor dtb, Tensor al, Tensor d, Tensor nw,
               Tensor op, Tensor ib, Tensor ob)
    : cfg(c), in_proj(std::move(ip)), conv_weight(std::move(cw)), conv_bias(std::move(cb)), dt_bias(std::move(dtb)),
      A_log(std::move(al)), D(std::move(d)), norm(std::move(nw)), out_proj(std::move(op)), in_bias(std::move(ib)),
      out_bias(std::move(ob)) {
  const int64_t H = cfg.n_heads, P = cfg.head_dim, G = cfg.n_groups, N = cfg.state_size, K = cfg.conv_kernel;
  if (H <= 0 || P <= 0 || G <= 0 || N <= 0 || K <= 0 || H % G != 0)
    throw ValueError("Mamba2: n_heads " + std::to_string(H) + ", head_dim " + std::to_string(P) + ", n_groups " +
                     std::to_string(G) + ", state_size " + std::to_string(N) + ", conv_kernel " + std::to_string(K) +
                     "; need positive sizes with n_heads divisible by n_groups");
  if (cfg.chunk_size < 0) throw ValueError("Mamba2: chunk_size must be >= 0");
  if (!(cfg.norm_eps > 0.f)) throw ValueError("Mamba2: norm_eps must be > 0");
  if (!in_proj.defined() || in_proj.ndim() != 2) throw ValueError("Mamba2: in_proj must be a 2-D (out, D) weight");
  const int64_t Dm = in_proj.dim(1), di = d_inner(), cd = conv_dim();
  detail::check_matrix(in_proj, di + cd + H, Dm, kBlock, "in_proj");
  detail::check_matrix(out_proj, Dm, di, kBlock, "out_proj");
  if (!conv_weight.defined() || conv_weight.ndim() != 2 || conv_weight.dim(0) != cd || conv_weight.dim(1) != K)
    throw ValueError("Mamba2: conv_weight has shape " +
                     (conv_weight.defined() ? shape_str(conv_weight.shape()) : std::string("none")) + "; expected (" +
                     std::to_string(cd) + ", " + std::to_string(K) + ") = (d_inner + 2 n_groups state_size, conv_kernel)");
  check_vec(conv_bias, cd, "conv_bias", false);
  check_vec(dt_bias, H, "dt_bias", true);
  check_vec(A_log, H, "A_log", true);
  check_vec(D, H, "D", true);
  check_vec(norm, di, "norm", false);
  check_vec(in_bias, di + cd + H, "in_bias", false);
  check_vec(out_bias, Dm, "out_bias", false);
  conv_weight = f32(conv_weight).contiguous();
  conv_bias = f32(conv_bias);
  dt_bias = f32(dt_bias);
  D = f32(D);
  A_ = Tensor::empty({H});
  const Tensor al32 = f32(A_log).contiguous();
  for (int64_t h = 0; h < H; ++h) A_.data<float>()[h] = -std::exp(al32.data<float>()[h]);
}

std::vector<Shape> Mamba2::state_shapes() const {
  return {{conv_dim(), cfg.conv_kernel - 1}, {cfg.n_heads, cfg.head_dim, cfg.state_size}};
}

Tensor Mamba2::forward(Context& ctx, const Tensor& x) {
  const int64_t N = ctx.N, H = cfg.n_heads, P = cfg.head_dim, G = cfg.n_groups, S = cfg.state_size;
  const int64_t di = d_inner(), cd = conv_dim();
  const Tensor zxbcdt = ops::linear(x, in_proj, in_bias);  // (N, d_inner + conv_dim + H)
  std::vector<Tensor>& st = ctx.cache->state(this);
  Tensor y = Tensor::empty({N, di});
  ops::Ssd ssd;
  ssd.chunk_size = cfg.chunk_size;
  ssd.dt_min = cfg.dt_min;
  ssd.dt_max = cfg.dt_max;
  capture_point(ctx, *this, "dt", [&] {
    return ops::ssm_steps(zxbcdt.slice(1, di + cd, di + cd + H), dt_bias, true, cfg.dt_min, cfg.dt_max);
  });
  Tensor norms = wants_point(ctx, *this, "state_norm") ? Tensor::empty({N, H}) : Tensor();
  for (const Run& run : ctx.runs) {
    const Tensor rows = zxbcdt.slice(0, run.begin, run.begin + run.n);
    Tensor conv_state = st[0].select(0, run.seq), ssm_state = st[1].select(0, run.seq);
    const Tensor xbc = ops::causal_conv1d(rows.slice(1, di, di + cd), conv_weight, conv_bias, conv_state, true);
    const Tensor xs = xbc.slice(1, 0, di).reshape({run.n, H, P});
    const Tensor B = xbc.slice(1, di, di + G * S).reshape({run.n, G, S});
    const Tensor C = xbc.slice(1, di + G * S, cd).reshape({run.n, G, S});
    const Tensor dt = rows.slice(1, di + cd, di + cd + H);
    const Tensor yr = !norms.defined() ? ops::ssd_scan(xs, dt, A_, B, C, D, dt_bias, ssm_state, ssd)  // (n, H, P)
        : scan_one_by_one(run.n, ssm_state, norms.data<float>() + run.begin * H, [&](int64_t t) {
            ops::Ssd one = ssd;
            one.chunk_size = 0;
            return ops::ssd_scan(xs.slice(0, t, t + 1), dt.slice(0, t, t + 1), A_, B.slice(0, t, t + 1),
                                 C.slice(0, t, t + 1), D, dt_bias, ssm_state, one);
          });
    std::memcpy(y.data<float>() + run.begin * di, yr.contiguous().raw(), size_t(run.n * di) * 4);
  }
  capture_point(ctx, *this, "state_norm", [&] { return norms; });
  const Tensor z = zxbcdt.slice(1, 0, di);
  if (!norm.defined()) return ops::linear(ops::swiglu(z, y, y), out_proj, out_bias);  // y * silu(z)
  if (!cfg.norm_before_gate) return ops::linear(ops::rms_norm_gated(y, z, norm, cfg.norm_eps, di / G), out_proj, out_bias);
  Tensor yn = ops::rms_norm_gated(y, Tensor(), norm, cfg.norm_eps, di / G);
  return ops::linear(ops::swiglu(z, yn, yn), out_proj, out_bias);
}

std::vector<std::pair<std::string, Tensor>> Mamba2::weights() const {
  std::vector<std::pair<std::string, Tensor>> w = {{"in_proj", in_proj}, {"conv_weight", conv_weight}};
  if (conv_bias.defined()) w.emplace_back("conv_bias", conv_bias);
  w.insert(w.end(), {{"dt_bias", dt_bias}, {"A_log", A_log}, {"D", D}});
  if (norm.defined()) w.emplace_back("norm", norm);
  w.emplace_back("out_proj", out_proj);
  if (in_bias.defined()) w.emplace_back("in_bias", in_bias);
  if (out_bias.defined()) w.emplace_back("out_bias", out_bias);
  return w;
}

// ---- Mamba (v1) --------------------------------------------------------------------------------------

Mamba::Mamba(Tensor ip, Tensor cw, Tensor cb, Tensor xp, Tensor dtp, Tensor dtb, Tensor al, Tensor d, Tensor op,
             Tensor ib, Tensor ob, Tensor dtn, Tensor bn, Tensor cn, float eps)
    : in_proj(std::move(ip)), conv_weight(std::move(cw)), conv_bias(std::move(cb)), x_proj(std::move(xp)),
      dt_proj(std::move(dtp)), dt_bias(std::move(dtb)), A_log(std::move(al)), D(std::move(d)),
      out_proj(std::move(op)), in_bias(std::move(ib)), out_bias(std::move(ob)), dt_norm(std::move(dtn)),
      b_norm(std::move(bn)), c_norm(std::move(cn)), norm_eps(eps) {
  const char* b = "Mamba";
  if (!A_log.defined() || A_log.ndim() != 2 || A_log.dim(0) < 1 || A_log.dim(1) < 1)
    throw ValueError("Mamba: A_log must be a 2-D (d_inner, state_size) tensor");
  if (!in_proj.defined() || in_proj.ndim() != 2) throw ValueError("Mamba: in_proj must be a 2-D (2 d_inner, D) weight");
  if (!dt_proj.defined() || dt_proj.ndim() != 2) throw ValueError("Mamba: dt_proj must be a 2-D (d_inner, dt_rank) weight");
  const int64_t di = d_inner(), Ns = state_size(), Dm = in_proj.dim(1), R = dt_proj.dim(1);
  detail::check_matrix(in_proj, 2 * di, Dm, b, "in_proj");
  detail::check_matrix(x_proj, R + 2 * Ns, di, b, "x_proj");
  detail::check_matrix(dt_proj, di, R, b, "dt_proj");
  detail::check_matrix(out_proj, Dm, di, b, "out_proj");
  if (!conv_weight.defined() || conv_weight.ndim() != 2 || conv_weight.dim(0) != di || conv_weight.dim(1) < 1)
    throw ValueError("Mamba: conv_weight has shape " +
                     (conv_weight.defined() ? shape_str(conv_weight.shape()) : std::string("none")) + "; expected (" +
                     std::to_string(di) + ", K) = (d_inner, conv_kernel)");
  check_vec(conv_bias, di, "conv_bias", false, b);
  check_vec(dt_bias, di, "dt_bias", true, b);
  check_vec(D, di, "D", true, b);
  check_vec(in_bias, 2 * di, "in_bias", false, b);
  check_vec(out_bias, Dm, "out_bias", false, b);
  if (dt_norm.defined() != b_norm.defined() || dt_norm.defined() != c_norm.defined())
    throw ValueError("Mamba: dt_norm, b_norm and c_norm go together (Jamba); got " +
                     std::string(dt_norm.defined() ? "dt_norm " : "") + (b_norm.defined() ? "b_norm " : "") +
                     (c_norm.defined() ? "c_norm " : "") + "only");
  check_vec(dt_norm, R, "dt_norm", false, b);
  check_vec(b_norm, Ns, "b_norm", false, b);
  check_vec(c_norm, Ns, "c_norm", false, b);
  if (normed() && !(norm_eps > 0.f)) throw ValueError("Mamba: norm_eps must be > 0");
  conv_weight = f32(conv_weight).contiguous();
  conv_bias = f32(conv_bias);
  dt_bias = f32(dt_bias);
  D = f32(D);
  A_ = f32(A_log).clone();
  float* a = A_.data<float>();
  for (int64_t i = 0; i < A_.numel(); ++i) a[i] = -std::exp(a[i]);
}

std::vector<Shape> Mamba::state_shapes() const {
  return {{d_inner(), conv_kernel() - 1}, {d_inner(), state_size()}};
}

Tensor Mamba::forward(Context& ctx, const Tensor& x) {
  const int64_t N = ctx.N, di = d_inner(), Ns = state_size(), R = dt_rank();
  const Tensor xz = ops::linear(x, in_proj, in_bias);  // (N, 2 d_inner): [x | z]
  std::vector<Tensor>& st = ctx.cache->state(this);
  Tensor xs = Tensor::empty({N, di});  // the conv's output, every run
  for (const Run& run : ctx.runs) {
    Tensor conv_state = st[0].select(0, run.seq);
    const Tensor c = ops::causal_conv1d(xz.slice(0, run.begin, run.begin + run.n).slice(1, 0, di), conv_weight,
                                        conv_bias, conv_state, true);
    std::memcpy(xs.data<float>() + run.begin * di, c.contiguous().raw(), size_t(run.n * di) * 4);
  }
  const Tensor dbc = ops::linear(xs, x_proj);  // (N, R + 2N)
  Tensor dt_low = dbc.slice(1, 0, R), Bm = dbc.slice(1, R, R + Ns), Cm = dbc.slice(1, R + Ns, R + 2 * Ns);
  if (normed()) {  // Jamba: (N, R) (N, Ns) (N, Ns), each normalized over its own width
    dt_low = ops::rms_norm(dt_low, dt_norm, norm_eps);
    Bm = ops::rms_norm(Bm, b_norm, norm_eps);
    Cm = ops::rms_norm(Cm, c_norm, norm_eps);
  }
  const Tensor dt = ops::linear(dt_low, dt_proj);  // (N, d_inner), bias added in the scan
  capture_point(ctx, *this, "dt", [&] { return ops::ssm_steps(dt, dt_bias); });
  Tensor norms = wants_point(ctx, *this, "state_norm") ? Tensor::empty({N, di}) : Tensor();
  Tensor y = Tensor::empty({N, di});
  for (const Run& run : ctx.runs) {
    Tensor ssm_state = st[1].select(0, run.seq);
    auto scan = [&](int64_t a, int64_t e) {
      return ops::selective_scan(xs.slice(0, a, e), dt.slice(0, a, e), A_, Bm.slice(0, a, e), Cm.slice(0, a, e), D,
                                 xz.slice(0, a, e).slice(1, di, 2 * di), dt_bias, ssm_state, true);
    };
    const int64_t a = run.begin;
    const Tensor yr = !norms.defined() ? scan(a, a + run.n)
        : scan_one_by_one(run.n, ssm_state, norms.data<float>() + a * di, [&](int64_t t) { return scan(a + t, a + t + 1); });
    std::memcpy(y.data<float>() + a * di, yr.contiguous().raw(), size_t(run.n * di) * 4);
  }
  capture_point(ctx, *this, "state_norm", [&] { return norms; });
  return ops::linear(y, out_proj, out_bias);
}

std::vector<std::pair<std::string, Tensor>> Mamba::weights() const {
  std::vector<std::pair<std::string, Tensor>> w = {{"in_proj", in_proj}, {"conv_weight", conv_weight}};
  if (conv_bias.defined()) w.emplace_back("conv_bias", conv_bias);
  w.insert(w.end(), {{"x_proj", x_proj}, {"dt_proj", dt_proj}, {"dt_bias", dt_bias}, {"A_log", A_log}, {"D", D},
                     {"out_proj", out_proj}});
  if (in_bias.defined()) w.emplace_back("in_bias", in_bias);
  if (out_bias.defined()) w.emplace_back("out_bias", out_bias);
  if (normed()) w.insert(w.end(), {{"dt_norm", dt_norm}, {"b_norm", b_norm}, {"c_norm", c_norm}});
  return w;
}

}  // namespace lb::blocks

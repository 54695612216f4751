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
  for (const Run& run : ctx.runs) {
    const Tensor rows = zxbcdt.slice(0, run.begin, run.begin + run.n);
    Tensor conv_state = st[0].select(0, run.seq), ssm_state = st[1].select(0, run.seq);
    const Tensor xbc = ops::causal_conv1d(rows.slice(1, di, di + cd), conv_weight, conv_bias, conv_state, true);
    const Tensor xs = xbc.slice(1, 0, di).reshape({run.n, H, P});
    const Tensor B = xbc.slice(1, di, di + G * S).reshape({run.n, G, S});
    const Tensor C = xbc.slice(1, di + G * S, cd).reshape({run.n, G, S});
    const Tensor dt = rows.slice(1, di + cd, di + cd + H);
    const Tensor yr = ops::ssd_scan(xs, dt, A_, B, C, D, dt_bias, ssm_state, ssd);  // (n, H, P)
    std::memcpy(y.data<float>() + run.begin * di, yr.contiguous().raw(), size_t(run.n * di) * 4);
  }
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
             Tensor ib, Tensor ob)
    : in_proj(std::move(ip)), conv_weight(std::move(cw)), conv_bias(std::move(cb)), x_proj(std::move(xp)),
      dt_proj(std::move(dtp)), dt_bias(std::move(dtb)), A_log(std::move(al)), D(std::move(d)),
      out_proj(std::move(op)), in_bias(std::move(ib)), out_bias(std::move(ob)) {
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
  const Tensor dbc = ops::linear(xs, x_proj);                   // (N, R + 2N)
  const Tensor dt = ops::linear(dbc.slice(1, 0, R), dt_proj);  // (N, d_inner), bias added in the scan
  Tensor y = Tensor::empty({N, di});
  for (const Run& run : ctx.runs) {
    const int64_t a = run.begin, e = run.begin + run.n;
    Tensor ssm_state = st[1].select(0, run.seq);
    const Tensor yr = ops::selective_scan(xs.slice(0, a, e), dt.slice(0, a, e), A_, dbc.slice(0, a, e).slice(1, R, R + Ns),
                                          dbc.slice(0, a, e).slice(1, R + Ns, R + 2 * Ns), D,
                                          xz.slice(0, a, e).slice(1, di, 2 * di), dt_bias, ssm_state, true);
    std::memcpy(y.data<float>() + a * di, yr.contiguous().raw(), size_t(run.n * di) * 4);
  }
  return ops::linear(y, out_proj, out_bias);
}

std::vector<std::pair<std::string, Tensor>> Mamba::weights() const {
  std::vector<std::pair<std::string, Tensor>> w = {{"in_proj", in_proj}, {"conv_weight", conv_weight}};
  if (conv_bias.defined()) w.emplace_back("conv_bias", conv_bias);
  w.insert(w.end(), {{"x_proj", x_proj}, {"dt_proj", dt_proj}, {"dt_bias", dt_bias}, {"A_log", A_log}, {"D", D},
                     {"out_proj", out_proj}});
  if (in_bias.defined()) w.emplace_back("in_bias", in_bias);
  if (out_bias.defined()) w.emplace_back("out_bias", out_bias);
  return w;
}

}  // namespace lb::blocks

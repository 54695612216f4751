// State-space mixers (cpp/src/blocks/mamba.cpp). Included by lmblocks/blocks.h.
#pragma once
#include <string>
#include <utility>
#include <vector>

#include "lmblocks/blocks.h"

namespace lb::blocks {

struct Mamba2Config {
  int64_t n_heads = 0, head_dim = 0, n_groups = 1, state_size = 0, conv_kernel = 4;
  int64_t chunk_size = 256;  // the chunked SSD's chunk for prefill (ops::ssd_scan); 0 = sequential
  float norm_eps = 1e-5f;
  float dt_min = 0.f, dt_max = 1e30f;  // Mamba2's time_step_limit
  // With a norm weight: false is Mamba2's norm(y * silu(z)) * w; true is norm(y) * w * silu(z) (Falcon-H1's
  // mamba_norm_before_gate). Without one the output is y * silu(z) (Falcon-H1's mamba_rms_norm false).
  bool norm_before_gate = false;
};

// Mamba2's mixer (Dao & Gu 2024), as transformers' Mamba2Mixer computes it:
//   [z | xBC | dt] = in_proj(x);  xBC = silu(conv1d(xBC)) over time, with the conv window in the cache;
//   [x | B | C] = xBC;  y = SSD(x, dt, A = -exp(A_log), B, C, D) with the (H, P, N) state in the cache;
//   out = out_proj(rms_norm_gated(y, z) * norm)  (groups of d_inner / n_groups; see norm_before_gate, and
//   without a norm weight out_proj(y * silu(z))).
// d_inner = n_heads * head_dim (any width: Falcon-H1's mamba_d_ssm need not be expand * D); the conv runs over conv_dim = d_inner + 2 * n_groups * state_size.
// Cache state per sequence: the last conv_kernel - 1 conv inputs (conv_dim, K-1) and the SSM state.
class Mamba2 : public Block {
 public:
  Mamba2(const Mamba2Config& cfg, Tensor in_proj, Tensor conv_weight, Tensor conv_bias, Tensor dt_bias,
         Tensor A_log, Tensor D, Tensor norm, Tensor out_proj, Tensor in_bias = {}, Tensor out_bias = {});
  Tensor forward(Context& ctx, const Tensor& x) override;
  std::vector<std::pair<std::string, Tensor>> weights() const override;
  std::string kind() const override { return "Mamba2"; }
  std::string role() const override { return "mamba"; }
  int64_t in_dim() const override { return in_proj.dim(1); }
  std::vector<Shape> state_shapes() const override;
  int64_t d_inner() const { return cfg.n_heads * cfg.head_dim; }
  int64_t conv_dim() const { return d_inner() + 2 * cfg.n_groups * cfg.state_size; }

  Mamba2Config cfg;
  Tensor in_proj;      // (2 d_inner + 2 G N + H, D)
  Tensor conv_weight;  // (conv_dim, K)
  Tensor conv_bias;    // (conv_dim,) optional
  Tensor dt_bias, A_log, D;  // (H,)
  Tensor norm;         // (d_inner,) optional
  Tensor out_proj;     // (D, d_inner)
  Tensor in_bias, out_bias;  // optional

 private:
  Tensor A_;  // -exp(A_log), (H,) f32
};

// Mamba's mixer (Gu & Dao 2023), as transformers' MambaMixer computes it:
//   [x | z] = in_proj(x);  x = silu(conv1d(x)) over time (window in the cache);
//   [dt_low | B | C] = x_proj(x);  dt = dt_proj(dt_low) (+ dt_bias inside the scan, then softplus);
//   y = selective_scan(x, dt, A = -exp(A_log), B, C, D) * silu(z), state (d_inner, N) in the cache;
//   out = out_proj(y).
// Jamba's variant RMS-normalizes dt_low, B and C (each over its own width) right after x_proj: give
// dt_norm, b_norm and c_norm (all three or none) and their eps.
class Mamba : public Block {
 public:
  Mamba(Tensor in_proj, Tensor conv_weight, Tensor conv_bias, Tensor x_proj, Tensor dt_proj, Tensor dt_bias,
        Tensor A_log, Tensor D, Tensor out_proj, Tensor in_bias = {}, Tensor out_bias = {}, Tensor dt_norm = {},
        Tensor b_norm = {}, Tensor c_norm = {}, float norm_eps = 1e-6f);
  Tensor forward(Context& ctx, const Tensor& x) override;
  std::vector<std::pair<std::string, Tensor>> weights() const override;
  std::string kind() const override { return "Mamba"; }
  std::string role() const override { return "mamba"; }
  int64_t in_dim() const override { return in_proj.dim(1); }
  std::vector<Shape> state_shapes() const override;
  int64_t d_inner() const { return A_log.dim(0); }
  int64_t state_size() const { return A_log.dim(1); }
  int64_t dt_rank() const { return dt_proj.dim(1); }
  int64_t conv_kernel() const { return conv_weight.dim(1); }

  Tensor in_proj;      // (2 d_inner, D)
  Tensor conv_weight;  // (d_inner, K)
  Tensor conv_bias;    // (d_inner,) optional
  Tensor x_proj;       // (R + 2N, d_inner)
  Tensor dt_proj;      // (d_inner, R)
  Tensor dt_bias;      // (d_inner,)
  Tensor A_log;        // (d_inner, N)
  Tensor D;            // (d_inner,)
  Tensor out_proj;     // (D, d_inner)
  Tensor in_bias, out_bias;  // optional
  Tensor dt_norm;      // (R,) optional, with b_norm and c_norm (N,) each (Jamba)
  Tensor b_norm, c_norm;
  float norm_eps = 1e-6f;
  bool normed() const { return dt_norm.defined(); }

 private:
  Tensor A_;  // -exp(A_log), (d_inner, N) f32
};

}  // namespace lb::blocks

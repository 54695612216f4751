// Tensor-level kernels. Inputs are f32, or f16/bf16 converted on the way in; results are f32.
// `out`, when given, must be a contiguous, writable f32 tensor of the result's shape; it may be the
// same memory as an elementwise input (in place) but may not partly overlap any input.
// Shape letters: B batch, T query tokens, S key tokens, H heads, Hkv kv heads, hd head dim, D model dim.
#pragma once
#include <span>
#include <string>
#include <vector>

#include "lmblocks/tensor.h"

namespace lb::ops {

// a (..., M, K) @ b (..., K, N) -> (..., M, N); batch dims broadcast; 1-D operands as in np.matmul.
Tensor matmul(const Tensor& a, const Tensor& b, Tensor out = {});
// x (..., K) @ weight (N, K)^T + bias (N,) -> (..., N)
Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias = {}, Tensor out = {});
// linear(x, weights[i], biases[i]) for each i (biases: empty, or one per weight, undefined for none).
// Where every weight is a model's matrix repacked at load, x is quantized and packed once and all the
// products run as one parallel job: q/k/v, gate/up. Anything else takes linear() one weight at a time.
std::vector<Tensor> linears(const Tensor& x, std::span<const Tensor> weights, std::span<const Tensor> biases = {});

// x (..., D) / sqrt(mean(x^2) + eps) * (offset + weight (D,)); no weight means 1. Gemma uses offset 1.
Tensor rms_norm(const Tensor& x, const Tensor& weight, float eps, float offset = 0.f, Tensor out = {});
// (x - mean) / sqrt(var + eps) * weight + bias over the last axis; weight/bias optional.
Tensor layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, float eps, Tensor out = {});
// exp(x - max) / sum(exp(x - max)) along `axis`.
Tensor softmax(const Tensor& x, int axis = -1, Tensor out = {});

enum class Gelu { erf, tanh };
Tensor silu(const Tensor& x, Tensor out = {});
Tensor gelu(const Tensor& x, Gelu approx = Gelu::erf, Tensor out = {});
// silu(gate) * up / gelu(gate) * up. An undefined `up` means gate holds [gate | up] on its last axis.
Tensor swiglu(const Tensor& gate, const Tensor& up, Tensor out = {});
Tensor geglu(const Tensor& gate, const Tensor& up, Gelu approx = Gelu::erf, Tensor out = {});

// Rotary position embedding. Angles are pos * inv_freq[i], inv_freq[i] = theta^(-2i/rotary_dim),
// adjusted by the scaling rule ("none", "linear", "llama3"), as Hugging Face's rope_scaling.
struct Rope {
  double theta = 10000.0;
  int64_t rotary_dim = 0;    // rotate the first rotary_dim features of each head; 0 means all
  bool interleaved = false;  // pairs (2i, 2i+1) (GPT-J, llama.cpp "norm"); else halves (i, i + rd/2) (NeoX, HF)
  std::string scaling = "none";
  double factor = 1.0;
  double low_freq_factor = 1.0, high_freq_factor = 4.0;
  double original_max_position = 8192.0;
};
std::vector<double> rope_inv_freq(int64_t rotary_dim, const Rope& rope);
// x (T, H, hd) or (B, T, H, hd); positions i32/i64 (T,) or (B, T), or undefined for offset + arange(T).
Tensor rope(const Tensor& x, const Tensor& positions, int64_t offset, const Rope& rope, Tensor out = {});

// ids i32/i64 (...) gathering rows of table (V, D) (f32/f16/bf16) -> (..., D) f32.
Tensor embedding(const Tensor& ids, const Tensor& table, Tensor out = {});

// NumPy-broadcast elementwise a + b and a * b.
Tensor add(const Tensor& a, const Tensor& b, Tensor out = {});
Tensor mul(const Tensor& a, const Tensor& b, Tensor out = {});

// Scaled dot-product attention. q (T, H, hd) or (B, T, H, hd); k (S, Hkv, hd); v (S, Hkv, hdv); H % Hkv == 0
// (GQA/MQA: query head h reads kv head h / (H / Hkv)); f16 k and v are read as stored. Query t sits at position S - T + t, so S > T
// is decode against a cache. Causal: keys j <= that position; window w > 0: also position - j < w
// (not causal: |position - j| < w, a symmetric window).
// mask: additive f32 broadcastable to (B, H, T, S). softcap c > 0: scores = c * tanh(scores / c).
// A query that sees no key gets zeros.
struct Attention {
  bool causal = true;
  int64_t window = 0;
  float scale = 0.f;    // 0 means 1 / sqrt(hd)
  float softcap = 0.f;
};
Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& mask, const Attention& cfg,
                 Tensor out = {});
// Causal attention of T queries over one sequence's KV cache, as the engine keeps it. q (T, H, hd) at
// positions pos .. pos + T - 1; k (Hkv, C, hd), v (Hkv, C, hdv), f32 or f16 (read as stored): rings
// holding positions [0, pos + T), position j in row j % C, so C must cover the keys the queries see
// (pos + T, or T + window - 1 with a window). cfg.causal must be true; mask-free.
Tensor attention_cache(const Tensor& q, const Tensor& k, const Tensor& v, int64_t pos, const Attention& cfg,
                       Tensor out = {});

// Elementwise copy with conversion between plain types (any strides, same shape).
void copy(const Tensor& src, Tensor& dst);

// --- Pointer-level pieces the inference engine (cpp/src/blocks/) calls between Tensor ops ---

// cos/sin rows of P positions, built once per forward pass and shared by every layer with this Rope.
using RopeKernel = void (*)(const float* x, float* y, const float* cs, int64_t rd, int64_t hd);
struct RopeTable {
  int64_t rotary_dim = 0, stride = 0;
  RopeKernel fn = nullptr;
  std::vector<float> data;  // (P, stride)
  const float* row(int64_t p) const { return data.data() + p * stride; }
};
RopeTable rope_table(const Rope& cfg, int64_t head_dim, const int64_t* positions, int64_t P);
// Rotates x in place: P rows `row_stride` floats apart, each holding H heads of hd floats.
void rope_rows(const RopeTable& table, float* x, int64_t P, int64_t H, int64_t hd, int64_t row_stride);

// Attention over keys and values in memory (what attention() and attention_cache() run, and the engine
// over its KV cache). One kv head of one sequence: T queries at positions p0 .. p0 + T - 1, each with
// the G query heads sharing this kv head, against keys 0 .. S - 1.
struct AttentionHead {
  const float* q;  // query row (t, g) at q + t * q_t + g * q_h
  int64_t q_t, q_h;
  float* out;  // output row (t, g) at out + t * o_t + g * o_h
  int64_t o_t, o_h;
  const void* k;  // key j at k + (j % ring) * k_s elements (hd of them); v likewise (hdv)
  const void* v;
  int64_t k_s, v_s, ring;
  bool f16;  // k and v hold f16, else f32
  int64_t T, p0, S;
  const float* mask = nullptr;  // additive, mask[t * m_t + g * m_h + j * m_s], or null
  int64_t m_t = 0, m_h = 0, m_s = 0;
};
// Runs every head on the pool. cfg gives visibility (causal, window), scale and softcap.
void attention_heads(const std::vector<AttentionHead>& heads, const Attention& cfg, int64_t G, int64_t hd,
                     int64_t hdv);

}  // namespace lb::ops

// ==== State-space model kernels (Mamba, Mamba2): issue 6 ===========================================
// As transformers' modeling_mamba.py / modeling_mamba2.py define them; float32 throughout, the scan
// states included. A `state`, when given, must be a contiguous, writable f32 tensor: it is read as the
// state before the call and overwritten with the state after it, so a prefill followed by one-token
// calls equals one long call. Undefined means zeros (and the final state is dropped).
namespace lb::ops {

// Depthwise causal conv over time: y[t, c] = bias[c] + sum_k weight[c, k] * in[t - (K-1) + k, c], where
// `in` is [state | x] along time, then SiLU when `silu`. x (T, C), weight (C, K), bias (C,) optional;
// state (C, S) with S >= K-1 holds the S inputs before x (transformers keeps S = K). -> (T, C)
Tensor causal_conv1d(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor state, bool silu);

// The step each SSM scan takes: clamp(softplus(dt + dt_bias), lo, hi) (softplus as torch's, threshold 20;
// skipped when `softplus` is false) for dt (T, W) (any strides, f32) and dt_bias (W,) or undefined. -> (T, W)
// f32. selective_scan and ssd_scan compute their steps with it; so do the blocks' "dt" hook points.
Tensor ssm_steps(const Tensor& dt, const Tensor& dt_bias, bool softplus = true, float lo = 0.f, float hi = 1e30f);

// Mamba's selective scan, token by token: dt' = softplus(dt + dt_bias) (softplus optional),
// h = exp(dt' A) * h + dt' B_t x_t, y = C_t . h + D x, y *= silu(z). x, dt, z (T, Dm); A (Dm, N)
// (already -exp(A_log)); B, C (T, N); D, dt_bias (Dm,); state (Dm, N). D, z, dt_bias optional. -> (T, Dm)
Tensor selective_scan(const Tensor& x, const Tensor& dt, const Tensor& A, const Tensor& B, const Tensor& C,
                      const Tensor& D, const Tensor& z, const Tensor& dt_bias, Tensor state, bool dt_softplus);

// Mamba2's SSD. x (T, H, P); dt (T, H); A (H,); B, C (T, G, N), head h reads group h / (H / G);
// D (H,) or (H, P); dt_bias (H,); state (H, P, N). dt' = clamp(softplus(dt + dt_bias), dt_min, dt_max);
// h = exp(dt' A) h + dt' x B^T, y = h C + D x. chunk_size > 1 (and T > 1): the chunked matrix form
// (mamba2_chunk_scan); 0 or 1: the sequential recurrence. -> (T, H, P)
struct Ssd {
  int64_t chunk_size = 256;
  bool dt_softplus = true;
  float dt_min = 0.f, dt_max = 1e30f;
};
Tensor ssd_scan(const Tensor& x, const Tensor& dt, const Tensor& A, const Tensor& B, const Tensor& C,
                const Tensor& D, const Tensor& dt_bias, Tensor state, const Ssd& cfg);

// Mamba2's MambaRMSNormGated: v = x * silu(z) (z optional), RMS-normalized over groups of
// `group_size` features of the last axis (0: the whole axis), times weight (D,) (optional). -> x's shape
Tensor rms_norm_gated(const Tensor& x, const Tensor& z, const Tensor& weight, float eps, int64_t group_size);

}  // namespace lb::ops

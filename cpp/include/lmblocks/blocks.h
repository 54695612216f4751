// Native blocks and the decoder that runs them. Python composes an architecture from these
// (python/lmblocks/models/*.py); one CausalLM::forward call then runs every layer for every token of
// a batch with no Python in between.
//
// A batch is a flat list of N tokens, each belonging to a sequence (llama.cpp style): the tokens of
// one sequence are consecutive and continue that sequence from its length in the KV cache. Blocks
// read and write the residual stream x (N, D) f32.
// Shape letters: N tokens in the batch, D model dim, H / Hkv query / kv heads, hd head dim, F MLP dim,
// V vocab, S sequences in the cache, C cache capacity (positions) of a layer.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "lmblocks/ops.h"
#include "lmblocks/tensor.h"

namespace lb::ops {
struct PackedWeight;  // lmblocks/quant.h
}

namespace lb::blocks {

class Attention;
class KVCache;

// Tokens [begin, begin + n) of the batch continue sequence `seq` at positions pos0, pos0 + 1, ...
struct Run {
  int32_t seq;
  int64_t begin, n, pos0;
};

// What every block of one forward pass shares.
class Context {
 public:
  int64_t N = 0;
  std::vector<int64_t> pos;  // (N,) absolute position of each token
  std::vector<Run> runs;
  KVCache* cache = nullptr;

  // The cos/sin table of this batch's positions for `rope`, built on first use and shared by every
  // layer with the same rope settings.
  const ops::RopeTable& rope_table(const ops::Rope& rope, int64_t hd);

 private:
  struct Entry {
    ops::Rope rope;
    int64_t hd;
    ops::RopeTable table;
  };
  std::vector<Entry> tables_;
};

class Block {
 public:
  virtual ~Block() = default;
  // x (N, D) -> (N, D'); may return x itself after changing it in place.
  virtual Tensor forward(Context& ctx, const Tensor& x) = 0;
  // Children, so containers can be walked (cache layout, memory report).
  virtual std::vector<std::shared_ptr<Block>> children() const { return {}; }
  // The weight tensors this block holds itself, by Hugging Face-style short name.
  virtual std::vector<std::pair<std::string, Tensor>> weights() const { return {}; }
  virtual std::string kind() const = 0;
};
using BlockPtr = std::shared_ptr<Block>;

// x / sqrt(mean(x^2) + eps) * (offset + weight), per row of `dim` features (dim 0 means all of D).
class RMSNorm : public Block {
 public:
  RMSNorm(Tensor weight, float eps, float offset);
  Tensor forward(Context& ctx, const Tensor& x) override;
  std::vector<std::pair<std::string, Tensor>> weights() const override { return {{"weight", weight}}; }
  std::string kind() const override { return "RMSNorm"; }
  Tensor weight;  // (D,)
  float eps, offset;
};

struct AttentionConfig {
  int64_t n_heads = 0, n_kv_heads = 0, head_dim = 0;
  ops::Rope rope;
  int64_t window = 0;   // sliding window: key j visible from position p when p - j < window; 0 = global
  float scale = 0.f;    // 0 means 1 / sqrt(head_dim)
  float softcap = 0.f;  // Gemma 2's attention logit softcap; 0 = none
  float qk_norm_eps = 1e-6f;
  float qk_norm_offset = 0.f;  // q/k norms scale by (offset + w), as RMSNorm; Gemma uses 1
};

// Causal self-attention over the KV cache: q/k/v projections (any weight dtype, optional bias),
// optional per-head RMSNorm of q and k (Gemma 3, Qwen 3), rope, GQA/MQA, output projection.
class Attention : public Block {
 public:
  Attention(const AttentionConfig& cfg, Tensor q_proj, Tensor k_proj, Tensor v_proj, Tensor o_proj,
            Tensor q_bias, Tensor k_bias, Tensor v_bias, Tensor o_bias, Tensor q_norm, Tensor k_norm);
  Tensor forward(Context& ctx, const Tensor& x) override;
  std::vector<std::pair<std::string, Tensor>> weights() const override;
  std::string kind() const override { return "Attention"; }
  int64_t model_dim() const { return q_proj.dim(1); }

  AttentionConfig cfg;
  Tensor q_proj, k_proj, v_proj, o_proj;  // (H*hd, D) (Hkv*hd, D) (Hkv*hd, D) (D, H*hd)
  Tensor q_bias, k_bias, v_bias, o_bias;  // optional, (out,)
  Tensor q_norm, k_norm;                  // optional, (hd,)
};

enum class Activation { silu, gelu_tanh, gelu_erf };

// down(act(gate(x)) * up(x)), the gated MLP of Llama (SwiGLU) and Gemma (GeGLU).
class MLP : public Block {
 public:
  MLP(Tensor gate_proj, Tensor up_proj, Tensor down_proj, Activation act);
  Tensor forward(Context& ctx, const Tensor& x) override;
  std::vector<std::pair<std::string, Tensor>> weights() const override {
    return {{"gate_proj", gate_proj}, {"up_proj", up_proj}, {"down_proj", down_proj}};
  }
  std::string kind() const override { return "MLP"; }
  Tensor gate_proj, up_proj, down_proj;  // (F, D) (F, D) (D, F)
  Activation act;
};

// x + post(inner(pre(x))), pre and post optional: a pre-norm transformer sub-layer (Llama), or one
// with a norm on each side (Gemma 2/3).
class Residual : public Block {
 public:
  Residual(BlockPtr pre, BlockPtr inner, BlockPtr post);
  Tensor forward(Context& ctx, const Tensor& x) override;
  std::vector<BlockPtr> children() const override;
  std::string kind() const override { return "Residual"; }
  BlockPtr pre, inner, post;
};

// Blocks applied in order.
class Sequential : public Block {
 public:
  explicit Sequential(std::vector<BlockPtr> blocks);
  Tensor forward(Context& ctx, const Tensor& x) override;
  std::vector<BlockPtr> children() const override { return blocks; }
  std::string kind() const override { return "Sequential"; }
  std::vector<BlockPtr> blocks;
};

// Keys and values of every attention block for S sequences. A global layer keeps C = n_ctx positions;
// a sliding-window layer keeps a ring of window + n_batch - 1 (a chunk of n_batch new tokens is written
// before it is attended to, and its first query still needs window - 1 older keys).
class KVCache {
 public:
  struct Layer {
    const Attention* block;
    int64_t n_kv_heads, head_dim, capacity, window;
    Tensor k, v;  // (S, Hkv, C, hd), f32 or f16
  };
  KVCache(const std::vector<const Attention*>& blocks, int64_t n_seq, int64_t n_ctx, int64_t n_batch, DType dtype);

  Layer& layer(const Attention* block);
  int64_t n_seq() const { return int64_t(len_.size()); }
  int64_t n_ctx() const { return n_ctx_; }
  int64_t n_batch() const { return n_batch_; }
  DType dtype() const { return dtype_; }
  int64_t length(int64_t seq) const;
  void clear(int64_t seq = -1);  // one sequence, or all
  int64_t nbytes() const;
  const std::vector<Layer>& layers() const { return layers_; }

 private:
  friend class CausalLM;
  std::vector<Layer> layers_;
  std::unordered_map<const Attention*, size_t> index_;
  std::vector<int64_t> len_;  // (S,) positions filled per sequence
  int64_t n_ctx_, n_batch_;
  DType dtype_;
};

enum class Logits { last, all, none };

// Token embedding (scaled by embed_scale), the body, a final norm, the output head (lm_head or the
// tied embedding) and an optional final logit softcap.
class CausalLM {
 public:
  CausalLM(Tensor embed_tokens, float embed_scale, BlockPtr body, BlockPtr norm, Tensor lm_head, float final_softcap);

  // tokens (N,) i32 in [0, V); seq (N,) i32 or undefined (all in sequence 0). Returns logits (N, V) for
  // Logits::all, (R, V) for the last token of each of the R sequences in the batch (in order of first
  // appearance) for Logits::last, and an empty tensor for none. Long batches run in chunks of n_batch.
  Tensor forward(KVCache& cache, const Tensor& tokens, const Tensor& seq, Logits logits);

  std::shared_ptr<KVCache> make_cache(int64_t n_seq, int64_t n_ctx, int64_t n_batch, DType dtype) const;
  const std::vector<const Attention*>& attention_blocks() const { return attention_; }
  int64_t vocab_size() const { return lm_head.dim(0); }
  int64_t model_dim() const { return embed_tokens.dim(1); }

  Tensor embed_tokens;  // (V, D), any dtype embedding() reads
  float embed_scale;
  BlockPtr body, norm;
  Tensor lm_head;  // (V, D)
  float final_softcap;

 private:
  std::vector<const Attention*> attention_;  // found once in body: what a cache holds
  std::vector<std::shared_ptr<ops::PackedWeight>> packed_;  // weights repacked for this CPU's kernels
  void pack_weights();
  Tensor forward_chunk(KVCache& cache, const int32_t* tokens, Context& ctx, Logits logits);
};

}  // namespace lb::blocks

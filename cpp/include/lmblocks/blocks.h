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
#include <functional>
#include <initializer_list>
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
class Block;
class Hooks;
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
  Hooks* hooks = nullptr;  // what this pass captures or replaces (see Hooks); null: nothing, at no cost
  // (N, D) the tokens' embeddings (times embed_scale) before the first layer, kept only when a block reads
  // them (ConcatEmbeddings); undefined otherwise.
  Tensor embeddings;

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
  // forward() with the pass's hooks: capture "in"/"out", replace the output. Containers call children
  // through this; with no hooks set it is forward() and one pointer test.
  Tensor run(Context& ctx, const Tensor& x);
  // Children by name, so containers can be walked (paths, cache layout, memory report).
  virtual std::vector<std::pair<std::string, std::shared_ptr<Block>>> named_children() const { return {}; }
  std::vector<std::shared_ptr<Block>> children() const;
  // The weight tensors this block holds itself, by Hugging Face-style short name.
  virtual std::vector<std::pair<std::string, Tensor>> weights() const { return {}; }
  virtual std::string kind() const = 0;
  // The name a Layer gives this block when it holds it: "attn", "mlp", "moe", "norm" ...
  virtual std::string role() const { return "block"; }
  // Features in and out per token; -1 when the block takes any (containers check neighbours agree).
  virtual int64_t in_dim() const { return -1; }
  virtual int64_t out_dim() const { return in_dim(); }
  // The recurrent state this block keeps per sequence (shapes of f32 tensors), held by the model's
  // cache next to the attention layers' keys and values (Mamba: conv window and SSM state).
  virtual std::vector<Shape> state_shapes() const { return {}; }

  // Where the block sits in its model ("layers.3.attn"), set by CausalLM (name_blocks); hooks match it.
  std::string path;
};
using BlockPtr = std::shared_ptr<Block>;

// x / sqrt(mean(x^2) + eps) * (offset + weight), per row of `dim` features (dim 0 means all of D).
class RMSNorm : public Block {
 public:
  RMSNorm(Tensor weight, float eps, float offset);
  Tensor forward(Context& ctx, const Tensor& x) override;
  std::vector<std::pair<std::string, Tensor>> weights() const override { return {{"weight", weight}}; }
  std::string kind() const override { return "RMSNorm"; }
  std::string role() const override { return "norm"; }
  int64_t in_dim() const override { return weight.dim(0); }
  Tensor weight;  // (D,)
  float eps, offset;
};

// (x - mean) / sqrt(var + eps) * weight + bias per row; weight and bias optional (OLMo's is neither).
class LayerNorm : public Block {
 public:
  LayerNorm(int64_t dim, Tensor weight, Tensor bias, float eps);
  Tensor forward(Context& ctx, const Tensor& x) override;
  std::vector<std::pair<std::string, Tensor>> weights() const override;
  std::string kind() const override { return "LayerNorm"; }
  std::string role() const override { return "norm"; }
  int64_t in_dim() const override { return dim; }
  int64_t dim;
  Tensor weight, bias;  // (D,) each, or undefined
  float eps;
};

// A low-rank adapter on a projection (LoRA, Hu et al. 2021; Zamba2's per-use adapters on its shared
// blocks): proj(x) + (x A^T) B^T, A (r, in), B (out, r); LoRA's alpha / r is folded into B. Blocks that
// take adapters name their weights "<proj>.lora_A" and "<proj>.lora_B".
struct LowRank {
  Tensor A, B;
  bool defined() const { return A.defined(); }
};
// x W^T + bias + (x A^T) B^T (the adapter part only when the adapter is defined).
Tensor project(const Tensor& x, const Tensor& w, const Tensor& bias, const LowRank& adapter);
// Several projections of one x, in order: their products share one quantization of x and one parallel
// job where the weights allow (ops::linears), e.g. q/k/v or gate/up.
struct Projection {
  const Tensor& weight;
  const Tensor& bias;
  const LowRank& adapter;
};
std::vector<Tensor> project(const Tensor& x, std::initializer_list<Projection> projections);

struct AttentionConfig {
  int64_t n_heads = 0, n_kv_heads = 0, head_dim = 0;
  ops::Rope rope;
  bool use_rope = true;  // false: no positional encoding at all (Jamba; Granite 4.0-H without rope)
  int64_t window = 0;   // sliding window: key j visible from position p when p - j < window; 0 = global
  bool causal = true;   // false: every token of a sequence's batch sees all of that batch and the cache
  float scale = 0.f;    // 0 means 1 / sqrt(head_dim)
  float softcap = 0.f;  // Gemma 2's attention logit softcap; 0 = none
  float qk_norm_eps = 1e-6f;
  float qk_norm_offset = 0.f;  // q/k norms scale by (offset + w), as RMSNorm; Gemma uses 1
};

// Causal self-attention over the KV cache: q/k/v projections (any weight dtype, optional bias),
// optional RMSNorm of q and k, per head ((hd,) weights: Gemma 3, Qwen 3) or over all heads at once
// ((H*hd,) and (Hkv*hd,) weights: OLMo 2, OLMoE), rope (or none: cfg.use_rope), GQA/MQA, output projection.
// The output width may differ from the input's (Zamba2's shared attention reads 2D features and returns
// D). Optional low-rank adapters on any projection (set_adapter).
class Attention : public Block {
 public:
  Attention(const AttentionConfig& cfg, Tensor q_proj, Tensor k_proj, Tensor v_proj, Tensor o_proj,
            Tensor q_bias, Tensor k_bias, Tensor v_bias, Tensor o_bias, Tensor q_norm, Tensor k_norm);
  Tensor forward(Context& ctx, const Tensor& x) override;
  std::vector<std::pair<std::string, Tensor>> weights() const override;
  std::string kind() const override { return "Attention"; }
  std::string role() const override { return "attn"; }
  int64_t in_dim() const override { return model_dim(); }
  int64_t out_dim() const override { return o_proj.dim(0); }
  int64_t model_dim() const { return q_proj.dim(1); }
  // The adapter of "q_proj", "k_proj", "v_proj" or "o_proj", checked against that projection's shape.
  void set_adapter(const std::string& proj, LowRank adapter);

  AttentionConfig cfg;
  Tensor q_proj, k_proj, v_proj, o_proj;  // (H*hd, D) (Hkv*hd, D) (Hkv*hd, D) (Dout, H*hd), Dout usually D
  Tensor q_bias, k_bias, v_bias, o_bias;  // optional, (out,)
  Tensor q_norm, k_norm;                  // optional, (hd,) or (H*hd,) / (Hkv*hd,)
  LowRank q_lora, k_lora, v_lora, o_lora;  // optional
};

// relu2 is ReLU squared (Primer, So et al. 2021).
enum class Activation { silu, gelu_tanh, gelu_erf, relu, relu2 };
Activation activation_from_name(const std::string& name);  // "silu", "gelu_tanh", "gelu", "relu", "relu2" ...
const char* activation_name(Activation a);

// act(h) in place, h (N, F) f32 contiguous.
void activate(Tensor& h, Activation act);
// act(gate) * up into gate, both (N, F) f32 contiguous.
void activate_gated(Tensor& gate, const Tensor& up, Activation act);

// down(act(gate(x)) * up(x)), the gated MLP of Llama (SwiGLU) and Gemma (GeGLU); without gate_proj,
// down(act(up(x))), the plain MLP of GPT-2 and BERT. Biases and low-rank adapters (set_adapter) optional.
class MLP : public Block {
 public:
  MLP(Tensor gate_proj, Tensor up_proj, Tensor down_proj, Activation act, Tensor up_bias = {},
      Tensor down_bias = {}, Tensor gate_bias = {});
  Tensor forward(Context& ctx, const Tensor& x) override;
  std::vector<std::pair<std::string, Tensor>> weights() const override;
  std::string kind() const override { return "MLP"; }
  std::string role() const override { return "mlp"; }
  int64_t in_dim() const override { return up_proj.dim(1); }
  bool gated() const { return gate_proj.defined(); }
  // The adapter of "gate_proj", "up_proj" or "down_proj", checked against that projection's shape.
  void set_adapter(const std::string& proj, LowRank adapter);
  Tensor gate_proj, up_proj, down_proj;  // (F, D) (F, D) (D, F); gate_proj undefined for a plain MLP
  Tensor gate_bias, up_bias, down_bias;  // optional (F,) (F,) (D,)
  LowRank gate_lora, up_lora, down_lora;  // optional
  Activation act;
};

// x + post(inner(pre(x))), pre and post optional: a pre-norm transformer sub-layer (Llama), or one
// with a norm on each side (Gemma 2/3).
class Residual : public Block {
 public:
  Residual(BlockPtr pre, BlockPtr inner, BlockPtr post);
  Tensor forward(Context& ctx, const Tensor& x) override;
  std::vector<std::pair<std::string, BlockPtr>> named_children() const override;
  std::string kind() const override { return "Residual"; }
  BlockPtr pre, inner, post;
};

// One layer of a stack: a token mixer (attention, Mamba ...) and a channel MLP (dense or MoE), each a
// residual sub-layer with optional norms around it. Norm placements (`norm_after_add` false unless said):
//   pre (Llama):             x += f(norm(x))              in_norm
//   sandwich (Gemma 2/3):    x += out_norm(f(norm(x)))    in_norm, out_norm
//   output (OLMo 2):         x += out_norm(f(x))          out_norm
//   post (BERT, GPT-1):      x = out_norm(x + f(x))       out_norm, norm_after_add
// parallel (GPT-J, Falcon, Cohere): x += mixer(n(x)) + mlp(n'(x)), n' = mlp_norm or else attn_norm.
// residual_scale multiplies what each sub-layer adds (Granite's residual_multiplier).
// Either mixer or mlp may be absent (a Mamba-only layer has no MLP). Children are named by role:
// "attn" / "mlp" / "moe" ..., and "attn_norm", "attn_post_norm", "mlp_norm", "mlp_post_norm".
class Layer : public Block {
 public:
  Layer(BlockPtr mixer, BlockPtr mlp, BlockPtr attn_norm, BlockPtr attn_post_norm, BlockPtr mlp_norm,
        BlockPtr mlp_post_norm, bool parallel, bool norm_after_add, float residual_scale = 1.f);
  Tensor forward(Context& ctx, const Tensor& x) override;
  std::vector<std::pair<std::string, BlockPtr>> named_children() const override;
  std::string kind() const override { return "Layer"; }
  std::string role() const override { return "layer"; }
  int64_t in_dim() const override { return dim_; }
  BlockPtr mixer, mlp, attn_norm, attn_post_norm, mlp_norm, mlp_post_norm;
  bool parallel, norm_after_add;
  float residual_scale;

 private:
  int64_t dim_ = -1;
};

// x @ weight^T + bias: a projection as a block (any weight dtype ops::linear reads).
class Linear : public Block {
 public:
  Linear(Tensor weight, Tensor bias);
  Tensor forward(Context& ctx, const Tensor& x) override;
  std::vector<std::pair<std::string, Tensor>> weights() const override;
  std::string kind() const override { return "Linear"; }
  std::string role() const override { return "linear"; }
  int64_t in_dim() const override { return weight.dim(1); }
  int64_t out_dim() const override { return weight.dim(0); }
  Tensor weight, bias;  // (out, in), (out,) optional
};

// [x | e]: each token's features beside its embedding (Context::embeddings), (N, D) -> (N, D + De). The
// input of Zamba2's shared transformer blocks; a model holding one keeps the embeddings of each pass.
class ConcatEmbeddings : public Block {
 public:
  ConcatEmbeddings(int64_t dim, int64_t embed_dim);
  Tensor forward(Context& ctx, const Tensor& x) override;
  std::string kind() const override { return "ConcatEmbeddings"; }
  std::string role() const override { return "concat"; }
  int64_t in_dim() const override { return dim; }
  int64_t out_dim() const override { return dim + embed_dim; }
  int64_t dim, embed_dim;
};

// Blocks applied in order.
class Sequential : public Block {
 public:
  explicit Sequential(std::vector<BlockPtr> blocks);
  Tensor forward(Context& ctx, const Tensor& x) override;
  std::vector<std::pair<std::string, BlockPtr>> named_children() const override;  // "0", "1", ...
  std::string kind() const override { return "Sequential"; }
  int64_t in_dim() const override;
  int64_t out_dim() const override;
  std::vector<BlockPtr> blocks;
};

// The sum of its blocks' outputs on one input: Falcon-H1's attention and Mamba2 side by side; with an empty
// Sequential (the identity) among them, x + f(x) as a new tensor. Every block maps the same features in to
// the same features out and must not change its input in place (a Residual or a Layer does). Children are
// named by role ("attn", "mamba") when the roles differ, else "0", "1", ...
class Parallel : public Block {
 public:
  explicit Parallel(std::vector<BlockPtr> blocks);
  Tensor forward(Context& ctx, const Tensor& x) override;
  std::vector<std::pair<std::string, BlockPtr>> named_children() const override;
  std::string kind() const override { return "Parallel"; }
  std::string role() const override { return "mixer"; }
  int64_t in_dim() const override { return in_; }
  int64_t out_dim() const override { return out_; }
  std::vector<BlockPtr> blocks;

 private:
  int64_t in_ = -1, out_ = -1;
};

// What a forward pass captures or replaces. A point of a block is "in" or "out" of any block, or one a
// block offers itself (Attention: "probs"; MoE: "router", "experts", "expert_weights"; Mamba, Mamba2:
// "dt", "state_norm"). Captured values
// are tensors whose first axis is the batch's tokens; a hook copies what it keeps.
class Hooks {
 public:
  virtual ~Hooks() = default;
  virtual bool wants(const std::string& path, const char* point) const = 0;
  virtual void capture(const std::string& path, const char* point, const Context& ctx, const Tensor& value) = 0;
  virtual bool replaces(const std::string& path) const = 0;
  // The output to use instead of `out` (same shape), or `out` itself.
  virtual Tensor replace(const std::string& path, const Context& ctx, const Tensor& out) = 0;
};

// Hand `value` (computed by `make()` only when wanted) to the pass's hooks as `point` of block b.
template <class Make>
inline void capture_point(Context& ctx, const Block& b, const char* point, Make&& make) {
  if (ctx.hooks && ctx.hooks->wants(b.path, point)) ctx.hooks->capture(b.path, point, ctx, make());
}
inline bool wants_point(const Context& ctx, const Block& b, const char* point) {
  return ctx.hooks && ctx.hooks->wants(b.path, point);
}

// A hook pattern as (block glob, point): the last name picks the point when it is a known one
// ("in", "out", "probs", "router", "experts", "expert_weights", "dt", "state_norm"), else the point is "out".
struct HookPattern {
  std::string block, point;
};
HookPattern split_pattern(const std::string& pattern);
bool glob_match(const std::string& pattern, const std::string& path);

// Hooks from glob patterns: "layers.*.attn.probs" ('*' matches within one dot-separated name, '**'
// across names); a last name that is a known point ("in", "out", "probs", ...) picks the point, else
// "out". Captures are kept as copies in order; replacements call a function with the output.
class PatternHooks : public Hooks {
 public:
  using Replace = std::function<Tensor(const std::string& path, const Context& ctx, const Tensor& out)>;
  void add_capture(const std::string& pattern);
  void add_replace(const std::string& pattern, Replace fn);
  bool wants(const std::string& path, const char* point) const override;
  void capture(const std::string& path, const char* point, const Context& ctx, const Tensor& value) override;
  bool replaces(const std::string& path) const override;
  Tensor replace(const std::string& path, const Context& ctx, const Tensor& out) override;

  struct Record {
    std::string key;  // "path.point"
    Tensor value;
    std::vector<int64_t> pos;  // position of each row's token
    std::vector<int32_t> seq;  // sequence of each row's token
  };
  std::vector<Record> records;
  std::vector<std::string> capture_patterns;  // as given

 private:
  std::vector<HookPattern> captures_;
  std::vector<std::pair<HookPattern, Replace>> replaces_;
};

// Keys and values of every attention block for S sequences, and the recurrent state of every stateful
// block (Block::state_shapes; each tensor (S, ...) f32, zero for a fresh or cleared sequence). A global layer keeps C = n_ctx positions;
// a sliding-window layer keeps a ring of window + n_batch - 1 (a chunk of n_batch new tokens is written
// before it is attended to, and its first query still needs window - 1 older keys).
class KVCache {
 public:
  struct Layer {
    const Attention* block;
    int64_t n_kv_heads, head_dim, capacity, window;
    Tensor k, v;  // (S, Hkv, C, hd), f32 or f16
  };
  struct State {
    const Block* block;
    std::vector<Tensor> tensors;  // (S, ...) each
  };
  KVCache(const std::vector<const Attention*>& blocks, int64_t n_seq, int64_t n_ctx, int64_t n_batch, DType dtype,
          const std::vector<const Block*>& stateful = {});

  Layer& layer(const Attention* block);
  std::vector<Tensor>& state(const Block* block);
  const std::vector<State>& states() const { return states_; }
  int64_t n_seq() const { return int64_t(len_.size()); }
  int64_t n_ctx() const { return n_ctx_; }
  int64_t n_batch() const { return n_batch_; }
  DType dtype() const { return dtype_; }
  int64_t length(int64_t seq) const;
  void clear(int64_t seq = -1);  // one sequence, or all
  int64_t nbytes() const;
  const std::vector<Layer>& layers() const { return layers_; }

  // One sequence's part of the cache as copies: its length, each attention block's keys and values
  // (positions 0 .. length - 1, or the whole ring of a window that wrapped) and each stateful block's
  // tensors, under the block's path. restore() writes one back into a sequence of a cache with the
  // same layout, in this model or a copy of it (prefix caching, branching), and otherwise raises
  // naming the first block that differs: a state from another model is never read as this one's.
  struct Snapshot {
    int64_t length = 0;
    std::vector<std::pair<std::string, std::vector<Tensor>>> entries;  // attention (k, v) first, then states
    int64_t nbytes() const;
  };
  Snapshot snapshot(int64_t seq) const;
  void restore(int64_t seq, const Snapshot& snap);

 private:
  friend class CausalLM;
  std::vector<Layer> layers_;
  std::unordered_map<const Attention*, size_t> index_;
  std::vector<State> states_;
  std::unordered_map<const Block*, size_t> state_index_;
  std::vector<int64_t> len_;  // (S,) positions filled per sequence
  int64_t n_ctx_, n_batch_;
  DType dtype_;
};

enum class Logits { last, all, none };

// Token embedding (scaled by embed_scale), the body, a final norm, the output head (lm_head or the
// tied embedding), logits multiplied by logit_scale (Granite divides by its logits_scaling) and an
// optional final logit softcap.
class CausalLM {
 public:
  CausalLM(Tensor embed_tokens, float embed_scale, BlockPtr body, BlockPtr norm, Tensor lm_head, float final_softcap);

  // tokens (N,) i32 in [0, V); seq (N,) i32 or undefined (all in sequence 0). Returns logits (N, V) for
  // Logits::all, (R, V) for the last token of each of the R sequences in the batch (in order of first
  // appearance) for Logits::last, and an empty tensor for none. Long batches run in chunks of n_batch.
  // hooks (optional) see every block's points on the way (paths: "layers.3.attn", "norm").
  Tensor forward(KVCache& cache, const Tensor& tokens, const Tensor& seq, Logits logits, Hooks* hooks = nullptr);

  std::shared_ptr<KVCache> make_cache(int64_t n_seq, int64_t n_ctx, int64_t n_batch, DType dtype) const;
  const std::vector<const Attention*>& attention_blocks() const { return attention_; }
  const std::vector<const Block*>& stateful_blocks() const { return stateful_; }
  int64_t vocab_size() const { return lm_head.dim(0); }
  int64_t model_dim() const { return embed_tokens.dim(1); }
  bool tied() const { return lm_head.raw() == embed_tokens.raw(); }  // the embedding is the head

  Tensor embed_tokens;  // (V, D), any dtype embedding() reads
  float embed_scale;
  BlockPtr body, norm;
  Tensor lm_head;  // (V, D)
  float final_softcap;
  float logit_scale = 1.f;

 private:
  std::vector<const Attention*> attention_;  // found once in body: what a cache holds
  std::vector<const Block*> stateful_;
  bool keep_embeddings_ = false;  // a ConcatEmbeddings reads them (Context::embeddings)
  std::vector<std::shared_ptr<ops::PackedWeight>> packed_;  // weights repacked for this CPU's kernels
  void pack_weights();
  Tensor forward_chunk(KVCache& cache, const int32_t* tokens, Context& ctx, Logits logits);
};

}  // namespace lb::blocks
#include "lmblocks/moe.h"  // IWYU pragma: export
#include "lmblocks/mamba.h"  // IWYU pragma: export

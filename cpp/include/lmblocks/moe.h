// Mixture of Experts blocks (cpp/src/blocks/moe.cpp). Included by lmblocks/blocks.h.
#pragma once
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "lmblocks/blocks.h"

namespace lb::blocks {

// How router logits become expert scores: softmax over all E experts (Mixtral, Qwen, OLMoE, Granite)
// or an independent sigmoid per expert (DeepSeek-V3).
enum class Scoring { softmax, sigmoid };
Scoring scoring_from_name(const std::string& name);  // "softmax", "sigmoid"
const char* scoring_name(Scoring s);

struct MoEConfig {
  int64_t top_k = 0;
  Scoring scoring = Scoring::softmax;
  // Weights of the k chosen experts divided by their sum (Mixtral, Qwen3-MoE, Granite's softmax over the
  // k chosen logits), or the raw scores (Qwen2-MoE, OLMoE: norm_topk_prob false).
  bool norm_topk = true;
  float routed_scale = 1.f;  // multiplies the final weights (DeepSeek's routed_scaling_factor)
  Activation act = Activation::silu;
};

// A sparse MLP (Shazeer et al. 2017; Mixtral, Jiang et al. 2024): each token goes to the top_k of E
// experts by router score, and the experts' outputs are summed with the routing weights:
//   s = score(x @ router^T + router_bias)                      (N, E)
//   chosen = top_k(s + selection_bias)                          the bias only picks (DeepSeek-V3)
//   w = s[chosen] (/ sum) * routed_scale                        (N, k)
//   out = sum_j w_j * down_e(act(gate_e(x)) * up_e(x))          e = chosen_j; plain experts: act(up_e(x))
//         + sigmoid(x . shared_gate) * shared(x)                 optional (Qwen2-MoE; ungated without the gate)
// Experts are stacked, one tensor per projection, any weight dtype ops::linear reads (f32, f16, bf16,
// ggml blocks as GGUF stores ffn_gate_exps): expert e's matrix is the view select(0, e). Ties between
// scores go to the lower expert index. Hook points: "router" (N, E) f32 logits, "experts" (N, k) i32
// chosen experts in order of score, "expert_weights" (N, k) f32 the weights applied.
class MoE : public Block {
 public:
  MoE(const MoEConfig& cfg, Tensor router, Tensor gate_proj, Tensor up_proj, Tensor down_proj, Tensor router_bias = {},
      Tensor selection_bias = {}, std::shared_ptr<MLP> shared = nullptr, Tensor shared_gate = {});
  Tensor forward(Context& ctx, const Tensor& x) override;
  std::vector<std::pair<std::string, BlockPtr>> named_children() const override;  // "shared"
  std::vector<std::pair<std::string, Tensor>> weights() const override;
  std::string kind() const override { return "MoE"; }
  std::string role() const override { return "moe"; }
  int64_t in_dim() const override { return router.dim(1); }
  int64_t n_experts() const { return router.dim(0); }
  int64_t expert_dim() const { return up_proj.dim(1); }
  bool gated() const { return gate_proj.defined(); }

  MoEConfig cfg;
  Tensor router;                          // (E, D)
  Tensor gate_proj, up_proj, down_proj;   // (E, F, D) (E, F, D) (E, D, F); gate_proj undefined: plain experts
  Tensor router_bias, selection_bias;     // optional (E,) each
  std::shared_ptr<MLP> shared;            // optional dense expert every token goes through
  Tensor shared_gate;                     // optional (1, D) or (D,)

 private:
  // The chosen experts through their repacked weights (CausalLM packs them at load), all experts' products
  // of a projection in one pass over the pool; false, doing nothing, unless every matrix is packed.
  // first: (E + 1) each expert's first slot in `slots` (slot t * k + j, grouped by expert); y: (N*k, D).
  bool packed_experts(const Tensor& x, const std::vector<int64_t>& first, const std::vector<int64_t>& slots,
                      const std::vector<int64_t>& active, Tensor& y) const;
};

}  // namespace lb::blocks

// Mixture of Experts (Shazeer et al. 2017, "Outrageously large neural networks"; Mixtral, Jiang et al.
// 2024): a router picks top_k of E expert MLPs per token and sums their outputs with the routing weights.
// Tokens are grouped by expert, so each chosen expert runs one product per projection on its group and
// the experts no token chose are never read (decode reads k experts' weights, not E).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "blocks/common.h"
#include "lmblocks/blocks.h"
#include "lmblocks/error.h"
#include "lmblocks/runtime.h"

namespace lb::blocks {

Scoring scoring_from_name(const std::string& s) {
  if (s == "softmax") return Scoring::softmax;
  if (s == "sigmoid") return Scoring::sigmoid;
  throw ValueError("MoE: scoring '" + s + "' is not one of 'softmax', 'sigmoid'");
}

const char* scoring_name(Scoring s) { return s == Scoring::softmax ? "softmax" : "sigmoid"; }

namespace {

// A stacked (E, rows, cols) expert weight that linear() can read one expert at a time.
void check_stacked(const Tensor& w, int64_t E, int64_t rows, int64_t cols, const char* name, const char* letters) {
  if (!w.defined() || w.ndim() != 3 || w.dim(0) != E || w.dim(1) != rows || w.dim(2) != cols)
    throw ValueError(std::string("MoE: ") + name + " has shape " +
                     (w.defined() ? shape_str(w.shape()) : std::string("none")) + "; expected " + letters + " = (" +
                     std::to_string(E) + ", " + std::to_string(rows) + ", " + std::to_string(cols) + ")");
  detail::check_matrix(w.select(0, 0), rows, cols, "MoE", name);  // the dtype, in the same words as MLP's
}

// One token's routing: the k best of E scores (ties to the lower index), their weights.
// l: (E,) logits; sel: (E,) selection bias or null; s: (E,) scratch; idx, w: (k,) out.
void route(const MoEConfig& c, const float* l, const float* sel, int64_t E, float* s, int32_t* idx, float* w) {
  if (c.scoring == Scoring::softmax) {
    float mx = l[0], sum = 0.f;
    for (int64_t e = 1; e < E; ++e) mx = std::max(mx, l[e]);
    for (int64_t e = 0; e < E; ++e) sum += s[e] = std::exp(l[e] - mx);
    for (int64_t e = 0; e < E; ++e) s[e] /= sum;
  } else {
    for (int64_t e = 0; e < E; ++e) s[e] = 1.f / (1.f + std::exp(-l[e]));
  }
  // Softmax is monotonic: without a selection bias, choose on the logits, where rounding makes no ties.
  const bool on_logits = c.scoring == Scoring::softmax && !sel;
  auto key = [&](int64_t e) { return on_logits ? l[e] : sel ? s[e] + sel[e] : s[e]; };
  float total = 0.f;
  for (int64_t j = 0; j < c.top_k; ++j) {
    int64_t best = -1;
    for (int64_t e = 0; e < E; ++e) {
      bool taken = false;
      for (int64_t i = 0; i < j && !taken; ++i) taken = idx[i] == e;
      if (!taken && (best < 0 || key(e) > key(best))) best = e;
    }
    idx[j] = int32_t(best);
    total += w[j] = s[best];
  }
  const float f = c.routed_scale / (c.norm_topk ? total : 1.f);
  for (int64_t j = 0; j < c.top_k; ++j) w[j] *= f;
}

}  // namespace

MoE::MoE(const MoEConfig& c, Tensor r, Tensor g, Tensor u, Tensor d, Tensor rb, Tensor sb, std::shared_ptr<MLP> sh,
         Tensor sg)
    : cfg(c), router(std::move(r)), gate_proj(std::move(g)), up_proj(std::move(u)), down_proj(std::move(d)),
      router_bias(std::move(rb)), selection_bias(std::move(sb)), shared(std::move(sh)), shared_gate(std::move(sg)) {
  if (!router.defined() || router.ndim() != 2 || router.dim(0) < 1)
    throw ValueError("MoE: router must be a 2-D (E, D) weight with E >= 1, got " +
                     (router.defined() ? shape_str(router.shape()) : std::string("none")));
  const int64_t E = router.dim(0), D = router.dim(1);
  detail::check_matrix(router, E, D, "MoE", "router");
  if (cfg.top_k < 1 || cfg.top_k > E)
    throw ValueError("MoE: top_k is " + std::to_string(cfg.top_k) + "; expected 1 <= top_k <= n_experts (" +
                     std::to_string(E) + ")");
  if (!std::isfinite(cfg.routed_scale)) throw ValueError("MoE: routed_scale must be finite");
  if (!up_proj.defined() || up_proj.ndim() != 3)
    throw ValueError("MoE: up_proj must be a stacked 3-D (E, F, D) weight, got " +
                     (up_proj.defined() ? shape_str(up_proj.shape()) : std::string("none")));
  const int64_t F = up_proj.dim(1);
  check_stacked(up_proj, E, F, D, "up_proj", "(E, F, D)");
  if (gate_proj.defined()) check_stacked(gate_proj, E, F, D, "gate_proj", "(E, F, D)");
  check_stacked(down_proj, E, D, F, "down_proj", "(E, D, F)");
  detail::check_vector(router_bias, E, "MoE", "router_bias");
  detail::check_vector(selection_bias, E, "MoE", "selection_bias");
  for (const auto& [name, b] : {std::pair<const char*, const Tensor*>{"router_bias", &router_bias},
                                {"selection_bias", &selection_bias}})
    if (b->defined() && b->dtype() != DType::f32 && b->dtype() != DType::f16 && b->dtype() != DType::bf16)
      throw TypeError(std::string("MoE: ") + name + " has dtype " + lb::name(b->dtype()) +
                      "; expected f32, f16 or bf16");
  if (selection_bias.defined() && selection_bias.dtype() != DType::f32) selection_bias = selection_bias.to(DType::f32);
  if (shared && shared->in_dim() != D)
    throw ValueError("MoE: the shared expert takes " + std::to_string(shared->in_dim()) +
                     " features but the router takes D=" + std::to_string(D));
  if (shared_gate.defined()) {
    if (!shared) throw ValueError("MoE: shared_gate without a shared expert");
    if (shared_gate.ndim() == 1) shared_gate = shared_gate.unsqueeze(0);
    detail::check_matrix(shared_gate, 1, D, "MoE", "shared_gate");
  }
}

Tensor MoE::forward(Context& ctx, const Tensor& x_in) {
  const int64_t D = in_dim(), E = n_experts(), k = cfg.top_k;
  if (x_in.ndim() != 2 || x_in.dim(1) != D)
    throw ValueError("MoE: input has shape " + shape_str(x_in.shape()) + "; expected (N, " + std::to_string(D) + ")");
  const Tensor x = x_in.dtype() == DType::f32 ? x_in.contiguous() : x_in.to(DType::f32);  // (N, D)
  const int64_t N = x.dim(0);

  const Tensor logits = ops::linear(x, router, router_bias);  // (N, E)
  capture_point(ctx, *this, "router", [&] { return logits; });
  Tensor chosen = Tensor::empty({N, k}, DType::i32);  // (N, k) expert of each slot, best first
  Tensor weight = Tensor::empty({N, k});              // (N, k)
  {
    const float* lp = logits.data<float>();
    const float* sel = selection_bias.defined() ? selection_bias.data<float>() : nullptr;
    int32_t* ip = chosen.data<int32_t>();
    float* wp = weight.data<float>();
    parallel_for(N, std::max<int64_t>(1, 4096 / (E * k)), [&](int64_t a, int64_t b) {
      std::vector<float> s(static_cast<size_t>(E));
      for (int64_t t = a; t < b; ++t) route(cfg, lp + t * E, sel, E, s.data(), ip + t * k, wp + t * k);
    });
  }
  capture_point(ctx, *this, "experts", [&] { return chosen; });
  capture_point(ctx, *this, "expert_weights", [&] { return weight; });

  // Slots t*k + j grouped by expert (a counting sort): expert e's are slots[first[e] .. first[e+1]), in
  // token order. A token picks an expert at most once.
  std::vector<int64_t> first(size_t(E + 1), 0), slots(size_t(N * k));
  const int32_t* ip = chosen.data<int32_t>();
  for (int64_t i = 0; i < N * k; ++i) ++first[size_t(ip[i]) + 1];
  for (int64_t e = 0; e < E; ++e) first[size_t(e + 1)] += first[size_t(e)];
  {
    std::vector<int64_t> at(first.begin(), first.end() - 1);
    for (int64_t i = 0; i < N * k; ++i) slots[size_t(at[size_t(ip[i])]++)] = i;
  }
  std::vector<int64_t> active;
  for (int64_t e = 0; e < E; ++e)
    if (first[size_t(e + 1)] > first[size_t(e)]) active.push_back(e);

  // Each chosen expert on its tokens; outputs land in per-slot rows, so experts run side by side (each
  // product is itself split over the pool) and the sum below has one order whatever the batch.
  Tensor y = Tensor::empty({N * k, D});  // (N*k, D) expert output of each slot
  parallel_for(int64_t(active.size()), 1, [&](int64_t a, int64_t b) {
    for (int64_t i = a; i < b; ++i) {
      const int64_t e = active[size_t(i)], s0 = first[size_t(e)], n = first[size_t(e + 1)] - s0;
      Tensor xe = x;  // (n, D) the tokens routed to e: all of x when every token is (decode)
      if (n != N) {
        xe = Tensor::empty({n, D});
        for (int64_t r = 0; r < n; ++r)
          std::memcpy(xe.data<float>() + r * D, x.data<float>() + slots[size_t(s0 + r)] / k * D, size_t(D) * 4);
      }
      Tensor h = ops::linear(xe, up_proj.select(0, e));  // (n, F)
      if (gated()) {
        Tensor g = ops::linear(xe, gate_proj.select(0, e));
        activate_gated(g, h, cfg.act);
        h = g;
      } else {
        activate(h, cfg.act);
      }
      const Tensor ye = ops::linear(h, down_proj.select(0, e));  // (n, D)
      for (int64_t r = 0; r < n; ++r)
        std::memcpy(y.data<float>() + slots[size_t(s0 + r)] * D, ye.data<float>() + r * D, size_t(D) * 4);
    }
  });

  Tensor sh, sg;  // (N, D) shared expert, (N, 1) its gate logit
  if (shared) sh = shared->run(ctx, x);
  if (shared_gate.defined()) sg = ops::linear(x, shared_gate);
  Tensor out = Tensor::empty({N, D});
  const float* yp = y.data<float>();
  const float* wp = weight.data<float>();
  float* op = out.data<float>();
  parallel_for(N, std::max<int64_t>(1, 8192 / (D * k)), [&](int64_t a, int64_t b) {
    for (int64_t t = a; t < b; ++t) {
      float* o = op + t * D;
      if (sh.defined()) {
        const float* h = sh.data<float>() + t * D;
        const float gs = sg.defined() ? 1.f / (1.f + std::exp(-sg.data<float>()[t])) : 1.f;
        for (int64_t c = 0; c < D; ++c) o[c] = gs * h[c];
      } else {
        std::memset(o, 0, size_t(D) * 4);
      }
      for (int64_t j = 0; j < k; ++j) {
        const float w = wp[t * k + j];
        const float* r = yp + (t * k + j) * D;
        for (int64_t c = 0; c < D; ++c) o[c] += w * r[c];
      }
    }
  });
  return out;
}

std::vector<std::pair<std::string, BlockPtr>> MoE::named_children() const {
  if (shared) return {{"shared", shared}};
  return {};
}

std::vector<std::pair<std::string, Tensor>> MoE::weights() const {
  std::vector<std::pair<std::string, Tensor>> w = {{"router", router}};
  for (const auto& [name, t] : {std::pair<const char*, const Tensor*>{"router_bias", &router_bias},
                                {"selection_bias", &selection_bias}, {"gate_proj", &gate_proj},
                                {"up_proj", &up_proj}, {"down_proj", &down_proj}, {"shared_gate", &shared_gate}})
    if (t->defined()) w.emplace_back(name, *t);
  return w;
}

}  // namespace lb::blocks

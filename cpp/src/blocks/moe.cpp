// Mixture of Experts (Shazeer et al. 2017, "Outrageously large neural networks"; Mixtral, Jiang et al.
// 2024): a router picks top_k of E expert MLPs per token and sums their outputs with the routing weights.
// Tokens are grouped by expert, so each chosen expert runs one product per projection on its group and
// the experts no token chose are never read (decode reads k experts' weights, not E).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <vector>

#include "blocks/common.h"
#include "lmblocks/blocks.h"
#include "lmblocks/error.h"
#include "lmblocks/quant.h"
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

// One product of the packed path: y (a.M, w.N), rows ldy apart, = a @ W^T.
struct Product {
  const ops::PackedActivations* a;
  const ops::PackedWeight* w;
  float* y;
  int64_t ldy;
};

// Every product's 16-row groups in one pass over the pool, each thread one contiguous run of about equal
// cost, so the k experts of a decode step stream side by side and no product waits on another's join. A
// prefill group costs its tokens rounded up to the kernel's tiles of 12, plus 16 for decoding its weights
// into a panel (perf on the OLMoE-shaped bench file: 11% of the time beside 47% for ~70 tokens' tiles);
// a decode group is one read of its weights.
void run_products(const std::vector<Product>& ps) {
  std::vector<int64_t> start(ps.size() + 1, 0), cost(ps.size()), groups(ps.size());  // start: cost before p
  for (size_t p = 0; p < ps.size(); ++p) {
    const int64_t M = ps[p].a->M;
    groups[p] = (ps[p].w->N + 15) / 16;
    cost[p] = M < 4 ? 1 : (M + 11) / 12 * 12 + 16;
    start[p + 1] = start[p] + groups[p] * cost[p];
  }
  const int64_t total = start.back(), T = std::min<int64_t>(num_threads(), std::max<int64_t>(total, 1));
  parallel_for(T, 1, [&](int64_t t0, int64_t t1) {
    const int64_t lo = total * t0 / T, hi = total * t1 / T;  // the groups that start in [lo, hi)
    for (size_t p = 0; p < ps.size(); ++p) {
      const auto first_at = [&](int64_t c) {
        return std::clamp<int64_t>((c - start[p] + cost[p] - 1) / cost[p], 0, groups[p]);
      };
      const int64_t g0 = first_at(lo), g1 = first_at(hi);
      if (g0 < g1) ops::qlinear_packed_groups(*ps[p].a, *ps[p].w, g0, g1, ps[p].y, ps[p].ldy);
    }
  });
}

// q, d, s of activation row r of QuantizedRows a (K per row).
struct RowRef {
  const int16_t* q;
  const float* d;
  const float* s;
};
RowRef row_of(const ops::QuantizedRows& a, int64_t r) {
  return {a.q.data() + r * a.K, a.d.data() + r * a.K / 32, a.s.data() + r * a.K / 16};
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

  // Each chosen expert on its tokens; outputs land in y's rows grouped by expert (row p is slot slots[p]),
  // so the sum below has one order whatever the batch.
  Tensor y = Tensor::empty({N * k, D});  // (N*k, D) expert output of each slot, grouped by expert
  if (!packed_experts(x, first, slots, active, y))
    parallel_for(int64_t(active.size()), 1, [&](int64_t a, int64_t b) {  // experts side by side, each product
      for (int64_t i = a; i < b; ++i) {                                    // itself split over the pool
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
        ops::linear(h, down_proj.select(0, e), {}, y.slice(0, s0, s0 + n));
      }
    });
  std::vector<int64_t> row(size_t(N * k));  // row of y holding slot i
  for (int64_t p = 0; p < N * k; ++p) row[size_t(slots[size_t(p)])] = p;

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
        const float* r = yp + row[size_t(t * k + j)] * D;
        for (int64_t c = 0; c < D; ++c) o[c] += w * r[c];
      }
    }
  });
  return out;
}

bool MoE::packed_experts(const Tensor& x, const std::vector<int64_t>& first, const std::vector<int64_t>& slots,
                         const std::vector<int64_t>& active, Tensor& y) const {
  if (!activation_quantization() || !ops::packable(up_proj.dtype()) || !ops::packable(down_proj.dtype()) ||
      (gated() && !ops::packable(gate_proj.dtype())))
    return false;
  const int64_t N = x.dim(0), D = in_dim(), F = expert_dim(), k = cfg.top_k, A = int64_t(active.size());
  struct Expert {
    std::shared_ptr<const ops::PackedWeight> gate, up, down;
    int64_t s0, n;  // its rows of y: [s0, s0 + n)
    const ops::PackedActivations* x;
    ops::PackedActivations own_x, h;
  };
  std::vector<Expert> ex(static_cast<size_t>(A));
  for (int64_t i = 0; i < A; ++i) {
    const int64_t e = active[size_t(i)];
    Expert& E = ex[size_t(i)];
    E.up = ops::find_packed(up_proj.select(0, e));
    E.down = ops::find_packed(down_proj.select(0, e));
    if (gated()) E.gate = ops::find_packed(gate_proj.select(0, e));
    if (!E.up || !E.down || (gated() && !E.gate)) return false;
    E.s0 = first[size_t(e)];
    E.n = first[size_t(e + 1)] - E.s0;
  }

  // x quantized once for every expert and projection; the experts every token chose (all k of them in
  // decode) share one set of packed activations, the others gather their tokens' rows.
  const ops::QuantizedRows xq = ops::quantize_rows(x.data<float>(), N, D, D, false, ops::activation_bits_for(N));
  ops::PackedActivations all;
  if (std::any_of(ex.begin(), ex.end(), [&](const Expert& E) { return E.n == N; })) {
    const RowRef x0 = row_of(xq, 0);
    all = ops::pack_activations(x0.q, x0.d, x0.s, N, D, xq.bits);
  }
  parallel_for(A, 1, [&](int64_t a, int64_t b) {
    for (int64_t i = a; i < b; ++i) {
      Expert& E = ex[size_t(i)];
      E.x = &all;
      if (E.n == N) continue;
      Buffer<int16_t> q(size_t(E.n * D));
      Buffer<float> d(size_t(E.n * D / 32)), s(size_t(E.n * D / 16));
      for (int64_t r = 0; r < E.n; ++r) {
        const RowRef src = row_of(xq, slots[size_t(E.s0 + r)] / k);
        std::memcpy(q.data() + r * D, src.q, size_t(D) * 2);
        std::memcpy(d.data() + r * D / 32, src.d, size_t(D / 32) * 4);
        std::memcpy(s.data() + r * D / 16, src.s, size_t(D / 16) * 4);
      }
      E.own_x = ops::pack_activations(q.data(), d.data(), s.data(), E.n, D, xq.bits);
      E.x = &E.own_x;
    }
  });

  // gate and up of every expert in one pass, the activation, h quantized (its rows are already grouped by
  // expert), then down in a second pass straight into y.
  Tensor g = gated() ? Tensor::empty({N * k, F}) : Tensor(), u = Tensor::empty({N * k, F});  // (N*k, F) each
  std::vector<Product> ps;
  for (Expert& E : ex) {
    if (gated()) ps.push_back({E.x, E.gate.get(), g.data<float>() + E.s0 * F, F});
    ps.push_back({E.x, E.up.get(), u.data<float>() + E.s0 * F, F});
  }
  run_products(ps);
  if (gated()) {
    activate_gated(g, u, cfg.act);
    u = g;
  } else {
    activate(u, cfg.act);
  }
  const ops::QuantizedRows hq = ops::quantize_rows(u.data<float>(), N * k, F, F, false, ops::activation_bits_for(N));
  parallel_for(A, 1, [&](int64_t a, int64_t b) {
    for (int64_t i = a; i < b; ++i) {
      Expert& E = ex[size_t(i)];
      const RowRef h0 = row_of(hq, E.s0);
      E.h = ops::pack_activations(h0.q, h0.d, h0.s, E.n, F, hq.bits);
    }
  });
  ps.clear();
  for (Expert& E : ex) ps.push_back({&E.h, E.down.get(), y.data<float>() + E.s0 * D, D});
  run_products(ps);
  return true;
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

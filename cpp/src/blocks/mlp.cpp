// The MLP: down(act(gate(x)) * up(x)) (Shazeer 2020, "GLU variants improve transformer"), or the plain
// down(act(up(x))) of GPT-2 and BERT. Activations as the blocks name them.
#include <algorithm>

#include "blocks/common.h"
#include "lmblocks/blocks.h"
#include "lmblocks/error.h"
#include "lmblocks/runtime.h"

namespace lb::blocks {

Activation activation_from_name(const std::string& s) {
  if (s == "silu" || s == "swish") return Activation::silu;
  if (s == "gelu_tanh" || s == "gelu_pytorch_tanh" || s == "gelu_new") return Activation::gelu_tanh;
  if (s == "gelu" || s == "gelu_erf") return Activation::gelu_erf;
  if (s == "relu") return Activation::relu;
  if (s == "relu2" || s == "relu_squared" || s == "relu2_squared") return Activation::relu2;
  throw ValueError("activation '" + s + "' is not one of 'silu', 'gelu_tanh', 'gelu', 'relu', 'relu2'");
}

const char* activation_name(Activation a) {
  switch (a) {
    case Activation::silu: return "silu";
    case Activation::gelu_tanh: return "gelu_tanh";
    case Activation::gelu_erf: return "gelu";
    case Activation::relu: return "relu";
    case Activation::relu2: return "relu2";
  }
  return "?";
}

namespace {

void relu_inplace(float* p, int64_t n, bool squared) {
  parallel_for(n, 1 << 14, [&](int64_t a, int64_t b) {
    for (int64_t i = a; i < b; ++i) {
      const float r = std::max(p[i], 0.f);
      p[i] = squared ? r * r : r;
    }
  });
}

}  // namespace

void activate(Tensor& h, Activation act) {
  switch (act) {
    case Activation::silu: ops::silu(h, h); break;
    case Activation::gelu_tanh: ops::gelu(h, ops::Gelu::tanh, h); break;
    case Activation::gelu_erf: ops::gelu(h, ops::Gelu::erf, h); break;
    case Activation::relu:
    case Activation::relu2: relu_inplace(h.data<float>(), h.numel(), act == Activation::relu2); break;
  }
}

void activate_gated(Tensor& g, const Tensor& u, Activation act) {
  switch (act) {
    case Activation::silu: ops::swiglu(g, u, g); break;
    case Activation::gelu_tanh: ops::geglu(g, u, ops::Gelu::tanh, g); break;
    case Activation::gelu_erf: ops::geglu(g, u, ops::Gelu::erf, g); break;
    case Activation::relu:
    case Activation::relu2:
      activate(g, act);
      ops::mul(g, u, g);
      break;
  }
}

MLP::MLP(Tensor gate, Tensor up, Tensor down, Activation act_, Tensor ub, Tensor db, Tensor gb)
    : gate_proj(std::move(gate)), up_proj(std::move(up)), down_proj(std::move(down)), gate_bias(std::move(gb)),
      up_bias(std::move(ub)), down_bias(std::move(db)), act(act_) {
  if (!up_proj.defined() || up_proj.ndim() != 2) throw ValueError("MLP: up_proj must be a 2-D (F, D) weight");
  const int64_t F = up_proj.dim(0), D = up_proj.dim(1);
  if (gate_proj.defined()) detail::check_matrix(gate_proj, F, D, "MLP", "gate_proj");
  detail::check_matrix(up_proj, F, D, "MLP", "up_proj");
  detail::check_matrix(down_proj, D, F, "MLP", "down_proj");
  if (gate_bias.defined() && !gate_proj.defined()) throw ValueError("MLP: gate_bias without gate_proj");
  detail::check_vector(gate_bias, F, "MLP", "gate_bias");
  detail::check_vector(up_bias, F, "MLP", "up_bias");
  detail::check_vector(down_bias, D, "MLP", "down_bias");
}

void MLP::set_adapter(const std::string& proj, LowRank a) {
  LowRank* dst = proj == "gate_proj" && gated() ? &gate_lora : proj == "up_proj" ? &up_lora
               : proj == "down_proj" ? &down_lora : nullptr;
  if (!dst) throw ValueError("MLP: no projection '" + proj + "' to adapt (gate_proj, up_proj, down_proj)");
  const Tensor& w = proj == "gate_proj" ? gate_proj : proj == "up_proj" ? up_proj : down_proj;
  detail::check_adapter(a, w.dim(0), w.dim(1), "MLP", proj);
  *dst = std::move(a);
}

Tensor MLP::forward(Context&, const Tensor& x) {
  Tensor u;  // (N, F)
  if (gate_proj.defined()) {
    std::vector<Tensor> gu = project(x, {{gate_proj, gate_bias, gate_lora}, {up_proj, up_bias, up_lora}});
    activate_gated(gu[0], gu[1], act);
    u = gu[0];
  } else {
    u = project(x, up_proj, up_bias, up_lora);
    activate(u, act);
  }
  return project(u, down_proj, down_bias, down_lora);  // (N, D)
}

std::vector<std::pair<std::string, Tensor>> MLP::weights() const {
  std::vector<std::pair<std::string, Tensor>> w;
  if (gate_proj.defined()) w.emplace_back("gate_proj", gate_proj);
  w.emplace_back("up_proj", up_proj);
  w.emplace_back("down_proj", down_proj);
  for (const auto& [name, t] : {std::pair<const char*, const Tensor*>{"gate_bias", &gate_bias},
                                {"up_bias", &up_bias}, {"down_bias", &down_bias}})
    if (t->defined()) w.emplace_back(name, *t);
  for (const auto& [name, a] : {std::pair<const char*, const LowRank*>{"gate_proj", &gate_lora},
                                {"up_proj", &up_lora}, {"down_proj", &down_lora}})
    if (a->defined()) {
      w.emplace_back(std::string(name) + ".lora_A", a->A);
      w.emplace_back(std::string(name) + ".lora_B", a->B);
    }
  return w;
}

}  // namespace lb::blocks

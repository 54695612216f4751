// The gated MLP: down(act(gate(x)) * up(x)) (Shazeer 2020, "GLU variants improve transformer").
#include "blocks/common.h"
#include "lmblocks/blocks.h"
#include "lmblocks/error.h"

namespace lb::blocks {

MLP::MLP(Tensor gate, Tensor up, Tensor down, Activation act_)
    : gate_proj(std::move(gate)), up_proj(std::move(up)), down_proj(std::move(down)), act(act_) {
  if (!gate_proj.defined() || gate_proj.ndim() != 2) throw ValueError("MLP: gate_proj must be a 2-D (F, D) weight");
  const int64_t F = gate_proj.dim(0), D = gate_proj.dim(1);
  detail::check_matrix(gate_proj, F, D, "MLP", "gate_proj");
  detail::check_matrix(up_proj, F, D, "MLP", "up_proj");
  detail::check_matrix(down_proj, D, F, "MLP", "down_proj");
}

Tensor MLP::forward(Context&, const Tensor& x) {
  Tensor g = ops::linear(x, gate_proj);  // (N, F)
  const Tensor u = ops::linear(x, up_proj);
  switch (act) {
    case Activation::silu: ops::swiglu(g, u, g); break;
    case Activation::gelu_tanh: ops::geglu(g, u, ops::Gelu::tanh, g); break;
    case Activation::gelu_erf: ops::geglu(g, u, ops::Gelu::erf, g); break;
  }
  return ops::linear(g, down_proj);  // (N, D)
}

}  // namespace lb::blocks

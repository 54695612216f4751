// The gated MLP: down(act(gate(x)) * up(x)) (Shazeer 2020, "GLU variants improve transformer").
#include "lmblocks/blocks.h"
#include "lmblocks/error.h"

namespace lb::blocks {

MLP::MLP(Tensor gate, Tensor up, Tensor down, Activation act_)
    : gate_proj(std::move(gate)), up_proj(std::move(up)), down_proj(std::move(down)), act(act_) {
  const auto bad = [](const Tensor& t) { return !t.defined() || t.ndim() != 2; };
  if (bad(gate_proj) || bad(up_proj) || bad(down_proj)) throw ValueError("MLP: gate_proj, up_proj and down_proj must be 2-D");
  if (up_proj.shape() != gate_proj.shape() || down_proj.dim(1) != gate_proj.dim(0) || down_proj.dim(0) != gate_proj.dim(1))
    throw ValueError("MLP: shapes gate_proj " + shape_str(gate_proj.shape()) + ", up_proj " + shape_str(up_proj.shape()) +
                     ", down_proj " + shape_str(down_proj.shape()) + " do not form (F, D), (F, D), (D, F)");
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

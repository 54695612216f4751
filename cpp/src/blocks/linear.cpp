// A projection as a block: x @ weight^T + bias.
#include "blocks/common.h"
#include "lmblocks/blocks.h"

namespace lb::blocks {

Linear::Linear(Tensor w, Tensor b) : weight(std::move(w)), bias(std::move(b)) {
  if (!weight.defined() || weight.ndim() != 2) throw ValueError("Linear: weight must be a 2-D (out, in) tensor");
  detail::check_matrix(weight, weight.dim(0), weight.dim(1), "Linear", "weight");
  detail::check_vector(bias, weight.dim(0), "Linear", "bias");
}

Tensor Linear::forward(Context&, const Tensor& x) {
  if (x.dim(-1) != weight.dim(1))
    throw ValueError("Linear: input has " + std::to_string(x.dim(-1)) + " features, weight takes " +
                     std::to_string(weight.dim(1)));
  return ops::linear(x, weight, bias);
}

std::vector<std::pair<std::string, Tensor>> Linear::weights() const {
  if (bias.defined()) return {{"weight", weight}, {"bias", bias}};
  return {{"weight", weight}};
}

}  // namespace lb::blocks

// RMSNorm as a block: the residual stream's normalisation (Zhang & Sennrich 2019).
#include "lmblocks/blocks.h"
#include "lmblocks/error.h"

namespace lb::blocks {

RMSNorm::RMSNorm(Tensor weight_, float eps_, float offset_) : weight(std::move(weight_)), eps(eps_), offset(offset_) {
  if (!weight.defined() || weight.ndim() != 1)
    throw ValueError("RMSNorm: weight must be a 1-D tensor, got " +
                     (weight.defined() ? shape_str(weight.shape()) : std::string("none")));
  if (!(eps > 0.f)) throw ValueError("RMSNorm: eps must be > 0, got " + std::to_string(eps));
}

Tensor RMSNorm::forward(Context&, const Tensor& x) {
  if (x.dim(-1) != weight.dim(0))
    throw ValueError("RMSNorm: input has " + std::to_string(x.dim(-1)) + " features, weight has " +
                     std::to_string(weight.dim(0)));
  return ops::rms_norm(x, weight, eps, offset);
}

}  // namespace lb::blocks

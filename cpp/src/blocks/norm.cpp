// The residual stream's normalisations as blocks: RMSNorm (Zhang & Sennrich 2019) and LayerNorm (Ba et al. 2016).
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

LayerNorm::LayerNorm(int64_t dim_, Tensor weight_, Tensor bias_, float eps_)
    : dim(dim_), weight(std::move(weight_)), bias(std::move(bias_)), eps(eps_) {
  if (dim <= 0) throw ValueError("LayerNorm: dim must be positive, got " + std::to_string(dim));
  for (const auto& [name, t] : {std::pair<const char*, const Tensor*>{"weight", &weight}, {"bias", &bias}})
    if (t->defined() && (t->ndim() != 1 || t->dim(0) != dim))
      throw ValueError(std::string("LayerNorm: ") + name + " has shape " + shape_str(t->shape()) + "; expected (" +
                       std::to_string(dim) + ",)");
  if (!(eps > 0.f)) throw ValueError("LayerNorm: eps must be > 0, got " + std::to_string(eps));
}

Tensor LayerNorm::forward(Context&, const Tensor& x) {
  if (x.dim(-1) != dim)
    throw ValueError("LayerNorm: input has " + std::to_string(x.dim(-1)) + " features, expected " + std::to_string(dim));
  return ops::layer_norm(x, weight, bias, eps);
}

std::vector<std::pair<std::string, Tensor>> LayerNorm::weights() const {
  std::vector<std::pair<std::string, Tensor>> w;
  if (weight.defined()) w.emplace_back("weight", weight);
  if (bias.defined()) w.emplace_back("bias", bias);
  return w;
}

}  // namespace lb::blocks

// A projection as a block: x @ weight^T + bias; a projection with its low-rank adapter (LowRank); the
// residual stream beside the token embeddings (ConcatEmbeddings).
#include "blocks/common.h"
#include "lmblocks/blocks.h"

#include <cstring>

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

namespace {

Tensor add_adapter(const Tensor& x, Tensor& y, const LowRank& a) {
  if (!a.defined()) return y;
  const Tensor low = ops::linear(x, a.A);  // (N, r)
  return ops::add(y, ops::linear(low, a.B), y);
}

}  // namespace

Tensor project(const Tensor& x, const Tensor& w, const Tensor& bias, const LowRank& a) {
  Tensor y = ops::linear(x, w, bias);
  return add_adapter(x, y, a);
}

std::vector<Tensor> project(const Tensor& x, std::initializer_list<Projection> ps) {
  std::vector<Tensor> ws, bs;
  for (const Projection& p : ps) ws.push_back(p.weight), bs.push_back(p.bias);
  std::vector<Tensor> ys = ops::linears(x, ws, bs);
  size_t i = 0;
  for (const Projection& p : ps) ys[i] = add_adapter(x, ys[i], p.adapter), ++i;
  return ys;
}

ConcatEmbeddings::ConcatEmbeddings(int64_t d, int64_t de) : dim(d), embed_dim(de) {
  if (dim <= 0 || embed_dim <= 0)
    throw ValueError("ConcatEmbeddings: dim " + std::to_string(dim) + " and embed_dim " + std::to_string(embed_dim) +
                     " must be positive");
}

Tensor ConcatEmbeddings::forward(Context& ctx, const Tensor& x) {
  const Tensor& e = ctx.embeddings;
  if (!e.defined()) throw ValueError("ConcatEmbeddings: this pass kept no token embeddings (run it inside a CausalLM)");
  if (x.ndim() != 2 || x.dim(1) != dim || e.dim(0) != x.dim(0) || e.dim(1) != embed_dim)
    throw ValueError("ConcatEmbeddings: input " + shape_str(x.shape()) + " and embeddings " + shape_str(e.shape()) +
                     "; expected (N, " + std::to_string(dim) + ") and (N, " + std::to_string(embed_dim) + ")");
  const Tensor xc = x.contiguous();
  Tensor out = Tensor::empty({x.dim(0), dim + embed_dim});  // (N, D + De)
  const float* xp = xc.data<float>();
  const float* ep = e.data<float>();
  float* op = out.data<float>();
  for (int64_t i = 0; i < x.dim(0); ++i) {
    std::memcpy(op + i * (dim + embed_dim), xp + i * dim, size_t(dim) * 4);
    std::memcpy(op + i * (dim + embed_dim) + dim, ep + i * embed_dim, size_t(embed_dim) * 4);
  }
  return out;
}

}  // namespace lb::blocks

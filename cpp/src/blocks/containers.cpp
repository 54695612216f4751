// Blocks that hold blocks: the residual sub-layer, a stack's layer and a sequence of blocks.
#include "lmblocks/blocks.h"
#include "lmblocks/error.h"
#include "lmblocks/ops.h"
#include "lmblocks/runtime.h"

#include <cmath>
#include <tuple>

namespace lb::blocks {

Residual::Residual(BlockPtr pre_, BlockPtr inner_, BlockPtr post_)
    : pre(std::move(pre_)), inner(std::move(inner_)), post(std::move(post_)) {
  if (!inner) throw ValueError("Residual: inner block is required");
}

Tensor Residual::forward(Context& ctx, const Tensor& x) {
  Tensor h = pre ? pre->run(ctx, x) : x;  // pre must not change x: the sum below needs it
  h = inner->run(ctx, h);
  if (post) h = post->run(ctx, h);
  if (h.shape() != x.shape())
    throw ValueError("Residual: inner block " + inner->kind() + " returned " + shape_str(h.shape()) + " for input " +
                     shape_str(x.shape()));
  Tensor out = x;
  ops::add(x, h, out);  // the residual stream is updated in place
  return out;
}

std::vector<std::pair<std::string, BlockPtr>> Residual::named_children() const {
  std::vector<std::pair<std::string, BlockPtr>> c;
  if (pre) c.emplace_back("pre", pre);
  c.emplace_back(inner->role(), inner);
  if (post) c.emplace_back("post", post);
  return c;
}

// ---- Layer -----------------------------------------------------------------------------------------

Layer::Layer(BlockPtr mixer_, BlockPtr mlp_, BlockPtr an, BlockPtr apn, BlockPtr mn, BlockPtr mpn, bool parallel_,
             bool after_add, float rscale)
    : mixer(std::move(mixer_)), mlp(std::move(mlp_)), attn_norm(std::move(an)), attn_post_norm(std::move(apn)),
      mlp_norm(std::move(mn)), mlp_post_norm(std::move(mpn)), parallel(parallel_), norm_after_add(after_add),
      residual_scale(rscale) {
  if (!std::isfinite(residual_scale)) throw ValueError("Layer: residual_scale must be finite");
  if (!mixer && !mlp) throw ValueError("Layer: needs a mixer, an MLP or both");
  if (mixer && mlp && mixer->role() == mlp->role())
    throw ValueError("Layer: the mixer and the MLP are both '" + mixer->role() + "' blocks");
  if (parallel && !(mixer && mlp)) throw ValueError("Layer: parallel needs both a mixer and an MLP");
  if (parallel && norm_after_add) throw ValueError("Layer: parallel layers cannot put the norm after the residual add");
  if (norm_after_add && ((mixer && !attn_post_norm) || (mlp && !mlp_post_norm)))
    throw ValueError("Layer: norm placement 'post' needs a post norm for each sub-layer");
  // Every part maps D features to D: find D, then name the first part that disagrees.
  for (const auto& [name, b] : named_children()) {
    for (const auto& [what, d] : {std::pair<const char*, int64_t>{"takes", b->in_dim()}, {"returns", b->out_dim()}}) {
      if (d < 0) continue;
      if (dim_ < 0) dim_ = d;
      if (d != dim_)
        throw ValueError("Layer: " + name + " (" + b->kind() + ") " + what + " " + std::to_string(d) +
                         " features but the layer's other parts use " + std::to_string(dim_));
    }
  }
}

namespace {

// x += s * h, in place (x and h (N, D) f32 contiguous).
void add_scaled(Tensor& x, const Tensor& h, float s) {
  if (s == 1.f) {
    ops::add(x, h, x);
    return;
  }
  float* xp = x.data<float>();
  const float* hp = h.data<float>();
  parallel_for(x.numel(), 1 << 14, [&](int64_t a, int64_t b) {
    for (int64_t i = a; i < b; ++i) xp[i] += s * hp[i];
  });
}

// x += out_norm(f(in_norm(x))), or x = out_norm(x + f(x)) when the norm comes after the add.
void sublayer(Context& ctx, Tensor& x, Block& f, Block* in_norm, Block* out_norm, bool after_add, float scale) {
  Tensor h = in_norm ? in_norm->run(ctx, x) : x;  // in_norm must not change x: the sum below needs it
  h = f.run(ctx, h);
  if (h.shape() != x.shape())
    throw ValueError("Layer: " + f.kind() + " returned " + shape_str(h.shape()) + " for input " + shape_str(x.shape()));
  if (out_norm && !after_add) h = out_norm->run(ctx, h);
  add_scaled(x, h, scale);
  if (out_norm && after_add) {
    Tensor y = out_norm->run(ctx, x);
    if (y.raw() != x.raw()) ops::copy(y, x);
  }
}

}  // namespace

Tensor Layer::forward(Context& ctx, const Tensor& x_in) {
  Tensor x = x_in;  // the residual stream, updated in place
  if (!parallel) {
    if (mixer) sublayer(ctx, x, *mixer, attn_norm.get(), attn_post_norm.get(), norm_after_add, residual_scale);
    if (mlp) sublayer(ctx, x, *mlp, mlp_norm.get(), mlp_post_norm.get(), norm_after_add, residual_scale);
    return x;
  }
  const Tensor n1 = attn_norm ? attn_norm->run(ctx, x) : x;
  const Tensor n2 = mlp_norm ? mlp_norm->run(ctx, x) : n1;
  Tensor a = mixer->run(ctx, n1);
  if (attn_post_norm) a = attn_post_norm->run(ctx, a);
  Tensor m = mlp->run(ctx, n2);
  if (mlp_post_norm) m = mlp_post_norm->run(ctx, m);
  if (a.shape() != x.shape() || m.shape() != x.shape())
    throw ValueError("Layer: parallel branches returned " + shape_str(a.shape()) + " and " + shape_str(m.shape()) +
                     " for input " + shape_str(x.shape()));
  add_scaled(x, a, residual_scale);
  add_scaled(x, m, residual_scale);
  return x;
}

std::vector<std::pair<std::string, BlockPtr>> Layer::named_children() const {
  std::vector<std::pair<std::string, BlockPtr>> c;
  const std::string mix = mixer ? mixer->role() : "attn", ch = mlp ? mlp->role() : "mlp";
  if (attn_norm) c.emplace_back(mix + "_norm", attn_norm);
  if (mixer) c.emplace_back(mix, mixer);
  if (attn_post_norm) c.emplace_back(mix + "_post_norm", attn_post_norm);
  if (mlp_norm) c.emplace_back(ch + "_norm", mlp_norm);
  if (mlp) c.emplace_back(ch, mlp);
  if (mlp_post_norm) c.emplace_back(ch + "_post_norm", mlp_post_norm);
  return c;
}

Sequential::Sequential(std::vector<BlockPtr> blocks_) : blocks(std::move(blocks_)) {
  for (const BlockPtr& b : blocks)
    if (!b) throw ValueError("Sequential: a block is None");
  int64_t d = -1;  // features flowing between blocks, where known
  for (size_t i = 0; i < blocks.size(); ++i) {
    const int64_t in = blocks[i]->in_dim();
    if (d >= 0 && in >= 0 && in != d)
      throw ValueError("Sequential: block " + std::to_string(i) + " (" + blocks[i]->kind() + ") takes " +
                       std::to_string(in) + " features but the block before it returns " + std::to_string(d));
    if (blocks[i]->out_dim() >= 0) d = blocks[i]->out_dim();
  }
}

int64_t Sequential::in_dim() const {
  for (const BlockPtr& b : blocks)
    if (b->in_dim() >= 0 || b->out_dim() >= 0) return b->in_dim();
  return -1;
}

int64_t Sequential::out_dim() const {
  for (auto it = blocks.rbegin(); it != blocks.rend(); ++it)
    if ((*it)->out_dim() >= 0) return (*it)->out_dim();
  return -1;
}

Tensor Sequential::forward(Context& ctx, const Tensor& x) {
  Tensor h = x;
  for (const BlockPtr& b : blocks) h = b->run(ctx, h);
  return h;
}

std::vector<std::pair<std::string, BlockPtr>> Sequential::named_children() const {
  std::vector<std::pair<std::string, BlockPtr>> c;
  for (size_t i = 0; i < blocks.size(); ++i) c.emplace_back(std::to_string(i), blocks[i]);
  return c;
}

// ---- Parallel ---------------------------------------------------------------------------------------

Parallel::Parallel(std::vector<BlockPtr> blocks_) : blocks(std::move(blocks_)) {
  if (blocks.empty()) throw ValueError("Parallel: no blocks");
  for (size_t i = 0; i < blocks.size(); ++i) {
    if (!blocks[i]) throw ValueError("Parallel: block " + std::to_string(i) + " is None");
    for (auto [what, d, dst] : {std::tuple<const char*, int64_t, int64_t*>{"takes", blocks[i]->in_dim(), &in_},
                                {"returns", blocks[i]->out_dim(), &out_}}) {
      if (d < 0) continue;
      if (*dst >= 0 && d != *dst)
        throw ValueError("Parallel: block " + std::to_string(i) + " (" + blocks[i]->kind() + ") " + what + " " +
                         std::to_string(d) + " features but the blocks before it " + what + " " +
                         std::to_string(*dst));
      *dst = d;
    }
  }
}

Tensor Parallel::forward(Context& ctx, const Tensor& x) {
  Tensor out;
  for (const BlockPtr& b : blocks) {
    const Tensor h = b->run(ctx, x);
    if (!out.defined()) {
      out = h.raw() == x.raw() ? h.clone() : h;  // the sum is a new tensor, never x
      continue;
    }
    if (h.shape() != out.shape())
      throw ValueError("Parallel: " + b->kind() + " returned " + shape_str(h.shape()) + " but the blocks before it " +
                       shape_str(out.shape()));
    ops::add(out, h, out);
  }
  return out;
}

std::vector<std::pair<std::string, BlockPtr>> Parallel::named_children() const {
  std::vector<std::pair<std::string, BlockPtr>> c;
  bool unique = true;
  for (size_t i = 0; i < blocks.size() && unique; ++i)
    for (size_t j = 0; j < i; ++j) unique = unique && blocks[i]->role() != blocks[j]->role();
  for (size_t i = 0; i < blocks.size(); ++i) c.emplace_back(unique ? blocks[i]->role() : std::to_string(i), blocks[i]);
  return c;
}

}  // namespace lb::blocks

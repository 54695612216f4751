// Blocks that hold blocks: the residual sub-layer and a sequence of blocks.
#include "lmblocks/blocks.h"
#include "lmblocks/error.h"

namespace lb::blocks {

Residual::Residual(BlockPtr pre_, BlockPtr inner_, BlockPtr post_)
    : pre(std::move(pre_)), inner(std::move(inner_)), post(std::move(post_)) {
  if (!inner) throw ValueError("Residual: inner block is required");
}

Tensor Residual::forward(Context& ctx, const Tensor& x) {
  Tensor h = pre ? pre->forward(ctx, x) : x;  // pre must not change x: the sum below needs it
  h = inner->forward(ctx, h);
  if (post) h = post->forward(ctx, h);
  if (h.shape() != x.shape())
    throw ValueError("Residual: inner block " + inner->kind() + " returned " + shape_str(h.shape()) + " for input " +
                     shape_str(x.shape()));
  Tensor out = x;
  ops::add(x, h, out);  // the residual stream is updated in place
  return out;
}

std::vector<BlockPtr> Residual::children() const {
  std::vector<BlockPtr> c;
  for (const BlockPtr& b : {pre, inner, post})
    if (b) c.push_back(b);
  return c;
}

Sequential::Sequential(std::vector<BlockPtr> blocks_) : blocks(std::move(blocks_)) {
  for (const BlockPtr& b : blocks)
    if (!b) throw ValueError("Sequential: a block is None");
}

Tensor Sequential::forward(Context& ctx, const Tensor& x) {
  Tensor h = x;
  for (const BlockPtr& b : blocks) h = b->forward(ctx, h);
  return h;
}

}  // namespace lb::blocks

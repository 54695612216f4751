// The decoder around the blocks: batch bookkeeping, the KV cache, embedding, the output head.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "lmblocks/blocks.h"
#include "lmblocks/quant.h"
#include "lmblocks/error.h"
#include "lmblocks/runtime.h"

namespace lb::blocks {

namespace {

bool same_rope(const ops::Rope& a, const ops::Rope& b) {
  return a.theta == b.theta && a.rotary_dim == b.rotary_dim && a.interleaved == b.interleaved &&
         a.scaling == b.scaling && a.factor == b.factor && a.low_freq_factor == b.low_freq_factor &&
         a.high_freq_factor == b.high_freq_factor && a.original_max_position == b.original_max_position;
}

// fn(block) for b and every block below it, depth first.
template <class F>
void walk(const BlockPtr& b, F&& fn) {
  if (!b) return;
  fn(*b);
  for (const BlockPtr& c : b->children()) walk(c, fn);
}

// Paths for hooks: b is `path`, its children path.name. A block placed twice keeps the last path.
void name_blocks(const BlockPtr& b, const std::string& path) {
  if (!b) return;
  b->path = path;
  for (const auto& [name, c] : b->named_children()) name_blocks(c, path + "." + name);
}

int64_t int_at(const Tensor& t, int64_t i) {
  return index_at(static_cast<const std::byte*>(t.raw()) + i * t.strides()[0], t.dtype());
}

void check_ids(const Tensor& t, const char* name) {
  if (!t.defined()) return;
  if (t.dtype() != DType::i32 && t.dtype() != DType::i64)
    throw TypeError(std::string("CausalLM.forward: ") + name + " has dtype " + lb::name(t.dtype()) +
                    "; expected i32 or i64");
  if (t.ndim() != 1)
    throw ValueError(std::string("CausalLM.forward: ") + name + " has shape " + shape_str(t.shape()) +
                     "; expected (N,)");
}

}  // namespace

const ops::RopeTable& Context::rope_table(const ops::Rope& rope, int64_t hd) {
  for (const Entry& e : tables_)
    if (e.hd == hd && same_rope(e.rope, rope)) return e.table;
  tables_.push_back({rope, hd, ops::rope_table(rope, hd, pos.data(), N)});
  return tables_.back().table;
}

// ---- KVCache ---------------------------------------------------------------------------------------

namespace {

// Sizes come from Python (and from headers through it): check them before anything is sized by them.
int64_t checked_seq(int64_t n_seq, int64_t n_ctx, int64_t n_batch) {
  if (n_seq <= 0 || n_ctx <= 0 || n_batch <= 0 || n_seq > (int64_t(1) << 20) || n_ctx > (int64_t(1) << 40))
    throw ValueError("KVCache: n_seq " + std::to_string(n_seq) + ", n_ctx " + std::to_string(n_ctx) + ", n_batch " +
                     std::to_string(n_batch) + "; need positive sizes, n_seq <= 2^20 and n_ctx <= 2^40");
  return n_seq;
}

// Positions a layer keeps: all n_ctx, or a ring of window + n_batch - 1 (see blocks.h).
int64_t capacity(const AttentionConfig& c, int64_t n_ctx, int64_t n_batch) {
  return c.window > 0 && c.window < n_ctx ? std::min(n_ctx, c.window + n_batch - 1) : n_ctx;
}

}  // namespace

KVCache::KVCache(const std::vector<const Attention*>& blocks, int64_t n_seq, int64_t n_ctx, int64_t n_batch,
                 DType dtype, const std::vector<const Block*>& stateful)
    : len_(size_t(checked_seq(n_seq, n_ctx, n_batch)), 0), n_ctx_(n_ctx), n_batch_(std::min(n_batch, n_ctx)),
      dtype_(dtype) {
  if (dtype != DType::f32 && dtype != DType::f16)
    throw TypeError(std::string("KVCache: dtype ") + name(dtype) + " is not supported; use f32 or f16");
  // Size first (in double: no overflow), allocate second: a cache that cannot fit says so.
  double total = 0;
  for (const Block* b : stateful)
    for (const Shape& s : b->state_shapes()) {
      double n = 4.0 * double(n_seq);
      for (int64_t d : s) n *= double(d);
      total += n;
    }
  for (const Attention* a : blocks)
    total += 2.0 * double(n_seq) * double(a->cfg.n_kv_heads) * double(capacity(a->cfg, n_ctx, n_batch_)) *
             double(a->cfg.head_dim) * double(traits(dtype).type_size);
  if (total > double(int64_t(1) << 40))
    throw ValueError("KVCache: " + std::to_string(int64_t(total / double(1 << 30))) + " GiB for n_seq " +
                     std::to_string(n_seq) + " and n_ctx " + std::to_string(n_ctx) +
                     " is more than this machine can hold");
  for (const Attention* a : blocks) {
    const auto& c = a->cfg;
    const Shape shape = {n_seq, c.n_kv_heads, capacity(c, n_ctx, n_batch_), c.head_dim};
    index_.emplace(a, layers_.size());
    layers_.push_back({a, c.n_kv_heads, c.head_dim, shape[2], c.window, Tensor::empty(shape, dtype),
                       Tensor::empty(shape, dtype)});
  }
  for (const Block* b : stateful) {
    State st{b, {}};
    for (Shape s : b->state_shapes()) {
      s.insert(s.begin(), n_seq);
      st.tensors.push_back(Tensor::zeros(s));
    }
    state_index_.emplace(b, states_.size());
    states_.push_back(std::move(st));
  }
}

std::vector<Tensor>& KVCache::state(const Block* block) {
  const auto it = state_index_.find(block);
  if (it == state_index_.end()) throw ValueError("KVCache: this cache was not made for this model (a stateful block is missing)");
  return states_[it->second].tensors;
}

KVCache::Layer& KVCache::layer(const Attention* block) {
  const auto it = index_.find(block);
  if (it == index_.end()) throw ValueError("KVCache: this cache was not made for this model (an attention block is missing)");
  return layers_[it->second];
}

int64_t KVCache::length(int64_t seq) const {
  if (seq < 0 || seq >= n_seq())
    throw IndexError("KVCache: sequence " + std::to_string(seq) + " out of range [0, " + std::to_string(n_seq()) + ")");
  return len_[size_t(seq)];
}

void KVCache::clear(int64_t seq) {
  if (seq >= 0) length(seq);  // range check
  // Keys past a sequence's length are never read; recurrent state is, so it goes back to zero.
  for (State& st : states_)
    for (Tensor& t : st.tensors) {
      const Tensor part = seq < 0 ? t : t.select(0, seq);
      std::memset(part.raw(), 0, size_t(part.nbytes()));
    }
  if (seq < 0) {
    std::fill(len_.begin(), len_.end(), 0);
    return;
  }
  len_[size_t(seq)] = 0;
}

int64_t KVCache::Snapshot::nbytes() const {
  int64_t n = 0;
  for (const auto& [path, ts] : entries)
    for (const Tensor& t : ts) n += t.nbytes();
  return n;
}

KVCache::Snapshot KVCache::snapshot(int64_t seq) const {
  Snapshot s;
  s.length = length(seq);
  for (const Layer& l : layers_) {
    const int64_t n = std::min(s.length, l.capacity);  // slot p % C: the first n slots hold what is there
    s.entries.push_back({l.block->path, {l.k.select(0, seq).slice(1, 0, n).clone(),
                                         l.v.select(0, seq).slice(1, 0, n).clone()}});
  }
  for (const State& st : states_) {
    std::vector<Tensor> ts;
    for (const Tensor& t : st.tensors) ts.push_back(t.select(0, seq).clone());
    s.entries.push_back({st.block->path, std::move(ts)});
  }
  return s;
}

void KVCache::restore(int64_t seq, const Snapshot& snap) {
  length(seq);  // range check
  const size_t want = layers_.size() + states_.size();
  if (snap.entries.size() != want)
    throw ValueError("KVCache.restore: the snapshot holds " + std::to_string(snap.entries.size()) +
                     " blocks' entries; this cache holds " + std::to_string(layers_.size()) + " attention and " +
                     std::to_string(states_.size()) + " stateful blocks: it comes from another model");
  if (snap.length < 0 || snap.length > n_ctx_)
    throw ValueError("KVCache.restore: the snapshot is " + std::to_string(snap.length) +
                     " positions long; this cache holds " + std::to_string(n_ctx_) + " per sequence");
  // Check everything first, write second: a failed restore leaves the sequence as it was.
  std::vector<std::pair<Tensor, const Tensor*>> writes;
  auto fail = [&](const std::string& path, const std::string& why) {
    throw ValueError("KVCache.restore: " + path + ": the snapshot has " + why +
                     "; it was taken from another model (or a sliding-window cache of another size)");
  };
  for (size_t i = 0; i < want; ++i) {
    const auto& [path, ts] = snap.entries[i];
    const bool attn = i < layers_.size();
    const std::string here = attn ? layers_[i].block->path : states_[i - layers_.size()].block->path;
    if (path != here) fail(here, "block " + path + " in this one's place");
    if (attn) {
      const Layer& l = layers_[i];
      const int64_t n = std::min(snap.length, l.capacity);
      const Shape shape = {l.n_kv_heads, n, l.head_dim};
      if (ts.size() != 2 || ts[0].shape() != shape || ts[1].shape() != shape)
        fail(path, "keys and values of shape " + (ts.empty() ? std::string("none") : shape_str(ts[0].shape())) +
                       " where this cache's are " + shape_str(shape));
      if (ts[0].dtype() != dtype_ || ts[1].dtype() != dtype_)
        fail(path, std::string("keys and values of dtype ") + name(ts[0].dtype()) + " where this cache's are " +
                       name(dtype_));
      writes.push_back({l.k.select(0, seq).slice(1, 0, n), &ts[0]});
      writes.push_back({l.v.select(0, seq).slice(1, 0, n), &ts[1]});
    } else {
      const State& st = states_[i - layers_.size()];
      if (ts.size() != st.tensors.size())
        fail(path, std::to_string(ts.size()) + " state tensors where this block keeps " + std::to_string(st.tensors.size()));
      for (size_t j = 0; j < ts.size(); ++j) {
        const Tensor dst = st.tensors[j].select(0, seq);
        if (ts[j].shape() != dst.shape() || ts[j].dtype() != DType::f32)
          fail(path, "state " + std::to_string(j) + " of shape " + shape_str(ts[j].shape()) + " where this block's is " +
                         shape_str(dst.shape()));
        writes.push_back({dst, &ts[j]});
      }
    }
  }
  for (auto& [dst, src] : writes) dst.copy_from(*src);
  len_[size_t(seq)] = snap.length;
}

int64_t KVCache::nbytes() const {
  int64_t n = 0;
  for (const Layer& l : layers_) n += l.k.nbytes() + l.v.nbytes();
  for (const State& st : states_)
    for (const Tensor& t : st.tensors) n += t.nbytes();
  return n;
}

// ---- CausalLM --------------------------------------------------------------------------------------

CausalLM::CausalLM(Tensor embed, float scale, BlockPtr body_, BlockPtr norm_, Tensor head, float softcap)
    : embed_tokens(std::move(embed)), embed_scale(scale), body(std::move(body_)), norm(std::move(norm_)),
      lm_head(std::move(head)), final_softcap(softcap) {
  if (!embed_tokens.defined() || embed_tokens.ndim() != 2)
    throw ValueError("CausalLM: embed_tokens must be 2-D (V, D)");
  if (!lm_head.defined()) lm_head = embed_tokens;  // tied
  if (lm_head.ndim() != 2 || lm_head.shape() != embed_tokens.shape())
    throw ValueError("CausalLM: lm_head has shape " + shape_str(lm_head.shape()) + "; expected " +
                     shape_str(embed_tokens.shape()) + " to match embed_tokens");
  if (!body) throw ValueError("CausalLM: body is required");
  name_blocks(body, "layers");
  name_blocks(norm, "norm");
  walk(body, [&](const Block& b) {
    if (const auto* a = dynamic_cast<const Attention*>(&b)) attention_.push_back(a);
    if (!b.state_shapes().empty()) stateful_.push_back(&b);
    if (const auto* c = dynamic_cast<const ConcatEmbeddings*>(&b)) {
      if (c->embed_dim != model_dim())
        throw ValueError("CausalLM: a ConcatEmbeddings block takes embeddings of " + std::to_string(c->embed_dim) +
                         " features but the embedding has D=" + std::to_string(model_dim()));
      keep_embeddings_ = true;
    }
  });
  for (const auto& [what, b] : {std::pair<const char*, const BlockPtr*>{"body", &body}, {"norm", &norm}})
    if (*b && (((*b)->in_dim() >= 0 && (*b)->in_dim() != model_dim()) ||
               ((*b)->out_dim() >= 0 && (*b)->out_dim() != model_dim())))
      throw ValueError(std::string("CausalLM: the ") + what + " maps " + std::to_string((*b)->in_dim()) + " to " +
                       std::to_string((*b)->out_dim()) + " features but the embedding has D=" +
                       std::to_string(model_dim()));
  pack_weights();
}

// Every matrix the kernels can read faster repacked (ops::PackedWeight), once. The model owns the packed
// copies; the originals stay as they are for anyone who reads them (weights(), the reference path), but
// pages of a file mapping are dropped once packed, so the model is resident once, not twice.
void CausalLM::pack_weights() {
  std::vector<Tensor> mats = {lm_head};
  walk(body, [&](const Block& b) {
    for (const auto& [name, t] : b.weights()) {
      if (t.ndim() == 2) mats.push_back(t);
      if (t.ndim() == 3)  // stacked experts (E, rows, cols): ops::linear reads each expert's view
        for (int64_t e = 0; e < t.dim(0); ++e) mats.push_back(t.select(0, e));
    }
  });
  for (const Tensor& t : mats) {
    if ((t.dtype() == DType::f16 || t.dtype() == DType::bf16) && t.strides()[1] == 2 && !ops::find_packed(t)) {
      auto p = std::make_shared<ops::PackedWeight>();  // no copy: marks the matrix for the int16 prefill kernel
      p->type = t.dtype();
      p->N = t.dim(0);
      p->K = t.dim(1);
      ops::register_packed(t, p);
      packed_.push_back(std::move(p));
      continue;
    }
    if (!ops::packable(t.dtype()) || t.strides()[1] != traits(t.dtype()).type_size || ops::find_packed(t)) continue;
    auto p = ops::pack_weight(t);
    ops::register_packed(t, p);
    packed_.push_back(std::move(p));
    release_mapped_pages(t.raw(), t.nbytes());  // a tied embedding is read from the packed copy too
  }
}

std::shared_ptr<KVCache> CausalLM::make_cache(int64_t n_seq, int64_t n_ctx, int64_t n_batch, DType dtype) const {
  return std::make_shared<KVCache>(attention_blocks(), n_seq, n_ctx, n_batch, dtype, stateful_);
}

Tensor CausalLM::forward(KVCache& cache, const Tensor& tokens, const Tensor& seq, Logits logits, Hooks* hooks) {
  check_ids(tokens, "tokens");
  check_ids(seq, "seq");
  const int64_t N = tokens.defined() ? tokens.dim(0) : 0, V = embed_tokens.dim(0);
  if (N == 0) throw ValueError("CausalLM.forward: no tokens");
  if (seq.defined() && seq.dim(0) != N)
    throw ValueError("CausalLM.forward: seq has " + std::to_string(seq.dim(0)) + " entries for " + std::to_string(N) +
                     " tokens");
  for (const Attention* a : attention_) cache.layer(a);  // the cache belongs to this model
  for (const Block* b : stateful_) cache.state(b);

  // Runs of consecutive tokens of one sequence, each continuing that sequence in the cache.
  std::vector<int32_t> ids(static_cast<size_t>(N));
  std::vector<Run> runs;
  std::vector<char> seen(size_t(cache.n_seq()), 0);
  for (int64_t i = 0; i < N; ++i) {
    const int64_t t = int_at(tokens, i), s = seq.defined() ? int_at(seq, i) : 0;
    if (t < 0 || t >= V)
      throw IndexError("CausalLM.forward: token " + std::to_string(t) + " at index " + std::to_string(i) +
                       " is outside the vocabulary [0, " + std::to_string(V) + ")");
    if (s < 0 || s >= cache.n_seq())
      throw IndexError("CausalLM.forward: sequence id " + std::to_string(s) + " at index " + std::to_string(i) +
                       " is outside the cache's [0, " + std::to_string(cache.n_seq()) + ")");
    ids[size_t(i)] = int32_t(t);
    if (runs.empty() || runs.back().seq != s) {
      if (seen[size_t(s)])
        throw ValueError("CausalLM.forward: the tokens of sequence " + std::to_string(s) + " are not consecutive");
      seen[size_t(s)] = 1;
      runs.push_back({int32_t(s), i, 0, cache.len_[size_t(s)]});
    }
    ++runs.back().n;
  }
  for (const Run& r : runs)
    if (r.pos0 + r.n > cache.n_ctx())
      throw ValueError("CausalLM.forward: sequence " + std::to_string(r.seq) + " would reach " +
                       std::to_string(r.pos0 + r.n) + " tokens (" + std::to_string(r.pos0) + " cached + " +
                       std::to_string(r.n) + " new), more than the context of " + std::to_string(cache.n_ctx()));

  const ParallelPhase phase;  // the pool's workers stay awake from one layer's loops to the next
  const int64_t R = int64_t(runs.size());
  Tensor out = logits == Logits::all ? Tensor::empty({N, V}) : logits == Logits::last ? Tensor::empty({R, V}) : Tensor();
  // Chunks of at most n_batch tokens (what the sliding-window rings are sized for).
  const int64_t B = cache.n_batch();
  size_t r = 0;
  int64_t done_in_run = 0;
  for (int64_t c0 = 0; c0 < N; c0 += B) {
    Context ctx;
    ctx.cache = &cache;
    ctx.hooks = hooks;
    ctx.N = std::min(B, N - c0);
    ctx.pos.resize(size_t(ctx.N));
    std::vector<std::pair<int64_t, int64_t>> last_rows;  // (row in chunk, row of out) for Logits::last
    for (int64_t i = 0; i < ctx.N;) {
      const Run& run = runs[r];
      const int64_t n = std::min(run.n - done_in_run, ctx.N - i);
      ctx.runs.push_back({run.seq, i, n, cache.len_[size_t(run.seq)]});
      for (int64_t t = 0; t < n; ++t) ctx.pos[size_t(i + t)] = ctx.runs.back().pos0 + t;
      done_in_run += n;
      i += n;
      if (done_in_run == run.n) {
        last_rows.emplace_back(i - 1, int64_t(r));
        ++r;
        done_in_run = 0;
      }
    }
    const Tensor h = forward_chunk(cache, ids.data() + c0, ctx, logits);  // (n, D) normed
    for (const Run& cr : ctx.runs) cache.len_[size_t(cr.seq)] += cr.n;
    if (logits == Logits::all) {
      Tensor rows = out.slice(0, c0, c0 + ctx.N, 1);
      ops::linear(h, lm_head, {}, rows);
    } else if (logits == Logits::last) {
      for (const auto& [row, o] : last_rows) {
        Tensor dst = out.slice(0, o, o + 1, 1);
        ops::linear(h.slice(0, row, row + 1, 1), lm_head, {}, dst);
      }
    }
  }
  if (out.defined() && (final_softcap > 0.f || logit_scale != 1.f)) {
    float* p = out.data<float>();
    const float c = final_softcap, s = logit_scale;
    parallel_for(out.numel(), 4096, [&](int64_t a, int64_t b) {
      for (int64_t i = a; i < b; ++i) {
        p[i] *= s;
        if (c > 0.f) p[i] = c * std::tanh(p[i] / c);
      }
    });
  }
  return out;
}

Tensor CausalLM::forward_chunk(KVCache&, const int32_t* tokens, Context& ctx, Logits logits) {
  Tensor ids = Tensor::empty({ctx.N}, DType::i32);
  std::memcpy(ids.raw(), tokens, size_t(ctx.N) * 4);
  Tensor x;  // (n, D)
  const auto packed = ops::find_packed(embed_tokens);
  if (packed && !packed->data.empty()) {  // tied to a repacked head: read rows from there
    x = Tensor::empty({ctx.N, model_dim()});
    float* xp = x.data<float>();
    parallel_for(ctx.N, 16, [&](int64_t a, int64_t b) {
      for (int64_t i = a; i < b; ++i) ops::packed_row_to_float(*packed, tokens[i], xp + i * model_dim());
    });
  } else {
    x = ops::embedding(ids, embed_tokens);
  }
  if (embed_scale != 1.f) {
    float* p = x.data<float>();
    for (int64_t i = 0; i < x.numel(); ++i) p[i] *= embed_scale;
  }
  if (keep_embeddings_) ctx.embeddings = x.clone();  // x itself is the residual stream, changed in place
  x = body->run(ctx, x);
  if (logits == Logits::none) return x;
  return norm ? norm->run(ctx, x) : x;
}

}  // namespace lb::blocks

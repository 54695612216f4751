// Causal self-attention over the KV cache (Vaswani et al. 2017), with grouped kv heads (Ainslie et
// al. 2023), sliding windows (Mistral, Gemma), QK-norm (Gemma 3) and rope (Su et al. 2021). The
// attention itself is ops::attention_heads (cpp/src/ops/attention.cpp), reading the cache in place.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "lmblocks/blocks.h"
#include "lmblocks/error.h"
#include "lmblocks/runtime.h"
#include "blocks/common.h"
#include "ops/convert.h"

namespace lb::blocks {

namespace {

void check_proj(const Tensor& w, int64_t rows, int64_t cols, const char* name) {
  detail::check_matrix(w, rows, cols, "Attention", name);
}

void check_vec(const Tensor& b, int64_t n, const char* name) { detail::check_vector(b, n, "Attention", name); }

// The attention probabilities of every query of the batch, (N, H, S) with S the largest position seen
// plus one: row (i, h) holds query i's weights on key positions 0 .. S-1 (0 where a key is not visible).
// Only for hooks, so plain loops: keys are read back from the cache in its type.
Tensor probabilities(const Context& ctx, const KVCache::Layer& L, const AttentionConfig& cfg, const Tensor& q) {
  const int64_t N = ctx.N, H = cfg.n_heads, G = H / cfg.n_kv_heads, hd = cfg.head_dim, C = L.capacity;
  int64_t S = 0;
  for (const Run& r : ctx.runs) S = std::max(S, r.pos0 + r.n);
  Tensor out = Tensor::zeros({N, H, S});
  const float scale = cfg.scale > 0.f ? cfg.scale : 1.f / std::sqrt(float(hd));
  const bool f16 = L.k.dtype() == DType::f16;
  const auto to_f32 = LB_DISPATCH(f16_to_f32);
  for (const Run& run : ctx.runs) {
    const int64_t end = run.pos0 + run.n;  // keys of this sequence: positions [0, end)
    parallel_for(run.n * H, 1, [&](int64_t a, int64_t b) {
      std::vector<float> key(static_cast<size_t>(hd)), sc(static_cast<size_t>(end));
      for (int64_t th = a; th < b; ++th) {
        const int64_t t = th / H, h = th % H, i = run.begin + t, p = run.pos0 + t, g = h / G;
        const float* qi = q.data<float>() + (i * H + h) * hd;
        int64_t lo = 0, hi = cfg.causal ? p + 1 : end;
        if (cfg.window > 0) {
          lo = std::max<int64_t>(0, p - cfg.window + 1);
          if (!cfg.causal) hi = std::min(end, p + cfg.window);
        }
        lo = std::max(lo, end - C);  // a ring holds the last C positions (window layers need no more)
        float mx = -INFINITY;
        for (int64_t j = lo; j < hi; ++j) {
          const int64_t off = ((run.seq * cfg.n_kv_heads + g) * C + j % C) * hd;
          const float* kj;
          if (f16) {
            to_f32(static_cast<const uint16_t*>(L.k.raw()) + off, key.data(), hd);
            kj = key.data();
          } else {
            kj = static_cast<const float*>(L.k.raw()) + off;
          }
          float d = 0.f;
          for (int64_t e = 0; e < hd; ++e) d += qi[e] * kj[e];
          d *= scale;
          if (cfg.softcap > 0.f) d = cfg.softcap * std::tanh(d / cfg.softcap);
          sc[size_t(j)] = d;
          mx = std::max(mx, d);
        }
        float sum = 0.f;
        for (int64_t j = lo; j < hi; ++j) sum += sc[size_t(j)] = std::exp(sc[size_t(j)] - mx);
        float* row = out.data<float>() + (i * H + h) * S;
        for (int64_t j = lo; j < hi; ++j) row[j] = sc[size_t(j)] / sum;
      }
    });
  }
  return out;
}

}  // namespace

Attention::Attention(const AttentionConfig& c, Tensor q, Tensor k, Tensor v, Tensor o, Tensor qb, Tensor kb, Tensor vb,
                     Tensor ob, Tensor qn, Tensor kn)
    : cfg(c), q_proj(std::move(q)), k_proj(std::move(k)), v_proj(std::move(v)), o_proj(std::move(o)),
      q_bias(std::move(qb)), k_bias(std::move(kb)), v_bias(std::move(vb)), o_bias(std::move(ob)),
      q_norm(std::move(qn)), k_norm(std::move(kn)) {
  const int64_t H = cfg.n_heads, Hkv = cfg.n_kv_heads, hd = cfg.head_dim;
  if (H <= 0 || Hkv <= 0 || hd <= 0 || H % Hkv != 0)
    throw ValueError("Attention: n_heads " + std::to_string(H) + ", n_kv_heads " + std::to_string(Hkv) + ", head_dim " +
                     std::to_string(hd) + "; need positive sizes with n_heads divisible by n_kv_heads");
  if (cfg.window < 0) throw ValueError("Attention: window must be >= 0, got " + std::to_string(cfg.window));
  check_proj(q_proj, H * hd, -1, "q_proj");
  const int64_t D = q_proj.dim(1);
  check_proj(k_proj, Hkv * hd, D, "k_proj");
  check_proj(v_proj, Hkv * hd, D, "v_proj");
  check_proj(o_proj, o_proj.defined() && o_proj.ndim() == 2 ? o_proj.dim(0) : D, H * hd, "o_proj");
  check_vec(q_bias, H * hd, "q_bias");
  check_vec(k_bias, Hkv * hd, "k_bias");
  check_vec(v_bias, Hkv * hd, "v_bias");
  check_vec(o_bias, o_proj.dim(0), "o_bias");
  check_vec(q_norm, q_norm.defined() && q_norm.numel() == H * hd ? H * hd : hd, "q_norm");
  check_vec(k_norm, k_norm.defined() && k_norm.numel() == Hkv * hd ? Hkv * hd : hd, "k_norm");
  if (!cfg.use_rope) return;  // the rope settings are never read
  const int64_t rd = cfg.rope.rotary_dim == 0 ? hd : cfg.rope.rotary_dim;
  if (rd < 0 || rd > hd || rd % 2 != 0)
    throw ValueError("Attention: rotary_dim " + std::to_string(cfg.rope.rotary_dim) + " with head_dim " +
                     std::to_string(hd) + "; expected an even number in [2, head_dim] (0 means head_dim)");
  ops::rope_inv_freq(rd, cfg.rope);  // validates theta and scaling now, not at the first forward
}

std::vector<std::pair<std::string, Tensor>> Attention::weights() const {
  std::vector<std::pair<std::string, Tensor>> w = {
      {"q_proj", q_proj}, {"k_proj", k_proj}, {"v_proj", v_proj}, {"o_proj", o_proj}};
  const std::pair<const char*, const Tensor*> opt[] = {{"q_bias", &q_bias}, {"k_bias", &k_bias}, {"v_bias", &v_bias},
                                                       {"o_bias", &o_bias}, {"q_norm", &q_norm}, {"k_norm", &k_norm}};
  for (const auto& [name, t] : opt)
    if (t->defined()) w.emplace_back(name, *t);
  for (const auto& [name, a] : {std::pair<const char*, const LowRank*>{"q_proj", &q_lora}, {"k_proj", &k_lora},
                                {"v_proj", &v_lora}, {"o_proj", &o_lora}})
    if (a->defined()) {
      w.emplace_back(std::string(name) + ".lora_A", a->A);
      w.emplace_back(std::string(name) + ".lora_B", a->B);
    }
  return w;
}

void Attention::set_adapter(const std::string& proj, LowRank a) {
  LowRank* dst = proj == "q_proj" ? &q_lora : proj == "k_proj" ? &k_lora : proj == "v_proj" ? &v_lora
               : proj == "o_proj" ? &o_lora : nullptr;
  if (!dst) throw ValueError("Attention: no projection '" + proj + "' to adapt (q_proj, k_proj, v_proj, o_proj)");
  const Tensor& w = proj == "q_proj" ? q_proj : proj == "k_proj" ? k_proj : proj == "v_proj" ? v_proj : o_proj;
  detail::check_adapter(a, w.dim(0), w.dim(1), "Attention", proj);
  *dst = std::move(a);
}

Tensor Attention::forward(Context& ctx, const Tensor& x) {
  const int64_t N = ctx.N, H = cfg.n_heads, Hkv = cfg.n_kv_heads, hd = cfg.head_dim, G = H / Hkv;
  std::vector<Tensor> qkv = project(x, {{q_proj, q_bias, q_lora}, {k_proj, k_bias, k_lora}, {v_proj, v_bias, v_lora}});
  Tensor q = std::move(qkv[0]);  // (N, H*hd)
  Tensor k = std::move(qkv[1]);  // (N, Hkv*hd)
  Tensor v = std::move(qkv[2]);  // (N, Hkv*hd)
  if (q_norm.defined()) {  // per head, or over the whole row when the weight covers every head
    Tensor qh = q_norm.dim(0) == hd ? q.view({N * H, hd}) : q;
    ops::rms_norm(qh, q_norm, cfg.qk_norm_eps, cfg.qk_norm_offset, qh);
  }
  if (k_norm.defined()) {
    Tensor kh = k_norm.dim(0) == hd ? k.view({N * Hkv, hd}) : k;
    ops::rms_norm(kh, k_norm, cfg.qk_norm_eps, cfg.qk_norm_offset, kh);
  }
  if (cfg.use_rope) {
    const ops::RopeTable& rt = ctx.rope_table(cfg.rope, hd);
    ops::rope_rows(rt, q.data<float>(), N, H, hd, H * hd);
    ops::rope_rows(rt, k.data<float>(), N, Hkv, hd, Hkv * hd);
  }

  // Append this batch's keys and values to the cache: position p of sequence s lives in slot p % C.
  KVCache::Layer& L = ctx.cache->layer(this);
  const int64_t C = L.capacity;
  const bool f16 = L.k.dtype() == DType::f16;
  const auto to_f16 = LB_DISPATCH(f32_to_f16);
  const int64_t esize = f16 ? 2 : 4;
  auto* kc = static_cast<std::byte*>(L.k.raw());
  auto* vc = static_cast<std::byte*>(L.v.raw());
  for (const Run& run : ctx.runs) {
    parallel_for(run.n, 64, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t i = run.begin + t, slot = (run.pos0 + t) % C;
        for (int64_t g = 0; g < Hkv; ++g) {
          const int64_t off = ((run.seq * Hkv + g) * C + slot) * hd * esize;
          const float* ks = k.data<float>() + (i * Hkv + g) * hd;
          const float* vs = v.data<float>() + (i * Hkv + g) * hd;
          if (f16) {
            to_f16(ks, reinterpret_cast<uint16_t*>(kc + off), hd);
            to_f16(vs, reinterpret_cast<uint16_t*>(vc + off), hd);
          } else {
            std::memcpy(kc + off, ks, size_t(hd) * 4);
            std::memcpy(vc + off, vs, size_t(hd) * 4);
          }
        }
      }
    });
  }

  // Attend: every (run, kv head) reads its ring of keys and values in place, in the cache's type.
  Tensor out = Tensor::empty({N, H * hd});  // (N, H*hd)
  std::vector<ops::AttentionHead> heads;
  for (const Run& run : ctx.runs)
    for (int64_t g = 0; g < Hkv; ++g) {
      ops::AttentionHead a{};
      a.q = q.data<float>() + (run.begin * H + g * G) * hd;
      a.q_t = H * hd, a.q_h = hd;
      a.out = out.data<float>() + (run.begin * H + g * G) * hd;
      a.o_t = H * hd, a.o_h = hd;
      const int64_t off = (run.seq * Hkv + g) * C * hd * esize;  // slot 0 of this (sequence, kv head)
      a.k = kc + off, a.v = vc + off;
      a.k_s = hd, a.v_s = hd, a.ring = C, a.f16 = f16;
      a.T = run.n, a.p0 = run.pos0, a.S = run.pos0 + run.n;  // not causal: all S keys, masked by window only
      heads.push_back(a);
    }
  ops::Attention acfg;
  acfg.causal = cfg.causal;
  acfg.window = cfg.window;
  acfg.scale = cfg.scale;
  acfg.softcap = cfg.softcap;
  ops::attention_heads(heads, acfg, G, hd, hd);
  capture_point(ctx, *this, "probs", [&] { return probabilities(ctx, L, cfg, q); });
  return project(out, o_proj, o_bias, o_lora);  // (N, Dout)
}

}  // namespace lb::blocks

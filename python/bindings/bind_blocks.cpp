// lb._core.nn: the native blocks and the decoder. Python (lmblocks.nn, lmblocks.models) composes them;
// CausalLM.forward runs a whole batch without the GIL.
#include "lmblocks/blocks.h"

#include "bindings.h"

namespace lb::py_bind {
namespace {

using namespace blocks;
using Scaling = std::tuple<std::string, double, double, double, double>;

Logits logits_arg(const std::string& s) {
  if (s == "last") return Logits::last;
  if (s == "all") return Logits::all;
  if (s == "none") return Logits::none;
  throw ValueError("CausalLM.forward: logits must be 'last', 'all' or 'none', got '" + s + "'");
}

// {"q_proj": (A, B), ...} -> set_adapter on block b, each (A (r, in), B (out, r)).
template <class B>
void set_adapters(B& b, const py::dict& adapters, const char* op) {
  for (const auto& [k, v] : adapters) {
    const std::string proj = py::cast<std::string>(k);
    const auto ab = py::cast<py::tuple>(v);
    if (ab.size() != 2) throw ValueError(std::string(op) + ": adapter " + proj + " must be a pair (lora_A, lora_B)");
    b.set_adapter(proj, LowRank{to_tensor(ab[0], op, (proj + ".lora_A").c_str()),
                                to_tensor(ab[1], op, (proj + ".lora_B").c_str())});
  }
}

py::dict weights_dict(const Block& b) {
  py::dict d;
  for (const auto& [name, t] : b.weights()) d[py::str(name)] = py::cast(t);
  return d;
}

}  // namespace

void bind_blocks(py::module_ m) {
  py::class_<Block, BlockPtr>(m, "Block")
      .def_property_readonly("kind", &Block::kind)
      .def_property_readonly("role", &Block::role)
      .def_property_readonly("in_dim", &Block::in_dim, "Features per token in (-1: any).")
      .def_property_readonly("out_dim", &Block::out_dim, "Features per token out (-1: any).")
      .def_property_readonly("children", &Block::children)
      .def_property_readonly("named_children", &Block::named_children)
      .def_readonly("path", &Block::path, "Where the block sits in its model (\"layers.3.attn\"); hooks match it.")
      .def("weights", &weights_dict, "The tensors this block holds itself, by name (zero-copy).");

  py::class_<RMSNorm, Block, std::shared_ptr<RMSNorm>>(m, "RMSNorm")
      .def(py::init([](py::object w, float eps, float offset) {
             return std::make_shared<RMSNorm>(to_tensor(w, "RMSNorm", "weight"), eps, offset);
           }),
           py::arg("weight"), py::arg("eps") = 1e-6f, py::arg("offset") = 0.f)
      .def_readonly("eps", &RMSNorm::eps)
      .def_readonly("offset", &RMSNorm::offset);

  py::class_<LayerNorm, Block, std::shared_ptr<LayerNorm>>(m, "LayerNorm")
      .def(py::init([](int64_t dim, py::object w, py::object b, float eps) {
             return std::make_shared<LayerNorm>(dim, to_tensor_opt(w, "LayerNorm", "weight"),
                                                to_tensor_opt(b, "LayerNorm", "bias"), eps);
           }),
           py::arg("dim"), py::arg("weight") = py::none(), py::arg("bias") = py::none(), py::arg("eps") = 1e-5f)
      .def_readonly("dim", &LayerNorm::dim)
      .def_readonly("eps", &LayerNorm::eps);

  py::class_<Attention, Block, std::shared_ptr<Attention>>(m, "Attention")
      .def(py::init([](int64_t n_heads, int64_t n_kv_heads, int64_t head_dim, py::object q, py::object k, py::object v,
                       py::object o, py::object qb, py::object kb, py::object vb, py::object ob, py::object qn,
                       py::object kn, double rope_theta, int64_t rotary_dim, bool rope_interleaved,
                       const Scaling& sc, int64_t window, float scale, float softcap, float qk_norm_eps, float qk_norm_offset,
                       bool causal, bool rope, const py::dict& adapters) {
             AttentionConfig c;
             c.n_heads = n_heads;
             c.n_kv_heads = n_kv_heads;
             c.head_dim = head_dim;
             c.rope.theta = rope_theta;
             c.rope.rotary_dim = rotary_dim;
             c.rope.interleaved = rope_interleaved;
             c.use_rope = rope;
             std::tie(c.rope.scaling, c.rope.factor, c.rope.low_freq_factor, c.rope.high_freq_factor,
                      c.rope.original_max_position) = sc;
             c.window = window;
             c.causal = causal;
             c.scale = scale;
             c.softcap = softcap;
             c.qk_norm_eps = qk_norm_eps;
             c.qk_norm_offset = qk_norm_offset;
             const char* op = "Attention";
             auto a = std::make_shared<Attention>(
                 c, to_tensor(q, op, "q_proj"), to_tensor(k, op, "k_proj"), to_tensor(v, op, "v_proj"),
                 to_tensor(o, op, "o_proj"), to_tensor_opt(qb, op, "q_bias"), to_tensor_opt(kb, op, "k_bias"),
                 to_tensor_opt(vb, op, "v_bias"), to_tensor_opt(ob, op, "o_bias"), to_tensor_opt(qn, op, "q_norm"),
                 to_tensor_opt(kn, op, "k_norm"));
             set_adapters(*a, adapters, op);
             return a;
           }),
           py::arg("n_heads"), py::arg("n_kv_heads"), py::arg("head_dim"), py::arg("q_proj"), py::arg("k_proj"),
           py::arg("v_proj"), py::arg("o_proj"), py::arg("q_bias") = py::none(), py::arg("k_bias") = py::none(),
           py::arg("v_bias") = py::none(), py::arg("o_bias") = py::none(), py::arg("q_norm") = py::none(),
           py::arg("k_norm") = py::none(), py::arg("rope_theta") = 10000.0, py::arg("rotary_dim") = 0,
           py::arg("rope_interleaved") = false,
           py::arg("rope_scaling") = Scaling{"none", 1.0, 1.0, 4.0, 8192.0}, py::arg("window") = 0,
           py::arg("scale") = 0.f, py::arg("softcap") = 0.f, py::arg("qk_norm_eps") = 1e-6f, py::arg("qk_norm_offset") = 0.f,
           py::arg("causal") = true, py::arg("rope") = true, py::arg("adapters") = py::dict(),
           "rope False: no positional encoding (the rope_* settings are then ignored). adapters: "
           "{\"q_proj\": (lora_A (r, in), lora_B (out, r)), ...}: proj(x) + (x A^T) B^T.")
      .def_property_readonly("n_heads", [](const Attention& a) { return a.cfg.n_heads; })
      .def_property_readonly("rope", [](const Attention& a) { return a.cfg.use_rope; })
      .def_property_readonly("n_kv_heads", [](const Attention& a) { return a.cfg.n_kv_heads; })
      .def_property_readonly("head_dim", [](const Attention& a) { return a.cfg.head_dim; })
      .def_property_readonly("window", [](const Attention& a) { return a.cfg.window; })
      .def_property_readonly("causal", [](const Attention& a) { return a.cfg.causal; })
      .def_property_readonly("rope_interleaved", [](const Attention& a) { return a.cfg.rope.interleaved; })
      .def_property_readonly("rope_scaling",
                             [](const Attention& a) {
                               const auto& r = a.cfg.rope;
                               return Scaling{r.scaling, r.factor, r.low_freq_factor, r.high_freq_factor,
                                              r.original_max_position};
                             })
      .def_property_readonly("qk_norm_eps", [](const Attention& a) { return a.cfg.qk_norm_eps; })
      .def_property_readonly("qk_norm_offset", [](const Attention& a) { return a.cfg.qk_norm_offset; })
      .def_property_readonly("scale", [](const Attention& a) { return a.cfg.scale; })
      .def_property_readonly("softcap", [](const Attention& a) { return a.cfg.softcap; })
      .def_property_readonly("rotary_dim", [](const Attention& a) { return a.cfg.rope.rotary_dim ? a.cfg.rope.rotary_dim : a.cfg.head_dim; })
      .def_property_readonly("rope_theta", [](const Attention& a) { return a.cfg.rope.theta; });

  py::class_<MLP, Block, std::shared_ptr<MLP>>(m, "MLP")
      .def(py::init([](py::object g, py::object u, py::object d, const std::string& act, py::object ub, py::object db,
                       py::object gb, const py::dict& adapters) {
             const char* op = "MLP";
             auto m = std::make_shared<MLP>(to_tensor_opt(g, op, "gate_proj"), to_tensor(u, op, "up_proj"),
                                            to_tensor(d, op, "down_proj"), activation_from_name(act),
                                            to_tensor_opt(ub, op, "up_bias"), to_tensor_opt(db, op, "down_bias"),
                                            to_tensor_opt(gb, op, "gate_bias"));
             set_adapters(*m, adapters, op);
             return m;
           }),
           py::arg("gate_proj"), py::arg("up_proj"), py::arg("down_proj"), py::arg("activation") = "silu",
           py::arg("up_bias") = py::none(), py::arg("down_bias") = py::none(), py::arg("gate_bias") = py::none(),
           py::arg("adapters") = py::dict(),
           "gate_proj None: the plain MLP down(act(up(x))). adapters: {\"up_proj\": (lora_A, lora_B), ...}.")
      .def_property_readonly("gated", &MLP::gated)
      .def_property_readonly("activation", [](const MLP& m) { return std::string(activation_name(m.act)); });

  py::class_<Layer, Block, std::shared_ptr<Layer>>(m, "Layer")
      .def(py::init<BlockPtr, BlockPtr, BlockPtr, BlockPtr, BlockPtr, BlockPtr, bool, bool, float>(), py::arg("mixer"),
           py::arg("mlp") = nullptr, py::arg("attn_norm") = nullptr, py::arg("attn_post_norm") = nullptr,
           py::arg("mlp_norm") = nullptr, py::arg("mlp_post_norm") = nullptr, py::arg("parallel") = false,
           py::arg("norm_after_add") = false, py::arg("residual_scale") = 1.f)
      .def_readonly("mixer", &Layer::mixer)
      .def_readonly("mlp", &Layer::mlp)
      .def_readonly("attn_norm", &Layer::attn_norm)
      .def_readonly("attn_post_norm", &Layer::attn_post_norm)
      .def_readonly("mlp_norm", &Layer::mlp_norm)
      .def_readonly("mlp_post_norm", &Layer::mlp_post_norm)
      .def_readonly("parallel", &Layer::parallel)
      .def_readonly("norm_after_add", &Layer::norm_after_add)
      .def_readonly("residual_scale", &Layer::residual_scale);

  py::class_<Mamba2, Block, std::shared_ptr<Mamba2>>(m, "Mamba2")
      .def(py::init([](int64_t n_heads, int64_t head_dim, int64_t n_groups, int64_t state_size, py::object in_proj,
                       py::object conv_weight, py::object conv_bias, py::object dt_bias, py::object A_log, py::object D,
                       py::object norm, py::object out_proj, py::object in_bias, py::object out_bias, int64_t chunk_size,
                       float norm_eps, float dt_min, float dt_max, bool norm_before_gate) {
             const char* op = "Mamba2";
             Mamba2Config c;
             c.n_heads = n_heads, c.head_dim = head_dim, c.n_groups = n_groups, c.state_size = state_size;
             const Tensor cw = to_tensor(conv_weight, op, "conv_weight");
             c.conv_kernel = cw.ndim() == 2 ? cw.dim(1) : cw.ndim() == 3 ? cw.dim(2) : 0;
             c.chunk_size = chunk_size, c.norm_eps = norm_eps, c.dt_min = dt_min, c.dt_max = dt_max;
             c.norm_before_gate = norm_before_gate;
             return std::make_shared<Mamba2>(
                 c, to_tensor(in_proj, op, "in_proj"), cw.ndim() == 3 ? cw.reshape({cw.dim(0), cw.dim(2)}) : cw,
                 to_tensor_opt(conv_bias, op, "conv_bias"), to_tensor(dt_bias, op, "dt_bias"),
                 to_tensor(A_log, op, "A_log"), to_tensor(D, op, "D"), to_tensor_opt(norm, op, "norm"),
                 to_tensor(out_proj, op, "out_proj"), to_tensor_opt(in_bias, op, "in_bias"),
                 to_tensor_opt(out_bias, op, "out_bias"));
           }),
           py::arg("n_heads"), py::arg("head_dim"), py::arg("n_groups"), py::arg("state_size"), py::arg("in_proj"),
           py::arg("conv_weight"), py::arg("conv_bias"), py::arg("dt_bias"), py::arg("A_log"), py::arg("D"),
           py::arg("norm"), py::arg("out_proj"), py::arg("in_bias") = py::none(), py::arg("out_bias") = py::none(),
           py::arg("chunk_size") = 256, py::arg("norm_eps") = 1e-5f, py::arg("dt_min") = 0.f,
           py::arg("dt_max") = 1e30f, py::arg("norm_before_gate") = false,
           "conv_weight (conv_dim, K) or transformers' (conv_dim, 1, K). norm None: out_proj(y * silu(z)); "
           "norm_before_gate: out_proj(norm(y) * w * silu(z)) instead of out_proj(norm(y * silu(z)) * w).")
      .def_property_readonly("n_heads", [](const Mamba2& b) { return b.cfg.n_heads; })
      .def_property_readonly("head_dim", [](const Mamba2& b) { return b.cfg.head_dim; })
      .def_property_readonly("n_groups", [](const Mamba2& b) { return b.cfg.n_groups; })
      .def_property_readonly("state_size", [](const Mamba2& b) { return b.cfg.state_size; })
      .def_property_readonly("conv_kernel", [](const Mamba2& b) { return b.cfg.conv_kernel; })
      .def_property_readonly("chunk_size", [](const Mamba2& b) { return b.cfg.chunk_size; })
      .def_property_readonly("norm_eps", [](const Mamba2& b) { return b.cfg.norm_eps; })
      .def_property_readonly("dt_limit", [](const Mamba2& b) { return py::make_tuple(b.cfg.dt_min, b.cfg.dt_max); })
      .def_property_readonly("norm_before_gate", [](const Mamba2& b) { return b.cfg.norm_before_gate; })
      .def_property_readonly("d_inner", &Mamba2::d_inner);

  py::class_<Mamba, Block, std::shared_ptr<Mamba>>(m, "Mamba")
      .def(py::init([](py::object in_proj, py::object conv_weight, py::object conv_bias, py::object x_proj,
                       py::object dt_proj, py::object dt_bias, py::object A_log, py::object D, py::object out_proj,
                       py::object in_bias, py::object out_bias, py::object dt_norm, py::object b_norm,
                       py::object c_norm, float norm_eps) {
             const char* op = "Mamba";
             Tensor cw = to_tensor(conv_weight, op, "conv_weight");
             if (cw.ndim() == 3 && cw.dim(1) == 1) cw = cw.reshape({cw.dim(0), cw.dim(2)});
             return std::make_shared<Mamba>(
                 to_tensor(in_proj, op, "in_proj"), cw, to_tensor_opt(conv_bias, op, "conv_bias"),
                 to_tensor(x_proj, op, "x_proj"), to_tensor(dt_proj, op, "dt_proj"), to_tensor(dt_bias, op, "dt_bias"),
                 to_tensor(A_log, op, "A_log"), to_tensor(D, op, "D"), to_tensor(out_proj, op, "out_proj"),
                 to_tensor_opt(in_bias, op, "in_bias"), to_tensor_opt(out_bias, op, "out_bias"),
                 to_tensor_opt(dt_norm, op, "dt_norm"), to_tensor_opt(b_norm, op, "b_norm"),
                 to_tensor_opt(c_norm, op, "c_norm"), norm_eps);
           }),
           py::arg("in_proj"), py::arg("conv_weight"), py::arg("conv_bias"), py::arg("x_proj"), py::arg("dt_proj"),
           py::arg("dt_bias"), py::arg("A_log"), py::arg("D"), py::arg("out_proj"), py::arg("in_bias") = py::none(),
           py::arg("out_bias") = py::none(), py::arg("dt_norm") = py::none(), py::arg("b_norm") = py::none(),
           py::arg("c_norm") = py::none(), py::arg("norm_eps") = 1e-6f,
           "conv_weight (d_inner, K) or transformers' (d_inner, 1, K). dt_norm (dt_rank,), b_norm and c_norm "
           "(state_size,): Jamba's RMSNorms of dt, B and C after x_proj (all three or none).")
      .def_property_readonly("normed", &Mamba::normed, "Whether dt, B and C are RMS-normalized (Jamba).")
      .def_property_readonly("norm_eps", [](const Mamba& b) { return b.norm_eps; })
      .def_property_readonly("d_inner", &Mamba::d_inner)
      .def_property_readonly("state_size", &Mamba::state_size)
      .def_property_readonly("dt_rank", &Mamba::dt_rank)
      .def_property_readonly("conv_kernel", &Mamba::conv_kernel);

  py::class_<Linear, Block, std::shared_ptr<Linear>>(m, "Linear")
      .def(py::init([](py::object w, py::object b) {
             return std::make_shared<Linear>(to_tensor(w, "Linear", "weight"), to_tensor_opt(b, "Linear", "bias"));
           }),
           py::arg("weight"), py::arg("bias") = py::none());

  m.def("glob_match", &glob_match, py::arg("pattern"), py::arg("path"),
        "Whether a block path matches a hook glob ('*' within one dot-separated name, '**' across names).");
  m.def("split_pattern",
        [](const std::string& p) {
          const HookPattern s = split_pattern(p);
          return py::make_tuple(s.block, s.point);
        },
        py::arg("pattern"), "(block glob, point) of a hook pattern, as the native hooks read it.");

  py::class_<PatternHooks, std::shared_ptr<PatternHooks>>(m, "Hooks",
                                                          "Captures and replacements for CausalLM.forward, by block "
                                                          "path glob (see lmblocks.Model.capture).")
      .def(py::init<>())
      .def("capture", &PatternHooks::add_capture, py::arg("pattern"))
      .def("replace",
           [](PatternHooks& h, const std::string& pattern, py::function fn) {
             h.add_replace(pattern, [fn](const std::string& path, const Context& ctx, const Tensor& out) -> Tensor {
               py::gil_scoped_acquire gil;
               py::array pos = py::array_t<int64_t>(py::ssize_t(ctx.pos.size()), ctx.pos.data());
               py::object r = fn(path, to_numpy(out), pos);
               if (r.is_none()) return out;
               Tensor t = to_tensor(r, "hook", "replacement");
               if (t.dtype() != DType::f32) t = t.to(DType::f32);
               return t;
             });
           },
           py::arg("pattern"), py::arg("fn"),
           "fn(path, out, positions) -> array like out, or None to keep out (it may also change out in place).")
      .def_property_readonly("patterns", [](const PatternHooks& h) { return h.capture_patterns; })
      .def("records",
           [](const PatternHooks& h) {
             py::list out;
             for (const auto& r : h.records)
               out.append(py::make_tuple(r.key, to_numpy(r.value),
                                         py::array_t<int64_t>(py::ssize_t(r.pos.size()), r.pos.data()),
                                         py::array_t<int32_t>(py::ssize_t(r.seq.size()), r.seq.data())));
             return out;
           },
           "[(\"path.point\", value, positions, sequences)] in the order captured.")
      .def("clear", [](PatternHooks& h) { h.records.clear(); });

  py::class_<Residual, Block, std::shared_ptr<Residual>>(m, "Residual")
      .def(py::init<BlockPtr, BlockPtr, BlockPtr>(), py::arg("pre"), py::arg("inner"), py::arg("post") = nullptr)
      .def_readonly("pre", &Residual::pre)
      .def_readonly("inner", &Residual::inner)
      .def_readonly("post", &Residual::post);

  py::class_<Sequential, Block, std::shared_ptr<Sequential>>(m, "Sequential")
      .def(py::init<std::vector<BlockPtr>>(), py::arg("blocks"))
      .def("__len__", [](const Sequential& s) { return s.blocks.size(); })
      .def("__getitem__", [](const Sequential& s, int64_t i) {
        const int64_t n = int64_t(s.blocks.size());
        if (i < 0) i += n;
        if (i < 0 || i >= n) throw IndexError("Sequential: index out of range");
        return s.blocks[size_t(i)];
      });

  py::class_<ConcatEmbeddings, Block, std::shared_ptr<ConcatEmbeddings>>(
      m, "ConcatEmbeddings", "[x | e]: each token's features beside its embedding, (N, D) -> (N, D + De).")
      .def(py::init<int64_t, int64_t>(), py::arg("dim"), py::arg("embed_dim"))
      .def_readonly("dim", &ConcatEmbeddings::dim)
      .def_readonly("embed_dim", &ConcatEmbeddings::embed_dim);

  py::class_<Parallel, Block, std::shared_ptr<Parallel>>(m, "Parallel",
                                                    "The sum of its blocks' outputs on one input.")
      .def(py::init<std::vector<BlockPtr>>(), py::arg("blocks"))
      .def_readonly("blocks", &Parallel::blocks)
      .def("__len__", [](const Parallel& p) { return p.blocks.size(); });

  py::class_<KVCache, std::shared_ptr<KVCache>>(m, "KVCache")
      .def_property_readonly("n_seq", &KVCache::n_seq)
      .def_property_readonly("n_ctx", &KVCache::n_ctx)
      .def_property_readonly("n_batch", &KVCache::n_batch)
      .def_property_readonly("dtype", [](const KVCache& c) { return std::string(name(c.dtype())); })
      .def_property_readonly("nbytes", &KVCache::nbytes)
      .def("length", &KVCache::length, py::arg("seq") = 0, "Positions filled in sequence `seq`.")
      .def("clear", &KVCache::clear, py::arg("seq") = -1, "Forget sequence `seq` (all when -1).")
      .def("layer", [](KVCache& c, int64_t i) {
             const auto& ls = c.layers();
             if (i < 0 || i >= int64_t(ls.size())) throw IndexError("KVCache.layer: index out of range");
             return py::make_tuple(py::cast(ls[size_t(i)].k), py::cast(ls[size_t(i)].v));
           },
           "(k, v) of attention block i: (S, Hkv, C, hd) tensors; position p lives in slot p % C.")
      .def("states",
           [](KVCache& c) {
             py::list out;
             for (const auto& st : c.states()) {
               py::list ts;
               for (const Tensor& t : st.tensors) ts.append(to_numpy(t));
               out.append(py::make_tuple(st.block->path, ts));
             }
             return out;
           },
           "[(block path, [state arrays (S, ...)])] of every stateful block: writable views, so a state can be "
           "read out, saved, and restored by assigning into them.")
      .def("snapshot", &KVCache::snapshot, py::arg("seq") = 0,
           "A copy of sequence `seq`: its length, keys and values, and recurrent states (a CacheSnapshot).")
      .def("restore", [](KVCache& c, const KVCache::Snapshot& s, int64_t seq) { c.restore(seq, s); },
           py::arg("snapshot"), py::arg("seq") = 0,
           "Write a snapshot back into sequence `seq`; raises ValueError naming the block when it was taken "
           "from another model.")
      .def("__len__", [](const KVCache& c) { return c.layers().size(); });

  py::class_<KVCache::Snapshot>(m, "CacheSnapshot",
                                "One sequence of a KVCache, copied (KVCache.snapshot); restore with KVCache.restore.")
      .def_readonly("length", &KVCache::Snapshot::length)
      .def_property_readonly("nbytes", &KVCache::Snapshot::nbytes)
      .def("arrays",
           [](const KVCache::Snapshot& s) {
             py::dict out;
             for (const auto& [path, ts] : s.entries) {
               py::list l;
               for (const Tensor& t : ts) l.append(to_numpy(t));
               out[py::str(path)] = l;
             }
             return out;
           },
           "{block path: [arrays]}: attention blocks' (keys, values) as (Hkv, length, hd), stateful blocks' "
           "states, as views of the snapshot's own copies.")
      .def("__repr__", [](const KVCache::Snapshot& s) {
        return "CacheSnapshot(length=" + std::to_string(s.length) + ", blocks=" + std::to_string(s.entries.size()) +
               ", nbytes=" + std::to_string(s.nbytes()) + ")";
      });

  py::class_<CausalLM, std::shared_ptr<CausalLM>>(m, "CausalLM")
      .def(py::init([](py::object embed, float scale, BlockPtr body, BlockPtr norm, py::object head, float softcap) {
             return std::make_shared<CausalLM>(to_tensor(embed, "CausalLM", "embed_tokens"), scale, std::move(body),
                                               std::move(norm), to_tensor_opt(head, "CausalLM", "lm_head"), softcap);
           }),
           py::arg("embed_tokens"), py::arg("embed_scale"), py::arg("body"), py::arg("norm"),
           py::arg("lm_head") = py::none(), py::arg("final_softcap") = 0.f)
      .def("make_cache",
           [](const CausalLM& m, int64_t n_seq, int64_t n_ctx, int64_t n_batch, const std::string& dtype) {
             DType t = dtype == "f16" || dtype == "float16" ? DType::f16 : DType::f32;
             if (dtype != "f32" && dtype != "float32" && t != DType::f16)
               throw ValueError("make_cache: dtype must be 'f32' or 'f16', got '" + dtype + "'");
             return m.make_cache(n_seq, n_ctx, n_batch, t);
           },
           py::arg("n_seq") = 1, py::arg("n_ctx") = 2048, py::arg("n_batch") = 512, py::arg("dtype") = "f32")
      .def("forward",
           [](CausalLM& m, KVCache& cache, py::object tokens, py::object seq, const std::string& logits,
              PatternHooks* hooks) {
             const Tensor tt = to_tensor(tokens, "CausalLM.forward", "tokens");
             const Tensor ts = to_tensor_opt(seq, "CausalLM.forward", "seq");
             const Logits l = logits_arg(logits);
             Tensor out;
             {
               py::gil_scoped_release nogil;
               out = m.forward(cache, tt, ts, l, hooks);
             }
             if (!out.defined()) return py::object(py::none());
             return py::object(to_numpy(out));
           },
           py::arg("cache"), py::arg("tokens"), py::arg("seq") = py::none(), py::arg("logits") = "last",
           py::arg("hooks") = nullptr)
      .def_readonly("body", &CausalLM::body)
      .def_readonly("norm", &CausalLM::norm)
      .def_property_readonly("embed_tokens", [](const CausalLM& m) { return m.embed_tokens; })
      .def_property_readonly("lm_head", [](const CausalLM& m) { return m.lm_head; })
      .def_readonly("embed_scale", &CausalLM::embed_scale)
      .def_readonly("final_softcap", &CausalLM::final_softcap)
      .def_readwrite("logit_scale", &CausalLM::logit_scale, "Logits are multiplied by this (Granite: 1 / logits_scaling).")
      .def_property_readonly("vocab_size", &CausalLM::vocab_size)
      .def_property_readonly("model_dim", &CausalLM::model_dim)
      .def_property_readonly("tied", &CausalLM::tied, "Whether the output head is the embedding itself.");
}

}  // namespace lb::py_bind

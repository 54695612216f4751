// lb._core.nn's Mixture-of-Experts blocks (cpp/include/lmblocks/moe.h).
#include "lmblocks/blocks.h"
#include "lmblocks/quant.h"

#include "bindings.h"

namespace lb::py_bind {

void bind_moe(py::module_ m) {
  using namespace blocks;
  py::class_<MoE, Block, std::shared_ptr<MoE>>(
      m, "MoE",
      "Top-k routed experts, stacked one tensor per projection: router (E, D), gate_proj/up_proj (E, F, D), "
      "down_proj (E, D, F), any weight dtype (gate_proj None: plain experts). Hook points: router, experts, "
      "expert_weights.")
      .def(py::init([](py::object router, py::object gate, py::object up, py::object down, int64_t top_k,
                       const std::string& scoring, bool norm_topk, const std::string& act, py::object router_bias,
                       py::object selection_bias, float routed_scale, std::shared_ptr<MLP> shared,
                       py::object shared_gate) {
             const char* op = "MoE";
             MoEConfig c;
             c.top_k = top_k;
             c.scoring = scoring_from_name(scoring);
             c.norm_topk = norm_topk;
             c.routed_scale = routed_scale;
             c.act = activation_from_name(act);
             return std::make_shared<MoE>(c, to_tensor(router, op, "router"), to_tensor_opt(gate, op, "gate_proj"),
                                          to_tensor(up, op, "up_proj"), to_tensor(down, op, "down_proj"),
                                          to_tensor_opt(router_bias, op, "router_bias"),
                                          to_tensor_opt(selection_bias, op, "selection_bias"), std::move(shared),
                                          to_tensor_opt(shared_gate, op, "shared_gate"));
           }),
           py::arg("router"), py::arg("gate_proj"), py::arg("up_proj"), py::arg("down_proj"), py::arg("top_k"),
           py::kw_only(), py::arg("scoring") = "softmax", py::arg("norm_topk") = true, py::arg("activation") = "silu",
           py::arg("router_bias") = py::none(), py::arg("selection_bias") = py::none(),
           py::arg("routed_scale") = 1.f, py::arg("shared") = nullptr, py::arg("shared_gate") = py::none(),
           "scoring: 'softmax' or 'sigmoid'; norm_topk: divide the k weights by their sum; selection_bias (E,): "
           "added to the scores only to choose; routed_scale multiplies the weights; shared: an MLP every token "
           "goes through, gated by sigmoid(x . shared_gate) when shared_gate (1, D) is given.")
      .def(
          "__call__",
          [](MoE& b, py::object x) {
            const Tensor xt = to_tensor(x, "MoE", "x");
            Tensor out;
            {
              py::gil_scoped_release nogil;
              Context ctx;  // routing needs no cache or positions
              ctx.N = xt.ndim() == 2 ? xt.dim(0) : 0;
              out = b.forward(ctx, xt);
            }
            return to_numpy(out);
          },
          py::arg("x"), "The block on its own: x (N, D) -> (N, D) float32 (hooks see it inside a model).")
      .def_property_readonly("n_experts", &MoE::n_experts)
      .def_property_readonly("top_k", [](const MoE& b) { return b.cfg.top_k; })
      .def_property_readonly("expert_dim", &MoE::expert_dim, "F, the hidden size of each expert.")
      .def_property_readonly("scoring", [](const MoE& b) { return std::string(scoring_name(b.cfg.scoring)); })
      .def_property_readonly("norm_topk", [](const MoE& b) { return b.cfg.norm_topk; })
      .def_property_readonly("routed_scale", [](const MoE& b) { return b.cfg.routed_scale; })
      .def_property_readonly("activation", [](const MoE& b) { return std::string(activation_name(b.cfg.act)); })
      .def_property_readonly("gated", &MoE::gated)
      .def_readonly("shared", &MoE::shared)
      .def_property_readonly(
          "packed",
          [](const MoE& b) {
            int64_t n = 0;
            for (const Tensor* t : {&b.gate_proj, &b.up_proj, &b.down_proj})
              if (t->defined())
                for (int64_t e = 0; e < t->dim(0); ++e) n += ops::find_packed(t->select(0, e)) != nullptr;
            return n;
          },
          "How many expert matrices a CausalLM registered for its fast kernels at load (repacked ggml blocks, "
          "or f16/bf16 marked for the int16 prefill).");
}

}  // namespace lb::py_bind

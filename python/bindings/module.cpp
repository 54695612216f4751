// lmblocks._core: argument conversion only; every computation lives in cpp/.
#include "bindings.h"

PYBIND11_MODULE(_core, m) {
  m.doc() = "lmblocks native core";
  m.attr("__version__") = LB_VERSION;
  lb::py_bind::register_errors(m);
  lb::py_bind::bind_tensor(m);
  lb::py_bind::bind_runtime(m);
  lb::py_bind::bind_ops(m.def_submodule("ops", "Native kernels (see lmblocks.ops for the documented API)"));
  lb::py_bind::bind_bench(m.def_submodule("bench", "Machine ceilings measured in-process"));
  lb::py_bind::bind_quant(m.def_submodule("quant", "ggml block formats"));
  lb::py_bind::bind_text(m.def_submodule("text", "Tokenizer data and merge loops"));
  auto nn = m.def_submodule("nn", "Native blocks and the decoder that runs them");
  lb::py_bind::bind_blocks(nn);
  lb::py_bind::bind_moe(nn);
  lb::py_bind::bind_sampling(m.def_submodule("sampling", "The sampler chain on a logits vector"));
}

// lb._core.quant: ggml block formats. The documented API is python/lmblocks/quant.py.
#include "bindings.h"
#include "lmblocks/quant.h"

namespace lb::py_bind {

void bind_quant(py::module_ m) {
  m.def(
      "dequantize",
      [](py::handle t) {
        if (!py::isinstance<Tensor>(t))
          throw TypeError(std::string("dequantize: expected an lmblocks.Tensor, got ") +
                          std::string(py::str(py::type::handle_of(t).attr("__name__"))));
        const Tensor src = t.cast<Tensor>();
        Tensor r;
        {
          py::gil_scoped_release nogil;
          r = dequantize(src);
        }
        return to_numpy(r);
      },
      py::arg("t"), "A new float32 array of t's shape (see lmblocks.quant.dequantize).");
}

}  // namespace lb::py_bind

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
  m.def(
      "quantize",
      [](py::handle x, const std::string& dtype) {
        DType t;
        try {
          t = dtype_from_name(dtype);
        } catch (const TypeError&) {  // list the quantizable names, as lb::quantize reports them
          std::string msg;
          try {
            quantize(Tensor(), DType::f32);
          } catch (const ValueError& e) {
            msg = e.what();
          }
          const size_t at = msg.find("supported types");
          throw ValueError("quantize: unknown type '" + dtype + "'; " + (at == std::string::npos ? msg : msg.substr(at)));
        }
        py::object arr = py::isinstance<Tensor>(x) ? py::reinterpret_borrow<py::object>(x)
                                                   : py::module_::import("numpy").attr("asarray")(x, "float32");
        const Tensor src = to_tensor(arr, "quantize", "x");
        Tensor r;
        {
          py::gil_scoped_release nogil;
          r = quantize(src, t);
        }
        return r;
      },
      py::arg("x"), py::arg("dtype"), "A new Tensor of block type dtype (see lmblocks.quant.quantize).");
  m.def(
      "qlinear",
      [](py::array_t<float, py::array::c_style | py::array::forcecast> x, const Tensor& w, bool reference) {
        if (x.ndim() != 2 || w.ndim() != 2 || x.shape(1) != w.dim(1) || x.shape(1) % 32)
          throw ValueError("qlinear: expected x (M, K) and weight (N, K) with K a multiple of 32");
        const int64_t M = x.shape(0), K = x.shape(1), N = w.dim(0);
        py::array_t<float> y({M, N});
        const float* xp = x.data();
        float* yp = y.mutable_data();
        {
          py::gil_scoped_release nogil;
          const ops::QuantizedRows a = ops::quantize_rows(xp, M, K, K, reference);
          ops::qlinear_rows(a, w.dtype(), static_cast<const std::byte*>(w.raw()), w.strides()[0], N, yp, reference);
        }
        return y;
      },
      py::arg("x"), py::arg("w"), py::arg("reference"),
      "x @ w^T through the int8-activation kernels: the vector ones (where this CPU has them) or, with "
      "reference=True, the scalar spec. For tests; lmblocks.ops.linear picks the path itself.");
}

}  // namespace lb::py_bind

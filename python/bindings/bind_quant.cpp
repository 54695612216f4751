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
      "linears",
      [](py::array_t<float, py::array::c_style | py::array::forcecast> x, const std::vector<Tensor>& ws,
         const std::vector<py::object>& bs, bool packed) {
        const Tensor tx = to_tensor(x, "linears", "x");
        std::vector<Tensor> biases;
        for (const auto& b : bs) biases.push_back(to_tensor_opt(b, "linears", "bias"));
        std::vector<Tensor> ys;
        {
          py::gil_scoped_release nogil;
          std::vector<std::shared_ptr<ops::PackedWeight>> keep;  // registered while they live: this call
          if (packed)
            for (const Tensor& w : ws) ops::register_packed(w, keep.emplace_back(ops::pack_weight(w)));
          ys = ops::linears(tx, ws, biases);
        }
        py::list out;
        for (const Tensor& y : ys) out.append(wrap_result(y, x, py::none()));
        return out;
      },
      py::arg("x"), py::arg("weights"), py::arg("biases"), py::arg("packed") = true,
      "lb::ops::linears (one x through several weights) with each weight repacked and registered as a "
      "model's matrix for the call (packed=True), or as given. For tests; blocks call it for q/k/v and gate/up.");
  m.def(
      "qlinear",
      [](py::array_t<float, py::array::c_style | py::array::forcecast> x, const Tensor& w, bool reference,
         bool packed, int bits) {
        if (x.ndim() != 2 || w.ndim() != 2 || x.shape(1) != w.dim(1) || x.shape(1) % 32)
          throw ValueError("qlinear: expected x (M, K) and weight (N, K) with K a multiple of 32");
        const int64_t M = x.shape(0), K = x.shape(1), N = w.dim(0);
        py::array_t<float> y({M, N});
        const float* xp = x.data();
        float* yp = y.mutable_data();
        {
          py::gil_scoped_release nogil;
          const ops::QuantizedRows a = ops::quantize_rows(xp, M, K, K, reference, bits);
          if (packed && (w.dtype() == DType::f16 || w.dtype() == DType::bf16))  // a model's f16 matrix
            ops::qlinear_rows(a, w.dtype(), static_cast<const std::byte*>(w.raw()), w.strides()[0], N, yp, false);
          else if (packed)
            ops::qlinear_packed(a, *ops::pack_weight(w), yp);
          else
            ops::qlinear_rows(a, w.dtype(), static_cast<const std::byte*>(w.raw()), w.strides()[0], N, yp, reference);
        }
        return y;
      },
      py::arg("x"), py::arg("w"), py::arg("reference"), py::arg("packed") = false, py::arg("bits") = 16,
      "x @ w^T through the int16-activation kernels (bits=8: activations on the int8 range, which the "
      "packed kernels multiply as int8 for M >= 4): the vector ones (where this CPU has them), with "
      "packed=True the AVX-512 kernels on w repacked (as CausalLM does at load), or, with reference=True, "
      "the scalar spec. For tests; lmblocks.ops.linear picks the path itself.");
  m.def(
      "packed_dequantize",
      [](const Tensor& w) {
        const auto p = ops::pack_weight(w);
        py::array_t<float> y({p->N, p->K});
        float* yp = y.mutable_data();
        for (int64_t r = 0; r < p->N; ++r) ops::packed_row_to_float(*p, r, yp + r * p->K);
        return y;
      },
      py::arg("w"), "w repacked as CausalLM does, then read back row by row as float32 (for tests).");
  m.def("packable", [](const std::string& dtype) { return ops::packable(dtype_from_name(dtype)); }, py::arg("dtype"),
        "Whether weights of this type are repacked at load on this CPU (its avx512 kernels are active).");
}

}  // namespace lb::py_bind

// lb._core.sampling: the native sampler chain. The documented API is python/lmblocks/sampling.py.
#include "bindings.h"
#include "lmblocks/sampling.h"

namespace lb::py_bind {

namespace {

using sampling::Sampler;

// logits (V,) as float32 or float64 without a copy when it already is one (contiguous); anything
// else becomes float64, as np.asarray(logits, np.float64) would.
py::array logits_array(py::handle obj) {
  py::array a = py::array::ensure(obj);
  if (a && a.dtype().is(py::dtype::of<float>())) a = py::array_t<float, py::array::c_style>::ensure(a);
  else if (a) a = py::array_t<double, py::array::c_style | py::array::forcecast>::ensure(a);
  if (!a) throw ValueError("logits must be an array of real numbers");
  if (a.ndim() != 1 || a.size() == 0)
    throw ValueError("logits must have shape (vocab,) with vocab >= 1, got " + std::string(py::str(a.attr("shape"))));
  return a;
}

py::array_t<int64_t> history_array(py::handle obj) {
  auto h = py::array_t<int64_t, py::array::c_style | py::array::forcecast>::ensure(obj);
  if (!h) throw ValueError("history must be a sequence of integer token ids");
  return h;
}

// f(pointer) with the logits' element type, without the GIL.
template <class F>
auto with_logits(const py::array& a, F&& f) {
  py::gil_scoped_release nogil;
  if (a.itemsize() == sizeof(float)) return f(static_cast<const float*>(a.data()));
  return f(static_cast<const double*>(a.data()));
}

}  // namespace

void bind_sampling(py::module_ m) {
  py::class_<Sampler>(m, "Sampler", "llama.cpp's default sampler chain (see lmblocks.sampling.Sampler).")
      .def(py::init([](double temperature, int64_t top_k, double top_p, double min_p, double repeat_penalty,
                       int64_t repeat_last_n, double frequency_penalty, double presence_penalty) {
             return std::make_unique<Sampler>(sampling::Params{temperature, top_k, top_p, min_p, repeat_penalty,
                                                               repeat_last_n, frequency_penalty, presence_penalty});
           }),
           py::kw_only(), py::arg("temperature"), py::arg("top_k"), py::arg("top_p"), py::arg("min_p"),
           py::arg("repeat_penalty"), py::arg("repeat_last_n"), py::arg("frequency_penalty"),
           py::arg("presence_penalty"))
      .def(
          "sample",
          [](Sampler& s, py::handle logits, py::handle history, double u) {
            const py::array x = logits_array(logits);
            const auto h = history_array(history);
            bool used = false;
            const int64_t t = with_logits(x, [&](auto p) {
              return s.sample(p, int64_t(x.size()), h.data(), int64_t(h.size()), u, used);
            });
            return py::make_tuple(t, used);
          },
          py::arg("logits"), py::arg("history"), py::arg("u"),
          "(token, whether the uniform draw u was used): the chain keeps one token -> u is not used.")
      .def(
          "probs",
          [](Sampler& s, py::handle logits, py::handle history) {
            const py::array x = logits_array(logits);
            const auto h = history_array(history);
            py::array_t<double> out(x.size());
            double* o = out.mutable_data();
            with_logits(x, [&](auto p) { s.probs(p, int64_t(x.size()), h.data(), int64_t(h.size()), o); });
            return out;
          },
          py::arg("logits"), py::arg("history"), "The distribution sample() draws from, float64 (V,).");
}

}  // namespace lb::py_bind

// Threads, CPU features and dispatch, and the mapping of lb exceptions to Python's.
#include "bindings.h"

namespace lb::py_bind {

void register_errors(py::module_&) {
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const lb::TypeError& e) {
      PyErr_SetString(PyExc_TypeError, e.what());
    } catch (const lb::ValueError& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    } catch (const lb::IndexError& e) {
      PyErr_SetString(PyExc_IndexError, e.what());
    } catch (const lb::IOError& e) {
      PyErr_SetString(PyExc_OSError, e.what());
    }
  });
}

void bind_runtime(py::module_& m) {
  m.def("set_num_threads", &set_num_threads, py::arg("n"));
  m.def("get_num_threads", &num_threads);
  m.def("set_isa", [](const std::string& s) { set_isa(isa_from_name(s)); }, py::arg("isa"));
  m.def("get_isa", [] { return std::string(isa_name(active_isa())); });
  m.def("set_activation_quantization", &set_activation_quantization, py::arg("on"));
  m.def("get_activation_quantization", &activation_quantization);
  m.def("set_activation_bits", &set_activation_bits, py::arg("bits"));
  m.def("get_activation_bits", &activation_bits);
  m.def("release_buffers", &release_buffers, "Free the scratch buffers kept for reuse (see lmblocks/runtime.h).");
  m.def("cached_buffer_bytes", &cached_buffer_bytes);
  m.def("isa_env_warning", [] { return isa_env_warning(); });
  m.def("cpu_info", [] {
    const CpuFeatures& f = cpu_features();
    py::dict d, feats, kernels;
    for (auto& [n, v] : f.flags) feats[py::str(n)] = v;
    std::vector<std::string> compiled, available;
    for (Isa i : {Isa::scalar, Isa::avx2, Isa::avx512, Isa::neon}) {
      if (!isa_compiled(i)) continue;
      compiled.push_back(isa_name(i));
      const bool ok = i == Isa::scalar || (i == Isa::neon ? best_isa() == Isa::neon
                                                          : best_isa() != Isa::neon && int(i) <= int(best_isa()));
      if (ok) available.push_back(isa_name(i));
    }
    for (const KernelFamily& k : kernel_families()) {
      // Families without vector variants (BLAS, gathers) report what they run on instead.
      std::string path = k.variants.empty() ? std::string(k.note) : isa_name(resolve_isa(k.variants));
      if (!k.variants.empty() && k.note && *k.note) path += std::string(" (") + k.note + ")";
      kernels[py::str(k.name)] = path;
    }
    d["arch"] = f.arch;
    d["vendor"] = f.vendor;
    d["model"] = f.model;
    d["features"] = feats;
    d["isa"] = isa_name(active_isa());
    d["best_isa"] = isa_name(best_isa());
    d["compiled_isas"] = compiled;
    d["available_isas"] = available;
    d["kernels"] = kernels;
    d["blas"] = blas_info();
    d["num_threads"] = num_threads();
    return d;
  });
}

}  // namespace lb::py_bind

// lmblocks._core.bench: the machine's measured ceilings (see lmblocks.ceilings).
#include "bindings.h"
#include "lmblocks/ceilings.h"

namespace lb::py_bind {
void bind_bench(py::module_ m) {
  m.def("fma_peak", &measure_fma_peak, py::arg("threads") = 1, py::arg("seconds") = 0.3,
        py::call_guard<py::gil_scoped_release>(),
        "fp32 GFLOP/s of a register-resident FMA loop on `threads` threads (best of a few runs).");
  m.def("read_bandwidth", &measure_read_bandwidth, py::arg("nbytes") = int64_t(1) << 30, py::arg("threads") = 1,
        py::arg("reps") = 3, py::call_guard<py::gil_scoped_release>(),
        "GB/s of a streaming read of an `nbytes` buffer on `threads` threads (best of `reps`).");
}
}  // namespace lb::py_bind

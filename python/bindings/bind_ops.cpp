// lb._core.ops: convert arguments, release the GIL, call lb::ops. The documented API with
// defaults and docstrings is python/lmblocks/ops.py.
#include "bindings.h"

namespace lb::py_bind {
namespace {

Tensor out_tensor(py::handle out, const char* op) {
  if (out.is_none()) return Tensor();
  if (!py::isinstance<Tensor>(out) && !py::isinstance<py::array>(out))
    throw TypeError(std::string(op) + ": out must be a NumPy array or an lmblocks.Tensor");
  return to_tensor(out, op, "out");
}

// Runs the op without the GIL and returns the result as the kind of `like`.
template <class F>
py::object run(py::handle like, py::handle out, F&& f) {
  Tensor r;
  {
    py::gil_scoped_release nogil;
    r = f();
  }
  return wrap_result(r, like, out);
}

ops::Gelu gelu_arg(const std::string& s, const char* op) {
  if (s == "none" || s == "erf") return ops::Gelu::erf;
  if (s == "tanh") return ops::Gelu::tanh;
  throw ValueError(std::string(op) + ": approximate must be 'none' or 'tanh', got '" + s + "'");
}

using Scaling = std::tuple<std::string, double, double, double, double>;

ops::Rope rope_arg(double theta, int64_t rotary_dim, bool interleaved, const Scaling& sc) {
  ops::Rope r;
  r.theta = theta;
  r.rotary_dim = rotary_dim;
  r.interleaved = interleaved;
  std::tie(r.scaling, r.factor, r.low_freq_factor, r.high_freq_factor, r.original_max_position) = sc;
  return r;
}

}  // namespace

void bind_ssm_ops(py::module_& m);

void bind_ops(py::module_ m) {
  m.def("matmul", [](py::object a, py::object b, py::object out) {
    Tensor ta = to_tensor(a, "matmul", "a"), tb = to_tensor(b, "matmul", "b"), to = out_tensor(out, "matmul");
    return run(a, out, [&] { return ops::matmul(ta, tb, to); });
  });
  m.def("linear", [](py::object x, py::object w, py::object b, py::object out) {
    Tensor tx = to_tensor(x, "linear", "x"), tw = to_tensor(w, "linear", "weight");
    Tensor tb = to_tensor_opt(b, "linear", "bias"), to = out_tensor(out, "linear");
    return run(x, out, [&] { return ops::linear(tx, tw, tb, to); });
  });
  m.def("rms_norm", [](py::object x, py::object w, float eps, float offset, py::object out) {
    Tensor tx = to_tensor(x, "rms_norm", "x"), tw = to_tensor_opt(w, "rms_norm", "weight");
    Tensor to = out_tensor(out, "rms_norm");
    return run(x, out, [&] { return ops::rms_norm(tx, tw, eps, offset, to); });
  });
  m.def("layer_norm", [](py::object x, py::object w, py::object b, float eps, py::object out) {
    Tensor tx = to_tensor(x, "layer_norm", "x"), tw = to_tensor_opt(w, "layer_norm", "weight");
    Tensor tb = to_tensor_opt(b, "layer_norm", "bias"), to = out_tensor(out, "layer_norm");
    return run(x, out, [&] { return ops::layer_norm(tx, tw, tb, eps, to); });
  });
  m.def("softmax", [](py::object x, int axis, py::object out) {
    Tensor tx = to_tensor(x, "softmax", "x"), to = out_tensor(out, "softmax");
    return run(x, out, [&] { return ops::softmax(tx, axis, to); });
  });
  m.def("silu", [](py::object x, py::object out) {
    Tensor tx = to_tensor(x, "silu", "x"), to = out_tensor(out, "silu");
    return run(x, out, [&] { return ops::silu(tx, to); });
  });
  m.def("gelu", [](py::object x, const std::string& approx, py::object out) {
    const ops::Gelu g = gelu_arg(approx, "gelu");
    Tensor tx = to_tensor(x, "gelu", "x"), to = out_tensor(out, "gelu");
    return run(x, out, [&] { return ops::gelu(tx, g, to); });
  });
  m.def("swiglu", [](py::object gate, py::object up, py::object out) {
    Tensor tg = to_tensor(gate, "swiglu", "gate"), tu = to_tensor_opt(up, "swiglu", "up");
    Tensor to = out_tensor(out, "swiglu");
    return run(gate, out, [&] { return ops::swiglu(tg, tu, to); });
  });
  m.def("geglu", [](py::object gate, py::object up, const std::string& approx, py::object out) {
    const ops::Gelu g = gelu_arg(approx, "geglu");
    Tensor tg = to_tensor(gate, "geglu", "gate"), tu = to_tensor_opt(up, "geglu", "up");
    Tensor to = out_tensor(out, "geglu");
    return run(gate, out, [&] { return ops::geglu(tg, tu, g, to); });
  });
  m.def("rope", [](py::object x, py::object positions, int64_t offset, double theta, int64_t rotary_dim,
                   bool interleaved, const Scaling& scaling, py::object out) {
    const ops::Rope cfg = rope_arg(theta, rotary_dim, interleaved, scaling);
    Tensor tx = to_tensor(x, "rope", "x"), tp = to_tensor_opt(positions, "rope", "positions");
    Tensor to = out_tensor(out, "rope");
    return run(x, out, [&] { return ops::rope(tx, tp, offset, cfg, to); });
  });
  m.def("rope_inv_freq", [](int64_t rotary_dim, double theta, const Scaling& scaling) {
    std::vector<double> f = ops::rope_inv_freq(rotary_dim, rope_arg(theta, rotary_dim, false, scaling));
    return py::array_t<double>(py::ssize_t(f.size()), f.data());
  });
  m.def("embedding", [](py::object ids, py::object table, py::object out) {
    Tensor ti = to_tensor(ids, "embedding", "ids"), tt = to_tensor(table, "embedding", "table");
    Tensor to = out_tensor(out, "embedding");
    return run(table, out, [&] { return ops::embedding(ti, tt, to); });
  });
  m.def("add", [](py::object a, py::object b, py::object out) {
    Tensor ta = to_tensor(a, "add", "a"), tb = to_tensor(b, "add", "b"), to = out_tensor(out, "add");
    return run(a, out, [&] { return ops::add(ta, tb, to); });
  });
  m.def("mul", [](py::object a, py::object b, py::object out) {
    Tensor ta = to_tensor(a, "mul", "a"), tb = to_tensor(b, "mul", "b"), to = out_tensor(out, "mul");
    return run(a, out, [&] { return ops::mul(ta, tb, to); });
  });
  m.def("attention", [](py::object q, py::object k, py::object v, bool causal, int64_t window, py::object mask,
                        float scale, float softcap, py::object out) {
    ops::Attention cfg;
    cfg.causal = causal;
    cfg.window = window;
    cfg.scale = scale;
    cfg.softcap = softcap;
    Tensor tq = to_tensor(q, "attention", "q"), tk = to_tensor(k, "attention", "k"), tv = to_tensor(v, "attention", "v");
    Tensor tm = to_tensor_opt(mask, "attention", "mask"), to = out_tensor(out, "attention");
    return run(q, out, [&] { return ops::attention(tq, tk, tv, tm, cfg, to); });
  });
  m.def("attention_cache", [](py::object q, py::object k, py::object v, int64_t pos, int64_t window, float scale,
                              float softcap, py::object out) {
    ops::Attention cfg;
    cfg.window = window;
    cfg.scale = scale;
    cfg.softcap = softcap;
    Tensor tq = to_tensor(q, "attention_cache", "q"), tk = to_tensor(k, "attention_cache", "k");
    Tensor tv = to_tensor(v, "attention_cache", "v"), to = out_tensor(out, "attention_cache");
    return run(q, out, [&] { return ops::attention_cache(tq, tk, tv, pos, cfg, to); });
  });
  bind_ssm_ops(m);
}

// ---- State-space model kernels (Mamba, Mamba2): issue 6 ----------------------------------------

namespace {
// The in-place state: a NumPy array or Tensor (anything else would be a temporary copy).
Tensor state_arg(py::handle s, const char* op) {
  if (s.is_none()) return Tensor();
  if (!py::isinstance<Tensor>(s) && !py::isinstance<py::array>(s))
    throw TypeError(std::string(op) + ": state must be a float32 NumPy array or an lmblocks.Tensor (it is updated in place)");
  return to_tensor(s, op, "state");
}
}  // namespace

void bind_ssm_ops(py::module_& m) {
  m.def("causal_conv1d", [](py::object x, py::object w, py::object b, py::object state, bool silu) {
    constexpr const char* op = "causal_conv1d";
    Tensor tx = to_tensor(x, op, "x"), tw = to_tensor(w, op, "weight"), tb = to_tensor_opt(b, op, "bias");
    Tensor ts = state_arg(state, op);
    return run(x, py::none(), [&] { return ops::causal_conv1d(tx, tw, tb, ts, silu); });
  });
  m.def("selective_scan", [](py::object x, py::object dt, py::object A, py::object B, py::object C, py::object D,
                             py::object z, py::object dt_bias, py::object state, bool dt_softplus) {
    constexpr const char* op = "selective_scan";
    Tensor tx = to_tensor(x, op, "x"), tdt = to_tensor(dt, op, "dt"), tA = to_tensor(A, op, "A");
    Tensor tB = to_tensor(B, op, "B"), tC = to_tensor(C, op, "C"), tD = to_tensor_opt(D, op, "D");
    Tensor tz = to_tensor_opt(z, op, "z"), tbias = to_tensor_opt(dt_bias, op, "dt_bias"), ts = state_arg(state, op);
    return run(x, py::none(), [&] { return ops::selective_scan(tx, tdt, tA, tB, tC, tD, tz, tbias, ts, dt_softplus); });
  });
  m.def("ssd_scan", [](py::object x, py::object dt, py::object A, py::object B, py::object C, py::object D,
                       py::object dt_bias, py::object state, int64_t chunk_size, bool dt_softplus, float dt_min,
                       float dt_max) {
    constexpr const char* op = "ssd_scan";
    ops::Ssd cfg;
    cfg.chunk_size = chunk_size;
    cfg.dt_softplus = dt_softplus;
    cfg.dt_min = dt_min;
    cfg.dt_max = dt_max;
    Tensor tx = to_tensor(x, op, "x"), tdt = to_tensor(dt, op, "dt"), tA = to_tensor(A, op, "A");
    Tensor tB = to_tensor(B, op, "B"), tC = to_tensor(C, op, "C"), tD = to_tensor_opt(D, op, "D");
    Tensor tbias = to_tensor_opt(dt_bias, op, "dt_bias"), ts = state_arg(state, op);
    return run(x, py::none(), [&] { return ops::ssd_scan(tx, tdt, tA, tB, tC, tD, tbias, ts, cfg); });
  });
  m.def("rms_norm_gated", [](py::object x, py::object z, py::object w, float eps, int64_t group_size) {
    constexpr const char* op = "rms_norm_gated";
    Tensor tx = to_tensor(x, op, "x"), tz = to_tensor_opt(z, op, "z"), tw = to_tensor_opt(w, op, "weight");
    return run(x, py::none(), [&] { return ops::rms_norm_gated(tx, tz, tw, eps, group_size); });
  });
}

}  // namespace lb::py_bind

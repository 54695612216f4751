// Activations: SiLU (Elfwing et al. 2017), GELU (Hendrycks & Gimpel 2016) in its exact erf and tanh
// forms, and the gated units SwiGLU / GeGLU (Shazeer 2020): act(gate) * up.
#include <algorithm>
#include <cmath>

#include "ops/kernel.h"

// x, y: (n,) elementwise.
LB_DECLARE_KERNEL(void, silu, (const float* x, float* y, int64_t n))
LB_DECLARE_KERNEL(void, gelu_erf, (const float* x, float* y, int64_t n))
LB_DECLARE_KERNEL(void, gelu_tanh, (const float* x, float* y, int64_t n))
// g, u, y: (n,); y = act(g) * u.
LB_DECLARE_KERNEL(void, swiglu, (const float* g, const float* u, float* y, int64_t n))
LB_DECLARE_KERNEL(void, geglu_erf, (const float* g, const float* u, float* y, int64_t n))
LB_DECLARE_KERNEL(void, geglu_tanh, (const float* g, const float* u, float* y, int64_t n))

namespace lb::kernels {
#if LB_SIMD
namespace LB_ISA {
using namespace simd;
namespace {

// y = f(x), two vectors per step; both loads precede the stores, so y == x is fine.
template <class F>
inline void map1(const float* x, float* y, int64_t n, F f) {
  int64_t i = 0;
  for (; i + 2 * W <= n; i += 2 * W) {
    const V a = f(load(x + i)), b = f(load(x + i + W));
    store(y + i, a);
    store(y + i + W, b);
  }
  for (; i < n; i += W) {
    const int k = int(std::min<int64_t>(W, n - i));
    store_n(y + i, f(load_n(x + i, k)), k);
  }
}

// y = f(g) * u.
template <class F>
inline void map_glu(const float* g, const float* u, float* y, int64_t n, F f) {
  int64_t i = 0;
  for (; i + 2 * W <= n; i += 2 * W) {
    const V a = f(load(g + i)) * load(u + i), b = f(load(g + i + W)) * load(u + i + W);
    store(y + i, a);
    store(y + i + W, b);
  }
  for (; i < n; i += W) {
    const int k = int(std::min<int64_t>(W, n - i));
    store_n(y + i, f(load_n(g + i, k)) * load_n(u + i, k), k);
  }
}

}  // namespace

void silu(const float* x, float* y, int64_t n) { map1(x, y, n, [](V v) { return simd::silu(v); }); }
void gelu_erf(const float* x, float* y, int64_t n) { map1(x, y, n, [](V v) { return simd::gelu_erf(v); }); }
void gelu_tanh(const float* x, float* y, int64_t n) { map1(x, y, n, [](V v) { return simd::gelu_tanh(v); }); }
void swiglu(const float* g, const float* u, float* y, int64_t n) {
  map_glu(g, u, y, n, [](V v) { return simd::silu(v); });
}
void geglu_erf(const float* g, const float* u, float* y, int64_t n) {
  map_glu(g, u, y, n, [](V v) { return simd::gelu_erf(v); });
}
void geglu_tanh(const float* g, const float* u, float* y, int64_t n) {
  map_glu(g, u, y, n, [](V v) { return simd::gelu_tanh(v); });
}
}  // namespace LB_ISA
#else
namespace {

inline float silu1(float x) { return x / (1.f + std::exp(-x)); }
// x * Phi(x) = 0.5 x erfc(-x / sqrt 2); erfc keeps the left tail accurate where 1 + erf cancels.
inline float gelu_erf1(float x) { return 0.5f * x * std::erfc(-x * 0.70710678118654752f); }
// 0.5 x (1 + tanh(u)) rewritten as x / (1 + exp(-2u)), which does not cancel for x << 0.
inline float gelu_tanh1(float x) {
  const float u = 0.7978845608028654f * (x + 0.044715f * x * x * x);
  return x / (1.f + std::exp(-2.f * u));
}

}  // namespace

void silu_ref(const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = silu1(x[i]);
}
void gelu_erf_ref(const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = gelu_erf1(x[i]);
}
void gelu_tanh_ref(const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = gelu_tanh1(x[i]);
}
void swiglu_ref(const float* g, const float* u, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = silu1(g[i]) * u[i];
}
void geglu_erf_ref(const float* g, const float* u, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = gelu_erf1(g[i]) * u[i];
}
void geglu_tanh_ref(const float* g, const float* u, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = gelu_tanh1(g[i]) * u[i];
}
#endif
}  // namespace lb::kernels

#if !LB_SIMD
#include "ops/common.h"

namespace lb::ops {
LB_REGISTER_FAMILY(activations, true, "silu, gelu, swiglu, geglu");

namespace {

using UnaryFn = void (*)(const float*, float*, int64_t);
using GluFn = void (*)(const float*, const float*, float*, int64_t);

// Elementwise chunks of this many floats per task: a few microseconds of exp-bound work.
constexpr int64_t kGrain = 16384;

Tensor unary(const Tensor& x_in, Tensor out, const char* op, UnaryFn fn) {
  detail::check_float(x_in, op, "x");
  const Tensor x = detail::f32_contiguous(x_in, op, "x");
  out = detail::prepare_out(out, x_in.shape(), op, {{x_in, "x", true}});
  const float* xp = x.data<float>();
  float* yp = out.data<float>();
  parallel_for(x.numel(), kGrain, [&](int64_t b, int64_t e) { fn(xp + b, yp + b, e - b); });
  return out;
}

// gate, up: (..., F) -> (..., F); or gate (..., 2F) holding [gate | up] and up undefined -> (..., F).
Tensor glu(const Tensor& gate_in, const Tensor& up_in, Tensor out, const char* op, GluFn fn) {
  detail::check_float(gate_in, op, "gate");
  if (up_in.defined()) {
    detail::check_float(up_in, op, "up");
    if (up_in.shape() != gate_in.shape())
      throw ValueError(std::string(op) + ": up has shape " + shape_str(up_in.shape()) + "; expected gate's shape " +
                       shape_str(gate_in.shape()));
    const Tensor g = detail::f32_contiguous(gate_in, op, "gate");
    const Tensor u = detail::f32_contiguous(up_in, op, "up");
    out = detail::prepare_out(out, gate_in.shape(), op, {{gate_in, "gate", true}, {up_in, "up", true}});
    const float* gp = g.data<float>();
    const float* up = u.data<float>();
    float* yp = out.data<float>();
    parallel_for(g.numel(), kGrain, [&](int64_t b, int64_t e) { fn(gp + b, up + b, yp + b, e - b); });
    return out;
  }
  if (gate_in.ndim() < 1 || gate_in.dim(-1) % 2 != 0)
    throw ValueError(std::string(op) + ": with up=None, gate holds [gate | up] on its last axis, which must be even; "
                     "got shape " + shape_str(gate_in.shape()));
  const int64_t f = gate_in.dim(-1) / 2;
  Shape shape = gate_in.shape();
  shape.back() = f;
  const Tensor g = detail::f32_contiguous(gate_in, op, "gate");
  // Output rows are half as wide as input rows, so no overlap with gate is safe.
  out = detail::prepare_out(out, shape, op, {{gate_in, "gate", false}});
  const float* gp = g.data<float>();
  float* yp = out.data<float>();
  detail::for_rows(detail::leading_rows(g), f, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) fn(gp + 2 * f * r, gp + 2 * f * r + f, yp + f * r, f);
  });
  return out;
}

}  // namespace

Tensor silu(const Tensor& x, Tensor out) { return unary(x, std::move(out), "silu", LB_DISPATCH(silu)); }

Tensor gelu(const Tensor& x, Gelu approx, Tensor out) {
  return unary(x, std::move(out), "gelu", approx == Gelu::tanh ? LB_DISPATCH(gelu_tanh) : LB_DISPATCH(gelu_erf));
}

Tensor swiglu(const Tensor& gate, const Tensor& up, Tensor out) {
  return glu(gate, up, std::move(out), "swiglu", LB_DISPATCH(swiglu));
}

Tensor geglu(const Tensor& gate, const Tensor& up, Gelu approx, Tensor out) {
  return glu(gate, up, std::move(out), "geglu", approx == Gelu::tanh ? LB_DISPATCH(geglu_tanh) : LB_DISPATCH(geglu_erf));
}

}  // namespace lb::ops
#endif

// Every SIMD kernel equals its scalar reference (DESIGN: "the scalar path is the spec"), through
// the Tensor-level ops so dispatch is exercised too. Runs natively via ctest, and on aarch64 under
// qemu-user (tools/check_arm.sh), where no Python is needed. The float64 references live in the
// Python suite (tests/ref/); this program only checks the paths against each other.
#include <cmath>
#include <cstdio>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "lmblocks/ops.h"
#include "lmblocks/runtime.h"
#include "lmblocks/tensor.h"

namespace {

using lb::Shape;
using lb::Tensor;

int g_checks = 0, g_failures = 0;

Tensor randn(const Shape& shape, std::mt19937& rng, float scale = 1.f) {
  Tensor t = Tensor::empty(shape);
  std::normal_distribution<float> nd(0.f, scale);
  for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = nd(rng);
  return t;
}

// max |a - b| / max(|b|) over all elements, with b the scalar reference.
double rel_err(const Tensor& a, const Tensor& b) {
  const Tensor ac = a.contiguous(), bc = b.contiguous();
  double num = 0, den = 1e-30;
  for (int64_t i = 0; i < ac.numel(); ++i) {
    const double x = ac.data<float>()[i], y = bc.data<float>()[i];
    if (std::isnan(x) != std::isnan(y)) return INFINITY;
    if (std::isnan(y)) continue;
    num = std::max(num, std::abs(x - y));
    den = std::max(den, std::abs(y));
  }
  return num / den;
}

// Runs `op` on the scalar path and on each vector path this CPU has; all must agree.
void check(const std::string& name, const std::function<Tensor()>& op, double tol = 2e-6) {
  const lb::Isa saved = lb::active_isa();
  lb::set_isa(lb::Isa::scalar);
  const Tensor ref = op();
  for (lb::Isa isa : {lb::Isa::avx2, lb::Isa::avx512, lb::Isa::neon}) {
    if (!lb::isa_compiled(isa)) continue;
    try {
      lb::set_isa(isa);
    } catch (const std::exception&) {
      continue;  // compiled in, but this CPU lacks it
    }
    const double e = rel_err(op(), ref);
    ++g_checks;
    if (!(e <= tol)) {
      ++g_failures;
      std::printf("FAIL %-40s %-7s rel err %.3g > %.3g\n", name.c_str(), lb::isa_name(isa), e, tol);
    }
  }
  lb::set_isa(saved);
}

}  // namespace

int main() {
  std::mt19937 rng(1234);
  const std::vector<int64_t> widths = {1, 7, 15, 16, 17, 31, 32, 33, 100, 4099};

  for (int64_t d : widths) {
    const std::string sz = "(" + std::to_string(d) + ")";
    const Tensor x = randn({3, d}, rng, 3.f), w = randn({d}, rng), g = randn({3, d}, rng, 4.f);
    check("rms_norm" + sz, [&] { return lb::ops::rms_norm(x, w, 1e-6f, 0.f); });
    check("rms_norm offset=1" + sz, [&] { return lb::ops::rms_norm(x, w, 1e-6f, 1.f); });
    check("layer_norm" + sz, [&] { return lb::ops::layer_norm(x, w, w, 1e-5f); });
    check("softmax" + sz, [&] { return lb::ops::softmax(x, -1); });
    check("softmax axis 0" + sz, [&] { return lb::ops::softmax(x, 0); });
    check("silu" + sz, [&] { return lb::ops::silu(g); });
    check("gelu erf" + sz, [&] { return lb::ops::gelu(g, lb::ops::Gelu::erf); }, 1e-5);
    check("gelu tanh" + sz, [&] { return lb::ops::gelu(g, lb::ops::Gelu::tanh); }, 1e-5);
    check("swiglu" + sz, [&] { return lb::ops::swiglu(g, x); });
    check("geglu tanh" + sz, [&] { return lb::ops::geglu(g, x, lb::ops::Gelu::tanh); }, 1e-5);
    check("add" + sz, [&] { return lb::ops::add(x, g); }, 0);
    check("mul row broadcast" + sz, [&] { return lb::ops::mul(x, w); }, 0);
    check("f16 round trip" + sz, [&] { return x.to(lb::DType::f16).to(lb::DType::f32); }, 0);
    check("bf16 to f32" + sz, [&] { return x.to(lb::DType::bf16).to(lb::DType::f32); }, 0);
  }

  for (int64_t hd : {2, 32, 64, 66, 128}) {
    const Tensor q = randn({5, 4, hd}, rng);  // (T, H, hd)
    for (bool inter : {false, true}) {
      lb::ops::Rope cfg;
      cfg.interleaved = inter;
      cfg.theta = 10000.0;
      check("rope hd=" + std::to_string(hd) + (inter ? " interleaved" : " halves"),
            [&] { return lb::ops::rope(q, Tensor(), 3, cfg); });
    }
  }

  for (int64_t hd : {1, 31, 64, 80}) {
    for (auto [T, S] : {std::pair<int64_t, int64_t>{1, 9}, {6, 6}, {7, 40}}) {
      const Tensor q = randn({T, 6, hd}, rng), k = randn({S, 2, hd}, rng), v = randn({S, 2, hd}, rng);
      for (int64_t window : {0, 4}) {
        lb::ops::Attention cfg;
        cfg.window = window;
        check("attention hd=" + std::to_string(hd) + " T=" + std::to_string(T) + " S=" + std::to_string(S) +
                  " w=" + std::to_string(window),
              [&] { return lb::ops::attention(q, k, v, Tensor(), cfg); }, 1e-5);
      }
    }
  }

  std::printf("%d passed, %d failed\n", g_checks - g_failures, g_failures);
  return g_failures ? 1 : 0;
}

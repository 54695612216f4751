// Rotary position embedding (Su et al. 2021, RoFormer). Angles and their cos/sin are computed in
// double once per (position, pair) into a table shared by every head; the kernels only rotate.
#include <vector>

#include "ops/kernel.h"

// x, y: (hd,) one head row, y may be x. cs: the table row of its position.
// Halves (NeoX): pairs (i, i + rd/2); cs = [cos (rd/2,) | sin (rd/2,)].
LB_DECLARE_KERNEL(void, rope_halves, (const float* x, float* y, const float* cs, int64_t rd, int64_t hd))
// Interleaved (GPT-J): pairs (2i, 2i+1); cs = [cos (rd,) each repeated twice | sin (rd,) as -s, +s].
LB_DECLARE_KERNEL(void, rope_interleaved, (const float* x, float* y, const float* cs, int64_t rd, int64_t hd))

namespace lb::kernels {
#if LB_SIMD
namespace LB_ISA {
using namespace simd;

namespace {
// (a0, a1, a2, a3, ...) -> (a1, a0, a3, a2, ...)
inline V swap_pairs(V a) {
#if defined(__AVX512F__)
  return {_mm512_permute_ps(a.v, 0xB1)};
#elif defined(__AVX2__)
  return {_mm256_permute_ps(a.v, 0xB1)};
#elif defined(__ARM_NEON)
  return {vrev64q_f32(a.v)};
#endif
}

inline void pass_through(const float* x, float* y, int64_t rd, int64_t hd) {
  if (x != y && hd > rd) std::memcpy(y + rd, x + rd, sizeof(float) * size_t(hd - rd));
}
}  // namespace

void rope_halves(const float* x, float* y, const float* cs, int64_t rd, int64_t hd) {
  const int64_t h = rd / 2;
  const float* c = cs;
  const float* s = cs + h;
  for (int64_t i = 0; i < h; i += W) {
    const int n = int(std::min<int64_t>(W, h - i));
    if (n == W) {
      const V x0 = load(x + i), x1 = load(x + h + i), cv = load(c + i), sv = load(s + i);
      store(y + i, x0 * cv - x1 * sv);
      store(y + h + i, fma(x0, sv, x1 * cv));
    } else {
      const V x0 = load_n(x + i, n), x1 = load_n(x + h + i, n), cv = load_n(c + i, n), sv = load_n(s + i, n);
      store_n(y + i, x0 * cv - x1 * sv, n);
      store_n(y + h + i, fma(x0, sv, x1 * cv), n);
    }
  }
  pass_through(x, y, rd, hd);
}

void rope_interleaved(const float* x, float* y, const float* cs, int64_t rd, int64_t hd) {
  const float* c = cs;
  const float* s = cs + rd;
  // rd is even and every chunk starts at a multiple of W, so no pair straddles two chunks.
  for (int64_t i = 0; i < rd; i += W) {
    const int n = int(std::min<int64_t>(W, rd - i));
    if (n == W) {
      const V xv = load(x + i);
      store(y + i, fma(swap_pairs(xv), load(s + i), xv * load(c + i)));
    } else {
      const V xv = load_n(x + i, n);
      store_n(y + i, fma(swap_pairs(xv), load_n(s + i, n), xv * load_n(c + i, n)), n);
    }
  }
  pass_through(x, y, rd, hd);
}
}  // namespace LB_ISA
#else
void rope_halves_ref(const float* x, float* y, const float* cs, int64_t rd, int64_t hd) {
  const int64_t h = rd / 2;
  for (int64_t i = 0; i < h; ++i) {
    const float c = cs[i], s = cs[h + i], x0 = x[i], x1 = x[h + i];
    y[i] = x0 * c - x1 * s;
    y[h + i] = x1 * c + x0 * s;
  }
  if (x != y)
    for (int64_t i = rd; i < hd; ++i) y[i] = x[i];
}

void rope_interleaved_ref(const float* x, float* y, const float* cs, int64_t rd, int64_t hd) {
  for (int64_t i = 0; i < rd; i += 2) {
    const float c = cs[i], s = cs[rd + i + 1], x0 = x[i], x1 = x[i + 1];
    y[i] = x0 * c - x1 * s;
    y[i + 1] = x1 * c + x0 * s;
  }
  if (x != y)
    for (int64_t i = rd; i < hd; ++i) y[i] = x[i];
}
#endif
}  // namespace lb::kernels

#if !LB_SIMD
#include <cmath>
#include <cstdio>
#include <cstring>
#include <numbers>

#include "ops/common.h"

namespace lb::ops {
LB_REGISTER_FAMILY(rope, true, "");

namespace {

bool positive_finite(double v) { return std::isfinite(v) && v > 0; }

std::string num(double v) {
  char b[32];
  std::snprintf(b, sizeof b, "%g", v);
  return b;
}

// theta^(-2i/rd) for i < rd/2, then the scaling rule; `op` names the caller in errors.
std::vector<double> inv_freq(int64_t rd, const Rope& cfg, const char* op) {
  if (rd <= 0 || rd % 2 != 0)
    throw ValueError(std::string(op) + ": rotary_dim must be a positive even number, got " + std::to_string(rd));
  if (!positive_finite(cfg.theta))
    throw ValueError(std::string(op) + ": theta must be finite and > 0, got " + num(cfg.theta));
  const std::string& kind = cfg.scaling;
  if (kind != "none" && kind != "linear" && kind != "llama3")
    throw ValueError(std::string(op) + ": unsupported rope scaling '" + kind +
                     "'; supported: 'none' (or 'default'), 'linear', 'llama3'");
  if (kind != "none" && !positive_finite(cfg.factor))
    throw ValueError(std::string(op) + ": scaling factor must be finite and > 0, got " + num(cfg.factor));
  if (kind == "llama3") {
    if (!positive_finite(cfg.low_freq_factor) || !positive_finite(cfg.original_max_position) ||
        !std::isfinite(cfg.high_freq_factor) || !(cfg.high_freq_factor > cfg.low_freq_factor))
      throw ValueError(std::string(op) + ": llama3 scaling needs 0 < low_freq_factor < high_freq_factor and "
                       "original_max_position_embeddings > 0, got low_freq_factor=" + num(cfg.low_freq_factor) +
                       ", high_freq_factor=" + num(cfg.high_freq_factor) +
                       ", original_max_position_embeddings=" + num(cfg.original_max_position));
  }
  const int64_t half = rd / 2;
  std::vector<double> f(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i) f[size_t(i)] = 1.0 / std::pow(cfg.theta, double(2 * i) / double(rd));
  if (kind == "linear") {
    for (double& v : f) v /= cfg.factor;
  } else if (kind == "llama3") {
    // Hugging Face's _compute_llama3_parameters: long wavelengths are interpolated by `factor`, short
    // ones kept, and the band between blended linearly in original_max_position / wavelen.
    const double L = cfg.original_max_position;
    const double low_wavelen = L / cfg.low_freq_factor, high_wavelen = L / cfg.high_freq_factor;
    for (double& v : f) {
      const double wavelen = 2 * std::numbers::pi / v;
      if (wavelen > low_wavelen) {
        v = v / cfg.factor;
      } else if (!(wavelen < high_wavelen)) {
        const double smooth = (L / wavelen - cfg.low_freq_factor) / (cfg.high_freq_factor - cfg.low_freq_factor);
        v = (1 - smooth) * v / cfg.factor + smooth * v;
      }
    }
  }
  return f;
}

// cos/sin rows for positions pos[0, P), in the layout the rope kernels read.
RopeTable build_table(const Rope& cfg, int64_t rd, const std::vector<double>& freq, const int64_t* pos, int64_t P) {
  RopeTable t;
  t.rotary_dim = rd;
  t.stride = cfg.interleaved ? 2 * rd : rd;  // floats per table row
  t.fn = cfg.interleaved ? LB_DISPATCH(rope_interleaved) : LB_DISPATCH(rope_halves);
  t.data.resize(static_cast<size_t>(P * t.stride));  // (P, stride)
  const int64_t half = rd / 2;
  const auto put = [&](float* r, int64_t i, double c, double sn) {
    if (cfg.interleaved) {
      r[2 * i] = r[2 * i + 1] = float(c);
      r[rd + 2 * i] = float(-sn);
      r[rd + 2 * i + 1] = float(sn);
    } else {
      r[i] = float(c);
      r[half + i] = float(sn);
    }
  };
  parallel_for(P, std::max<int64_t>(1, 2048 / std::max<int64_t>(half, 1)), [&](int64_t p0, int64_t p1) {
    // A sincos per entry dominated small heads. Where a position follows its predecessor (prefill,
    // decode steps), the angle-addition recurrence in double advances cos/sin with a few multiplies;
    // an exact sincos starts every other position and re-anchors every 256 steps.
    for (int64_t i = 0; i < half; ++i) {
      const double f = freq[size_t(i)], cf = std::cos(f), sf = std::sin(f);
      double c = 0, sn = 0;
      int64_t steps = 256;
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t q = pos[p];
        if (p > p0 && q == pos[p - 1] + 1 && steps < 256) {
          const double c2 = c * cf - sn * sf;
          sn = sn * cf + c * sf;
          c = c2;
          ++steps;
        } else {
          c = std::cos(double(q) * f);
          sn = std::sin(double(q) * f);
          steps = 0;
        }
        put(t.data.data() + p * t.stride, i, c, sn);
      }
    }
  });
  return t;
}

}  // namespace

std::vector<double> rope_inv_freq(int64_t rotary_dim, const Rope& cfg) {
  return inv_freq(rotary_dim, cfg, "rope_inv_freq");
}

RopeTable rope_table(const Rope& cfg, int64_t head_dim, const int64_t* positions, int64_t P) {
  const int64_t rd = cfg.rotary_dim == 0 ? head_dim : cfg.rotary_dim;
  if (rd <= 0 || rd > head_dim || rd % 2 != 0)
    throw ValueError("rope: rotary_dim " + std::to_string(cfg.rotary_dim) + " with head_dim " +
                     std::to_string(head_dim) + "; expected an even number in [2, head_dim]");
  return build_table(cfg, rd, inv_freq(rd, cfg, "rope"), positions, P);
}

void rope_rows(const RopeTable& table, float* x, int64_t P, int64_t H, int64_t hd, int64_t row_stride) {
  detail::for_rows(P, H * hd, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t h = 0; h < H; ++h) {
        float* xh = x + r * row_stride + h * hd;
        table.fn(xh, xh, table.row(r), table.rotary_dim, hd);
      }
  });
}


Tensor rope(const Tensor& x_in, const Tensor& positions_in, int64_t offset, const Rope& cfg, Tensor out) {
  constexpr const char* op = "rope";
  detail::check_float(x_in, op, "x");
  detail::check_ndim(x_in, 3, 4, op, "x");
  const bool batched = x_in.ndim() == 4;
  const int64_t B = batched ? x_in.dim(0) : 1, T = x_in.dim(-3), H = x_in.dim(-2), hd = x_in.dim(-1);
  if (cfg.rotary_dim < 0 || cfg.rotary_dim > hd || (cfg.rotary_dim == 0 ? hd : cfg.rotary_dim) % 2 != 0 ||
      (cfg.rotary_dim == 0 && hd == 0))
    throw ValueError(std::string(op) + ": rotary_dim " + std::to_string(cfg.rotary_dim) + " (0 means hd) with x " +
                     shape_str(x_in.shape()) + "; expected an even number in [2, hd=" + std::to_string(hd) + "]");
  const int64_t rd = cfg.rotary_dim == 0 ? hd : cfg.rotary_dim;
  const std::vector<double> freq = inv_freq(rd, cfg, op);

  // Positions: one table row per (b, t) for (B, T) positions, else per t shared by the batch
  // ((1, T) counts as (T,)).
  Tensor positions = positions_in;
  bool per_batch = false;
  if (positions.defined()) {
    if (positions.dtype() != DType::i32 && positions.dtype() != DType::i64)
      throw TypeError(std::string(op) + ": positions has dtype " + name(positions.dtype()) + "; expected i32 or i64");
    const bool ok_t = positions.ndim() == 1 && positions.dim(0) == T;
    const bool ok_bt =
        positions.ndim() == 2 && (positions.dim(0) == B || positions.dim(0) == 1) && positions.dim(1) == T;
    if (!ok_t && !ok_bt)
      throw ValueError(std::string(op) + ": positions has shape " + shape_str(positions.shape()) + "; expected (" +
                       std::to_string(T) + ",)" +
                       (batched ? " or (" + std::to_string(B) + ", " + std::to_string(T) + ")" : std::string()) +
                       " for x " + shape_str(x_in.shape()));
    if (ok_bt && positions.dim(0) == 1) positions = positions.select(0, 0);
    per_batch = positions.ndim() == 2;
  }

  const Tensor x = detail::f32_rows(x_in, op, "x");
  out = detail::prepare_out(out, x_in.shape(), op, {{x_in, "x", true}, {positions_in, "positions", false}});
  if (x.numel() == 0) return out;

  const int64_t P = per_batch ? B * T : T;
  const DType pt = positions.defined() ? positions.dtype() : DType::i64;
  std::vector<int64_t> pos(static_cast<size_t>(P));  // (P,)
  for (int64_t p = 0; p < P; ++p) {
    if (!positions.defined()) {
      pos[size_t(p)] = offset + p;
      continue;
    }
    const std::byte* base = static_cast<const std::byte*>(positions.raw());
    const int64_t off = per_batch ? (p / T) * positions.strides()[0] + (p % T) * positions.strides()[1]
                                  : p * positions.strides()[0];
    pos[size_t(p)] = index_at(base + off, pt);
  }
  const RopeTable table = build_table(cfg, rd, freq, pos.data(), P);

  const std::byte* xb = static_cast<const std::byte*>(x.raw());
  const int64_t sb = batched ? x.strides()[0] : 0, st = x.strides()[x.ndim() - 3], sh = x.strides()[x.ndim() - 2];
  float* yp = out.data<float>();
  detail::for_rows(B * T, H * hd, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / T, t = r % T;
      const std::byte* xr = xb + b * sb + t * st;
      float* yr = yp + r * H * hd;
      for (int64_t h = 0; h < H; ++h)
        table.fn(reinterpret_cast<const float*>(xr + h * sh), yr + h * hd, table.row(per_batch ? r : t), rd, hd);
    }
  });
  return out;
}

}  // namespace lb::ops
#endif

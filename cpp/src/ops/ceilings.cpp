// Machine ceilings: peak fp32 FMA throughput and streaming DRAM read bandwidth, measured with the
// same vector width and thread pool the kernels use, so benchmarks can report fractions of them.
#include "ops/kernel.h"

// Runs `iters` rounds of independent FMA chains held in registers; returns the FLOPs done (an FMA
// is 2) and writes a value depending on every chain to *sink so nothing can be optimized away.
LB_DECLARE_KERNEL(int64_t, fma_loop, (int64_t iters, float* sink))
// The sum of x (n,), read front to back with several independent accumulators; with ahead > 0 every
// line is also prefetched `ahead` bytes early, as the decode kernels do.
LB_DECLARE_KERNEL(float, read_sum, (const float* x, int64_t n, int64_t ahead))

namespace lb::kernels {
// 12 chains cover FMA latency x issue width on current cores (4 cycles x 2 pipes = 8) with room.
constexpr int kChains = 12;
// acc = acc * a + b converges to b / (1 - a) = 1: no overflow, no subnormals, however long it runs.
constexpr float kMulA = 0.999999f, kAddB = 1e-6f;

#if LB_SIMD
namespace LB_ISA {
using namespace simd;
int64_t fma_loop(int64_t iters, float* sink) {
  V acc[kChains];
  for (int k = 0; k < kChains; ++k) acc[k] = set1(float(k) * 1e-3f);
  const V a = set1(kMulA), b = set1(kAddB);
  for (int64_t i = 0; i < iters; ++i)
    for (int k = 0; k < kChains; ++k) acc[k] = fma(acc[k], a, b);
  V s = acc[0];
  for (int k = 1; k < kChains; ++k) s = s + acc[k];
  *sink = hsum(s);
  return iters * kChains * W * 2;
}

float read_sum(const float* x, int64_t n, int64_t ahead) {
  constexpr int U = 8;  // independent accumulators: enough loads in flight to saturate memory
  V acc[U];
  for (int u = 0; u < U; ++u) acc[u] = set1(0.f);
  int64_t i = 0;
  for (; i + U * W <= n; i += U * W) {
    if (ahead > 0)
      for (int64_t b = 0; b < int64_t(U * W * sizeof(float)); b += 64)
        __builtin_prefetch(reinterpret_cast<const char*>(x + i) + ahead + b);
    for (int u = 0; u < U; ++u) acc[u] = acc[u] + load(x + i + u * W);
  }
  for (; i < n; i += W) acc[0] = acc[0] + load_n(x + i, int(std::min<int64_t>(W, n - i)));
  for (int u = 1; u < U; ++u) acc[0] = acc[0] + acc[u];
  return hsum(acc[0]);
}
}  // namespace LB_ISA
#else
int64_t fma_loop_ref(int64_t iters, float* sink) {
  float acc[kChains];
  for (int k = 0; k < kChains; ++k) acc[k] = float(k) * 1e-3f;
  for (int64_t i = 0; i < iters; ++i)
    for (int k = 0; k < kChains; ++k) acc[k] = acc[k] * kMulA + kAddB;
  float s = 0.f;
  for (int k = 0; k < kChains; ++k) s += acc[k];
  *sink = s;
  return iters * kChains * 2;
}

float read_sum_ref(const float* x, int64_t n, int64_t) {
  float s = 0.f;
  for (int64_t i = 0; i < n; ++i) s += x[i];
  return s;
}
#endif
}  // namespace lb::kernels

#if !LB_SIMD
#include <algorithm>
#include <atomic>
#include <chrono>
#include <string>
#include <vector>

#include "lmblocks/ceilings.h"
#include "lmblocks/error.h"
#include "lmblocks/tensor.h"

namespace lb {
namespace {

volatile float g_sink;  // results land here, so the measured loops have an observable effect

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

// Sets the pool size for a measurement and restores the caller's afterwards.
struct PoolSize {
  int saved;
  explicit PoolSize(int n) : saved(num_threads()) { set_num_threads(n); }
  ~PoolSize() { set_num_threads(saved); }
};

// fn(r) once for each r in [0, threads), one per pool thread; returns the wall time.
template <class F>
double time_per_thread(int threads, F&& fn) {
  const double t0 = now();
  parallel_for(threads, 1, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) fn(int(r));
  });
  return now() - t0;
}

}  // namespace

double measure_fma_peak(int threads, double seconds) {
  if (threads < 1) throw ValueError("measure_fma_peak: threads must be >= 1, got " + std::to_string(threads));
  if (!(seconds > 0.0 && seconds <= 60.0)) throw ValueError("measure_fma_peak: seconds must be in (0, 60]");
  const auto fn = LB_DISPATCH(fma_loop);
  PoolSize pool(threads);
  std::vector<float> sink(size_t(threads), 0.f);
  std::atomic<int64_t> flops{0};
  auto run = [&](int64_t iters) {
    flops = 0;
    return time_per_thread(threads, [&](int r) { flops += fn(iters, &sink[size_t(r)]); });
  };
  // Calibrate (this also wakes the workers): double the rounds until one run takes 10 ms.
  int64_t iters = int64_t(1) << 12;
  double t = run(iters);
  while (t < 0.01) t = run(iters *= 2);
  constexpr int reps = 5;
  iters = std::max(iters, int64_t(double(iters) * (seconds / reps) / t));
  double best = 0.0;
  for (int i = 0; i < reps; ++i) {
    const double dt = run(iters);
    best = std::max(best, double(flops.load()) / dt * 1e-9);
  }
  float s = 0.f;
  for (float v : sink) s += v;
  g_sink = s;
  return best;
}

double measure_read_bandwidth(int64_t bytes, int threads, int reps) {
  if (threads < 1) throw ValueError("measure_read_bandwidth: threads must be >= 1, got " + std::to_string(threads));
  if (reps < 1) throw ValueError("measure_read_bandwidth: reps must be >= 1, got " + std::to_string(reps));
  if (bytes < int64_t(4096) * threads)
    throw ValueError("measure_read_bandwidth: nbytes must be >= 4096 per thread, got " + std::to_string(bytes));
  const auto fn = LB_DISPATCH(read_sum);
  PoolSize pool(threads);
  const int64_t n = bytes / int64_t(sizeof(float));
  Tensor buf = Tensor::empty({n}, DType::f32);  // x: (n,) 64-byte aligned
  float* x = buf.data<float>();
  auto lo = [&](int r) { return n * r / threads; };  // thread r reads [lo(r), lo(r + 1))
  // Touch every page from the thread that will read it, so the timed runs see no page faults.
  time_per_thread(threads, [&](int r) { std::fill(x + lo(r), x + lo(r + 1), 1.f); });
  std::vector<float> sums(size_t(threads), 0.f);
  double best = 0.0;
  // The better of the hardware prefetcher alone (the faster on one thread here) and software prefetch
  // 8 KiB ahead (the faster on two: 70 against 44 GB/s), so decode is never measured above its ceiling.
  for (int i = 0; i < reps; ++i)
    for (const int64_t ahead : {int64_t(0), int64_t(8192)}) {
      const double dt =
          time_per_thread(threads, [&](int r) { sums[size_t(r)] = fn(x + lo(r), lo(r + 1) - lo(r), ahead); });
      best = std::max(best, double(n) * sizeof(float) / dt * 1e-9);
    }
  float s = 0.f;
  for (float v : sums) s += v;
  g_sink = s;
  return best;
}

}  // namespace lb
#endif

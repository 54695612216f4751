// The one thread pool: a oneTBB arena sized by set_num_threads / LMBLOCKS_NUM_THREADS, and the
// spinning workers a ParallelPhase keeps on it for the length of a forward pass.
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <exception>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>

#include <tbb/blocked_range.h>
#include <tbb/global_control.h>
#include <tbb/parallel_for.h>
#include <tbb/partitioner.h>
#include <tbb/task_arena.h>

#include "lmblocks/error.h"
#include "lmblocks/runtime.h"

namespace lb {
namespace {

struct Pool {
  int threads = 0;
  std::shared_ptr<tbb::task_arena> arena;
  // Where ParallelPhase's spinning tasks go: an arena of its own, with no slot for outside threads.
  // In `arena` a thread waiting on its own parallel_for could pick one up and spin in it until the
  // phase ends (a deadlock if the phase's owner then waits for that thread).
  std::shared_ptr<tbb::task_arena> phase_arena;
  std::unique_ptr<tbb::global_control> control;  // lets the arena exceed TBB's default worker count
};

std::mutex g_mu;
std::atomic<int> g_threads{0};
Pool g_pool;

int cores_available() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
  return std::max(1u, std::thread::hardware_concurrency());
}

int default_threads() {
  if (const char* s = std::getenv("LMBLOCKS_NUM_THREADS")) {
    char* end = nullptr;
    long n = std::strtol(s, &end, 10);
    if (end != s && *end == '\0' && n >= 1 && n <= 1024) return int(n);
  }
  return cores_available();
}

void configure_locked(int n) {
  g_pool.control.reset();
  g_pool.control = std::make_unique<tbb::global_control>(tbb::global_control::max_allowed_parallelism,
                                                         std::max(n, cores_available()));
  g_pool.arena = std::make_shared<tbb::task_arena>(n);
  g_pool.phase_arena = std::make_shared<tbb::task_arena>(std::max(n - 1, 1), /*reserved_for_masters=*/0);
  g_pool.threads = n;
  g_threads.store(n, std::memory_order_release);
}

std::shared_ptr<tbb::task_arena> arena(bool for_phase = false) {
  std::lock_guard<std::mutex> lock(g_mu);
  if (!g_pool.arena) configure_locked(default_threads());
  return for_phase ? g_pool.phase_arena : g_pool.arena;
}

}  // namespace

int num_threads() {
  int n = g_threads.load(std::memory_order_acquire);
  if (n > 0) return n;
  std::lock_guard<std::mutex> lock(g_mu);
  if (!g_pool.arena) configure_locked(default_threads());
  return g_pool.threads;
}

void set_num_threads(int n) {
  if (n < 1 || n > 1024) throw ValueError("set_num_threads: n must be in [1, 1024], got " + std::to_string(n));
  std::lock_guard<std::mutex> lock(g_mu);
  if (g_pool.threads == n && g_pool.arena) return;
  configure_locked(n);
}

// ---- Warm workers for the length of a forward pass ----------------------------------------------
// tbb::parallel_for costs ~2 us a call at two threads (arena entry, task tree, a steal), while a
// SmolLM2 decode step makes ~210 calls of a few microseconds each; at two threads it ran only 10%
// faster than at one. Inside a ParallelPhase each of the pool's other threads runs one long TBB
// task (in an arena of their own) that spins on `word`; a parallel_for publishes its job there and
// claims parts alongside them. Parts are claimed, never assigned, so a worker that is late (or
// never comes) costs speed, not progress: the caller runs every part nobody took.
namespace {

// word = job number (40 bits) | parts (12 bits) | next unclaimed part (12 bits).
constexpr int kPartBits = 12;
constexpr uint64_t kPartMask = (uint64_t(1) << kPartBits) - 1;
uint64_t parts_of(uint64_t w) { return (w >> kPartBits) & kPartMask; }
uint64_t next_of(uint64_t w) { return w & kPartMask; }

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

struct Phase {
  std::atomic<uint64_t> word{0};
  std::atomic<int64_t> done{0};  // parts of the current job finished
  std::atomic<bool> stop{false};
  uint64_t job = 0;              // the owner's count of published jobs
  // The current job; written by the owner before it publishes `word`, read after a claim.
  RangeFn fn = nullptr;
  void* ctx = nullptr;
  int64_t n = 0;
  std::mutex error_mu;
  std::exception_ptr error;
};

thread_local Phase* t_phase = nullptr;  // the phase this thread owns
thread_local bool t_in_part = false;    // running a part (or a phase worker): nested loops run inline

// Claims and runs parts of the job published in `w` until none is left; false when w had none.
bool run_parts(Phase& ph, uint64_t w) {
  bool ran = false;
  while (next_of(w) < parts_of(w)) {
    if (!ph.word.compare_exchange_weak(w, w + 1, std::memory_order_acq_rel, std::memory_order_acquire)) continue;
    const int64_t parts = int64_t(parts_of(w)), p = int64_t(next_of(w));
    try {
      ph.fn(ph.ctx, ph.n * p / parts, ph.n * (p + 1) / parts);
    } catch (...) {
      std::lock_guard<std::mutex> lock(ph.error_mu);
      if (!ph.error) ph.error = std::current_exception();
    }
    ph.done.fetch_add(1, std::memory_order_release);
    ran = true;
    w = ph.word.load(std::memory_order_acquire);
  }
  return ran;
}

void phase_worker(const std::shared_ptr<Phase>& ph) {
  t_in_part = true;
  int idle = 0;
  while (!ph->stop.load(std::memory_order_acquire)) {
    if (run_parts(*ph, ph->word.load(std::memory_order_acquire))) {
      idle = 0;
    } else if (++idle < (1 << 16)) {
      cpu_relax();
    } else {
      std::this_thread::yield();  // a long serial stretch (a Python hook): let others have the core
    }
  }
  t_in_part = false;
}

}  // namespace

ParallelPhase::ParallelPhase() {
  if (t_phase || t_in_part) return;  // nested: the outer phase serves
  const int workers = num_threads() - 1;
  if (workers < 1) return;
  auto a = arena(/*for_phase=*/true);
  auto ph = std::make_shared<Phase>();
  for (int i = 0; i < workers; ++i) a->enqueue([ph] { phase_worker(ph); });
  t_phase = ph.get();
  phase_ = std::move(ph);
}

ParallelPhase::~ParallelPhase() {
  if (!phase_) return;
  static_cast<Phase*>(phase_.get())->stop.store(true, std::memory_order_release);
  t_phase = nullptr;
}

void parallel_for_impl(int64_t n, int64_t grain, RangeFn fn, void* ctx) {
  if (t_in_part) {  // inside a part of a phase's job: the other threads are busy with theirs
    fn(ctx, 0, n);
    return;
  }
  if (Phase* ph = t_phase) {
    const int64_t parts = std::min<int64_t>({num_threads(), std::max<int64_t>(n / grain, 1), int64_t(kPartMask)});
    if (parts <= 1) {
      fn(ctx, 0, n);
      return;
    }
    ph->fn = fn;
    ph->ctx = ctx;
    ph->n = n;
    ph->done.store(0, std::memory_order_relaxed);
    ++ph->job;
    const uint64_t w = (ph->job << (2 * kPartBits)) | (uint64_t(parts) << kPartBits);
    ph->word.store(w, std::memory_order_release);
    t_in_part = true;
    run_parts(*ph, w);
    t_in_part = false;
    while (ph->done.load(std::memory_order_acquire) < parts) cpu_relax();
    if (ph->error) std::rethrow_exception(std::exchange(ph->error, nullptr));
    return;
  }
  auto a = arena();
  a->execute([&] {
    tbb::parallel_for(
        tbb::blocked_range<int64_t>(0, n, grain),
        [&](const tbb::blocked_range<int64_t>& r) { fn(ctx, r.begin(), r.end()); },
        tbb::static_partitioner());
  });
}

}  // namespace lb

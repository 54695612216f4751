// The one thread pool: a oneTBB arena sized by set_num_threads / LMBLOCKS_NUM_THREADS.
#include <sched.h>

#include <atomic>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

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
  g_pool.threads = n;
  g_threads.store(n, std::memory_order_release);
}

std::shared_ptr<tbb::task_arena> arena() {
  std::lock_guard<std::mutex> lock(g_mu);
  if (!g_pool.arena) configure_locked(default_threads());
  return g_pool.arena;
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

void parallel_for_impl(int64_t n, int64_t grain, RangeFn fn, void* ctx) {
  auto a = arena();
  a->execute([&] {
    tbb::parallel_for(
        tbb::blocked_range<int64_t>(0, n, grain),
        [&](const tbb::blocked_range<int64_t>& r) { fn(ctx, r.begin(), r.end()); },
        tbb::static_partitioner());
  });
}

}  // namespace lb

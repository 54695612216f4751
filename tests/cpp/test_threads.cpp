// The pool's parallel_for, inside and outside a ParallelPhase: every index visited exactly once for
// awkward sizes and grains, nested loops, more threads than cores, exceptions from a part, phases
// made and ended in quick succession, and a second thread using the pool while a phase is running.
// The reference is plain counting: each index's visits, summed independently of the pool.
#include <atomic>
#include <chrono>
#include <cstdio>
#include <mutex>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "lmblocks/runtime.h"

namespace {

int g_checks = 0, g_failures = 0;

void expect(bool ok, const std::string& what) {
  ++g_checks;
  if (!ok) {
    ++g_failures;
    std::printf("FAIL %s\n", what.c_str());
  }
}

// Every index in [0, n) visited once by parallel_for(n, grain).
bool covers_once(int64_t n, int64_t grain) {
  std::vector<std::atomic<int>> seen(static_cast<size_t>(n));
  lb::parallel_for(n, grain, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) seen[size_t(i)].fetch_add(1, std::memory_order_relaxed);
  });
  for (auto& s : seen)
    if (s.load() != 1) return false;
  return true;
}

void sizes(const std::string& where) {
  for (int64_t n : {1, 2, 3, 5, 7, 64, 100, 4099})
    for (int64_t grain : {1, 2, 3, 16, 5000})
      expect(covers_once(n, grain), where + ": parallel_for(" + std::to_string(n) + ", " + std::to_string(grain) + ")");
}

}  // namespace

int main() {
  for (int threads : {1, 2, 3, 5}) {  // 3 and 5: more threads than this machine may have cores
    lb::set_num_threads(threads);
    const std::string t = std::to_string(threads) + " threads";
    sizes(t + ", no phase");
    {
      lb::ParallelPhase phase;
      sizes(t + ", in a phase");
      for (int rep = 0; rep < 2000; ++rep)  // many short jobs back to back, as a decode step makes
        if (!covers_once(37, 1)) {
          expect(false, t + ": short job " + std::to_string(rep));
          break;
        }
      // Nested: each part runs a loop of its own.
      std::vector<std::atomic<int>> seen(64 * 50);
      lb::parallel_for(64, 1, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i)
          lb::parallel_for(50, 1, [&](int64_t c, int64_t d) {
            for (int64_t j = c; j < d; ++j) seen[size_t(i * 50 + j)].fetch_add(1);
          });
      });
      bool once = true;
      for (auto& s : seen) once = once && s.load() == 1;
      expect(once, t + ": nested loops in a phase");
      lb::ParallelPhase inner;  // nested phase: does nothing, loops still run
      sizes(t + ", in a nested phase");
      // A part that throws: the caller gets the exception, and the phase keeps working.
      bool caught = false;
      try {
        lb::parallel_for(threads * 4, 1, [&](int64_t b, int64_t) {
          if (b == 0) throw std::runtime_error("part 0");
        });
      } catch (const std::runtime_error& e) {
        caught = std::string(e.what()) == "part 0";
      }
      expect(caught, t + ": exception from a part");
      sizes(t + ", in a phase after an exception");
      // Another thread uses the pool meanwhile, outside any phase.
      bool other_ok = true;
      std::thread other([&] {
        for (int rep = 0; rep < 50; ++rep) other_ok = other_ok && covers_once(1000, 7);
      });
      for (int rep = 0; rep < 200; ++rep)
        if (!covers_once(1000, 7)) expect(false, t + ": phase owner alongside another thread");
      other.join();
      expect(other_ok, t + ": a second thread alongside a phase");
      if (threads > 1) {
        // The workers take part: over jobs of parts that each take a while, more than one thread runs them.
        std::mutex mu;
        std::set<std::thread::id> ids;
        for (int rep = 0; rep < 20; ++rep)
          lb::parallel_for(threads, 1, [&](int64_t, int64_t) {
            std::this_thread::sleep_for(std::chrono::milliseconds(1));
            std::lock_guard<std::mutex> lock(mu);
            ids.insert(std::this_thread::get_id());
          });
        expect(ids.size() > 1, t + ": workers run parts (" + std::to_string(ids.size()) + " thread ran them all)");
      }
    }
    for (int rep = 0; rep < 500; ++rep) {  // phases begun and ended in quick succession
      lb::ParallelPhase phase;
      if (!covers_once(9, 1)) {
        expect(false, t + ": short phase " + std::to_string(rep));
        break;
      }
    }
  }
  std::printf("%d checks, %d failed\n", g_checks, g_failures);
  return g_failures ? 1 : 0;
}

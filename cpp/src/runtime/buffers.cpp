// Scratch buffers kept for reuse. A forward pass allocates the same sizes layer after layer and
// call after call (activations of N tokens, their int16 copies, per-call kernel scratch). glibc
// serves blocks above its mmap threshold with fresh mappings, so every such allocation paid page
// faults and zeroing by the kernel (15% of a 512-token prefill); below it, aligned requests walk
// its bins and consolidate its fast bins (3% of a SmolLM2 decode step, ~1,600 buffers a token).
// Freed blocks of every size wait here, by exact size, up to kMaxCached bytes in total.
#include <algorithm>
#include <cstdlib>
#include <mutex>
#include <new>
#include <unordered_map>
#include <vector>

#include "lmblocks/runtime.h"

namespace lb {
namespace {

constexpr size_t kAlign = 64, kMaxCached = size_t(512) << 20;

struct Cache {
  std::mutex mu;
  std::unordered_map<size_t, std::vector<void*>> free;
  size_t bytes = 0;
};

Cache& cache() {
  static Cache* c = new Cache;  // never destroyed: buffers may be freed during interpreter shutdown
  return *c;
}

size_t rounded(size_t bytes) { return (std::max<size_t>(bytes, 1) + kAlign - 1) / kAlign * kAlign; }

}  // namespace

void* buffer_alloc(size_t bytes) {
  const size_t n = rounded(bytes);
  {
    Cache& c = cache();
    std::lock_guard<std::mutex> lock(c.mu);
    auto it = c.free.find(n);
    if (it != c.free.end() && !it->second.empty()) {
      void* p = it->second.back();
      it->second.pop_back();
      c.bytes -= n;
      return p;
    }
  }
  void* p = std::aligned_alloc(kAlign, n);
  if (!p) throw std::bad_alloc();
  return p;
}

void buffer_free(void* p, size_t bytes) noexcept {
  if (!p) return;
  const size_t n = rounded(bytes);
  {
    Cache& c = cache();
    std::lock_guard<std::mutex> lock(c.mu);
    if (c.bytes + n <= kMaxCached) {
      c.free[n].push_back(p);
      c.bytes += n;
      return;
    }
  }
  std::free(p);
}

void release_buffers() noexcept {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  for (auto& [n, v] : c.free)
    for (void* p : v) std::free(p);
  c.free.clear();
  c.bytes = 0;
}

size_t cached_buffer_bytes() noexcept {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  return c.bytes;
}

}  // namespace lb

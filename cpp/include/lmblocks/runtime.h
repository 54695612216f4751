// The runtime: one thread pool (oneTBB), CPU feature detection and kernel dispatch, BLAS.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace lb {

// ---- Threads ----------------------------------------------------------------------------------
// One pool for the whole library. Defaults to the cores this process may run on, or
// LMBLOCKS_NUM_THREADS. OpenBLAS always runs single-threaded; lb::sgemm splits work over this pool,
// so BLAS and our kernels never compete for cores.
int num_threads();
void set_num_threads(int n);  // n >= 1; not to be called while ops run on other threads

// Calls fn(begin, end) over [0, n) in chunks of at least `grain`, on the pool. Runs inline when
// one thread suffices. If fn throws, the caller gets the (first) exception once the loop has ended;
// which other chunks ran is unspecified.
template <class F>
void parallel_for(int64_t n, int64_t grain, F&& fn);

// Type-erased core of parallel_for (kept out of the header so TBB stays private).
using RangeFn = void (*)(void* ctx, int64_t begin, int64_t end);
void parallel_for_impl(int64_t n, int64_t grain, RangeFn fn, void* ctx);

template <class F>
void parallel_for(int64_t n, int64_t grain, F&& fn) {
  if (n <= 0) return;
  if (grain < 1) grain = 1;
  if (n <= grain || num_threads() == 1) {
    fn(int64_t(0), n);
    return;
  }
  auto tramp = [](void* ctx, int64_t b, int64_t e) { (*static_cast<std::remove_reference_t<F>*>(ctx))(b, e); };
  parallel_for_impl(n, grain, tramp, const_cast<void*>(static_cast<const void*>(&fn)));
}

// While one is alive, parallel_for calls from the thread that made it run on workers that wait for
// them spinning, not asleep in the pool: a forward pass runs hundreds of short loops (a SmolLM2
// decode step ~210, each a few microseconds), and a tbb::parallel_for costs ~2 us a call, about as
// much as the work. Wrap whole forward passes, not single ops; the workers spin (a core each) until
// it ends. Nested phases, and phases begun inside a parallel loop, do nothing.
class ParallelPhase {
 public:
  ParallelPhase();
  ~ParallelPhase();
  ParallelPhase(const ParallelPhase&) = delete;
  ParallelPhase& operator=(const ParallelPhase&) = delete;

 private:
  std::shared_ptr<void> phase_;  // shared with the workers, which may start after it ends
};

// ---- Scratch buffers -------------------------------------------------------------------------
// 64-byte aligned memory for tensors and kernel scratch. Blocks are kept after they are freed, by
// size, up to 512 MiB in all, so a forward pass that allocates the same sizes every call
// does not map and fault in fresh pages each time. release_buffers() hands the kept blocks back.
void* buffer_alloc(size_t bytes);
void buffer_free(void* p, size_t bytes) noexcept;
void release_buffers() noexcept;
size_t cached_buffer_bytes() noexcept;

// std::vector storage from buffer_alloc, for kernel scratch that is remade every call.
template <class T>
struct BufferAllocator {
  using value_type = T;
  BufferAllocator() = default;
  template <class U>
  BufferAllocator(const BufferAllocator<U>&) noexcept {}
  T* allocate(size_t n) { return static_cast<T*>(buffer_alloc(n * sizeof(T))); }
  void deallocate(T* p, size_t n) noexcept { buffer_free(p, n * sizeof(T)); }
  template <class U>
  bool operator==(const BufferAllocator<U>&) const noexcept { return true; }
};
template <class T>
using Buffer = std::vector<T, BufferAllocator<T>>;

// ---- CPU features and dispatch ------------------------------------------------------------------
// Instruction-set levels, in order. A kernel family provides a subset; dispatch takes the best one
// at or below the active level. x86: scalar < avx2 (AVX2+FMA+F16C) < avx512 (F+BW+DQ+VL+VNNI).
// aarch64: scalar < neon.
enum class Isa : int { scalar = 0, avx2 = 1, avx512 = 2, neon = 3 };

struct CpuFeatures {
  std::string arch;    // "x86_64", "aarch64", ...
  std::string vendor;
  std::string model;
  std::vector<std::pair<std::string, bool>> flags;  // avx2, fma, f16c, avx512f, ..., avx512_vnni, avx512_bf16
  bool has(const std::string& flag) const;
};

const CpuFeatures& cpu_features();
Isa best_isa();                 // what this CPU supports
Isa active_isa();               // what kernels use now
void set_isa(Isa isa);          // throws lb::ValueError above best_isa()
const char* isa_name(Isa isa);
Isa isa_from_name(const std::string& s);  // throws lb::ValueError
bool isa_compiled(Isa isa);     // was a variant for it built into this binary
// Quantized weights (ggml blocks) multiply int8-quantized activations (the fast path, on by default
// where a vector kernel exists) or, when off, f32 activations against weights dequantized panel by
// panel (the reference path: float32 arithmetic on the dequantized weights).
bool activation_quantization();
void set_activation_quantization(bool on);
// The width of those activations where many rows meet repacked ggml blocks (prefill, M >= 4): 16 (the
// default: int16 per 32 elements, logits within ~1e-4 of the f32 path) or 8 (ggml's q8_0 range, as
// llama.cpp quantizes them: one VNNI instruction per four elements instead of two, so prefill is up to
// ~1.7x faster, and logits move by a few percent). Decode (M < 4) reads weights at DRAM speed either
// way and stays int16. Throws lb::ValueError for any other width.
int activation_bits();
void set_activation_bits(int bits);
// The ISA the env var LMBLOCKS_ISA asked for at start-up, and a warning if it could not be honoured.
const std::string& isa_env_warning();

// Kernel families register which variants they carry, so cpu_info() can say which path each uses.
struct KernelFamily {
  const char* name;
  std::vector<Isa> variants;  // besides the scalar reference, which every family has
  const char* note;           // e.g. "OpenBLAS sgemm"
};
std::vector<KernelFamily>& kernel_families();
struct RegisterKernelFamily {
  RegisterKernelFamily(const char* name, std::vector<Isa> variants, const char* note = "");
};
Isa resolve_isa(const std::vector<Isa>& variants);  // best variant at or below active_isa()

// ---- BLAS -------------------------------------------------------------------------------------
// Row-major C (M,N) = alpha * op(A) (M,K) @ op(B) (K,N) + beta * C, split over the pool.
void sgemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
           int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc);
std::string blas_info();

}  // namespace lb

// CPU feature detection (cpuid + xgetbv on x86, hwcaps on aarch64) and the active dispatch level.
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#define LB_X86 1
#elif defined(__aarch64__)
#include <sys/auxv.h>
#define LB_ARM64 1
#endif

#include "lmblocks/error.h"
#include "lmblocks/runtime.h"

namespace lb {
namespace {

#if LB_X86
uint64_t xgetbv0() {
  uint32_t eax, edx;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return (uint64_t(edx) << 32) | eax;
}
#endif

CpuFeatures detect() {
  CpuFeatures f;
#if LB_X86
  f.arch = "x86_64";
  unsigned a = 0, b = 0, c = 0, d = 0;
  __get_cpuid(0, &a, &b, &c, &d);
  const unsigned max_leaf = a;
  char vendor[13] = {};
  std::memcpy(vendor, &b, 4);
  std::memcpy(vendor + 4, &d, 4);
  std::memcpy(vendor + 8, &c, 4);
  f.vendor = vendor;
  char brand[49] = {};
  if (__get_cpuid(0x80000000, &a, &b, &c, &d) && a >= 0x80000004) {
    for (unsigned i = 0; i < 3; ++i) {
      __get_cpuid(0x80000002 + i, &a, &b, &c, &d);
      std::memcpy(brand + 16 * i, &a, 4);
      std::memcpy(brand + 16 * i + 4, &b, 4);
      std::memcpy(brand + 16 * i + 8, &c, 4);
      std::memcpy(brand + 16 * i + 12, &d, 4);
    }
  }
  f.model = brand;
  while (!f.model.empty() && f.model.back() == ' ') f.model.pop_back();

  unsigned c1 = 0, d1 = 0, b7 = 0, c7 = 0, d7 = 0, a71 = 0;
  __get_cpuid(1, &a, &b, &c1, &d1);
  if (max_leaf >= 7) {
    __cpuid_count(7, 0, a, b7, c7, d7);
    __cpuid_count(7, 1, a71, b, c, d);
  }
  const bool osxsave = c1 & (1u << 27);
  const uint64_t xcr0 = osxsave ? xgetbv0() : 0;
  const bool os_avx = (xcr0 & 0x6) == 0x6;        // XMM and YMM state
  const bool os_avx512 = (xcr0 & 0xE6) == 0xE6;   // plus opmask, ZMM_Hi256, Hi16_ZMM
  auto add = [&](const char* n, bool v) { f.flags.emplace_back(n, v); };
  add("sse4_2", c1 & (1u << 20));
  add("avx", os_avx && (c1 & (1u << 28)));
  add("fma", os_avx && (c1 & (1u << 12)));
  add("f16c", os_avx && (c1 & (1u << 29)));
  add("avx2", os_avx && (b7 & (1u << 5)));
  add("avx_vnni", os_avx && (a71 & (1u << 4)));
  add("avx512f", os_avx512 && (b7 & (1u << 16)));
  add("avx512dq", os_avx512 && (b7 & (1u << 17)));
  add("avx512bw", os_avx512 && (b7 & (1u << 30)));
  add("avx512vl", os_avx512 && (b7 & (1u << 31)));
  add("avx512_vbmi", os_avx512 && (c7 & (1u << 1)));
  add("avx512_vnni", os_avx512 && (c7 & (1u << 11)));
  add("avx512_bf16", os_avx512 && (a71 & (1u << 5)));
  add("avx512_fp16", os_avx512 && (d7 & (1u << 23)));
  add("amx_int8", d7 & (1u << 25));
#elif LB_ARM64
  f.arch = "aarch64";
  const unsigned long hw = getauxval(AT_HWCAP), hw2 = getauxval(AT_HWCAP2);
  f.flags.emplace_back("neon", true);
  f.flags.emplace_back("fphp", hw & (1ul << 9));
  f.flags.emplace_back("asimddp", hw & (1ul << 20));
  f.flags.emplace_back("sve", hw & (1ul << 22));
  f.flags.emplace_back("i8mm", hw2 & (1ul << 13));
  f.flags.emplace_back("bf16", hw2 & (1ul << 14));
#else
  f.arch = "unknown";
#endif
  return f;
}

Isa detect_best() {
  const CpuFeatures& f = cpu_features();
#if LB_X86
  const bool avx2 = f.has("avx2") && f.has("fma") && f.has("f16c");
  const bool avx512 = avx2 && f.has("avx512f") && f.has("avx512bw") && f.has("avx512dq") && f.has("avx512vl") &&
                      f.has("avx512_vnni");  // int8 dot products (Ice Lake, Cascade Lake, Zen 4 and later)
  if (avx512 && isa_compiled(Isa::avx512)) return Isa::avx512;
  if (avx2 && isa_compiled(Isa::avx2)) return Isa::avx2;
#elif LB_ARM64
  (void)f;
  if (isa_compiled(Isa::neon)) return Isa::neon;
#endif
  return Isa::scalar;
}

bool isa_at_most(Isa want, Isa best) {
  if (want == Isa::scalar) return true;
  if (best == Isa::neon || want == Isa::neon) return want == best;
  return int(want) <= int(best);
}

std::string g_env_warning;

Isa initial_isa() {
  const Isa best = best_isa();
  const char* s = std::getenv("LMBLOCKS_ISA");
  if (!s || !*s) return best;
  try {
    Isa want = isa_from_name(s);
    if (isa_at_most(want, best)) return want;
    g_env_warning = std::string("LMBLOCKS_ISA=") + s + " is not supported by this CPU/build; using " + isa_name(best);
  } catch (const ValueError& e) {
    g_env_warning = std::string(e.what()) + "; using " + isa_name(best);
  }
  return best;
}

std::atomic<int>& active() {
  static std::atomic<int> a{int(initial_isa())};
  return a;
}

}  // namespace

bool CpuFeatures::has(const std::string& flag) const {
  for (auto& [n, v] : flags)
    if (n == flag) return v;
  return false;
}

const CpuFeatures& cpu_features() {
  static const CpuFeatures f = detect();
  return f;
}

bool isa_compiled(Isa isa) {
  switch (isa) {
    case Isa::scalar: return true;
#ifdef LB_HAVE_avx2
    case Isa::avx2: return true;
#endif
#ifdef LB_HAVE_avx512
    case Isa::avx512: return true;
#endif
#ifdef LB_HAVE_neon
    case Isa::neon: return true;
#endif
    default: return false;
  }
}

Isa best_isa() {
  static const Isa b = detect_best();
  return b;
}

Isa active_isa() { return Isa(active().load(std::memory_order_relaxed)); }

void set_isa(Isa isa) {
  if (!isa_at_most(isa, best_isa()))
    throw ValueError(std::string("set_isa: '") + isa_name(isa) + "' is not available here; the best is '" +
                     isa_name(best_isa()) + "'");
  active().store(int(isa), std::memory_order_relaxed);
}

namespace {
std::atomic<bool>& activation_quantization_flag() {
  static std::atomic<bool> on{true};
  return on;
}
}  // namespace

bool activation_quantization() { return activation_quantization_flag().load(std::memory_order_relaxed); }
void set_activation_quantization(bool on) { activation_quantization_flag().store(on, std::memory_order_relaxed); }

namespace {
std::atomic<int>& activation_bits_value() {
  static std::atomic<int> bits{16};
  return bits;
}
}  // namespace

int activation_bits() { return activation_bits_value().load(std::memory_order_relaxed); }
void set_activation_bits(int bits) {
  if (bits != 8 && bits != 16)
    throw ValueError("set_activation_bits: bits must be 16 (the default) or 8, got " + std::to_string(bits));
  activation_bits_value().store(bits, std::memory_order_relaxed);
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::scalar: return "scalar";
    case Isa::avx2: return "avx2";
    case Isa::avx512: return "avx512";
    case Isa::neon: return "neon";
  }
  return "?";
}

Isa isa_from_name(const std::string& s) {
  for (Isa i : {Isa::scalar, Isa::avx2, Isa::avx512, Isa::neon})
    if (s == isa_name(i)) return i;
  throw ValueError("unknown ISA '" + s + "'; expected scalar, avx2, avx512 or neon");
}

const std::string& isa_env_warning() {
  active();
  return g_env_warning;
}

std::vector<KernelFamily>& kernel_families() {
  static std::vector<KernelFamily> v;
  return v;
}

RegisterKernelFamily::RegisterKernelFamily(const char* name, std::vector<Isa> variants, const char* note) {
  kernel_families().push_back({name, std::move(variants), note});
}

Isa resolve_isa(const std::vector<Isa>& variants) {
  const Isa a = active_isa();
  Isa best = Isa::scalar;
  for (Isa v : variants)
    if (isa_at_most(v, a) && (best == Isa::scalar || int(v) > int(best))) best = v;
  return best;
}

}  // namespace lb

// How a kernel family is laid out. Each cpp/src/ops/<family>.cpp is compiled once for the baseline
// (LB_SIMD == 0: the scalar `_ref` kernels, the Tensor-level op with its checks, and dispatch) and
// once per instruction set (LB_SIMD == 1, namespace LB_ISA: the vector kernels only, written
// against simd::V). Every vector kernel must equal its `_ref` on random inputs (tests/test_ops.py).
#pragma once
#include <type_traits>

#include "lmblocks/dtype.h"
#include "lmblocks/runtime.h"
#include "ops/simd.h"

#if defined(LB_ISA)
#define LB_SIMD 1
#else
#define LB_SIMD 0
#endif

// Declares `name_ref` and the per-ISA `name` of one kernel signature.
#define LB_DECLARE_KERNEL(ret, name, params)   \
  namespace lb::kernels {                      \
  ret name##_ref params;                       \
  namespace avx2 { ret name params; }          \
  namespace avx512 { ret name params; }        \
  namespace neon { ret name params; }          \
  }

#ifdef LB_HAVE_avx2
#define LB_VARIANT_avx2(name) &::lb::kernels::avx2::name
#else
#define LB_VARIANT_avx2(name) nullptr
#endif
#ifdef LB_HAVE_avx512
#define LB_VARIANT_avx512(name) &::lb::kernels::avx512::name
#else
#define LB_VARIANT_avx512(name) nullptr
#endif
#ifdef LB_HAVE_neon
#define LB_VARIANT_neon(name) &::lb::kernels::neon::name
#else
#define LB_VARIANT_neon(name) nullptr
#endif

// The kernel for the active ISA: the best compiled variant at or below it, else the reference.
#define LB_DISPATCH(name)                                                                 \
  ::lb::kernels::pick(&::lb::kernels::name##_ref, LB_VARIANT_avx2(name), LB_VARIANT_avx512(name), \
                      LB_VARIANT_neon(name))

namespace lb::kernels {

template <class F>
F pick(F ref, std::type_identity_t<F> avx2, std::type_identity_t<F> avx512, std::type_identity_t<F> neon) {
  switch (active_isa()) {
    case Isa::avx512:
      if (avx512) return avx512;
      [[fallthrough]];
    case Isa::avx2:
      return avx2 ? avx2 : ref;
    case Isa::neon:
      return neon ? neon : ref;
    default:
      return ref;
  }
}

// The vector variants compiled into this binary (every SIMD family builds for each of them).
inline std::vector<Isa> simd_variants() {
  std::vector<Isa> v;
  for (Isa i : {Isa::avx2, Isa::avx512, Isa::neon})
    if (isa_compiled(i)) v.push_back(i);
  return v;
}

}  // namespace lb::kernels

// Registers a family for lb.cpu_info(); `simd` says whether it has vector variants.
#define LB_REGISTER_FAMILY(name, simd, note)                                                    \
  static ::lb::RegisterKernelFamily lb_family_##name(#name,                                     \
                                                     (simd) ? ::lb::kernels::simd_variants()    \
                                                            : std::vector<::lb::Isa>{}, note)

// CPUID + XGETBV feature detection (x86-64); other architectures report no optional features.
// Hand-written rather than __builtin_cpu_supports so that the same logic (including the OS-support
// check through XCR0) is used with GCC, Clang and MSVC.
#include "dispatch/cpu_features.hpp"

#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__) || defined(_M_IX86)
#define FUSEDOPT_X86 1
#if defined(_MSC_VER)
#include <immintrin.h>
#include <intrin.h>
#else
#include <cpuid.h>
#endif
#if defined(__APPLE__)
#include <sys/sysctl.h>
#include <sys/types.h>
#endif
#endif

namespace fusedopt {

#if defined(FUSEDOPT_X86)
namespace {

struct Regs {
  unsigned eax, ebx, ecx, edx;
};

Regs cpuid(unsigned leaf, unsigned subleaf) {
  Regs r{0, 0, 0, 0};
#if defined(_MSC_VER)
  int out[4];
  __cpuidex(out, static_cast<int>(leaf), static_cast<int>(subleaf));
  r = Regs{static_cast<unsigned>(out[0]), static_cast<unsigned>(out[1]), static_cast<unsigned>(out[2]),
           static_cast<unsigned>(out[3])};
#else
  __cpuid_count(leaf, subleaf, r.eax, r.ebx, r.ecx, r.edx);
#endif
  return r;
}

unsigned long long xgetbv0() {
#if defined(_MSC_VER)
  return _xgetbv(0);
#else
  // Inline asm rather than _xgetbv(): the intrinsic needs -mxsave, and this file has no ISA flags.
  unsigned eax = 0, edx = 0;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return (static_cast<unsigned long long>(edx) << 32) | eax;
#endif
}

bool bit(unsigned value, int b) { return ((value >> b) & 1u) != 0; }

#if defined(__APPLE__)
// macOS enables AVX-512 state lazily, so XCR0 may not show it yet (Highway hwy/targets.cc).
bool macos_has_avx512f() {
  int value = 0;
  size_t size = sizeof(value);
  return sysctlbyname("hw.optional.avx512f", &value, &size, nullptr, 0) == 0 && value != 0;
}
#endif

}  // namespace

CpuFeatures detect_cpu_features() {
  CpuFeatures f;
  const Regs l0 = cpuid(0, 0);
  if (l0.eax < 7) return f;
  const Regs l1 = cpuid(1, 0);
  const bool osxsave = bit(l1.ecx, 27), avx = bit(l1.ecx, 28), fma = bit(l1.ecx, 12),
             f16c = bit(l1.ecx, 29);
  if (!osxsave || !avx) return f;
  const unsigned long long xcr0 = xgetbv0();
  const bool os_ymm = (xcr0 & 0x6) == 0x6;            // SSE + AVX state
  const bool os_zmm_xcr0 = (xcr0 & 0xE6) == 0xE6;     // + opmask, ZMM_Hi256, Hi16_ZMM
  const Regs l7 = cpuid(7, 0);
  const bool avx2 = bit(l7.ebx, 5);
  const bool avx512f = bit(l7.ebx, 16), avx512dq = bit(l7.ebx, 17), avx512bw = bit(l7.ebx, 30),
             avx512vl = bit(l7.ebx, 31);
  f.avx2_fma = os_ymm && avx2 && fma && f16c;  // F16C: the float16 conversions (every AVX2 CPU has it)
  bool os_zmm = os_zmm_xcr0;
#if defined(__APPLE__)
  os_zmm = os_zmm || (os_ymm && macos_has_avx512f());
#endif
  f.avx512 = f.avx2_fma && os_zmm && avx512f && avx512dq && avx512bw && avx512vl;
  return f;
}

#else

CpuFeatures detect_cpu_features() { return CpuFeatures{}; }

#endif

}  // namespace fusedopt

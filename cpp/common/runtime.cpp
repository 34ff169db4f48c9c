// See runtime.hpp. Compiled with no ISA flags, once (not per ISA).
#include "common/runtime.hpp"

#include <atomic>
#include <stdexcept>

#if defined(__unix__) || defined(__APPLE__)
#include <pthread.h>
#define FUSEDOPT_HAVE_FORK 1
#endif

#if defined(__x86_64__) || defined(_M_X64)
#include <xmmintrin.h>
#define FUSEDOPT_FP_X86_64 1
#elif defined(__aarch64__) || defined(_M_ARM64)
#if defined(_MSC_VER) && !defined(__clang__)
#include <intrin.h>
#endif
#define FUSEDOPT_FP_AARCH64 1
#endif

namespace fusedopt {
namespace runtime {

namespace {

// Set (never cleared) once a region with more than one thread is about to start in this process;
// inherited by a forked child, which then also knows its ancestor had a team.
std::atomic<bool> team_started{false};
// Set in a forked child when team_started was set at fork time; inherited by its own children.
std::atomic<bool> forked_after_team{false};

#if defined(FUSEDOPT_HAVE_FORK)
void on_fork_child() {
  // Only the forking thread exists here; atomics are async-signal-safe.
  if (team_started.load(std::memory_order_relaxed)) forked_after_team.store(true, std::memory_order_relaxed);
}
#endif

#if defined(FUSEDOPT_FP_X86_64)
// MXCSR bits 0-5 are sticky exception flags (status, not control): each thread keeps its own.
constexpr unsigned kMxcsrFlags = 0x3Fu;
constexpr unsigned kMxcsrControl = 0xFFC0u;  // DAZ(6), masks(7-12), rounding(13-14), FTZ(15)
#elif defined(FUSEDOPT_FP_AARCH64) && defined(_MSC_VER) && !defined(__clang__)
// ARM64_SYSREG(3, 3, 4, 4, 0): the FPCR encoding MSVC's _ReadStatusReg/_WriteStatusReg take.
constexpr int kArm64Fpcr = (1 << 14) | (3 << 11) | (4 << 7) | (4 << 3) | 0;
#endif

}  // namespace

void install_fork_handler() {
#if defined(FUSEDOPT_HAVE_FORK)
  static const int rc = pthread_atfork(nullptr, nullptr, &on_fork_child);
  if (rc != 0) throw std::runtime_error("fusedopt: pthread_atfork failed; a forked child could hang");
#endif
}

bool serial_after_fork() noexcept { return forked_after_team.load(std::memory_order_relaxed); }

int region_threads(int requested) noexcept {
  if (requested <= 1) return requested < 1 ? 1 : requested;
  if (forked_after_team.load(std::memory_order_relaxed)) return 1;
  // Before the team exists: its worker threads are created after this store (pthread_create is
  // a full barrier), so a fork that copies a live team also copies this flag.
  if (!team_started.load(std::memory_order_relaxed)) team_started.store(true, std::memory_order_relaxed);
  return requested;
}

std::uint64_t fp_control() noexcept {
#if defined(FUSEDOPT_FP_X86_64)
  return _mm_getcsr() & kMxcsrControl;
#elif defined(FUSEDOPT_FP_AARCH64) && defined(_MSC_VER) && !defined(__clang__)
  return static_cast<std::uint64_t>(_ReadStatusReg(kArm64Fpcr));
#elif defined(FUSEDOPT_FP_AARCH64)
  std::uint64_t fpcr;
  __asm__ __volatile__("mrs %0, fpcr" : "=r"(fpcr));
  return fpcr;
#else
  return 0;
#endif
}

void set_fp_control(std::uint64_t control) noexcept {
#if defined(FUSEDOPT_FP_X86_64)
  _mm_setcsr((_mm_getcsr() & kMxcsrFlags) | (static_cast<unsigned>(control) & kMxcsrControl));
#elif defined(FUSEDOPT_FP_AARCH64) && defined(_MSC_VER) && !defined(__clang__)
  _WriteStatusReg(kArm64Fpcr, static_cast<__int64>(control));  // FPCR holds no status: FPSR does
#elif defined(FUSEDOPT_FP_AARCH64)
  __asm__ __volatile__("msr fpcr, %0" : : "r"(control));
#else
  (void)control;
#endif
}

}  // namespace runtime
}  // namespace fusedopt

// Process- and thread-level state the kernels' parallel regions consult. Defined once, in
// common/runtime.cpp (compiled with no ISA flags, like the dispatcher), NOT in the per-ISA kernel
// objects: the per-ISA objects call these out-of-line functions, so this header declares no inline
// function and no template (kernel_table.hpp's rule: nothing ISA-flavoured may be shared).
#pragma once

#include <cstdint>

namespace fusedopt {
namespace runtime {

// The thread count a parallel region may use now. Returns `requested`, except in a process made
// by fork() from a process (or an ancestor) in which fusedopt had started an OpenMP team: there it
// returns 1. libgomp's team does not survive fork() (the child would wait forever for workers that
// exist only in the parent), and results are bitwise independent of the thread count, so the child
// runs serially and only its speed changes. Call it right before a region that will run with
// more than one thread: a return value > 1 records that this process has started a team.
int region_threads(int requested) noexcept;

// True in such a forked child (every region runs on one thread).
bool serial_after_fork() noexcept;

// Installs the fork handler (idempotent; the extension calls it at import). No-op without fork().
void install_fork_handler();

// The calling thread's floating-point control state: on x86-64 the MXCSR without its sticky
// exception flags (flush-to-zero, denormals-are-zero, rounding mode, exception masks); on aarch64
// the FPCR (FZ, DN, AHP, FZ16, rounding mode, trap enables). 0 on other architectures, where
// nothing is transferred.
std::uint64_t fp_control() noexcept;

// Makes `control` (a value of fp_control(), possibly from another thread) the calling thread's
// control state; its own sticky exception flags are kept.
void set_fp_control(std::uint64_t control) noexcept;

}  // namespace runtime
}  // namespace fusedopt

// The kernel translation unit, compiled once per ISA. A per-ISA file defines FUSEDOPT_ISA (the
// namespace) and FUSEDOPT_ISA_NAME, then includes this file; CMake gives it that ISA's flags.
//
// Rules that keep per-ISA code apart (STYLE.md 0.1 item 4, numpy/numpy#25274):
//  * everything below lives in fusedopt::<isa>::(anonymous), i.e. internal linkage, except the one
//    exported table `fusedopt::<isa>::kernel_table`;
//  * no standard-library template is instantiated here (no std::vector, std::min, ...): such
//    instantiations are weak symbols and the linker could keep this ISA's copy for everyone;
//  * the table is a constant aggregate of function addresses: no static constructor runs at load.
#ifndef FUSEDOPT_ISA
#error "define FUSEDOPT_ISA (namespace name) before including kernels.inl"
#endif

#include <cmath>
#include <cstdint>

#if defined(FUSEDOPT_HAVE_OPENMP)
#include <omp.h>
#endif

#include "common/config.hpp"
#include "common/kernel_table.hpp"
#include "common/runtime.hpp"
#include "common/step_args.hpp"

namespace fusedopt {
namespace FUSEDOPT_ISA {

extern const KernelTable kernel_table;

namespace {

using std::int64_t;

#include "kernels/parallel.inl"
#include "kernels/grad.inl"
#include "kernels/torch_exact.inl"

#include "kernels/adagrad.inl"
#include "kernels/adam.inl"
#include "kernels/ema.inl"
#include "kernels/momentum.inl"
#include "kernels/norm.inl"
#include "kernels/probe.inl"
#include "kernels/rmsprop.inl"
#include "kernels/sgd.inl"

}  // namespace

const KernelTable kernel_table = {
    FUSEDOPT_ISA_NAME,
    &sgd_step<float>,     &sgd_step<double>,
    &momentum_step<float>, &momentum_step<double>,
    &rmsprop_step<float>, &rmsprop_step<double>,
    &adam_step<float>,    &adam_step<double>,
    &adagrad_step<float>, &adagrad_step<double>,
    &ema_step<float>,     &ema_step<double>,
    &sumsq<float>,        &sumsq<double>,
    &probe_step<float>,   &probe_step<double>,
};

}  // namespace FUSEDOPT_ISA
}  // namespace fusedopt

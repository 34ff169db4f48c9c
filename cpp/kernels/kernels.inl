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

#if defined(__AVX2__) || defined(__F16C__)
#include <immintrin.h>  // lowp.inl: Philox 8 blocks per AVX2 vector; F16C's float16 conversions
#endif

#include "common/config.hpp"
#include "common/kernel_table.hpp"
#include "common/q8.hpp"
#include "common/runtime.hpp"
#include "common/step_args.hpp"

namespace fusedopt {
namespace FUSEDOPT_ISA {

extern const KernelTable kernel_table;

namespace {

using std::int64_t;

#include "kernels/parallel.inl"
#include "kernels/select.inl"
#include "kernels/grad.inl"
#include "kernels/lowp.inl"
#include "kernels/engine.inl"

// the algorithms: one element-wise description each (engine.inl says what one holds)
#include "kernels/adagrad.inl"
#include "kernels/torch_exact.inl"
#include "kernels/adam.inl"
#include "kernels/ema.inl"
#include "kernels/lion.inl"
#include "kernels/adamax.inl"
#include "kernels/radam.inl"
#include "kernels/nadam.inl"
#include "kernels/momentum.inl"
#include "kernels/muon.inl"
#include "kernels/probe.inl"
#include "kernels/rmsprop.inl"
#include "kernels/sgd.inl"

#include "kernels/norm.inl"

// trust-ratio algorithms: two phases in one call (trust.inl)
#include "kernels/trust.inl"
#include "kernels/lamb.inl"
#include "kernels/lars.inl"

// Adafactor: reductions and update in one call (its own phases)
#include "kernels/adafactor.inl"

}  // namespace

const KernelTable kernel_table = {
    FUSEDOPT_ISA_NAME,
    &step<Sgd, float>,      &step<Sgd, double>,
    &step<Momentum, float>, &step<Momentum, double>,
    &step<Rmsprop, float>,  &step<Rmsprop, double>,
    &adam_step<float>,      &adam_step<double>,
    &step<Adagrad, float>,  &step<Adagrad, double>,
    &step<Lion, float>,     &step<Lion, double>,
    &pass<Ema, float>,      &pass<Ema, double>,
    &sumsq<float>,          &sumsq<double>,
    &pass<Probe, float>,    &pass<Probe, double>,
    &lowp_step<Sgd>,        &lowp_step<Momentum>,
    &lowp_step<Rmsprop>,    &lowp_step<Adam>,
    &lowp_step<Adagrad>,    &lowp_step<Lion>,
    &trust_step<Lamb, float>, &trust_step<Lamb, double>,
    &trust_step<Lars, float>, &trust_step<Lars, double>,
    &step<Radam, float>,    &step<Radam, double>,   &lowp_step<Radam>,
    &step<Adamax, float>,   &step<Adamax, double>,  &lowp_step<Adamax>,
    &step<Muon, float>,     &step<Muon, double>,
    &lowp_step<Muon>,
    &step<Nadam, float>,    &step<Nadam, double>,
    &adafactor_step<float>, &adafactor_step<double>,
};

}  // namespace FUSEDOPT_ISA
}  // namespace fusedopt

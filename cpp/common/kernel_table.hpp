// The only bridge between bindings and kernels: a table of function pointers, one table per ISA.
// Included by the per-ISA kernel translation units, so it declares no inline functions and pulls in
// no standard-library templates (a template instantiated in an AVX2 object could be the copy the
// linker keeps for baseline code: numpy/numpy#25274).
#pragma once

#include "common/step_args.hpp"

namespace fusedopt {

template <class Scalars>
using StepFn = void (*)(const TensorList&, const Scalars&, int threads);

struct KernelTable {
  const char* isa;  // "sse2", "avx2", "avx512", "neon", "generic"
  StepFn<SgdScalars> sgd_f32, sgd_f64;
  StepFn<MomentumScalars> momentum_f32, momentum_f64;
  StepFn<RmspropScalars> rmsprop_f32, rmsprop_f64;
  StepFn<AdamScalars> adam_f32, adam_f64;
  StepFn<AdagradScalars> adagrad_f32, adagrad_f64;
};

}  // namespace fusedopt

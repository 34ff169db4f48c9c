// The only bridge between bindings and kernels: a table of function pointers, one table per ISA.
// Included by the per-ISA kernel translation units, so it declares no inline functions and pulls in
// no standard-library templates (a template instantiated in an AVX2 object could be the copy the
// linker keeps for baseline code: numpy/numpy#25274).
#pragma once

#include "common/step_args.hpp"

namespace fusedopt {

template <class Scalars>
using StepFn = void (*)(const TensorList&, const Scalars&, const GradScalars&, int threads);

// A step over low-precision storage (issue 13): the dtype of each role and how the parameter is
// written are in LowpArgs; arithmetic in float32.
template <class Scalars>
using LowpFn = void (*)(const TensorList&, const Scalars&, const GradScalars&, const LowpArgs&, int threads);

// Element-wise pass without gradient pre-processing (EMA of weights).
template <class Scalars>
using PassFn = void (*)(const TensorList&, const Scalars&, int threads);

// Deterministic sum of squares of every element of a one-buffer list; `partials` has room for one
// double per kNormBlock-block (see step_args.hpp). Returns the float64 sum.
using SumSqFn = double (*)(const TensorList&, double* partials, int threads);

// Adafactor (kernels/adafactor.inl): every phase of a step in one call.
using AdafactorFn = void (*)(const AdafactorList&, const AdafactorScalars&, int threads);

struct KernelTable {
  const char* isa;  // "sse2", "avx2", "avx512", "neon", "generic"
  StepFn<SgdScalars> sgd_f32, sgd_f64;
  StepFn<MomentumScalars> momentum_f32, momentum_f64;
  StepFn<RmspropScalars> rmsprop_f32, rmsprop_f64;
  StepFn<AdamScalars> adam_f32, adam_f64;
  StepFn<AdagradScalars> adagrad_f32, adagrad_f64;
  StepFn<LionScalars> lion_f32, lion_f64;
  PassFn<EmaScalars> ema_f32, ema_f64;
  SumSqFn sumsq_f32, sumsq_f64;
  PassFn<ProbeScalars> probe_f32, probe_f64;  // benchmarks only
  LowpFn<SgdScalars> sgd_lowp;
  LowpFn<MomentumScalars> momentum_lowp;
  LowpFn<RmspropScalars> rmsprop_lowp;
  LowpFn<AdamScalars> adam_lowp;  // the Adam order only (torch_exact is float32-only)
  LowpFn<AdagradScalars> adagrad_lowp;
  LowpFn<LionScalars> lion_lowp;
  StepFn<LambScalars> lamb_f32, lamb_f64;  // trust ratio: two phases in one call (kernels/trust.inl)
  StepFn<LarsScalars> lars_f32, lars_f64;
  StepFn<RadamScalars> radam_f32, radam_f64;
  LowpFn<RadamScalars> radam_lowp;
  StepFn<AdamaxScalars> adamax_f32, adamax_f64;
  LowpFn<AdamaxScalars> adamax_lowp;
  StepFn<MuonScalars> muon_f32, muon_f64;
  LowpFn<MuonScalars> muon_lowp;
  StepFn<NadamScalars> nadam_f32, nadam_f64;  // float32/float64 only (no low-precision storage)
  AdafactorFn adafactor_f32, adafactor_f64;
};

}  // namespace fusedopt

// The step bindings' per-algorithm traits (names, roles, kernel entries, how the C++ Scalars struct
// is made) and the shared pieces of a step call (gather the buffers, run the kernel), used by the
// step bindings (register_optimizers.cpp) and by the optimizer classes' fast path (stepper.hpp).
//
// `derive` is the C++ twin of python/fusedopt/_scalars.py for the Stepper: from the functional
// hyperparameters (kValues as doubles, kBools) and the step count t it computes the positional
// scalars and flags of the step binding with the SAME float64 operations in the same order
// (`beta**t` is pow(beta, (double)t), as CPython's float power); tests/test_stepper.py compares
// the two bitwise.
#pragma once

#include <pybind11/pybind11.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "bindings/arrays.hpp"
#include "bindings/plan.hpp"
#include "common/q8.hpp"
#include "common/step_args.hpp"
#include "dispatch/dispatch.hpp"

namespace fusedopt {
namespace bindings {

// Runs fn_f32 or fn_f64 of the active table on the collected buffers, without the GIL.
template <class Scalars>
inline void run(const Buffers& buffers, StepFn<Scalars> KernelTable::*f32, StepFn<Scalars> KernelTable::*f64,
         const Scalars& scalars, const GradScalars& grad, int threads, py::handle counters) {
  const Counters c = collect_counters(counters);
  const TensorList list = buffers.list();
  if (list.count > 0) {
    const KernelTable& table = active_table();
    const StepFn<Scalars> fn = buffers.dtype() == DType::f32 ? table.*f32 : table.*f64;
    // Everything the kernel reads is now in `list` and `scalars` (plain C++ values); the arrays
    // stay alive because `buffers` holds a reference to each (not the caller's lists: another
    // thread may replace their items meanwhile). No Python object is touched in this block.
    py::gil_scoped_release release;
    fn(list, scalars, grad, threads);
  }
  c.commit();  // GIL held again; runs no Python code (see Counters)
}

// Runs a low-precision step (LowpArgs checked by check_lowp) without the GIL.
template <class Scalars>
inline void run_lowp(const Buffers& buffers, LowpFn<Scalars> KernelTable::*fn, const Scalars& scalars,
                     const GradScalars& grad, const LowpArgs& lowp, int threads, py::handle counters) {
  const Counters c = collect_counters(counters);
  const TensorList list = buffers.list();
  if (list.count > 0) {
    const LowpFn<Scalars> f = active_table().*fn;
    py::gil_scoped_release release;
    f(list, scalars, grad, lowp, threads);
  }
  c.commit();
}

// The kStore* code of a dtype (-1: none).
inline int store_code(DType d) {
  if (d == DType::u8) return kStoreQ8;
  return d == DType::f32 ? kStoreF32 : (d == DType::bf16 ? kStoreBf16 : (d == DType::f16 ? kStoreF16 : -1));
}

// Whether a collected step (roles 0..nroles-1, then the masters role if `masters`) is a plain
// float32/float64 step (false) or a low-precision one (true, *out filled); raises TypeError /
// ValueError naming the argument for a combination the kernels do not have. Nothing is written.
// q8: the states are 8-bit codes (uint8) with absmax roles after the masters' slot.
inline bool check_lowp(const Buffers& b, const char* const* names, std::size_t nroles, bool masters, bool sr,
                       std::uint64_t seed, std::uint64_t step, LowpArgs* out, bool q8 = false) {
  const DType p = b.role_dtype(0);
  bool uniform = !masters && !sr && !q8;
  for (std::size_t r = 1; r < nroles; ++r) {
    if (b.present(r) && b.role_dtype(r) != p) uniform = false;
  }
  if (uniform && (p == DType::f32 || p == DType::f64)) return false;
  const std::string pname = std::string(names[0]) + "[0]";
  const std::string pdt = dtype_name(p);
  if (b.list().count == 0) {  // nothing to step; the options must still make sense
    if (sr && masters) throw py::value_error("stochastic_rounding applies to parameters without masters; give one of the two");
  }
  if (p == DType::f64) {
    throw py::type_error(std::string(names[1]) + "/state dtypes other than float64 (or masters, stochastic rounding) "
                         "need float32, bfloat16 or float16 params; " + pname + " is float64");
  }
  const DType g = b.role_dtype(1);
  if (g != p && g != DType::f32) {
    throw py::type_error(std::string(names[1]) + "[0] has dtype " + dtype_name(g) + " but " + pname + " has " + pdt +
                         "; gradients must have the params' dtype or float32");
  }
  DType st = p == DType::f32 ? DType::bf16 : p;
  bool first = true;
  for (std::size_t r = 2; r < nroles; ++r) {
    if (!b.present(r)) continue;
    const DType d = b.role_dtype(r);
    if (q8 != (d == DType::u8)) {
      throw py::type_error(std::string(names[r]) + "[0] has dtype " + dtype_name(d) +
                           (q8 ? "; with absmax given, the states are 8-bit codes (uint8)"
                               : "; uint8 states (8-bit codes) need their absmax arrays (absmax=...)"));
    }
    const bool ok = first ? (d == DType::f32 || d == p || d == DType::u8 || (p == DType::f32 && d == DType::bf16))
                          : d == st;
    if (!ok) {
      throw py::type_error(std::string(names[r]) + "[0] has dtype " + dtype_name(d) + "; with " + pdt +
                           " params the states must be float32 or " + (p == DType::f32 ? "bfloat16" : pdt) +
                           ", all of one dtype" + (first ? "" : std::string(" (") + names[2] + "[0] is " + dtype_name(st) + ")"));
    }
    if (first) st = d, first = false;
  }
  int write = kWriteRne;
  if (masters) {
    const DType m = b.role_dtype(nroles);
    if (p == DType::f32) {
      throw py::type_error("masters are for bfloat16/float16 params; " + pname + " is float32");
    }
    if (m == DType::f32) {
      write = kWriteMaster;
    } else if (m == DType::u16) {
      if (p != DType::bf16) {
        throw py::value_error("masters[0] has dtype uint16 (a split master, the low 16 bits of a float32 master); "
                              "split masters need bfloat16 params, " + pname + " is " + pdt);
      }
      write = kWriteSplit;
    } else {
      throw py::type_error("masters[0] has dtype " + std::string(dtype_name(m)) +
                           "; masters must be float32 (an fp32 master) or uint16 (a split master's trail)");
    }
  }
  if (sr) {
    if (masters) throw py::value_error("stochastic_rounding applies to parameters without masters; give one of the two");
    if (p != DType::bf16) {
      throw py::value_error("stochastic_rounding needs bfloat16 params; " + pname + " is " + pdt);
    }
    write = kWriteSr;
  }
  if (p == DType::f32 && g != DType::f32) {
    throw py::type_error(std::string(names[1]) + "[0] has dtype " + dtype_name(g) + " but " + pname +
                         " is float32; gradients must have the params' dtype");
  }
  if (p == DType::f32 && first && !q8) {  // no state list at all: nothing low-precision
    throw py::type_error(pname + " is float32 and no array is low-precision");
  }
  *out = LowpArgs{store_code(p), store_code(g), first ? store_code(p == DType::f32 ? DType::f32 : p) : store_code(st),
                  write, seed, step, q8 ? &q8_map(false) : nullptr, q8 ? &q8_map(true) : nullptr};
  return true;
}

// The buffers of a step: from the plan when it still matches (plan.hpp), else fully collected.
inline Buffers gather(const std::vector<Role>& roles, py::handle plan, bool mixed = false) {
  if (!plan.is_none()) {
    if (!py::isinstance<Plan>(plan)) {
      throw py::type_error("plan must be a fusedopt._core.Plan or None, got " +
                           py::str(py::type::of(plan).attr("__name__")).cast<std::string>());
    }
    Buffers b;
    if (plan.cast<const Plan&>().fill(roles, &b)) return b;
  }
  return collect(roles, mixed);
}

// The gradient pre-processing scalars (fusedopt._scalars.GradScalars), validated by the Python
// layer; `active` unless all three are their exact identities.
inline GradScalars grad_scalars(double grad_scale, double clip_coef, double clip_value) {
  const bool identity = grad_scale == 1.0 && clip_coef == 1.0 && std::isinf(clip_value) && clip_value > 0;
  return GradScalars{grad_scale, clip_coef, clip_value, !identity};
}

// ---- the step bindings: one template, one small traits struct per algorithm ------------------
//
// A step binding takes, positionally: the role lists (params, grads, states; optional states may
// be None), the algorithm's scalars (the fields of its NamedTuple in fusedopt/_scalars.py), the
// three GradScalars, the algorithm's flags, then threads and the optional plan and counters.
// Traits give the names (tests/test_bindings.py compares them with the NamedTuples), which roles
// may be None, the kernel table entries and how the C++ Scalars struct is made; Step<> below
// generates a pybind11 function with exactly those parameters (typed like a hand-written one,
// so the call costs the same).

template <class T, std::size_t>
using As = T;  // As<double, I>... : one double parameter per index

struct SgdBinding {
  using Scalars = SgdScalars;
  static constexpr const char* kName = "sgd";
  static constexpr const char* kDoc = "SGD step over lists of arrays (momentum_buffers=None: no momentum). See fusedopt.functional.sgd.";
  static constexpr const char* kRoles[] = {"params", "grads", "momentum_buffers"};
  static constexpr bool kOptional[] = {false, false, true};
  static constexpr const char* kScalars[] = {"lr", "weight_decay", "momentum", "one_minus_dampening"};
  static constexpr const char* kFlags[] = {"nesterov", "maximize", "first_step"};
  static constexpr StepFn<Scalars> KernelTable::*kF32 = &KernelTable::sgd_f32;
  static constexpr StepFn<Scalars> KernelTable::*kF64 = &KernelTable::sgd_f64;
  static constexpr LowpFn<Scalars> KernelTable::*kLowp = &KernelTable::sgd_lowp;
  static Scalars make(const double* d, const bool* f, const Buffers& b) {
    return Scalars{d[0], d[1], d[2], d[3], d[1] != 0.0, b.present(2), f[0], f[1], f[2]};
  }
  // The hyperparameters (a checked functional view's values) the scalars derive from, and how
  // (python/fusedopt/_scalars.py, the same float64 operations in the same order).
  static constexpr const char* kValues[] = {"lr", "weight_decay", "momentum", "dampening"};
  static constexpr const char* kBools[] = {"nesterov", "maximize", "first_step"};
  static void derive(const double* v, const bool* b, std::int64_t, double* d, bool* f) {
    d[0] = v[0], d[1] = v[1], d[2] = v[2], d[3] = 1.0 - v[3];
    f[0] = b[0], f[1] = b[1], f[2] = b[2];
  }
  // The functional's twins of the description (python/fusedopt/algorithms/sgd.py; see "Functional
  // twins" below): momentum_buffers exist when momentum != 0; nesterov needs momentum > 0 and no dampening.
  static constexpr const char* const* kSwitches = nullptr;
  static bool present(std::size_t, const double* v, const bool*, const bool*) { return v[2] != 0.0; }
  static bool fast_ok(const double* v, const bool* b, const bool*, DType) {
    return !(b[0] && (v[2] <= 0.0 || v[3] != 0.0));
  }
};

struct MomentumBinding {
  using Scalars = MomentumScalars;
  static constexpr const char* kName = "momentum";
  static constexpr const char* kDoc = "EMA-momentum step over lists of arrays. See fusedopt.functional.momentum.";
  static constexpr const char* kRoles[] = {"params", "grads", "velocities"};
  static constexpr bool kOptional[] = {false, false, false};
  static constexpr const char* kScalars[] = {"step_size", "beta", "one_minus_beta", "weight_decay"};
  static constexpr const char* const* kFlags = nullptr;  // no flags
  static constexpr StepFn<Scalars> KernelTable::*kF32 = &KernelTable::momentum_f32;
  static constexpr StepFn<Scalars> KernelTable::*kF64 = &KernelTable::momentum_f64;
  static constexpr LowpFn<Scalars> KernelTable::*kLowp = &KernelTable::momentum_lowp;
  static Scalars make(const double* d, const bool*, const Buffers&) {
    return Scalars{d[0], d[1], d[2], d[3], d[3] != 0.0};
  }
  static constexpr const char* kValues[] = {"lr", "beta", "weight_decay"};
  static constexpr const char* kBools[] = {"bias_correction"};
  static void derive(const double* v, const bool* b, std::int64_t t, double* d, bool*) {
    d[0] = b[0] ? v[0] / (1.0 - std::pow(v[1], static_cast<double>(t))) : v[0];
    d[1] = v[1], d[2] = 1.0 - v[1], d[3] = v[2];
  }
  static constexpr const char* const* kSwitches = nullptr;
  static bool present(std::size_t, const double*, const bool*, const bool*) { return true; }
  static bool fast_ok(const double*, const bool*, const bool*, DType) { return true; }
};

struct RmspropBinding {
  using Scalars = RmspropScalars;
  static constexpr const char* kName = "rmsprop";
  static constexpr const char* kDoc =
      "RMSprop step over lists of arrays (grad_avgs=None: not centered; momentum_buffers=None: no momentum). "
      "See fusedopt.functional.rmsprop.";
  static constexpr const char* kRoles[] = {"params", "grads", "square_avgs", "grad_avgs", "momentum_buffers"};
  static constexpr bool kOptional[] = {false, false, false, true, true};
  static constexpr const char* kScalars[] = {"lr", "buffer_lr", "alpha", "one_minus_alpha", "eps_outside",
                                             "eps_inside", "weight_decay", "momentum"};
  static constexpr const char* kFlags[] = {"maximize"};
  static constexpr StepFn<Scalars> KernelTable::*kF32 = &KernelTable::rmsprop_f32;
  static constexpr StepFn<Scalars> KernelTable::*kF64 = &KernelTable::rmsprop_f64;
  static constexpr LowpFn<Scalars> KernelTable::*kLowp = &KernelTable::rmsprop_lowp;
  static Scalars make(const double* d, const bool* f, const Buffers& b) {
    return Scalars{d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7], d[6] != 0.0, b.present(3), b.present(4), f[0]};
  }
  static constexpr const char* kValues[] = {"lr", "alpha", "eps", "weight_decay", "momentum"};
  static constexpr const char* kBools[] = {"eps_in_sqrt", "lr_in_momentum", "maximize"};
  static void derive(const double* v, const bool* b, std::int64_t, double* d, bool* f) {
    double lr = v[0], buffer_lr = 1.0;
    const double eps = v[2], mu = v[4];
    if (b[1] && mu > 0.0) lr = 1.0, buffer_lr = v[0];
    d[0] = lr, d[1] = buffer_lr, d[2] = v[1], d[3] = 1.0 - v[1];
    d[4] = b[0] ? 0.0 : eps, d[5] = b[0] ? eps : 0.0, d[6] = v[3], d[7] = mu;
    f[0] = b[2];
  }
  // twins: grad_avgs exist when centered, momentum_buffers when momentum > 0; no relations
  static constexpr const char* kSwitches[] = {"centered"};
  static bool present(std::size_t r, const double* v, const bool*, const bool* s) {
    return r == 3 ? s[0] : v[4] > 0.0;
  }
  static bool fast_ok(const double*, const bool*, const bool*, DType) { return true; }
};

struct AdamBinding {
  using Scalars = AdamScalars;
  static constexpr const char* kName = "adam";
  static constexpr const char* kDoc =
      "Adam/AdamW step over lists of arrays (max_exp_avg_sqs=None: no amsgrad). See fusedopt.functional.adam.";
  static constexpr const char* kRoles[] = {"params", "grads", "exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs"};
  static constexpr bool kOptional[] = {false, false, false, false, true};
  static constexpr const char* kScalars[] = {
      "neg_step_size", "eps_scaled",       "eps_root_scaled",     "beta1",
      "one_minus_beta1", "beta2",          "one_minus_beta2",     "weight_decay",
      "decay_factor",  "torch_neg_step_size", "bias_correction2_sqrt", "torch_eps"};
  static constexpr const char* kFlags[] = {"maximize", "torch_exact"};
  static constexpr StepFn<Scalars> KernelTable::*kF32 = &KernelTable::adam_f32;
  static constexpr StepFn<Scalars> KernelTable::*kF64 = &KernelTable::adam_f64;
  static constexpr LowpFn<Scalars> KernelTable::*kLowp = &KernelTable::adam_lowp;
  static Scalars make(const double* d, const bool* f, const Buffers& b) {
    return Scalars{d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7], d[8], d[9], d[10], d[11],
                   b.present(4), f[0], f[1]};
  }
  static constexpr const char* kValues[] = {"lr", "beta1", "beta2", "eps", "weight_decay", "eps_root"};
  static constexpr const char* kBools[] = {"decoupled_weight_decay", "epsilon_hat", "maximize", "torch_exact"};
  static void derive(const double* v, const bool* b, std::int64_t t, double* d, bool* f) {
    const double lr = v[0], beta1 = v[1], beta2 = v[2], eps = v[3], wd = v[4];
    const double bias_correction1 = 1.0 - std::pow(beta1, static_cast<double>(t));
    const double bias_correction2 = 1.0 - std::pow(beta2, static_cast<double>(t));
    const double root = std::sqrt(bias_correction2);
    d[0] = -lr * root / bias_correction1;
    d[1] = b[1] ? eps : eps * root;
    d[2] = v[5] * bias_correction2;
    d[3] = beta1, d[4] = 1.0 - beta1, d[5] = beta2, d[6] = 1.0 - beta2;
    d[7] = b[0] ? 0.0 : wd;
    d[8] = b[0] ? 1.0 - lr * wd : 1.0;
    d[9] = -lr / bias_correction1, d[10] = root, d[11] = eps;
    f[0] = b[2], f[1] = b[3];
  }
  // twins: max_exp_avg_sqs exist when amsgrad; at most one of epsilon_hat, eps_root != 0 and
  // torch_exact; torch_exact steps float32 only (the description's relations and check_params)
  static constexpr const char* kSwitches[] = {"amsgrad"};
  static bool present(std::size_t, const double*, const bool*, const bool* s) { return s[0]; }
  static bool fast_ok(const double* v, const bool* b, const bool*, DType dtype) {
    return static_cast<int>(b[1]) + static_cast<int>(v[5] != 0.0) + static_cast<int>(b[3]) <= 1 &&
           (!b[3] || dtype == DType::f32);
  }
};

struct AdagradBinding {
  using Scalars = AdagradScalars;
  static constexpr const char* kName = "adagrad";
  static constexpr const char* kDoc = "Adagrad step over lists of arrays. See fusedopt.functional.adagrad.";
  static constexpr const char* kRoles[] = {"params", "grads", "state_sums"};
  static constexpr bool kOptional[] = {false, false, false};
  static constexpr const char* kScalars[] = {"neg_clr", "eps", "weight_decay"};
  static constexpr const char* kFlags[] = {"maximize"};
  static constexpr StepFn<Scalars> KernelTable::*kF32 = &KernelTable::adagrad_f32;
  static constexpr StepFn<Scalars> KernelTable::*kF64 = &KernelTable::adagrad_f64;
  static constexpr LowpFn<Scalars> KernelTable::*kLowp = &KernelTable::adagrad_lowp;
  static Scalars make(const double* d, const bool* f, const Buffers&) {
    return Scalars{d[0], d[1], d[2], d[2] != 0.0, f[0]};
  }
  static constexpr const char* kValues[] = {"lr", "lr_decay", "eps", "weight_decay"};
  static constexpr const char* kBools[] = {"maximize"};
  static void derive(const double* v, const bool* b, std::int64_t t, double* d, bool* f) {
    const double clr = v[0] / (1.0 + static_cast<double>(t - 1) * v[1]);
    d[0] = -clr, d[1] = v[2], d[2] = v[3];
    f[0] = b[0];
  }
  static constexpr const char* const* kSwitches = nullptr;
  static bool present(std::size_t, const double*, const bool*, const bool*) { return true; }
  static bool fast_ok(const double*, const bool*, const bool*, DType) { return true; }
};

struct LionBinding {
  using Scalars = LionScalars;
  static constexpr const char* kName = "lion";
  static constexpr const char* kDoc = "Lion step over lists of arrays. See fusedopt.reference.lion.";
  static constexpr const char* kRoles[] = {"params", "grads", "exp_avgs"};
  static constexpr bool kOptional[] = {false, false, false};
  static constexpr const char* kScalars[] = {"lr", "beta1", "one_minus_beta1", "beta2", "one_minus_beta2",
                                             "decay_factor"};
  static constexpr const char* kFlags[] = {"maximize"};
  static constexpr StepFn<Scalars> KernelTable::*kF32 = &KernelTable::lion_f32;
  static constexpr StepFn<Scalars> KernelTable::*kF64 = &KernelTable::lion_f64;
  static constexpr LowpFn<Scalars> KernelTable::*kLowp = &KernelTable::lion_lowp;
  static Scalars make(const double* d, const bool* f, const Buffers&) {
    return Scalars{d[0], d[1], d[2], d[3], d[4], d[5], f[0]};
  }
  static constexpr const char* kValues[] = {"lr", "beta1", "beta2", "weight_decay"};
  static constexpr const char* kBools[] = {"maximize"};
  static void derive(const double* v, const bool* b, std::int64_t, double* d, bool* f) {
    d[0] = v[0], d[1] = v[1], d[2] = 1.0 - v[1], d[3] = v[2], d[4] = 1.0 - v[2], d[5] = 1.0 - v[0] * v[3];
    f[0] = b[0];
  }
  static constexpr const char* const* kSwitches = nullptr;
  static bool present(std::size_t, const double*, const bool*, const bool*) { return true; }
  static bool fast_ok(const double*, const bool*, const bool*, DType) { return true; }
};

struct AdamaxBinding {
  using Scalars = AdamaxScalars;
  static constexpr const char* kName = "adamax";
  static constexpr const char* kDoc = "Adamax step over lists of arrays. See fusedopt.functional.adamax.";
  static constexpr const char* kRoles[] = {"params", "grads", "exp_avgs", "exp_infs"};
  static constexpr bool kOptional[] = {false, false, false, false};
  static constexpr const char* kScalars[] = {"neg_clr", "eps", "beta1", "one_minus_beta1", "beta2", "weight_decay"};
  static constexpr const char* kFlags[] = {"maximize"};
  static constexpr StepFn<Scalars> KernelTable::*kF32 = &KernelTable::adamax_f32;
  static constexpr StepFn<Scalars> KernelTable::*kF64 = &KernelTable::adamax_f64;
  static constexpr LowpFn<Scalars> KernelTable::*kLowp = &KernelTable::adamax_lowp;
  static Scalars make(const double* d, const bool* f, const Buffers&) {
    return Scalars{d[0], d[1], d[2], d[3], d[4], d[5], f[0]};
  }
  static constexpr const char* kValues[] = {"lr", "beta1", "beta2", "eps", "weight_decay"};
  static constexpr const char* kBools[] = {"maximize"};
  static void derive(const double* v, const bool* b, std::int64_t t, double* d, bool* f) {
    const double clr = v[0] / (1.0 - std::pow(v[1], static_cast<double>(t)));
    d[0] = -clr, d[1] = v[3], d[2] = v[1], d[3] = 1.0 - v[1], d[4] = v[2], d[5] = v[4];
    f[0] = b[0];
  }
  static constexpr const char* const* kSwitches = nullptr;
  static bool present(std::size_t, const double*, const bool*, const bool*) { return true; }
  static bool fast_ok(const double*, const bool*, const bool*, DType) { return true; }
};

// Muon's element-wise halves (cpp/kernels/muon.inl): `apply` selects the phase. Only the step
// binding (the Muon classes and functional call it twice around the Newton-Schulz products), no
// functional twin or Stepper.
struct MuonBinding {
  using Scalars = MuonScalars;
  static constexpr const char* kName = "muon";
  static constexpr const char* kDoc =
      "Muon's element-wise phases over lists of arrays (apply=False: momentum, apply=True: decay and "
      "update). See fusedopt.reference.muon_momentum / muon_apply.";
  static constexpr const char* kRoles[] = {"params", "grads", "momentum_buffers", "updates"};
  static constexpr bool kOptional[] = {false, false, false, false};
  static constexpr const char* kScalars[] = {"one_minus_momentum", "momentum", "decay_factor", "neg_lr"};
  static constexpr const char* kFlags[] = {"nesterov", "apply"};
  static constexpr StepFn<Scalars> KernelTable::*kF32 = &KernelTable::muon_f32;
  static constexpr StepFn<Scalars> KernelTable::*kF64 = &KernelTable::muon_f64;
  static constexpr LowpFn<Scalars> KernelTable::*kLowp = &KernelTable::muon_lowp;
  static Scalars make(const double* d, const bool* f, const Buffers&) {
    return Scalars{d[0], d[1], d[2], d[3], f[0], f[1]};
  }
};

// Scratch of a trust-ratio step (kernels/trust.inl): 2 doubles per kNormBlock-block of every tensor
// and one per tensor, owned by the calling thread and reused (the kernel runs on this thread, the
// GIL released; nothing else uses this thread's scratch meanwhile).
inline double* trust_scratch(const Buffers& b) {
  thread_local std::vector<double> scratch;
  const TensorList l = b.list();
  std::size_t n = static_cast<std::size_t>(l.count);
  for (std::int64_t k = 0; k < l.count; ++k) n += 2 * static_cast<std::size_t>((l.sizes[k] + kNormBlock - 1) / kNormBlock);
  if (scratch.size() < n) scratch.resize(n);
  return scratch.data();
}

struct LambBinding {
  using Scalars = LambScalars;
  static constexpr const char* kName = "lamb";
  static constexpr const char* kDoc = "LAMB step over lists of arrays (per-tensor trust ratios, one call). "
                                      "See fusedopt.functional.lamb.";
  static constexpr const char* kRoles[] = {"params", "grads", "exp_avgs", "exp_avg_sqs"};
  static constexpr bool kOptional[] = {false, false, false, false};
  static constexpr const char* kScalars[] = {"neg_lr", "m_scale", "eps", "beta1", "one_minus_beta1", "beta2",
                                             "one_minus_beta2", "weight_decay", "clamp_value"};
  static constexpr const char* kFlags[] = {"maximize", "adam"};
  static constexpr StepFn<Scalars> KernelTable::*kF32 = &KernelTable::lamb_f32;
  static constexpr StepFn<Scalars> KernelTable::*kF64 = &KernelTable::lamb_f64;
  static constexpr LowpFn<Scalars> KernelTable::*kLowp = nullptr;  // float32/float64 only
  static Scalars make(const double* d, const bool* f, const Buffers& b) {
    return Scalars{d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7], d[8], f[0], f[1], trust_scratch(b)};
  }
  static constexpr const char* kValues[] = {"lr", "beta1", "beta2", "eps", "weight_decay", "clamp_value"};
  static constexpr const char* kBools[] = {"bias_correction", "debias", "adam", "maximize"};
  static void derive(const double* v, const bool* b, std::int64_t t, double* d, bool* f) {
    const double lr = v[0], beta1 = v[1], beta2 = v[2], eps = v[3];
    const double bias_correction1 = 1.0 - std::pow(beta1, static_cast<double>(t));
    const double bias_correction2 = 1.0 - std::pow(beta2, static_cast<double>(t));
    const double root = std::sqrt(bias_correction2);
    d[0] = b[1] ? -lr * root / bias_correction1 : -lr;
    d[1] = b[0] ? root / bias_correction1 : 1.0;
    d[2] = b[0] ? eps * root : eps;
    d[3] = beta1, d[4] = 1.0 - beta1, d[5] = beta2, d[6] = 1.0 - beta2, d[7] = v[4], d[8] = v[5];
    f[0] = b[3], f[1] = b[2];
  }
  static constexpr const char* const* kSwitches = nullptr;
  static bool present(std::size_t, const double*, const bool*, const bool*) { return true; }
  // bias_correction and debias exclude each other (the description's relations)
  static bool fast_ok(const double*, const bool* b, const bool*, DType) { return !(b[0] && b[1]); }
};

struct LarsBinding {
  using Scalars = LarsScalars;
  static constexpr const char* kName = "lars";
  static constexpr const char* kDoc = "LARS step over lists of arrays (per-tensor trust ratios, one call). "
                                      "See fusedopt.functional.lars.";
  static constexpr const char* kRoles[] = {"params", "grads", "mus"};
  static constexpr bool kOptional[] = {false, false, false};
  static constexpr const char* kScalars[] = {"neg_lr", "momentum", "weight_decay", "eta", "eps"};
  static constexpr const char* kFlags[] = {"maximize", "lars_adaptation"};
  static constexpr StepFn<Scalars> KernelTable::*kF32 = &KernelTable::lars_f32;
  static constexpr StepFn<Scalars> KernelTable::*kF64 = &KernelTable::lars_f64;
  static constexpr LowpFn<Scalars> KernelTable::*kLowp = nullptr;  // float32/float64 only
  static Scalars make(const double* d, const bool* f, const Buffers& b) {
    return Scalars{d[0], d[1], d[2], d[3], d[4], f[0], f[1], trust_scratch(b)};
  }
  static constexpr const char* kValues[] = {"lr", "momentum", "weight_decay", "eta", "eps"};
  static constexpr const char* kBools[] = {"lars_adaptation", "maximize"};
  static void derive(const double* v, const bool* b, std::int64_t, double* d, bool* f) {
    d[0] = -v[0], d[1] = v[1], d[2] = v[2], d[3] = v[3], d[4] = v[4];
    f[0] = b[1], f[1] = b[0];
  }
  static constexpr const char* const* kSwitches = nullptr;
  static bool present(std::size_t, const double*, const bool*, const bool*) { return true; }
  static bool fast_ok(const double*, const bool*, const bool*, DType) { return true; }
};

struct RadamBinding {
  using Scalars = RadamScalars;
  static constexpr const char* kName = "radam";
  static constexpr const char* kDoc = "RAdam step over lists of arrays. See fusedopt.functional.radam.";
  static constexpr const char* kRoles[] = {"params", "grads", "exp_avgs", "exp_avg_sqs"};
  static constexpr bool kOptional[] = {false, false, false, false};
  static constexpr const char* kScalars[] = {
      "bias_correction1", "lr",              "eps",          "bias_correction2_sqrt", "rect",         "beta1",
      "one_minus_beta1",  "beta2",           "one_minus_beta2", "weight_decay",       "decay_factor", "rectified"};
  static constexpr const char* kFlags[] = {"maximize"};
  static constexpr StepFn<Scalars> KernelTable::*kF32 = &KernelTable::radam_f32;
  static constexpr StepFn<Scalars> KernelTable::*kF64 = &KernelTable::radam_f64;
  static constexpr LowpFn<Scalars> KernelTable::*kLowp = &KernelTable::radam_lowp;
  static Scalars make(const double* d, const bool* f, const Buffers&) {
    return Scalars{d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7], d[8], d[9], d[10], d[11] != 0.0, f[0]};
  }
  static constexpr const char* kValues[] = {"lr", "beta1", "beta2", "eps", "weight_decay"};
  static constexpr const char* kBools[] = {"decoupled_weight_decay", "maximize"};
  // torch.optim.RAdam's own float64 expressions, in its order (`x ** 0.5` is pow(x, 0.5) in CPython)
  static void derive(const double* v, const bool* b, std::int64_t t, double* d, bool* f) {
    const double lr = v[0], beta1 = v[1], beta2 = v[2], eps = v[3], wd = v[4], td = static_cast<double>(t);
    const double bias_correction1 = 1.0 - std::pow(beta1, td);
    const double bias_correction2 = 1.0 - std::pow(beta2, td);
    const double rho_inf = 2.0 / (1.0 - beta2) - 1.0;
    const double rho_t = rho_inf - 2.0 * td * std::pow(beta2, td) / bias_correction2;
    const bool rectified = rho_t > 5.0;
    d[0] = bias_correction1, d[1] = lr, d[2] = eps, d[3] = std::pow(bias_correction2, 0.5);
    d[4] = rectified ? std::pow((rho_t - 4.0) * (rho_t - 2.0) * rho_inf / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t),
                                0.5)
                     : 0.0;
    d[5] = beta1, d[6] = 1.0 - beta1, d[7] = beta2, d[8] = 1.0 - beta2;
    d[9] = b[0] ? 0.0 : wd;
    d[10] = b[0] ? 1.0 - lr * wd : 1.0;
    d[11] = rectified ? 1.0 : 0.0;
    f[0] = b[1];
  }
  static constexpr const char* const* kSwitches = nullptr;
  static bool present(std::size_t, const double*, const bool*, const bool*) { return true; }
  static bool fast_ok(const double*, const bool*, const bool*, DType) { return true; }
};

// NAdam: the per-step values depend on the parameter's mu_product (a per-parameter scalar state,
// python/fusedopt/algorithms/_spec.py ScalarState), passed here as the functional hyperparameter
// `mu_product` (its value after this step's factor). Only the functional's fast path derives
// them in C++: the Stepper and TorchPlan (which read group hyperparameters only) are not used.
struct NadamBinding {
  using Scalars = NadamScalars;
  static constexpr const char* kName = "nadam";
  static constexpr const char* kDoc = "NAdam step over lists of arrays. See fusedopt.functional.nadam.";
  static constexpr const char* kRoles[] = {"params", "grads", "exp_avgs", "exp_avg_sqs"};
  static constexpr bool kOptional[] = {false, false, false, false};
  static constexpr const char* kScalars[] = {
      "grad_coef", "momentum_coef", "bias_correction2", "eps",          "beta1",       "one_minus_beta1",
      "beta2",     "one_minus_beta2", "weight_decay",   "decay_factor"};
  static constexpr const char* kFlags[] = {"maximize"};
  static constexpr StepFn<Scalars> KernelTable::*kF32 = &KernelTable::nadam_f32;
  static constexpr StepFn<Scalars> KernelTable::*kF64 = &KernelTable::nadam_f64;
  static constexpr LowpFn<Scalars> KernelTable::*kLowp = nullptr;  // float32/float64 only
  static Scalars make(const double* d, const bool* f, const Buffers&) {
    return Scalars{d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7], d[8], d[9], f[0]};
  }
  static constexpr const char* kValues[] = {"lr", "beta1", "beta2", "eps", "weight_decay", "momentum_decay",
                                            "mu_product"};
  static constexpr const char* kBools[] = {"decoupled_weight_decay", "maximize"};
  // torch.optim.NAdam's own float64 expressions, in its order (_scalars.py::nadam_scalars)
  static void derive(const double* v, const bool* b, std::int64_t t, double* d, bool* f) {
    const double lr = v[0], beta1 = v[1], beta2 = v[2], eps = v[3], wd = v[4], psi = v[5], mp = v[6];
    const double td = static_cast<double>(t);
    const double mu = beta1 * (1.0 - 0.5 * std::pow(0.96, td * psi));
    const double mu_next = beta1 * (1.0 - 0.5 * std::pow(0.96, (td + 1.0) * psi));
    d[0] = -lr * (1.0 - mu) / (1.0 - mp);
    d[1] = (-lr * mu_next) / (1.0 - mp * mu_next);
    d[2] = 1.0 - std::pow(beta2, td);
    d[3] = eps, d[4] = beta1, d[5] = 1.0 - beta1, d[6] = beta2, d[7] = 1.0 - beta2;
    d[8] = b[0] ? 0.0 : wd;
    d[9] = b[0] ? 1.0 - lr * wd : 1.0;
    f[0] = b[1];
  }
  static constexpr const char* const* kSwitches = nullptr;
  static bool present(std::size_t, const double*, const bool*, const bool*) { return true; }
  static bool fast_ok(const double*, const bool*, const bool*, DType) { return true; }
};

// optax's trace (python/fusedopt/algorithms/sgd.py, TRACE): the SGD kernel under other names
// (decay = momentum, no dampening, no first step; the traces always exist). Not a binding of its
// own: only the functional (functional.cpp) uses it.
struct TraceBinding : SgdBinding {
  static constexpr const char* kName = "trace";
  static constexpr const char* kValues[] = {"lr", "decay", "weight_decay"};
  static constexpr const char* kBools[] = {"nesterov", "maximize"};
  static void derive(const double* v, const bool* b, std::int64_t, double* d, bool* f) {
    d[0] = v[0], d[1] = v[2], d[2] = v[1], d[3] = 1.0 - 0.0;
    f[0] = b[0], f[1] = b[1], f[2] = false;
  }
  static constexpr const char* const* kSwitches = nullptr;
  static bool present(std::size_t, const double*, const bool*, const bool*) { return true; }
  static bool fast_ok(const double*, const bool*, const bool*, DType) { return true; }
};

// ---- Functional twins ----------------------------------------------------------------------------
// The functional API's C++ fast path (functional.cpp) reads, besides kValues/kBools (what `derive`
// needs), kSwitches: the bool hyperparameters only these twins read (amsgrad, centered). present(r,
// v, b, s) is the description's StateRole.when of optional role r (kRoles index); fast_ok(v, b, s,
// dtype) is true only when the description's relations and check_params certainly pass (false: the
// generated Python function runs instead and raises its own error). tests/test_functional_fast.py
// checks the twins against the descriptions over a grid of hyperparameters.
template <class Tr>
constexpr std::size_t num_switches() {
  if constexpr (std::is_array_v<decltype(Tr::kSwitches)>) {
    return std::extent_v<decltype(Tr::kSwitches)>;
  } else {
    return 0;
  }
}

template <class Tr>
constexpr std::size_t num_flags() {
  if constexpr (std::is_array_v<decltype(Tr::kFlags)>) {
    return std::extent_v<decltype(Tr::kFlags)>;
  } else {
    return 0;
  }
}

template <class Tr>
constexpr std::size_t num_bools() {
  return std::extent_v<decltype(Tr::kBools)>;
}

// ---- the C++ fast paths' common part (stepper.hpp, torch_plan.hpp) ----------------------------

// What a fast path needs of an algorithm's traits: its functional hyperparameters (kValues as
// doubles, kBools), read from the checked "view" dict Python hands over, and `derive`.
struct DeriveTraits {
  static constexpr std::size_t kMaxScalars = 16, kMaxFlags = 8, kMaxBools = 8;
  const char* name;
  std::size_t nstates;  // state roles (kRoles minus params and grads)
  const char* const* values;
  std::size_t nvalues;
  const char* const* bools;
  std::size_t nbools;
  std::size_t nscalars, nflags;
  void (*derive)(const double*, const bool*, std::int64_t, double*, bool*);

  // The view's values (numbers, not bools) and bools; TypeError naming `who` and the key otherwise.
  void read_view(const char* who, const py::dict& view, std::vector<double>* v, std::vector<char>* b) const {
    std::vector<double> vs(nvalues, 0.0);
    std::vector<char> bs(nbools, 0);
    for (std::size_t i = 0; i < nvalues; ++i) {
      PyObject* x = PyDict_GetItemString(view.ptr(), values[i]);
      if (x == nullptr || PyBool_Check(x) || !(PyFloat_Check(x) || PyLong_Check(x))) {
        throw py::type_error(std::string(who) + ": view['" + values[i] + "'] must be a number");
      }
      vs[i] = PyFloat_AsDouble(x);
      if (PyErr_Occurred() != nullptr) throw py::error_already_set();
    }
    for (std::size_t i = 0; i < nbools; ++i) {
      PyObject* x = PyDict_GetItemString(view.ptr(), bools[i]);
      if (x == nullptr || !PyBool_Check(x)) {
        throw py::type_error(std::string(who) + ": view['" + bools[i] + "'] must be a bool");
      }
      bs[i] = x == Py_True;
    }
    v->swap(vs);
    b->swap(bs);
  }

  // derive() on values read by read_view: d[kMaxScalars], f[kMaxFlags + 1].
  void derive_scalars(const std::vector<double>& v, const std::vector<char>& b, std::int64_t t, double* d,
                      bool* f) const {
    bool bs[kMaxBools] = {};
    for (std::size_t i = 0; i < b.size(); ++i) bs[i] = b[i] != 0;
    derive(v.data(), bs, t, d, f);
  }
};

inline constexpr const char* kGradNames[] = {"grad_scale", "clip_coef", "clip_value"};

template <class Tr>
constexpr std::size_t num_scalars() {
  return std::extent_v<decltype(Tr::kScalars)>;
}

template <class Tr>
DeriveTraits derive_traits_of() {
  static_assert(num_scalars<Tr>() <= DeriveTraits::kMaxScalars && num_flags<Tr>() <= DeriveTraits::kMaxFlags &&
                num_bools<Tr>() <= DeriveTraits::kMaxBools, "DeriveTraits bounds");
  return DeriveTraits{Tr::kName, std::extent_v<decltype(Tr::kRoles)> - 2, Tr::kValues,
                      std::extent_v<decltype(Tr::kValues)>, Tr::kBools, num_bools<Tr>(), num_scalars<Tr>(),
                      num_flags<Tr>(), &Tr::derive};
}

// Tr's kernel on `b` with the scalars made from d/f, no gradient pre-processing, without the GIL
// (everything the kernel reads is in `list` and `scalars`; the caller keeps the buffers alive).
template <class Tr>
void launch(const double* d, const bool* f, const Buffers& b, int threads) {
  const typename Tr::Scalars scalars = Tr::make(d, f, b);
  const GradScalars grad = grad_scalars(1.0, 1.0, std::numeric_limits<double>::infinity());
  const TensorList list = b.list();
  if (list.count == 0) return;
  const KernelTable& table = active_table();
  const StepFn<typename Tr::Scalars> fn = b.dtype() == DType::f32 ? table.*Tr::kF32 : table.*Tr::kF64;
  py::gil_scoped_release release;
  fn(list, scalars, grad, threads);
}

}  // namespace bindings
}  // namespace fusedopt

// One binding per algorithm. Each does exactly: validate and collect raw pointers (arrays.cpp, or a
// still-matching Plan, plan.hpp) ->
// release the GIL -> one call through the active kernel table. No arithmetic, no state: the
// derived per-step scalars arrive ready-made from python/fusedopt/_scalars.py.
#include <pybind11/pybind11.h>

#include <cmath>
#include <vector>

#include "bindings/arrays.hpp"
#include "bindings/plan.hpp"
#include "common/step_args.hpp"
#include "dispatch/dispatch.hpp"

namespace fusedopt {
namespace bindings {

namespace {

using namespace pybind11::literals;

// Runs fn_f32 or fn_f64 of the active table on the collected buffers, without the GIL.
template <class Scalars>
void run(const Buffers& buffers, StepFn<Scalars> KernelTable::*f32, StepFn<Scalars> KernelTable::*f64,
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

// The buffers of a step: from the plan when it still matches (plan.hpp), else fully collected.
Buffers gather(const std::vector<Role>& roles, py::handle plan) {
  if (!plan.is_none()) {
    if (!py::isinstance<Plan>(plan)) {
      throw py::type_error("plan must be a fusedopt._core.Plan or None, got " +
                           py::str(py::type::of(plan).attr("__name__")).cast<std::string>());
    }
    Buffers b;
    if (plan.cast<const Plan&>().fill(roles, &b)) return b;
  }
  return collect(roles);
}

// The gradient pre-processing scalars (fusedopt._scalars.GradScalars), validated by the Python
// layer; `active` unless all three are their exact identities.
GradScalars grad_scalars(double grad_scale, double clip_coef, double clip_value) {
  const bool identity = grad_scale == 1.0 && clip_coef == 1.0 && std::isinf(clip_value) && clip_value > 0;
  return GradScalars{grad_scale, clip_coef, clip_value, !identity};
}

void sgd(py::handle params, py::handle grads, py::handle momentum_buffers, double lr, double weight_decay,
         double momentum, double one_minus_dampening, double grad_scale, double clip_coef, double clip_value,
         bool nesterov, bool maximize, bool first_step, py::handle threads, py::handle plan, py::handle counters) {
  const Buffers b = gather({{"params", params, true}, {"grads", grads, false},
                            {"momentum_buffers", momentum_buffers, true}}, plan);
  const bool has_momentum = b.present(2);
  const SgdScalars s{lr, weight_decay, momentum, one_minus_dampening, weight_decay != 0.0, has_momentum,
                     nesterov, maximize, first_step};
  run(b, &KernelTable::sgd_f32, &KernelTable::sgd_f64, s, grad_scalars(grad_scale, clip_coef, clip_value),
      check_threads(threads), counters);
}

void momentum(py::handle params, py::handle grads, py::handle velocities, double step_size, double beta,
              double one_minus_beta, double weight_decay, double grad_scale, double clip_coef, double clip_value,
              py::handle threads, py::handle plan, py::handle counters) {
  const Buffers b =
      gather({{"params", params, true}, {"grads", grads, false}, {"velocities", velocities, true}}, plan);
  const MomentumScalars s{step_size, beta, one_minus_beta, weight_decay, weight_decay != 0.0};
  run(b, &KernelTable::momentum_f32, &KernelTable::momentum_f64, s, grad_scalars(grad_scale, clip_coef, clip_value),
      check_threads(threads), counters);
}

void rmsprop(py::handle params, py::handle grads, py::handle square_avgs, py::handle grad_avgs,
             py::handle momentum_buffers, double lr, double buffer_lr, double alpha, double one_minus_alpha,
             double eps_outside, double eps_inside, double weight_decay, double momentum_, double grad_scale,
             double clip_coef, double clip_value, bool maximize, py::handle threads, py::handle plan, py::handle counters) {
  const Buffers b = gather({{"params", params, true},
                            {"grads", grads, false},
                            {"square_avgs", square_avgs, true},
                            {"grad_avgs", grad_avgs, true},
                            {"momentum_buffers", momentum_buffers, true}},
                           plan);
  const RmspropScalars s{lr,           buffer_lr, alpha, one_minus_alpha, eps_outside, eps_inside, weight_decay,
                         momentum_,    weight_decay != 0.0, b.present(3), b.present(4),
                         maximize};
  run(b, &KernelTable::rmsprop_f32, &KernelTable::rmsprop_f64, s, grad_scalars(grad_scale, clip_coef, clip_value),
      check_threads(threads), counters);
}

void adam(py::handle params, py::handle grads, py::handle exp_avgs, py::handle exp_avg_sqs,
          py::handle max_exp_avg_sqs, double neg_step_size, double bias_correction2_sqrt, double eps,
          double eps_root, double bias_correction2, double beta1, double one_minus_beta1, double beta2,
          double one_minus_beta2, double weight_decay, double decay_factor, int weight_decay_mode,
          double grad_scale, double clip_coef, double clip_value, bool maximize, bool torch_exact, py::handle threads,
          py::handle plan, py::handle counters) {
  if (weight_decay_mode < kNoDecay || weight_decay_mode > kDecoupled) {
    throw py::value_error("weight_decay_mode must be 0 (none), 1 (L2) or 2 (decoupled)");
  }
  const Buffers b = gather({{"params", params, true},
                            {"grads", grads, false},
                            {"exp_avgs", exp_avgs, true},
                            {"exp_avg_sqs", exp_avg_sqs, true},
                            {"max_exp_avg_sqs", max_exp_avg_sqs, true}},
                           plan);
  const AdamScalars s{neg_step_size,   bias_correction2_sqrt, eps,          eps_root,
                      bias_correction2, beta1,               one_minus_beta1, beta2,
                      one_minus_beta2, weight_decay,         decay_factor, weight_decay_mode,
                      b.present(4), maximize, torch_exact};
  run(b, &KernelTable::adam_f32, &KernelTable::adam_f64, s, grad_scalars(grad_scale, clip_coef, clip_value),
      check_threads(threads), counters);
}

void adagrad(py::handle params, py::handle grads, py::handle state_sums, double neg_clr, double eps,
             double weight_decay, double grad_scale, double clip_coef, double clip_value, bool maximize,
             py::handle threads, py::handle plan, py::handle counters) {
  const Buffers b =
      gather({{"params", params, true}, {"grads", grads, false}, {"state_sums", state_sums, true}}, plan);
  const AdagradScalars s{neg_clr, eps, weight_decay, weight_decay != 0.0, maximize};
  run(b, &KernelTable::adagrad_f32, &KernelTable::adagrad_f64, s, grad_scalars(grad_scale, clip_coef, clip_value),
      check_threads(threads), counters);
}

void ema(py::handle averages, py::handle params, double decay, double one_minus_decay, py::handle threads) {
  const Buffers b = collect({{"averages", averages, true}, {"params", params, false}});
  const TensorList list = b.list();
  if (list.count == 0) return;
  const EmaScalars s{decay, one_minus_decay};
  const KernelTable& table = active_table();
  const PassFn<EmaScalars> fn = b.dtype() == DType::f32 ? table.ema_f32 : table.ema_f64;
  const int t = check_threads(threads);
  py::gil_scoped_release release;
  fn(list, s, t);
}

// The benchmarks' bandwidth probe (kernels/probe.inl): 1 to 4 written streams and one read stream.
void traffic_probe(py::sequence written, py::handle read, double scale, py::handle threads) {
  static const char* const kNames[] = {"written[0]", "written[1]", "written[2]", "written[3]"};
  const std::size_t n_written = written.size();
  if (n_written < 1 || n_written > 4) throw py::value_error("written must hold 1 to 4 lists of arrays");
  std::vector<Role> roles;
  for (std::size_t r = 0; r < n_written; ++r) roles.push_back({kNames[r], written[r], true});
  roles.push_back({"read", read, false});
  const Buffers b = collect(roles);
  const TensorList list = b.list();
  if (list.count == 0) return;
  const ProbeScalars s{scale};
  const KernelTable& table = active_table();
  const PassFn<ProbeScalars> fn = b.dtype() == DType::f32 ? table.probe_f32 : table.probe_f64;
  const int t = check_threads(threads);
  py::gil_scoped_release release;
  fn(list, s, t);
}

// Sum of squares of every element (float64, deterministic: see cpp/kernels/norm.inl).
double sum_of_squares(py::handle arrays, py::handle threads) {
  const Buffers b = collect({{"arrays", arrays, false}});
  const TensorList list = b.list();
  const int t = check_threads(threads);
  if (list.count == 0) return 0.0;
  std::int64_t nblocks = 0;
  for (std::int64_t k = 0; k < list.count; ++k) nblocks += (list.sizes[k] + kNormBlock - 1) / kNormBlock;
  std::vector<double> partials(static_cast<std::size_t>(nblocks > 0 ? nblocks : 1));
  const KernelTable& table = active_table();
  const SumSqFn fn = b.dtype() == DType::f32 ? table.sumsq_f32 : table.sumsq_f64;
  py::gil_scoped_release release;
  return fn(list, partials.data(), t);
}

}  // namespace

// The per-step scalars are positional, in the order of the NamedTuples of python/fusedopt/_scalars.py
// (the functional layer calls e.g. `_core.adam(p, g, m, v, vmax, *scalars, maximize, threads)`):
// parsing a dozen keyword arguments would cost more than a whole step on a small tensor.
// tests/test_bindings.py checks that the names here and the NamedTuple fields agree.
void register_optimizers(py::module_& m) {
  m.def("_register_torch", &register_torch, "tensor_type"_a, "float32"_a, "float64"_a, "strided"_a,
        "Called once by fusedopt.torch: accept CPU torch tensors (float32/float64) wherever arrays are accepted.");
  m.attr("max_threads") = kMaxThreads;
  m.def(
      "check",
      [](const py::sequence& roles) {
        // (name, list or None, written) triples: every check of a step, without the step.
        std::vector<std::string> names;
        std::vector<Role> rs;
        names.reserve(roles.size());
        for (const py::handle r : roles) {
          const py::tuple t = py::reinterpret_borrow<py::tuple>(r);
          names.push_back(t[0].cast<std::string>());
        }
        for (std::size_t i = 0; i < roles.size(); ++i) {
          const py::tuple t = roles[i].cast<py::tuple>();
          rs.push_back(Role{names[i].c_str(), t[1], t[2].cast<bool>()});
        }
        if (rs.empty()) throw py::value_error("check needs at least the params role");
        collect(rs);
      },
      "roles"_a, "Every check a step over these (name, list, written) roles would make, without stepping.");
  m.def("check_overlap", &check_overlap, "written"_a, "read"_a,
        "No array of `written` overlaps any other array of `written` or `read` (any shapes).");
  py::class_<Plan>(m, "Plan",
                   "The validation of a step's written arrays (params, then state lists; None for an absent "
                   "optional one), done once. Pass it as `plan=` with the same lists at every step: the step then "
                   "only checks that they hold the same, unchanged arrays and validates the gradients; anything "
                   "else falls back to the full checks. See cpp/bindings/plan.hpp.")
      .def(py::init<const py::sequence&>(), "written"_a)
      .def_property_readonly("count", &Plan::count, "number of tensors")
      .def_property_readonly("roles", &Plan::roles, "number of written roles (params and state lists)");
  m.def("sgd", &sgd, "params"_a, "grads"_a, "momentum_buffers"_a.none(true), "lr"_a,
        "weight_decay"_a, "momentum"_a, "one_minus_dampening"_a, "grad_scale"_a, "clip_coef"_a, "clip_value"_a,
        "nesterov"_a, "maximize"_a, "first_step"_a,
        "threads"_a, "plan"_a = py::none(), "counters"_a = py::none(), "SGD step over lists of arrays (momentum_buffers=None: no momentum). See fusedopt.functional.sgd.");
  m.def("momentum", &momentum, "params"_a, "grads"_a, "velocities"_a, "step_size"_a, "beta"_a,
        "one_minus_beta"_a, "weight_decay"_a, "grad_scale"_a, "clip_coef"_a, "clip_value"_a, "threads"_a,
        "plan"_a = py::none(), "counters"_a = py::none(), "EMA-momentum step over lists of arrays. See fusedopt.functional.momentum.");
  m.def("rmsprop", &rmsprop, "params"_a, "grads"_a, "square_avgs"_a, "grad_avgs"_a.none(true),
        "momentum_buffers"_a.none(true), "lr"_a, "buffer_lr"_a, "alpha"_a, "one_minus_alpha"_a, "eps_outside"_a,
        "eps_inside"_a, "weight_decay"_a, "momentum"_a, "grad_scale"_a, "clip_coef"_a, "clip_value"_a,
        "maximize"_a, "threads"_a, "plan"_a = py::none(), "counters"_a = py::none(),
        "RMSprop step over lists of arrays (grad_avgs=None: not centered; momentum_buffers=None: no momentum). "
        "See fusedopt.functional.rmsprop.");
  m.def("adam", &adam, "params"_a, "grads"_a, "exp_avgs"_a, "exp_avg_sqs"_a, "max_exp_avg_sqs"_a.none(true),
        "neg_step_size"_a, "bias_correction2_sqrt"_a, "eps"_a, "eps_root"_a, "bias_correction2"_a, "beta1"_a,
        "one_minus_beta1"_a, "beta2"_a, "one_minus_beta2"_a, "weight_decay"_a, "decay_factor"_a,
        "weight_decay_mode"_a, "grad_scale"_a, "clip_coef"_a, "clip_value"_a, "maximize"_a, "torch_exact"_a,
        "threads"_a, "plan"_a = py::none(), "counters"_a = py::none(),
        "Adam/AdamW step over lists of arrays (max_exp_avg_sqs=None: no amsgrad). See fusedopt.functional.adam.");
  m.def("adagrad", &adagrad, "params"_a, "grads"_a, "state_sums"_a, "neg_clr"_a, "eps"_a,
        "weight_decay"_a, "grad_scale"_a, "clip_coef"_a, "clip_value"_a, "maximize"_a, "threads"_a, "plan"_a = py::none(), "counters"_a = py::none(),
        "Adagrad step over lists of arrays. See fusedopt.functional.adagrad.");
  m.def("_traffic_probe", &traffic_probe, "written"_a, "read"_a, "scale"_a, "threads"_a,
        "Benchmark probe: x += scale*r on every written stream (the bytes of an optimizer step).");
  m.def("ema", &ema, "averages"_a, "params"_a, "decay"_a, "one_minus_decay"_a, "threads"_a,
        "averages = decay*averages + (1-decay)*params over lists of arrays. See fusedopt.EMA.");
  m.def("sum_of_squares", &sum_of_squares, "arrays"_a, "threads"_a,
        "Deterministic float64 sum of squares of every element of a list of arrays (one dtype). "
        "See fusedopt.functional.global_norm.");
}

}  // namespace bindings
}  // namespace fusedopt

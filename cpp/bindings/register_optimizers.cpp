// The step bindings (one template, a traits struct per algorithm). Each does exactly: validate and collect raw pointers (arrays.cpp, or a
// still-matching Plan, plan.hpp) ->
// release the GIL -> one call through the active kernel table. No arithmetic, no state: the
// derived per-step scalars arrive ready-made from python/fusedopt/_scalars.py.
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "bindings/arrays.hpp"
#include "bindings/plan.hpp"
#include "bindings/step_traits.hpp"
#include "common/q8.hpp"
#include "common/step_args.hpp"
#include "dispatch/dispatch.hpp"

namespace fusedopt {
namespace bindings {

namespace {

using namespace pybind11::literals;

// 8-bit states: `absmax` is a sequence with one item per state role (roles 2..), each a list of
// float32 arrays (one per block of kQ8Block elements of the parameter) where that state list is
// given, None where it is None. Appends those roles (names "<state role>_absmax") to `roles`.
// `names`: the step's role names (params, grads, then the nroles - 2 state roles).
void add_absmax_roles(py::handle absmax, const char* const* names, std::size_t nroles, std::vector<Role>& roles,
                      std::vector<std::string>* storage, py::object* keep) {
  if (!PySequence_Check(absmax.ptr()) || py::isinstance<py::str>(absmax)) {
    throw py::type_error("absmax must be a sequence of lists (one per state list) or None");
  }
  *keep = py::reinterpret_steal<py::object>(PySequence_Tuple(absmax.ptr()));
  if (!*keep) throw py::error_already_set();
  const std::size_t nstates = nroles - 2;
  if (py::len(*keep) != nstates) {
    throw py::value_error("absmax has " + std::to_string(py::len(*keep)) + " items; this step has " +
                          std::to_string(nstates) + " state lists");
  }
  storage->reserve(nstates);
  bool any = false;
  for (std::size_t j = 0; j < nstates; ++j) {
    const py::handle item = PyTuple_GET_ITEM(keep->ptr(), static_cast<Py_ssize_t>(j));
    storage->push_back(std::string(names[j + 2]) + "_absmax");
    if (item.is_none() != roles[j + 2].list.is_none()) {
      throw py::value_error("absmax[" + std::to_string(j) + "] must be " +
                            (item.is_none() ? "a list (" + std::string(names[j + 2]) + " is given)"
                                            : "None (" + std::string(names[j + 2]) + " is None)"));
    }
    any = any || !item.is_none();
  }
  if (!any) throw py::value_error("absmax is given but the step has no state list to quantize");
  for (std::size_t j = 0; j < nstates; ++j) {
    const py::handle item = PyTuple_GET_ITEM(keep->ptr(), static_cast<Py_ssize_t>(j));
    Role role{(*storage)[j].c_str(), item, true};
    role.block = kQ8Block;
    roles.push_back(role);
  }
}

// Whether a traits' step is a trust-ratio step (kernels/trust.inl; the `trust=` argument).
template <class Tr>
constexpr bool kTrust = std::is_same_v<typename Tr::Scalars, LambScalars> ||
                        std::is_same_v<typename Tr::Scalars, LarsScalars>;

// `sr_offsets`: None, or one int >= 0 per array (the counter of its element 0; LowpArgs).
std::vector<std::uint64_t> sr_offsets_arg(py::handle offsets, std::int64_t count, bool sr) {
  std::vector<std::uint64_t> out;
  if (offsets.is_none()) return out;
  if (!sr) throw py::value_error("sr_offsets is given but stochastic_rounding is False");
  if (!PySequence_Check(offsets.ptr()) || py::isinstance<py::str>(offsets)) {
    throw py::type_error("sr_offsets must be a sequence of ints (one per array) or None");
  }
  const py::tuple t = py::reinterpret_steal<py::tuple>(PySequence_Tuple(offsets.ptr()));
  if (!t) throw py::error_already_set();
  if (static_cast<std::int64_t>(t.size()) != count) {
    throw py::value_error("sr_offsets has " + std::to_string(t.size()) + " items; the step has " +
                          std::to_string(count) + " arrays");
  }
  for (std::size_t i = 0; i < t.size(); ++i) {
    const py::handle v = t[i];
    if (!py::isinstance<py::int_>(v) || py::isinstance<py::bool_>(v) || v.cast<py::int_>() < py::int_(0)) {
      throw py::value_error("sr_offsets[" + std::to_string(i) + "] must be an int >= 0");
    }
    out.push_back(v.cast<std::uint64_t>());
  }
  return out;
}

// `trust`: None, or (phase, sums) with phase 1 or 2 and sums a 1-D C-contiguous float64 NumPy array:
// phase 1 writes 2 doubles per block of the call's arrays into it, phase 2 reads 2 per array
// (TrustSplit, step_args.hpp). Returns the phase (0 for None), *sums the array (kept alive by the
// caller's `trust` tuple, held by the call).
int trust_arg(py::handle trust, std::int64_t nblocks, std::int64_t count, double** sums, py::object* keep) {
  if (trust.is_none()) return 0;
  if (!py::isinstance<py::tuple>(trust) || py::len(trust) != 2) {
    throw py::type_error("trust must be None or a (phase, sums) tuple");
  }
  *keep = py::reinterpret_borrow<py::tuple>(trust);
  const py::handle ph = PyTuple_GET_ITEM(keep->ptr(), 0);
  const py::handle arr = PyTuple_GET_ITEM(keep->ptr(), 1);
  if (!py::isinstance<py::int_>(ph) || py::isinstance<py::bool_>(ph) || (ph.cast<int>() != 1 && ph.cast<int>() != 2)) {
    throw py::value_error("trust[0] (the phase) must be 1 or 2");
  }
  const int phase = ph.cast<int>();
  if (!py::isinstance<py::array>(arr)) throw py::type_error("trust[1] must be a float64 NumPy array");
  const py::array a = py::reinterpret_borrow<py::array>(arr);
  if (!a.dtype().is(py::dtype::of<double>()) || a.ndim() != 1 || !(a.flags() & py::array::c_style) ||
      !a.writeable()) {
    throw py::type_error("trust[1] must be a writable 1-D C-contiguous float64 NumPy array");
  }
  const std::int64_t want = phase == 1 ? 2 * nblocks : 2 * count;
  if (a.shape(0) != want) {
    throw py::value_error("trust[1] must hold " + std::to_string(want) + " values (" +
                          (phase == 1 ? "2 per block of " + std::to_string(kNormBlock) + " elements"
                                      : std::string("2 per array")) + "), got " + std::to_string(a.shape(0)));
  }
  *sums = static_cast<double*>(a.request().ptr);
  return phase;
}

template <class Tr, class Roles, class Doubles, class Flags>
struct Step;

template <class Tr, std::size_t... R, std::size_t... D, std::size_t... F>
struct Step<Tr, std::index_sequence<R...>, std::index_sequence<D...>, std::index_sequence<F...>> {
  static void call(As<py::handle, R>... lists, As<double, D>... scalars, double grad_scale, double clip_coef,
                   double clip_value, As<bool, F>... flags, py::handle threads, py::handle plan, py::handle counters,
                   py::handle masters, bool stochastic_rounding, std::uint64_t seed, std::uint64_t sr_step,
                   py::handle absmax, py::handle sr_offsets, py::handle trust) {
    constexpr std::size_t nroles = sizeof...(R);
    const bool has_masters = !masters.is_none();
    const bool q8 = !absmax.is_none();
    // role 1: grads (read); masters (float32 or uint16 trails) after the algorithm's roles; with
    // 8-bit states, the masters' slot always, then one absmax list per state role
    std::vector<Role> roles{Role{Tr::kRoles[R], lists, R != 1}...};
    if (has_masters || q8) roles.push_back(Role{"masters", masters, true, true});
    std::vector<std::string> absmax_names;
    py::object absmax_lists;  // the items of `absmax`, kept alive for the call
    if (q8) add_absmax_roles(absmax, Tr::kRoles, nroles, roles, &absmax_names, &absmax_lists);
    const Buffers b = gather(roles, has_masters || stochastic_rounding || q8 ? py::none() : plan, /*mixed=*/true);
    const double d[] = {scalars...};
    const bool f[] = {flags..., false};  // (one extra: no zero-length array)
    const int t = check_threads(threads);
    LowpArgs lowp{};
    const std::vector<std::uint64_t> offsets = sr_offsets_arg(sr_offsets, b.list().count, stochastic_rounding);
    if (!trust.is_none() && !kTrust<Tr>) {
      throw py::type_error(std::string("trust applies to the trust-ratio steps (lamb, lars), not ") + Tr::kName);
    }
    if (check_lowp(b, Tr::kRoles, nroles, has_masters, stochastic_rounding, seed, sr_step, &lowp, q8)) {
      lowp.sr_offsets = offsets.empty() ? nullptr : offsets.data();
      if constexpr (std::is_same_v<typename Tr::Scalars, AdamScalars>) {
        if (f[1]) throw py::value_error("torch_exact=True steps float32 params only (no low-precision storage)");
      }
      if constexpr (Tr::kLowp == nullptr) {  // trust-ratio algorithms: float32/float64 arrays only
        throw py::type_error(std::string(Tr::kName) + " steps float32 or float64 arrays only (no bfloat16/float16 "
                             "storage, masters, stochastic rounding or 8-bit states)");
      } else {
        run_lowp(b, Tr::kLowp, Tr::make(d, f, b), grad_scalars(grad_scale, clip_coef, clip_value), lowp, t, counters);
        return;
      }
    }
    typename Tr::Scalars s = Tr::make(d, f, b);
    if constexpr (kTrust<Tr>) {
      if (!trust.is_none()) {
        const TensorList l = b.list();
        std::int64_t nblocks = 0;
        for (std::int64_t k = 0; k < l.count; ++k) nblocks += (l.sizes[k] + kNormBlock - 1) / kNormBlock;
        double* sums = nullptr;
        py::object keep;
        s.split.phase = trust_arg(trust, nblocks, l.count, &sums, &keep);
        if (s.split.phase == 2) s.split.totals = sums;
        run(b, Tr::kF32, Tr::kF64, s, grad_scalars(grad_scale, clip_coef, clip_value), t, counters);
        if (s.split.phase == 1) std::copy(s.scratch, s.scratch + 2 * nblocks, sums);  // (GIL held again)
        return;
      }
    }
    run(b, Tr::kF32, Tr::kF64, s, grad_scalars(grad_scale, clip_coef, clip_value), t, counters);
  }
  static void define(py::module_& m) {
    m.def(Tr::kName, &call, py::arg(Tr::kRoles[R]).none(Tr::kOptional[R])..., py::arg(Tr::kScalars[D])...,
          py::arg(kGradNames[0]), py::arg(kGradNames[1]), py::arg(kGradNames[2]), py::arg(flag_name<F>())...,
          py::arg("threads"), py::arg("plan") = py::none(), py::arg("counters") = py::none(),
          py::arg("masters") = py::none(), py::arg("stochastic_rounding") = false, py::arg("seed") = 0,
          py::arg("sr_step") = 0, py::arg("absmax") = py::none(), py::arg("sr_offsets") = py::none(),
          py::arg("trust") = py::none(), Tr::kDoc);
  }
  template <std::size_t I>
  static const char* flag_name() {
    if constexpr (num_flags<Tr>() > 0) {
      return Tr::kFlags[I];
    } else {
      return "";
    }
  }
};

template <class Tr>
void define_step(py::module_& m) {
  Step<Tr, std::make_index_sequence<std::extent_v<decltype(Tr::kRoles)>>,
       std::make_index_sequence<std::extent_v<decltype(Tr::kScalars)>>, std::make_index_sequence<num_flags<Tr>()>>::define(m);
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
  const ProbeScalars s{scale, static_cast<int>(n_written)};
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
        "bfloat16"_a = py::none(), "float16"_a = py::none(),
        "Called once by fusedopt.torch: accept CPU torch tensors (float32/float64) wherever arrays are accepted.");
  m.attr("max_threads") = kMaxThreads;
  m.def(
      "check",
      [](const py::sequence& roles, bool lowp, bool stochastic_rounding, py::handle absmax) {
        // (name, list or None, written) triples: every check of a step, without the step. With
        // lowp=True, the checks of a step binding over low-precision storage: the roles may hold
        // float16/bfloat16 arrays and, when the last role is named "masters", it is the masters
        // list (float32 or uint16), checked as the step's `masters=` argument.
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
        if (!lowp) {
          collect(rs);
          return;
        }
        const bool has_masters = rs.size() > 2 && names.back() == "masters" && !rs.back().list.is_none();
        if (has_masters) rs.back().any_dtype = true;
        if (rs.size() > 2 && names.back() == "masters" && !has_masters) rs.pop_back();
        const std::size_t nroles = rs.size() - (has_masters ? 1 : 0);
        std::vector<const char*> cnames;
        for (const Role& r : rs) cnames.push_back(r.name);
        const bool q8 = !absmax.is_none();
        std::vector<std::string> absmax_names;
        py::object absmax_lists;
        if (q8) {
          if (!has_masters) rs.push_back(Role{"masters", py::none(), true, true});
          add_absmax_roles(absmax, cnames.data(), nroles, rs, &absmax_names, &absmax_lists);
        }
        const Buffers b = collect(rs, /*mixed=*/true);
        LowpArgs unused{};
        check_lowp(b, cnames.data(), nroles, has_masters, stochastic_rounding, 0, 0, &unused, q8);
      },
      "roles"_a, "lowp"_a = false, "stochastic_rounding"_a = false, "absmax"_a = py::none(),
      "Every check a step over these (name, list, written) roles would make, without stepping (lowp=True: "
      "a step over low-precision storage, the last role named 'masters' being its masters list; absmax: "
      "the absmax lists of 8-bit states, as the step's absmax=).");
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
  define_step<SgdBinding>(m);
  define_step<MomentumBinding>(m);
  define_step<RadamBinding>(m);
  define_step<NadamBinding>(m);
  define_step<RmspropBinding>(m);
  define_step<AdamBinding>(m);
  define_step<AdagradBinding>(m);
  define_step<LionBinding>(m);
  define_step<LambBinding>(m);
  define_step<LarsBinding>(m);
  define_step<AdamaxBinding>(m);
  define_step<MuonBinding>(m);
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

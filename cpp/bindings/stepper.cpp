#include "bindings/stepper.hpp"

#include <cmath>
#include <limits>
#include <string>

#include "bindings/step_traits.hpp"

namespace fusedopt {
namespace bindings {

using RunFn = bool (*)(const Plan&, const std::vector<py::object>&, py::handle grads, const double*, const bool*,
                       int threads, const py::list& states, PyObject* next_step);

struct Stepper::Algo : DeriveTraits {  // (step_traits.hpp)
  RunFn run;
};

namespace {

// Plan::fill, then the kernel without the GIL, then every state dict's 'step' = next_step (when
// given) with the GIL held and no Python code run in between (as Counters::commit).
template <class Tr>
bool run_step(const Plan& plan, const std::vector<py::object>& lists, py::handle grads, const double* d,
              const bool* f, int threads, const py::list& states, PyObject* next_step) {
  constexpr std::size_t nroles = std::extent_v<decltype(Tr::kRoles)>;
  std::vector<Role> roles;
  roles.reserve(nroles);
  roles.push_back(Role{Tr::kRoles[0], lists[0], true});
  roles.push_back(Role{Tr::kRoles[1], grads, false});
  for (std::size_t r = 2; r < nroles; ++r) roles.push_back(Role{Tr::kRoles[r], lists[r - 1], true});
  Buffers b;
  if (!plan.fill(roles, &b)) return false;
  launch<Tr>(d, f, b, threads);  // `b` and the plan keep the arrays alive
  if (next_step != nullptr) {
    static PyObject* const step_key = PyUnicode_InternFromString("step");
    // every dict holds 'step' (checked): PyDict_SetItem replaces a value, allocates nothing
    const Py_ssize_t n = PyList_GET_SIZE(states.ptr());
    for (Py_ssize_t k = 0; k < n; ++k) PyDict_SetItem(PyList_GET_ITEM(states.ptr(), k), step_key, next_step);
  }
  return true;
}

template <class Tr>
Stepper::Algo algo_of() {
  return Stepper::Algo{derive_traits_of<Tr>(), &run_step<Tr>};
}

const std::vector<Stepper::Algo>& algos() {
  static const std::vector<Stepper::Algo> all = {algo_of<SgdBinding>(),     algo_of<MomentumBinding>(),
                                                  algo_of<RmspropBinding>(), algo_of<AdamBinding>(),
                                                  algo_of<AdagradBinding>(), algo_of<LionBinding>(),
                                                  algo_of<AdamaxBinding>(), algo_of<RadamBinding>(), algo_of<LambBinding>(), algo_of<LarsBinding>()};
  return all;
}

const Stepper::Algo& find_algo(const std::string& name) {
  for (const Stepper::Algo& a : algos()) {
    if (name == a.name) return a;
  }
  throw py::value_error("Stepper: unknown kernel '" + name + "'");
}

}  // namespace

Stepper::Stepper(const std::string& algorithm, py::object plan, const py::list& params, const py::sequence& lists,
                 const py::sequence& role_keys, py::dict group, const py::tuple& keys, const py::tuple& snapshot,
                 const py::list& states, const py::dict& view, bool has_step)
    : algo_(&find_algo(algorithm)), plan_(std::move(plan)), group_(std::move(group)), states_(states), has_step_(has_step) {
  if (!py::isinstance<Plan>(plan_)) throw py::type_error("Stepper: plan must be a fusedopt._core.Plan");
  const Plan& p = plan_.cast<const Plan&>();
  count_ = p.count();
  if (lists.size() != algo_->nstates || role_keys.size() != algo_->nstates || p.roles() != algo_->nstates + 1) {
    throw py::value_error("Stepper: lists/role_keys/plan do not match the algorithm's state roles");
  }
  if (keys.size() != snapshot.size()) throw py::value_error("Stepper: keys and snapshot differ in length");
  if (params.size() != count_ || states.size() != count_) {
    throw py::value_error("Stepper: params/states do not match the plan's count");
  }
  lists_.push_back(params);
  for (std::size_t r = 0; r < algo_->nstates; ++r) {
    py::object l = lists[r];
    py::object k = role_keys[r];
    if (l.is_none() != k.is_none()) throw py::value_error("Stepper: a role has a list but no key or the reverse");
    if (!l.is_none() && (!PyList_CheckExact(l.ptr()) || py::len(l) != count_)) {
      throw py::value_error("Stepper: a state list is not a list of the plan's count");
    }
    lists_.push_back(l);
    role_keys_.push_back(k);
  }
  for (std::size_t k = 0; k < count_; ++k) {
    if (!PyDict_CheckExact(PyList_GET_ITEM(states_.ptr(), static_cast<Py_ssize_t>(k)))) {
      throw py::type_error("Stepper: states must be dicts");
    }
  }
  for (std::size_t i = 0; i < keys.size(); ++i) {
    keys_.push_back(keys[i]);
    snapshot_.push_back(snapshot[i]);
  }
  algo_->read_view("Stepper", view, &values_, &bools_);
}

void Stepper::refresh(const py::tuple& snapshot, const py::dict& view) {
  if (snapshot.size() != keys_.size()) throw py::value_error("Stepper: snapshot differs in length");
  std::vector<double> values;
  std::vector<char> bools;
  algo_->read_view("Stepper", view, &values, &bools);  // may raise: change nothing before
  for (std::size_t i = 0; i < keys_.size(); ++i) snapshot_[i] = snapshot[i];
  values_.swap(values);
  bools_.swap(bools);
}

bool Stepper::step(py::handle grads, py::handle param_groups, py::handle state, int threads) const {
  if (threads < 1 || threads > kMaxThreads) {
    throw py::value_error("threads must be between 1 and " + std::to_string(kMaxThreads) + ", got " +
                          std::to_string(threads));
  }
  if (plan_.is_none()) return false;  // cleared by the garbage collector (clear())
  // the same (only) group dict, holding the very value objects Python validated
  PyObject* groups = param_groups.ptr();
  if (!PyList_CheckExact(groups) || PyList_GET_SIZE(groups) != 1 || PyList_GET_ITEM(groups, 0) != group_.ptr()) {
    return false;
  }
  for (std::size_t i = 0; i < keys_.size(); ++i) {
    PyObject* v = PyDict_GetItemWithError(group_.ptr(), keys_[i].ptr());
    if (v != snapshot_[i].ptr()) {
      if (v == nullptr && PyErr_Occurred() != nullptr) PyErr_Clear();
      return false;
    }
  }
  // the same state dicts, holding the planned arrays and one valid step count
  PyObject* st = state.ptr();
  if (!PyList_CheckExact(st) || static_cast<std::size_t>(PyList_GET_SIZE(st)) != count_) return false;
  static PyObject* const step_key = PyUnicode_InternFromString("step");
  std::int64_t t = 0;
  for (std::size_t k = 0; k < count_; ++k) {
    const auto kk = static_cast<Py_ssize_t>(k);
    PyObject* d = PyList_GET_ITEM(st, kk);
    if (d != PyList_GET_ITEM(states_.ptr(), kk)) return false;
    for (std::size_t r = 0; r < role_keys_.size(); ++r) {
      if (role_keys_[r].is_none()) continue;
      PyObject* a = PyDict_GetItemWithError(d, role_keys_[r].ptr());
      if (a != PyList_GET_ITEM(lists_[r + 1].ptr(), kk)) {
        if (a == nullptr && PyErr_Occurred() != nullptr) PyErr_Clear();
        return false;
      }
    }
    if (has_step_) {
      PyObject* s = PyDict_GetItemWithError(d, step_key);
      if (s == nullptr || !PyLong_CheckExact(s)) {
        if (s == nullptr && PyErr_Occurred() != nullptr) PyErr_Clear();
        return false;
      }
      int overflow = 0;
      const long long n = PyLong_AsLongLongAndOverflow(s, &overflow);
      if (overflow != 0 || n < 0) return false;  // (a count beyond int64: the Python path)
      if (k == 0) {
        t = n;
      } else if (n != t) {
        return false;
      }
    }
  }
  if (has_step_ && t == std::numeric_limits<std::int64_t>::max()) return false;
  const std::int64_t next = has_step_ ? t + 1 : 1;
  double d[DeriveTraits::kMaxScalars];
  bool f[DeriveTraits::kMaxFlags + 1] = {};
  algo_->derive_scalars(values_, bools_, next, d, f);
  py::object next_obj;
  if (has_step_) {
    next_obj = py::reinterpret_steal<py::object>(PyLong_FromLongLong(next));
    if (!next_obj) throw py::error_already_set();
  }
  return algo_->run(plan_.cast<const Plan&>(), lists_, grads, d, f, threads, states_,
                    has_step_ ? next_obj.ptr() : nullptr);
}

int Stepper::traverse(visitproc visit, void* arg) const {
  Py_VISIT(plan_.ptr());
  Py_VISIT(group_.ptr());
  Py_VISIT(states_.ptr());
  for (const py::object& o : lists_) Py_VISIT(o.ptr());
  for (const py::object& o : role_keys_) Py_VISIT(o.ptr());
  for (const py::object& o : keys_) Py_VISIT(o.ptr());
  for (const py::object& o : snapshot_) Py_VISIT(o.ptr());
  return 0;
}

void Stepper::clear() {
  // Moved out first, released after: a destructor run by a release may look at this Stepper.
  std::vector<py::object> drop{std::move(plan_), std::move(group_), std::move(states_)};
  for (auto* v : {&lists_, &role_keys_, &keys_, &snapshot_}) {
    for (py::object& o : *v) drop.push_back(std::move(o));
    v->clear();
  }
  plan_ = py::none();
  group_ = py::dict();
  states_ = py::list();
}

std::vector<std::string> Stepper::supported_algorithms() {
  std::vector<std::string> out;
  for (const Algo& a : algos()) out.emplace_back(a.name);
  return out;
}

py::tuple Stepper::scalars(const std::string& algorithm, const py::dict& view, std::int64_t t) {
  const Algo& a = find_algo(algorithm);
  std::vector<double> values;
  std::vector<char> bools;
  a.read_view("Stepper", view, &values, &bools);
  double d[DeriveTraits::kMaxScalars];
  bool f[DeriveTraits::kMaxFlags + 1] = {};
  a.derive_scalars(values, bools, t, d, f);
  py::tuple out(a.nscalars + a.nflags);
  for (std::size_t i = 0; i < a.nscalars; ++i) out[i] = py::float_(d[i]);
  for (std::size_t i = 0; i < a.nflags; ++i) out[a.nscalars + i] = py::bool_(f[i]);
  return out;
}

void register_stepper(py::module_& m) {
  using namespace pybind11::literals;
  py::class_<Stepper>(m, "Stepper",
                      "The optimizer classes' fast path for their common planned step (one param group, one dtype, "
                      "every parameter with a gradient): caches what Python validated and re-checks it by identity "
                      "at every step. See cpp/bindings/stepper.hpp.",
                      py::custom_type_setup([](PyHeapTypeObject* heap_type) {
                        PyTypeObject* type = &heap_type->ht_type;
                        type->tp_flags |= Py_TPFLAGS_HAVE_GC;
                        type->tp_traverse = [](PyObject* self, visitproc visit, void* arg) -> int {
                          Py_VISIT(Py_TYPE(self));  // a heap type's instances own a reference to it
                          if (!py::detail::is_holder_constructed(self)) return 0;
                          return py::cast<const Stepper&>(py::handle(self)).traverse(visit, arg);
                        };
                        type->tp_clear = [](PyObject* self) -> int {
                          if (py::detail::is_holder_constructed(self)) py::cast<Stepper&>(py::handle(self)).clear();
                          return 0;
                        };
                      }))
      .def(py::init<const std::string&, py::object, const py::list&, const py::sequence&, const py::sequence&,
                    py::dict, const py::tuple&, const py::tuple&, const py::list&, const py::dict&, bool>(),
           "kernel"_a, "plan"_a, "params"_a, "lists"_a, "role_keys"_a, "group"_a, "keys"_a, "snapshot"_a, "states"_a,
           "view"_a, "has_step"_a)
      .def("step", &Stepper::step, "grads"_a, "param_groups"_a, "state"_a, "threads"_a,
           "One step if everything cached still holds (True); else False, having changed nothing.")
      .def("refresh", &Stepper::refresh, "snapshot"_a, "view"_a,
           "New validated hyperparameter values of the same group.")
      .def_property_readonly("count", &Stepper::count, "number of tensors");
  const std::vector<std::string> names = Stepper::supported_algorithms();
  py::tuple kernels(names.size());
  for (std::size_t i = 0; i < names.size(); ++i) kernels[i] = py::str(names[i]);
  m.attr("_stepper_kernels") = kernels;
  m.def("_stepper_scalars", &Stepper::scalars, "kernel"_a, "view"_a, "t"_a,
        "Test hook: the scalars and flags the Stepper derives for this checked view and step count.");
}

}  // namespace bindings
}  // namespace fusedopt

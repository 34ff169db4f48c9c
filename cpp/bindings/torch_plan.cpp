#include "bindings/torch_plan.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>

#include "bindings/step_traits.hpp"

namespace fusedopt {
namespace bindings {

struct TorchPlan::Algo : DeriveTraits {  // (step_traits.hpp)
  void (*run)(const double*, const bool*, const Buffers&, int threads);  // launch<Tr>
};

namespace {

template <class Tr>
TorchPlan::Algo algo_of() {
  return TorchPlan::Algo{derive_traits_of<Tr>(), &launch<Tr>};
}

const TorchPlan::Algo& find_algo(const std::string& name) {
  static const TorchPlan::Algo all[] = {algo_of<SgdBinding>(),     algo_of<MomentumBinding>(),
                                        algo_of<RmspropBinding>(), algo_of<AdamBinding>(),
                                        algo_of<AdagradBinding>(), algo_of<LionBinding>(),
                                        algo_of<AdamaxBinding>(), algo_of<RadamBinding>(), algo_of<LambBinding>(), algo_of<LarsBinding>()};
  for (const TorchPlan::Algo& a : all) {
    if (name == a.name) return a;
  }
  throw py::value_error("TorchPlan: unknown kernel '" + name + "'");
}

std::size_t itemsize(DType d) { return d == DType::f32 ? 4 : 8; }

// Element count, C-contiguity and density (one block without overlap, any order of the dims) of a view.
struct Layout {
  std::int64_t size = 1;
  bool c_contiguous = true, dense = true;
};
Layout layout_of(const TorchView& v) {
  Layout l;
  for (int d = 0; d < v.nd; ++d) l.size *= v.shape[d];
  std::int64_t expected = 1;
  for (int d = v.nd - 1; d >= 0; --d) {
    if (v.shape[d] != 1 && v.strides[d] != expected) l.c_contiguous = false;
    expected *= v.shape[d];
  }
  if (l.size == 0) l.c_contiguous = true;
  if (l.c_contiguous) return l;
  std::pair<std::int64_t, std::int64_t> order[kMaxTorchDims];
  int n = 0;
  for (int d = 0; d < v.nd; ++d) {
    if (v.shape[d] != 1) order[n++] = {v.strides[d], v.shape[d]};
  }
  std::sort(order, order + n);
  expected = 1;
  for (int i = 0; i < n; ++i) {
    if (order[i].first != expected) l.dense = false;
    expected *= order[i].second;
  }
  return l;
}

bool same_shape(const TorchView& a, const TorchView& b) {
  return a.nd == b.nd && std::memcmp(a.shape, b.shape, sizeof(std::int64_t) * static_cast<std::size_t>(a.nd)) == 0;
}

bool same_strides(const TorchView& a, const TorchView& b) {  // on dimensions longer than 1 (shapes equal)
  for (int d = 0; d < a.nd; ++d) {
    if (a.shape[d] != 1 && a.strides[d] != b.strides[d]) return false;
  }
  return true;
}

// [data, data + span) inside the storage's [base, base + nbytes).
bool inside(PyObject* storage, const void* data, std::uintptr_t span) {
  if (span == 0) return true;
  std::uintptr_t base = 0, nbytes = 0;
  if (!torch_storage_bounds(storage, &base, &nbytes)) return false;
  const auto at = reinterpret_cast<std::uintptr_t>(data);
  return base != 0 && at >= base && at - base <= nbytes && nbytes - (at - base) >= span;
}

// A written tensor read and validated once, when the plan is made (ValueError otherwise: no plan).
TorchPlan::Cached cache(py::handle t, const char* what) {
  TorchPlan::Cached c;
  c.obj = t.ptr();
  c.type = Py_TYPE(t.ptr());
  if (!torch_view(t.ptr(), &c.view) || !torch_not_neg(t.ptr())) {
    throw py::value_error(std::string("TorchPlan: ") + what + " is not a plain dense CPU float tensor");
  }
  const Layout l = layout_of(c.view);
  if (!l.dense) throw py::value_error(std::string("TorchPlan: ") + what + " is not one dense block");
  c.c_contiguous = l.c_contiguous;
  c.span = static_cast<std::uintptr_t>(l.size) * itemsize(c.view.dtype);
  if (reinterpret_cast<std::uintptr_t>(c.view.data) % itemsize(c.view.dtype) != 0) {
    throw py::value_error(std::string("TorchPlan: ") + what + " is not aligned");
  }
  const py::object st = py::reinterpret_steal<py::object>(torch_storage(t.ptr()));
  if (!st) throw py::value_error(std::string("TorchPlan: ") + what + ": no storage");
  if (!inside(st.ptr(), c.view.data, c.span)) throw py::value_error(std::string("TorchPlan: ") + what + " outside its storage");
  c.storage = py::reinterpret_steal<py::object>(PyWeakref_NewRef(st.ptr(), nullptr));
  if (!c.storage) throw py::error_already_set();
  return c;
}

// The tensor t found where the cached one was is still what it was: the same object and type,
// the same DLPack description, not neg, inside the cached storage (alive: its weak reference;
// kept alive by `keep` until the kernels returned).
bool unchanged(PyObject* t, const TorchPlan::Cached& c, std::vector<py::object>& keep) {
  if (t != c.obj || Py_TYPE(t) != c.type) return false;
  TorchView v;
  if (!torch_view(t, &v)) return false;
  if (v.data != c.view.data || v.dtype != c.view.dtype || !same_shape(v, c.view) ||
      std::memcmp(v.strides, c.view.strides, sizeof(std::int64_t) * static_cast<std::size_t>(v.nd)) != 0) {
    return false;
  }
  if (!torch_not_neg(t)) return false;
  PyObject* st = PyWeakref_GetObject(c.storage.ptr());  // borrowed; None once the storage was freed
  if (st == nullptr || st == Py_None) {
    PyErr_Clear();
    return false;
  }
  keep.push_back(py::reinterpret_borrow<py::object>(st));
  return inside(st, c.view.data, c.span);
}

PyObject* interned(const char* s) { return PyUnicode_InternFromString(s); }

}  // namespace

TorchPlan::TorchPlan(const std::string& kernel, bool has_step, const py::list& param_groups, const py::dict& state,
                     const py::list& groups, py::object increment_version, long long serial_below)
    : algo_(&find_algo(kernel)), has_step_(has_step), serial_below_(serial_below) {
  if (!torch_fast_ready()) throw py::value_error("TorchPlan: torch's DLPack exchange table is not available");
  if (groups.size() != param_groups.size()) throw py::value_error("TorchPlan: one spec per param group");
  static PyObject* const params_key = interned("params");
  static PyObject* const grad_name = interned("grad");
  static PyObject* const step_key = interned("step");
  param_groups_ = param_groups.ptr();
  state_ = state.ptr();
  increment_version_ = std::move(increment_version);
  {
    PyObject *k = nullptr, *v = nullptr;
    Py_ssize_t pos = 0;
    while (PyDict_Next(state.ptr(), &pos, &k, &v)) {
      state_keys_.push_back(k);
      state_values_.push_back(v);
    }
  }
  std::vector<std::pair<std::uintptr_t, std::uintptr_t>> extents;
  auto add_written = [&](const Cached& c) {
    ++nwritten_;
    const auto b = reinterpret_cast<std::uintptr_t>(c.view.data);
    if (c.span > 0) extents.emplace_back(b, b + c.span);
  };
  for (std::size_t gi = 0; gi < groups.size(); ++gi) {
    const py::tuple spec = groups[gi].cast<py::tuple>();
    if (spec.size() != 5) throw py::value_error("TorchPlan: a group spec is (keys, snapshot, view, role_keys, uses_step)");
    Group g;
    PyObject* dict = PyList_GET_ITEM(param_groups.ptr(), static_cast<Py_ssize_t>(gi));
    if (!PyDict_Check(dict)) throw py::type_error("TorchPlan: param groups must be dicts");
    g.dict = dict;
    PyObject* params = PyDict_GetItemWithError(dict, params_key);
    if (params == nullptr || !PyList_CheckExact(params)) throw py::value_error("TorchPlan: group['params'] must be a list");
    g.params = params;
    const py::tuple keys = spec[0].cast<py::tuple>(), snapshot = spec[1].cast<py::tuple>();
    if (keys.size() != snapshot.size()) throw py::value_error("TorchPlan: keys and snapshot differ in length");
    for (std::size_t i = 0; i < keys.size(); ++i) {
      g.keys.push_back(keys[i]);
      g.snapshot.push_back(snapshot[i]);
    }
    algo_->read_view("TorchPlan", spec[2].cast<py::dict>(), &g.values, &g.bools);
    const py::sequence role_keys = spec[3].cast<py::sequence>();
    if (role_keys.size() != algo_->nstates) throw py::value_error("TorchPlan: one role key per state role");
    for (std::size_t r = 0; r < algo_->nstates; ++r) g.role_keys.push_back(role_keys[r]);
    g.uses_step = spec[4].cast<bool>();
    bool stateless = !has_step_;
    for (const py::object& k : g.role_keys) stateless = stateless && k.is_none();
    const Py_ssize_t n = PyList_GET_SIZE(params);
    for (Py_ssize_t i = 0; i < n; ++i) {
      py::handle p = PyList_GET_ITEM(params, i);
      g.slots.push_back(p.ptr());
      py::object grad = py::reinterpret_steal<py::object>(PyObject_GetAttr(p.ptr(), grad_name));
      if (!grad) throw py::error_already_set();
      if (grad.is_none()) {
        g.entry_of.push_back(-1);
        continue;
      }
      g.entry_of.push_back(static_cast<int>(entries_.size()));
      Entry e;
      e.p = cache(p, "a parameter");
      add_written(e.p);
      PyObject* d = PyDict_GetItemWithError(state.ptr(), p.ptr());
      if (d == nullptr && PyErr_Occurred() != nullptr) throw py::error_already_set();
      if (d != nullptr && !PyDict_Check(d)) throw py::value_error("TorchPlan: a state that is not a dict");
      if (d == nullptr && !stateless) throw py::value_error("TorchPlan: a stepped parameter has no state dict");
      // (no state at all, as SGD without momentum: a state added later changes the optimizer's state dict)
      if (d != nullptr) {
        const auto at = std::find(state_values_.begin(), state_values_.end(), d);
        e.state_at = static_cast<long>(at - state_values_.begin());
      }
      for (std::size_t r = 0; r < algo_->nstates; ++r) {
        if (g.role_keys[r].is_none()) {
          e.states.emplace_back();
          continue;
        }
        PyObject* t = PyDict_GetItemWithError(d, g.role_keys[r].ptr());
        if (t == nullptr) {
          if (PyErr_Occurred() != nullptr) throw py::error_already_set();
          throw py::value_error("TorchPlan: missing state");
        }
        Cached c = cache(t, "a state tensor");
        if (c.view.dtype != e.p.view.dtype || !same_shape(c.view, e.p.view) ||
            ((!c.c_contiguous || !e.p.c_contiguous) && !same_strides(c.view, e.p.view))) {
          throw py::value_error("TorchPlan: a state tensor does not match its parameter");
        }
        add_written(c);
        e.states.push_back(std::move(c));
      }
      if (has_step_) {
        PyObject* s = PyDict_GetItemWithError(d, step_key);
        if (s == nullptr) {
          if (PyErr_Occurred() != nullptr) throw py::error_already_set();
          throw py::value_error("TorchPlan: missing 'step'");
        }
        e.step = cache(s, "a step tensor");
        if (e.step.span != itemsize(e.step.view.dtype)) throw py::value_error("TorchPlan: a 'step' of one element");
        add_written(e.step);
      }
      std::size_t c = 0;
      while (c < calls_.size() && !(calls_[c].group == gi && calls_[c].dtype == e.p.view.dtype)) ++c;
      if (c == calls_.size()) {
        calls_.emplace_back();
        calls_.back().group = gi;
        calls_.back().dtype = e.p.view.dtype;
      }
      e.call = c;
      calls_[c].entries.push_back(entries_.size());
      calls_[c].elements += static_cast<std::int64_t>(e.p.span / itemsize(e.p.view.dtype));
      entries_.push_back(std::move(e));
    }
    groups_.push_back(std::move(g));
  }
  std::sort(extents.begin(), extents.end());
  for (std::size_t i = 0; i < extents.size(); ++i) {
    if (i > 0 && extents[i].first < extents[i - 1].second) {
      throw py::value_error("TorchPlan: written tensors overlap");
    }
    extents_.push_back(Extent{extents[i].first, extents[i].second});
  }
}

void TorchPlan::refresh(std::size_t k, const py::tuple& snapshot, const py::dict& view) {
  if (k >= groups_.size() || snapshot.size() != groups_[k].keys.size()) {
    throw py::value_error("TorchPlan: refresh of an unknown group or a snapshot of another length");
  }
  std::vector<double> values;
  std::vector<char> bools;
  algo_->read_view("TorchPlan", view, &values, &bools);  // may raise: change nothing before
  Group& g = groups_[k];
  for (std::size_t i = 0; i < g.keys.size(); ++i) g.snapshot[i] = snapshot[i];
  g.values.swap(values);
  g.bools.swap(bools);
}

bool TorchPlan::read_grad(PyObject* g, const Entry& e, std::vector<py::object>& keep, void** out) const {
  TorchView v;
  if (!torch_view(g, &v)) return false;
  const TorchView& p = e.p.view;
  if (v.dtype != p.dtype || !same_shape(v, p)) return false;
  const Layout l = layout_of(v);
  if (!l.dense || (!(l.c_contiguous && e.p.c_contiguous) && !same_strides(v, p))) return false;
  const auto begin = reinterpret_cast<std::uintptr_t>(v.data);
  if (begin % itemsize(v.dtype) != 0 || !torch_not_neg(g)) return false;
  if (e.p.span > 0) {
    PyObject* st = torch_storage(g);
    if (st == nullptr) return false;
    keep.push_back(py::reinterpret_steal<py::object>(st));
    if (!inside(st, v.data, e.p.span)) return false;
    // No written extent may overlap [begin, end): the first one ending after `begin` (the extents
    // are disjoint and sorted, so their ends are sorted too) must start at or after `end`.
    const std::uintptr_t end = begin + e.p.span;
    const auto it = std::upper_bound(extents_.begin(), extents_.end(), begin,
                                     [](std::uintptr_t x, const Extent& x2) { return x < x2.end; });
    if (it != extents_.end() && it->begin < end) return false;
  }
  *out = v.data;
  return true;
}

int TorchPlan::step(py::handle param_groups, py::handle state, int threads) {
  if (cleared_) return -2;
  if (threads < 1 || threads > kMaxThreads) throw py::value_error("threads must be between 1 and " + std::to_string(kMaxThreads));
  static PyObject* const params_key = interned("params");
  static PyObject* const grad_name = interned("grad");
  static PyObject* const step_key = interned("step");
  PyObject* pg = param_groups.ptr();
  if (pg != param_groups_ || !PyList_Check(pg) || static_cast<std::size_t>(PyList_GET_SIZE(pg)) != groups_.size()) {
    return -2;
  }
  for (std::size_t gi = 0; gi < groups_.size(); ++gi) {
    if (PyList_GET_ITEM(pg, static_cast<Py_ssize_t>(gi)) != groups_[gi].dict) return -2;
  }
  for (std::size_t gi = 0; gi < groups_.size(); ++gi) {  // hyperparameters: the snapshot's value objects
    const Group& g = groups_[gi];
    PyObject* dict = PyList_GET_ITEM(pg, static_cast<Py_ssize_t>(gi));
    for (std::size_t i = 0; i < g.keys.size(); ++i) {
      PyObject* v = PyDict_GetItemWithError(dict, g.keys[i].ptr());
      if (v != g.snapshot[i].ptr()) {
        if (v == nullptr && PyErr_Occurred() != nullptr) PyErr_Clear();
        return static_cast<int>(gi);
      }
    }
  }
  // the optimizer's state dict: the same entries in the same order (no hashing of tensors)
  PyObject* st = state.ptr();
  if (st != state_ || !PyDict_Check(st) || static_cast<std::size_t>(PyDict_Size(st)) != state_keys_.size()) return -2;
  std::vector<PyObject*> dicts(state_values_.size());
  {
    PyObject *k = nullptr, *v = nullptr;
    Py_ssize_t pos = 0;
    std::size_t i = 0;
    while (PyDict_Next(st, &pos, &k, &v)) {
      if (i >= state_keys_.size() || k != state_keys_[i] || v != state_values_[i]) return -2;
      dicts[i++] = v;
    }
    if (i != state_keys_.size()) return -2;
  }
  const std::size_t nstates = algo_->nstates, nroles = nstates + 2;
  std::vector<std::vector<void*>> ptrs(calls_.size());
  for (std::size_t c = 0; c < calls_.size(); ++c) ptrs[c].assign(calls_[c].entries.size() * nroles, nullptr);
  std::vector<std::size_t> pos_in_call(calls_.size(), 0);
  std::vector<double> next_count(calls_.size(), -1.0);
  // the written tensors, their storages and the gradients with theirs, alive until the kernels returned
  std::vector<py::object> keep;
  keep.reserve(nwritten_ * 2 + entries_.size() * 2);
  py::list written(static_cast<Py_ssize_t>(nwritten_));
  std::size_t nw = 0;
  auto add_written = [&](PyObject* t) {
    Py_INCREF(t);
    PyList_SET_ITEM(written.ptr(), static_cast<Py_ssize_t>(nw++), t);
  };
  for (std::size_t gi = 0; gi < groups_.size(); ++gi) {
    const Group& g = groups_[gi];
    PyObject* params = PyDict_GetItemWithError(PyList_GET_ITEM(pg, static_cast<Py_ssize_t>(gi)), params_key);
    if (params != g.params || static_cast<std::size_t>(PyList_GET_SIZE(params)) != g.slots.size()) {
      if (params == nullptr && PyErr_Occurred() != nullptr) PyErr_Clear();
      return -2;
    }
    for (std::size_t i = 0; i < g.slots.size(); ++i) {
      PyObject* p = PyList_GET_ITEM(params, static_cast<Py_ssize_t>(i));
      if (p != g.slots[i]) return -2;
      py::object grad = py::reinterpret_steal<py::object>(PyObject_GetAttr(p, grad_name));
      if (!grad) {
        PyErr_Clear();
        return -2;
      }
      const int ei = g.entry_of[i];
      if (ei < 0 || grad.is_none()) {
        if (ei < 0 && grad.is_none()) continue;
        return -2;
      }
      const Entry& e = entries_[static_cast<std::size_t>(ei)];
      if (!unchanged(p, e.p, keep)) return -2;
      add_written(p);
      PyObject* d = e.state_at < 0 ? nullptr : dicts[static_cast<std::size_t>(e.state_at)];
      for (std::size_t r = 0; r < nstates; ++r) {
        if (g.role_keys[r].is_none()) continue;
        PyObject* t = PyDict_GetItemWithError(d, g.role_keys[r].ptr());
        if (t == nullptr) {
          PyErr_Clear();
          return -2;
        }
        if (!unchanged(t, e.states[r], keep)) return -2;
        add_written(t);
      }
      void* gptr = nullptr;
      if (!read_grad(grad.ptr(), e, keep, &gptr)) return -2;
      keep.push_back(std::move(grad));
      if (has_step_) {
        PyObject* s = PyDict_GetItemWithError(d, step_key);
        if (s == nullptr) {
          PyErr_Clear();
          return -2;
        }
        if (!unchanged(s, e.step, keep)) return -2;
        add_written(s);
        const bool f32 = e.step.view.dtype == DType::f32;
        const double v = f32 ? static_cast<double>(*static_cast<const float*>(e.step.view.data))
                             : *static_cast<const double*>(e.step.view.data);
        if (!(std::isfinite(v) && v >= 0.0 && v == std::floor(v))) return -2;
        const double next = f32 ? static_cast<double>(static_cast<float>(v) + 1.0f) : v + 1.0;
        if (next >= 4611686018427387904.0) return -2;  // 2**62: the Python path
        if (g.uses_step) {
          if (next_count[e.call] < 0.0) {
            next_count[e.call] = next;
          } else if (next_count[e.call] != next) {
            return -2;
          }
        }
      }
      std::size_t k = pos_in_call[e.call]++;
      void** row = &ptrs[e.call][k * nroles];
      row[0] = e.p.view.data;
      row[1] = gptr;
      for (std::size_t r = 0; r < nstates; ++r) row[2 + r] = g.role_keys[r].is_none() ? nullptr : e.states[r].view.data;
    }
  }
  if (nw != nwritten_) return -2;  // (cannot happen: every entry was visited once)
  // Everything is checked: nothing below fails before the kernels ran.
  std::vector<Buffers> buffers(calls_.size());
  for (std::size_t c = 0; c < calls_.size(); ++c) {
    const Call& call = calls_[c];
    const Group& g = groups_[call.group];
    Buffers& b = buffers[c];
    b.nbuf_ = static_cast<int>(nroles);
    b.dtype_ = call.dtype;
    b.present_.assign(nroles, true);
    for (std::size_t r = 0; r < nstates; ++r) b.present_[2 + r] = !g.role_keys[r].is_none();
    b.ptrs_.swap(ptrs[c]);
    b.sizes_.resize(call.entries.size());
    for (std::size_t k = 0; k < call.entries.size(); ++k) {
      const Entry& e = entries_[call.entries[k]];
      b.sizes_[k] = static_cast<std::int64_t>(e.p.span / itemsize(e.p.view.dtype));
    }
  }
  for (std::size_t c = 0; c < calls_.size(); ++c) {
    const Call& call = calls_[c];
    const Group& g = groups_[call.group];
    const std::int64_t t = has_step_ && g.uses_step ? static_cast<std::int64_t>(next_count[c]) : 1;
    double d[DeriveTraits::kMaxScalars];
    bool f[DeriveTraits::kMaxFlags + 1] = {};
    algo_->derive_scalars(g.values, g.bools, t, d, f);
    algo_->run(d, f, buffers[c], call.elements < serial_below_ ? 1 : threads);
  }
  // GIL held, no Python code run since the kernels: the counts, then the version counters
  if (has_step_) {
    for (const Entry& e : entries_) {
      if (e.step.view.dtype == DType::f32) {
        auto* p = static_cast<float*>(e.step.view.data);
        *p = *p + 1.0f;
      } else {
        auto* p = static_cast<double*>(e.step.view.data);
        *p = *p + 1.0;
      }
    }
  }
  PyObject* r = PyObject_CallOneArg(increment_version_.ptr(), written.ptr());
  if (r == nullptr) throw py::error_already_set();
  Py_DECREF(r);
  return -1;
}

int TorchPlan::traverse(visitproc visit, void* arg) const {
  int r = 0;
  auto all = [&](const std::vector<py::object>& xs) {
    for (const py::object& o : xs) {
      if (o && (r = visit(o.ptr(), arg)) != 0) return r;
    }
    return 0;
  };
  if (increment_version_ && (r = visit(increment_version_.ptr(), arg)) != 0) return r;
  for (const Group& g : groups_) {
    if ((r = all(g.keys)) || (r = all(g.snapshot)) || (r = all(g.role_keys))) return r;
  }
  for (const Entry& e : entries_) {
    if ((e.p.storage && (r = visit(e.p.storage.ptr(), arg))) || (e.step.storage && (r = visit(e.step.storage.ptr(), arg)))) {
      return r;
    }
    for (const Cached& c : e.states) {
      if (c.storage && (r = visit(c.storage.ptr(), arg))) return r;
    }
  }
  return 0;
}

void TorchPlan::clear() {
  cleared_ = true;
  // moved out first, released after: a destructor that runs Python code sees a consistent plan
  py::object f = std::move(increment_version_);
  std::vector<Group> g = std::move(groups_);
  std::vector<Entry> e = std::move(entries_);
  groups_.clear();
  entries_.clear();
  calls_.clear();
  extents_.clear();
}

void register_torch_plan(py::module_& m) {
  using namespace pybind11::literals;
  py::class_<TorchPlan>(m, "TorchPlan", py::custom_type_setup([](PyHeapTypeObject* heap_type) {
                          auto* type = &heap_type->ht_type;
                          type->tp_flags |= Py_TPFLAGS_HAVE_GC;
                          type->tp_traverse = [](PyObject* self, visitproc visit, void* arg) {
                            Py_VISIT(Py_TYPE(self));
                            if (!py::detail::is_holder_constructed(self)) return 0;
                            return py::cast<const TorchPlan&>(py::handle(self)).traverse(visit, arg);
                          };
                          type->tp_clear = [](PyObject* self) {
                            if (py::detail::is_holder_constructed(self)) py::cast<TorchPlan&>(py::handle(self)).clear();
                            return 0;
                          };
                        }),
                        "fusedopt.torch's steady-state step: caches what a full step validated and re-checks it "
                        "at every step. See cpp/bindings/torch_plan.hpp.")
      .def(py::init<const std::string&, bool, py::list, py::dict, const py::list&, py::object, long long>(),
           "kernel"_a, "has_step"_a, "param_groups"_a, "state"_a, "groups"_a, "increment_version"_a, "serial_below"_a)
      .def("step", &TorchPlan::step, "param_groups"_a, "state"_a, "threads"_a,
           "-1: stepped; k >= 0: group k's hyperparameters changed; -2: anything else changed (nothing done).")
      .def("refresh", &TorchPlan::refresh, "k"_a, "snapshot"_a, "view"_a,
           "Group k's new validated hyperparameter values.")
      .def_property_readonly("count", &TorchPlan::count, "number of parameters stepped");
}

}  // namespace bindings
}  // namespace fusedopt

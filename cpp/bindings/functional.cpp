// The functional API's fast path: fusedopt.functional.adam & co. are objects of the type defined
// here (fusedopt._core.Functional), built at import by python/fusedopt/_engine.py from each
// algorithm's description, each holding the generated Python function as its `fallback`.
//
// A call is parsed here with CPython's vectorcall protocol (no pybind11 argument machinery):
// positional arrays and keyword arguments matched to the functional's parameters by interned-name
// identity (then equality). The fast path takes only the plain case, where the generated function
// would certainly not raise and would not convert anything:
//   * every float hyperparameter a float, numpy.float64 or int (exact types: what the generated
//     function converts with float() without running Python code), finite, inside its range; every
//     flag exactly True or False; `step` an exact int >= 1 (within int64); `threads` None or an exact int in
//     [1, 1024]; no gradient pre-processing (grad_scale & co. None, skip_if_nonfinite False);
//   * every array argument one exact numpy.ndarray or a list/tuple; the params items exact
//     numpy.ndarrays (their element count decides threads=None, as fusedopt._threads.resolve does);
//   * the description's relations, state presence (StateRole.when) and check_params, evaluated by
//     their C++ twins in step_traits.hpp (present, fast_ok);
//   * the arrays pass collect() (arrays.cpp: every dtype, contiguity, alignment, write, shape and
//     overlap check of the step bindings).
// Then the per-step scalars are derived in C++ (the traits' `derive`, bitwise those of
// python/fusedopt/_scalars.py; this file is compiled with -ffp-contract=off) and the kernel runs
// without the GIL exactly as in the step bindings (step_traits.hpp `run`).
//
// ANYTHING else -- an unknown or duplicate keyword, a missing argument, an int or NumPy scalar for a
// float, a value out of range, a bad array (collect() raised) -- calls the fallback with the
// original arguments, so every error message and every conversion stays the generated function's.
// Nothing is written before the kernel runs, so running the fallback after the fast path gave up
// is always safe. threads=None: below the algorithm's current fusedopt._threads.SERIAL_BELOW entry
// (read at every call) one thread, else fusedopt._threads.get_num_threads() (called at every such
// call): a later set_num_threads() or a changed threshold is honoured.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "bindings/arrays.hpp"
#include "bindings/step_traits.hpp"

namespace fusedopt {
namespace bindings {

namespace {

constexpr std::size_t kMaxValues = 16, kMaxBools = 8, kMaxSwitches = 4, kMaxRoles = 8, kMaxScalars = 16,
                      kMaxFlags = 8, kMaxSlots = 48;

// One C++ kernel entry: the traits' names and functions, by the functional's traits key.
struct Kernel {
  const char* key;     // "sgd", "trace", ... (a description's name, or its kernel's)
  const char* kernel;  // the fusedopt._core step binding it shares (Algorithm.kernel)
  std::size_t nroles;
  const char* const* values;
  std::size_t nvalues;
  const char* const* bools;
  std::size_t nbools;
  const char* const* switches;
  std::size_t nswitches;
  bool (*present)(std::size_t, const double*, const bool*, const bool*);
  // collect, fast_ok, derive, run: false (nothing done) when fast_ok says no; throws (nothing done)
  // when collect() refuses the arrays.
  bool (*step)(PyObject* const* lists, const double* v, const bool* b, const bool* s, std::int64_t t, int threads);
};

template <class Tr>
bool step_of(PyObject* const* lists, const double* v, const bool* b, const bool* s, std::int64_t t, int threads) {
  constexpr std::size_t nroles = std::extent_v<decltype(Tr::kRoles)>;
  std::vector<Role> roles;
  roles.reserve(nroles);
  for (std::size_t r = 0; r < nroles; ++r) {
    roles.push_back(Role{Tr::kRoles[r], lists[r] != nullptr ? lists[r] : Py_None, r != 1});  // role 1: grads
  }
  const Buffers buffers = collect(roles);
  if (!Tr::fast_ok(v, b, s, buffers.dtype())) return false;
  double d[kMaxScalars];
  bool f[kMaxFlags + 1] = {};
  Tr::derive(v, b, t, d, f);
  run(buffers, Tr::kF32, Tr::kF64, Tr::make(d, f, buffers),
      grad_scalars(1.0, 1.0, std::numeric_limits<double>::infinity()), threads, py::handle(Py_None));
  return true;
}

template <class Tr>
Kernel kernel_of(const char* key, const char* kernel) {
  static_assert(std::extent_v<decltype(Tr::kRoles)> <= kMaxRoles, "too many roles");
  static_assert(std::extent_v<decltype(Tr::kValues)> <= kMaxValues, "too many values");
  static_assert(num_bools<Tr>() <= kMaxBools, "too many bools");
  static_assert(num_switches<Tr>() <= kMaxSwitches, "too many switches");
  static_assert(num_scalars<Tr>() <= kMaxScalars && num_flags<Tr>() <= kMaxFlags, "too many scalars");
  const char* const* switches = nullptr;
  if constexpr (num_switches<Tr>() > 0) switches = Tr::kSwitches;
  return Kernel{key,
                kernel,
                std::extent_v<decltype(Tr::kRoles)>,
                Tr::kValues,
                std::extent_v<decltype(Tr::kValues)>,
                Tr::kBools,
                num_bools<Tr>(),
                switches,
                num_switches<Tr>(),
                &Tr::present,
                &step_of<Tr>};
}

const std::vector<Kernel>& kernels() {
  static const std::vector<Kernel> all = {
      kernel_of<SgdBinding>("sgd", "sgd"),         kernel_of<TraceBinding>("trace", "sgd"),
      kernel_of<MomentumBinding>("momentum", "momentum"), kernel_of<RmspropBinding>("rmsprop", "rmsprop"),
      kernel_of<AdamBinding>("adam", "adam"),      kernel_of<AdagradBinding>("adagrad", "adagrad"),
      kernel_of<LionBinding>("lion", "lion"),
      kernel_of<AdamaxBinding>("adamax", "adamax"),
      kernel_of<RadamBinding>("radam", "radam"),
      kernel_of<LambBinding>("lamb", "lamb"),
      kernel_of<LarsBinding>("lars", "lars"),
      kernel_of<NadamBinding>("nadam", "nadam")};
  return all;
}

enum class Kind : std::uint8_t { role, step, real, flag, none_only, false_only, threads };

// Where a hyperparameter's value goes: the traits' values, bools or switches.
enum class Target : std::uint8_t { value, boolean, switch_ };

struct Slot {
  PyObject* name = nullptr;  // interned (strong reference)
  Kind kind = Kind::role;
  bool required = false;      // no default: missing -> fallback
  bool optional_role = false;  // a state role present only for some hyperparameters (StateRole.when)
  bool default_ok = false;    // real/flag: the default is usable as is (an exact float in range / a bool)
  double default_value = 0.0;
  double low = 0.0, high = 0.0;
  bool open_low = false, closed_high = false;
  Target target = Target::value;
  std::size_t index = 0;  // role index, or index into the target array
};

struct Impl {
  const Kernel* kernel = nullptr;
  std::vector<Slot> slots;  // positional roles first (kRoles order), then the keyword-only parameters
  std::size_t npos = 0;
  double v0[kMaxValues] = {};  // fixed hyperparameters (AdamW's decoupled_weight_decay) preset here
  bool b0[kMaxBools] = {};
  bool s0[kMaxSwitches] = {};
  PyObject* threads_module = nullptr;
  PyObject* threads_key = nullptr;
  std::atomic<std::uint64_t> fast_calls{0};
  Impl() = default;
  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;
  ~Impl() {  // (with the GIL held: the object's dealloc, or a failed construction)
    for (Slot& sl : slots) Py_CLEAR(sl.name);
    Py_CLEAR(threads_key);
    Py_CLEAR(threads_module);
  }
};

struct FunctionalObject {
  PyObject_HEAD
  vectorcallfunc vectorcall;
  PyObject* dict;
  PyObject* weakrefs;
  PyObject* fallback;
  Impl* impl;
};

PyObject* g_serial_below = nullptr;     // "SERIAL_BELOW" (interned)
PyObject* g_get_num_threads = nullptr;  // "get_num_threads"
PyTypeObject* g_ndarray = nullptr;      // numpy.ndarray
PyTypeObject* g_float64 = nullptr;      // numpy.float64

bool in_range(const Slot& s, double x) {
  if (!(x - x == 0.0)) return false;  // NaN, inf
  if (s.open_low ? !(x > s.low) : !(x >= s.low)) return false;
  return s.closed_high ? x <= s.high : x < s.high;
}

// A float hyperparameter's value as the generated function's check converts it (float(x)), for
// the types whose conversion is known without running Python code: float, numpy.float64 (a float
// subclass whose float() is its value) and int (not bool; float(int) rounds to nearest, as
// PyLong_AsDouble). false: anything else, or an int beyond the float range (the fallback decides).
bool real_value(PyObject* x, double* out) {
  PyTypeObject* tp = Py_TYPE(x);
  if (tp == &PyFloat_Type || tp == g_float64) {
    *out = PyFloat_AS_DOUBLE(x);
    return true;
  }
  if (tp == &PyLong_Type) {
    const double d = PyLong_AsDouble(x);
    if (d == -1.0 && PyErr_Occurred() != nullptr) {
      PyErr_Clear();  // OverflowError
      return false;
    }
    *out = d;
    return true;
  }
  return false;
}

// The slot named `name`, searching by identity from `hint` (keywords usually come in signature
// order), then by equality; -1 if none.
int find_slot(const Impl& im, PyObject* name, std::size_t hint) {
  const std::size_t n = im.slots.size();
  for (std::size_t i = 0; i < n; ++i) {
    const std::size_t j = (hint + i) % n;
    if (im.slots[j].name == name) return static_cast<int>(j);
  }
  if (!PyUnicode_Check(name)) return -1;
  for (std::size_t j = 0; j < n; ++j) {
    const int c = PyUnicode_Compare(im.slots[j].name, name);
    if (c == 0) return static_cast<int>(j);
    if (c == -1 && PyErr_Occurred() != nullptr) {
      PyErr_Clear();
      return -1;
    }
  }
  return -1;
}

// An array argument as the list collect() takes: a list/tuple as is, one exact ndarray as a
// 1-tuple (in *holder). false: anything else (the fallback's _as_list decides).
bool as_list(PyObject* x, PyObject** out, py::object* holder) {
  if (PyList_Check(x) || PyTuple_Check(x)) {
    *out = x;
    return true;
  }
  if (Py_TYPE(x) == g_ndarray) {
    PyObject* t = PyTuple_Pack(1, x);
    if (t == nullptr) {
      PyErr_Clear();
      return false;
    }
    *holder = py::reinterpret_steal<py::object>(t);
    *out = t;
    return true;
  }
  return false;
}

// The element count of the params list (fusedopt.functional._n_elements) when every item is an
// exact numpy.ndarray; false otherwise.
bool params_elements(PyObject* list, std::int64_t* n) {
  const Py_ssize_t k = PySequence_Fast_GET_SIZE(list);
  PyObject** items = PySequence_Fast_ITEMS(list);
  std::int64_t total = 0;
  for (Py_ssize_t i = 0; i < k; ++i) {
    if (Py_TYPE(items[i]) != g_ndarray) return false;
    const auto* a = py::detail::array_proxy(items[i]);
    std::int64_t size = 1;
    for (int d = 0; d < a->nd; ++d) size *= static_cast<std::int64_t>(a->dimensions[d]);
    total += size;
  }
  *n = total;
  return true;
}

// Clears the Python error after a check gave up; false (error kept) when it is not an Exception
// (a KeyboardInterrupt raised by a signal handler while Python code ran must propagate).
bool clear_error() {
  if (PyErr_Occurred() == nullptr) return true;
  if (PyErr_ExceptionMatches(PyExc_Exception) == 0) return false;
  PyErr_Clear();
  return true;
}

// threads=None as fusedopt._threads.resolve: 1 below SERIAL_BELOW[key], else get_num_threads().
// 0: something unusual (the fallback decides); -1: an error to propagate (see clear_error).
int auto_threads(const Impl& im, std::int64_t n) {
  PyObject* table = PyObject_GetAttr(im.threads_module, g_serial_below);
  if (table == nullptr) return clear_error() ? 0 : -1;
  const py::object keep = py::reinterpret_steal<py::object>(table);
  if (!PyDict_CheckExact(table)) return 0;
  PyObject* below = PyDict_GetItemWithError(table, im.threads_key);  // borrowed
  if (below == nullptr || !PyLong_CheckExact(below)) return clear_error() ? 0 : -1;
  int overflow = 0;
  const long long limit = PyLong_AsLongLongAndOverflow(below, &overflow);
  if (overflow != 0 || (limit == -1 && PyErr_Occurred() != nullptr)) return clear_error() ? 0 : -1;
  if (n < limit) return 1;
  PyObject* r = PyObject_CallMethodNoArgs(im.threads_module, g_get_num_threads);
  if (r == nullptr) return clear_error() ? 0 : -1;
  const py::object keep_r = py::reinterpret_steal<py::object>(r);
  if (!PyLong_CheckExact(r)) return 0;
  const long long t = PyLong_AsLongLongAndOverflow(r, &overflow);
  if (overflow != 0 || t < 1 || t > kMaxThreads) return clear_error() ? 0 : -1;
  return static_cast<int>(t);
}

// Whether an error raised by the fast path's checks may be handed to the fallback (which then
// raises its own): any Exception; a KeyboardInterrupt or SystemExit is re-raised at once.
bool discardable(py::error_already_set& e) { return e.matches(PyExc_Exception); }

// The fast path. 1: stepped; 0: not taken (no Python error set, nothing done); -1: error set.
int fast_call(FunctionalObject* self, PyObject* const* args, std::size_t nargs, PyObject* kwnames) {
  const Impl& im = *self->impl;
  const std::size_t nslots = im.slots.size();
  if (nargs > im.npos) return 0;
  PyObject* vals[kMaxSlots] = {};
  for (std::size_t i = 0; i < nargs; ++i) vals[i] = args[i];
  if (kwnames != nullptr) {
    const Py_ssize_t nkw = PyTuple_GET_SIZE(kwnames);
    std::size_t hint = im.npos;
    for (Py_ssize_t k = 0; k < nkw; ++k) {
      const int j = find_slot(im, PyTuple_GET_ITEM(kwnames, k), hint);
      if (j < 0 || vals[j] != nullptr) return 0;  // unknown or given twice
      vals[j] = args[nargs + static_cast<std::size_t>(k)];
      hint = static_cast<std::size_t>(j) + 1;
    }
  }
  double v[kMaxValues];
  bool b[kMaxBools], s[kMaxSwitches];
  std::memcpy(v, im.v0, sizeof v);
  std::memcpy(b, im.b0, sizeof b);
  std::memcpy(s, im.s0, sizeof s);
  std::int64_t t = 1;
  int threads = 0;  // 0: None
  for (std::size_t j = im.npos; j < nslots; ++j) {
    const Slot& sl = im.slots[j];
    PyObject* x = vals[j];
    switch (sl.kind) {
      case Kind::step: {
        if (x == nullptr || !PyLong_CheckExact(x)) return 0;
        int overflow = 0;
        const long long n = PyLong_AsLongLongAndOverflow(x, &overflow);
        if (overflow != 0 || n < 1) return 0;
        t = n;
        break;
      }
      case Kind::real: {
        double value;
        if (x == nullptr) {
          if (!sl.default_ok) return 0;
          value = sl.default_value;
        } else if (!real_value(x, &value) || !in_range(sl, value)) {
          return 0;
        }
        v[sl.index] = value;
        break;
      }
      case Kind::flag: {
        bool value;
        if (x == nullptr) {
          if (!sl.default_ok) return 0;
          value = sl.default_value != 0.0;
        } else if (x == Py_True || x == Py_False) {
          value = x == Py_True;
        } else {
          return 0;
        }
        (sl.target == Target::boolean ? b : s)[sl.index] = value;
        break;
      }
      case Kind::none_only:
        if (x != nullptr && x != Py_None) return 0;
        break;
      case Kind::false_only:
        if (x != nullptr && x != Py_False) return 0;
        break;
      case Kind::threads: {
        if (x == nullptr || x == Py_None) break;
        if (!PyLong_CheckExact(x)) return 0;
        int overflow = 0;
        const long long n = PyLong_AsLongLongAndOverflow(x, &overflow);
        if (overflow != 0 || n < 1 || n > kMaxThreads) return 0;
        threads = static_cast<int>(n);
        break;
      }
      case Kind::role:
        return 0;  // (never: roles are positional slots)
    }
  }
  // the arrays: required roles given, optional ones given when present (else ignored, as the
  // generated function ignores them)
  PyObject* lists[kMaxRoles] = {};
  py::object holders[kMaxRoles];
  for (std::size_t r = 0; r < im.npos; ++r) {
    const Slot& sl = im.slots[r];
    PyObject* x = vals[r];
    if (sl.optional_role) {
      if (!im.kernel->present(r, v, b, s)) continue;
      if (x == nullptr || x == Py_None) return 0;
    } else if (x == nullptr) {
      return 0;
    }
    if (!as_list(x, &lists[r], &holders[r])) return 0;
  }
  std::int64_t n = 0;
  if (!params_elements(lists[0], &n)) return 0;
  if (threads == 0) {
    threads = auto_threads(im, n);
    if (threads <= 0) return threads;
  }
  try {
    if (!im.kernel->step(lists, v, b, s, t, threads)) return 0;
  } catch (py::error_already_set& e) {
    if (!discardable(e)) {
      e.restore();
      return -1;
    }
    return 0;
  } catch (std::exception&) {  // collect()'s TypeError/ValueError (py::builtin_exception), bad_alloc
    return 0;
  }
  return 1;
}

PyObject* functional_vectorcall(PyObject* callable, PyObject* const* args, std::size_t nargsf, PyObject* kwnames) {
  auto* self = reinterpret_cast<FunctionalObject*>(callable);
  const std::size_t nargs = static_cast<std::size_t>(PyVectorcall_NARGS(nargsf));
  const int r = fast_call(self, args, nargs, kwnames);
  if (r == 1) {
    self->impl->fast_calls.fetch_add(1, std::memory_order_relaxed);
    Py_RETURN_NONE;
  }
  if (r < 0) return nullptr;
  return PyObject_Vectorcall(self->fallback, args, nargsf, kwnames);
}

int functional_traverse(PyObject* o, visitproc visit, void* arg) {
  auto* self = reinterpret_cast<FunctionalObject*>(o);
  Py_VISIT(self->dict);
  Py_VISIT(self->fallback);
  if (self->impl != nullptr) Py_VISIT(self->impl->threads_module);
  return 0;
}

int functional_clear(PyObject* o) {
  auto* self = reinterpret_cast<FunctionalObject*>(o);
  Py_CLEAR(self->dict);
  Py_CLEAR(self->fallback);
  if (self->impl != nullptr) Py_CLEAR(self->impl->threads_module);
  return 0;
}

void functional_dealloc(PyObject* o) {
  auto* self = reinterpret_cast<FunctionalObject*>(o);
  PyObject_GC_UnTrack(o);
  if (self->weakrefs != nullptr) PyObject_ClearWeakRefs(o);
  functional_clear(o);
  delete self->impl;
  self->impl = nullptr;
  Py_TYPE(o)->tp_free(o);
}

// As a function: bound to an instance when it is a class attribute.
PyObject* functional_get(PyObject* self, PyObject* obj, PyObject*) {
  if (obj == nullptr || obj == Py_None) {
    Py_INCREF(self);
    return self;
  }
  return PyMethod_New(self, obj);
}

// Pickled by reference, as a function: its __qualname__ in its __module__.
PyObject* functional_reduce(PyObject* self, PyObject*) { return PyObject_GetAttrString(self, "__qualname__"); }

PyObject* functional_repr(PyObject* self) {
  PyObject* mod = PyObject_GetAttrString(self, "__module__");
  PyObject* name = mod != nullptr ? PyObject_GetAttrString(self, "__qualname__") : nullptr;
  PyObject* r = name != nullptr ? PyUnicode_FromFormat("<function %S.%S>", mod, name) : nullptr;
  Py_XDECREF(mod);
  Py_XDECREF(name);
  return r;
}

PyObject* functional_fast_calls(PyObject* self, void*) {
  return PyLong_FromUnsignedLongLong(reinterpret_cast<FunctionalObject*>(self)->impl->fast_calls.load());
}

PyMethodDef functional_methods[] = {
    {"__reduce__", functional_reduce, METH_NOARGS, "Pickled by reference (its __module__ and __qualname__)."},
    {nullptr, nullptr, 0, nullptr}};

PyGetSetDef functional_getset[] = {
    {"__dict__", PyObject_GenericGetDict, PyObject_GenericSetDict, nullptr, nullptr},
    {"_fast_calls", functional_fast_calls, nullptr, "Calls that took the C++ fast path (test hook).", nullptr},
    {nullptr, nullptr, nullptr, nullptr, nullptr}};

PyTypeObject g_functional_type{};  // (static type; value-initialized, then filled and readied once)

bool init_type() {
  PyTypeObject& t = g_functional_type;
  Py_SET_REFCNT(reinterpret_cast<PyObject*>(&t), 1);  // as PyVarObject_HEAD_INIT(nullptr, 0)
  t.tp_name = "fusedopt._core.Functional";
  t.tp_basicsize = sizeof(FunctionalObject);
  t.tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL;
  t.tp_doc =
      "A functional of fusedopt.functional: parses its arguments in C++ and steps through the kernel "
      "for the plain case; every other call runs the generated Python function (cpp/bindings/functional.cpp).";
  t.tp_vectorcall_offset = offsetof(FunctionalObject, vectorcall);
  t.tp_call = PyVectorcall_Call;
  t.tp_dictoffset = offsetof(FunctionalObject, dict);
  t.tp_weaklistoffset = offsetof(FunctionalObject, weakrefs);
  t.tp_traverse = functional_traverse;
  t.tp_clear = functional_clear;
  t.tp_dealloc = functional_dealloc;
  t.tp_descr_get = functional_get;
  t.tp_repr = functional_repr;
  t.tp_methods = functional_methods;
  t.tp_getset = functional_getset;
  return PyType_Ready(&t) == 0;
}

PyObject* intern(const std::string& s) { return PyUnicode_InternFromString(s.c_str()); }

// Where a hyperparameter named `name` goes in the kernel's arrays; false if the twins read none.
bool target_of(const Kernel& k, const std::string& name, Target* target, std::size_t* index) {
  for (std::size_t i = 0; i < k.nvalues; ++i) {
    if (name == k.values[i]) return *target = Target::value, *index = i, true;
  }
  for (std::size_t i = 0; i < k.nbools; ++i) {
    if (name == k.bools[i]) return *target = Target::boolean, *index = i, true;
  }
  for (std::size_t i = 0; i < k.nswitches; ++i) {
    if (name == k.switches[i]) return *target = Target::switch_, *index = i, true;
  }
  return false;
}

// _core.Functional(traits, kernel, fallback, positional, keywords, fixed, threads_module, threads_key)
// (built by python/fusedopt/_engine.py; see _core.pyi).
py::object make_functional(const std::string& key, const std::string& kernel_name, py::object fallback,
                           const py::sequence& positional, const py::sequence& keywords, const py::sequence& fixed,
                           py::object threads_module, const py::str& threads_key) {
  const Kernel* kernel = nullptr;
  for (const Kernel& k : kernels()) {
    if (key == k.key) kernel = &k;
  }
  if (kernel == nullptr) throw py::value_error("Functional: no C++ twins for '" + key + "'");
  if (kernel_name != kernel->kernel) {
    throw py::value_error("Functional: '" + key + "' steps with _core." + kernel->kernel + ", not " + kernel_name);
  }
  if (!PyCallable_Check(fallback.ptr())) throw py::type_error("Functional: fallback must be callable");
  auto impl = std::make_unique<Impl>();
  impl->kernel = kernel;
  const std::size_t npos = positional.size();
  if (npos != kernel->nroles) {
    throw py::value_error("Functional: " + std::to_string(npos) + " array arguments, but _core." + kernel_name +
                          " takes " + std::to_string(kernel->nroles));
  }
  if (npos + keywords.size() > kMaxSlots) throw py::value_error("Functional: too many parameters");
  std::vector<char> covered(kernel->nvalues + kernel->nbools + kernel->nswitches, 0);
  auto cover = [&](Target tg, std::size_t i) {
    const std::size_t at = tg == Target::value ? i : tg == Target::boolean ? kernel->nvalues + i
                                                                            : kernel->nvalues + kernel->nbools + i;
    if (covered[at] != 0) throw py::value_error("Functional: a kernel value is set twice");
    covered[at] = 1;
  };
  impl->npos = npos;
  auto add_slot = [&](Slot sl, const std::string& name) {
    impl->slots.push_back(sl);
    impl->slots.back().name = intern(name);  // (owned by impl from here)
    if (impl->slots.back().name == nullptr) throw py::error_already_set();
  };
  for (std::size_t r = 0; r < npos; ++r) {
    const py::tuple p = positional[r].cast<py::tuple>();  // (name, optional)
    Slot sl;
    sl.kind = Kind::role;
    sl.index = r;
    sl.optional_role = p[1].cast<bool>();
    sl.required = !sl.optional_role;
    add_slot(sl, p[0].cast<std::string>());
  }
  for (const py::handle h : keywords) {
    const py::tuple k = h.cast<py::tuple>();  // (name, kind, default[, low, high, open_low, closed_high])
    const std::string name = k[0].cast<std::string>(), kind = k[1].cast<std::string>();
    const py::object def = k[2];
    Slot sl;
    if (kind == "step") {
      sl.kind = Kind::step;
    } else if (kind == "real") {
      sl.kind = Kind::real;
      sl.low = k[3].cast<double>(), sl.high = k[4].cast<double>();
      sl.open_low = k[5].cast<bool>(), sl.closed_high = k[6].cast<bool>();
      if (PyFloat_CheckExact(def.ptr()) && in_range(sl, PyFloat_AS_DOUBLE(def.ptr()))) {
        sl.default_ok = true, sl.default_value = PyFloat_AS_DOUBLE(def.ptr());
      }
      if (!target_of(*kernel, name, &sl.target, &sl.index) || sl.target != Target::value) {
        throw py::value_error("Functional: the C++ twins of '" + key + "' read no float '" + name + "'");
      }
      cover(sl.target, sl.index);
    } else if (kind == "flag") {
      sl.kind = Kind::flag;
      if (def.ptr() == Py_True || def.ptr() == Py_False) sl.default_ok = true, sl.default_value = def.ptr() == Py_True;
      if (!target_of(*kernel, name, &sl.target, &sl.index) || sl.target == Target::value) {
        throw py::value_error("Functional: the C++ twins of '" + key + "' read no flag '" + name + "'");
      }
      cover(sl.target, sl.index);
    } else if (kind == "none") {
      sl.kind = Kind::none_only;
    } else if (kind == "false") {
      sl.kind = Kind::false_only;
    } else if (kind == "threads") {
      sl.kind = Kind::threads;
    } else {
      throw py::value_error("Functional: unknown parameter kind '" + kind + "'");
    }
    add_slot(sl, name);
  }
  for (const py::handle h : fixed) {
    const py::tuple f = h.cast<py::tuple>();  // (name, value)
    const std::string name = f[0].cast<std::string>();
    Target tg;
    std::size_t i;
    if (!target_of(*kernel, name, &tg, &i)) {
      throw py::value_error("Functional: the C++ twins of '" + key + "' read no '" + name + "'");
    }
    cover(tg, i);
    if (tg == Target::value) {
      if (!PyFloat_CheckExact(f[1].ptr())) throw py::type_error("Functional: fixed '" + name + "' must be a float");
      impl->v0[i] = PyFloat_AS_DOUBLE(f[1].ptr());
    } else {
      if (!PyBool_Check(f[1].ptr())) throw py::type_error("Functional: fixed '" + name + "' must be a bool");
      (tg == Target::boolean ? impl->b0 : impl->s0)[i] = f[1].ptr() == Py_True;
    }
  }
  for (std::size_t i = 0; i < covered.size(); ++i) {
    if (covered[i] == 0) {
      const char* n = i < kernel->nvalues                  ? kernel->values[i]
                      : i < kernel->nvalues + kernel->nbools ? kernel->bools[i - kernel->nvalues]
                                                             : kernel->switches[i - kernel->nvalues - kernel->nbools];
      throw py::value_error("Functional: '" + key + "' gives no value for the twins' '" + n + "'");
    }
  }
  impl->threads_key = threads_key.inc_ref().ptr();
  impl->threads_module = threads_module.release().ptr();
  auto* self = PyObject_GC_New(FunctionalObject, &g_functional_type);
  if (self == nullptr) throw py::error_already_set();
  self->vectorcall = functional_vectorcall;
  self->dict = nullptr;
  self->weakrefs = nullptr;
  self->fallback = fallback.release().ptr();
  self->impl = impl.release();
  PyObject_GC_Track(reinterpret_cast<PyObject*>(self));
  return py::reinterpret_steal<py::object>(reinterpret_cast<PyObject*>(self));
}

}  // namespace

void register_functional(py::module_& m) {
  using namespace pybind11::literals;
  if (!init_type()) throw py::error_already_set();
  g_serial_below = PyUnicode_InternFromString("SERIAL_BELOW");
  g_get_num_threads = PyUnicode_InternFromString("get_num_threads");
  g_ndarray = reinterpret_cast<PyTypeObject*>(py::detail::npy_api::get().PyArray_Type_);
  const py::object float64 = py::module_::import("numpy").attr("float64");
  if (!PyType_Check(float64.ptr()) || !PyType_IsSubtype(reinterpret_cast<PyTypeObject*>(float64.ptr()), &PyFloat_Type)) {
    throw py::type_error("numpy.float64 is not a float subclass");
  }
  g_float64 = reinterpret_cast<PyTypeObject*>(float64.inc_ref().ptr());  // (kept for the life of the process)
  Py_INCREF(&g_functional_type);
  m.attr("Functional") = py::handle(reinterpret_cast<PyObject*>(&g_functional_type));
  m.def("_functional", &make_functional, "traits"_a, "kernel"_a, "fallback"_a, "positional"_a, "keywords"_a,
        "fixed"_a, "threads_module"_a, "threads_key"_a,
        "A fusedopt._core.Functional (see cpp/bindings/functional.cpp); built by fusedopt._engine.");
  py::tuple keys(kernels().size());
  for (std::size_t i = 0; i < kernels().size(); ++i) keys[i] = py::str(kernels()[i].key);
  m.attr("_functional_traits") = keys;
}

}  // namespace bindings
}  // namespace fusedopt

// TorchPlan: fusedopt.torch's steady-state step in C++ (python/fusedopt/torch.py).
//
// After a full (Python) step succeeded, the optimizer builds a TorchPlan from what that step
// validated: the param_groups list and each group's dict, params list, hyperparameter values
// (identity snapshot) and checked functional view; the optimizer's state dict (its entries, in
// order); per stepped parameter its state dict, its state tensors and 'step' tensor. Each written
// tensor (parameter, state, step) is cached with its exact type, what torch's DLPack export tells
// (data pointer, dtype, shape, strides, CPU) and a weak reference to its storage object.
//
// step() then re-checks all of it before anything is written, and returns -2 ("run the Python
// path", nothing done) on any difference:
//   - the same param_groups list and group dicts, each group holding the snapshot's value objects
//     (a changed value: returns that group's index; Python validates it and calls refresh());
//   - the same params list objects of the same length holding the same tensors, the same
//     parameters with and without .grad;
//   - the optimizer's state dict holding the same (key, value) entries in the same order (one
//     PyDict_Next pass: no tensor hashing), each stepped parameter's state dict holding the cached
//     state and step tensors (identity);
//   - every cached written tensor: same exact type; DLPack export with the same data pointer,
//     dtype, shape and strides on the CPU; is_neg() False; its cached storage object still holds
//     the elements (data_ptr/nbytes: a storage resized under the tensor, as FSDP's resize_(0),
//     fails here; a storage freed kills the weak reference). A tensor moved to another storage
//     (p.data = ..., set_) has another data pointer or, at the same address, memory that the cached
//     storage (alive, held by the step until the kernels returned) still holds;
//   - each fresh gradient, read in full: exact torch.Tensor/Parameter, DLPack (CPU, the parameter's
//     dtype and shape; dense; C-contiguous or the parameter's strides), aligned, not neg, inside
//     its own storage, and overlapping no written tensor (binary search over the sorted extents);
//   - every step count finite, whole, >= 0 (and the same within a call when the update uses it).
// Then it derives the per-step scalars (step_traits.hpp `derive`, bitwise python/fusedopt/_scalars.py),
// runs one kernel per (group, dtype) without the GIL, and with the GIL held and no Python code in
// between increments the step tensors in their dtype (a float32 count saturates at 2**24, as
// torch's) and bumps the autograd version counters of every written tensor
// (torch._C._increment_version over the cached list). The Python side wraps the call in
// _core.defer_interrupts and holds the optimizer's lock.
//
// The plan holds no reference to any tensor, storage, dict or list of the optimizer (identities are
// compared, never dereferenced; storages are weakly referenced), so nothing it cached stays alive
// because of it and it makes no reference cycle; it still takes part in cyclic garbage collection
// (tp_traverse / tp_clear) for the values it does hold (hyperparameter snapshots).
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>
#include <vector>

#include "bindings/arrays.hpp"

namespace fusedopt {
namespace bindings {

class TorchPlan {
 public:
  // groups: per param group a tuple (keys, snapshot, view, role_keys, uses_step): the group's
  // hyperparameter keys and the value objects validated, the checked functional view, the state key
  // per state role (None: absent), whether the update depends on the step count. serial_below: the
  // element count under which a call runs on one thread (fusedopt._threads.SERIAL_BELOW).
  TorchPlan(const std::string& kernel, bool has_step, const py::list& param_groups, const py::dict& state,
            const py::list& groups, py::object increment_version, long long serial_below);

  // -1: stepped. k >= 0: group k's hyperparameters are not the snapshot's (nothing done). -2: anything
  // else differs (nothing done: run the Python path). threads: fusedopt's thread count for large calls.
  int step(py::handle param_groups, py::handle state, int threads);

  // Group k's new validated values (same keys): snapshot and view as in the constructor.
  void refresh(std::size_t k, const py::tuple& snapshot, const py::dict& view);

  std::size_t count() const { return entries_.size(); }

  int traverse(visitproc visit, void* arg) const;
  void clear();

  struct Algo;
  // What a written tensor was when the plan was made. `obj` is only compared with the object found
  // in the optimizer's containers (never dereferenced: the plan keeps no tensor, dict or list alive,
  // so replaced memory is released at once, as on the Python path); `storage` is a weak reference
  // to its storage object (torch keeps a storage's Python object as long as the storage lives).
  struct Cached {
    const PyObject* obj = nullptr;
    py::object storage;
    PyTypeObject* type = nullptr;
    TorchView view;
    std::uintptr_t span = 0;  // bytes from view.data
    bool c_contiguous = false;
  };

 private:
  struct Group {
    const PyObject *dict = nullptr, *params = nullptr;
    std::vector<const PyObject*> slots;  // the tensors of group['params']
    std::vector<int> entry_of;           // per slot: its entry, or -1 (no .grad when planned)
    std::vector<py::object> keys, snapshot, role_keys;
    std::vector<double> values;
    std::vector<char> bools;
    bool uses_step = true;
  };
  struct Entry {
    std::size_t call = 0;
    long state_at = -1;  // its state dict's position in the optimizer's state dict (-1: no state)
    Cached p, step;
    std::vector<Cached> states;  // per state role (absent: obj nullptr)
  };
  struct Call {
    std::size_t group = 0;
    DType dtype = DType::f32;
    std::vector<std::size_t> entries;
    std::int64_t elements = 0;
  };
  struct Extent {
    std::uintptr_t begin, end;
  };

  bool read_grad(PyObject* g, const Entry& e, std::vector<py::object>& keep, void** out) const;

  const Algo* algo_ = nullptr;
  bool has_step_ = true, cleared_ = false;
  long long serial_below_ = 0;
  std::size_t nwritten_ = 0;
  const PyObject *param_groups_ = nullptr, *state_ = nullptr;
  py::object increment_version_;
  std::vector<const PyObject*> state_keys_, state_values_;  // the optimizer's state dict entries, in order
  std::vector<Group> groups_;
  std::vector<Entry> entries_;
  std::vector<Call> calls_;
  std::vector<Extent> extents_;  // written extents, sorted, disjoint
};

}  // namespace bindings
}  // namespace fusedopt

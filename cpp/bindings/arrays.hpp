// Turning Python lists of NumPy arrays (or torch CPU tensors) into a TensorList without ever
// copying an array.
//
// Arrays are taken as they are: each list item must already be a numpy.ndarray (or, once
// fusedopt.torch registered torch's types, a dense CPU torch.Tensor) of the right dtype,
// C-contiguous, aligned, (for written roles) writeable, and of the parameter's shape; nothing is
// converted, so a write can never land in a temporary (STYLE.md 0.1 item 1 lists how pybind11's
// converting casters would lose writes). Every check runs before any kernel touches memory, so a
// rejected call leaves every array bitwise unchanged.
//
// Lifetime: the Buffers returned hold a strong reference to every array (for a tensor: to its
// storage) until they are destroyed, which the bindings do only after the kernel returned and the
// GIL is held again. Another thread replacing an item of the caller's lists (or a tensor's .data)
// while the kernel runs with the GIL released therefore frees nothing the kernel touches.
//
// torch tensors are read through their Python methods (data_ptr, shape, stride, dtype,
// untyped_storage, ...): no NumPy view is made, so their storages stay resizable, and nothing is
// cached between calls. A tensor must lie inside its storage (a storage shrunk under it, as FSDP
// does with resize_(0), is refused).
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>
#include <vector>

#include "common/step_args.hpp"

namespace fusedopt {
namespace bindings {

namespace py = pybind11;

// f32/f64: what every plain step takes. bf16 (ml_dtypes.bfloat16 / torch.bfloat16), f16 (IEEE half)
// u16 (the "split" master's trail) and u8 (the codes of 8-bit states): accepted only by
// collect(roles, /*mixed=*/true).
enum class DType { f32, f64, bf16, f16, u16, u8 };

// "bfloat16", "float16", ...: the name used in error messages.
const char* dtype_name(DType d);

// One role of an algorithm's buffers, e.g. {"exp_avgs", list, written=true}.
// A role whose list is None is absent: its pointers are nullptr (optional state such as
// max_exp_avg_sqs without amsgrad).
struct Role {
  const char* name;
  py::handle list;
  bool written;
  bool any_dtype = false;  // collect(roles, true): this role's dtype is not compared with the params'
  // > 0: one float32 value per `block` elements of the parameter (the absmax of 8-bit states): a
  // C-contiguous float32 array of ceil(size / block) elements, any shape, instead of the params' shape
  std::int64_t block = 0;
};

// Owns the pointer and size arrays a TensorList refers to.
class Buffers {
 public:
  TensorList list() const {
    return TensorList{ptrs_.data(), sizes_.data(), static_cast<std::int64_t>(sizes_.size()), nbuf_};
  }
  DType dtype() const { return dtype_; }
  // The dtype of role r (collect(roles, true): every item of a role has it; else all are dtype()).
  DType role_dtype(std::size_t r) const { return r < role_dtype_.size() ? role_dtype_[r] : dtype_; }
  // Whether role r was given (a list, not None): e.g. amsgrad's max_exp_avg_sqs.
  bool present(std::size_t r) const { return r < present_.size() && present_[r]; }
  std::int64_t total_elements() const {
    std::int64_t total = 0;
    for (std::int64_t n : sizes_) total += n;
    return total;
  }

 private:
  friend Buffers collect(const std::vector<Role>& roles, bool mixed);
  friend class Plan;
  friend class TorchPlan;
  std::vector<void*> ptrs_;
  std::vector<std::int64_t> sizes_;
  int nbuf_ = 0;
  DType dtype_ = DType::f32;
  std::vector<bool> present_;
  std::vector<DType> role_dtype_;  // collect(roles, true) only
  std::vector<py::object> keep_;  // every array (tensor: its storage), alive until the call ends
};

// Step counters that a step call advances by one after its kernel ran, with the GIL held and no
// Python code run in between: a KeyboardInterrupt is delivered either before the call (nothing
// done) or after it (update and counts done), never between the two. Items: a dict whose 'step' is
// an int (the NumPy optimizers' state: step -> step + 1), or a one-element float32/float64 array or
// CPU tensor (torch's state['step']: incremented in its own dtype, so a float32 count saturates at
// 2**24 as torch's does).
class Counters {
 public:
  // Cannot fail: every new value was made and every pointer validated by collect_counters().
  void commit() const;
  bool empty() const { return dicts_.empty() && f32_.empty() && f64_.empty(); }

 private:
  friend Counters collect_counters(py::handle counters);
  std::vector<py::object> dicts_, values_;  // dict k gets 'step' = values_[k]
  std::vector<float*> f32_;
  std::vector<double*> f64_;
  std::vector<py::object> keep_;
};

// `counters` (None, or a list/tuple of the items above), validated; TypeError/ValueError naming
// counters[i] otherwise.
Counters collect_counters(py::handle counters);

// Validates roles[0] (params) and every other role against it; throws py::type_error /
// py::value_error naming the offending argument, e.g. "grads[2]". Every array has the params' dtype
// (float32 or float64) unless `mixed`: then each role has one dtype of its own (its first item's:
// float32, float64, bfloat16, float16 or uint16), which the caller checks (Buffers::role_dtype).
Buffers collect(const std::vector<Role>& roles, bool mixed = false);

// No array of `written` (a list of arrays/tensors of any shapes, float32/float64) overlaps any other
// array of `written` or `read`; ValueError naming written[i] / read[j] otherwise. (Steps that need
// several native calls check all their arrays together first.)
void check_overlap(py::handle written, py::handle read);

// The most threads one call may use (a count beyond what any machine has makes the OpenMP runtime
// fail to create threads and exit the process). python/fusedopt/_threads.py has the same bound.
constexpr long long kMaxThreads = 1024;

// A thread count argument: a Python int (not bool) with 1 <= threads <= kMaxThreads, else
// TypeError / ValueError naming `threads`.
int check_threads(py::handle threads);

// ---- torch tensors read directly, for TorchPlan (torch_plan.hpp) -------------------------------
// The fast reader collect() uses for plain tensors, in pieces: each a C call (torch's DLPack
// exchange table, or a METH_NOARGS C method of torch.Tensor / torch.UntypedStorage), no Python
// method machinery, nothing of torch's C++ structs read. Every function returns false (or nullptr)
// with the Python error state unchanged for anything it cannot tell or does not accept.
constexpr int kMaxTorchDims = 8;
struct TorchView {
  void* data = nullptr;  // the first element (torch's strides are >= 0)
  DType dtype = DType::f32;
  int nd = 0;
  std::int64_t shape[kMaxTorchDims] = {};
  std::int64_t strides[kMaxTorchDims] = {};  // in elements
};
// Whether the DLPack exchange table and the C methods are available (torch registered).
bool torch_fast_ready();
// An exact torch.Tensor / torch.nn.Parameter on the CPU with dtype float32/float64 and at most
// kMaxTorchDims dimensions, as torch's DLPack export describes it (which does not tell the neg bit
// nor whether the storage still holds the elements: ask torch_not_neg and torch_storage_bounds).
bool torch_view(PyObject* t, TorchView* out);
// t.is_neg() is False (true), or True / failed (false).
bool torch_not_neg(PyObject* t);
// t.untyped_storage(): a new reference, or nullptr.
PyObject* torch_storage(PyObject* t);
// storage.data_ptr() and storage.nbytes() of a torch.UntypedStorage.
bool torch_storage_bounds(PyObject* storage, std::uintptr_t* base, std::uintptr_t* nbytes);

// fusedopt.torch calls this once (fusedopt._core._register_torch): from then on collect() accepts
// CPU torch tensors of dtype float32/float64 wherever it accepts NumPy arrays.
// bfloat16/float16: torch's dtypes of those names (None: tensors of them are refused).
void register_torch(py::handle tensor_type, py::handle float32, py::handle float64, py::handle strided,
                    py::handle bfloat16, py::handle float16);

}  // namespace bindings
}  // namespace fusedopt

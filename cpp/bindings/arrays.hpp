// Turning Python lists of NumPy arrays into a TensorList without ever copying an array.
//
// Arrays are taken as they are: each list item must already be a numpy.ndarray of the right dtype,
// C-contiguous, aligned, (for written roles) writeable, and of the parameter's shape; nothing is
// converted, so a write can never land in a temporary (STYLE.md 0.1 item 1 lists how pybind11's
// converting casters would lose writes). Every check runs before any kernel touches memory, so a
// rejected call leaves every array bitwise unchanged.
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

enum class DType { f32, f64 };

// One role of an algorithm's buffers, e.g. {"exp_avgs", list, written=true}.
// A role whose list is None is absent: its pointers are nullptr (optional state such as
// max_exp_avg_sqs without amsgrad).
struct Role {
  const char* name;
  py::handle list;
  bool written;
};

// Owns the pointer and size arrays a TensorList refers to.
class Buffers {
 public:
  TensorList list() const {
    return TensorList{ptrs_.data(), sizes_.data(), static_cast<std::int64_t>(sizes_.size()), nbuf_};
  }
  DType dtype() const { return dtype_; }
  // Whether role r was given (a list, not None): e.g. amsgrad's max_exp_avg_sqs.
  bool present(std::size_t r) const { return r < present_.size() && present_[r]; }
  std::int64_t total_elements() const {
    std::int64_t total = 0;
    for (std::int64_t n : sizes_) total += n;
    return total;
  }

 private:
  friend Buffers collect(const std::vector<Role>& roles);
  friend class Plan;
  std::vector<void*> ptrs_;
  std::vector<std::int64_t> sizes_;
  int nbuf_ = 0;
  DType dtype_ = DType::f32;
  std::vector<bool> present_;
};

// Validates roles[0] (params) and every other role against it; throws py::type_error /
// py::value_error naming the offending argument, e.g. "grads[2]".
Buffers collect(const std::vector<Role>& roles);

// threads must be >= 1.
int check_threads(int threads);

}  // namespace bindings
}  // namespace fusedopt

// Plan: the validation of a step's written arrays (params and state), done once and kept.
//
// The optimizer classes update the same parameter and state arrays at every step; only the
// gradients are new. A Plan is built once from those arrays, fully validated by collect(), and is
// then passed with every step (the trailing `plan` argument of each step function). With a plan,
// a step checks per written array only that its list still holds the very same object and that
// nothing about that object changed since (data pointer, dtype object, shape and the contiguous /
// aligned / writeable flags: a few loads each), and it validates the gradients as always (type,
// dtype, shape, layout, and no overlap with any written array, by binary search over the plan's
// sorted write extents). Whenever anything does not match, the step falls back to the full
// collect(): a plan can make a step faster, never different, and every error is collect()'s own.
//
// A Plan holds references to its arrays (they stay alive while it exists) and is immutable after
// construction, so it may be shared between threads.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <vector>

#include "bindings/arrays.hpp"

namespace fusedopt {
namespace bindings {

class Plan {
 public:
  // `written`: the lists of the written roles in the order the step function takes them (params
  // first), None for an absent optional role. Raises like collect() if they are not valid.
  explicit Plan(const py::sequence& written);

  // Fills *out for a step over `roles` and returns true when every written role holds exactly the
  // planned, unchanged arrays and every read-only role passes the checks; false means "use
  // collect()" (nothing was raised, nothing was written).
  bool fill(const std::vector<Role>& roles, Buffers* out) const;

  std::size_t count() const { return count_; }
  std::size_t roles() const { return present_.size(); }

 private:
  struct Extent {
    std::uintptr_t begin, end;
  };
  bool unchanged(PyObject* obj, std::size_t k, std::size_t w) const;
  bool read_ok(PyObject* obj, std::size_t k) const;

  std::size_t count_ = 0;                 // tensors
  std::vector<bool> present_;             // per written role
  std::vector<py::object> arrays_;        // count_ x roles (None for absent roles); keeps them alive
  std::vector<py::object> descrs_;        // the dtype object of each array when planned
  std::vector<void*> ptrs_;               // count_ x roles
  std::vector<std::int64_t> sizes_;       // per tensor
  std::vector<std::int64_t> shapes_;      // per tensor: ndim, then the dimensions
  std::vector<std::size_t> shape_at_;     // per tensor: offset into shapes_
  std::vector<Extent> extents_;           // written extents, sorted by begin (pairwise disjoint)
  DType dtype_ = DType::f32;
  std::int64_t itemsize_ = 4;
};

}  // namespace bindings
}  // namespace fusedopt

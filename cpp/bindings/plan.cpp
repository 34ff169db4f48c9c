#include "bindings/plan.hpp"

#include <pybind11/numpy.h>

#include <algorithm>
#include <string>

namespace fusedopt {
namespace bindings {

namespace {

constexpr int kWrittenFlags = py::detail::npy_api::NPY_ARRAY_C_CONTIGUOUS_ | py::detail::npy_api::NPY_ARRAY_ALIGNED_ |
                              py::detail::npy_api::NPY_ARRAY_WRITEABLE_;
constexpr int kReadFlags = py::detail::npy_api::NPY_ARRAY_C_CONTIGUOUS_ | py::detail::npy_api::NPY_ARRAY_ALIGNED_;

// The items of a list or tuple of the expected length, or nullptr.
PyObject* sequence_of(py::handle h, std::size_t count) {
  PyObject* seq = h.ptr();
  if (!PyList_Check(seq) && !PyTuple_Check(seq)) return nullptr;
  if (static_cast<std::size_t>(PySequence_Fast_GET_SIZE(seq)) != count) return nullptr;
  return seq;
}

bool same_shape(const py::detail::PyArray_Proxy* a, const std::int64_t* shape) {
  if (a->nd != shape[0]) return false;
  for (int d = 0; d < a->nd; ++d) {
    if (a->dimensions[d] != shape[1 + d]) return false;
  }
  return true;
}

}  // namespace

Plan::Plan(const py::sequence& written) {
  const std::size_t nroles = written.size();
  if (nroles < 1) throw py::value_error("a plan needs at least the params list");
  std::vector<std::string> names(nroles);
  std::vector<Role> roles;
  for (std::size_t r = 0; r < nroles; ++r) {
    names[r] = r == 0 ? std::string("params") : "state[" + std::to_string(r - 1) + "]";
    roles.push_back(Role{names[r].c_str(), written[r], true});
  }
  const Buffers b = collect(roles);  // raises on anything invalid
  for (std::size_t r = 0; r < nroles; ++r) {
    if (roles[r].list.is_none()) continue;
    for (std::size_t k = 0; k < static_cast<std::size_t>(b.list().count); ++k) {
      if (!py::isinstance<py::array>(PySequence_Fast_GET_ITEM(roles[r].list.ptr(), static_cast<Py_ssize_t>(k)))) {
        throw py::type_error("a Plan holds numpy arrays only; " + names[r] + "[" + std::to_string(k) + "] is not one");
      }
    }
  }
  const TensorList list = b.list();
  count_ = static_cast<std::size_t>(list.count);
  dtype_ = b.dtype();
  itemsize_ = dtype_ == DType::f32 ? 4 : 8;
  present_.resize(nroles);
  for (std::size_t r = 0; r < nroles; ++r) present_[r] = b.present(r);
  ptrs_.assign(b.ptrs_.begin(), b.ptrs_.end());
  sizes_.assign(b.sizes_.begin(), b.sizes_.end());
  arrays_.resize(count_ * nroles);
  descrs_.resize(count_ * nroles);
  for (std::size_t r = 0; r < nroles; ++r) {
    if (!present_[r]) continue;
    const py::handle lst = roles[r].list;
    for (std::size_t k = 0; k < count_; ++k) {
      py::handle a = PySequence_Fast_GET_ITEM(lst.ptr(), static_cast<Py_ssize_t>(k));
      arrays_[k * nroles + r] = py::reinterpret_borrow<py::object>(a);
      descrs_[k * nroles + r] = py::reinterpret_borrow<py::object>(py::detail::array_proxy(a.ptr())->descr);
      const auto begin = reinterpret_cast<std::uintptr_t>(ptrs_[k * nroles + r]);
      if (sizes_[k] > 0) {
        extents_.push_back(Extent{begin, begin + static_cast<std::uintptr_t>(sizes_[k] * itemsize_)});
      }
    }
  }
  for (std::size_t k = 0; k < count_; ++k) {
    const auto* p = py::detail::array_proxy(arrays_[k * nroles].ptr());
    shape_at_.push_back(shapes_.size());
    shapes_.push_back(p->nd);
    for (int d = 0; d < p->nd; ++d) shapes_.push_back(p->dimensions[d]);
  }
  std::sort(extents_.begin(), extents_.end(), [](const Extent& x, const Extent& y) { return x.begin < y.begin; });
}

bool Plan::unchanged(PyObject* obj, std::size_t k, std::size_t w) const {
  const std::size_t at = k * present_.size() + w;
  if (obj != arrays_[at].ptr()) return false;
  const auto* a = py::detail::array_proxy(obj);
  return a->data == ptrs_[at] && (a->flags & kWrittenFlags) == kWrittenFlags && a->descr == descrs_[at].ptr() &&
         same_shape(a, &shapes_[shape_at_[k]]);
}

bool Plan::read_ok(PyObject* obj, std::size_t k) const {
  if (!py::detail::npy_api::get().PyArray_Check_(obj)) return false;
  const auto* a = py::detail::array_proxy(obj);
  // The dtype object of the parameter (float32/float64 are singletons in NumPy); any other dtype
  // object, even an equal one, takes the full check.
  if (a->descr != descrs_[k * present_.size()].ptr()) return false;
  if ((a->flags & kReadFlags) != kReadFlags || !same_shape(a, &shapes_[shape_at_[k]])) return false;
  if (sizes_[k] == 0) return true;
  // No written extent may overlap [begin, end): the first written extent ending after `begin`
  // (extents are disjoint and sorted, so their ends are sorted too) must start at or after `end`.
  const auto begin = reinterpret_cast<std::uintptr_t>(a->data);
  const std::uintptr_t end = begin + static_cast<std::uintptr_t>(sizes_[k] * itemsize_);
  const auto it = std::upper_bound(extents_.begin(), extents_.end(), begin,
                                   [](std::uintptr_t x, const Extent& e) { return x < e.end; });
  return it == extents_.end() || it->begin >= end;
}

bool Plan::fill(const std::vector<Role>& roles, Buffers* out) const {
  const std::size_t nw = present_.size();
  const std::size_t nroles = roles.size();
  std::vector<PyObject*> seqs(nroles, nullptr);
  std::size_t w = 0;
  for (std::size_t r = 0; r < nroles; ++r) {
    const bool given = !roles[r].list.is_none();
    if (roles[r].written) {
      if (w >= nw || given != present_[w]) return false;
      ++w;
    } else if (!given) {
      return false;
    }
    if (given && (seqs[r] = sequence_of(roles[r].list, count_)) == nullptr) return false;
  }
  if (w != nw) return false;

  out->nbuf_ = static_cast<int>(nroles);
  out->dtype_ = dtype_;
  out->present_.resize(nroles);
  for (std::size_t r = 0; r < nroles; ++r) out->present_[r] = seqs[r] != nullptr;
  out->ptrs_.assign(count_ * nroles, nullptr);
  out->sizes_.assign(sizes_.begin(), sizes_.end());
  // The planned arrays are kept alive by the plan (an argument of the running call); the
  // gradients by out->keep_.
  out->keep_.clear();
  out->keep_.reserve(count_);
  for (std::size_t k = 0; k < count_; ++k) {
    w = 0;
    for (std::size_t r = 0; r < nroles; ++r) {
      if (roles[r].written) {
        const std::size_t wr = w++;
        if (!present_[wr]) continue;
        PyObject* obj = PySequence_Fast_GET_ITEM(seqs[r], static_cast<Py_ssize_t>(k));
        if (!unchanged(obj, k, wr)) return false;
        out->ptrs_[k * nroles + r] = ptrs_[k * nw + wr];
      } else {
        PyObject* obj = PySequence_Fast_GET_ITEM(seqs[r], static_cast<Py_ssize_t>(k));
        if (!read_ok(obj, k)) return false;
        out->ptrs_[k * nroles + r] = py::detail::array_proxy(obj)->data;
        out->keep_.push_back(py::reinterpret_borrow<py::object>(obj));
      }
    }
  }
  return true;
}

}  // namespace bindings
}  // namespace fusedopt

#include "bindings/arrays.hpp"

#include <algorithm>

namespace fusedopt {
namespace bindings {

namespace {

bool host_is_little_endian() {
  const std::uint16_t probe = 1;
  return *reinterpret_cast<const unsigned char*>(&probe) == 1;
}

// float32 / float64 in native byte order, or false.
bool float_dtype(const py::array& a, DType* out) {
  const py::dtype dt = a.dtype();
  if (dt.kind() != 'f') return false;
  const char bo = dt.byteorder();
  const bool native = bo == '=' || bo == '|' || bo == (host_is_little_endian() ? '<' : '>');
  if (!native) return false;
  if (dt.itemsize() == 4) {
    *out = DType::f32;
  } else if (dt.itemsize() == 8) {
    *out = DType::f64;
  } else {
    return false;
  }
  return true;
}

std::string label(const char* name, std::size_t k) { return std::string(name) + "[" + std::to_string(k) + "]"; }

std::string dtype_str(const py::array& a) { return py::str(a.dtype()).cast<std::string>(); }

std::string shape_str(const py::array& a) { return py::str(a.attr("shape")).cast<std::string>(); }

bool same_shape(const py::array& a, const py::array& b) {
  if (a.ndim() != b.ndim()) return false;
  for (py::ssize_t d = 0; d < a.ndim(); ++d) {
    if (a.shape(d) != b.shape(d)) return false;
  }
  return true;
}

py::array as_array(py::handle h, const char* name, std::size_t k) {
  if (!py::isinstance<py::array>(h)) {
    throw py::type_error(label(name, k) + " must be a numpy.ndarray, got " +
                         py::str(py::type::of(h).attr("__name__")).cast<std::string>());
  }
  return py::reinterpret_borrow<py::array>(h);
}

// Items of a list or tuple, borrowed (no copy of the list is made).
struct Items {
  PyObject* seq = nullptr;
  std::size_t size() const { return seq == nullptr ? 0 : static_cast<std::size_t>(PySequence_Fast_GET_SIZE(seq)); }
  py::handle operator[](std::size_t k) const { return PySequence_Fast_GET_ITEM(seq, static_cast<Py_ssize_t>(k)); }
};

Items items_of(const Role& role) {
  if (role.list.is_none()) return Items{};
  if (!PyList_Check(role.list.ptr()) && !PyTuple_Check(role.list.ptr())) {
    throw py::type_error(std::string(role.name) + " must be a list or tuple of numpy arrays, got " +
                         py::str(py::type::of(role.list).attr("__name__")).cast<std::string>());
  }
  return Items{role.list.ptr()};
}

struct Extent {
  std::uintptr_t begin, end;
  bool written;
  std::size_t role, index;
};

[[noreturn]] void throw_overlap(const Extent& x, const Extent& y, const std::vector<Role>& roles) {
  const bool x_first = x.role < y.role || (x.role == y.role && x.index < y.index);
  const Extent& a = x_first ? x : y;
  const Extent& b = x_first ? y : x;
  throw py::value_error(label(roles[b.role].name, b.index) + " shares memory with " +
                        label(roles[a.role].name, a.index) +
                        "; an array updated in place must not overlap any other array of the step");
}

// A written extent must not overlap any other extent; read-only extents (gradients) may overlap
// each other. After sorting by start, a written extent x overlaps an earlier extent iff the largest
// end before it exceeds x.begin, and a later one iff the next extent starts before x.end; every
// overlapping pair that involves a written extent is found from that extent.
void check_no_overlap(std::vector<Extent>& extents, const std::vector<Role>& roles) {
  std::sort(extents.begin(), extents.end(), [](const Extent& a, const Extent& b) { return a.begin < b.begin; });
  std::uintptr_t max_end = 0;
  std::size_t max_at = 0;
  for (std::size_t i = 0; i < extents.size(); ++i) {
    const Extent& x = extents[i];
    if (x.written) {
      if (i > 0 && max_end > x.begin) throw_overlap(x, extents[max_at], roles);
      if (i + 1 < extents.size() && extents[i + 1].begin < x.end) throw_overlap(x, extents[i + 1], roles);
    }
    if (i == 0 || x.end > max_end) {
      max_end = x.end;
      max_at = i;
    }
  }
}

}  // namespace

int check_threads(int threads) {
  if (threads < 1) throw py::value_error("threads must be >= 1, got " + std::to_string(threads));
  return threads;
}

Buffers collect(const std::vector<Role>& roles) {
  // The success path builds no strings and copies no list: messages are made only when raising.
  Buffers out;
  const std::size_t nroles = roles.size();
  out.nbuf_ = static_cast<int>(nroles);
  out.present_.resize(nroles);
  for (std::size_t r = 0; r < nroles; ++r) out.present_[r] = !roles[r].list.is_none();
  std::vector<Items> lists;
  lists.reserve(nroles);
  for (const Role& role : roles) lists.push_back(items_of(role));
  const std::size_t count = lists[0].size();
  for (std::size_t r = 1; r < nroles; ++r) {
    if (!roles[r].list.is_none() && lists[r].size() != count) {
      throw py::value_error(std::string(roles[r].name) + " has " + std::to_string(lists[r].size()) +
                            " arrays but " + roles[0].name + " has " + std::to_string(count));
    }
  }

  std::vector<py::array> params;
  params.reserve(count);
  for (std::size_t k = 0; k < count; ++k) {
    py::array p = as_array(lists[0][k], roles[0].name, k);
    DType dt;
    if (!float_dtype(p, &dt)) {
      throw py::type_error(label(roles[0].name, k) + " has dtype " + dtype_str(p) +
                           "; fusedopt updates float32 and float64 arrays (native byte order)");
    }
    if (k == 0) {
      out.dtype_ = dt;
    } else if (dt != out.dtype_) {
      throw py::type_error(label(roles[0].name, k) + " has dtype " + dtype_str(p) + " but " +
                           label(roles[0].name, 0) + " has " + dtype_str(params[0]) +
                           "; one call updates arrays of one dtype");
    }
    params.push_back(std::move(p));
  }

  out.ptrs_.assign(count * nroles, nullptr);
  out.sizes_.resize(count);
  std::vector<Extent> extents;
  extents.reserve(count * nroles);
  for (std::size_t k = 0; k < count; ++k) {
    out.sizes_[k] = static_cast<std::int64_t>(params[k].size());
    for (std::size_t r = 0; r < nroles; ++r) {
      if (roles[r].list.is_none()) continue;
      const char* name = roles[r].name;
      py::array a = r == 0 ? params[k] : as_array(lists[r][k], name, k);
      if (r > 0) {
        DType dt;
        if (!float_dtype(a, &dt) || dt != out.dtype_) {
          throw py::type_error(label(name, k) + " has dtype " + dtype_str(a) + " but " + label(roles[0].name, k) +
                               " has " + dtype_str(params[k]) + "; they must match exactly (no conversion is made)");
        }
        if (!same_shape(a, params[k])) {
          throw py::value_error(label(name, k) + " has shape " + shape_str(a) + " but " + label(roles[0].name, k) +
                                " has shape " + shape_str(params[k]));
        }
      }
      const int flags = a.flags();
      if ((flags & py::array::c_style) == 0) {
        throw py::value_error(label(name, k) + " is not C-contiguous; fusedopt updates arrays in place and never "
                                               "copies (use np.ascontiguousarray on a copy you keep)");
      }
      if ((flags & py::detail::npy_api::NPY_ARRAY_ALIGNED_) == 0) {
        throw py::value_error(label(name, k) + " is not aligned to its dtype");
      }
      if (roles[r].written && (flags & py::detail::npy_api::NPY_ARRAY_WRITEABLE_) == 0) {
        throw py::value_error(label(name, k) + " is read-only, but it is updated in place");
      }
      void* data = const_cast<void*>(a.data());
      out.ptrs_[k * nroles + r] = data;
      if (a.size() > 0) {
        const auto begin = reinterpret_cast<std::uintptr_t>(data);
        extents.push_back(Extent{begin, begin + static_cast<std::uintptr_t>(a.nbytes()), roles[r].written, r, k});
      }
    }
  }
  check_no_overlap(extents, roles);
  return out;
}

}  // namespace bindings
}  // namespace fusedopt

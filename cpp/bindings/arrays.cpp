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

// bfloat16 (ml_dtypes.bfloat16: a 2-byte dtype whose scalar type is ml_dtypes' `bfloat16`; ml_dtypes
// is never imported here), float16, uint16 in native byte order, uint8, or false.
PyObject* g_bf16_descr = nullptr;  // the ml_dtypes.bfloat16 descriptor once seen (a singleton)

bool lowp_dtype(const py::array& a, DType* out) {
  const py::dtype dt = a.dtype();
  if (dt.itemsize() == 1 && dt.kind() == 'u') {
    *out = DType::u8;
    return true;
  }
  if (dt.itemsize() != 2) return false;
  if (dt.ptr() == g_bf16_descr) {
    *out = DType::bf16;
    return true;
  }
  const char kind = dt.kind();
  const char bo = dt.byteorder();
  const bool native = bo == '=' || bo == '|' || bo == (host_is_little_endian() ? '<' : '>');
  if (!native) return false;
  if (kind == 'f') {
    *out = DType::f16;
    return true;
  }
  if (kind == 'u') {
    *out = DType::u16;
    return true;
  }
  if (kind == 'V') {
    const py::object type = dt.attr("type");
    const py::object mod = py::getattr(type, "__module__", py::none());
    const py::object name = py::getattr(type, "__name__", py::none());
    if (py::isinstance<py::str>(mod) && py::isinstance<py::str>(name) && name.cast<std::string>() == "bfloat16" &&
        mod.cast<std::string>().rfind("ml_dtypes", 0) == 0) {
      if (g_bf16_descr == nullptr) g_bf16_descr = dt.inc_ref().ptr();  // kept for the process' life
      *out = DType::bf16;
      return true;
    }
  }
  return false;
}

std::string label(const char* name, std::size_t k) { return std::string(name) + "[" + std::to_string(k) + "]"; }

std::string type_name(py::handle h) { return py::str(py::type::of(h).attr("__name__")).cast<std::string>(); }

std::string dtype_str(py::handle a) { return py::str(a.attr("dtype")).cast<std::string>(); }

std::string shape_str(py::handle a) {
  return py::str(py::reinterpret_steal<py::object>(PySequence_Tuple(a.attr("shape").ptr()))).cast<std::string>();
}

// torch's types, registered by fusedopt.torch (never freed: they outlive the interpreter's
// teardown order).
struct TorchTypes {
  PyObject* tensor_type = nullptr;
  PyObject* float32 = nullptr;
  PyObject* float64 = nullptr;
  PyObject* strided = nullptr;
  PyObject* bfloat16 = nullptr;  // None when not registered
  PyObject* float16 = nullptr;
};
TorchTypes g_torch;

bool registered(PyObject* dtype) { return dtype != nullptr && dtype != Py_None; }

bool is_tensor(py::handle h) {
  return g_torch.tensor_type != nullptr &&
         PyObject_TypeCheck(h.ptr(), reinterpret_cast<PyTypeObject*>(g_torch.tensor_type)) != 0;
}

// What collect() needs to know about one array or tensor.
struct Item {
  void* data = nullptr;
  std::int64_t size = 0;  // elements
  bool float_ok = false;  // float32/float64 in native byte order
  bool lowp_ok = false;   // bfloat16/float16/uint16 (only collect(roles, true) accepts them)
  DType dtype = DType::f32;
  bool c_contiguous = false;
  bool dense = false;  // its elements fill one block of `size` elements without overlap (any dim order)
  bool aligned = false;
  bool writeable = false;
  bool tensor = false;  // a torch.Tensor (else a numpy.ndarray)
  int nd = 0;
  std::size_t dims_at = 0;  // offset of its shape, then its strides in bytes, in the call's dims arena
};

std::int64_t dim_of(const Item& a, const std::vector<std::int64_t>& dims, int d) {
  return dims[a.dims_at + static_cast<std::size_t>(d)];
}
std::int64_t stride_of(const Item& a, const std::vector<std::int64_t>& dims, int d) {
  return dims[a.dims_at + static_cast<std::size_t>(a.nd + d)];
}

// Sets size, c_contiguous and dense from the shape and byte strides in the arena. Dense: sorted by
// stride, the dimensions longer than 1 have the strides of a C-contiguous array of some order of
// them (channels_last, any permutation of a contiguous tensor); then the elements occupy exactly
// `size` consecutive elements from the lowest address, each once.
void set_layout(Item* it, const std::vector<std::int64_t>& dims, std::int64_t itemsize) {
  std::int64_t size = 1;
  for (int d = 0; d < it->nd; ++d) size *= dim_of(*it, dims, d);
  it->size = size;
  bool contiguous = true;
  std::int64_t expected = itemsize;
  for (int d = it->nd - 1; d >= 0; --d) {
    const std::int64_t len = dim_of(*it, dims, d);
    if (len != 1 && stride_of(*it, dims, d) != expected) contiguous = false;
    expected *= len;
  }
  it->c_contiguous = contiguous || size == 0;
  if (it->c_contiguous) {
    it->dense = true;
    return;
  }
  std::vector<std::pair<std::int64_t, std::int64_t>> order;  // (stride, length) of dims longer than 1
  for (int d = 0; d < it->nd; ++d) {
    if (dim_of(*it, dims, d) != 1) order.emplace_back(stride_of(*it, dims, d), dim_of(*it, dims, d));
  }
  std::sort(order.begin(), order.end());
  bool dense = true;
  expected = itemsize;
  for (const auto& [stride, len] : order) {
    if (stride != expected) dense = false;
    expected *= len;
  }
  it->dense = dense;
}

// The bytes [begin, end) that an item's elements occupy (its real extent, for any strides).
std::pair<std::uintptr_t, std::uintptr_t> span_of(const Item& a, const std::vector<std::int64_t>& dims,
                                                  std::int64_t itemsize) {
  const auto data = reinterpret_cast<std::uintptr_t>(a.data);
  if (a.size == 0) return {data, data};
  std::int64_t lo = 0, hi = 0;
  for (int d = 0; d < a.nd; ++d) {
    const std::int64_t ext = (dim_of(a, dims, d) - 1) * stride_of(a, dims, d);
    (ext < 0 ? lo : hi) += ext;
  }
  return {data - static_cast<std::uintptr_t>(-lo), data + static_cast<std::uintptr_t>(hi + itemsize)};
}

std::int64_t itemsize_of(DType d) {
  return d == DType::f32 ? 4 : (d == DType::f64 ? 8 : (d == DType::u8 ? 1 : 2));
}

// Attribute and method names used on tensors, interned once (no string is made per call).
struct Names {
  PyObject *layout, *is_cpu, *device, *dtype, *is_neg, *shape, *stride, *data_ptr, *untyped_storage, *nbytes;
};
const Names& names() {
  static const Names n{PyUnicode_InternFromString("layout"),   PyUnicode_InternFromString("is_cpu"),
                       PyUnicode_InternFromString("device"),   PyUnicode_InternFromString("dtype"),
                       PyUnicode_InternFromString("is_neg"),   PyUnicode_InternFromString("shape"),
                       PyUnicode_InternFromString("stride"),   PyUnicode_InternFromString("data_ptr"),
                       PyUnicode_InternFromString("untyped_storage"), PyUnicode_InternFromString("nbytes")};
  return n;
}

// The value of attribute `attr` (call_it: of the no-argument method) of a tensor or storage; torch
// raises for what it cannot do, and then the tensor is not something fusedopt can step.
py::object query(py::handle t, PyObject* attr, bool call_it, const char* name, std::size_t k) {
  PyObject* r;
  if (call_it) {
    PyObject* args[1] = {t.ptr()};
    r = PyObject_VectorcallMethod(attr, args, 1 | PY_VECTORCALL_ARGUMENTS_OFFSET, nullptr);
  } else {
    r = PyObject_GetAttr(t.ptr(), attr);
  }
  if (r == nullptr) {
    const std::string why = py::error_already_set().what();
    throw py::type_error(label(name, k) + ": " + py::str(attr).cast<std::string>() + " failed (" + why +
                         "); fusedopt steps dense CPU tensors only");
  }
  return py::reinterpret_steal<py::object>(r);
}

std::int64_t query_int(py::handle t, PyObject* attr, const char* name, std::size_t k) {
  const py::object o = query(t, attr, true, name, k);
  const long long v = PyLong_AsLongLong(o.ptr());
  if (v == -1 && PyErr_Occurred() != nullptr) throw py::error_already_set();
  return static_cast<std::int64_t>(v);
}

// The ints of a tuple (torch.Size or the tuple of stride()) appended to dims; their count.
int tuple_ints(py::handle tup, std::vector<std::int64_t>& dims) {
  if (!PyTuple_Check(tup.ptr())) throw py::type_error("expected a tuple of ints");
  const Py_ssize_t n = PyTuple_GET_SIZE(tup.ptr());
  for (Py_ssize_t i = 0; i < n; ++i) dims.push_back(PyLong_AsLongLong(PyTuple_GET_ITEM(tup.ptr(), i)));
  if (PyErr_Occurred() != nullptr) throw py::error_already_set();
  return static_cast<int>(n);
}

void describe_array(py::handle h, Item* it, std::vector<std::int64_t>& dims) {
  const py::array a = py::reinterpret_borrow<py::array>(h);
  it->float_ok = float_dtype(a, &it->dtype);
  if (!it->float_ok) it->lowp_ok = lowp_dtype(a, &it->dtype);
  const int flags = a.flags();
  it->c_contiguous = (flags & py::array::c_style) != 0;
  it->dense = it->c_contiguous;  // NumPy arrays: C order only (README, "Arrays")
  it->aligned = (flags & py::detail::npy_api::NPY_ARRAY_ALIGNED_) != 0;
  it->writeable = (flags & py::detail::npy_api::NPY_ARRAY_WRITEABLE_) != 0;
  it->data = const_cast<void*>(a.data());
  it->size = static_cast<std::int64_t>(a.size());
  it->nd = static_cast<int>(a.ndim());
  it->dims_at = dims.size();
  for (int d = 0; d < it->nd; ++d) dims.push_back(static_cast<std::int64_t>(a.shape(d)));
  for (int d = 0; d < it->nd; ++d) dims.push_back(static_cast<std::int64_t>(a.strides(d)));
}

// Shape and strides (elements) of a tensor appended to dims as shape, then byte strides.
void push_tensor_dims(Item* it, const std::int64_t* shape, const std::int64_t* stride, std::vector<std::int64_t>& dims) {
  const std::int64_t item = itemsize_of(it->dtype);
  it->dims_at = dims.size();
  for (int d = 0; d < it->nd; ++d) dims.push_back(shape[d]);
  for (int d = 0; d < it->nd; ++d) dims.push_back(stride[d] * item);
  set_layout(it, dims, item);
}

// The storage bounds check: the bytes the tensor's elements occupy, [data, data + need), lie
// inside its storage [base, base + nbytes). (torch strides are never negative: data is the lowest
// address.)
bool inside_storage(const Item& it, const std::vector<std::int64_t>& dims, std::uintptr_t base, std::uintptr_t nbytes,
                    std::uintptr_t* need) {
  const auto [begin, end] = span_of(it, dims, itemsize_of(it.dtype));
  const auto data = reinterpret_cast<std::uintptr_t>(it.data);
  *need = end - begin;
  return base != 0 && begin == data && data >= base && data - base <= nbytes && nbytes - (data - base) >= *need;
}

// ---- Fast path: torch's DLPack C exchange API --------------------------------------------------
// DLPack (dmlc/dlpack, dlpack.h >= 1.2) is a versioned, framework-neutral C ABI; torch >= 2.10
// publishes its table as the capsule torch.Tensor.__dlpack_c_exchange_api__. Its
// dltensor_from_py_object_no_sync fills a DLTensor (data pointer, device, dtype, shape, strides)
// in one C call, without allocating and without going through torch's Python method machinery.
// The structs below are the ABI as the DLPack standard defines it (nothing of torch's own C++
// structs is read). Everything the DLTensor does not tell (the neg bit, the storage and its
// bounds) is asked through torch's own C methods (is_neg, untyped_storage, and the storage's
// data_ptr/nbytes), as on the slow path. What torch 2.13's export does NOT tell, checked against
// its source (DLConvertor.cpp: toDLPackNonOwning fills data/device/ndim/dtype/shape/strides only)
// and by tests/test_torch_tensors.py: a neg- or conj-view is exported as if plain; a tensor whose
// storage was resized to 0 or shrunk under it is exported with a dangling data pointer (no bounds
// check); inference tensors and tensors made from read-only NumPy arrays are exported alike (the
// owning export's flags are always 0, never READ_ONLY). So none of those checks can be dropped.
namespace dl {
struct Device {
  std::int32_t device_type, device_id;
};
struct DataType {
  std::uint8_t code, bits;
  std::uint16_t lanes;
};
struct Tensor {
  void* data;
  Device device;
  std::int32_t ndim;
  DataType dtype;
  std::int64_t* shape;
  std::int64_t* strides;
  std::uint64_t byte_offset;
};
struct Version {
  std::uint32_t major, minor;
};
struct ApiHeader {
  Version version;
  ApiHeader* prev_api;
};
struct Api {  // DLPackExchangeAPI, DLPack major version 1
  ApiHeader header;
  void* managed_tensor_allocator;
  void* managed_tensor_from_py_object_no_sync;
  void* managed_tensor_to_py_object_no_sync;
  int (*dltensor_from_py_object_no_sync)(void* py_object, Tensor* out);
  void* current_work_stream;
};
constexpr std::int32_t kCPU = 1;
constexpr std::uint8_t kFloat = 2;
constexpr std::uint8_t kBfloat = 4;
}  // namespace dl

// A no-argument C method of a built-in type (a method descriptor of a METH_NOARGS entry): its C
// function, called as CPython's own descriptor call does, fn(self, NULL), once the descriptor's
// argument checks are known to hold (no arguments; self of the descriptor's type: the callers pass
// only objects of the exact types checked in init_fast_path). Skips the generic call machinery.
struct NoArgs {
  PyObject* descr = nullptr;
  PyCFunction fn = nullptr;
  // fn for a METH_NOARGS method descriptor defined on a base of self_type (or self_type), else null.
  static NoArgs of(PyObject* descr, PyTypeObject* self_type) {
    NoArgs m;
    m.descr = descr;
    if (descr == nullptr || Py_TYPE(descr) != &PyMethodDescr_Type) return m;
    const auto* d = reinterpret_cast<PyMethodDescrObject*>(descr);
    const int kinds = METH_VARARGS | METH_KEYWORDS | METH_NOARGS | METH_O | METH_FASTCALL | METH_METHOD |
                      METH_CLASS | METH_STATIC;
    if (d->d_method == nullptr || (d->d_method->ml_flags & kinds) != METH_NOARGS ||
        PyType_IsSubtype(self_type, PyDescr_TYPE(descr)) == 0) {
      return m;
    }
    m.fn = d->d_method->ml_meth;
    return m;
  }
  // New reference, or nullptr with the error cleared (also when the function broke the C-API
  // contract: a result with an error set, or no result and no error).
  PyObject* operator()(PyObject* self) const {
    PyObject* r = fn(self, nullptr);
    if (r == nullptr || PyErr_Occurred() != nullptr) {
      Py_XDECREF(r);
      PyErr_Clear();
      return nullptr;
    }
    return r;
  }
};

struct FastPath {
  int (*from)(void*, dl::Tensor*) = nullptr;
  PyTypeObject* plain[2] = {nullptr, nullptr};  // torch.Tensor, torch.nn.Parameter (exact types)
  NoArgs is_neg;                                // methods of torch.Tensor
  NoArgs untyped_storage;
  PyTypeObject* storage_type = nullptr;  // torch.UntypedStorage, and its methods
  NoArgs nbytes;
  NoArgs storage_data_ptr;
};
FastPath g_fast;

// The value of a no-argument method returning an int, or false (error cleared).
bool call_uintptr(const NoArgs& method, PyObject* self, std::uintptr_t* out) {
  PyObject* r = method(self);
  if (r == nullptr) return false;
  const unsigned long long v = PyLong_AsUnsignedLongLong(r);
  Py_DECREF(r);
  if (v == static_cast<unsigned long long>(-1) && PyErr_Occurred() != nullptr) {
    PyErr_Clear();
    return false;
  }
  *out = static_cast<std::uintptr_t>(v);
  return true;
}

// Describes a plain (exact torch.Tensor / torch.nn.Parameter) dense CPU float32/float64 tensor
// that passes every check of describe_tensor(); returns false (dims and the Python error state as
// they were) for anything else, which describe_tensor() then examines and names.
bool describe_tensor_fast(py::handle t, Item* it, std::vector<std::int64_t>& dims, py::object* storage_out) {
  if (g_fast.from == nullptr) return false;
  PyTypeObject* tp = Py_TYPE(t.ptr());
  if (tp != g_fast.plain[0] && tp != g_fast.plain[1]) return false;
  dl::Tensor d{};
  if (g_fast.from(t.ptr(), &d) != 0) {  // e.g. a sparse/mkldnn/meta tensor: torch raised
    PyErr_Clear();
    return false;
  }
  const bool wide = d.dtype.code == dl::kFloat && (d.dtype.bits == 32 || d.dtype.bits == 64);
  // float16/bfloat16 only once fusedopt.torch registered them (as the slow path)
  const bool half = d.dtype.bits == 16 && ((d.dtype.code == dl::kFloat && registered(g_torch.float16)) ||
                                           (d.dtype.code == dl::kBfloat && registered(g_torch.bfloat16)));
  if (d.device.device_type != dl::kCPU || !(wide || half) || d.dtype.lanes != 1 || d.byte_offset != 0 ||
      d.ndim < 0 || (d.ndim > 0 && (d.shape == nullptr || d.strides == nullptr))) {
    return false;
  }
  const std::size_t dims_before = dims.size();
  it->float_ok = wide;
  it->lowp_ok = half;
  it->dtype = half ? (d.dtype.code == dl::kBfloat ? DType::bf16 : DType::f16)
                   : (d.dtype.bits == 32 ? DType::f32 : DType::f64);
  it->nd = d.ndim;
  push_tensor_dims(it, d.shape, d.strides, dims);  // copied now: d's arrays are torch's, valid until Python runs
  it->data = d.data;
  PyObject* neg = g_fast.is_neg(t.ptr());
  const bool plain = neg == Py_False;
  Py_XDECREF(neg);
  PyObject* st = plain ? g_fast.untyped_storage(t.ptr()) : nullptr;
  py::object storage = py::reinterpret_steal<py::object>(st);
  std::uintptr_t base = 0, nbytes = 0, need = 0;
  if (st == nullptr || Py_TYPE(st) != g_fast.storage_type || !call_uintptr(g_fast.storage_data_ptr, st, &base) ||
      !call_uintptr(g_fast.nbytes, st, &nbytes) ||
      (it->size > 0 && !inside_storage(*it, dims, base, nbytes, &need))) {
    dims.resize(dims_before);
    return false;
  }
  const auto data = reinterpret_cast<std::uintptr_t>(it->data);
  it->aligned = data % static_cast<std::uintptr_t>(itemsize_of(it->dtype)) == 0;
  it->writeable = true;  // (inference tensors outside inference mode: refused by fusedopt.torch)
  it->tensor = true;
  *storage_out = std::move(storage);
  return true;
}

}  // namespace

bool torch_fast_ready() { return g_fast.from != nullptr; }

bool torch_view(PyObject* t, TorchView* out) {
  if (g_fast.from == nullptr) return false;
  PyTypeObject* tp = Py_TYPE(t);
  if (tp != g_fast.plain[0] && tp != g_fast.plain[1]) return false;
  dl::Tensor d{};
  if (g_fast.from(t, &d) != 0) {
    PyErr_Clear();
    return false;
  }
  if (d.device.device_type != dl::kCPU || d.dtype.code != dl::kFloat || d.dtype.lanes != 1 ||
      (d.dtype.bits != 32 && d.dtype.bits != 64) || d.byte_offset != 0 || d.ndim < 0 || d.ndim > kMaxTorchDims ||
      (d.ndim > 0 && (d.shape == nullptr || d.strides == nullptr))) {
    return false;
  }
  out->data = d.data;
  out->dtype = d.dtype.bits == 32 ? DType::f32 : DType::f64;
  out->nd = d.ndim;
  for (int i = 0; i < d.ndim; ++i) {
    out->shape[i] = d.shape[i];
    out->strides[i] = d.strides[i];
  }
  return true;
}

bool torch_not_neg(PyObject* t) {
  PyObject* neg = g_fast.is_neg(t);
  Py_XDECREF(neg);
  return neg == Py_False;
}

PyObject* torch_storage(PyObject* t) {
  PyObject* st = g_fast.untyped_storage(t);
  if (st != nullptr && Py_TYPE(st) != g_fast.storage_type) {
    Py_DECREF(st);
    return nullptr;
  }
  return st;
}

bool torch_storage_bounds(PyObject* storage, std::uintptr_t* base, std::uintptr_t* nbytes) {
  return Py_TYPE(storage) == g_fast.storage_type && call_uintptr(g_fast.storage_data_ptr, storage, base) &&
         call_uintptr(g_fast.nbytes, storage, nbytes);
}

namespace {

// A torch tensor: dense, on the CPU, not a lazily negated view, inside its storage. The storage
// object is returned (the call keeps it alive).
py::object describe_tensor(py::handle t, const char* name, std::size_t k, Item* it, std::vector<std::int64_t>& dims) {
  {
    py::object storage;
    if (describe_tensor_fast(t, it, dims, &storage)) return storage;
    *it = Item{};
  }
  const Names& n = names();
  const py::object layout = query(t, n.layout, false, name, k);
  if (layout.ptr() != g_torch.strided) {
    throw py::type_error(label(name, k) + " has layout " + py::str(layout).cast<std::string>() +
                         "; fusedopt steps dense (strided) tensors only");
  }
  if (query(t, n.is_cpu, false, name, k).ptr() != Py_True) {
    throw py::value_error(label(name, k) + " is on device '" +
                          py::str(query(t, n.device, false, name, k)).cast<std::string>() +
                          "'; fusedopt steps CPU tensors only");
  }
  const py::object dt = query(t, n.dtype, false, name, k);
  it->float_ok = dt.ptr() == g_torch.float32 || dt.ptr() == g_torch.float64;
  it->dtype = dt.ptr() == g_torch.float64 ? DType::f64 : DType::f32;
  if (!it->float_ok && (dt.ptr() == g_torch.bfloat16 || dt.ptr() == g_torch.float16) && dt.ptr() != Py_None) {
    it->lowp_ok = true;
    it->dtype = dt.ptr() == g_torch.bfloat16 ? DType::bf16 : DType::f16;
  }
  if (query(t, n.is_neg, true, name, k).ptr() != Py_False) {
    throw py::value_error(label(name, k) + " is a lazily negated view (is_neg()); fusedopt cannot use it in "
                                           "place without a copy (call .resolve_neg() on a tensor you keep)");
  }
  std::vector<std::int64_t> shape, stride;
  it->nd = tuple_ints(query(t, n.shape, false, name, k), shape);
  if (tuple_ints(query(t, n.stride, true, name, k), stride) != it->nd) {
    throw py::type_error(label(name, k) + ": stride() and shape disagree; fusedopt steps dense CPU tensors only");
  }
  push_tensor_dims(it, shape.data(), stride.data(), dims);
  const auto data = static_cast<std::uintptr_t>(query_int(t, n.data_ptr, name, k));
  it->data = reinterpret_cast<void*>(data);
  const std::int64_t item = itemsize_of(it->dtype);
  it->aligned = data % static_cast<std::uintptr_t>(item) == 0;
  it->writeable = true;  // (inference tensors outside inference mode: refused by fusedopt.torch)
  it->tensor = true;
  py::object storage = query(t, n.untyped_storage, true, name, k);
  if (it->size > 0 && (it->float_ok || it->lowp_ok)) {
    const auto base = static_cast<std::uintptr_t>(query_int(storage, n.data_ptr, name, k));
    const auto nbytes = static_cast<std::uintptr_t>(query_int(storage, n.nbytes, name, k));
    std::uintptr_t need = 0;
    if (!inside_storage(*it, dims, base, nbytes, &need)) {
      throw py::value_error(label(name, k) + " needs " + std::to_string(need) + " bytes at byte offset " +
                            std::to_string(data >= base ? data - base : 0) + " of its storage, which holds " +
                            std::to_string(nbytes) +
                            " bytes (was the storage resized, e.g. by FSDP's resize_(0)?); refusing to read or "
                            "write outside it");
    }
  }
  return storage;
}

py::object method_result(py::handle h, const char* m) { return h.attr(m)(); }

// Equal strides in elements on every dimension longer than 1 (shapes already equal): the same
// element order, also between dtypes of different sizes (a bfloat16 parameter, float32 states).
bool same_strides(const Item& a, const Item& b, const std::vector<std::int64_t>& dims) {
  const std::int64_t ia = itemsize_of(a.dtype), ib = itemsize_of(b.dtype);
  for (int d = 0; d < a.nd; ++d) {
    if (dim_of(a, dims, d) != 1 && stride_of(a, dims, d) * ib != stride_of(b, dims, d) * ia) return false;
  }
  return true;
}

std::string strides_str(py::handle h) {
  return is_tensor(h) ? py::str(method_result(h, "stride")).cast<std::string>()
                      : py::str(h.attr("strides")).cast<std::string>() + " bytes";
}

bool same_shape(const Item& a, const Item& b, const std::vector<std::int64_t>& dims) {
  if (a.nd != b.nd) return false;
  for (int d = 0; d < a.nd; ++d) {
    if (dims[a.dims_at + static_cast<std::size_t>(d)] != dims[b.dims_at + static_cast<std::size_t>(d)]) return false;
  }
  return true;
}

// Describes list item k of a role (a numpy.ndarray, or a registered torch.Tensor) and keeps it
// alive in `keep`; TypeError for anything else.
Item describe(py::handle h, const char* name, std::size_t k, std::vector<std::int64_t>& dims,
              std::vector<py::object>& keep) {
  Item it;
  if (py::isinstance<py::array>(h)) {
    describe_array(h, &it, dims);
    keep.push_back(py::reinterpret_borrow<py::object>(h));
  } else if (is_tensor(h)) {
    keep.push_back(describe_tensor(h, name, k, &it, dims));
  } else {
    throw py::type_error(label(name, k) + " must be a numpy.ndarray" +
                         (g_torch.tensor_type != nullptr ? " or a CPU torch.Tensor" : "") + ", got " + type_name(h));
  }
  return it;
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
                         type_name(role.list));
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

// Enables the fast path when torch publishes a DLPack exchange table of major version 1 with
// dltensor_from_py_object_no_sync, and the methods used beside it are the plain C methods. Any
// failure leaves it disabled (every tensor then takes the Python-method path): never an error.
void init_fast_path(py::handle tensor_type) {
  g_fast = FastPath{};
  try {
    const py::object capsule = py::getattr(tensor_type, "__dlpack_c_exchange_api__", py::none());
    if (!PyCapsule_CheckExact(capsule.ptr())) return;
    auto* header = static_cast<dl::ApiHeader*>(PyCapsule_GetPointer(capsule.ptr(), "dlpack_exchange_api"));
    while (header != nullptr && header->version.major > 1) header = header->prev_api;
    if (header == nullptr || header->version.major != 1 || header->version.minor < 2) return;
    const auto* api = reinterpret_cast<const dl::Api*>(header);
    if (api->dltensor_from_py_object_no_sync == nullptr) return;
    const py::object torch = py::module_::import("torch");
    const py::object parameter = torch.attr("nn").attr("Parameter");
    const py::object storage_type = torch.attr("UntypedStorage");
    FastPath f;
    f.from = api->dltensor_from_py_object_no_sync;
    f.plain[0] = reinterpret_cast<PyTypeObject*>(tensor_type.ptr());
    if (!PyType_Check(storage_type.ptr())) return;
    f.storage_type = reinterpret_cast<PyTypeObject*>(storage_type.ptr());
    f.is_neg = NoArgs::of(py::object(tensor_type.attr("is_neg")).release().ptr(), f.plain[0]);
    f.untyped_storage = NoArgs::of(py::object(tensor_type.attr("untyped_storage")).release().ptr(), f.plain[0]);
    f.nbytes = NoArgs::of(py::object(storage_type.attr("nbytes")).release().ptr(), f.storage_type);
    f.storage_data_ptr = NoArgs::of(py::object(storage_type.attr("data_ptr")).release().ptr(), f.storage_type);
    if (f.is_neg.fn == nullptr || f.untyped_storage.fn == nullptr || f.nbytes.fn == nullptr ||
        f.storage_data_ptr.fn == nullptr) {
      return;
    }
    // Parameter takes the fast path only while it inherits these methods unchanged.
    if (parameter.attr("is_neg").ptr() == f.is_neg.descr &&
        parameter.attr("untyped_storage").ptr() == f.untyped_storage.descr && PyType_Check(parameter.ptr())) {
      f.plain[1] = reinterpret_cast<PyTypeObject*>(parameter.ptr());
    }
    storage_type.inc_ref();
    parameter.inc_ref();
    g_fast = f;  // (references kept for the life of the process, as TorchTypes')
  } catch (py::error_already_set&) {
    PyErr_Clear();
  }
}

}  // namespace

int check_threads(py::handle threads) {
  if (PyBool_Check(threads.ptr()) || !PyLong_Check(threads.ptr())) {
    throw py::type_error("threads must be an int, got " + type_name(threads));
  }
  int overflow = 0;
  const long long n = PyLong_AsLongLongAndOverflow(threads.ptr(), &overflow);
  if (overflow != 0 || n < 1 || n > kMaxThreads) {
    throw py::value_error("threads must be between 1 and " + std::to_string(kMaxThreads) + ", got " +
                          py::str(threads).cast<std::string>());
  }
  return static_cast<int>(n);
}

void register_torch(py::handle tensor_type, py::handle float32, py::handle float64, py::handle strided,
                    py::handle bfloat16, py::handle float16) {
  if (!PyType_Check(tensor_type.ptr())) throw py::type_error("tensor_type must be a type");
  // References kept for the life of the process (see TorchTypes).
  g_torch.bfloat16 = bfloat16.inc_ref().ptr();
  g_torch.float16 = float16.inc_ref().ptr();
  g_torch.float32 = float32.inc_ref().ptr();
  g_torch.float64 = float64.inc_ref().ptr();
  g_torch.strided = strided.inc_ref().ptr();
  g_torch.tensor_type = tensor_type.inc_ref().ptr();
  init_fast_path(tensor_type);
}

Counters collect_counters(py::handle counters) {
  Counters out;
  if (counters.is_none()) return out;
  if (!PyList_Check(counters.ptr()) && !PyTuple_Check(counters.ptr())) {
    throw py::type_error("counters must be a list or tuple, got " + type_name(counters));
  }
  static PyObject* const step_key = PyUnicode_InternFromString("step");
  const py::object one = py::int_(1);
  std::vector<std::int64_t> dims;
  const Items items{counters.ptr()};
  for (std::size_t k = 0; k < items.size(); ++k) {
    const py::handle h = items[k];
    if (PyDict_Check(h.ptr())) {
      PyObject* step = PyDict_GetItemWithError(h.ptr(), step_key);
      if (step == nullptr && PyErr_Occurred() != nullptr) throw py::error_already_set();
      if (step == nullptr || !PyLong_CheckExact(step)) {
        throw py::type_error(label("counters", k) + "['step'] must be an int");
      }
      PyObject* next = PyNumber_Add(step, one.ptr());
      if (next == nullptr) throw py::error_already_set();
      out.dicts_.push_back(py::reinterpret_borrow<py::object>(h));
      out.values_.push_back(py::reinterpret_steal<py::object>(next));
      continue;
    }
    dims.clear();
    Item it = describe(h, "counters", k, dims, out.keep_);
    if (!it.float_ok || it.size != 1) {
      throw py::type_error(label("counters", k) + " must be a one-element float32/float64 array or tensor");
    }
    if (!it.aligned || !it.writeable) {
      throw py::value_error(label("counters", k) + " must be aligned and writeable");
    }
    if (it.dtype == DType::f32) {
      out.f32_.push_back(static_cast<float*>(it.data));
    } else {
      out.f64_.push_back(static_cast<double*>(it.data));
    }
  }
  return out;
}

void Counters::commit() const {
  static PyObject* const step_key = PyUnicode_InternFromString("step");
  // The key is present in every dict (checked), so PyDict_SetItem replaces a value: no allocation.
  for (std::size_t k = 0; k < dicts_.size(); ++k) PyDict_SetItem(dicts_[k].ptr(), step_key, values_[k].ptr());
  for (float* p : f32_) *p = *p + 1.0f;
  for (double* p : f64_) *p = *p + 1.0;
}

const char* dtype_name(DType d) {
  switch (d) {
    case DType::f32: return "float32";
    case DType::f64: return "float64";
    case DType::bf16: return "bfloat16";
    case DType::f16: return "float16";
    case DType::u16: return "uint16";
    case DType::u8: return "uint8";
  }
  return "?";
}

Buffers collect(const std::vector<Role>& roles, bool mixed) {
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

  std::vector<std::int64_t> dims;
  dims.reserve(count * nroles * 2);
  out.keep_.reserve(count * nroles);
  std::vector<Item> params;
  params.reserve(count);
  for (std::size_t k = 0; k < count; ++k) {
    const py::handle h = lists[0][k];
    Item p = describe(h, roles[0].name, k, dims, out.keep_);
    if (!p.float_ok && (!mixed || !p.lowp_ok || p.dtype == DType::u16 || p.dtype == DType::u8)) {  // one message for both
      throw py::type_error(label(roles[0].name, k) + " has dtype " + dtype_str(h) +
                           "; fusedopt updates float32 and float64 arrays (native byte order; the optimizer steps "
                           "also take float16 and bfloat16, NumPy's bfloat16 being ml_dtypes.bfloat16)");
    }
    if (k == 0) {
      out.dtype_ = p.dtype;
    } else if (p.dtype != out.dtype_) {
      throw py::type_error(label(roles[0].name, k) + " has dtype " + dtype_str(h) + " but " +
                           label(roles[0].name, 0) + " has " + dtype_str(lists[0][0]) +
                           "; one call updates arrays of one dtype");
    }
    params.push_back(p);
  }

  out.role_dtype_.assign(nroles, out.dtype_);
  std::vector<bool> free_role(nroles, false);
  out.ptrs_.assign(count * nroles, nullptr);
  out.sizes_.resize(count);
  std::vector<Extent> extents;
  extents.reserve(count * nroles);
  for (std::size_t k = 0; k < count; ++k) {
    out.sizes_[k] = params[k].size;
    for (std::size_t r = 0; r < nroles; ++r) {
      if (roles[r].list.is_none()) continue;
      const char* name = roles[r].name;
      const py::handle h = lists[r][k];
      const Item a = r == 0 ? params[k] : describe(h, name, k, dims, out.keep_);
      if (r > 0 && k == 0) {
        // mixed calls: a role has a dtype of its own when the params are low-precision, when it is
        // a state (role >= 2) whose first array is, or for the masters; anything else (e.g. the
        // gradients of float32/float64 params) keeps the plain rule and its message
        const bool lowp_params = out.dtype_ != DType::f32 && out.dtype_ != DType::f64;
        free_role[r] = mixed && (lowp_params || (r >= 2 && a.lowp_ok) || roles[r].any_dtype);
      }
      if (roles[r].block > 0) {  // one float32 per block of the parameter, any shape
        const std::int64_t want = (params[k].size + roles[r].block - 1) / roles[r].block;
        if (!a.float_ok || a.dtype != DType::f32) {
          throw py::type_error(label(name, k) + " has dtype " + dtype_str(h) + "; expected float32");
        }
        if (a.size != want) {
          throw py::value_error(label(name, k) + " has " + std::to_string(a.size) + " elements but " +
                                label(roles[0].name, k) + " has " + std::to_string(params[k].size) + ", which needs " +
                                std::to_string(want) + " (one per block of " + std::to_string(roles[r].block) + ")");
        }
        if (!a.c_contiguous) throw py::value_error(label(name, k) + " is not C-contiguous");
        if (!a.aligned) throw py::value_error(label(name, k) + " is not aligned to its dtype");
        if (roles[r].written && !a.writeable) {
          throw py::value_error(label(name, k) + " is read-only, but it is updated in place");
        }
        const auto [begin, end] = span_of(a, dims, 4);
        out.ptrs_[k * nroles + r] = reinterpret_cast<void*>(begin);
        if (a.size > 0) extents.push_back(Extent{begin, end, roles[r].written, r, k});
        continue;
      }
      if (r > 0 && free_role[r]) {
        if (!a.float_ok && !a.lowp_ok) {
          throw py::type_error(label(name, k) + " has dtype " + dtype_str(h) +
                               "; expected float32, float64, float16, bfloat16 (ml_dtypes.bfloat16), uint16 or uint8");
        }
        if (k == 0) {
          out.role_dtype_[r] = a.dtype;
        } else if (a.dtype != out.role_dtype_[r]) {
          throw py::type_error(label(name, k) + " has dtype " + dtype_str(h) + " but " + label(name, 0) + " has " +
                               dtype_name(out.role_dtype_[r]) + "; every array of a list has one dtype");
        }
      } else if (r > 0) {
        if (!a.float_ok || a.dtype != out.dtype_) {
          throw py::type_error(label(name, k) + " has dtype " + dtype_str(h) + " but " + label(roles[0].name, k) +
                               " has " + dtype_str(lists[0][k]) + "; they must match exactly (no conversion is made)");
        }
      }
      if (r > 0 && !same_shape(a, params[k], dims)) {
        throw py::value_error(label(name, k) + " has shape " + shape_str(h) + " but " + label(roles[0].name, k) +
                              " has shape " + shape_str(lists[0][k]));
      }
      if (!a.dense) {
        if (a.tensor) {
          throw py::value_error(label(name, k) + " is not contiguous (strides " +
                                py::str(method_result(h, "stride")).cast<std::string>() +
                                ") and its elements are not one dense non-overlapping block; fusedopt updates "
                                "tensors in place and never copies");
        }
        throw py::value_error(label(name, k) + " is not C-contiguous; fusedopt updates arrays in place and never "
                                               "copies (use np.ascontiguousarray on a copy you keep)");
      }
      // A dense block that is not in C order (channels_last, a transpose) is stepped as flat
      // memory: element i of the block must be the same element of the parameter in every role,
      // so all roles of a parameter must have the same strides (on dimensions longer than 1).
      if (r > 0 && (!a.c_contiguous || !params[k].c_contiguous) && !same_strides(a, params[k], dims)) {
        throw py::value_error(label(name, k) + " has strides " + strides_str(h) + " but " + label(roles[0].name, k) +
                              " has strides " + strides_str(lists[0][k]) +
                              "; a tensor that is not C-contiguous (e.g. channels_last) is updated in place as one "
                              "flat block only when the parameter, its gradient and its state share strides (fusedopt "
                              "never copies)");
      }
      if (!a.aligned) {
        throw py::value_error(label(name, k) + " is not aligned to its dtype");
      }
      if (roles[r].written && !a.writeable) {
        throw py::value_error(label(name, k) + " is read-only, but it is updated in place");
      }
      // The kernel sees the block from its lowest address (for C order: the data pointer).
      const auto [begin, end] = span_of(a, dims, itemsize_of(a.dtype));
      out.ptrs_[k * nroles + r] = reinterpret_cast<void*>(begin);
      if (a.size > 0) extents.push_back(Extent{begin, end, roles[r].written, r, k});
    }
  }
  check_no_overlap(extents, roles);
  return out;
}

void check_overlap(py::handle written, py::handle read) {
  const std::vector<Role> roles{{"written", written, true}, {"read", read, false}};
  std::vector<std::int64_t> dims;
  std::vector<py::object> keep;
  std::vector<Extent> extents;
  for (std::size_t r = 0; r < roles.size(); ++r) {
    const Items items = items_of(roles[r]);
    for (std::size_t k = 0; k < items.size(); ++k) {
      const Item a = describe(items[k], roles[r].name, k, dims, keep);
      if (!a.float_ok && !a.lowp_ok) {  // low precision: the memory ranges are all that matter here
        throw py::type_error(label(roles[r].name, k) + " has dtype " + dtype_str(items[k]) +
                             "; fusedopt updates float32, float64, bfloat16 and float16 arrays (and uint16 "
                             "split-master trails), in native byte order");
      }
      if (a.size > 0) {  // the real extent, whatever the strides
        const auto [begin, end] = span_of(a, dims, itemsize_of(a.dtype));
        extents.push_back(Extent{begin, end, roles[r].written, r, k});
      }
    }
  }
  check_no_overlap(extents, roles);
}

}  // namespace bindings
}  // namespace fusedopt

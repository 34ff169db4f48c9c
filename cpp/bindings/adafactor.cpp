// The Adafactor step binding (torch.optim.Adafactor; kernel: kernels/adafactor.inl). Its states
// have other shapes than the parameter (row_var [..., R, 1] and col_var [..., 1, C] for a
// parameter of >= 2 dims, a same-shape variance for <= 1 dim), so it is not a define_step
// binding: it validates the lists as torch's functional passes them (None where a parameter has no
// such state), lays out every tensor and the float64 scratch (the fixed blocking of
// step_args.hpp), releases the GIL and makes one kernel call.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>
#include <vector>

#include "bindings/arrays.hpp"
#include "common/step_args.hpp"
#include "dispatch/dispatch.hpp"

namespace fusedopt {
namespace bindings {

namespace {

using namespace pybind11::literals;

py::tuple as_tuple(py::handle x, const char* name) {
  if (!PyList_Check(x.ptr()) && !PyTuple_Check(x.ptr())) {
    throw py::type_error(std::string(name) + " must be a list or tuple");
  }
  return py::reinterpret_steal<py::tuple>(PySequence_Tuple(x.ptr()));
}

std::vector<std::int64_t> shape_of(py::handle a) {
  std::vector<std::int64_t> s;
  for (const py::handle d : a.attr("shape")) s.push_back(d.cast<std::int64_t>());
  return s;
}

std::string shape_str(const std::vector<std::int64_t>& s) {
  std::string out = "(";
  for (std::size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + (s.size() == 1 ? ",)" : ")");
}

void expect_shape(py::handle a, const char* name, std::size_t k, const std::vector<std::int64_t>& want) {
  if (!py::hasattr(a, "shape")) {
    throw py::type_error(std::string(name) + "[" + std::to_string(k) + "] must be a numpy.ndarray or a CPU tensor, got " +
                         std::string(py::str(py::type::handle_of(a).attr("__name__"))));
  }
  const std::vector<std::int64_t> got = shape_of(a);
  if (got != want) {
    throw py::value_error(std::string(name) + "[" + std::to_string(k) + "] has shape " + shape_str(got) +
                          "; params[" + std::to_string(k) + "] needs " + shape_str(want));
  }
}

void expect_none(py::handle a, const char* name, std::size_t k, bool none, const char* why) {
  if (a.is_none() != none) {
    throw py::value_error(std::string(name) + "[" + std::to_string(k) + "] must be " + (none ? "None" : "an array") +
                          " (params[" + std::to_string(k) + "] " + why + ")");
  }
}

// The scratch of a call: owned by the calling thread and reused (the kernel runs on this thread,
// the GIL released; nothing else uses this thread's scratch meanwhile).
double* adafactor_scratch(std::size_t n) {
  thread_local std::vector<double> scratch;
  if (scratch.size() < n) scratch.resize(n);
  return scratch.data();
}

void adafactor(py::handle params, py::handle grads, py::handle row_vars, py::handle col_vars, py::handle variances,
               double w, double rho, double eps1, double eps1_sq, double eps2, double d, double decay, bool has_wd,
               bool maximize, py::handle threads, py::handle counters, bool check_only) {
  const py::tuple p = as_tuple(params, "params"), g = as_tuple(grads, "grads");
  const py::tuple rv = as_tuple(row_vars, "row_vars"), cv = as_tuple(col_vars, "col_vars");
  const py::tuple vv = as_tuple(variances, "variances");
  const std::size_t n = p.size();
  for (const auto& [t, name] : {std::pair{&rv, "row_vars"}, std::pair{&cv, "col_vars"}, std::pair{&vv, "variances"}}) {
    if (t->size() != n) {
      throw py::value_error(std::string(name) + " has " + std::to_string(t->size()) + " items; params has " +
                            std::to_string(n));
    }
  }
  const Buffers pg = collect({{"params", p, true}, {"grads", g, false}});  // same shapes, dtype, layout
  py::list rows, cols, vars;
  std::vector<std::vector<std::int64_t>> shapes(n);
  for (std::size_t k = 0; k < n; ++k) {
    shapes[k] = shape_of(p[k]);
    const std::vector<std::int64_t>& s = shapes[k];
    if (s.size() >= 2) {
      expect_none(rv[k], "row_vars", k, false, "has 2 or more dims");
      expect_none(cv[k], "col_vars", k, false, "has 2 or more dims");
      expect_none(vv[k], "variances", k, true, "has 2 or more dims: factored");
      std::vector<std::int64_t> r = s, c = s;
      r.back() = 1;
      c[c.size() - 2] = 1;
      expect_shape(rv[k], "row_vars", k, r);
      expect_shape(cv[k], "col_vars", k, c);
      rows.append(rv[k]);
      cols.append(cv[k]);
    } else {
      expect_none(rv[k], "row_vars", k, true, "has at most 1 dim: not factored");
      expect_none(cv[k], "col_vars", k, true, "has at most 1 dim: not factored");
      expect_none(vv[k], "variances", k, false, "has at most 1 dim");
      expect_shape(vv[k], "variances", k, s);
      vars.append(vv[k]);
    }
  }
  const Buffers br = collect({{"row_vars", rows, true}});
  const Buffers bc = collect({{"col_vars", cols, true}});
  const Buffers bv = collect({{"variances", vars, true}});
  const DType dt = pg.dtype();
  for (const auto& [b, name] : {std::pair{&br, "row_vars"}, std::pair{&bc, "col_vars"}, std::pair{&bv, "variances"}}) {
    if (b->list().count > 0 && b->dtype() != dt) {
      throw py::type_error(std::string(name) + " has dtype " + dtype_name(b->dtype()) + "; params have " +
                           dtype_name(dt) + " (adafactor steps float32 or float64 arrays, states of the params' dtype)");
    }
  }
  py::list written;
  for (const py::handle x : p) written.append(x);
  for (const py::handle x : rows) written.append(x);
  for (const py::handle x : cols) written.append(x);
  for (const py::handle x : vars) written.append(x);
  check_overlap(written, g);
  const int nthreads = check_threads(threads);
  const Counters counts = collect_counters(counters);
  if (check_only) return;

  // layout (step_args.hpp: kAdafactorSeg, kAdafactorTile)
  const TensorList lp = pg.list(), lr = br.list(), lc = bc.list(), lv = bv.list();
  std::vector<AdafactorTensor> ts(n);
  std::int64_t off = 0, items = 0, fi = 0, ui = 0;
  for (std::size_t k = 0; k < n; ++k) {
    AdafactorTensor& t = ts[k];
    const std::vector<std::int64_t>& s = shapes[k];
    t.param = lp.ptrs[2 * k];
    t.grad = lp.ptrs[2 * k + 1];
    t.size = lp.sizes[k];
    t.factored = s.size() >= 2;
    if (t.factored) {
      t.row = lr.ptrs[fi], t.col = lc.ptrs[fi];
      ++fi;
      t.rows = s[s.size() - 2], t.cols = s.back();
      t.batch = t.size == 0 ? 0 : t.size / (t.rows * t.cols);
      t.chunks = (t.cols + kAdafactorSeg - 1) / kAdafactorSeg;
      const std::int64_t width = t.cols < kAdafactorSeg ? t.cols : kAdafactorSeg;
      t.tile_rows = width > 0 ? kAdafactorTile / width : 1;
      if (t.tile_rows > t.rows) t.tile_rows = t.rows;
      if (t.tile_rows < 1) t.tile_rows = 1;
      t.row_tiles = (t.rows + t.tile_rows - 1) / t.tile_rows;
      t.items = t.size == 0 ? 0 : t.batch * t.row_tiles * t.chunks;
    } else {
      t.row = lv.ptrs[ui++], t.col = nullptr;
      t.batch = 1, t.rows = 1, t.cols = t.size;
      t.chunks = (t.size + kAdafactorSeg - 1) / kAdafactorSeg;
      t.tile_rows = 1, t.row_tiles = 1;
      const std::int64_t per = kAdafactorTile / kAdafactorSeg;
      t.items = (t.chunks + per - 1) / per;
    }
    if (t.items == 0) {
      t.seg = t.colpart = t.mean = t.scal = 0;
      continue;
    }
    t.scal = off;
    off += 2;
    t.seg = off;
    off += 2 * (t.factored ? t.batch * t.rows * t.chunks : t.chunks);
    t.colpart = off;
    if (t.factored) off += t.batch * t.row_tiles * t.cols;
    t.mean = off;
    if (t.factored) off += t.batch;
    items += t.items;
  }
  const AdafactorList list{ts.data(), static_cast<std::int64_t>(n), items,
                           adafactor_scratch(static_cast<std::size_t>(off > 0 ? off : 1))};
  const AdafactorScalars sc{w, rho, eps1, eps1_sq, eps2, d, decay, has_wd, maximize};
  if (items > 0) {
    const KernelTable& table = active_table();
    const AdafactorFn fn = dt == DType::f32 ? table.adafactor_f32 : table.adafactor_f64;
    py::gil_scoped_release release;
    fn(list, sc, nthreads);
  }
  counts.commit();
}

}  // namespace

void register_adafactor(py::module_& m) {
  m.def("adafactor", &adafactor, "params"_a, "grads"_a, "row_vars"_a, "col_vars"_a, "variances"_a, "w"_a, "rho"_a,
        "eps1"_a, "eps1_sq"_a, "eps2"_a, "d"_a, "decay"_a, "has_wd"_a, "maximize"_a, "threads"_a,
        "counters"_a = py::none(), "check_only"_a = false,
        "Adafactor step (torch.optim.Adafactor's loop form) over lists of arrays, one call: row_vars/col_vars "
        "for params of >= 2 dims (None otherwise), variances for <= 1 dim (None otherwise). See "
        "fusedopt.functional.adafactor. check_only=True: every check, nothing written.");
}

}  // namespace bindings
}  // namespace fusedopt

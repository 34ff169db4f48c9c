// Introspection of the build, the dispatcher and the fork state, plus the private test hook that
// forces an ISA. Installs the fork handler (common/runtime.hpp) at import.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>
#include <string>

#include "common/runtime.hpp"
#include "dispatch/dispatch.hpp"

#if defined(FUSEDOPT_HAVE_OPENMP)
#include <omp.h>
#endif

namespace fusedopt {
namespace bindings {

namespace py = pybind11;
using namespace pybind11::literals;

namespace {

int omp_max_threads() {
#if defined(FUSEDOPT_HAVE_OPENMP)
  return omp_get_max_threads();
#else
  return 1;
#endif
}

void set_forced_isa(py::object isa) {
  if (isa.is_none()) {
    force_table(nullptr);
    return;
  }
  const std::string name = isa.cast<std::string>();
  const KernelTable* t = table_for(name);
  if (t == nullptr) throw py::value_error("ISA '" + name + "' is not compiled in or not supported by this CPU");
  force_table(t);
}

}  // namespace

void register_runtime(py::module_& m) {
  m.def("compiled_isas", &compiled_isas, "Kernel targets compiled into this build, lowest first.");
  m.def("supported_isas", &supported_isas, "Compiled targets this CPU and OS can run, lowest first.");
  m.def("disabled_isas", &disabled_isas, "Targets disabled by FUSEDOPT_DISABLE_ISA.");
  m.def("active_isa", []() { return std::string(active_table().isa); }, "The target the kernels run on now.");
  m.def("automatic_isa", []() { return std::string(automatic_table().isa); },
        "The target chosen at first use (best supported, not disabled).");
  m.def("_force_isa", &set_forced_isa, "isa"_a.none(true),
        "Test hook: run every kernel on `isa` (None restores the automatic choice).");
#if defined(FUSEDOPT_HAVE_OPENMP)
  m.attr("openmp_enabled") = true;
#else
  m.attr("openmp_enabled") = false;
#endif
  m.def("omp_max_threads", &omp_max_threads, "omp_get_max_threads() (1 without OpenMP).");
  runtime::install_fork_handler();
  m.def("serial_after_fork", &runtime::serial_after_fork,
        "True in a process forked after fusedopt had started an OpenMP team (here or in an ancestor): "
        "the OpenMP team does not survive fork(), so every step runs on one thread (same results).");
#if defined(__GNUC__) && !defined(__clang__)
  m.attr("compiler") = std::string("GCC ") + __VERSION__;
#elif defined(__clang__)
  m.attr("compiler") = std::string("Clang ") + __clang_version__;
#elif defined(_MSC_VER)
  m.attr("compiler") = std::string("MSVC ") + std::to_string(_MSC_VER);
#else
  m.attr("compiler") = std::string("unknown");
#endif
}

}  // namespace bindings
}  // namespace fusedopt

// Wiring only: each area registers itself from its own translation unit.
#include <pybind11/pybind11.h>

namespace fusedopt {
namespace bindings {
void register_optimizers(pybind11::module_& m);
void register_runtime(pybind11::module_& m);
void register_signals(pybind11::module_& m);
void register_stepper(pybind11::module_& m);
void register_torch_plan(pybind11::module_& m);
void register_functional(pybind11::module_& m);
void register_adafactor(pybind11::module_& m);
}  // namespace bindings
}  // namespace fusedopt

PYBIND11_MODULE(_core, m, pybind11::mod_gil_not_used()) {
  m.doc() = "fusedopt's compiled core: stateless fused optimizer kernels over lists of NumPy arrays.";
#if defined(FUSEDOPT_VERSION)
  m.attr("__version__") = FUSEDOPT_VERSION;
#endif
  fusedopt::bindings::register_optimizers(m);
  fusedopt::bindings::register_runtime(m);
  fusedopt::bindings::register_signals(m);
  fusedopt::bindings::register_stepper(m);
  fusedopt::bindings::register_torch_plan(m);
  fusedopt::bindings::register_functional(m);
  fusedopt::bindings::register_adafactor(m);
}

// Stepper: the optimizer classes' fast path for their common planned step (fusedopt/optimizers.py).
//
// An optimizer whose last full step made a plan of exactly one native call (one param group, one
// dtype, every parameter with a gradient, one step count) and whose hyperparameters cannot change
// in place builds a Stepper from what Python validated: the algorithm, the _core.Plan of params and
// state arrays, the group dict with its hyperparameter keys and the value objects it held, the
// state dicts with the state array of each role, and the functional hyperparameters as C++
// doubles/bools. Stepper.step(grads, param_groups, state, threads) then re-checks by identity that
// all of it still holds (the same group dict holding the same value objects, the same state dicts
// holding the same arrays, every 'step' the same valid int), validates the gradients exactly as
// the step bindings do (Plan::fill), derives the per-step scalars in C++ (step_traits.hpp `derive`,
// bitwise those of python/fusedopt/_scalars.py), runs the kernel without the GIL and sets every
// state dict's 'step' to t + 1 right after it, with no Python code in between (all or nothing
// under Ctrl-C, as the binding's counters=). Anything that differs -> False, nothing changed: the
// Python path then runs as before (and raises its own errors). No state lives here: the Stepper
// only caches what Python validated, and the optimizer drops it whenever its layout changes.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>
#include <vector>

#include "bindings/arrays.hpp"
#include "bindings/plan.hpp"

namespace fusedopt {
namespace bindings {

class Stepper {
 public:
  // algorithm: a name of supported_algorithms(); plan: the _core.Plan built from [params, *state
  // lists] (None for an absent role); role_keys: the state-dict key per state role (None: absent);
  // keys/snapshot: the group's hyperparameter keys and the value objects it held; view: the checked
  // functional hyperparameters (floats and bools); has_step: whether the states count steps.
  Stepper(const std::string& algorithm, py::object plan, const py::list& params, const py::sequence& lists,
          const py::sequence& role_keys, py::dict group, const py::tuple& keys, const py::tuple& snapshot,
          const py::list& states, const py::dict& view, bool has_step);

  bool step(py::handle grads, py::handle param_groups, py::handle state, int threads) const;

  // New validated values of the same group (a schedule assigned a new lr): snapshot and view as above.
  void refresh(const py::tuple& snapshot, const py::dict& view);

  std::size_t count() const { return count_; }

  // Garbage collection (the Stepper is GC-tracked: a group dict may refer back to the optimizer
  // that holds its Stepper, a cycle only the collector can free): visit / drop every object held.
  // A cleared Stepper never steps again (step() returns False).
  int traverse(visitproc visit, void* arg) const;
  void clear();

  static std::vector<std::string> supported_algorithms();
  // The per-step scalars and flags `derive` makes for this view and step count (test hook).
  static py::tuple scalars(const std::string& algorithm, const py::dict& view, std::int64_t t);

  struct Algo;  // per-algorithm entry points (stepper.cpp)

 private:
  const Algo* algo_;
  py::object plan_;
  std::size_t count_ = 0;
  std::vector<py::object> lists_;      // params, then each state role's list (None: absent)
  std::vector<py::object> role_keys_;  // per state role: the state-dict key (None: absent)
  py::dict group_;
  std::vector<py::object> keys_, snapshot_;
  py::list states_;
  std::vector<double> values_;
  std::vector<char> bools_;
  bool has_step_ = true;
};

}  // namespace bindings
}  // namespace fusedopt

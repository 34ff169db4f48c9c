// `_core.defer_interrupts`: a step is all or nothing, even under Ctrl-C.
//
// A KeyboardInterrupt is raised by CPython between bytecodes, so one arriving while a step runs
// would surface between two native calls of the step, or between the last native call and the
// Python code that advances the step counts: buffers updated, counts not (or half the model
// updated). Inside `with _core.defer_interrupts:` SIGINT is only recorded; when the outermost
// block exits, the previous handler is put back and the signal is raised again, so the
// KeyboardInterrupt is delivered right after the step completed. A SIGINT that was already
// pending when the block is entered is raised from __enter__, before anything inside ran.
//
// Only SIGINT is deferred, and only while a handler is installed (Python's, by default): with
// SIG_DFL or SIG_IGN nothing is changed. The block may be nested and entered from several threads
// at once (a count; the first entry installs the recorder, the last exit restores). On platforms
// without POSIX sigaction (Windows) the block does nothing.
#include <pybind11/pybind11.h>

#include <csignal>
#include <mutex>

#if !defined(_WIN32)
#include <signal.h>
#define FUSEDOPT_HAVE_SIGACTION 1
#endif

namespace fusedopt {
namespace bindings {

namespace py = pybind11;

namespace {

#if defined(FUSEDOPT_HAVE_SIGACTION)
std::mutex g_mutex;
int g_depth = 0;               // blocks entered and not yet exited (all threads)
bool g_installed = false;      // the recorder is SIGINT's handler now
struct sigaction g_previous;   // the handler it replaced
volatile std::sig_atomic_t g_pending = 0;

extern "C" void fusedopt_record_sigint(int) { g_pending = 1; }

void enter() {
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    if (g_depth++ == 0) {
      struct sigaction ours {};
      ours.sa_handler = fusedopt_record_sigint;
      sigemptyset(&ours.sa_mask);
      ours.sa_flags = SA_RESTART;
      struct sigaction previous {};
      g_installed = false;
      g_pending = 0;
      if (sigaction(SIGINT, &ours, &previous) == 0) {
        if ((previous.sa_flags & SA_SIGINFO) == 0 &&
            (previous.sa_handler == SIG_DFL || previous.sa_handler == SIG_IGN)) {
          sigaction(SIGINT, &previous, nullptr);  // no handler to defer to: leave it alone
        } else {
          g_previous = previous;
          g_installed = true;
        }
      }
    }
  }
  // A signal that reached Python's handler before the recorder was installed is raised now,
  // before the block's body runs (and the block is left again).
  if (PyErr_CheckSignals() != 0) {
    std::lock_guard<std::mutex> lock(g_mutex);
    if (--g_depth == 0 && g_installed) {
      sigaction(SIGINT, &g_previous, nullptr);
      g_installed = false;
    }
    throw py::error_already_set();
  }
}

void exit() {
  bool deliver = false;
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    if (g_depth > 0 && --g_depth == 0 && g_installed) {
      sigaction(SIGINT, &g_previous, nullptr);
      g_installed = false;
      deliver = g_pending != 0;
      g_pending = 0;
    }
  }
  if (deliver) std::raise(SIGINT);  // to the restored handler: Python raises KeyboardInterrupt next
}
#else
void enter() {}
void exit() {}
#endif

struct DeferInterrupts {};

}  // namespace

void register_signals(py::module_& m) {
  py::class_<DeferInterrupts>(m, "_DeferInterrupts",
                              "Context manager: SIGINT inside the block is delivered when the outermost block "
                              "exits (see cpp/bindings/signals.cpp).")
      .def("__enter__", [](DeferInterrupts&) { enter(); })
      .def("__exit__", [](DeferInterrupts&, py::args) {
        exit();
        return false;
      });
  m.attr("defer_interrupts") = DeferInterrupts{};
}

}  // namespace bindings
}  // namespace fusedopt

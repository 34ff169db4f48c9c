// Compiler shims shared by kernels, dispatcher and bindings. No pybind11, no <omp.h> here.
#pragma once

#if defined(_MSC_VER)
#define FUSEDOPT_RESTRICT __restrict
#else
#define FUSEDOPT_RESTRICT __restrict__
#endif

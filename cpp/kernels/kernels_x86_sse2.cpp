// The kernels compiled for the "sse2" target (flags set in CMakeLists.txt).
#define FUSEDOPT_ISA sse2
#define FUSEDOPT_ISA_NAME "sse2"
#include "kernels/kernels.inl"

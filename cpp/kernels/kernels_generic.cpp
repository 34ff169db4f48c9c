// The kernels compiled for the "generic" target (flags set in CMakeLists.txt).
#define FUSEDOPT_ISA generic
#define FUSEDOPT_ISA_NAME "generic"
#include "kernels/kernels.inl"

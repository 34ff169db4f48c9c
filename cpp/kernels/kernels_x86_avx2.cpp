// The kernels compiled for the "avx2" target (flags set in CMakeLists.txt).
#define FUSEDOPT_ISA avx2
#define FUSEDOPT_ISA_NAME "avx2"
#include "kernels/kernels.inl"

// The kernels compiled for the "avx512" target (flags set in CMakeLists.txt).
#define FUSEDOPT_ISA avx512
#define FUSEDOPT_ISA_NAME "avx512"
#include "kernels/kernels.inl"

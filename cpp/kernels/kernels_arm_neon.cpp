// The kernels compiled for the "neon" target (flags set in CMakeLists.txt).
#define FUSEDOPT_ISA neon
#define FUSEDOPT_ISA_NAME "neon"
#include "kernels/kernels.inl"

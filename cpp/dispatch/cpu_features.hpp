// What the CPU *and the operating system* support. Compiled with no ISA flags.
#pragma once

namespace fusedopt {

struct CpuFeatures {
  bool avx2_fma = false;  // AVX2 + FMA + F16C + OS saves YMM state
  bool avx512 = false;    // AVX-512 F/VL/BW/DQ + OS saves ZMM and opmask state
};

CpuFeatures detect_cpu_features();

}  // namespace fusedopt

// The AVX2/FMA/F16C build of the sampling kernels (namespace ssm::samp_avx2): sampling.cpp compiled
// again with SSM_SAMPLING_AVX2_TU and this file's ISA flags (see CMakeLists.txt).
#define SSM_SAMPLING_AVX2_TU 1
#include "sampling.cpp"

// The avx512 vector layer's VecOps table for vec_test.cpp (see vec_ops.h). Compile with: x86-64: -mavx512f -mavx512bw -mavx512vl -mavx512dq -mfma -mf16c.
#include "../../csrc/vec_avx512.h"
#if defined(SSM_VEC_AVX512)
#define SSM_VEC_OPS_ISA avx512
#define SSM_VT_NAME "avx512"
#define SSM_VT_FUSED true
#include "vec_ops.h"
#else
#include "vec_ops.h"
const vt::VecOps* vt::vec_ops_avx512() { return nullptr; }  // not compiled for avx512
#endif

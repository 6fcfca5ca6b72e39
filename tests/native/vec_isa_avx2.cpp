// The avx2 vector layer's VecOps table for vec_test.cpp (see vec_ops.h). Compile with: x86-64: -mavx2 -mfma -mf16c.
#include "../../csrc/vec_avx2.h"
#if defined(SSM_VEC_AVX2)
#define SSM_VEC_OPS_ISA avx2
#define SSM_VT_NAME "avx2"
#define SSM_VT_FUSED true
#include "vec_ops.h"
#else
#include "vec_ops.h"
const vt::VecOps* vt::vec_ops_avx2() { return nullptr; }  // not compiled for avx2
#endif

// The neon vector layer's VecOps table for vec_test.cpp (see vec_ops.h). Compile with: aarch64: baseline flags (NEON is part of the baseline).
#include "../../csrc/vec_neon.h"
#if defined(SSM_VEC_NEON)
#define SSM_VEC_OPS_ISA neon
#define SSM_VT_NAME "neon"
#define SSM_VT_FUSED true
#include "vec_ops.h"
#else
#include "vec_ops.h"
const vt::VecOps* vt::vec_ops_neon() { return nullptr; }  // not compiled for neon
#endif

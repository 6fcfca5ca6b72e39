// The scalar vector layer's VecOps table for vec_test.cpp (see vec_ops.h). Compile with: any architecture, baseline flags.
#include "../../csrc/vec_scalar.h"

#define SSM_VEC_OPS_ISA scalar
#define SSM_VT_NAME "scalar"
#define SSM_VT_FUSED false
#include "vec_ops.h"

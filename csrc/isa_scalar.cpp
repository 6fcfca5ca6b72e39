// The portable ISA (4-lane arrays; see vec_scalar.h): every platform has it.
#include "vec_scalar.h"
#define SSM_ISA scalar
#include "isa_kernels.h"

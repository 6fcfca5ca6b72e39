// The avx2 kernels. CMakeLists.txt compiles this file with the ISA's flags where the target can run it;
// elsewhere it holds only a null table.
#include "vec_avx2.h"
#if defined(SSM_VEC_AVX2)
#define SSM_ISA avx2
#include "isa_kernels.h"
#else
#include "isa.h"
namespace ssm {
namespace avx2 {
const IsaTable* isa_table() { return nullptr; }
}  // namespace avx2
}  // namespace ssm
#endif

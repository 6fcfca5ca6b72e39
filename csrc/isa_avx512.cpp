// The avx512 kernels. CMakeLists.txt compiles this file with the ISA's flags where the target can run it;
// elsewhere it holds only a null table.
#include "vec_avx512.h"
#if defined(SSM_VEC_AVX512)
#define SSM_ISA avx512
#include "isa_kernels.h"
#else
#include "isa.h"
namespace ssm {
namespace avx512 {
const IsaTable* isa_table() { return nullptr; }
}  // namespace avx512
}  // namespace ssm
#endif

// The neon kernels. CMakeLists.txt compiles this file with the ISA's flags where the target can run it;
// elsewhere it holds only a null table.
#if defined(__aarch64__) && defined(__ARM_NEON)
#include "vec_neon.h"
#endif
#if defined(SSM_VEC_NEON)
#define SSM_ISA neon
#include "isa_kernels.h"
#else
#include "isa.h"
namespace ssm {
namespace neon {
const IsaTable* isa_table() { return nullptr; }
}  // namespace neon
}  // namespace ssm
#endif

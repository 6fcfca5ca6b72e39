// The kernels of one ISA: included once by isa_<name>.cpp after its vec_<name>.h, with SSM_ISA defined as
// that ISA's namespace name. Everything here is written once against the vector layer.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#include "isa.h"
#include "thread_pool.h"

#include "vec_math.h"
#include "softmax_kernels.h"
#include "sampling_kernels.h"
#include "shard_kernels.h"

#define SSM_STR2(x) #x
#define SSM_STR(x) SSM_STR2(x)

namespace ssm {
namespace SSM_ISA {
const IsaTable* isa_table() {
  static const IsaTable table = {SSM_STR(SSM_ISA), &forward_kernels, &backward_kernels, &sample_kernel,
                                    &shard_mass_kernel, &shard_search_kernel, &shard_histogram_kernel,
                                    &shard_top_values_kernel, &shard_race_kernel};
  return &table;
}
}  // namespace SSM_ISA
}  // namespace ssm

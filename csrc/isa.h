// The per-ISA kernel tables and the CPU dispatch (cpu_dispatch.cpp). Each ISA's translation unit
// (isa_<name>.cpp) includes its vector header and isa_kernels.h, which instantiates the kernels written
// once against the vector layer; its isa_table() is null when the build cannot target that ISA (e.g.
// AVX-512 on aarch64). The pattern is PyTorch's DispatchStub / CPU_CAPABILITY: one source, one object per
// ISA compiled with that ISA's flags, one table chosen at run time.
#pragma once

#include "sampling.h"
#include "softmax.h"

namespace ssm {

struct IsaTable {
  const char* name;
  // Null for dtype combinations that need float64 accumulation (softmax.cpp's wide kernels).
  const ForwardKernels* (*forward)(int in_dtype, int out_dtype);
  const BackwardKernels* (*backward)(int y_dtype, int g_dtype, int out_dtype, bool log);
  void (*sample)(const SampleArgs& a);
  void (*shard_mass)(const ShardArgs& a, double* mass);
  void (*shard_search)(const ShardArgs& a, const double* before, const double* targets, std::int64_t n,
                       std::int64_t* idx, std::int64_t* last);
  void (*shard_histogram)(const ShardArgs& a, bool counts, const std::int64_t* prefix, int shift, double* hist);
  void (*shard_top_values)(const ShardArgs& a, std::int64_t k, float* top);
  void (*shard_race)(const ShardArgs& a, const std::int64_t* seed, const std::int64_t* row_id,
                     const std::int64_t* offset, std::int64_t col0, std::int64_t n, float* keys, std::int64_t* ids,
                     std::int64_t* count);
};

namespace scalar { const IsaTable* isa_table(); }
namespace avx2 { const IsaTable* isa_table(); }
namespace avx512 { const IsaTable* isa_table(); }
namespace neon { const IsaTable* isa_table(); }

// The table in use: chosen at the first call (STABLESOFTMAX_CPU_ISA, else the best the CPU runs), or by set_isa.
const IsaTable& active_isa();

}  // namespace ssm

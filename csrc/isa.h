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
};

namespace scalar { const IsaTable* isa_table(); }
namespace avx2 { const IsaTable* isa_table(); }
namespace avx512 { const IsaTable* isa_table(); }
namespace neon { const IsaTable* isa_table(); }

// The table in use: chosen at the first call (STABLESOFTMAX_CPU_ISA, else the best the CPU runs), or by set_isa.
const IsaTable& active_isa();

}  // namespace ssm

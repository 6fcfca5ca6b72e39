// CPU feature detection and the choice of ISA, shared by softmax and sampling.
//
// x86: CPUID for the instructions and XGETBV for the state the OS saves (YMM for AVX2; opmask and ZMM
// for AVX-512: a CPU with AVX-512 under an OS or hypervisor that does not enable it must not run it).
// aarch64: Advanced SIMD is part of the base architecture. STABLESOFTMAX_CPU_ISA=auto|avx512|avx2|neon|scalar
// (read at the first call) overrides the choice; a name this CPU or build cannot run falls back to the
// best it can, and isa_reason() says so.
#include <atomic>
#include <cstdlib>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "isa.h"

#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
#include <cpuid.h>
#define SSM_GNU_CPUID 1
#elif defined(_MSC_VER) && (defined(_M_X64) || defined(_M_IX86))
#include <immintrin.h>
#include <intrin.h>
#define SSM_MSVC_CPUID 1
#endif

namespace ssm {
namespace {

CpuFeatures detect_features() {
  CpuFeatures f{};
#if defined(SSM_GNU_CPUID) || defined(SSM_MSVC_CPUID)
  unsigned r1[4] = {0, 0, 0, 0}, r7[4] = {0, 0, 0, 0}, r71[4] = {0, 0, 0, 0};
  unsigned long long xcr0 = 0;
#if defined(SSM_GNU_CPUID)
  if (!__get_cpuid(1, &r1[0], &r1[1], &r1[2], &r1[3])) return f;
  __get_cpuid_count(7, 0, &r7[0], &r7[1], &r7[2], &r7[3]);
  __get_cpuid_count(7, 1, &r71[0], &r71[1], &r71[2], &r71[3]);
  if ((r1[2] >> 27) & 1u) {  // OSXSAVE
    unsigned lo, hi;
    __asm__ __volatile__("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    xcr0 = (static_cast<unsigned long long>(hi) << 32) | lo;
  }
#else
  int i1[4], i7[4], i71[4];
  __cpuid(i1, 1);
  __cpuidex(i7, 7, 0);
  __cpuidex(i71, 7, 1);
  for (int j = 0; j < 4; ++j) { r1[j] = unsigned(i1[j]); r7[j] = unsigned(i7[j]); r71[j] = unsigned(i71[j]); }
  if ((r1[2] >> 27) & 1u) xcr0 = _xgetbv(0);
#endif
  f.os_avx = (xcr0 & 0x6u) == 0x6u;         // XMM and YMM state
  f.os_avx512 = (xcr0 & 0xE6u) == 0xE6u;    // plus opmask, ZMM_Hi256, Hi16_ZMM
  const bool avx = ((r1[2] >> 28) & 1u) && f.os_avx;
  f.fma = avx && ((r1[2] >> 12) & 1u);
  f.f16c = avx && ((r1[2] >> 29) & 1u);
  f.avx2 = avx && ((r7[1] >> 5) & 1u);
  const bool z = avx && f.os_avx512;
  f.avx512f = z && ((r7[1] >> 16) & 1u);
  f.avx512dq = z && ((r7[1] >> 17) & 1u);
  f.avx512bw = z && ((r7[1] >> 30) & 1u);
  f.avx512vl = z && ((r7[1] >> 31) & 1u);
  f.avx512fp16 = z && ((r7[3] >> 23) & 1u);
  f.avx512bf16 = z && ((r71[0] >> 5) & 1u);
#endif
#if defined(__aarch64__) || defined(_M_ARM64)
  f.neon = true;
#endif
  return f;
}

const CpuFeatures& features() {
  static const CpuFeatures f = detect_features();
  return f;
}

enum Isa : int { kAvx512 = 0, kAvx2 = 1, kNeon = 2, kScalar = 3, kIsaCount = 4 };
const char* const kIsaNames[kIsaCount] = {"avx512", "avx2", "neon", "scalar"};

const IsaTable* table_of(int isa) {
  switch (isa) {
    case kAvx512: return avx512::isa_table();
    case kAvx2: return avx2::isa_table();
    case kNeon: return neon::isa_table();
    default: return scalar::isa_table();
  }
}

// Why this CPU or build cannot run `isa` (empty when it can).
std::string lacks(int isa) {
  const CpuFeatures& f = features();
  if (table_of(isa) == nullptr) return std::string("this build has no ") + kIsaNames[isa] + " kernels (another architecture)";
  switch (isa) {
    case kAvx512:
      if (!f.os_avx512 && (f.avx2 || f.fma)) return "the OS does not enable the AVX-512 register state (XCR0)";
      if (!(f.avx512f && f.avx512bw && f.avx512vl && f.avx512dq)) return "this CPU lacks AVX-512 F/BW/VL/DQ";
      if (!(f.fma && f.f16c)) return "this CPU lacks FMA/F16C";
      return "";
    case kAvx2:
      if (!(f.avx2 && f.fma && f.f16c)) return "this CPU lacks AVX2/FMA/F16C";
      return "";
    case kNeon:
      return f.neon ? "" : "this CPU lacks Advanced SIMD";
    default:
      return "";
  }
}

int best_isa() {
  for (int i = 0; i < kIsaCount; ++i)
    if (lacks(i).empty()) return i;
  return kScalar;
}

int parse_isa(const std::string& name) {
  for (int i = 0; i < kIsaCount; ++i)
    if (name == kIsaNames[i]) return i;
  return -1;
}

std::mutex g_mutex;
std::atomic<const IsaTable*> g_table{nullptr};
std::string g_reason;  // guarded by g_mutex

// Chooses the ISA for `request` ("auto" or a name) and records why. Caller holds g_mutex.
void choose(const std::string& request, const char* source) {
  const int best = best_isa();
  int isa = best;
  std::string reason;
  if (request.empty() || request == "auto") {
    reason = std::string("best this CPU and build run") + (request.empty() ? "" : std::string(" (") + source + "=auto)");
  } else {
    const int want = parse_isa(request);
    if (want < 0) {
      reason = std::string(source) + "='" + request + "' is not one of auto, avx512, avx2, neon, scalar: using the best this CPU runs";
    } else if (!lacks(want).empty()) {
      reason = std::string(source) + "=" + request + " asked, but " + lacks(want) + ": using the best this CPU runs";
    } else {
      isa = want;
      reason = std::string(source) + "=" + request;
    }
  }
  g_reason = reason;
  g_table.store(table_of(isa), std::memory_order_release);
}

}  // namespace

const IsaTable& active_isa() {
  const IsaTable* t = g_table.load(std::memory_order_acquire);
  if (t) return *t;
  std::lock_guard<std::mutex> lock(g_mutex);
  if (!g_table.load(std::memory_order_relaxed)) {
    const char* env = std::getenv("STABLESOFTMAX_CPU_ISA");
    choose(env ? std::string(env) : std::string(), "STABLESOFTMAX_CPU_ISA");
  }
  return *g_table.load(std::memory_order_relaxed);
}

CpuFeatures cpu_features() { return features(); }

std::vector<std::string> supported_isas() {
  std::vector<std::string> out;
  for (int i = 0; i < kIsaCount; ++i)
    if (lacks(i).empty()) out.push_back(kIsaNames[i]);
  return out;
}

void set_isa(const std::string& name) {
  if (name != "auto") {
    const int want = parse_isa(name);
    if (want < 0) throw std::invalid_argument("set_isa: expected 'auto', 'avx512', 'avx2', 'neon' or 'scalar', got '" + name + "'");
    const std::string why = lacks(want);
    if (!why.empty()) throw std::invalid_argument("set_isa('" + name + "'): " + why);
  }
  std::lock_guard<std::mutex> lock(g_mutex);
  if (name == "auto") {  // the default: the environment's choice, else the best
    const char* env = std::getenv("STABLESOFTMAX_CPU_ISA");
    choose(env ? std::string(env) : std::string(), "STABLESOFTMAX_CPU_ISA");
  } else {
    choose(name, "set_isa");
  }
}

const char* current_isa() { return active_isa().name; }

std::string isa_reason() {
  active_isa();
  std::lock_guard<std::mutex> lock(g_mutex);
  return g_reason;
}

void sample(const SampleArgs& a) { active_isa().sample(a); }
void shard_mass(const ShardArgs& a, double* mass) { active_isa().shard_mass(a, mass); }
void shard_search(const ShardArgs& a, const double* before, const double* targets, std::int64_t n, std::int64_t* idx,
                  std::int64_t* last) {
  active_isa().shard_search(a, before, targets, n, idx, last);
}
void shard_histogram(const ShardArgs& a, bool counts, const std::int64_t* prefix, int shift, double* hist) {
  active_isa().shard_histogram(a, counts, prefix, shift, hist);
}
void shard_top_values(const ShardArgs& a, std::int64_t k, float* top) { active_isa().shard_top_values(a, k, top); }
void shard_race(const ShardArgs& a, const std::int64_t* seed, const std::int64_t* row_id, const std::int64_t* offset,
                std::int64_t col0, std::int64_t n, float* keys, std::int64_t* ids, std::int64_t* count) {
  active_isa().shard_race(a, seed, row_id, offset, col0, n, keys, ids, count);
}

}  // namespace ssm

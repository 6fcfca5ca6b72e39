// stablesoftmax C++ CPU backend: shared declarations.
//
// Numerics (the SPEC's rules, identical for every ISA path):
//   m   = max_i x_i (a NaN anywhere makes the whole row NaN)
//   s_i = x_i - (isfinite(m) ? m : 0), except when m == +inf: s_i = (x_i == +inf) ? 0 : -inf
//   S   = sum_i exp(s_i), with S := 1 when S == 0 (a row of only -inf)
//   softmax_i = exp(s_i) / S,   log_softmax_i = s_i - log S,  log S = log_normaliser(C, D)
// where C counts the entries at the max and D sums the others' exp(s_i): log of a rounded S near 1
// would lose log_softmax's relative accuracy near 0 (log C + log1p(D / C) there). Accumulation is
// float32 (float64 when any operand is float64); a row's sums are per-block partial sums (kBlock
// elements) combined in double in block order, so they do not drift over 10^6 terms and do not
// depend on threading.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <new>
#include <string>
#include <vector>
#if defined(__unix__) || defined(__APPLE__)
#include <sys/mman.h>
#define SSM_SCRATCH_MMAP 1
#endif

// The vector layer's functions: always inlined (an out-of-line call per vector costs more than the work).
#if defined(__GNUC__) || defined(__clang__)
#define SSM_VEC_INLINE inline __attribute__((always_inline))
#else
#define SSM_VEC_INLINE inline
#endif

namespace ssm {

// The allocator of the kernels' scratch memory: blocks of kScratchMapBytes and more are mapped from the OS
// and unmapped when freed, so that releasing a long row's scratch returns its pages at once, from whichever
// thread. Through malloc such a block came from the thread's arena, and a pool thread's arena kept it
// resident after the free (malloc_trim does not trim the top of a non-main arena): 48 MiB after a 2^22
// float64 row, depending on which thread had drawn it (and malloc_trim, which the release used to call,
// walked every arena for nothing). Smaller blocks go through malloc.
constexpr std::size_t kScratchMapBytes = std::size_t(1) << 20;

inline void* scratch_allocate(std::size_t bytes) {
#if defined(SSM_SCRATCH_MMAP)
  if (bytes >= kScratchMapBytes) {
    void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::bad_alloc();
    return p;
  }
#endif
  return ::operator new(bytes);
}
inline void scratch_free(void* p, std::size_t bytes) noexcept {
#if defined(SSM_SCRATCH_MMAP)
  if (bytes >= kScratchMapBytes) {
    munmap(p, bytes);
    return;
  }
#endif
  ::operator delete(p);
}

template <class T> struct ScratchAlloc {
  using value_type = T;
  ScratchAlloc() = default;
  template <class U> ScratchAlloc(const ScratchAlloc<U>&) {}
  T* allocate(std::size_t n) {
    if (n > std::size_t(-1) / sizeof(T)) throw std::bad_alloc();
    return static_cast<T*>(scratch_allocate(n * sizeof(T)));
  }
  void deallocate(T* p, std::size_t n) noexcept { scratch_free(p, n * sizeof(T)); }
  template <class U> bool operator==(const ScratchAlloc<U>&) const { return true; }
  template <class U> bool operator!=(const ScratchAlloc<U>&) const { return false; }
};
template <class T> using ScratchVec = std::vector<T, ScratchAlloc<T>>;

enum DType : int { kF16 = 0, kBF16 = 1, kF32 = 2, kF64 = 3 };

inline bool valid_dtype(int code) { return code >= kF16 && code <= kF64; }
inline std::size_t dtype_size(int code) { return code == kF64 ? 8 : code == kF32 ? 4 : 2; }

// Storage types for the two 16-bit formats (distinct types so templates can tell them apart).
struct Half { std::uint16_t bits; };
struct BFloat16 { std::uint16_t bits; };

inline std::uint32_t float_bits(float f) { std::uint32_t b; std::memcpy(&b, &f, 4); return b; }
inline float bits_float(std::uint32_t b) { float f; std::memcpy(&f, &b, 4); return f; }

// ---- portable scalar conversions (exact widening; round-to-nearest-even narrowing) ----

inline float half_to_float(std::uint16_t h) {
  const std::uint32_t sign = std::uint32_t(h & 0x8000u) << 16;
  const std::uint32_t exp = (h >> 10) & 0x1fu;
  const std::uint32_t man = h & 0x3ffu;
  if (exp == 0) {  // zero or subnormal: man * 2^-24, exact in float
    const float v = float(man) * 5.9604644775390625e-08f;
    return sign ? -v : v;
  }
  if (exp == 31) return bits_float(sign | 0x7f800000u | (man << 13));  // inf / NaN (payload kept)
  return bits_float(sign | ((exp + 112u) << 23) | (man << 13));
}

// Shifts `m` right by `s` bits (1 <= s <= 31), rounding to nearest, ties to even.
inline std::uint32_t shift_rne(std::uint32_t m, unsigned s) {
  const std::uint32_t r = m >> s, rem = m & ((1u << s) - 1u), halfway = 1u << (s - 1);
  return r + ((rem > halfway || (rem == halfway && (r & 1u))) ? 1u : 0u);
}

inline std::uint16_t float_to_half(float f) {
  std::uint32_t b = float_bits(f);
  const std::uint16_t sign = std::uint16_t((b >> 16) & 0x8000u);
  b &= 0x7fffffffu;
  if (b >= 0x7f800000u) return sign | (b > 0x7f800000u ? 0x7e00u : 0x7c00u);  // NaN / inf
  if (b >= 0x477ff000u) return sign | 0x7c00u;  // >= 65520 rounds to inf
  if (b < 0x38800000u) {                         // below 2^-14: half subnormal (or zero)
    const unsigned e = b >> 23;
    if (e < 102) return sign;  // below 2^-25: rounds to zero
    return std::uint16_t(sign | shift_rne((b & 0x7fffffu) | 0x800000u, 126u - e));
  }
  return std::uint16_t(sign | shift_rne(b - 0x38000000u, 13));  // rebias 127 -> 15; a carry may reach inf
}

inline float bf16_to_float(std::uint16_t h) { return bits_float(std::uint32_t(h) << 16); }

inline std::uint16_t float_to_bf16(float f) {
  const std::uint32_t b = float_bits(f);
  if ((b & 0x7fffffffu) > 0x7f800000u) return std::uint16_t((b >> 16) | 0x40u);  // NaN stays (quiet) NaN
  return std::uint16_t((b + 0x7fffu + ((b >> 16) & 1u)) >> 16);
}

// Scalar load / store of any storage type through an arithmetic type A (float or double).
template <class A> inline A load_as(const Half* p) { return A(half_to_float(p->bits)); }
template <class A> inline A load_as(const BFloat16* p) { return A(bf16_to_float(p->bits)); }
template <class A> inline A load_as(const float* p) { return A(*p); }
template <class A> inline A load_as(const double* p) { return A(*p); }
inline void store_from(Half* p, double v) { p->bits = float_to_half(float(v)); }
inline void store_from(BFloat16* p, double v) { p->bits = float_to_bf16(float(v)); }
inline void store_from(float* p, double v) { *p = float(v); }
inline void store_from(double* p, double v) { *p = v; }
inline void store_from(Half* p, float v) { p->bits = float_to_half(v); }
inline void store_from(BFloat16* p, float v) { p->bits = float_to_bf16(v); }
inline void store_from(float* p, float v) { *p = v; }

// Calls f(T*) with a null pointer of the storage type for `code` (dtype -> template dispatch).
template <class F> inline void with_dtype(int code, F&& f) {
  switch (code) {
    case kF16: f(static_cast<Half*>(nullptr)); break;
    case kBF16: f(static_cast<BFloat16*>(nullptr)); break;
    case kF32: f(static_cast<float*>(nullptr)); break;
    default: f(static_cast<double*>(nullptr)); break;
  }
}

// ---- per-ISA kernels, type-erased over the (input, output) storage types ----
// Rows are cut into fixed blocks of kBlock elements counted from the row's start, whatever the
// thread count or the part of the row a thread handles; block statistics are combined in block
// order. So a row's output is bitwise the same for any batch size, position, thread count and
// split (SPEC "Randomness").
constexpr std::int64_t kBlock = 512;

// Statistics of one block: m = its max (NaN: the block holds a NaN; +inf: it holds c entries +inf);
// softmax: d = sum exp(x - m) (c = 0); log_softmax: c = how many entries equal m, d = the sum of
// exp(x - m) over the others, so that log S = log C + log1p(D / C) keeps its relative accuracy
// when S is within rounding of 1. An all -inf block has m = -inf, c = d = 0.
struct BlockStat { double m, c, d; };

// log x for finite x >= 1, within ~2 ulps, from IEEE operations and explicit fmas only: no branch and no
// multiply-add left for the compiler to contract, so a loop of them vectorises, and every ISA, lane and
// translation unit gives the same bits (the ISA units are compiled with -ffp-contract=fast). x = 2^e * m with
// m in [sqrt(1/2), sqrt(2)), f = m - 1 (exact), s = f / (2 + f): log(1 + f) = 2 atanh(s) = 2s + s * z * Q(z),
// z = s^2 <= 0.0295, Q the atanh series 2/3 + 2z/5 + ... + 2z^8/19 (truncation below 3e-17 relative); with
// 2s = f - s * f, that is f - s * (f - z * Q(z)), whose leading term f is exact.
inline double log_at_least_1(double x) {
  std::uint64_t bits;
  std::memcpy(&bits, &x, 8);
  // the biased exponent as a double, exactly: 2^52 + it, less 2^52
  const std::uint64_t magic_bits = 0x4330000000000000ull | (bits >> 52);
  double e;
  std::memcpy(&e, &magic_bits, 8);
  e -= 4503599627370496.0 + 1023.0;
  const std::uint64_t m_bits = (bits & 0x000fffffffffffffull) | 0x3ff0000000000000ull;
  double m;
  std::memcpy(&m, &m_bits, 8);
  const bool high = m > 1.4142135623730951;
  m = high ? m * 0.5 : m;
  e = high ? e + 1.0 : e;
  const double f = m - 1.0, s = f / (2.0 + f), z = s * s;
  double q = 2.0 / 19;
  q = std::fma(q, z, 2.0 / 17);
  q = std::fma(q, z, 2.0 / 15);
  q = std::fma(q, z, 2.0 / 13);
  q = std::fma(q, z, 2.0 / 11);
  q = std::fma(q, z, 2.0 / 9);
  q = std::fma(q, z, 2.0 / 7);
  q = std::fma(q, z, 2.0 / 5);
  q = std::fma(q, z, 2.0 / 3);
  return std::fma(e, 0.6931471805599453, std::fma(-s, std::fma(-z, q, f), f));
}

// log S, S = C + D, for float32 accumulation (every output float16 / bfloat16 / float32), from a row's C >= 1
// entries at its max and the sum D of the others' exponentials. Where D / C >= 2^-20, log(C + D) (C + D rounds
// by 2^-53, S >= 1 + 2^-20: within ~1e-10 relative, far inside float32); below, log C + log1p(D / C), which
// keeps the relative accuracy of a log S within rounding of 1, with log1p(t) = t - t^2/2 + t^3/3 (t < 2^-20:
// within 2^-60 relative). Branch-free (log_at_least_1), so the short-row and column kernels take it for many
// rows at once (log_normalisers), and every path gives the same bits.
inline double narrow_log_normaliser(double c, double d) {
  const bool whole = d >= c * 0x1p-20;
  const double log_arg = log_at_least_1(whole ? c + d : c);
  const double t = d / c;
  const double log1p_t = std::fma(std::fma(t, -1.0 / 3, 0.5), -t, 1.0);  // log1p(t) / t
  return whole ? log_arg : std::fma(t, log1p_t, log_arg);
}
// out[i] = narrow_log_normaliser(c[i], d[i]) for i < n (a loop the compiler vectorises).
inline void narrow_log_normalisers(const double* c, const double* d, int n, double* out) {
  for (int i = 0; i < n; ++i) out[i] = narrow_log_normaliser(c[i], d[i]);
}

// log S for any accumulation: `narrow` as above; float64 accumulation log C + log1p(D / C) with libm, for the
// SPEC's 1e-12 at the max (log 1 = 0 exactly: no call for C = 1).
inline double log_normaliser(double c, double d, bool narrow) {
  if (narrow) return narrow_log_normaliser(c, d);
  return (c == 1 ? 0.0 : std::log(c)) + std::log1p(d / c);
}

struct ForwardKernels {
  // Statistics of each block of x[0, n) (n a multiple of kBlock except at the row's end). When
  // `stage` is non-null (softmax only) it also receives E(x_i - shift_j), shift_j = m_j for a
  // finite block max, 0 otherwise (exactly the value write_exp recomputes without a stage).
  void (*stats)(const void* x, std::int64_t n, float* stage, BlockStat* st, bool log);
  // softmax: out_i = E(x_i - shift_j) * f_j for i in block j (from the stage when non-null).
  void (*write_exp)(const void* x, const float* stage, std::int64_t n, const double* shift, const double* f, void* out);
  // log_softmax: out_i = (x_i - c) - k
  void (*write_log)(const void* x, std::int64_t n, double c, double k, void* out);
  // Optional (null: the caller gathers each column): the same op along the rows of an n x w
  // tile, element (i, j) at x + i * xs + j (xs, os in elements), vectorised across columns.
  // Returns false, writing nothing, when a column holds NaN or +inf or only -inf.
  bool (*columns)(const void* x, std::int64_t xs, std::int64_t n, std::int64_t w, void* out, std::int64_t os, bool log);
  // Optional (null: row by row): the op along `rows` unit-stride rows of n <= kBlock elements, row r at x + r * xs
  // and out + r * os (elements), bitwise as the general path. Stops at the first row whose max is not finite,
  // writing nothing for it, and returns its index (rows when every row is done).
  std::int64_t (*short_rows)(const void* x, std::int64_t xs, std::int64_t rows, std::int64_t n, void* out,
                             std::int64_t os, bool log);
};

struct BackwardKernels {
  // Per block of y, g [0, n): softmax sum g_i * y_i, log_softmax sum g_i (ceil(n / kBlock) values).
  void (*reduce)(const void* y, const void* g, std::int64_t n, double* block_sums);
  // softmax: out_i = y_i * (g_i - d) ; log_softmax: out_i = g_i - exp(y_i) * d
  void (*write)(const void* y, const void* g, std::int64_t n, double d, void* out);
  // Optional: both steps along the rows of an n x w tile (strides in elements), across columns.
  void (*columns)(const void* y, std::int64_t ys, const void* g, std::int64_t gs, std::int64_t n, std::int64_t w,
                  void* out, std::int64_t os);
};

// The float64-accumulated kernels (any operand float64), portable C++, the same on every ISA.
namespace wide {
const ForwardKernels* forward_kernels(int in_dtype, int out_dtype);
const BackwardKernels* backward_kernels(int y_dtype, int g_dtype, int out_dtype, bool log);
}  // namespace wide

// Columns per tile of the column kernels (a reduction across rows, vectorised over the unit-stride dimension).
constexpr int kColumnTile = 32;

// ---- entry points used by the bindings (arguments already validated) ----
// A tensor view: sizes and strides (in elements) of every dimension; the op reduces along `dim`.
constexpr int kMaxDims = 64;
struct View {
  int ndim;
  std::int64_t size[kMaxDims];
  std::int64_t stride[kMaxDims];
};
struct ForwardArgs {
  const void* in; void* out;
  View in_view, out_view;  // same sizes
  int dim, in_dtype, out_dtype; bool log; int num_threads;
};
struct BackwardArgs {
  const void* y; const void* grad; void* out;
  View y_view, grad_view, out_view;  // same sizes
  int dim, y_dtype, grad_dtype, out_dtype; bool log; int num_threads;
};
struct CpuFeatures {
  bool avx2, fma, f16c;                                            // x86, with the OS's YMM state
  bool avx512f, avx512bw, avx512vl, avx512dq, avx512fp16, avx512bf16;  // x86, with the OS's ZMM state
  bool os_avx, os_avx512;                                          // XCR0: the OS saves YMM / opmask+ZMM
  bool neon;                                                       // aarch64 Advanced SIMD
};

void softmax_forward(const ForwardArgs& a);
void softmax_backward(const BackwardArgs& a);
// CPU dispatch (cpu_dispatch.cpp), shared by softmax and sampling.
CpuFeatures cpu_features();
// The ISAs this build runs on this CPU, best first ("avx512", "avx2", "neon", "scalar"; "scalar" always).
std::vector<std::string> supported_isas();
// "auto" (the default: STABLESOFTMAX_CPU_ISA if set, else the best) or a name from supported_isas();
// throws std::invalid_argument for an unknown or unsupported name.
void set_isa(const std::string& name);
const char* current_isa();
// Why the ISA in use was chosen (e.g. "STABLESOFTMAX_CPU_ISA=avx512 asked, but this CPU lacks ...").
std::string isa_reason();
// Worker threads the process's pool holds now (for tests).
int pool_workers();
// Microseconds an idle pool worker spins before it sleeps (STABLESOFTMAX_POOL_SPIN_US, default 200).
int pool_spin_us();

}  // namespace ssm

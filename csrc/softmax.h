// stablesoftmax C++ CPU backend: shared declarations.
//
// Numerics (the SPEC's rules, identical for every ISA path):
//   m   = max_i x_i (a NaN anywhere makes the whole row NaN)
//   s_i = x_i - (isfinite(m) ? m : 0), except when m == +inf: s_i = (x_i == +inf) ? 0 : -inf
//   S   = sum_i exp(s_i), with S := 1 when S == 0 (a row of only -inf)
//   softmax_i = exp(s_i) / S,   log_softmax_i = s_i - log(S)
// Accumulation is float32 (float64 when any operand is float64); row sums are formed from
// short float32 partial sums added into a double, so they do not drift over 10^6 terms.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>

namespace ssm {

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

// ---- per-ISA row kernels, type-erased over the (input, output) storage types ----
// All operate on one contiguous segment of n elements of a row.
struct ForwardKernels {
  // max_i x_i; NaN need not propagate (a NaN is caught later through the sum).
  double (*max)(const void* x, std::int64_t n);
  // sum_i exp(x_i - c) (NaN if any x_i is NaN); also stores exp(x_i - c) to `stage` when non-null.
  double (*sum_exp)(const void* x, std::int64_t n, double c, float* stage);
  // out_i = exp(x_i - c) * k
  void (*write_exp)(const void* x, std::int64_t n, double c, double k, void* out);
  // out_i = (x_i - c) - k
  void (*write_log)(const void* x, std::int64_t n, double c, double k, void* out);
  // out_i = stage_i * k   (stage may alias out when out is float32)
  void (*write_scaled)(const float* stage, std::int64_t n, double k, void* out);
  // Optional (null in the scalar table): one pass instead of max then sum_exp. Per block j of
  // kOnlineBlock elements, its max b_j into block_max and, when stage is non-null,
  // exp(x_i - b_j) into stage (0 for an all -inf block); *m = the max, *s = sum_i exp(x_i - m).
  // Stops early with *m = NaN (a NaN seen) or +inf (a +inf seen): the caller takes the general path.
  void (*online)(const void* x, std::int64_t n, float* stage, float* block_max, double* m, double* s);
  // out_i = stage_i * exp(b_j - m) * k for i in block j (the stage written by `online`).
  void (*write_blocks)(const float* stage, const float* block_max, std::int64_t n, double m, double k, void* out);
};
constexpr std::int64_t kOnlineBlock = 512;

struct BackwardKernels {
  // softmax: sum_i g_i * y_i ; log_softmax: sum_i g_i
  double (*reduce)(const void* y, const void* g, std::int64_t n);
  // softmax: out_i = y_i * (g_i - d) ; log_softmax: out_i = g_i - exp(y_i) * d
  void (*write)(const void* y, const void* g, std::int64_t n, double d, void* out);
};

namespace scalar {
const ForwardKernels* forward_kernels(int in_dtype, int out_dtype);
const BackwardKernels* backward_kernels(int y_dtype, int g_dtype, int out_dtype, bool log);
}  // namespace scalar

namespace avx2 {
// Null when this build has no AVX2 unit or the dtype combination needs float64 accumulation.
const ForwardKernels* forward_kernels(int in_dtype, int out_dtype);
const BackwardKernels* backward_kernels(int y_dtype, int g_dtype, int out_dtype, bool log);
}  // namespace avx2

// ---- entry points used by the bindings (arguments already validated) ----
struct ForwardArgs {
  const void* in; void* out;
  std::int64_t rows, cols, in_stride, out_stride;
  int in_dtype, out_dtype; bool log; int num_threads;
};
struct BackwardArgs {
  const void* y; const void* grad; void* out;
  std::int64_t rows, cols, y_stride, grad_stride, out_stride;
  int y_dtype, grad_dtype, out_dtype; bool log; int num_threads;
};
struct CpuFeatures { bool avx2, fma, f16c; };

void softmax_forward(const ForwardArgs& a);
void softmax_backward(const BackwardArgs& a);
CpuFeatures cpu_features();
// "auto" | "avx2" | "scalar"; throws std::invalid_argument for an unknown or unsupported name.
void set_isa(const std::string& name);
const char* current_isa();

}  // namespace ssm

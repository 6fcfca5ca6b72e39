// The vector layer for AVX2 + FMA + F16C: 8 float32 lanes. Every ISA header (vec_scalar.h, vec_avx2.h,
// vec_avx512.h, vec_neon.h) defines the same API in its own namespace (ssm::<isa>); the kernels
// (softmax_kernels.h, sampling_kernels.h) are written once against it and instantiated by one
// translation unit per ISA (isa_<name>.cpp). Semantics every implementation must follow:
//
//   kLanes                          lanes per vector (a power of two)
//   VF, VI, VM                      float32 lanes, 32-bit integer lanes, a lane mask
//   vset(f) / vzero() / iset(i)     broadcasts
//   load(p) / store(p, v)           kLanes elements of float, Half (IEEE binary16) or BFloat16; widening is
//                                   exact, narrowing rounds to nearest even (NaN stays a quiet NaN, overflow
//                                   gives inf, subnormals are kept: bfloat16 is converted in integer
//                                   arithmetic, never by an instruction that flushes subnormals)
//   load_tail(p, n, pad)            n (0 <= n < kLanes) elements, lanes >= n set to pad; reads only p[0, n)
//   store_tail(p, n, v)             writes only p[0, n)
//   add sub mul div vmax vmin       vmax/vmin(a, b) return b when either is NaN (x86 semantics: callers track
//                                   NaN separately and never rely on which operand comes back otherwise)
//   fmadd(a, b, c) = a*b + c, fnmadd(a, b, c) = c - a*b (fused where the ISA has FMA)
//   round_even(v)                   nearest integer, ties to even, as float
//   lt le gt ge eq (ordered: false on NaN), unord(a, b) (either is NaN)
//   m_or m_and m_andnot(a, b) = ~a & b, mask_bits(m) (lane i -> bit i), tail_mask(n) (lanes < n)
//   select(m, a, b) = m ? a : b, keep(m, a) = m ? a : 0
//   reduce_max(v)                   the largest lane (lanes hold no NaN)
//   reduce_sum(v)                   the lanes converted to double and added in a fixed order
//   as_int(VF) / as_float(VI)       bit casts; cvt_int(v) converts (rounding to nearest)
//   iadd isub ishl<k> isra<k> isrl<k> ixor   integer lanes
//   mul_hilo(a, m, hi, lo)          the 64-bit products a_i * m (unsigned) split into high and low words
//   iota(base)                      lanes base + i (unsigned, wrapping)
//   store_u32(p, v)                 kLanes uint32 to p
//   leave_isa()                     restores the register state other code expects when a kernel returns
#pragma once

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define SSM_VEC_AVX2 1
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "softmax.h"

namespace ssm {
namespace avx2 {

constexpr int kLanes = 8;
using VF = __m256;
using VI = __m256i;
using VM = __m256;

inline VF vset(float f) { return _mm256_set1_ps(f); }
inline VF vzero() { return _mm256_setzero_ps(); }
inline VI iset(std::int32_t i) { return _mm256_set1_epi32(i); }

inline VF load(const float* p) { return _mm256_loadu_ps(p); }
inline VF load(const Half* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
inline VF load(const BFloat16* p) {
  const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
}
inline void store(float* p, VF v) { _mm256_storeu_ps(p, v); }
inline void store(Half* p, VF v) {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
inline void store(BFloat16* p, VF v) {
  const __m256i b = _mm256_castps_si256(v);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(b, 16), _mm256_set1_epi32(1));
  const __m256i rounded = _mm256_add_epi32(b, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff)));
  const __m256i quiet = _mm256_or_si256(b, _mm256_set1_epi32(0x400000));
  const __m256i isnan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  const __m256i h = _mm256_srli_epi32(_mm256_blendv_epi8(rounded, quiet, isnan), 16);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p),
                   _mm_packus_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1)));
}
template <class T> inline VF load_tail(const T* p, int n, float pad) {
  alignas(32) T buf[kLanes];
  std::memcpy(buf, p, std::size_t(n) * sizeof(T));
  const VF v = load(buf);
  const __m256 m = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)));
  return _mm256_blendv_ps(_mm256_set1_ps(pad), v, m);
}
template <class T> inline void store_tail(T* p, int n, VF v) {
  alignas(32) T buf[kLanes];
  store(buf, v);
  std::memcpy(p, buf, std::size_t(n) * sizeof(T));
}

inline VF add(VF a, VF b) { return _mm256_add_ps(a, b); }
inline VF sub(VF a, VF b) { return _mm256_sub_ps(a, b); }
inline VF mul(VF a, VF b) { return _mm256_mul_ps(a, b); }
inline VF div(VF a, VF b) { return _mm256_div_ps(a, b); }
inline VF vmax(VF a, VF b) { return _mm256_max_ps(a, b); }
inline VF vmin(VF a, VF b) { return _mm256_min_ps(a, b); }
inline VF fmadd(VF a, VF b, VF c) { return _mm256_fmadd_ps(a, b, c); }
inline VF fnmadd(VF a, VF b, VF c) { return _mm256_fnmadd_ps(a, b, c); }
inline VF round_even(VF v) { return _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }

inline VM lt(VF a, VF b) { return _mm256_cmp_ps(a, b, _CMP_LT_OQ); }
inline VM le(VF a, VF b) { return _mm256_cmp_ps(a, b, _CMP_LE_OQ); }
inline VM gt(VF a, VF b) { return _mm256_cmp_ps(a, b, _CMP_GT_OQ); }
inline VM ge(VF a, VF b) { return _mm256_cmp_ps(a, b, _CMP_GE_OQ); }
inline VM eq(VF a, VF b) { return _mm256_cmp_ps(a, b, _CMP_EQ_OQ); }
inline VM unord(VF a, VF b) { return _mm256_cmp_ps(a, b, _CMP_UNORD_Q); }
inline VM m_or(VM a, VM b) { return _mm256_or_ps(a, b); }
inline VM m_and(VM a, VM b) { return _mm256_and_ps(a, b); }
inline VM m_andnot(VM a, VM b) { return _mm256_andnot_ps(a, b); }
inline unsigned mask_bits(VM m) { return unsigned(_mm256_movemask_ps(m)); }
inline VM tail_mask(int n) {
  return _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)));
}
inline VF select(VM m, VF a, VF b) { return _mm256_blendv_ps(b, a, m); }
inline VF keep(VM m, VF a) { return _mm256_and_ps(m, a); }

inline float reduce_max(VF v) {
  __m128 h = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  h = _mm_max_ps(h, _mm_movehl_ps(h, h));
  h = _mm_max_ss(h, _mm_shuffle_ps(h, h, 1));
  return _mm_cvtss_f32(h);
}
inline double reduce_sum(VF v) {
  const __m256d a = _mm256_add_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(v)), _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
  const __m128d s = _mm_add_pd(_mm256_castpd256_pd128(a), _mm256_extractf128_pd(a, 1));
  return _mm_cvtsd_f64(s) + _mm_cvtsd_f64(_mm_unpackhi_pd(s, s));
}

inline VI as_int(VF v) { return _mm256_castps_si256(v); }
inline VF as_float(VI v) { return _mm256_castsi256_ps(v); }
inline VI cvt_int(VF v) { return _mm256_cvtps_epi32(v); }
inline VF cvt_float(VI v) { return _mm256_cvtepi32_ps(v); }
inline VI iadd(VI a, VI b) { return _mm256_add_epi32(a, b); }
inline VI isub(VI a, VI b) { return _mm256_sub_epi32(a, b); }
inline VI ixor(VI a, VI b) { return _mm256_xor_si256(a, b); }
template <int K> inline VI ishl(VI a) { return _mm256_slli_epi32(a, K); }
template <int K> inline VI isra(VI a) { return _mm256_srai_epi32(a, K); }
template <int K> inline VI isrl(VI a) { return _mm256_srli_epi32(a, K); }
inline void mul_hilo(VI a, std::uint32_t m, VI& hi, VI& lo) {
  const __m256i vm = _mm256_set1_epi64x(std::int64_t(m));
  const __m256i pe = _mm256_mul_epu32(a, vm), po = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), vm);
  hi = _mm256_blend_epi32(_mm256_srli_epi64(pe, 32), po, 0xAA);
  lo = _mm256_blend_epi32(pe, _mm256_slli_epi64(po, 32), 0xAA);
}
inline VI iota(std::uint32_t base) {
  return _mm256_add_epi32(_mm256_set1_epi32(std::int32_t(base)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
inline void store_u32(std::uint32_t* p, VI v) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), v); }
// Called when a kernel returns to code of another ISA (vec_avx512.h needs it; nothing to do here).
inline void leave_isa() {}

}  // namespace avx2
}  // namespace ssm
#endif

// The vector layer for AVX-512 (F + BW + VL + DQ): 16 float32 lanes, __mmask16 masks, masked loads and
// stores for tails (no bounce buffer). Same API and semantics as vec_avx2.h (documented there).
// float16 converts with the hardware instructions (VCVTPH2PS / VCVTPS2PH, exact and round-to-nearest-even,
// subnormals kept). bfloat16 does not use AVX512_BF16's VCVTNEPS2BF16: it treats subnormal inputs as zero
// and so would flush the subnormal softmax outputs that bfloat16 can represent; the integer rounding
// below is exact and costs four integer operations per vector.
#pragma once

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512DQ__)
#define SSM_VEC_AVX512 1
#include <immintrin.h>

#include <cstdint>

#include "softmax.h"

namespace ssm {
namespace avx512 {

constexpr int kLanes = 16;
using VF = __m512;
using VI = __m512i;
using VM = __mmask16;

inline VF vset(float f) { return _mm512_set1_ps(f); }
inline VF vzero() { return _mm512_setzero_ps(); }
inline VI iset(std::int32_t i) { return _mm512_set1_epi32(i); }

inline VM tail_mask(int n) { return VM((1u << n) - 1u); }

inline VF load(const float* p) { return _mm512_loadu_ps(p); }
inline VF load(const Half* p) { return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
inline VF widen_bf16(__m256i h) { return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)); }
inline VF load(const BFloat16* p) { return widen_bf16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }

inline __m256i narrow_bf16(VF v) {
  const __m512i b = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(b, 16), _mm512_set1_epi32(1));
  const __m512i rounded = _mm512_add_epi32(b, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff)));
  const __mmask16 isnan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  const __m512i r = _mm512_mask_or_epi32(rounded, isnan, b, _mm512_set1_epi32(0x400000));
  return _mm512_cvtepi32_epi16(_mm512_srli_epi32(r, 16));
}
inline void store(float* p, VF v) { _mm512_storeu_ps(p, v); }
inline void store(Half* p, VF v) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
inline void store(BFloat16* p, VF v) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), narrow_bf16(v)); }

inline VF load_tail(const float* p, int n, float pad) {
  return _mm512_mask_loadu_ps(_mm512_set1_ps(pad), tail_mask(n), p);
}
inline VF load_tail(const Half* p, int n, float pad) {
  const VF v = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(tail_mask(n), p));
  return _mm512_mask_blend_ps(tail_mask(n), _mm512_set1_ps(pad), v);
}
inline VF load_tail(const BFloat16* p, int n, float pad) {
  const VF v = widen_bf16(_mm256_maskz_loadu_epi16(tail_mask(n), p));
  return _mm512_mask_blend_ps(tail_mask(n), _mm512_set1_ps(pad), v);
}
inline void store_tail(float* p, int n, VF v) { _mm512_mask_storeu_ps(p, tail_mask(n), v); }
inline void store_tail(Half* p, int n, VF v) {
  _mm256_mask_storeu_epi16(p, tail_mask(n), _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
inline void store_tail(BFloat16* p, int n, VF v) { _mm256_mask_storeu_epi16(p, tail_mask(n), narrow_bf16(v)); }

inline VF add(VF a, VF b) { return _mm512_add_ps(a, b); }
inline VF sub(VF a, VF b) { return _mm512_sub_ps(a, b); }
inline VF mul(VF a, VF b) { return _mm512_mul_ps(a, b); }
inline VF div(VF a, VF b) { return _mm512_div_ps(a, b); }
inline VF vmax(VF a, VF b) { return _mm512_max_ps(a, b); }
inline VF vmin(VF a, VF b) { return _mm512_min_ps(a, b); }
inline VF fmadd(VF a, VF b, VF c) { return _mm512_fmadd_ps(a, b, c); }
inline VF fnmadd(VF a, VF b, VF c) { return _mm512_fnmadd_ps(a, b, c); }
inline VF round_even(VF v) { return _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
// p * 2^n for an integral n, one rounding (subnormal results, 0 and inf included): VSCALEFPS.
#define SSM_VEC_HAS_SCALEF 1
inline VF scalef(VF p, VF n) { return _mm512_scalef_ps(p, n); }

inline VM lt(VF a, VF b) { return _mm512_cmp_ps_mask(a, b, _CMP_LT_OQ); }
inline VM le(VF a, VF b) { return _mm512_cmp_ps_mask(a, b, _CMP_LE_OQ); }
inline VM gt(VF a, VF b) { return _mm512_cmp_ps_mask(a, b, _CMP_GT_OQ); }
inline VM ge(VF a, VF b) { return _mm512_cmp_ps_mask(a, b, _CMP_GE_OQ); }
inline VM eq(VF a, VF b) { return _mm512_cmp_ps_mask(a, b, _CMP_EQ_OQ); }
inline VM unord(VF a, VF b) { return _mm512_cmp_ps_mask(a, b, _CMP_UNORD_Q); }
inline VM m_or(VM a, VM b) { return VM(a | b); }
inline VM m_and(VM a, VM b) { return VM(a & b); }
inline VM m_andnot(VM a, VM b) { return VM(~a & b); }
inline unsigned mask_bits(VM m) { return unsigned(m); }
inline VF select(VM m, VF a, VF b) { return _mm512_mask_blend_ps(m, b, a); }
inline VF keep(VM m, VF a) { return _mm512_maskz_mov_ps(m, a); }

inline float reduce_max(VF v) {
  const __m256 h = _mm256_max_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
  __m128 q = _mm_max_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
  q = _mm_max_ps(q, _mm_movehl_ps(q, q));
  q = _mm_max_ss(q, _mm_shuffle_ps(q, q, 1));
  return _mm_cvtss_f32(q);
}
inline double reduce_sum(VF v) {
  const __m512d a = _mm512_add_pd(_mm512_cvtps_pd(_mm512_castps512_ps256(v)), _mm512_cvtps_pd(_mm512_extractf32x8_ps(v, 1)));
  const __m256d b = _mm256_add_pd(_mm512_castpd512_pd256(a), _mm512_extractf64x4_pd(a, 1));
  const __m128d s = _mm_add_pd(_mm256_castpd256_pd128(b), _mm256_extractf128_pd(b, 1));
  return _mm_cvtsd_f64(s) + _mm_cvtsd_f64(_mm_unpackhi_pd(s, s));
}

inline VI as_int(VF v) { return _mm512_castps_si512(v); }
inline VF as_float(VI v) { return _mm512_castsi512_ps(v); }
inline VI cvt_int(VF v) { return _mm512_cvtps_epi32(v); }
inline VF cvt_float(VI v) { return _mm512_cvtepi32_ps(v); }
inline VI iadd(VI a, VI b) { return _mm512_add_epi32(a, b); }
inline VI isub(VI a, VI b) { return _mm512_sub_epi32(a, b); }
inline VI ixor(VI a, VI b) { return _mm512_xor_si512(a, b); }
template <int K> inline VI ishl(VI a) { return _mm512_slli_epi32(a, K); }
template <int K> inline VI isra(VI a) { return _mm512_srai_epi32(a, K); }
template <int K> inline VI isrl(VI a) { return _mm512_srli_epi32(a, K); }
inline void mul_hilo(VI a, std::uint32_t m, VI& hi, VI& lo) {
  const __m512i vm = _mm512_set1_epi64(std::int64_t(m));
  const __m512i pe = _mm512_mul_epu32(a, vm), po = _mm512_mul_epu32(_mm512_srli_epi64(a, 32), vm);
  hi = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(pe, 32), po);
  lo = _mm512_mask_blend_epi32(0xAAAA, pe, _mm512_slli_epi64(po, 32));
}
inline VI iota(std::uint32_t base) {
  return _mm512_add_epi32(_mm512_set1_epi32(std::int32_t(base)),
                          _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
}
inline void store_u32(std::uint32_t* p, VI v) { _mm512_storeu_si512(p, v); }

// Called when a kernel returns to code of another ISA: zeroes ZMM16-31 and the upper halves of ZMM0-15.
// The compiler's VZEROUPPER leaves ZMM16-31 (which it allocates freely under AVX-512) dirty, and then
// every later SSE instruction of the thread carries a false dependency: measured here, libm's exp took
// 170 ns instead of 6 ns after an AVX-512 kernel, doubling the softmax time of a 152k row.
inline void leave_isa() {
#if defined(__GNUC__) || defined(__clang__)
  __asm__ __volatile__(
      "vpxord %%zmm16, %%zmm16, %%zmm16\n\tvpxord %%zmm17, %%zmm17, %%zmm17\n\t"
      "vpxord %%zmm18, %%zmm18, %%zmm18\n\tvpxord %%zmm19, %%zmm19, %%zmm19\n\t"
      "vpxord %%zmm20, %%zmm20, %%zmm20\n\tvpxord %%zmm21, %%zmm21, %%zmm21\n\t"
      "vpxord %%zmm22, %%zmm22, %%zmm22\n\tvpxord %%zmm23, %%zmm23, %%zmm23\n\t"
      "vpxord %%zmm24, %%zmm24, %%zmm24\n\tvpxord %%zmm25, %%zmm25, %%zmm25\n\t"
      "vpxord %%zmm26, %%zmm26, %%zmm26\n\tvpxord %%zmm27, %%zmm27, %%zmm27\n\t"
      "vpxord %%zmm28, %%zmm28, %%zmm28\n\tvpxord %%zmm29, %%zmm29, %%zmm29\n\t"
      "vpxord %%zmm30, %%zmm30, %%zmm30\n\tvpxord %%zmm31, %%zmm31, %%zmm31\n\t"
      "vzeroupper" ::: "xmm16", "xmm17", "xmm18", "xmm19", "xmm20", "xmm21", "xmm22", "xmm23", "xmm24", "xmm25",
      "xmm26", "xmm27", "xmm28", "xmm29", "xmm30", "xmm31", "memory");
#endif
}

}  // namespace avx512
}  // namespace ssm
#endif

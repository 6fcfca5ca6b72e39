// The vector layer for AArch64 Advanced SIMD (NEON): 4 float32 lanes. Same API and semantics as
// vec_avx2.h (documented there). Notes on where NEON differs from x86 and what is done about it:
//   - float16: FCVTL / FCVTN (vcvt_f32_f16 / vcvt_f16_f32) widen exactly and narrow with the FPCR
//     rounding mode, which Linux and macOS leave at round-to-nearest-even with no flush to zero (FZ,
//     FZ16 and DN clear): subnormals are kept, overflow gives inf, a NaN stays a quiet NaN (its payload
//     truncated, as VCVTPS2PH does).
//   - bfloat16 narrows in integer arithmetic exactly as vec_avx2.h (BFCVTN is not baseline AArch64).
//   - FMAX / FMIN propagate NaN and order -0 < +0; x86 MAXPS / MINPS return the second operand when
//     either is NaN or both are zero, so vmax / vmin are a compare and a select to behave the same.
//   - cvt_int rounds to nearest even (FCVTNS); out of range it saturates where x86 gives INT_MIN
//     (the kernels convert only values in range).
//   - VI is int32x4_t and VM uint32x4_t (distinct types, like __m256i / __m256 on AVX2).
#pragma once

#if defined(__aarch64__) && defined(__ARM_NEON)
#define SSM_VEC_NEON 1
#include <arm_neon.h>

#include <cstdint>
#include <cstring>

#include "softmax.h"

namespace ssm {
namespace neon {

constexpr int kLanes = 4;
using VF = float32x4_t;
using VI = int32x4_t;
using VM = uint32x4_t;

inline VF vset(float f) { return vdupq_n_f32(f); }
inline VF vzero() { return vdupq_n_f32(0.0f); }
inline VI iset(std::int32_t i) { return vdupq_n_s32(i); }

inline uint32x4_t lane_index() {
  static const std::uint32_t idx[kLanes] = {0, 1, 2, 3};
  return vld1q_u32(idx);
}

inline VF load(const float* p) { return vld1q_f32(p); }
inline VF load(const Half* p) {
  return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(reinterpret_cast<const std::uint16_t*>(p))));
}
inline VF load(const BFloat16* p) {
  return vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(reinterpret_cast<const std::uint16_t*>(p)), 16));
}
inline void store(float* p, VF v) { vst1q_f32(p, v); }
inline void store(Half* p, VF v) {
  vst1_u16(reinterpret_cast<std::uint16_t*>(p), vreinterpret_u16_f16(vcvt_f16_f32(v)));
}
inline void store(BFloat16* p, VF v) {
  const uint32x4_t b = vreinterpretq_u32_f32(v);
  const uint32x4_t lsb = vandq_u32(vshrq_n_u32(b, 16), vdupq_n_u32(1));
  const uint32x4_t rounded = vaddq_u32(b, vaddq_u32(lsb, vdupq_n_u32(0x7fff)));
  const uint32x4_t quiet = vorrq_u32(b, vdupq_n_u32(0x400000));
  const uint32x4_t isnan = vmvnq_u32(vceqq_f32(v, v));
  vst1_u16(reinterpret_cast<std::uint16_t*>(p), vshrn_n_u32(vbslq_u32(isnan, quiet, rounded), 16));
}

inline VM tail_mask(int n) { return vcltq_u32(lane_index(), vdupq_n_u32(std::uint32_t(n))); }
template <class T> inline VF load_tail(const T* p, int n, float pad) {
  alignas(16) T buf[kLanes] = {};
  std::memcpy(buf, p, std::size_t(n) * sizeof(T));
  return vbslq_f32(tail_mask(n), load(buf), vdupq_n_f32(pad));
}
template <class T> inline void store_tail(T* p, int n, VF v) {
  alignas(16) T buf[kLanes];
  store(buf, v);
  std::memcpy(p, buf, std::size_t(n) * sizeof(T));
}

inline VF add(VF a, VF b) { return vaddq_f32(a, b); }
inline VF sub(VF a, VF b) { return vsubq_f32(a, b); }
inline VF mul(VF a, VF b) { return vmulq_f32(a, b); }
inline VF div(VF a, VF b) { return vdivq_f32(a, b); }
inline VF vmax(VF a, VF b) { return vbslq_f32(vcgtq_f32(a, b), a, b); }  // a > b ? a : b (x86 MAXPS)
inline VF vmin(VF a, VF b) { return vbslq_f32(vcltq_f32(a, b), a, b); }  // a < b ? a : b (x86 MINPS)
inline VF fmadd(VF a, VF b, VF c) { return vfmaq_f32(c, a, b); }
inline VF fnmadd(VF a, VF b, VF c) { return vfmsq_f32(c, a, b); }
inline VF round_even(VF v) { return vrndnq_f32(v); }

inline VM lt(VF a, VF b) { return vcltq_f32(a, b); }
inline VM le(VF a, VF b) { return vcleq_f32(a, b); }
inline VM gt(VF a, VF b) { return vcgtq_f32(a, b); }
inline VM ge(VF a, VF b) { return vcgeq_f32(a, b); }
inline VM eq(VF a, VF b) { return vceqq_f32(a, b); }
inline VM unord(VF a, VF b) { return vmvnq_u32(vandq_u32(vceqq_f32(a, a), vceqq_f32(b, b))); }
inline VM m_or(VM a, VM b) { return vorrq_u32(a, b); }
inline VM m_and(VM a, VM b) { return vandq_u32(a, b); }
inline VM m_andnot(VM a, VM b) { return vbicq_u32(b, a); }
inline unsigned mask_bits(VM m) {
  static const std::uint32_t bit[kLanes] = {1, 2, 4, 8};
  return unsigned(vaddvq_u32(vandq_u32(m, vld1q_u32(bit))));
}
inline VF select(VM m, VF a, VF b) { return vbslq_f32(m, a, b); }
inline VF keep(VM m, VF a) { return vreinterpretq_f32_u32(vandq_u32(m, vreinterpretq_u32_f32(a))); }

inline float reduce_max(VF v) { return vmaxvq_f32(v); }
inline double reduce_sum(VF v) {  // (v0 + v2) + (v1 + v3), as vec_scalar.h
  const float64x2_t s = vaddq_f64(vcvt_f64_f32(vget_low_f32(v)), vcvt_high_f64_f32(v));
  return vgetq_lane_f64(s, 0) + vgetq_lane_f64(s, 1);
}

inline VI as_int(VF v) { return vreinterpretq_s32_f32(v); }
inline VF as_float(VI v) { return vreinterpretq_f32_s32(v); }
inline VI cvt_int(VF v) { return vcvtnq_s32_f32(v); }
inline VF cvt_float(VI v) { return vcvtq_f32_s32(v); }
inline VI iadd(VI a, VI b) { return vaddq_s32(a, b); }
inline VI isub(VI a, VI b) { return vsubq_s32(a, b); }
inline VI ixor(VI a, VI b) { return veorq_s32(a, b); }
template <int K> inline VI ishl(VI a) { return vshlq_n_s32(a, K); }
template <int K> inline VI isra(VI a) {
  if constexpr (K == 0) return a; else return vshrq_n_s32(a, K);
}
template <int K> inline VI isrl(VI a) {
  if constexpr (K == 0) return a; else return vreinterpretq_s32_u32(vshrq_n_u32(vreinterpretq_u32_s32(a), K));
}
inline void mul_hilo(VI a, std::uint32_t m, VI& hi, VI& lo) {
  const uint32x4_t u = vreinterpretq_u32_s32(a);
  const uint32x4_t p01 = vreinterpretq_u32_u64(vmull_u32(vget_low_u32(u), vdup_n_u32(m)));
  const uint32x4_t p23 = vreinterpretq_u32_u64(vmull_high_u32(u, vdupq_n_u32(m)));
  lo = vreinterpretq_s32_u32(vuzp1q_u32(p01, p23));  // the even 32-bit words: low halves
  hi = vreinterpretq_s32_u32(vuzp2q_u32(p01, p23));
}
inline VI iota(std::uint32_t base) { return vreinterpretq_s32_u32(vaddq_u32(vdupq_n_u32(base), lane_index())); }
inline void store_u32(std::uint32_t* p, VI v) { vst1q_u32(p, vreinterpretq_u32_s32(v)); }
// Called when a kernel returns to code of another ISA (vec_avx512.h needs it; nothing to do here).
inline void leave_isa() {}

}  // namespace neon
}  // namespace ssm
#endif

// The vector layer in portable C++ (the "scalar" ISA, built on every platform): 4 float32 lanes held in
// arrays, each operation a loop the compiler may vectorise with whatever the baseline ISA offers. Same
// API and semantics as vec_avx2.h (documented there); fmadd/fnmadd are written a*b + c, not std::fma
// (a software fma is slow where the baseline has no FMA instruction); the compiler contracts them into
// one fused instruction where the baseline has one (aarch64), so the rounding is the target's.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "softmax.h"

namespace ssm {
namespace scalar {

constexpr int kLanes = 4;
struct VF { float v[kLanes]; };
struct VI { std::uint32_t v[kLanes]; };
struct VM { bool v[kLanes]; };

#define SSM_LANES for (int l = 0; l < kLanes; ++l)

SSM_VEC_INLINE VF vset(float f) { VF r; SSM_LANES r.v[l] = f; return r; }
SSM_VEC_INLINE VF vzero() { return vset(0.0f); }
SSM_VEC_INLINE VI iset(std::int32_t i) { VI r; SSM_LANES r.v[l] = std::uint32_t(i); return r; }

SSM_VEC_INLINE float to_float(const float* p) { return *p; }
SSM_VEC_INLINE float to_float(const Half* p) { return half_to_float(p->bits); }
SSM_VEC_INLINE float to_float(const BFloat16* p) { return bf16_to_float(p->bits); }
template <class T> SSM_VEC_INLINE VF load(const T* p) { VF r; SSM_LANES r.v[l] = to_float(p + l); return r; }
template <class T> SSM_VEC_INLINE void store(T* p, VF v) { SSM_LANES store_from(p + l, v.v[l]); }
template <class T> SSM_VEC_INLINE VF load_tail(const T* p, int n, float pad) {
  VF r;
  SSM_LANES r.v[l] = l < n ? to_float(p + l) : pad;
  return r;
}
template <class T> SSM_VEC_INLINE void store_tail(T* p, int n, VF v) {
  for (int l = 0; l < n; ++l) store_from(p + l, v.v[l]);
}

#define SSM_BINARY(name, expr)                     \
  SSM_VEC_INLINE VF name(VF a, VF b) {                     \
    VF r;                                          \
    SSM_LANES { const float x = a.v[l], y = b.v[l]; r.v[l] = (expr); } \
    return r;                                      \
  }
SSM_BINARY(add, x + y)
SSM_BINARY(sub, x - y)
SSM_BINARY(mul, x * y)
SSM_BINARY(div, x / y)
SSM_BINARY(vmax, x > y ? x : y)  // NaN in either: y (as x86 maxps)
SSM_BINARY(vmin, x < y ? x : y)
#undef SSM_BINARY
SSM_VEC_INLINE VF fmadd(VF a, VF b, VF c) { VF r; SSM_LANES r.v[l] = a.v[l] * b.v[l] + c.v[l]; return r; }
SSM_VEC_INLINE VF fnmadd(VF a, VF b, VF c) { VF r; SSM_LANES r.v[l] = c.v[l] - a.v[l] * b.v[l]; return r; }
SSM_VEC_INLINE VF round_even(VF a) { VF r; SSM_LANES r.v[l] = std::nearbyint(a.v[l]); return r; }

#define SSM_COMPARE(name, expr)                    \
  SSM_VEC_INLINE VM name(VF a, VF b) {             \
    VM r;                                          \
    SSM_LANES { const float x = a.v[l], y = b.v[l]; r.v[l] = (expr); } \
    return r;                                      \
  }
SSM_COMPARE(lt, x < y)
SSM_COMPARE(le, x <= y)
SSM_COMPARE(gt, x > y)
SSM_COMPARE(ge, x >= y)
SSM_COMPARE(eq, x == y)
SSM_COMPARE(unord, x != x || y != y)
#undef SSM_COMPARE
SSM_VEC_INLINE VM m_or(VM a, VM b) { VM r; SSM_LANES r.v[l] = a.v[l] || b.v[l]; return r; }
SSM_VEC_INLINE VM m_and(VM a, VM b) { VM r; SSM_LANES r.v[l] = a.v[l] && b.v[l]; return r; }
SSM_VEC_INLINE VM m_andnot(VM a, VM b) { VM r; SSM_LANES r.v[l] = !a.v[l] && b.v[l]; return r; }
SSM_VEC_INLINE unsigned mask_bits(VM m) { unsigned b = 0; SSM_LANES b |= unsigned(m.v[l]) << l; return b; }
SSM_VEC_INLINE VM tail_mask(int n) { VM r; SSM_LANES r.v[l] = l < n; return r; }
SSM_VEC_INLINE VF select(VM m, VF a, VF b) { VF r; SSM_LANES r.v[l] = m.v[l] ? a.v[l] : b.v[l]; return r; }
SSM_VEC_INLINE VF keep(VM m, VF a) { VF r; SSM_LANES r.v[l] = m.v[l] ? a.v[l] : 0.0f; return r; }

SSM_VEC_INLINE float reduce_max(VF v) { float m = v.v[0]; for (int l = 1; l < kLanes; ++l) m = v.v[l] > m ? v.v[l] : m; return m; }
SSM_VEC_INLINE double reduce_sum(VF v) { return (double(v.v[0]) + double(v.v[2])) + (double(v.v[1]) + double(v.v[3])); }

SSM_VEC_INLINE VI as_int(VF a) { VI r; std::memcpy(r.v, a.v, sizeof r.v); return r; }
SSM_VEC_INLINE VF as_float(VI a) { VF r; std::memcpy(r.v, a.v, sizeof r.v); return r; }
SSM_VEC_INLINE VI cvt_int(VF a) { VI r; SSM_LANES r.v[l] = std::uint32_t(std::int32_t(std::lrint(a.v[l]))); return r; }
SSM_VEC_INLINE VF cvt_float(VI a) { VF r; SSM_LANES r.v[l] = float(std::int32_t(a.v[l])); return r; }
SSM_VEC_INLINE VI iadd(VI a, VI b) { VI r; SSM_LANES r.v[l] = a.v[l] + b.v[l]; return r; }
SSM_VEC_INLINE VI isub(VI a, VI b) { VI r; SSM_LANES r.v[l] = a.v[l] - b.v[l]; return r; }
SSM_VEC_INLINE VI ixor(VI a, VI b) { VI r; SSM_LANES r.v[l] = a.v[l] ^ b.v[l]; return r; }
template <int K> SSM_VEC_INLINE VI ishl(VI a) { VI r; SSM_LANES r.v[l] = a.v[l] << K; return r; }
template <int K> SSM_VEC_INLINE VI isra(VI a) { VI r; SSM_LANES r.v[l] = std::uint32_t(std::int32_t(a.v[l]) >> K); return r; }
template <int K> SSM_VEC_INLINE VI isrl(VI a) { VI r; SSM_LANES r.v[l] = a.v[l] >> K; return r; }
SSM_VEC_INLINE void mul_hilo(VI a, std::uint32_t m, VI& hi, VI& lo) {
  SSM_LANES {
    const std::uint64_t p = std::uint64_t(a.v[l]) * m;
    hi.v[l] = std::uint32_t(p >> 32);
    lo.v[l] = std::uint32_t(p);
  }
}
SSM_VEC_INLINE VI iota(std::uint32_t base) { VI r; SSM_LANES r.v[l] = base + std::uint32_t(l); return r; }
SSM_VEC_INLINE void store_u32(std::uint32_t* p, VI v) { std::memcpy(p, v.v, sizeof v.v); }
// Called when a kernel returns to code of another ISA (vec_avx512.h needs it; nothing to do here).
SSM_VEC_INLINE void leave_isa() {}

#undef SSM_LANES

}  // namespace scalar
}  // namespace ssm

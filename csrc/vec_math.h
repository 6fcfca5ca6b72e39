// Vector exp and Philox written once against the vector layer (vec_avx2.h documents its API).
// Included by isa_kernels.h inside namespace ssm::SSM_ISA, after that ISA's vec_<isa>.h.
#pragma once

namespace ssm {
namespace SSM_ISA {

// e^r = sum_k r^k / k! for k <= Degree, by Horner's rule.
template <int Degree> SSM_VEC_INLINE VF exp_taylor(VF r) {
  float inv_fact[Degree + 1];
  inv_fact[0] = 1.0f;
  for (int k = 1; k <= Degree; ++k) inv_fact[k] = inv_fact[k - 1] / float(k);
  VF p = vset(inv_fact[Degree]);
  for (int k = Degree - 1; k >= 0; --k) p = fmadd(p, r, vset(inv_fact[k]));
  return p;
}

// e^r on |r| <= ln2/2 for softmax values stored as float16 / bfloat16: a degree-4 polynomial, minimax in
// relative error with p(0) = 1 exactly, < 2.9e-6 relative after float32 rounding. Their smallest relative
// half-ulp is 2^-12 (float16) and 2^-9 (bfloat16), 85 and 670 times larger, so the stored value is within
// the SPEC's one ulp of the correctly rounded one; on AVX-512 it saves two of the ~19 vector uops per 16
// entries of a float16 softmax, which is bound by those uops, not by memory.
SSM_VEC_INLINE VF exp_narrow_poly(VF r) {
  VF p = vset(0.041513849049806595f);
  p = fmadd(p, r, vset(0.16787473857402802f));
  p = fmadd(p, r, vset(0.5000301599502563f));
  p = fmadd(p, r, vset(0.9999668598175049f));
  return fmadd(p, r, vset(1.0f));
}

// e^r on |r| <= ln2/2: the Taylor polynomial of degree kDegree, or exp_narrow_poly for kDegree == 4.
template <int kDegree> SSM_VEC_INLINE VF exp_poly(VF r) {
  if constexpr (kDegree == 4) return exp_narrow_poly(r);
  else return exp_taylor<kDegree>(r);
}

// x - n * ln2 for an integral n, with |result| <= ln2 / 2 (two-constant Cody-Waite: n * hi is exact).
SSM_VEC_INLINE VF reduce_ln2(VF x, VF n) {
  const VF r = fnmadd(n, vset(0.693145751953125f), x);
  return fnmadd(n, vset(1.42860682030941723e-06f), r);
}

// p * 2^n for an integral n in [-150, 128], as p * 2^a * 2^b with a + b = n: both factors are normal numbers,
// so the first product is exact and only the last one rounds (also when the result is subnormal).
SSM_VEC_INLINE VF scale_pow2(VF p, VF n) {
#if defined(SSM_VEC_HAS_SCALEF)
  return scalef(p, n);
#else
  const VI ni = cvt_int(n);
  const VI a = isra<1>(ni);
  const VI b = isub(ni, a);
  const VI bias = iset(127);
  return mul(mul(p, as_float(ishl<23>(iadd(a, bias)))), as_float(ishl<23>(iadd(b, bias))));
#endif
}

// Lanes whose exponential is 0 (or does not matter) are scaled by 2^0 and then zeroed, never by the 2^n that
// would underflow: an underflowing multiply or VSCALEFPS takes a microcode assist (~150 cycles on Intel) per
// instruction with such a lane, and masked rows (-inf, or finfo.min, in every vector of a causal attention
// mask) made softmax 4x slower than torch's on AVX-512.

// exp(x), ~1-2 ulp over the whole range, subnormal results exact-rounded: x = n*ln2 + r, e^r by a
// degree-7 Taylor polynomial (truncation < 1e-8 relative), then e^r * 2^a * 2^b with a + b = n: both
// factors are normal numbers, so the first product is exact and only the last one rounds (also when the
// result is subnormal). x < -104 gives 0 (exp(-104) is below half the smallest subnormal), -inf -> 0,
// x >= 88.8 gives inf, NaN stays NaN (vmin/vmax return their second operand when it is NaN; lt is false
// for NaN). kDegree = 4 takes exp_narrow_poly instead (bfloat16 softmax values).
template <int kDegree = 7> SSM_VEC_INLINE VF exp_exact(VF x) {
  const VM zero = lt(x, vset(-104.0f));
  x = vmin(vset(88.8f), x);
  x = vmax(vset(-104.0f), x);
  const VF n = round_even(mul(x, vset(1.44269504088896341f)));
  return select(zero, vzero(), scale_pow2(exp_poly<kDegree>(reduce_ln2(x, n)), select(zero, vzero(), n)));
}

// exp for values that end in a sum, a float32 output or a float16 output, where results below 2^-125 do
// not matter (float32: under the absolute error bound; float16: they round to 0; sums: negligible):
// x < -86.5 gives 0 (as does -inf), e^r by a degree-6 Taylor polynomial on |r| <= ln2/2 (truncation
// < 1.3e-7 relative, ~2-3 ulp in all), then 2^n (n >= -125: the result is a normal number). Meant for x <= 0
// (x - row max); x up to 88 still works. NaN lanes give 0: callers detect NaN rows before they
// exponentiate. 2^n goes into the exponent bits in one integer add, or, where the ISA scales in one
// instruction (SSM_VEC_HAS_SCALEF: AVX-512's VSCALEFPS), by that: the same value either way.
// kDegree = 4 takes exp_narrow_poly instead (float16 softmax values).
template <int kDegree = 6> SSM_VEC_INLINE VF exp_ftz(VF x) {
  const VM in_range = ge(x, vset(-86.5f));
  x = vmax(x, vset(-86.5f));
  const VF shift = vset(12582912.0f);  // 1.5 * 2^23: n lands in the low mantissa bits
  const VF t = fmadd(x, vset(1.44269504088896341f), shift);
  const VF n = sub(t, shift);
  const VF p = exp_poly<kDegree>(reduce_ln2(x, n));
#if defined(SSM_VEC_HAS_SCALEF)
  return keep(in_range, scale_pow2(p, n));
#else
  return keep(in_range, as_float(iadd(as_int(p), ishl<23>(as_int(t)))));
#endif
}

// The sampling kernels' exp (every path of one ISA uses this one, so the block sums, the rescans and
// the candidate weights agree): ~1 ulp (Cephes-style degree-7 polynomial on r in [-ln2/2, ln2/2]).
// Vectors with every lane in [-86, 88] take the fast form (2^n through the exponent bits); others take
// exp_sampling_wide: subnormal results via a two-step scale, 0 below kZCut (so -inf -> 0) and 0 for NaN,
// those lanes scaled by 2^0 before they are zeroed (see the note above exp_exact).
constexpr float kZCut = -103.97f;  // exp(z) > 0 in float32 exactly when z >= kZCut (this exp)

SSM_VEC_INLINE VF exp_sampling_poly(VF r) {
  VF p = vset(1.9875691500e-4f);
  p = fmadd(p, r, vset(1.3981999507e-3f));
  p = fmadd(p, r, vset(8.3334519073e-3f));
  p = fmadd(p, r, vset(4.1665795894e-2f));
  p = fmadd(p, r, vset(1.6666665459e-1f));
  p = fmadd(p, r, vset(5.0000001201e-1f));
  return fmadd(p, mul(r, r), add(r, vset(1.0f)));
}

#if defined(__GNUC__)
__attribute__((noinline))
#endif
inline VF exp_sampling_wide(VF x) {
  const VF xc = vmin(vmax(x, vset(-104.0f)), vset(88.7228f));
  const VF n = round_even(mul(xc, vset(1.44269504088896341f)));
  VF r = fnmadd(n, vset(0.693359375f), xc);
  r = fnmadd(n, vset(-2.12194440e-4f), r);
  const VM live = ge(x, vset(kZCut));  // (NaN: false) dead lanes are scaled by 2^0, then zeroed: no assist
  return keep(live, scale_pow2(exp_sampling_poly(r), keep(live, n)));
}

// kNonPos: the caller guarantees x <= 0 (or -inf / NaN), which saves the upper range check.
template <bool kNonPos = false> SSM_VEC_INLINE VF exp_sampling(VF x) {
  VM out = m_or(lt(x, vset(-86.0f)), unord(x, x));
  if (!kNonPos) out = m_or(out, gt(x, vset(88.0f)));
  if (__builtin_expect(mask_bits(out) != 0, 0)) return exp_sampling_wide(x);
  const VF shift = vset(12582912.0f);  // 1.5 * 2^23: rounds to an integer in the low bits
  const VF t = fmadd(x, vset(1.44269504088896341f), shift);
  const VF n = sub(t, shift);
  VF r = fnmadd(n, vset(0.693359375f), x);
  r = fnmadd(n, vset(-2.12194440e-4f), r);
  const VF y = exp_sampling_poly(r);
  return as_float(iadd(as_int(y), ishl<23>(as_int(t))));
}

// Philox4x32-10 on kLanes counters at once (lane k holds counter k's words); the rounds of philox4x32_10.
SSM_VEC_INLINE void philox_lanes(std::uint64_t key, VI& x0, VI& x1, VI& x2, VI& x3) {
  std::uint32_t k0 = std::uint32_t(key), k1 = std::uint32_t(key >> 32);
  for (int round = 0; round < 10; ++round) {
    VI hi0, lo0, hi1, lo1;
    mul_hilo(x0, 0xD2511F53u, hi0, lo0);
    mul_hilo(x2, 0xCD9E8D57u, hi1, lo1);
    x0 = ixor(ixor(hi1, x1), iset(std::int32_t(k0)));
    x2 = ixor(ixor(hi0, x3), iset(std::int32_t(k1)));
    x1 = lo1;
    x3 = lo0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
}

}  // namespace SSM_ISA
}  // namespace ssm

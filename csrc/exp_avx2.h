// Vector exp shared by the AVX2 translation units (softmax_avx2.cpp, sampling_avx2.cpp).
// Include only where __AVX2__, __FMA__ and __F16C__ are defined.
#pragma once

#include <immintrin.h>

namespace ssm {

// e^r = sum_k r^k / k! for k <= Degree, by Horner's rule with FMA.
template <int Degree> inline __m256 exp_taylor(__m256 r) {
  float inv_fact[Degree + 1];
  inv_fact[0] = 1.0f;
  for (int k = 1; k <= Degree; ++k) inv_fact[k] = inv_fact[k - 1] / float(k);
  __m256 p = _mm256_set1_ps(inv_fact[Degree]);
  for (int k = Degree - 1; k >= 0; --k) p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(inv_fact[k]));
  return p;
}

// x - n * ln2 for an integral n, with |result| <= ln2 / 2 (two-constant Cody-Waite: n * hi is exact).
inline __m256 reduce_ln2(__m256 x, __m256 n) {
  const __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145751953125f), x);
  return _mm256_fnmadd_ps(n, _mm256_set1_ps(1.42860682030941723e-06f), r);
}

// exp(x) for float32 lanes, ~1-2 ulp over the whole range, subnormal results exact-rounded:
// x = n*ln2 + r, e^r by a degree-7 Taylor polynomial (truncation < 1e-8 relative), then
// e^r * 2^a * 2^b with a + b = n: both factors are normal numbers, so the first product is exact
// and only the last one rounds (also when the result is subnormal). x <= -104 gives 0 (exp(-104)
// is below half the smallest subnormal), -inf -> 0, x >= 88.8 gives inf, NaN stays NaN (min/max
// return their second operand when it is NaN).
inline __m256 exp256(__m256 x) {
  x = _mm256_min_ps(_mm256_set1_ps(88.8f), x);
  x = _mm256_max_ps(_mm256_set1_ps(-104.0f), x);
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m256 p = exp_taylor<7>(reduce_ln2(x, n));
  const __m256i ni = _mm256_cvtps_epi32(n);
  const __m256i a = _mm256_srai_epi32(ni, 1);
  const __m256i b = _mm256_sub_epi32(ni, a);
  const __m256i bias = _mm256_set1_epi32(127);
  const __m256 sa = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(a, bias), 23));
  const __m256 sb = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(b, bias), 23));
  return _mm256_mul_ps(_mm256_mul_ps(p, sa), sb);
}

// exp for values that end in a sum, a float32 output or a float16 output, where results below
// 2^-125 do not matter (float32: under the absolute error bound; float16: they round to 0; sums:
// negligible): x < -86.5 gives 0 (as does -inf), e^r by a degree-6 Taylor polynomial on
// |r| <= ln2/2 (truncation < 1.3e-7 relative, ~2-3 ulp in all), 2^n added to the exponent bits in
// one step. Meant for x <= 0 (x - row max); x up to 88 still works. NaN lanes give 0: callers
// detect NaN rows before they exponentiate.
inline __m256 exp256_ftz(__m256 x) {
  const __m256 keep = _mm256_cmp_ps(x, _mm256_set1_ps(-86.5f), _CMP_GE_OQ);
  x = _mm256_max_ps(x, _mm256_set1_ps(-86.5f));
  const __m256 shift = _mm256_set1_ps(12582912.0f);  // 1.5 * 2^23: n lands in the low mantissa bits
  const __m256 t = _mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), shift);
  const __m256 p = exp_taylor<6>(reduce_ln2(x, _mm256_sub_ps(t, shift)));
  const __m256i scaled = _mm256_add_epi32(_mm256_castps_si256(p), _mm256_slli_epi32(_mm256_castps_si256(t), 23));
  return _mm256_and_ps(_mm256_castsi256_ps(scaled), keep);
}

}  // namespace ssm

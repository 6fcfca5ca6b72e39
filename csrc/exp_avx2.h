// Vector exp shared by the AVX2 translation units (softmax_avx2.cpp, sampling_avx2.cpp).
// Include only where __AVX2__, __FMA__ and __F16C__ are defined.
#pragma once

#include <immintrin.h>

namespace ssm {

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
  const __m256 n = _mm256_sub_ps(t, shift);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145751953125f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.42860682030941723e-06f), r);
  __m256 p = _mm256_set1_ps(1.0f / 720);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  const __m256i scaled = _mm256_add_epi32(_mm256_castps_si256(p), _mm256_slli_epi32(_mm256_castps_si256(t), 23));
  return _mm256_and_ps(_mm256_castsi256_ps(scaled), keep);
}

}  // namespace ssm

// AVX2 + FMA + F16C row kernels (float32 accumulation). This file alone is compiled with
// -mavx2 -mfma -mf16c; without those flags it compiles to stubs returning null kernels.
#include "softmax.h"

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)

#include <immintrin.h>

#include "exp_avx2.h"

#include <algorithm>
#include <type_traits>

namespace ssm {
namespace avx2 {
namespace {

// ---- 8-lane loads / stores of each storage type (exact widening, RNE narrowing) ----
inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const Half* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
inline __m256 load8(const BFloat16* p) {
  const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
}
inline void store8(float* p, __m256 v) { _mm256_storeu_ps(p, v); }
inline void store8(Half* p, __m256 v) {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
inline void store8(BFloat16* p, __m256 v) {
  // bf16 = round-to-nearest-even of the top 16 bits; NaN is forced to a quiet NaN instead.
  const __m256i b = _mm256_castps_si256(v);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(b, 16), _mm256_set1_epi32(1));
  const __m256i rounded = _mm256_add_epi32(b, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff)));
  const __m256i quiet = _mm256_or_si256(b, _mm256_set1_epi32(0x400000));
  const __m256i isnan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  const __m256i h = _mm256_srli_epi32(_mm256_blendv_epi8(rounded, quiet, isnan), 16);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p),
                   _mm_packus_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1)));
}

// Partial vectors (n < 8): go through a small buffer; missing lanes read as 0.
template <class T> inline __m256 load_tail(const T* p, std::int64_t n) {
  alignas(32) T buf[8] = {};
  std::memcpy(buf, p, std::size_t(n) * sizeof(T));
  return load8(buf);
}
template <class T> inline void store_tail(T* p, std::int64_t n, __m256 v) {
  alignas(32) T buf[8];
  store8(buf, v);
  std::memcpy(p, buf, std::size_t(n) * sizeof(T));
}
inline __m256 tail_mask(std::int64_t n) {
  return _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(int(n)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)));
}

// exp for values written to (or staged for) an output of type Out: bfloat16 outputs keep exp256,
// whose subnormal results they can represent; the others take exp256_ftz (exp_avx2.h).
template <class Out> inline __m256 exp_for(__m256 x) {
  if constexpr (std::is_same<Out, BFloat16>::value) return exp256(x);
  else return exp256_ftz(x);
}

inline double hsum(__m256d v) {
  const __m128d s = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
  return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
}

// sum_i f(xs_i...) over n elements. Four independent float32 accumulators over blocks of 512
// elements (16 additions per lane), block sums added in double: no drift over long rows.
// When `side` is non-null the terms are also stored there.
template <class F, class... Ts>
double reduce8(std::int64_t n, float* side, F f, const Ts*... xs) {
  __m256d total = _mm256_setzero_pd();
  std::int64_t i = 0;
  auto fold = [&](__m256 s) {
    total = _mm256_add_pd(total, _mm256_cvtps_pd(_mm256_castps256_ps128(s)));
    total = _mm256_add_pd(total, _mm256_cvtps_pd(_mm256_extractf128_ps(s, 1)));
  };
  while (i + 8 <= n) {
    const std::int64_t end = std::min(n, i + 512);
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    for (; i + 32 <= end; i += 32) {
      for (int u = 0; u < 4; ++u) {
        const __m256 t = f(load8(xs + i + 8 * u)...);
        if (side) _mm256_storeu_ps(side + i + 8 * u, t);
        acc[u] = _mm256_add_ps(acc[u], t);
      }
    }
    for (; i + 8 <= end; i += 8) {
      const __m256 t = f(load8(xs + i)...);
      if (side) _mm256_storeu_ps(side + i, t);
      acc[0] = _mm256_add_ps(acc[0], t);
    }
    fold(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
  }
  if (i < n) {
    const __m256 t = _mm256_and_ps(f(load_tail(xs + i, n - i)...), tail_mask(n - i));
    if (side) store_tail(side + i, n - i, t);
    fold(t);
  }
  return hsum(total);
}

// out_i = f(xs_i...) for n elements.
template <class O, class F, class... Ts>
void map8(std::int64_t n, O* out, F f, const Ts*... xs) {
  std::int64_t i = 0;
  for (; i + 8 <= n; i += 8) store8(out + i, f(load8(xs + i)...));
  if (i < n) store_tail(out + i, n - i, f(load_tail(xs + i, n - i)...));
}

// ---- forward ----
template <class In> double max_k(const void* xv, std::int64_t n) {
  const In* x = static_cast<const In*>(xv);
  const __m256 ninf = _mm256_set1_ps(-INFINITY);
  __m256 acc[4] = {ninf, ninf, ninf, ninf};
  __m256 nan = _mm256_setzero_ps();  // max_ps drops NaN operands: NaN lanes are tracked apart
  std::int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    for (int u = 0; u < 4; u += 2) {
      const __m256 a = load8(x + i + 8 * u), b = load8(x + i + 8 * u + 8);
      acc[u] = _mm256_max_ps(acc[u], a);
      acc[u + 1] = _mm256_max_ps(acc[u + 1], b);
      nan = _mm256_or_ps(nan, _mm256_cmp_ps(a, b, _CMP_UNORD_Q));
    }
  }
  for (; i + 8 <= n; i += 8) {
    const __m256 a = load8(x + i);
    acc[0] = _mm256_max_ps(acc[0], a);
    nan = _mm256_or_ps(nan, _mm256_cmp_ps(a, a, _CMP_UNORD_Q));
  }
  if (i < n) {
    const __m256 a = _mm256_blendv_ps(ninf, load_tail(x + i, n - i), tail_mask(n - i));
    acc[0] = _mm256_max_ps(acc[0], a);
    nan = _mm256_or_ps(nan, _mm256_cmp_ps(a, a, _CMP_UNORD_Q));
  }
  if (_mm256_movemask_ps(nan)) return double(NAN);
  __m256 m = _mm256_max_ps(_mm256_max_ps(acc[0], acc[1]), _mm256_max_ps(acc[2], acc[3]));
  __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
  h = _mm_max_ps(h, _mm_movehl_ps(h, h));
  h = _mm_max_ss(h, _mm_shuffle_ps(h, h, 1));
  return double(_mm_cvtss_f32(h));
}

template <class In, class Out> double sum_exp_k(const void* x, std::int64_t n, double c, float* stage) {
  const __m256 vc = _mm256_set1_ps(float(c));
  if (!stage)  // only the sum is needed
    return reduce8(n, nullptr, [vc](__m256 v) { return exp256_ftz(_mm256_sub_ps(v, vc)); }, static_cast<const In*>(x));
  return reduce8(n, stage, [vc](__m256 v) { return exp_for<Out>(_mm256_sub_ps(v, vc)); }, static_cast<const In*>(x));
}

template <class In, class Out> void write_exp_k(const void* x, std::int64_t n, double c, double k, void* out) {
  const __m256 vc = _mm256_set1_ps(float(c)), vk = _mm256_set1_ps(float(k));
  map8(n, static_cast<Out*>(out), [=](__m256 v) { return _mm256_mul_ps(exp_for<Out>(_mm256_sub_ps(v, vc)), vk); },
       static_cast<const In*>(x));
}

template <class In, class Out> void write_log_k(const void* x, std::int64_t n, double c, double k, void* out) {
  const __m256 vc = _mm256_set1_ps(float(c)), vk = _mm256_set1_ps(float(k));
  map8(n, static_cast<Out*>(out), [=](__m256 v) { return _mm256_sub_ps(_mm256_sub_ps(v, vc), vk); },
       static_cast<const In*>(x));
}

template <class Out> void write_scaled_k(const float* stage, std::int64_t n, double k, void* out) {
  const __m256 vk = _mm256_set1_ps(float(k));
  map8(n, static_cast<Out*>(out), [=](__m256 v) { return _mm256_mul_ps(v, vk); }, stage);
}

// One pass over the segment, block by block: each block is read from memory once for its max and
// again from L1 for its exponentials; the running sum is rescaled in double when the max grows.
template <class In, class Out>
void online_k(const void* xv, std::int64_t n, float* stage, float* block_max, double* m_out, double* s_out) {
  const In* x = static_cast<const In*>(xv);
  double m = -INFINITY, s = 0;
  for (std::int64_t b0 = 0, j = 0; b0 < n; b0 += kOnlineBlock, ++j) {
    const std::int64_t len = std::min(kOnlineBlock, n - b0);
    const double bm = max_k<In>(x + b0, len);
    if (std::isnan(bm) || bm == INFINITY) {
      *m_out = bm;
      *s_out = 0;
      return;
    }
    block_max[j] = float(bm);
    if (bm == -INFINITY) {
      if (stage) std::memset(stage + b0, 0, std::size_t(len) * sizeof(float));
      continue;
    }
    const double bs = sum_exp_k<In, Out>(x + b0, len, bm, stage ? stage + b0 : nullptr);
    if (bm > m) {
      s = s * std::exp(m - bm) + bs;
      m = bm;
    } else {
      s += bs * std::exp(bm - m);
    }
  }
  *m_out = m;
  *s_out = s;
}

template <class Out>
void write_blocks_k(const float* stage, const float* block_max, std::int64_t n, double m, double k, void* out) {
  for (std::int64_t b0 = 0, j = 0; b0 < n; b0 += kOnlineBlock, ++j) {
    const double factor = block_max[j] == -INFINITY ? 0.0 : std::exp(double(block_max[j]) - m) * k;
    write_scaled_k<Out>(stage + b0, std::min(kOnlineBlock, n - b0), factor, static_cast<Out*>(out) + b0);
  }
}

template <class In, class Out> const ForwardKernels* forward_table() {
  static const ForwardKernels k = {&max_k<In>, &sum_exp_k<In, Out>, &write_exp_k<In, Out>, &write_log_k<In, Out>,
                                   &write_scaled_k<Out>, &online_k<In, Out>, &write_blocks_k<Out>};
  return &k;
}

// ---- backward ----
template <class Y, class G, bool Log> double reduce_k(const void* y, const void* g, std::int64_t n) {
  const Y* yp = static_cast<const Y*>(y);
  const G* gp = static_cast<const G*>(g);
  if (Log) return reduce8(n, nullptr, [](__m256 gv) { return gv; }, gp);
  return reduce8(n, nullptr, [](__m256 yv, __m256 gv) { return _mm256_mul_ps(yv, gv); }, yp, gp);
}

template <class Y, class G, class O, bool Log>
void bwd_write_k(const void* y, const void* g, std::int64_t n, double d, void* out) {
  const __m256 vd = _mm256_set1_ps(float(d));
  map8(n, static_cast<O*>(out), [vd](__m256 yv, __m256 gv) {
    return Log ? _mm256_fnmadd_ps(exp256(yv), vd, gv) : _mm256_mul_ps(yv, _mm256_sub_ps(gv, vd));
  }, static_cast<const Y*>(y), static_cast<const G*>(g));
}

template <class Y, class G, class O, bool Log> const BackwardKernels* backward_table() {
  static const BackwardKernels k = {&reduce_k<Y, G, Log>, &bwd_write_k<Y, G, O, Log>};
  return &k;
}

// with_dtype restricted to the three float32-accumulated storage types.
template <class F> void with_narrow_dtype(int code, F&& f) {
  switch (code) {
    case kF16: f(static_cast<Half*>(nullptr)); break;
    case kBF16: f(static_cast<BFloat16*>(nullptr)); break;
    default: f(static_cast<float*>(nullptr)); break;
  }
}
template <class P> using Pointee = std::remove_pointer_t<P>;

}  // namespace

const ForwardKernels* forward_kernels(int in_dtype, int out_dtype) {
  if (in_dtype == kF64 || out_dtype == kF64) return nullptr;
  const ForwardKernels* r = nullptr;
  with_narrow_dtype(in_dtype, [&](auto* i) {
    with_narrow_dtype(out_dtype, [&](auto* o) { r = forward_table<Pointee<decltype(i)>, Pointee<decltype(o)>>(); });
  });
  return r;
}

const BackwardKernels* backward_kernels(int y_dtype, int g_dtype, int out_dtype, bool log) {
  if (y_dtype == kF64 || g_dtype == kF64 || out_dtype == kF64) return nullptr;
  const BackwardKernels* r = nullptr;
  with_narrow_dtype(y_dtype, [&](auto* y) {
    with_narrow_dtype(g_dtype, [&](auto* g) {
      with_narrow_dtype(out_dtype, [&](auto* o) {
        using Y = Pointee<decltype(y)>;
        using G = Pointee<decltype(g)>;
        using O = Pointee<decltype(o)>;
        r = log ? backward_table<Y, G, O, true>() : backward_table<Y, G, O, false>();
      });
    });
  });
  return r;
}

}  // namespace avx2
}  // namespace ssm

#else  // built without AVX2/FMA/F16C: no vector kernels

namespace ssm {
namespace avx2 {
const ForwardKernels* forward_kernels(int, int) { return nullptr; }
const BackwardKernels* backward_kernels(int, int, int, bool) { return nullptr; }
}  // namespace avx2
}  // namespace ssm

#endif

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

// Block statistics (softmax_h: BlockStat). Each block is read from memory once for its max and
// again from L1 for its exponentials, E = exp_for<Out> both here and in write_exp_k.
template <class In, class Out>
void stats_k(const void* xv, std::int64_t n, float* stage, BlockStat* st, bool log) {
  const In* x = static_cast<const In*>(xv);
  for (std::int64_t b0 = 0, j = 0; b0 < n; b0 += kBlock, ++j) {
    const std::int64_t len = std::min(kBlock, n - b0);
    const In* xb = x + b0;
    const double bm = max_k<In>(xb, len);
    if (std::isnan(bm)) { st[j] = {bm, 0, 0}; continue; }
    if (bm == INFINITY) {
      double count = 0;
      for (std::int64_t i = 0; i < len; ++i) count += load_as<float>(xb + i) == INFINITY ? 1 : 0;
      st[j] = {bm, count, 0};
      continue;
    }
    if (bm == -INFINITY) {
      st[j] = {bm, 0, 0};
      if (stage) std::memset(stage + b0, 0, std::size_t(len) * sizeof(float));
      continue;
    }
    const __m256 vc = _mm256_set1_ps(float(bm));
    if (!log) {
      st[j] = {bm, 0, reduce8(len, stage ? stage + b0 : nullptr, [vc](__m256 v) { return exp_for<Out>(_mm256_sub_ps(v, vc)); }, xb)};
      continue;
    }
    // log_softmax: entries equal to the max counted apart from the sum of the others.
    const __m256 one = _mm256_set1_ps(1.0f);
    __m256 c0 = _mm256_setzero_ps(), c1 = c0, d0 = c0, d1 = c0;
    std::int64_t i = 0;
    for (; i + 16 <= len; i += 16) {
      const __m256 a = load8(xb + i), b = load8(xb + i + 8);
      const __m256 ea = _mm256_cmp_ps(a, vc, _CMP_EQ_OQ), eb = _mm256_cmp_ps(b, vc, _CMP_EQ_OQ);
      c0 = _mm256_add_ps(c0, _mm256_and_ps(ea, one));
      c1 = _mm256_add_ps(c1, _mm256_and_ps(eb, one));
      d0 = _mm256_add_ps(d0, _mm256_andnot_ps(ea, exp_for<Out>(_mm256_sub_ps(a, vc))));
      d1 = _mm256_add_ps(d1, _mm256_andnot_ps(eb, exp_for<Out>(_mm256_sub_ps(b, vc))));
    }
    for (; i < len; i += 8) {
      const std::int64_t m = std::min<std::int64_t>(8, len - i);
      const __m256 a = m == 8 ? load8(xb + i) : load_tail(xb + i, m);
      const __m256 valid = m == 8 ? _mm256_castsi256_ps(_mm256_set1_epi32(-1)) : tail_mask(m);
      const __m256 ea = _mm256_and_ps(_mm256_cmp_ps(a, vc, _CMP_EQ_OQ), valid);
      c0 = _mm256_add_ps(c0, _mm256_and_ps(ea, one));
      d0 = _mm256_add_ps(d0, _mm256_and_ps(_mm256_andnot_ps(ea, valid), exp_for<Out>(_mm256_sub_ps(a, vc))));
    }
    const __m256 c = _mm256_add_ps(c0, c1), d = _mm256_add_ps(d0, d1);
    st[j] = {bm, hsum(_mm256_add_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(c)), _mm256_cvtps_pd(_mm256_extractf128_ps(c, 1)))),
             hsum(_mm256_add_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(d)), _mm256_cvtps_pd(_mm256_extractf128_ps(d, 1))))};
  }
}

template <class In, class Out>
void write_exp_k(const void* xv, const float* stage, std::int64_t n, const double* shift, const double* f, void* ov) {
  const In* x = static_cast<const In*>(xv);
  Out* out = static_cast<Out*>(ov);
  for (std::int64_t b0 = 0, j = 0; b0 < n; b0 += kBlock, ++j) {
    const std::int64_t len = std::min(kBlock, n - b0);
    const __m256 vk = _mm256_set1_ps(float(f[j]));
    if (stage) {
      map8(len, out + b0, [vk](__m256 v) { return _mm256_mul_ps(v, vk); }, stage + b0);
    } else {
      const __m256 vc = _mm256_set1_ps(float(shift[j]));
      map8(len, out + b0, [vc, vk](__m256 v) { return _mm256_mul_ps(exp_for<Out>(_mm256_sub_ps(v, vc)), vk); }, x + b0);
    }
  }
}

template <class In, class Out> void write_log_k(const void* x, std::int64_t n, double c, double k, void* out) {
  const __m256 vc = _mm256_set1_ps(float(c)), vk = _mm256_set1_ps(float(k));
  map8(n, static_cast<Out*>(out), [=](__m256 v) { return _mm256_sub_ps(_mm256_sub_ps(v, vc), vk); },
       static_cast<const In*>(x));
}

// ---- columns: n x w tiles (w <= 32), vectors across the columns ----
constexpr int kTileVecs = 4;

template <class T> inline __m256 load_cols(const T* p, int v, int w) {
  const int m = w - 8 * v;
  return m >= 8 ? load8(p + 8 * v) : load_tail(p + 8 * v, m);
}
template <class T> inline void store_cols(T* p, int v, int w, __m256 x) {
  const int m = w - 8 * v;
  if (m >= 8) store8(p + 8 * v, x);
  else store_tail(p + 8 * v, m, x);
}
inline __m256d lo_pd(__m256 v) { return _mm256_cvtps_pd(_mm256_castps256_ps128(v)); }
inline __m256d hi_pd(__m256 v) { return _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)); }

template <class In, class Out>
bool columns_k(const void* xv, std::int64_t xs, std::int64_t n, std::int64_t w64, void* ov, std::int64_t os, bool log) {
  const In* x = static_cast<const In*>(xv);
  Out* out = static_cast<Out*>(ov);
  const int w = int(w64), nv = (w + 7) / 8;
  const __m256 ninf = _mm256_set1_ps(-INFINITY);
  __m256 m[kTileVecs], bad[kTileVecs];
  for (int v = 0; v < kTileVecs; ++v) m[v] = ninf, bad[v] = _mm256_setzero_ps();
  for (std::int64_t i = 0; i < n; ++i) {
    const In* xr = x + i * xs;
    for (int v = 0; v < nv; ++v) {
      const __m256 a = load_cols(xr, v, w);
      m[v] = _mm256_max_ps(m[v], a);
      bad[v] = _mm256_or_ps(bad[v], _mm256_cmp_ps(a, a, _CMP_UNORD_Q));
    }
  }
  alignas(32) float mf[8 * kTileVecs];
  for (int v = 0; v < nv; ++v) {
    bad[v] = _mm256_or_ps(bad[v], _mm256_cmp_ps(_mm256_andnot_ps(_mm256_set1_ps(-0.0f), m[v]),
                                                 _mm256_set1_ps(INFINITY), _CMP_EQ_OQ));
    const int lanes = std::min(8, w - 8 * v);
    if (_mm256_movemask_ps(bad[v]) & ((1 << lanes) - 1)) return false;  // NaN, +inf or only -inf
    _mm256_store_ps(mf + 8 * v, m[v]);
  }
  // Sums in float32 over 64 rows at a time, added into double.
  double sd[8 * kTileVecs] = {}, sc[8 * kTileVecs] = {};
  const __m256 one = _mm256_set1_ps(1.0f);
  for (std::int64_t i0 = 0; i0 < n; i0 += 64) {
    __m256 dacc[kTileVecs], cacc[kTileVecs];
    for (int v = 0; v < kTileVecs; ++v) dacc[v] = cacc[v] = _mm256_setzero_ps();
    for (std::int64_t i = i0, e = std::min(n, i0 + 64); i < e; ++i) {
      const In* xr = x + i * xs;
      for (int v = 0; v < nv; ++v) {
        const __m256 a = load_cols(xr, v, w);
        const __m256 t = exp_for<Out>(_mm256_sub_ps(a, m[v]));
        if (log) {
          const __m256 eq = _mm256_cmp_ps(a, m[v], _CMP_EQ_OQ);
          cacc[v] = _mm256_add_ps(cacc[v], _mm256_and_ps(eq, one));
          dacc[v] = _mm256_add_ps(dacc[v], _mm256_andnot_ps(eq, t));
        } else {
          dacc[v] = _mm256_add_ps(dacc[v], t);
        }
      }
    }
    for (int v = 0; v < nv; ++v) {
      alignas(32) double lo[4], hi[4];
      _mm256_store_pd(lo, lo_pd(dacc[v]));
      _mm256_store_pd(hi, hi_pd(dacc[v]));
      for (int l = 0; l < 4; ++l) sd[8 * v + l] += lo[l], sd[8 * v + 4 + l] += hi[l];
      if (log) {
        _mm256_store_pd(lo, lo_pd(cacc[v]));
        _mm256_store_pd(hi, hi_pd(cacc[v]));
        for (int l = 0; l < 4; ++l) sc[8 * v + l] += lo[l], sc[8 * v + 4 + l] += hi[l];
      }
    }
  }
  alignas(32) float kf[8 * kTileVecs];
  for (int l = 0; l < 8 * nv; ++l) kf[l] = log ? float(std::log(sc[l]) + std::log1p(sd[l] / sc[l])) : float(1.0 / sd[l]);
  for (std::int64_t i = 0; i < n; ++i) {
    const In* xr = x + i * xs;
    Out* orow = out + i * os;
    for (int v = 0; v < nv; ++v) {
      const __m256 a = load_cols(xr, v, w), k = _mm256_load_ps(kf + 8 * v);
      const __m256 s = _mm256_sub_ps(a, m[v]);
      store_cols(orow, v, w, log ? _mm256_sub_ps(s, k) : _mm256_mul_ps(exp_for<Out>(s), k));
    }
  }
  return true;
}

template <class In, class Out> const ForwardKernels* forward_table() {
  static const ForwardKernels k = {&stats_k<In, Out>, &write_exp_k<In, Out>, &write_log_k<In, Out>, &columns_k<In, Out>};
  return &k;
}

// ---- backward ----
template <class Y, class G, bool Log> void reduce_k(const void* y, const void* g, std::int64_t n, double* block_sums) {
  const Y* yp = static_cast<const Y*>(y);
  const G* gp = static_cast<const G*>(g);
  for (std::int64_t b0 = 0, j = 0; b0 < n; b0 += kBlock, ++j) {
    const std::int64_t len = std::min(kBlock, n - b0);
    if (Log) block_sums[j] = reduce8(len, nullptr, [](__m256 gv) { return gv; }, gp + b0);
    else block_sums[j] = reduce8(len, nullptr, [](__m256 yv, __m256 gv) { return _mm256_mul_ps(yv, gv); }, yp + b0, gp + b0);
  }
}

template <bool Log> inline __m256 bwd_value(__m256 yv, __m256 gv, __m256 vd) {
  return Log ? _mm256_fnmadd_ps(exp256(yv), vd, gv) : _mm256_mul_ps(yv, _mm256_sub_ps(gv, vd));
}

template <class Y, class G, class O, bool Log>
void bwd_write_k(const void* y, const void* g, std::int64_t n, double d, void* out) {
  const __m256 vd = _mm256_set1_ps(float(d));
  map8(n, static_cast<O*>(out), [vd](__m256 yv, __m256 gv) { return bwd_value<Log>(yv, gv, vd); },
       static_cast<const Y*>(y), static_cast<const G*>(g));
}

template <class Y, class G, class O, bool Log>
void bwd_columns_k(const void* yv, std::int64_t ys, const void* gv, std::int64_t gs, std::int64_t n, std::int64_t w64,
                   void* ov, std::int64_t os) {
  const Y* y = static_cast<const Y*>(yv);
  const G* g = static_cast<const G*>(gv);
  O* out = static_cast<O*>(ov);
  const int w = int(w64), nv = (w + 7) / 8;
  double sd[8 * kTileVecs] = {};
  for (std::int64_t i0 = 0; i0 < n; i0 += 64) {
    __m256 acc[kTileVecs];
    for (int v = 0; v < kTileVecs; ++v) acc[v] = _mm256_setzero_ps();
    for (std::int64_t i = i0, e = std::min(n, i0 + 64); i < e; ++i) {
      for (int v = 0; v < nv; ++v) {
        const __m256 gl = load_cols(g + i * gs, v, w);
        acc[v] = _mm256_add_ps(acc[v], Log ? gl : _mm256_mul_ps(load_cols(y + i * ys, v, w), gl));
      }
    }
    for (int v = 0; v < nv; ++v) {
      alignas(32) double lo[4], hi[4];
      _mm256_store_pd(lo, lo_pd(acc[v]));
      _mm256_store_pd(hi, hi_pd(acc[v]));
      for (int l = 0; l < 4; ++l) sd[8 * v + l] += lo[l], sd[8 * v + 4 + l] += hi[l];
    }
  }
  alignas(32) float df[8 * kTileVecs];
  for (int l = 0; l < 8 * nv; ++l) df[l] = float(sd[l]);
  for (std::int64_t i = 0; i < n; ++i)
    for (int v = 0; v < nv; ++v)
      store_cols(out + i * os, v, w,
                 bwd_value<Log>(load_cols(y + i * ys, v, w), load_cols(g + i * gs, v, w), _mm256_load_ps(df + 8 * v)));
}

template <class Y, class G, class O, bool Log> const BackwardKernels* backward_table() {
  static const BackwardKernels k = {&reduce_k<Y, G, Log>, &bwd_write_k<Y, G, O, Log>, &bwd_columns_k<Y, G, O, Log>};
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

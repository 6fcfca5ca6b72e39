// Softmax / log_softmax row kernels (float32 accumulation), written once against the vector layer and
// instantiated per ISA by isa_kernels.h inside namespace ssm::SSM_ISA. See softmax.h for the numerics
// and for what each ForwardKernels / BackwardKernels entry computes.
#pragma once

namespace ssm {
namespace SSM_ISA {
namespace {

constexpr int L = kLanes;

// Every kernel entry point holds one: its callers are compiled for the baseline ISA (see leave_isa()).
struct LeaveIsa {
  ~LeaveIsa() { leave_isa(); }
};

// exp for softmax values written to (or staged for) an output of type Out: bfloat16 outputs keep exp_exact's
// scaling, whose subnormal results they can represent; the others take exp_ftz (vec_math.h). float16 and
// bfloat16 values take the degree-4 polynomial (exp_narrow_poly), float32 values the full one.
template <class Out> inline VF exp_for(VF x) {
  if constexpr (std::is_same<Out, BFloat16>::value) return exp_exact<4>(x);
  else if constexpr (std::is_same<Out, Half>::value) return exp_ftz<4>(x);
  else return exp_ftz(x);
}
// exp for log_softmax's sum D: an error in log S is an absolute error of every output, and log_softmax keeps
// its accuracy near 0 with the full polynomials, for every output dtype.
template <class Out> inline VF exp_for_log(VF x) {
  if constexpr (std::is_same<Out, BFloat16>::value) return exp_exact(x);
  else return exp_ftz(x);
}

// sum_i f(xs_i...) over n elements: four independent float32 accumulators over blocks of 512 elements,
// block sums added in double (no drift over long rows). With kSide the terms are also stored to `side`
// (a template flag, so the loop holds no test of the pointer).
template <bool kSide, class F, class... Ts> double reduce_blocks(std::int64_t n, float* side, F f, const Ts*... xs) {
  double total = 0;
  std::int64_t i = 0;
  while (i + L <= n) {
    const std::int64_t end = std::min(n, i + 512);
    VF acc[4] = {vzero(), vzero(), vzero(), vzero()};
    for (; i + 4 * L <= end; i += 4 * L) {
      for (int u = 0; u < 4; ++u) {
        const VF t = f(load(xs + i + L * u)...);
        if constexpr (kSide) store(side + i + L * u, t);
        acc[u] = add(acc[u], t);
      }
    }
    for (; i + L <= end; i += L) {
      const VF t = f(load(xs + i)...);
      if constexpr (kSide) store(side + i, t);
      acc[0] = add(acc[0], t);
    }
    total += reduce_sum(add(add(acc[0], acc[1]), add(acc[2], acc[3])));
  }
  if (i < n) {
    const int m = int(n - i);
    const VF t = keep(tail_mask(m), f(load_tail(xs + i, m, 0.0f)...));
    if constexpr (kSide) store_tail(side + i, m, t);
    total += reduce_sum(t);
  }
  return total;
}

// out_i = f(xs_i...) for n elements.
template <class O, class F, class... Ts> void map_lanes(std::int64_t n, O* out, F f, const Ts*... xs) {
  std::int64_t i = 0;
  for (; i + L <= n; i += L) store(out + i, f(load(xs + i)...));
  if (i < n) store_tail(out + i, int(n - i), f(load_tail(xs + i, int(n - i), 0.0f)...));
}

// ---- forward ----
// The max of n elements as a double (NaN when one is NaN). With kSave the elements are also stored to
// `save` as float32, so that a float16 / bfloat16 block is converted once: its later passes read `save`
// from L1 (a conversion costs two vector uops on x86, as much as the max itself), and give the same bits.
template <bool kSave, class In> double max_k(const In* x, std::int64_t n, float* save = nullptr) {
  const VF ninf = vset(-INFINITY);
  VF acc[4] = {ninf, ninf, ninf, ninf};
  VM nan = lt(ninf, ninf);  // all false; vmax drops NaN operands, so NaN lanes are tracked apart
  std::int64_t i = 0;
  for (; i + 4 * L <= n; i += 4 * L) {
    for (int u = 0; u < 4; u += 2) {
      const VF a = load(x + i + L * u), b = load(x + i + L * u + L);
      if constexpr (kSave) store(save + i + L * u, a), store(save + i + L * u + L, b);
      acc[u] = vmax(acc[u], a);
      acc[u + 1] = vmax(acc[u + 1], b);
      nan = m_or(nan, unord(a, b));
    }
  }
  for (; i + L <= n; i += L) {
    const VF a = load(x + i);
    if constexpr (kSave) store(save + i, a);
    acc[0] = vmax(acc[0], a);
    nan = m_or(nan, unord(a, a));
  }
  if (i < n) {
    const VF a = load_tail(x + i, int(n - i), -INFINITY);
    if constexpr (kSave) store_tail(save + i, int(n - i), a);
    acc[0] = vmax(acc[0], a);
    nan = m_or(nan, unord(a, a));
  }
  if (mask_bits(nan)) return double(NAN);
  return double(reduce_max(vmax(vmax(acc[0], acc[1]), vmax(acc[2], acc[3]))));
}

// A block of at most kBlock elements as float32: the input itself when it is float32, else its conversion
// into `buf` (made by the block's max_k, which this returns).
template <class In> struct Float32Block {
  alignas(64) float buf[std::is_same<In, float>::value ? 1 : kBlock];
  const float* data;
  double max;
  Float32Block(const In* x, std::int64_t n) {
    if constexpr (std::is_same<In, float>::value) data = x, max = max_k<false>(x, n);
    else data = buf, max = max_k<true>(x, n, buf);
  }
};

// log_softmax statistics of a block with a finite max bm: entries equal to the max counted (from the compare
// masks, an integer count) apart from the sum of the exponentials of the others.
inline int count_lanes(VM m) { return __builtin_popcount(mask_bits(m)); }

template <class In, class Out> SSM_VEC_INLINE BlockStat log_stats(const In* xb, std::int64_t len, double bm) {
  const VF vc = vset(float(bm));
  VF d0 = vzero(), d1 = d0;
  int count = 0;
  std::int64_t i = 0;
  for (; i + 2 * L <= len; i += 2 * L) {
    const VF a = load(xb + i), b = load(xb + i + L);
    const VM ea = eq(a, vc), eb = eq(b, vc);
    count += count_lanes(ea) + count_lanes(eb);
    d0 = add(d0, select(ea, vzero(), exp_for_log<Out>(sub(a, vc))));
    d1 = add(d1, select(eb, vzero(), exp_for_log<Out>(sub(b, vc))));
  }
  for (; i < len; i += L) {
    const int m = int(std::min<std::int64_t>(L, len - i));
    const VF a = m == L ? load(xb + i) : load_tail(xb + i, m, -INFINITY);
    const VM ea = eq(a, vc);
    count += count_lanes(ea);
    d0 = add(d0, select(ea, vzero(), exp_for_log<Out>(sub(a, vc))));
  }
  return {bm, double(count), reduce_sum(add(d0, d1))};
}

// Block statistics (softmax.h: BlockStat). Each block is read from memory once for its max (and converted
// to float32 once) and again from L1 for its exponentials, E = exp_for<Out> both here and in write_exp_k.
template <class In, class Out> void stats_k(const void* xv, std::int64_t n, float* stage, BlockStat* st, bool log) {
  const LeaveIsa leave;
  const In* x = static_cast<const In*>(xv);
  for (std::int64_t b0 = 0, j = 0; b0 < n; b0 += kBlock, ++j) {
    const std::int64_t len = std::min(kBlock, n - b0);
    const Float32Block<In> xb(x + b0, len);
    const double bm = xb.max;
    if (std::isnan(bm)) { st[j] = {bm, 0, 0}; continue; }
    if (bm == INFINITY) {
      double count = 0;
      for (std::int64_t i = 0; i < len; ++i) count += xb.data[i] == INFINITY ? 1 : 0;
      st[j] = {bm, count, 0};
      continue;
    }
    if (bm == -INFINITY) {
      st[j] = {bm, 0, 0};
      if (stage) std::memset(stage + b0, 0, std::size_t(len) * sizeof(float));
      continue;
    }
    const VF vc = vset(float(bm));
    if (!log) {
      const auto e = [vc](VF v) { return exp_for<Out>(sub(v, vc)); };
      st[j] = {bm, 0, stage ? reduce_blocks<true>(len, stage + b0, e, xb.data) : reduce_blocks<false>(len, nullptr, e, xb.data)};
      continue;
    }
    st[j] = log_stats<float, Out>(xb.data, len, bm);
  }
}

template <class In, class Out>
void write_exp_k(const void* xv, const float* stage, std::int64_t n, const double* shift, const double* f, void* ov) {
  const LeaveIsa leave;
  const In* x = static_cast<const In*>(xv);
  Out* out = static_cast<Out*>(ov);
  for (std::int64_t b0 = 0, j = 0; b0 < n; b0 += kBlock, ++j) {
    const std::int64_t len = std::min(kBlock, n - b0);
    const VF vk = vset(float(f[j]));
    if (stage) {
      map_lanes(len, out + b0, [vk](VF v) { return mul(v, vk); }, stage + b0);
    } else {
      const VF vc = vset(float(shift[j]));
      map_lanes(len, out + b0, [vc, vk](VF v) { return mul(exp_for<Out>(sub(v, vc)), vk); }, x + b0);
    }
  }
}

template <class In, class Out> void write_log_k(const void* x, std::int64_t n, double c, double k, void* out) {
  const LeaveIsa leave;
  const VF vc = vset(float(c)), vk = vset(float(k));
  map_lanes(n, static_cast<Out*>(out), [=](VF v) { return sub(sub(v, vc), vk); }, static_cast<const In*>(x));
}

// ---- columns: n x w tiles (w <= kColumnTile), vectors across the columns ----
constexpr int kTileVecs = (kColumnTile + L - 1) / L;

template <class T> inline VF load_cols(const T* p, int v, int w) {
  const int m = w - L * v;
  return m >= L ? load(p + L * v) : load_tail(p + L * v, m, 0.0f);
}
template <class T> inline void store_cols(T* p, int v, int w, VF x) {
  const int m = w - L * v;
  if (m >= L) store(p + L * v, x);
  else store_tail(p + L * v, m, x);
}
// acc[l] += lanes of v (float32 partial sums into double).
inline void add_lanes(double* acc, VF v) {
  alignas(64) float t[L];
  store(t, v);
  for (int l = 0; l < L; ++l) acc[l] += double(t[l]);
}

template <class In, class Out>
bool columns_k(const void* xv, std::int64_t xs, std::int64_t n, std::int64_t w64, void* ov, std::int64_t os, bool log) {
  const LeaveIsa leave;
  const In* x = static_cast<const In*>(xv);
  Out* out = static_cast<Out*>(ov);
  const int w = int(w64), nv = (w + L - 1) / L;
  const VF ninf = vset(-INFINITY);
  VF m[kTileVecs];
  VM bad[kTileVecs];
  for (int v = 0; v < kTileVecs; ++v) m[v] = ninf, bad[v] = lt(ninf, ninf);
  for (std::int64_t i = 0; i < n; ++i) {
    const In* xr = x + i * xs;
    for (int v = 0; v < nv; ++v) {
      const VF a = load_cols(xr, v, w);
      m[v] = vmax(m[v], a);
      bad[v] = m_or(bad[v], unord(a, a));
    }
  }
  for (int v = 0; v < nv; ++v) {
    const VF absm = vmax(m[v], sub(vzero(), m[v]));  // |m|; -inf columns give +inf
    bad[v] = m_or(bad[v], eq(absm, vset(INFINITY)));
    const int lanes = std::min(L, w - L * v);
    if (mask_bits(bad[v]) & ((1u << lanes) - 1u)) return false;  // NaN, +inf or only -inf
  }
  // Sums in float32 over 64 rows at a time, added into double.
  double sd[L * kTileVecs] = {}, sc[L * kTileVecs] = {};
  const VF one = vset(1.0f);
  for (std::int64_t i0 = 0; i0 < n; i0 += 64) {
    VF dacc[kTileVecs], cacc[kTileVecs];
    for (int v = 0; v < kTileVecs; ++v) dacc[v] = cacc[v] = vzero();
    for (std::int64_t i = i0, e = std::min(n, i0 + 64); i < e; ++i) {
      const In* xr = x + i * xs;
      for (int v = 0; v < nv; ++v) {
        const VF a = load_cols(xr, v, w);
        const VF t = log ? exp_for_log<Out>(sub(a, m[v])) : exp_for<Out>(sub(a, m[v]));
        if (log) {
          const VM at_max = eq(a, m[v]);
          cacc[v] = add(cacc[v], keep(at_max, one));
          dacc[v] = add(dacc[v], select(at_max, vzero(), t));
        } else {
          dacc[v] = add(dacc[v], t);
        }
      }
    }
    for (int v = 0; v < nv; ++v) {
      add_lanes(sd + L * v, dacc[v]);
      if (log) add_lanes(sc + L * v, cacc[v]);
    }
  }
  alignas(64) float kf[L * kTileVecs];
  if (log) {
    double log_s[L * kTileVecs];
    narrow_log_normalisers(sc, sd, L * nv, log_s);
    for (int l = 0; l < L * nv; ++l) kf[l] = float(log_s[l]);
  } else {
    for (int l = 0; l < L * nv; ++l) kf[l] = float(1.0 / sd[l]);
  }
  for (std::int64_t i = 0; i < n; ++i) {
    const In* xr = x + i * xs;
    Out* orow = out + i * os;
    for (int v = 0; v < nv; ++v) {
      const VF a = load_cols(xr, v, w), k = load(kf + L * v);
      const VF s = sub(a, m[v]);
      store_cols(orow, v, w, log ? sub(s, k) : mul(exp_for<Out>(s), k));
    }
  }
  return true;
}

// Rows of one block (n <= kBlock) at x + r * xs, out + r * os: stats_k, the row's combination and the write
// in one pass per row, with none of the per-row bookkeeping of the general path (scratch, block tables, kernel
// calls through pointers), which costs more than the arithmetic of a 64-element row. The same operations in the
// same order as that path, so the same bits. Stops at the first row whose max is not finite (NaN, +inf, only
// -inf), writing nothing for it, and returns its index (rows when all are done).
// log_softmax takes kLogGroup rows at a time: their statistics, their log S together (a vector loop, where one
// libm log per row took a third of the time of 32-entry rows), then their writes.
constexpr int kLogGroup = 16;

template <class In, class Out>
std::int64_t short_log_rows(const In* x, std::int64_t xs, std::int64_t rows, std::int64_t n, Out* out, std::int64_t os) {
  for (std::int64_t r0 = 0; r0 < rows; r0 += kLogGroup) {
    const int group = int(std::min<std::int64_t>(kLogGroup, rows - r0));
    double max[kLogGroup], count[kLogGroup], rest[kLogGroup], log_s[kLogGroup];
    int done = 0;
    for (; done < group; ++done) {
      const Float32Block<In> xr(x + (r0 + done) * xs, n);
      if (!(std::fabs(xr.max) < INFINITY)) break;
      const BlockStat b = log_stats<float, Out>(xr.data, n, xr.max);
      max[done] = b.m, count[done] = b.c, rest[done] = b.d;
    }
    narrow_log_normalisers(count, rest, done, log_s);
    for (int g = 0; g < done; ++g) {  // (v - c) - k on the float32 value of x, as write_log_k
      const VF vc = vset(float(max[g])), vk = vset(float(log_s[g]));
      map_lanes(n, out + (r0 + g) * os, [=](VF v) { return sub(sub(v, vc), vk); }, x + (r0 + g) * xs);
    }
    if (done < group) return r0 + done;
  }
  return rows;
}

template <class In, class Out>
std::int64_t short_rows_k(const void* xv, std::int64_t xs, std::int64_t rows, std::int64_t n, void* ov, std::int64_t os,
                          bool log) {
  const LeaveIsa leave;
  const In* x = static_cast<const In*>(xv);
  Out* out = static_cast<Out*>(ov);
  if (log) return short_log_rows(x, xs, rows, n, out, os);
  alignas(64) float stage[kBlock];
  for (std::int64_t r = 0; r < rows; ++r) {
    const Float32Block<In> xr(x + r * xs, n);
    Out* orow = out + r * os;
    const double bm = xr.max;
    if (!(std::fabs(bm) < INFINITY)) return r;
    const VF vc = vset(float(bm));
    float* st = std::is_same<Out, float>::value ? reinterpret_cast<float*>(orow) : stage;  // as the general path
    const double d = reduce_blocks<true>(n, st, [vc](VF v) { return exp_for<Out>(sub(v, vc)); }, xr.data);
    const VF vk = vset(float(1.0 / d));
    map_lanes(n, orow, [vk](VF v) { return mul(v, vk); }, static_cast<const float*>(st));
  }
  return rows;
}

template <class In, class Out> const ForwardKernels* forward_table() {
  static const ForwardKernels k = {&stats_k<In, Out>, &write_exp_k<In, Out>, &write_log_k<In, Out>, &columns_k<In, Out>,
                                   &short_rows_k<In, Out>};
  return &k;
}

// ---- backward ----
template <class Y, class G, bool Log> void reduce_k(const void* y, const void* g, std::int64_t n, double* block_sums) {
  const LeaveIsa leave;
  const Y* yp = static_cast<const Y*>(y);
  const G* gp = static_cast<const G*>(g);
  for (std::int64_t b0 = 0, j = 0; b0 < n; b0 += kBlock, ++j) {
    const std::int64_t len = std::min(kBlock, n - b0);
    if (Log) block_sums[j] = reduce_blocks<false>(len, nullptr, [](VF gv) { return gv; }, gp + b0);
    else block_sums[j] = reduce_blocks<false>(len, nullptr, [](VF yv, VF gv) { return mul(yv, gv); }, yp + b0, gp + b0);
  }
}

template <bool Log> inline VF bwd_value(VF yv, VF gv, VF vd) {
  return Log ? fnmadd(exp_exact(yv), vd, gv) : mul(yv, sub(gv, vd));
}

template <class Y, class G, class O, bool Log> void bwd_write_k(const void* y, const void* g, std::int64_t n, double d, void* out) {
  const LeaveIsa leave;
  const VF vd = vset(float(d));
  map_lanes(n, static_cast<O*>(out), [vd](VF yv, VF gv) { return bwd_value<Log>(yv, gv, vd); }, static_cast<const Y*>(y),
            static_cast<const G*>(g));
}

template <class Y, class G, class O, bool Log>
void bwd_columns_k(const void* yv, std::int64_t ys, const void* gv, std::int64_t gs, std::int64_t n, std::int64_t w64, void* ov,
                   std::int64_t os) {
  const LeaveIsa leave;
  const Y* y = static_cast<const Y*>(yv);
  const G* g = static_cast<const G*>(gv);
  O* out = static_cast<O*>(ov);
  const int w = int(w64), nv = (w + L - 1) / L;
  double sd[L * kTileVecs] = {};
  for (std::int64_t i0 = 0; i0 < n; i0 += 64) {
    VF acc[kTileVecs];
    for (int v = 0; v < kTileVecs; ++v) acc[v] = vzero();
    for (std::int64_t i = i0, e = std::min(n, i0 + 64); i < e; ++i) {
      for (int v = 0; v < nv; ++v) {
        const VF gl = load_cols(g + i * gs, v, w);
        acc[v] = add(acc[v], Log ? gl : mul(load_cols(y + i * ys, v, w), gl));
      }
    }
    for (int v = 0; v < nv; ++v) add_lanes(sd + L * v, acc[v]);
  }
  alignas(64) float df[L * kTileVecs];
  for (int l = 0; l < L * nv; ++l) df[l] = float(sd[l]);
  for (std::int64_t i = 0; i < n; ++i)
    for (int v = 0; v < nv; ++v)
      store_cols(out + i * os, v, w, bwd_value<Log>(load_cols(y + i * ys, v, w), load_cols(g + i * gs, v, w), load(df + L * v)));
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

}  // namespace
}  // namespace SSM_ISA
}  // namespace ssm

// The float64-accumulated kernels, non-finite row handling and the threaded row drivers (layouts, splits,
// scratch); the float32-accumulated row kernels are the active ISA's (isa.h).
#include "isa.h"
#include "softmax.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <limits>
#include <memory>
#include <stdexcept>
#include <type_traits>
#include <vector>

#include "thread_pool.h"

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace ssm {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// ======================= float64-accumulated kernels (portable) =======================
namespace wide {
namespace {

template <class P> using Pointee = std::remove_pointer_t<P>;

template <class In, class Acc> void stats_k(const void* xv, std::int64_t n, float* stage, BlockStat* st, bool log) {
  const In* x = static_cast<const In*>(xv);
  for (std::int64_t b0 = 0, j = 0; b0 < n; b0 += kBlock, ++j) {
    const std::int64_t len = std::min(kBlock, n - b0);
    const In* xb = x + b0;
    Acc m = -std::numeric_limits<Acc>::infinity();
    bool nan = false;
    double pinf = 0;
    for (std::int64_t i = 0; i < len; ++i) {
      const Acc v = load_as<Acc>(xb + i);
      nan |= v != v;
      m = v > m ? v : m;
      pinf += v == std::numeric_limits<Acc>::infinity() ? 1 : 0;
    }
    if (nan) { st[j] = {kNaN, 0, 0}; continue; }
    if (m == std::numeric_limits<Acc>::infinity()) { st[j] = {kInf, pinf, 0}; continue; }
    if (m == -std::numeric_limits<Acc>::infinity()) {
      st[j] = {-kInf, 0, 0};
      if (stage) std::memset(stage + b0, 0, std::size_t(len) * sizeof(float));
      continue;
    }
    double c = 0, d = 0;
    for (std::int64_t i = 0; i < len; ++i) {
      const Acc v = load_as<Acc>(xb + i);
      const Acc e = std::exp(v - m);
      if (stage) stage[b0 + i] = float(e);
      if (log && v == m) c += 1;
      else d += double(e);
    }
    st[j] = {double(m), c, d};
  }
}

template <class In, class Out, class Acc>
void write_exp_k(const void* xv, const float* stage, std::int64_t n, const double* shift, const double* f, void* ov) {
  const In* x = static_cast<const In*>(xv);
  Out* out = static_cast<Out*>(ov);
  for (std::int64_t b0 = 0, j = 0; b0 < n; b0 += kBlock, ++j) {
    const Acc c = Acc(shift[j]), k = Acc(f[j]);
    for (std::int64_t i = b0, e = std::min(n, b0 + kBlock); i < e; ++i) {
      const Acc v = stage ? Acc(stage[i]) : Acc(std::exp(load_as<Acc>(x + i) - c));
      store_from(out + i, v * k);
    }
  }
}

template <class In, class Out, class Acc> void write_log_k(const void* x, std::int64_t n, double c, double k, void* out) {
  const Acc cc = Acc(c), kk = Acc(k);
  for (std::int64_t i = 0; i < n; ++i)
    store_from(static_cast<Out*>(out) + i, (load_as<Acc>(static_cast<const In*>(x) + i) - cc) - kk);
}

template <class In, class Out, class Acc> const ForwardKernels* forward_table() {
  static const ForwardKernels k = {&stats_k<In, Acc>, &write_exp_k<In, Out, Acc>, &write_log_k<In, Out, Acc>, nullptr,
                                   nullptr};
  return &k;
}

template <class Y, class G, class Acc, bool Log>
void reduce_k(const void* y, const void* g, std::int64_t n, double* block_sums) {
  const Y* yp = static_cast<const Y*>(y);
  const G* gp = static_cast<const G*>(g);
  for (std::int64_t b0 = 0, j = 0; b0 < n; b0 += kBlock, ++j) {
    double s = 0;
    for (std::int64_t i = b0, e = std::min(n, b0 + kBlock); i < e; ++i)
      s += double(Log ? load_as<Acc>(gp + i) : load_as<Acc>(gp + i) * load_as<Acc>(yp + i));
    block_sums[j] = s;
  }
}

template <class Y, class G, class O, class Acc, bool Log>
void bwd_write_k(const void* y, const void* g, std::int64_t n, double d, void* out) {
  const Acc dd = Acc(d);
  for (std::int64_t i = 0; i < n; ++i) {
    const Acc yv = load_as<Acc>(static_cast<const Y*>(y) + i), gv = load_as<Acc>(static_cast<const G*>(g) + i);
    store_from(static_cast<O*>(out) + i, Log ? gv - std::exp(yv) * dd : yv * (gv - dd));
  }
}

template <class Y, class G, class O, class Acc> const BackwardKernels* backward_table(bool log) {
  static const BackwardKernels k[2] = {{&reduce_k<Y, G, Acc, false>, &bwd_write_k<Y, G, O, Acc, false>, nullptr},
                                       {&reduce_k<Y, G, Acc, true>, &bwd_write_k<Y, G, O, Acc, true>, nullptr}};
  return &k[log ? 1 : 0];
}

}  // namespace

const ForwardKernels* forward_kernels(int in_dtype, int out_dtype) {
  const ForwardKernels* r = nullptr;
  with_dtype(in_dtype, [&](auto* i) {
    with_dtype(out_dtype, [&](auto* o) { r = forward_table<Pointee<decltype(i)>, Pointee<decltype(o)>, double>(); });
  });
  return r;
}

const BackwardKernels* backward_kernels(int y_dtype, int g_dtype, int out_dtype, bool log) {
  const BackwardKernels* r = nullptr;
  with_dtype(y_dtype, [&](auto* y) {
    with_dtype(g_dtype, [&](auto* g) {
      with_dtype(out_dtype, [&](auto* o) {
        using Y = Pointee<decltype(y)>;
        using G = Pointee<decltype(g)>;
        using O = Pointee<decltype(o)>;
        r = backward_table<Y, G, O, double>(log);
      });
    });
  });
  return r;
}

}  // namespace wide

// ======================= kernel selection =======================
namespace {

// The active ISA's kernels; the float64-accumulated ones when an operand is float64.
const ForwardKernels* select_forward(int in_dtype, int out_dtype) {
  const ForwardKernels* k = active_isa().forward(in_dtype, out_dtype);
  return k ? k : wide::forward_kernels(in_dtype, out_dtype);
}

const BackwardKernels* select_backward(int y_dtype, int g_dtype, int out_dtype, bool log) {
  const BackwardKernels* k = active_isa().backward(y_dtype, g_dtype, out_dtype, log);
  return k ? k : wide::backward_kernels(y_dtype, g_dtype, out_dtype, log);
}

// ======================= scratch memory =======================
// Per-thread buffers are kept between calls up to kScratchCap bytes; a larger need is served by a
// temporary allocation released when the row is done, so no thread keeps more than the cap.
constexpr std::size_t kScratchCap = std::size_t(16) << 20;

class Scratch {
 public:
  // `slot` keeps independent uses (a nested call) apart.
  char* get(std::size_t bytes, int slot = 0) {
    if (bytes > kScratchCap) {
      temp_[slot].reset(bytes);
      return static_cast<char*>(temp_[slot].p);
    }
    ScratchVec<char>& keep = kept(slot);
    if (keep.size() < bytes) keep.resize(bytes);
    return keep.data();
  }

 private:
  static ScratchVec<char>& kept(int slot) {
    thread_local ScratchVec<char> bufs[2];
    return bufs[slot];
  }
  // Above the cap: mapped for this call and unmapped when it is done (scratch_allocate), not zeroed.
  struct Block {
    void* p = nullptr;
    std::size_t n = 0;
    Block() = default;
    Block(const Block&) = delete;
    Block& operator=(const Block&) = delete;
    void reset(std::size_t bytes) {
      release();
      p = scratch_allocate(bytes);
      n = bytes;
    }
    void release() {
      if (p) scratch_free(p, n);
      p = nullptr;
    }
    ~Block() { release(); }
  };
  Block temp_[2];
};

inline std::size_t round_up(std::size_t bytes) { return (bytes + 63) & ~std::size_t(63); }

// ======================= layouts =======================
// The batch dimensions (all but the reduced one) of up to three tensors of the same sizes, size-1
// dimensions dropped and runs that are contiguous in every tensor merged.
struct Dims {
  int nt = 0, nd = 0;
  std::int64_t size[kMaxDims];
  std::int64_t stride[3][kMaxDims];
  std::int64_t n = 0;  // length of the reduced dimension
  std::int64_t sn[3];  // its stride in each tensor (1 when n == 1: never used)
  std::int64_t count(int skip = -1) const {
    std::int64_t c = 1;
    for (int i = 0; i < nd; ++i) c *= i == skip ? 1 : size[i];
    return c;
  }
  // Element offsets in each tensor of batch index b (row-major over the batch dims but `skip`).
  void offsets(std::int64_t b, std::int64_t* off, int skip = -1) const {
    for (int t = 0; t < nt; ++t) off[t] = 0;
    for (int i = nd - 1; i >= 0; --i) {
      if (i == skip) continue;
      const std::int64_t q = b / size[i], r = b - q * size[i];
      b = q;
      for (int t = 0; t < nt; ++t) off[t] += r * stride[t][i];
    }
  }
  // The batch dimension with unit stride in every tensor (the last such), or -1.
  int unit_inner() const {
    for (int i = nd - 1; i >= 0; --i) {
      bool unit = true;
      for (int t = 0; t < nt; ++t) unit &= stride[t][i] == 1;
      if (unit) return i;
    }
    return -1;
  }
  bool rows_direct() const {
    for (int t = 0; t < nt; ++t)
      if (sn[t] != 1) return false;
    return true;
  }
};

Dims make_dims(const View* const* views, int nt, int dim) {
  Dims d;
  d.nt = nt;
  const View& v0 = *views[0];
  d.n = v0.size[dim];
  for (int t = 0; t < nt; ++t) d.sn[t] = d.n == 1 ? 1 : views[t]->stride[dim];
  for (int i = 0; i < v0.ndim; ++i) {
    if (i == dim || v0.size[i] == 1) continue;
    bool merge = d.nd > 0;
    for (int t = 0; t < nt && merge; ++t) merge = d.stride[t][d.nd - 1] == views[t]->stride[i] * v0.size[i];
    if (merge) {
      d.size[d.nd - 1] *= v0.size[i];
      for (int t = 0; t < nt; ++t) d.stride[t][d.nd - 1] = views[t]->stride[i];
    } else {
      d.size[d.nd] = v0.size[i];
      for (int t = 0; t < nt; ++t) d.stride[t][d.nd] = views[t]->stride[i];
      ++d.nd;
    }
  }
  return d;
}

// Copies n elements of `bytes` each between a strided and a contiguous sequence.
void gather(const char* src, std::int64_t stride, std::int64_t n, std::size_t bytes, char* dst) {
  const std::size_t step = std::size_t(stride) * bytes;
  for (std::int64_t i = 0; i < n; ++i, src += step, dst += bytes) std::memcpy(dst, src, bytes);
}
void scatter(const char* src, std::int64_t n, std::size_t bytes, char* dst, std::int64_t stride) {
  const std::size_t step = std::size_t(stride) * bytes;
  for (std::int64_t i = 0; i < n; ++i, src += bytes, dst += step) std::memcpy(dst, src, bytes);
}

// ======================= threading =======================
constexpr std::int64_t kInlineElems = 16384;   // smaller problems stay on the calling thread
constexpr std::int64_t kMinThreadElems = 8192;  // at least this much work per thread
constexpr std::int64_t kMinChunk = 4096;        // smallest column chunk when a row is split
constexpr std::int64_t kMaxSharedStage = std::int64_t(8) << 20;  // bytes of stage for split rows
constexpr std::int64_t kColTile = kColumnTile;

int threads_for(std::int64_t total, int nthreads) {
  const std::int64_t t = total < kInlineElems ? 1 : std::min<std::int64_t>(nthreads, total / kMinThreadElems);
  return int(std::max<std::int64_t>(t, 1));
}

// Few long rows (e.g. one decoding row) are split into chunks of whole blocks so that all threads
// work on them; returns the chunk count (1: whole rows, one per task).
std::int64_t split_chunks(std::int64_t rows, std::int64_t cols, int t) {
  if (t <= 1 || rows >= 2 * t) return 1;
  return std::max<std::int64_t>(std::min<std::int64_t>(t, cols / kMinChunk), 1);
}
// First column of chunk j of `chunks` (block-aligned, so the blocks are the whole-row ones).
std::int64_t chunk_start(std::int64_t j, std::int64_t chunks, std::int64_t cols) {
  const std::int64_t nb = (cols + kBlock - 1) / kBlock;
  return j >= chunks ? cols : std::min(cols, (nb * j / chunks) * kBlock);
}

// Runs whole(r) for every row on t threads, contiguous groups of rows per task.
template <class F> void for_rows(std::int64_t rows, int t, F&& whole) {
  const std::int64_t ntasks = std::min<std::int64_t>(rows, std::int64_t(t) * 4);
  parallel_for(t, ntasks, [&](std::int64_t task) {
    for (std::int64_t r = rows * task / ntasks, end = rows * (task + 1) / ntasks; r < end; ++r) whole(r);
  });
}

// Asks the kernel for transparent huge pages on a large output that is probably freshly mmapped
// (fewer page faults while it is first written). Only the 2 MiB-aligned interior; errors ignored.
void advise_huge_pages(void* ptr, std::size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr std::uintptr_t kHuge = std::uintptr_t(2) << 20;
  if (bytes < (std::size_t(4) << 20)) return;
  const std::uintptr_t lo = (reinterpret_cast<std::uintptr_t>(ptr) + kHuge - 1) & ~(kHuge - 1);
  const std::uintptr_t hi = (reinterpret_cast<std::uintptr_t>(ptr) + bytes) & ~(kHuge - 1);
  if (hi > lo) (void)madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE);
#else
  (void)ptr;
  (void)bytes;
#endif
}

// Bytes from the first to one past the last element of a view.
std::size_t span_bytes(const View& v, int dtype) {
  std::int64_t last = 0;
  for (int i = 0; i < v.ndim; ++i) {
    if (v.size[i] == 0) return 0;
    last += (v.size[i] - 1) * v.stride[i];
  }
  return std::size_t(last + 1) * dtype_size(dtype);
}

// out_i = (x_i == +inf) ? hit : miss   (x may be null: every element gets `miss`)
void write_select(const void* x, int in_dtype, std::int64_t n, double hit, double miss, void* out, int out_dtype) {
  with_dtype(in_dtype, [&](auto* itag) {
    with_dtype(out_dtype, [&](auto* otag) {
      const auto* xp = static_cast<const wide::Pointee<decltype(itag)>*>(x);
      auto* op = static_cast<wide::Pointee<decltype(otag)>*>(out);
      for (std::int64_t i = 0; i < n; ++i) store_from(op + i, (xp && load_as<double>(xp + i) == kInf) ? hit : miss);
    });
  });
}

inline double shift_of(double m) { return std::isfinite(m) ? m : 0.0; }

// A row's normaliser from its block statistics, combined in block order (the same for any split).
struct RowNorm {
  enum Kind { kFinite, kNan, kPosInf } kind = kFinite;
  double m = -kInf;     // row max
  double s = 1;         // softmax: sum exp(x - m) (1 for a row of only -inf); +inf rows: their count
  double log_s = 0;     // log_softmax: log S (log_normaliser)
};

RowNorm combine(const BlockStat* st, std::int64_t nb, bool log, bool narrow) {
  RowNorm r;
  double pinf = 0;
  for (std::int64_t j = 0; j < nb; ++j) {
    if (std::isnan(st[j].m)) { r.kind = RowNorm::kNan; return r; }
    if (st[j].m == kInf) pinf += st[j].c;
    r.m = std::max(r.m, st[j].m);
  }
  if (pinf > 0) {
    r.kind = RowNorm::kPosInf;
    r.s = pinf;
    r.log_s = std::log(pinf);
    return r;
  }
  if (r.m == -kInf) return r;  // only -inf: softmax 0, log_softmax -inf
  double c = 0, d = 0;
  for (std::int64_t j = 0; j < nb; ++j) {
    if (st[j].m == r.m) {
      c += st[j].c;
      d += st[j].d;
    } else if (st[j].m != -kInf) {
      d += (st[j].c + st[j].d) * std::exp(st[j].m - r.m);
    }
  }
  if (log) {
    r.s = c + d;
    r.log_s = log_normaliser(c, d, narrow);
  } else {
    r.s = d;
  }
  return r;
}

// ======================= forward =======================
struct Forward {
  const ForwardArgs& a;
  const ForwardKernels* k;
  std::size_t in_bytes, out_bytes;
  bool narrow;  // float32 accumulation: softmax may stage exponentials as float32

  // Output of blocks [j0, j1) of a row whose statistics are st[0, nb); x, out, stage at block j0.
  void finish(const void* x, std::int64_t n, const BlockStat* st, std::int64_t nb, std::int64_t j0,
              const float* stage, void* out, double* factors) const {
    const RowNorm rn = combine(st, nb, a.log, narrow);
    if (rn.kind == RowNorm::kNan) {
      write_select(nullptr, a.in_dtype, n, kNaN, kNaN, out, a.out_dtype);
    } else if (rn.kind == RowNorm::kPosInf) {  // the row's limit: mass split evenly over its +inf entries
      if (a.log) write_select(x, a.in_dtype, n, -rn.log_s, -kInf, out, a.out_dtype);
      else write_select(x, a.in_dtype, n, 1.0 / rn.s, 0.0, out, a.out_dtype);
    } else if (a.log) {
      k->write_log(x, n, shift_of(rn.m), rn.log_s, out);
    } else {
      const std::int64_t nj = (n + kBlock - 1) / kBlock;
      double* shift = factors;
      double* f = factors + nj;
      for (std::int64_t j = 0; j < nj; ++j) {
        const BlockStat& b = st[j0 + j];
        shift[j] = shift_of(b.m);
        // exp(0) = 1 exactly: a short row (one block) needs no libm call
        f[j] = b.m == -kInf ? 0.0 : b.m == rn.m ? 1.0 / rn.s : std::exp(b.m - rn.m) / rn.s;
      }
      k->write_exp(x, stage, n, shift, f, out);
    }
  }

  // The whole op along one row (any strides; gathered / scattered through scratch when not unit).
  void row(const char* x, std::int64_t xs, char* out, std::int64_t os, std::int64_t n) const {
    const std::int64_t nb = (n + kBlock - 1) / kBlock;
    const std::size_t st_bytes = round_up(std::size_t(nb) * sizeof(BlockStat));
    const std::size_t f_bytes = round_up(std::size_t(nb) * 2 * sizeof(double));
    const std::size_t gx = xs == 1 ? 0 : round_up(std::size_t(n) * in_bytes);
    const std::size_t go = os == 1 ? 0 : round_up(std::size_t(n) * out_bytes);
    const bool stage_out = !a.log && narrow && a.out_dtype == kF32;  // exponentials staged in the output
    std::size_t stage_bytes = !a.log && narrow && !stage_out ? round_up(std::size_t(n) * sizeof(float)) : 0;
    std::size_t total = st_bytes + f_bytes + gx + go;
    if (total + stage_bytes > kScratchCap) stage_bytes = 0;  // recompute instead (bitwise the same)
    total += stage_bytes;
    Scratch scratch;
    char* buf = scratch.get(total);
    BlockStat* st = reinterpret_cast<BlockStat*>(buf);
    double* factors = reinterpret_cast<double*>(buf + st_bytes);
    char* xbuf = buf + st_bytes + f_bytes;
    char* obuf = xbuf + gx;
    float* stage_buf = stage_bytes ? reinterpret_cast<float*>(obuf + go) : nullptr;
    const char* xr = x;
    if (xs != 1) {
      gather(x, xs, n, in_bytes, xbuf);
      xr = xbuf;
    }
    char* orow = os == 1 ? out : obuf;
    float* stage = stage_out ? reinterpret_cast<float*>(orow) : stage_buf;
    k->stats(xr, n, stage, st, a.log);
    finish(xr, n, st, nb, 0, stage, orow, factors);
    if (os != 1) scatter(obuf, n, out_bytes, out, os);
  }

  void run() const {
    const View* views[2] = {&a.in_view, &a.out_view};
    const Dims d = make_dims(views, 2, a.dim);
    const char* in = static_cast<const char*>(a.in);
    char* out = static_cast<char*>(a.out);
    const std::int64_t n = d.n, rows = d.count();
    const int t = threads_for(rows * n, a.num_threads);
    const int inner = d.unit_inner();
    if (!d.rows_direct() && inner >= 0 && k->columns != nullptr) {  // reduce across rows, columns in vectors
      const std::int64_t width = d.size[inner], tiles = (width + kColTile - 1) / kColTile;
      const std::int64_t outer = d.count(inner);
      parallel_for(t, outer * tiles, [&](std::int64_t task) {
        std::int64_t off[2];
        d.offsets(task / tiles, off, inner);
        const std::int64_t c0 = (task % tiles) * kColTile, w = std::min(kColTile, width - c0);
        const char* x = in + std::size_t(off[0] + c0) * in_bytes;
        char* o = out + std::size_t(off[1] + c0) * out_bytes;
        if (k->columns(x, d.sn[0], n, w, o, d.sn[1], a.log)) return;
        for (std::int64_t c = 0; c < w; ++c)  // a column holds NaN / +inf / only -inf
          row(x + std::size_t(c) * in_bytes, d.sn[0], o + std::size_t(c) * out_bytes, d.sn[1], n);
      });
      return;
    }
    auto at = [&](std::int64_t r, std::int64_t* off) {
      if (d.nd <= 1) {
        off[0] = d.nd ? r * d.stride[0][0] : 0;
        off[1] = d.nd ? r * d.stride[1][0] : 0;
      } else {
        d.offsets(r, off);
      }
    };
    const std::int64_t chunks = d.rows_direct() ? split_chunks(rows, n, t) : 1;
    if (chunks <= 1 && d.rows_direct() && k->short_rows != nullptr && n <= kBlock && d.nd <= 1) {
      const std::int64_t xs = d.nd ? d.stride[0][0] : 0, os = d.nd ? d.stride[1][0] : 0;
      const std::int64_t ntasks = std::min<std::int64_t>(rows, std::int64_t(t) * 4);
      auto x_at = [&](std::int64_t r) { return in + std::size_t(r * xs) * in_bytes; };
      auto o_at = [&](std::int64_t r) { return out + std::size_t(r * os) * out_bytes; };
      parallel_for(t, ntasks, [&](std::int64_t task) {
        const std::int64_t end = rows * (task + 1) / ntasks;
        for (std::int64_t r = rows * task / ntasks; r < end; ++r) {
          r += k->short_rows(x_at(r), xs, end - r, n, o_at(r), os, a.log);
          if (r < end) row(x_at(r), 1, o_at(r), 1, n);  // a row with NaN, +inf or only -inf
        }
      });
      return;
    }
    if (chunks <= 1) {
      for_rows(rows, t, [&](std::int64_t r) {
        std::int64_t off[2];
        at(r, off);
        row(in + std::size_t(off[0]) * in_bytes, d.sn[0], out + std::size_t(off[1]) * out_bytes, d.sn[1], n);
      });
      return;
    }
    // Split rows: phase 1 computes the block statistics of every chunk, phase 2 combines each row's
    // (the same combination as for a whole row) and writes its chunks.
    const std::int64_t nb = (n + kBlock - 1) / kBlock;
    std::vector<BlockStat> st(std::size_t(rows * nb));
    const bool stage_out = !a.log && narrow && a.out_dtype == kF32;
    const bool shared = !a.log && narrow && !stage_out && rows * n * std::int64_t(sizeof(float)) <= kMaxSharedStage;
    Scratch scratch;
    float* stage = shared ? reinterpret_cast<float*>(scratch.get(std::size_t(rows * n) * sizeof(float), 1)) : nullptr;
    std::vector<std::int64_t> offs(std::size_t(rows * 2));
    for (std::int64_t r = 0; r < rows; ++r) at(r, &offs[std::size_t(2 * r)]);
    auto x_at = [&](std::int64_t r, std::int64_t c) { return in + std::size_t(offs[std::size_t(2 * r)] + c) * in_bytes; };
    auto o_at = [&](std::int64_t r, std::int64_t c) { return out + std::size_t(offs[std::size_t(2 * r + 1)] + c) * out_bytes; };
    auto stage_at = [&](std::int64_t r, std::int64_t c) -> float* {
      if (stage_out) return reinterpret_cast<float*>(o_at(r, c));
      return stage ? stage + r * n + c : nullptr;
    };
    parallel_for(t, rows * chunks, [&](std::int64_t i) {
      const std::int64_t r = i / chunks, j = i % chunks, c0 = chunk_start(j, chunks, n);
      const std::int64_t len = chunk_start(j + 1, chunks, n) - c0;
      k->stats(x_at(r, c0), len, stage_at(r, c0), &st[std::size_t(r * nb + c0 / kBlock)], a.log);
    });
    parallel_for(t, rows * chunks, [&](std::int64_t i) {
      const std::int64_t r = i / chunks, j = i % chunks, c0 = chunk_start(j, chunks, n);
      const std::int64_t len = chunk_start(j + 1, chunks, n) - c0;
      Scratch fs;
      double* factors = reinterpret_cast<double*>(fs.get(std::size_t((len + kBlock - 1) / kBlock) * 2 * sizeof(double)));
      finish(x_at(r, c0), len, &st[std::size_t(r * nb)], nb, c0 / kBlock, stage_at(r, c0), o_at(r, c0), factors);
    });
  }
};

// ======================= backward =======================
struct Backward {
  const BackwardArgs& a;
  const BackwardKernels* k;
  std::size_t y_bytes, g_bytes, out_bytes;

  void row(const char* y, std::int64_t ys, const char* g, std::int64_t gs, char* out, std::int64_t os,
           std::int64_t n) const {
    const std::int64_t nb = (n + kBlock - 1) / kBlock;
    const std::size_t sums = round_up(std::size_t(nb) * sizeof(double));
    const std::size_t gy = ys == 1 ? 0 : round_up(std::size_t(n) * y_bytes);
    const std::size_t gg = gs == 1 ? 0 : round_up(std::size_t(n) * g_bytes);
    const std::size_t go = os == 1 ? 0 : round_up(std::size_t(n) * out_bytes);
    Scratch scratch;
    char* buf = scratch.get(sums + gy + gg + go);
    double* bs = reinterpret_cast<double*>(buf);
    if (ys != 1) gather(y, ys, n, y_bytes, buf + sums), y = buf + sums;
    if (gs != 1) gather(g, gs, n, g_bytes, buf + sums + gy), g = buf + sums + gy;
    char* orow = os == 1 ? out : buf + sums + gy + gg;
    k->reduce(y, g, n, bs);
    double d = 0;
    for (std::int64_t j = 0; j < nb; ++j) d += bs[j];
    k->write(y, g, n, d, orow);
    if (os != 1) scatter(orow, n, out_bytes, out, os);
  }

  void run() const {
    const View* views[3] = {&a.y_view, &a.grad_view, &a.out_view};
    const Dims d = make_dims(views, 3, a.dim);
    const char* y = static_cast<const char*>(a.y);
    const char* g = static_cast<const char*>(a.grad);
    char* out = static_cast<char*>(a.out);
    const std::int64_t n = d.n, rows = d.count();
    const int t = threads_for(rows * n, a.num_threads);
    const int inner = d.unit_inner();
    auto ptrs = [&](const std::int64_t* off, std::int64_t c, const char** yp, const char** gp, char** op) {
      *yp = y + std::size_t(off[0] + c) * y_bytes;
      *gp = g + std::size_t(off[1] + c) * g_bytes;
      *op = out + std::size_t(off[2] + c) * out_bytes;
    };
    if (!d.rows_direct() && inner >= 0 && k->columns != nullptr) {
      const std::int64_t width = d.size[inner], tiles = (width + kColTile - 1) / kColTile;
      parallel_for(t, d.count(inner) * tiles, [&](std::int64_t task) {
        std::int64_t off[3];
        d.offsets(task / tiles, off, inner);
        const std::int64_t c0 = (task % tiles) * kColTile;
        const char *yp, *gp;
        char* op;
        ptrs(off, c0, &yp, &gp, &op);
        k->columns(yp, d.sn[0], gp, d.sn[1], n, std::min(kColTile, width - c0), op, d.sn[2]);
      });
      return;
    }
    const std::int64_t chunks = d.rows_direct() ? split_chunks(rows, n, t) : 1;
    if (chunks <= 1) {
      for_rows(rows, t, [&](std::int64_t r) {
        std::int64_t off[3];
        d.offsets(r, off);
        const char *yp, *gp;
        char* op;
        ptrs(off, 0, &yp, &gp, &op);
        row(yp, d.sn[0], gp, d.sn[1], op, d.sn[2], n);
      });
      return;
    }
    std::vector<std::int64_t> offs(std::size_t(rows * 3));  // few rows here
    for (std::int64_t r = 0; r < rows; ++r) d.offsets(r, &offs[std::size_t(3 * r)]);
    const std::int64_t nb = (n + kBlock - 1) / kBlock;
    std::vector<double> bs(std::size_t(rows * nb));
    parallel_for(t, rows * chunks, [&](std::int64_t i) {
      const std::int64_t r = i / chunks, j = i % chunks, c0 = chunk_start(j, chunks, n);
      const char *yp, *gp;
      char* op;
      ptrs(&offs[std::size_t(3 * r)], c0, &yp, &gp, &op);
      k->reduce(yp, gp, chunk_start(j + 1, chunks, n) - c0, &bs[std::size_t(r * nb + c0 / kBlock)]);
    });
    parallel_for(t, rows * chunks, [&](std::int64_t i) {
      const std::int64_t r = i / chunks, j = i % chunks, c0 = chunk_start(j, chunks, n);
      double dsum = 0;
      for (std::int64_t b = 0; b < nb; ++b) dsum += bs[std::size_t(r * nb + b)];
      const char *yp, *gp;
      char* op;
      ptrs(&offs[std::size_t(3 * r)], c0, &yp, &gp, &op);
      k->write(yp, gp, chunk_start(j + 1, chunks, n) - c0, dsum, op);
    });
  }
};

bool empty(const View& v) {
  for (int i = 0; i < v.ndim; ++i)
    if (v.size[i] == 0) return true;
  return false;
}

}  // namespace

// ======================= entry points =======================
void softmax_forward(const ForwardArgs& a) {
  if (empty(a.in_view)) return;
  const bool wide = a.in_dtype == kF64 || a.out_dtype == kF64;
  const Forward p{a, select_forward(a.in_dtype, a.out_dtype), dtype_size(a.in_dtype), dtype_size(a.out_dtype), !wide};
  advise_huge_pages(a.out, span_bytes(a.out_view, a.out_dtype));
  ThreadPool::follow(a.num_threads);
  p.run();
}

void softmax_backward(const BackwardArgs& a) {
  if (empty(a.y_view)) return;
  const Backward p{a, select_backward(a.y_dtype, a.grad_dtype, a.out_dtype, a.log), dtype_size(a.y_dtype),
                   dtype_size(a.grad_dtype), dtype_size(a.out_dtype)};
  advise_huge_pages(a.out, span_bytes(a.out_view, a.out_dtype));
  ThreadPool::follow(a.num_threads);
  p.run();
}

int pool_workers() { return ThreadPool::get().live_workers(); }
int pool_spin_us() { return ThreadPool::spin_us(); }

}  // namespace ssm

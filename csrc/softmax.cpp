// Portable scalar kernels, ISA dispatch, non-finite row handling and the threaded row drivers.
#include "softmax.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <limits>
#include <stdexcept>
#include <type_traits>
#include <vector>

#include "thread_pool.h"

#if defined(__linux__)
#include <sys/mman.h>
#endif
#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
#include <cpuid.h>
#define SSM_GNU_CPUID 1
#elif defined(_MSC_VER) && (defined(_M_X64) || defined(_M_IX86))
#include <immintrin.h>
#include <intrin.h>
#define SSM_MSVC_CPUID 1
#endif

namespace ssm {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// ======================= portable scalar kernels =======================
namespace scalar {
namespace {

template <class P> using Pointee = std::remove_pointer_t<P>;

// Blocked summation: 64-term partial sums in double added into a double total.
template <class F> double block_sum(std::int64_t n, F term) {
  double total = 0;
  for (std::int64_t b = 0; b < n; b += 64) {
    double block = 0;
    for (std::int64_t i = b, e = std::min(n, b + 64); i < e; ++i) block += double(term(i));
    total += block;
  }
  return total;
}

template <class In, class Acc> double max_k(const void* xv, std::int64_t n) {
  const In* x = static_cast<const In*>(xv);
  Acc m = -std::numeric_limits<Acc>::infinity();
  for (std::int64_t i = 0; i < n; ++i) {
    const Acc v = load_as<Acc>(x + i);
    m = v > m ? v : m;
  }
  return double(m);
}

template <class In, class Acc> double sum_exp_k(const void* xv, std::int64_t n, double c, float* stage) {
  const In* x = static_cast<const In*>(xv);
  const Acc cc = Acc(c);
  return block_sum(n, [&](std::int64_t i) {
    const Acc e = std::exp(load_as<Acc>(x + i) - cc);
    if (stage) stage[i] = float(e);
    return e;
  });
}

template <class In, class Out, class Acc> void write_exp_k(const void* x, std::int64_t n, double c, double k, void* out) {
  const Acc cc = Acc(c), kk = Acc(k);
  for (std::int64_t i = 0; i < n; ++i)
    store_from(static_cast<Out*>(out) + i, std::exp(load_as<Acc>(static_cast<const In*>(x) + i) - cc) * kk);
}

template <class In, class Out, class Acc> void write_log_k(const void* x, std::int64_t n, double c, double k, void* out) {
  const Acc cc = Acc(c), kk = Acc(k);
  for (std::int64_t i = 0; i < n; ++i)
    store_from(static_cast<Out*>(out) + i, (load_as<Acc>(static_cast<const In*>(x) + i) - cc) - kk);
}

template <class Out> void write_scaled_k(const float* stage, std::int64_t n, double k, void* out) {
  const float kk = float(k);
  for (std::int64_t i = 0; i < n; ++i) store_from(static_cast<Out*>(out) + i, stage[i] * kk);
}

template <class In, class Out, class Acc> const ForwardKernels* forward_table() {
  static const ForwardKernels k = {&max_k<In, Acc>, &sum_exp_k<In, Acc>, &write_exp_k<In, Out, Acc>,
                                   &write_log_k<In, Out, Acc>, &write_scaled_k<Out>, nullptr, nullptr};
  return &k;
}

template <class Y, class G, class Acc, bool Log> double reduce_k(const void* y, const void* g, std::int64_t n) {
  const Y* yp = static_cast<const Y*>(y);
  const G* gp = static_cast<const G*>(g);
  return block_sum(n, [&](std::int64_t i) { return Log ? load_as<Acc>(gp + i) : load_as<Acc>(gp + i) * load_as<Acc>(yp + i); });
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
  static const BackwardKernels k[2] = {{&reduce_k<Y, G, Acc, false>, &bwd_write_k<Y, G, O, Acc, false>},
                                       {&reduce_k<Y, G, Acc, true>, &bwd_write_k<Y, G, O, Acc, true>}};
  return &k[log ? 1 : 0];
}

}  // namespace

const ForwardKernels* forward_kernels(int in_dtype, int out_dtype) {
  const ForwardKernels* r = nullptr;
  const bool wide = in_dtype == kF64 || out_dtype == kF64;
  with_dtype(in_dtype, [&](auto* i) {
    with_dtype(out_dtype, [&](auto* o) {
      using In = Pointee<decltype(i)>;
      using Out = Pointee<decltype(o)>;
      r = wide ? forward_table<In, Out, double>() : forward_table<In, Out, float>();
    });
  });
  return r;
}

const BackwardKernels* backward_kernels(int y_dtype, int g_dtype, int out_dtype, bool log) {
  const BackwardKernels* r = nullptr;
  const bool wide = y_dtype == kF64 || g_dtype == kF64 || out_dtype == kF64;
  with_dtype(y_dtype, [&](auto* y) {
    with_dtype(g_dtype, [&](auto* g) {
      with_dtype(out_dtype, [&](auto* o) {
        using Y = Pointee<decltype(y)>;
        using G = Pointee<decltype(g)>;
        using O = Pointee<decltype(o)>;
        r = wide ? backward_table<Y, G, O, double>(log) : backward_table<Y, G, O, float>(log);
      });
    });
  });
  return r;
}

}  // namespace scalar

// ======================= CPU features and ISA selection =======================
namespace {

CpuFeatures detect_features() {
  CpuFeatures f{false, false, false};
#if defined(SSM_GNU_CPUID) || defined(SSM_MSVC_CPUID)
  unsigned r1[4] = {0, 0, 0, 0}, r7[4] = {0, 0, 0, 0};
  unsigned long long xcr0 = 0;
#if defined(SSM_GNU_CPUID)
  if (!__get_cpuid(1, &r1[0], &r1[1], &r1[2], &r1[3])) return f;
  __get_cpuid_count(7, 0, &r7[0], &r7[1], &r7[2], &r7[3]);
  const bool osxsave = (r1[2] >> 27) & 1u;
  if (osxsave) {
    unsigned lo, hi;
    __asm__ __volatile__("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    xcr0 = (static_cast<unsigned long long>(hi) << 32) | lo;
  }
#else
  int i1[4], i7[4];
  __cpuid(i1, 1);
  __cpuidex(i7, 7, 0);
  for (int j = 0; j < 4; ++j) { r1[j] = unsigned(i1[j]); r7[j] = unsigned(i7[j]); }
  if ((r1[2] >> 27) & 1u) xcr0 = _xgetbv(0);
#endif
  // AVX needs the OS to save the YMM state (XCR0 bits 1 and 2).
  const bool avx = ((r1[2] >> 28) & 1u) && (xcr0 & 6u) == 6u;
  f.avx2 = avx && ((r7[1] >> 5) & 1u);
  f.fma = avx && ((r1[2] >> 12) & 1u);
  f.f16c = avx && ((r1[2] >> 29) & 1u);
#endif
  return f;
}

const CpuFeatures& features() {
  static const CpuFeatures f = detect_features();
  return f;
}

bool avx2_usable() {
  const CpuFeatures& f = features();
  return f.avx2 && f.fma && f.f16c && avx2::forward_kernels(kF32, kF32) != nullptr;
}

enum Isa : int { kIsaScalar = 0, kIsaAvx2 = 1 };
std::atomic<int> g_isa{-1};  // -1: not chosen yet ("auto")

int active_isa() {
  int isa = g_isa.load(std::memory_order_relaxed);
  if (isa < 0) {
    isa = avx2_usable() ? kIsaAvx2 : kIsaScalar;
    g_isa.store(isa, std::memory_order_relaxed);
  }
  return isa;
}

const ForwardKernels* select_forward(int in_dtype, int out_dtype) {
  const ForwardKernels* k = active_isa() == kIsaAvx2 ? avx2::forward_kernels(in_dtype, out_dtype) : nullptr;
  return k ? k : scalar::forward_kernels(in_dtype, out_dtype);
}

const BackwardKernels* select_backward(int y_dtype, int g_dtype, int out_dtype, bool log) {
  const BackwardKernels* k =
      active_isa() == kIsaAvx2 ? avx2::backward_kernels(y_dtype, g_dtype, out_dtype, log) : nullptr;
  return k ? k : scalar::backward_kernels(y_dtype, g_dtype, out_dtype, log);
}

// ======================= threaded row driver =======================
constexpr std::int64_t kInlineElems = 16384;   // smaller problems stay on the calling thread
constexpr std::int64_t kMinThreadElems = 8192;  // at least this much work per thread
constexpr std::int64_t kMinChunk = 4096;        // smallest column chunk when a row is split
constexpr std::int64_t kMaxSharedStage = std::int64_t(8) << 20;  // bytes of stage for split rows

float* thread_scratch(std::int64_t n) {
  thread_local std::vector<float> buf;
  if (std::int64_t(buf.size()) < n) buf.resize(std::size_t(n));
  return buf.data();
}

// Runs a row problem P over rows x cols. P provides
//   Partial reduce(row, c0, n, scratch)                  partial statistics of columns [c0, c0+n)
//   void write(row, c0, n, parts, nparts, self, scratch) output for those columns, given all partials
//   bool wants_scratch                                   a float stage buffer: per thread of `cols` for
//                                                        whole rows; for split rows, one of rows x cols
//                                                        owned by the calling thread (up to 8 MiB;
//                                                        the calling thread waits for the workers)
// With enough rows, threads take contiguous groups of whole rows. With few rows (e.g. one decoding
// row), each row is split into column chunks: phase 1 computes every chunk's partial, phase 2
// combines a row's partials and writes each chunk; both phases use all threads.
template <class P>
void drive(P& p, std::int64_t rows, std::int64_t cols, int nthreads) {
  using Partial = typename P::Partial;
  const std::int64_t total = rows * cols;
  std::int64_t t = total < kInlineElems ? 1 : std::min<std::int64_t>(nthreads, total / kMinThreadElems);
  t = std::max<std::int64_t>(t, 1);
  const std::int64_t chunks = std::min(t, cols / kMinChunk);
  if (t > 1 && rows < 2 * t && chunks > 1) {
    auto bound = [&](std::int64_t j) { return j == chunks ? cols : (cols * j / chunks) & ~std::int64_t(63); };
    std::vector<Partial> parts(std::size_t(rows * chunks));
    const bool shared = p.wants_scratch && rows * cols * std::int64_t(sizeof(float)) <= kMaxSharedStage;
    float* stage = shared ? thread_scratch(rows * cols) : nullptr;
    auto stage_at = [&](std::int64_t r, std::int64_t c0) { return stage ? stage + r * cols + c0 : nullptr; };
    parallel_for(int(t), rows * chunks, [&](std::int64_t i) {
      const std::int64_t r = i / chunks, j = i % chunks, c0 = bound(j);
      parts[std::size_t(i)] = p.reduce(r, c0, bound(j + 1) - c0, stage_at(r, c0));
    });
    parallel_for(int(t), rows * chunks, [&](std::int64_t i) {
      const std::int64_t r = i / chunks, j = i % chunks, c0 = bound(j);
      p.write(r, c0, bound(j + 1) - c0, &parts[std::size_t(r * chunks)], int(chunks), int(j), stage_at(r, c0));
    });
    return;
  }
  const std::int64_t ntasks = std::min(rows, t * 4);
  parallel_for(int(t), ntasks, [&](std::int64_t task) {
    float* scratch = p.wants_scratch ? thread_scratch(cols) : nullptr;
    for (std::int64_t r = rows * task / ntasks, end = rows * (task + 1) / ntasks; r < end; ++r) {
      const Partial part = p.reduce(r, 0, cols, scratch);
      p.write(r, 0, cols, &part, 1, 0, scratch);
    }
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

std::size_t span_bytes(std::int64_t rows, std::int64_t cols, std::int64_t stride, int dtype) {
  return std::size_t((rows - 1) * stride + cols) * dtype_size(dtype);
}

// ---- scalar helpers for the rare non-finite rows (any dtype) ----
double count_pos_inf(const void* x, int dtype, std::int64_t n) {  // NaN if the segment holds a NaN
  double count = 0;
  with_dtype(dtype, [&](auto* tag) {
    const auto* p = static_cast<const scalar::Pointee<decltype(tag)>*>(x);
    for (std::int64_t i = 0; i < n; ++i) {
      const double v = load_as<double>(p + i);
      if (std::isnan(v)) { count = kNaN; return; }
      count += v == kInf ? 1 : 0;
    }
  });
  return count;
}

// out_i = (x_i == +inf) ? hit : miss   (x may be null: every element gets `miss`)
void write_select(const void* x, int in_dtype, std::int64_t n, double hit, double miss, void* out, int out_dtype) {
  with_dtype(in_dtype, [&](auto* itag) {
    with_dtype(out_dtype, [&](auto* otag) {
      const auto* xp = static_cast<const scalar::Pointee<decltype(itag)>*>(x);
      auto* op = static_cast<scalar::Pointee<decltype(otag)>*>(out);
      for (std::int64_t i = 0; i < n; ++i) store_from(op + i, (xp && load_as<double>(xp + i) == kInf) ? hit : miss);
    });
  });
}

inline double shift_of(double m) { return std::isfinite(m) ? m : 0.0; }

struct ForwardProblem {
  struct Partial { double m, s; };  // segment max and sum of exp(x - shift_of(m)) (or +inf count)
  const ForwardArgs& a;
  const ForwardKernels* k;
  bool stage_in_out;  // float32 softmax output: exp values go to `out` first, scaled in place
  bool wants_scratch;

  const char* in_at(std::int64_t r, std::int64_t c) const {
    return static_cast<const char*>(a.in) + std::size_t(r * a.in_stride + c) * dtype_size(a.in_dtype);
  }
  char* out_at(std::int64_t r, std::int64_t c) const {
    return static_cast<char*>(a.out) + std::size_t(r * a.out_stride + c) * dtype_size(a.out_dtype);
  }
  float* stage_for(std::int64_t r, std::int64_t c0, float* scratch) const {
    if (a.log) return nullptr;
    return stage_in_out ? reinterpret_cast<float*>(out_at(r, c0)) : scratch;
  }

  // Whole rows take the one-pass `online` kernel when the ISA has it (reduce and write of a whole
  // row run on the same thread, one after the other, so the block maxima can live in a
  // thread-local buffer between them).
  bool online(std::int64_t n) const { return k->online != nullptr && n == a.cols; }
  static float* block_maxima(std::int64_t n) {
    thread_local std::vector<float> buf;
    const std::size_t blocks = std::size_t((n + kOnlineBlock - 1) / kOnlineBlock);
    if (buf.size() < blocks) buf.resize(blocks);
    return buf.data();
  }

  Partial reduce(std::int64_t r, std::int64_t c0, std::int64_t n, float* scratch) const {
    const void* x = in_at(r, c0);
    if (online(n)) {
      double m = 0, s = 0;
      k->online(x, n, stage_for(r, c0, scratch), block_maxima(n), &m, &s);
      if (std::isnan(m)) return {m, kNaN};
      if (m == kInf) return {m, count_pos_inf(x, a.in_dtype, n)};
      return {m, s};  // s = sum exp(x - m); 0 for a row of only -inf
    }
    const double m = k->max(x, n);
    if (std::isnan(m)) return {m, kNaN};
    if (m == kInf) return {m, count_pos_inf(x, a.in_dtype, n)};
    return {m, k->sum_exp(x, n, shift_of(m), stage_for(r, c0, scratch))};
  }

  void write(std::int64_t r, std::int64_t c0, std::int64_t n, const Partial* parts, int nparts, int self,
             float* scratch) const {
    const void* x = in_at(r, c0);
    void* out = out_at(r, c0);
    double m = -kInf;
    for (int j = 0; j < nparts; ++j) {
      if (std::isnan(parts[j].m) || std::isnan(parts[j].s)) {  // any NaN: the whole row is NaN
        write_select(nullptr, a.in_dtype, n, kNaN, kNaN, out, a.out_dtype);
        return;
      }
      m = std::max(m, parts[j].m);
    }
    if (m == kInf) {  // the row's limit: mass split evenly over its +inf entries
      double count = 0;
      for (int j = 0; j < nparts; ++j) count += parts[j].m == kInf ? parts[j].s : 0;
      if (a.log) write_select(x, a.in_dtype, n, -std::log(count), -kInf, out, a.out_dtype);
      else write_select(x, a.in_dtype, n, 1.0 / count, 0.0, out, a.out_dtype);
      return;
    }
    // Rescale segment sums to the row's shift; empty (all -inf) segments contribute nothing.
    const double c = shift_of(m);
    double s = 0;
    for (int j = 0; j < nparts; ++j)
      if (parts[j].s != 0) s += parts[j].s * std::exp(shift_of(parts[j].m) - c);
    if (s == 0) s = 1;  // a row of only -inf
    if (a.log) {
      k->write_log(x, n, c, std::log(s), out);
    } else if (float* stage = stage_for(r, c0, scratch)) {
      // stage holds exp(x - own shift); an all -inf segment staged zeros (and must not scale by e^-c).
      const Partial& own = parts[self];
      if (online(n) && own.s != 0) k->write_blocks(stage, block_maxima(n), n, c, 1.0 / s, out);
      else k->write_scaled(stage, n, own.s == 0 ? 0.0 : std::exp(shift_of(own.m) - c) / s, out);
    } else {
      k->write_exp(x, n, c, 1.0 / s, out);
    }
  }
};

struct BackwardProblem {
  using Partial = double;
  const BackwardArgs& a;
  const BackwardKernels* k;
  bool wants_scratch = false;

  template <class T> T* at(T* base, std::int64_t r, std::int64_t c, std::int64_t stride, int dtype) const {
    using Byte = std::conditional_t<std::is_const<T>::value, const char, char>;
    return reinterpret_cast<Byte*>(base) + std::size_t(r * stride + c) * dtype_size(dtype);
  }
  double reduce(std::int64_t r, std::int64_t c0, std::int64_t n, float*) const {
    return k->reduce(at(a.y, r, c0, a.y_stride, a.y_dtype), at(a.grad, r, c0, a.grad_stride, a.grad_dtype), n);
  }
  void write(std::int64_t r, std::int64_t c0, std::int64_t n, const double* parts, int nparts, int, float*) const {
    double d = 0;
    for (int j = 0; j < nparts; ++j) d += parts[j];
    k->write(at(a.y, r, c0, a.y_stride, a.y_dtype), at(a.grad, r, c0, a.grad_stride, a.grad_dtype), n, d,
             at(a.out, r, c0, a.out_stride, a.out_dtype));
  }
};

}  // namespace

// ======================= entry points =======================
void softmax_forward(const ForwardArgs& a) {
  if (a.rows == 0 || a.cols == 0) return;
  const bool wide = a.in_dtype == kF64 || a.out_dtype == kF64;
  ForwardProblem p{a, select_forward(a.in_dtype, a.out_dtype), !a.log && !wide && a.out_dtype == kF32,
                   !a.log && !wide && a.out_dtype != kF32};  // 16-bit out: stage exp in a per-thread buffer (faster than recomputing)
  advise_huge_pages(a.out, span_bytes(a.rows, a.cols, a.out_stride, a.out_dtype));
  drive(p, a.rows, a.cols, a.num_threads);
}

void softmax_backward(const BackwardArgs& a) {
  if (a.rows == 0 || a.cols == 0) return;
  BackwardProblem p{a, select_backward(a.y_dtype, a.grad_dtype, a.out_dtype, a.log)};
  advise_huge_pages(a.out, span_bytes(a.rows, a.cols, a.out_stride, a.out_dtype));
  drive(p, a.rows, a.cols, a.num_threads);
}

CpuFeatures cpu_features() { return features(); }

void set_isa(const std::string& name) {
  if (name == "auto") {
    g_isa.store(avx2_usable() ? kIsaAvx2 : kIsaScalar);
  } else if (name == "scalar") {
    g_isa.store(kIsaScalar);
  } else if (name == "avx2") {
    if (!avx2_usable())
      throw std::invalid_argument("set_isa('avx2'): this CPU or build lacks AVX2/FMA/F16C kernels");
    g_isa.store(kIsaAvx2);
  } else {
    throw std::invalid_argument("set_isa: expected 'auto', 'avx2' or 'scalar', got '" + name + "'");
  }
}

const char* current_isa() { return active_isa() == kIsaAvx2 ? "avx2" : "scalar"; }

}  // namespace ssm

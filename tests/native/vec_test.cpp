// Tests of the vector layer itself (csrc/vec_<isa>.h): every API function of every ISA compiled into
// this program and supported by this CPU (scalar always; avx2 / avx512 on x86-64 when the CPU and OS
// have them; neon on aarch64) against exact expectations computed here in plain C++ (the scalar
// conversions of csrc/softmax.h, IEEE float arithmetic, std::fma, ...) on random and special inputs:
// NaN, +-inf, -0, subnormals, every float16 / bfloat16 bit pattern and every rounding tie between two
// neighbouring float16 / bfloat16 values, overflow to inf. Tail loads / stores run with the data at
// the very end of a readable page followed by a PROT_NONE page, so reading or writing past n faults.
//
// Build: this file with baseline flags plus vec_isa_<isa>.cpp each with its ISA's flags (see .ci/arm.sh):
//   g++ -O2 -std=c++17 tests/native/vec_test.cpp tests/native/vec_isa_scalar.cpp tests/native/vec_isa_neon.cpp
//       [x86: vec_isa_avx2.cpp (-mavx2 -mfma -mf16c), vec_isa_avx512.cpp (-mavx512f -mavx512bw -mavx512vl
//       -mavx512dq -mfma -mf16c)]
// Prints "N passed, N failed" and exits non-zero on any failure. Argument: ISA names to restrict to.
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "../../csrc/softmax.h"
#include "vec_ops.h"

namespace {

using vt::kMaxLanes;
using vt::VecOps;

int g_passed = 0, g_failed = 0;
const char* g_isa = "";
const char* g_what = "";

// One named check: passes when `ok` held for every case it was given.
struct Check {
  const char* name;
  bool ok = true;
  int reported = 0;
  explicit Check(const char* n) : name(n) { g_what = n; }
  template <class... A> void fail(const char* fmt, A... a) {
    ok = false;
    if (reported++ < 3) {
      std::printf("FAIL [%s] %s: ", g_isa, name);
      std::printf(fmt, a...);
      std::printf("\n");
    }
  }
  ~Check() { ok ? ++g_passed : ++g_failed; }
};

void on_fault(int) {
  const char* a = "vec_test: memory fault (a tail load/store touched memory past n?) in ";
  (void)!write(2, a, std::strlen(a));
  (void)!write(2, g_isa, std::strlen(g_isa));
  (void)!write(2, " / ", 3);
  (void)!write(2, g_what, std::strlen(g_what));
  (void)!write(2, "\n", 1);
  _exit(2);
}

std::uint32_t fbits(float f) { return ssm::float_bits(f); }
float bfloat(std::uint32_t b) { return ssm::bits_float(b); }
bool same_bits(float a, float b) { return fbits(a) == fbits(b); }
bool is_nan(float f) { return f != f; }
// Equal bits, or both NaN (an operation's NaN payload is not specified).
bool same_or_nan(float got, float want) { return is_nan(want) ? is_nan(got) : same_bits(got, want); }
bool same_d(double a, double b) {
  std::uint64_t x, y;
  std::memcpy(&x, &a, 8);
  std::memcpy(&y, &b, 8);
  return x == y;
}

// Random floats: a mix of special values, arbitrary bit patterns (every exponent: NaN, inf,
// subnormals), moderate values, values of random magnitude, small integers and halves (rounding ties).
struct Gen {
  std::mt19937 rng;
  explicit Gen(std::uint32_t seed) : rng(seed) {}
  std::uint32_t u32() { return std::uint32_t(rng()); }
  float special() {
    static const float s[] = {0.0f, -0.0f, std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity(),
                              std::numeric_limits<float>::quiet_NaN(), -std::numeric_limits<float>::quiet_NaN(),
                              bfloat(0x7fa00001u) /* signalling NaN */, bfloat(0x00000001u), bfloat(0x807fffffu),
                              bfloat(0x00800000u), std::numeric_limits<float>::max(), -std::numeric_limits<float>::max(),
                              1.0f, -1.0f, 0.5f, -0.5f, 1.5f, 2.5f, -2.5f, 65504.0f, 65520.0f, -65520.0f, 5.9604645e-08f,
                              2.9802322e-08f, 8388608.5f, 16777216.0f, 1e-45f};
    return s[u32() % (sizeof s / sizeof s[0])];
  }
  float operator()() {
    switch (u32() % 8) {
      case 0: return special();
      case 1:
      case 2: return bfloat(u32());
      case 3:
      case 4: return std::uniform_real_distribution<float>(-10.0f, 10.0f)(rng);
      case 5: return std::ldexp(std::uniform_real_distribution<float>(-1.0f, 1.0f)(rng), int(u32() % 300) - 150);
      case 6: return float(int(u32() % 33) - 16) * 0.5f;
      default: return std::uniform_real_distribution<float>(0.0f, 1.0f)(rng);
    }
  }
  void fill(float* v, int n) { for (int i = 0; i < n; ++i) v[i] = (*this)(); }
  void fill_finite(float* v, int n) {
    for (int i = 0; i < n; ++i) do v[i] = (*this)(); while (!std::isfinite(v[i]));
  }
};

// ---- page-guarded memory: a readable page followed by a PROT_NONE page ----
struct Guarded {
  std::size_t page;
  unsigned char* base;
  Guarded() {
    page = std::size_t(sysconf(_SC_PAGESIZE));
    void* m = mmap(nullptr, 2 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) { std::perror("mmap"); std::exit(3); }
    base = static_cast<unsigned char*>(m);
    if (mprotect(base + page, page, PROT_NONE) != 0) { std::perror("mprotect"); std::exit(3); }
  }
  ~Guarded() { munmap(base, 2 * page); }
  // `count` elements of T ending exactly at the guard page; the rest of the page filled with 0xA5
  template <class T> T* tail(int count) {
    std::memset(base, 0xA5, page);
    return reinterpret_cast<T*>(base + page) - count;
  }
  // the page before the last `bytes` bytes is still 0xA5
  bool untouched_before(std::size_t bytes) const {
    for (std::size_t i = 0; i + bytes < page; ++i)
      if (base[i] != 0xA5) return false;
    return true;
  }
};

float widen_f16(std::uint16_t h) { return ssm::half_to_float(h); }
float widen_bf16(std::uint16_t h) { return ssm::bf16_to_float(h); }
bool half_is_nan(std::uint16_t h) { return (h & 0x7c00u) == 0x7c00u && (h & 0x3ffu) != 0; }

// A widened float16: exact (a NaN: a NaN of the same sign; its payload's quiet bit may be set).
bool widened_ok(std::uint16_t h, float got) {
  const float want = widen_f16(h);
  if (half_is_nan(h)) return is_nan(got) && (fbits(got) >> 31) == (fbits(want) >> 31);
  return same_bits(got, want);
}
// A narrowed float16: round to nearest even (a NaN: a quiet NaN of the same sign).
bool narrowed_ok(float f, std::uint16_t got) {
  if (is_nan(f)) return half_is_nan(got) && (got & 0x200u) && (got >> 15) == (fbits(f) >> 31);
  return got == ssm::float_to_half(f);
}

// ---- loads and stores ----
void test_conversions(const VecOps& o, Gen& g) {
  const int L = o.lanes;
  float r[kMaxLanes];
  std::uint16_t h[kMaxLanes];
  {
    Check c("load(Half*): every float16 bit pattern widens exactly");
    for (std::uint32_t b = 0; b < 65536; b += std::uint32_t(L)) {
      for (int l = 0; l < L; ++l) h[l] = std::uint16_t(b + std::uint32_t(l));
      o.load_f16(h, r);
      for (int l = 0; l < L; ++l)
        if (!widened_ok(h[l], r[l])) c.fail("0x%04x -> 0x%08x, want 0x%08x", h[l], fbits(r[l]), fbits(widen_f16(h[l])));
    }
  }
  {
    Check c("load(BFloat16*): every bfloat16 bit pattern widens exactly (NaN bits kept)");
    for (std::uint32_t b = 0; b < 65536; b += std::uint32_t(L)) {
      for (int l = 0; l < L; ++l) h[l] = std::uint16_t(b + std::uint32_t(l));
      o.load_bf16(h, r);
      for (int l = 0; l < L; ++l)
        if (!same_bits(r[l], widen_bf16(h[l]))) c.fail("0x%04x -> 0x%08x", h[l], fbits(r[l]));
    }
  }
  // Narrowing: every float16 value, every tie between neighbours (odd and even), points just
  // above and below each tie, overflow past 65504, subnormals; then random floats.
  std::vector<float> f16_inputs, bf16_inputs;
  for (std::uint32_t b = 0; b < 0x7c00u; ++b) {
    for (std::uint32_t s : {0u, 0x8000u}) {
      const float lo = widen_f16(std::uint16_t(b | s));
      const float hi = b + 1 < 0x7c00u ? widen_f16(std::uint16_t((b + 1) | s)) : (s ? -65536.0f : 65536.0f);
      const float mid = lo + (hi - lo) * 0.5f;  // exact in float: float16 has 11 significant bits
      f16_inputs.insert(f16_inputs.end(), {lo, mid, std::nextafter(mid, lo), std::nextafter(mid, hi)});
    }
  }
  for (std::uint32_t b = 0; b < 65536; ++b) {
    const std::uint32_t w = b << 16;
    bf16_inputs.insert(bf16_inputs.end(), {bfloat(w), bfloat(w | 0x8000u), bfloat(w | 0x7fffu), bfloat(w | 0x8001u),
                                           bfloat(w | (g.u32() & 0xffffu))});
  }
  for (int i = 0; i < 200000; ++i) {
    const float f = g();
    f16_inputs.push_back(f);
    bf16_inputs.push_back(f);
  }
  for (float f : {65504.0f, 65519.996f, 65520.0f, 1e6f, 3.4e38f, std::numeric_limits<float>::infinity(),
                  std::numeric_limits<float>::quiet_NaN(), bfloat(0xffc12345u), bfloat(0x7f800001u), 2.9802322e-08f,
                  2.9802326e-08f, 1e-45f, -0.0f}) {
    f16_inputs.push_back(f);
    f16_inputs.push_back(-f);
    bf16_inputs.push_back(f);
    bf16_inputs.push_back(-f);
  }
  while (f16_inputs.size() % std::size_t(L)) f16_inputs.push_back(0.0f);
  while (bf16_inputs.size() % std::size_t(L)) bf16_inputs.push_back(0.0f);
  {
    Check c("store(Half*): round to nearest even, ties, overflow to inf, subnormals kept, NaN quiet");
    for (std::size_t i = 0; i < f16_inputs.size(); i += std::size_t(L)) {
      o.store_f16(&f16_inputs[i], h);
      for (int l = 0; l < L; ++l) {
        const float f = f16_inputs[i + std::size_t(l)];
        if (!narrowed_ok(f, h[l])) c.fail("%a (0x%08x) -> 0x%04x, want 0x%04x", double(f), fbits(f), h[l], ssm::float_to_half(f));
      }
    }
  }
  {
    Check c("store(BFloat16*): round to nearest even (integer rounding), ties, overflow, subnormals, NaN quiet");
    for (std::size_t i = 0; i < bf16_inputs.size(); i += std::size_t(L)) {
      o.store_bf16(&bf16_inputs[i], h);
      for (int l = 0; l < L; ++l) {
        const float f = bf16_inputs[i + std::size_t(l)];
        if (h[l] != ssm::float_to_bf16(f)) c.fail("0x%08x -> 0x%04x, want 0x%04x", fbits(f), h[l], ssm::float_to_bf16(f));
      }
    }
  }
  {
    Check c("load(float*) / store(float*): bit exact (NaN payloads, -0, subnormals)");
    float a[kMaxLanes], b[kMaxLanes];
    for (int it = 0; it < 20000; ++it) {
      for (int l = 0; l < L; ++l) a[l] = bfloat(g.u32());
      o.load_f32(a, r);
      o.store_f32(a, b);
      for (int l = 0; l < L; ++l)
        if (!same_bits(r[l], a[l]) || !same_bits(b[l], a[l])) c.fail("0x%08x -> 0x%08x / 0x%08x", fbits(a[l]), fbits(r[l]), fbits(b[l]));
    }
  }
}

// Full loads / stores and tails n = 0 .. kLanes - 1 with the data ending at a guard page.
void test_tails(const VecOps& o, Gen& g) {
  const int L = o.lanes;
  Guarded mem;
  float r[kMaxLanes], a[kMaxLanes];
  const float pads[] = {0.0f, -std::numeric_limits<float>::infinity(), std::numeric_limits<float>::quiet_NaN(), -0.0f, 7.25f};
  {
    Check c("load / store of kLanes elements ending at a guard page");
    g.fill(a, L);
    float* pf = mem.tail<float>(L);
    std::memcpy(pf, a, sizeof(float) * std::size_t(L));
    o.load_f32(pf, r);
    for (int l = 0; l < L; ++l) if (!same_bits(r[l], a[l])) c.fail("float lane %d", l);
    std::uint16_t* ph = mem.tail<std::uint16_t>(L);
    for (int l = 0; l < L; ++l) ph[l] = std::uint16_t(g.u32());
    o.load_f16(ph, r);
    for (int l = 0; l < L; ++l) if (!widened_ok(ph[l], r[l])) c.fail("half lane %d", l);
    o.load_bf16(ph, r);
    for (int l = 0; l < L; ++l) if (!same_bits(r[l], widen_bf16(ph[l]))) c.fail("bf16 lane %d", l);
    o.store_f32(a, mem.tail<float>(L));
    if (!mem.untouched_before(sizeof(float) * std::size_t(L))) c.fail("store(float*) wrote before p");
    o.store_f16(a, mem.tail<std::uint16_t>(L));
    if (!mem.untouched_before(2 * std::size_t(L))) c.fail("store(Half*) wrote before p");
    o.store_bf16(a, mem.tail<std::uint16_t>(L));
    if (!mem.untouched_before(2 * std::size_t(L))) c.fail("store(BFloat16*) wrote before p");
  }
  {
    Check c("load_tail(p, n, pad): lanes < n loaded, lanes >= n = pad, reads only p[0, n)");
    for (int rep = 0; rep < 50; ++rep)
      for (int n = 0; n < L; ++n)
        for (float pad : pads) {
          g.fill(a, L);
          float* pf = mem.tail<float>(n);
          std::memcpy(pf, a, sizeof(float) * std::size_t(n));
          o.load_tail_f32(pf, n, pad, r);
          for (int l = 0; l < L; ++l)
            if (!same_bits(r[l], l < n ? a[l] : pad)) c.fail("float n=%d lane %d: 0x%08x", n, l, fbits(r[l]));
          std::uint16_t* ph = mem.tail<std::uint16_t>(n);
          for (int l = 0; l < n; ++l) ph[l] = std::uint16_t(g.u32());
          o.load_tail_f16(ph, n, pad, r);
          for (int l = 0; l < L; ++l)
            if (l < n ? !widened_ok(ph[l], r[l]) : !same_bits(r[l], pad)) c.fail("half n=%d lane %d: 0x%08x", n, l, fbits(r[l]));
          o.load_tail_bf16(ph, n, pad, r);
          for (int l = 0; l < L; ++l)
            if (!same_bits(r[l], l < n ? widen_bf16(ph[l]) : pad)) c.fail("bf16 n=%d lane %d: 0x%08x", n, l, fbits(r[l]));
        }
  }
  {
    Check c("store_tail(p, n, v): writes p[0, n) only, the values store() writes");
    for (int rep = 0; rep < 50; ++rep)
      for (int n = 0; n < L; ++n) {
        g.fill(a, L);
        float* pf = mem.tail<float>(n);
        o.store_tail_f32(a, n, pf);
        for (int l = 0; l < n; ++l) if (!same_bits(pf[l], a[l])) c.fail("float n=%d lane %d", n, l);
        if (!mem.untouched_before(sizeof(float) * std::size_t(n))) c.fail("float n=%d wrote before p", n);
        std::uint16_t* ph = mem.tail<std::uint16_t>(n);
        o.store_tail_f16(a, n, ph);
        for (int l = 0; l < n; ++l) if (!narrowed_ok(a[l], ph[l])) c.fail("half n=%d lane %d", n, l);
        if (!mem.untouched_before(2 * std::size_t(n))) c.fail("half n=%d wrote before p", n);
        ph = mem.tail<std::uint16_t>(n);
        o.store_tail_bf16(a, n, ph);
        for (int l = 0; l < n; ++l) if (ph[l] != ssm::float_to_bf16(a[l])) c.fail("bf16 n=%d lane %d", n, l);
        if (!mem.untouched_before(2 * std::size_t(n))) c.fail("bf16 n=%d wrote before p", n);
      }
  }
}

// ---- float arithmetic, comparisons, masks, reductions ----
float ref_binary(int op, float x, float y) {
  volatile float vx = x, vy = y;  // plain IEEE float operations, one rounding each
  switch (op) {
    case vt::kAdd: return vx + vy;
    case vt::kSub: return vx - vy;
    case vt::kMul: return vx * vy;
    case vt::kDiv: return vx / vy;
    case vt::kMax: return x > y ? x : y;  // x86 MAXPS: the second operand when either is NaN or both are zero
    default: return x < y ? x : y;
  }
}
bool ref_compare(int op, float x, float y) {
  switch (op) {
    case vt::kLt: return x < y;
    case vt::kLe: return x <= y;
    case vt::kGt: return x > y;
    case vt::kGe: return x >= y;
    case vt::kEq: return x == y;
    default: return x != x || y != y;
  }
}

void test_arith(const VecOps& o, Gen& g) {
  const int L = o.lanes;
  const int kIters = 20000;
  float a[kMaxLanes], b[kMaxLanes], c3[kMaxLanes], d[kMaxLanes], r[kMaxLanes];
  static const char* bin_names[] = {"add", "sub", "mul", "div", "vmax (b when either is NaN or both zero)",
                                    "vmin (b when either is NaN or both zero)"};
  for (int op = 0; op < vt::kNumBin; ++op) {
    Check c(bin_names[op]);
    for (int it = 0; it < kIters; ++it) {
      g.fill(a, L);
      g.fill(b, L);
      if (it % 4 == 0) for (int l = 0; l < L; ++l) if (g.u32() & 1) b[l] = a[l];         // equal operands
      if (it % 4 == 1) for (int l = 0; l < L; ++l) { a[l] = (g.u32() & 1) ? 0.0f : -0.0f; b[l] = (g.u32() & 1) ? 0.0f : -0.0f; }
      o.binary(op, a, b, r);
      for (int l = 0; l < L; ++l) {
        const float want = ref_binary(op, a[l], b[l]);
        const bool ok = op >= vt::kMax ? same_bits(r[l], want) : same_or_nan(r[l], want);
        if (!ok) c.fail("(0x%08x, 0x%08x) -> 0x%08x, want 0x%08x", fbits(a[l]), fbits(b[l]), fbits(r[l]), fbits(want));
      }
    }
  }
  for (int op : {vt::kFmadd, vt::kFnmadd}) {
    Check c(op == vt::kFmadd ? (o.fused ? "fmadd = a*b + c, fused" : "fmadd = a*b + c")
                             : (o.fused ? "fnmadd = c - a*b, fused" : "fnmadd = c - a*b"));
    for (int it = 0; it < kIters; ++it) {
      g.fill(a, L);
      g.fill(b, L);
      g.fill(c3, L);
      if (it % 2 == 0)  // c = -round(a*b) (or +): the fused result is the product's rounding error
        for (int l = 0; l < L; ++l) {
          a[l] = 1.0f + std::ldexp(float(g.u32() % 4096), -12);
          b[l] = 1.0f + std::ldexp(float(g.u32() % 4096), -12);
          volatile float p = a[l] * b[l];
          c3[l] = op == vt::kFmadd ? -p : p;
        }
      o.ternary(op, a, b, c3, r);
      for (int l = 0; l < L; ++l) {
        const float fused = op == vt::kFmadd ? std::fma(a[l], b[l], c3[l]) : std::fma(-a[l], b[l], c3[l]);
        volatile float p = a[l] * b[l];
        volatile float q = c3[l];
        const float plain = op == vt::kFmadd ? p + q : q - p;
        // The scalar layer is written unfused; a compiler contracting it (-ffp-contract=fast) fuses it.
        const bool ok = o.fused ? same_or_nan(r[l], fused) : (same_or_nan(r[l], plain) || same_or_nan(r[l], fused));
        if (!ok)
          c.fail("(%a, %a, %a) -> %a, want %a", double(a[l]), double(b[l]), double(c3[l]), double(r[l]),
                 double(o.fused ? fused : plain));
      }
    }
  }
  {
    Check c("round_even: nearest integer, ties to even, -0 kept, large values and NaN");
    for (int it = 0; it < kIters; ++it) {
      g.fill(a, L);
      if (it % 2) for (int l = 0; l < L; ++l) a[l] = float(int(g.u32() % 41) - 20) * 0.5f;  // ties
      o.round_even(a, r);
      for (int l = 0; l < L; ++l) {
        const float want = std::nearbyint(a[l]);
        if (!same_or_nan(r[l], want)) c.fail("%a -> %a, want %a", double(a[l]), double(r[l]), double(want));
      }
    }
  }
  static const char* cmp_names[] = {"lt (ordered)", "le (ordered)", "gt (ordered)", "ge (ordered)", "eq (ordered, -0 == 0)",
                                    "unord"};
  for (int op = 0; op < vt::kNumCmp; ++op) {
    Check c(cmp_names[op]);
    for (int it = 0; it < kIters; ++it) {
      g.fill(a, L);
      g.fill(b, L);
      if (it % 3 == 0) for (int l = 0; l < L; ++l) if (g.u32() & 1) b[l] = (g.u32() & 1) ? a[l] : -a[l];
      const unsigned m = o.compare(op, a, b);
      unsigned want = 0;
      for (int l = 0; l < L; ++l) want |= unsigned(ref_compare(op, a[l], b[l])) << l;
      if (m != want) c.fail("mask 0x%x, want 0x%x", m, want);
    }
  }
  {
    Check c("m_or / m_and / m_andnot(a, b) = ~a & b, mask_bits lane i -> bit i");
    for (int it = 0; it < kIters; ++it) {
      g.fill(a, L); g.fill(b, L); g.fill(c3, L); g.fill(d, L);
      unsigned m1 = 0, m2 = 0;
      for (int l = 0; l < L; ++l) { m1 |= unsigned(a[l] < b[l]) << l; m2 |= unsigned(c3[l] < d[l]) << l; }
      const unsigned all = L == 32 ? ~0u : (1u << L) - 1u;
      if (o.mask_logic(vt::kOr, a, b, c3, d) != (m1 | m2)) c.fail("or");
      if (o.mask_logic(vt::kAnd, a, b, c3, d) != (m1 & m2)) c.fail("and");
      if (o.mask_logic(vt::kAndnot, a, b, c3, d) != (~m1 & m2 & all)) c.fail("andnot");
    }
  }
  {
    Check c("tail_mask(n): lanes < n, n = 0 .. kLanes");
    for (int n = 0; n <= L; ++n) {
      const unsigned want = n == 32 ? ~0u : (1u << n) - 1u;
      if (o.tail_mask(n) != want) c.fail("n=%d: 0x%x", n, o.tail_mask(n));
    }
  }
  {
    Check c("select(m, a, b) / keep(m, a): bit exact");
    for (int it = 0; it < kIters; ++it) {
      float x[kMaxLanes], y[kMaxLanes];
      g.fill(a, L); g.fill(b, L); g.fill(x, L); g.fill(y, L);
      o.select(a, b, x, y, r);
      for (int l = 0; l < L; ++l) if (!same_bits(r[l], a[l] < b[l] ? x[l] : y[l])) c.fail("select lane %d", l);
      o.keep(a, b, x, r);
      for (int l = 0; l < L; ++l) if (!same_bits(r[l], a[l] < b[l] ? x[l] : 0.0f)) c.fail("keep lane %d", l);
    }
  }
  {
    Check c("reduce_max: the largest lane (no NaN lanes)");
    for (int it = 0; it < kIters; ++it) {
      for (int l = 0; l < L; ++l) do a[l] = g(); while (is_nan(a[l]));
      if (it % 5 == 0) for (int l = 0; l < L; ++l) a[l] = -std::numeric_limits<float>::infinity();
      if (it % 5 == 1) a[g.u32() % unsigned(L)] = std::numeric_limits<float>::infinity();
      float want = a[0];
      for (int l = 1; l < L; ++l) want = a[l] > want ? a[l] : want;
      const float got = o.reduce_max(a);
      if (!(got == want)) c.fail("%a, want %a", double(got), double(want));
    }
  }
  {
    // Every implementation adds the lanes, converted to double, as a halving tree: lane i + lane
    // i + n/2 for n = kLanes, kLanes/2, ..., 2 (fixed, so results never depend on anything but the
    // lanes). Lanes of very different magnitudes make any other order give other bits.
    Check c("reduce_sum: lanes in double, added in the fixed (halving tree) order");
    for (int it = 0; it < kIters; ++it) {
      g.fill_finite(a, L);
      if (it % 2)
        for (int l = 0; l < L; ++l)
          a[l] = std::ldexp(float(int(g.u32() % 2001) - 1000), int(g.u32() % 120) - 40);
      double t[kMaxLanes];
      for (int l = 0; l < L; ++l) t[l] = double(a[l]);
      for (int n = L / 2; n >= 1; n /= 2)
        for (int l = 0; l < n; ++l) { volatile double s = t[l] + t[l + n]; t[l] = s; }
      const double got = o.reduce_sum(a);
      if (!same_d(got, t[0])) c.fail("%.17g, want %.17g", got, t[0]);
    }
  }
}

// ---- broadcasts, bit casts, conversions, integer lanes ----
void test_int(const VecOps& o, Gen& g) {
  const int L = o.lanes;
  const int kIters = 20000;
  float a[kMaxLanes], r[kMaxLanes], z[kMaxLanes];
  std::uint32_t x[kMaxLanes], y[kMaxLanes], u[kMaxLanes], w[kMaxLanes];
  {
    Check c("vset / vzero / iset");
    for (int it = 0; it < 2000; ++it) {
      const float f = g();
      const std::int32_t i = std::int32_t(g.u32());
      o.broadcast(f, i, r, z, u);
      for (int l = 0; l < L; ++l)
        if (!same_bits(r[l], f) || fbits(z[l]) != 0u || u[l] != std::uint32_t(i)) c.fail("lane %d", l);
    }
  }
  {
    Check c("as_int / as_float: bit casts");
    for (int it = 0; it < kIters; ++it) {
      for (int l = 0; l < L; ++l) a[l] = bfloat(g.u32());
      o.bitcast(a, u, r);
      for (int l = 0; l < L; ++l) if (u[l] != fbits(a[l]) || !same_bits(r[l], a[l])) c.fail("lane %d", l);
    }
  }
  {
    Check c("cvt_int: round to nearest even (values in int32 range)");
    for (int it = 0; it < kIters; ++it) {
      for (int l = 0; l < L; ++l) {
        switch (g.u32() % 3) {
          case 0: a[l] = float(int(g.u32() % 201) - 100) * 0.5f; break;
          case 1: a[l] = std::uniform_real_distribution<float>(-3e9f, 3e9f)(g.rng); break;
          default: a[l] = std::uniform_real_distribution<float>(-300.0f, 300.0f)(g.rng); break;
        }
        if (std::fabs(a[l]) >= 2147483520.0f) a[l] = 0.25f;
      }
      std::int32_t got[kMaxLanes];
      o.cvt_int(a, got);
      for (int l = 0; l < L; ++l)
        if (got[l] != std::int32_t(std::lrint(a[l]))) c.fail("%a -> %d", double(a[l]), got[l]);
    }
  }
  {
    Check c("cvt_float: int32 -> float, rounding to nearest even");
    for (int it = 0; it < kIters; ++it) {
      std::int32_t v[kMaxLanes];
      for (int l = 0; l < L; ++l) v[l] = (g.u32() & 1) ? std::int32_t(g.u32()) : std::int32_t(g.u32() % 2001) - 1000;
      o.cvt_float(v, r);
      for (int l = 0; l < L; ++l) if (!same_bits(r[l], float(v[l]))) c.fail("%d -> %a", v[l], double(r[l]));
    }
  }
  {
    Check c("iadd / isub / ixor: wrapping 32-bit lanes");
    for (int it = 0; it < kIters; ++it) {
      for (int l = 0; l < L; ++l) { x[l] = g.u32(); y[l] = (g.u32() & 3) ? g.u32() : 0xffffffffu - (g.u32() & 7); }
      o.int_binary(vt::kIadd, x, y, u);
      for (int l = 0; l < L; ++l) if (u[l] != x[l] + y[l]) c.fail("iadd");
      o.int_binary(vt::kIsub, x, y, u);
      for (int l = 0; l < L; ++l) if (u[l] != x[l] - y[l]) c.fail("isub");
      o.int_binary(vt::kIxor, x, y, u);
      for (int l = 0; l < L; ++l) if (u[l] != (x[l] ^ y[l])) c.fail("ixor");
    }
  }
  {
    Check c("ishl<k> / isra<k> (arithmetic) / isrl<k> (logical), k = 0 .. 31");
    for (int it = 0; it < 2000; ++it) {
      for (int l = 0; l < L; ++l) x[l] = g.u32();
      for (int k : vt::kShiftCounts) {
        o.shift(vt::kShl, k, x, u);
        for (int l = 0; l < L; ++l) if (u[l] != x[l] << k) c.fail("ishl<%d>(0x%08x) = 0x%08x", k, x[l], u[l]);
        o.shift(vt::kSra, k, x, u);
        for (int l = 0; l < L; ++l)
          if (u[l] != std::uint32_t(std::int32_t(x[l]) >> k)) c.fail("isra<%d>(0x%08x) = 0x%08x", k, x[l], u[l]);
        o.shift(vt::kSrl, k, x, u);
        for (int l = 0; l < L; ++l) if (u[l] != x[l] >> k) c.fail("isrl<%d>(0x%08x) = 0x%08x", k, x[l], u[l]);
      }
    }
  }
  {
    Check c("mul_hilo: unsigned 32x32 -> 64-bit products, high and low words");
    const std::uint32_t ms[] = {0xD2511F53u, 0xCD9E8D57u, 0xffffffffu, 1u, 0u};
    for (int it = 0; it < kIters; ++it) {
      for (int l = 0; l < L; ++l) x[l] = (it % 8 == 0) ? 0xffffffffu - std::uint32_t(l) : g.u32();
      const std::uint32_t m = (it % 3) ? ms[unsigned(it) % 5] : g.u32();
      o.mul_hilo(x, m, u, w);
      for (int l = 0; l < L; ++l) {
        const std::uint64_t p = std::uint64_t(x[l]) * m;
        if (u[l] != std::uint32_t(p >> 32) || w[l] != std::uint32_t(p)) c.fail("0x%08x * 0x%08x lane %d", x[l], m, l);
      }
    }
  }
  {
    Check c("iota(base): base + i, wrapping; store_u32");
    for (std::uint32_t base : {0u, 1u, 0x7ffffffeu, 0xfffffff9u, 0xffffffffu, 123456789u}) {
      o.iota(base, u);
      for (int l = 0; l < L; ++l) if (u[l] != base + std::uint32_t(l)) c.fail("base 0x%08x lane %d", base, l);
    }
  }
}

#if defined(__x86_64__) || defined(__i386__)
bool cpu_has(const char* isa) {
  __builtin_cpu_init();
  if (!std::strcmp(isa, "avx2"))
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  if (!std::strcmp(isa, "avx512"))
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  return !std::strcmp(isa, "scalar");
}
#else
bool cpu_has(const char* isa) {  // AArch64: Advanced SIMD is part of the baseline
  return !std::strcmp(isa, "scalar") || !std::strcmp(isa, "neon");
}
#endif

}  // namespace

int main(int argc, char** argv) {
  signal(SIGSEGV, on_fault);
  signal(SIGBUS, on_fault);
  struct Entry { const char* name; const VecOps* ops; };
  const Entry all[] = {{"scalar", vt::vec_ops_scalar()}, {"avx2", vt::vec_ops_avx2()},
                       {"avx512", vt::vec_ops_avx512()}, {"neon", vt::vec_ops_neon()}};
  int ran = 0;
  for (const Entry& e : all) {
    bool wanted = argc < 2;
    for (int i = 1; i < argc; ++i) wanted = wanted || !std::strcmp(argv[i], e.name);
    if (!wanted) continue;
    if (!e.ops) { std::printf("%-7s not compiled into this program\n", e.name); continue; }
    if (!cpu_has(e.name)) { std::printf("%-7s compiled, but this CPU lacks it: skipped\n", e.name); continue; }
    g_isa = e.name;
    const int before_p = g_passed, before_f = g_failed;
    Gen g(12345u);
    test_conversions(*e.ops, g);
    test_tails(*e.ops, g);
    test_arith(*e.ops, g);
    test_int(*e.ops, g);
    std::printf("%-7s (%2d lanes): %d passed, %d failed\n", e.name, e.ops->lanes, g_passed - before_p, g_failed - before_f);
    ++ran;
  }
  if (ran == 0) { std::printf("no ISA tested\n"); ++g_failed; }
  std::printf("vec_test: %d passed, %d failed\n", g_passed, g_failed);
  return g_failed ? 1 : 0;
}

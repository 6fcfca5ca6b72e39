// Tests of the C++ kernels through their entry points (ssm::softmax_forward / softmax_backward /
// sample), for every ISA this build runs on this CPU (ssm::supported_isas(); scalar always), below the
// Python layer, so that they also run where Python and torch do not (aarch64 under qemu-user, .ci/arm.sh):
//   - softmax / log_softmax forward, float16 / bfloat16 / float32 in and out, row lengths 1, 3, 4, 5,
//     7, 8, 9, 15, 16, 17 (kLanes +- 1 of every ISA), 511, 512, 513, 5000, 65536, rows with -inf, +inf,
//     NaN, only -inf and a dominant entry, along rows and (up to 5000) along columns: against a float64
//     reference with the SPEC's tolerances (float32 1e-5 relative, 16-bit one ulp of the correctly
//     rounded reference, the same non-finite pattern) and against the scalar ISA (a few ulps);
//   - log S, the log_softmax normaliser, against long double;
//   - backward of both, against float64 and the scalar ISA;
//   - sampling: greedy (T = 0) exact, lowest index on ties; histograms of 20,000 draws from a 64-entry
//     row (some entries -inf) chi-square-close to the float64 probabilities for plain T, top-k, top-p,
//     min-p and probabilities in; without replacement no repeats, all in range, first draws
//     distributed as the probabilities; tokens the same as the scalar ISA's (but for rounding ties).
// Prints "N passed, N failed" and exits non-zero on any failure. Arguments: ISA names to restrict to.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "../../csrc/sampling.h"
#include "../../csrc/softmax.h"

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
int g_passed = 0, g_failed = 0;
std::string g_isa;

struct Check {
  std::string name;
  bool ok = true;
  int reported = 0;
  explicit Check(std::string n) : name(std::move(n)) {}
  template <class... A> void fail(const char* fmt, A... a) {
    ok = false;
    if (reported++ < 3) {
      std::printf("FAIL [%s] %s: ", g_isa.c_str(), name.c_str());
      std::printf(fmt, a...);
      std::printf("\n");
    }
  }
  ~Check() { ok ? ++g_passed : ++g_failed; }
};

const char* dname(int d) { return d == ssm::kF16 ? "f16" : d == ssm::kBF16 ? "bf16" : d == ssm::kF32 ? "f32" : "f64"; }

// A buffer of `n` elements of dtype `d`, read and written as double.
struct Buf {
  int d;
  std::vector<std::uint8_t> bytes;
  Buf(int dtype, std::size_t n) : d(dtype), bytes(n * ssm::dtype_size(dtype)) {}
  std::size_t size() const { return bytes.size() / ssm::dtype_size(d); }
  void* data() { return bytes.data(); }
  const void* data() const { return bytes.data(); }
  double get(std::size_t i) const {
    switch (d) {
      case ssm::kF16: { std::uint16_t h; std::memcpy(&h, &bytes[2 * i], 2); return ssm::half_to_float(h); }
      case ssm::kBF16: { std::uint16_t h; std::memcpy(&h, &bytes[2 * i], 2); return ssm::bf16_to_float(h); }
      case ssm::kF32: { float f; std::memcpy(&f, &bytes[4 * i], 4); return f; }
      default: { double v; std::memcpy(&v, &bytes[8 * i], 8); return v; }
    }
  }
  void set(std::size_t i, double v) {
    switch (d) {
      case ssm::kF16: { const std::uint16_t h = ssm::float_to_half(float(v)); std::memcpy(&bytes[2 * i], &h, 2); break; }
      case ssm::kBF16: { const std::uint16_t h = ssm::float_to_bf16(float(v)); std::memcpy(&bytes[2 * i], &h, 2); break; }
      case ssm::kF32: { const float f = float(v); std::memcpy(&bytes[4 * i], &f, 4); break; }
      default: std::memcpy(&bytes[8 * i], &v, 8); break;
    }
  }
};

// The value `v` (a double) correctly rounded to dtype d (through float: the double rounding is
// within the one-ulp tolerance), and the spacing of d at v.
double round_to(int d, double v) {
  switch (d) {
    case ssm::kF16: return ssm::half_to_float(ssm::float_to_half(float(v)));
    case ssm::kBF16: return ssm::bf16_to_float(ssm::float_to_bf16(float(v)));
    case ssm::kF32: return double(float(v));
    default: return v;
  }
}
double ulp_of(int d, double v) {
  const int mant = d == ssm::kF16 ? 10 : d == ssm::kBF16 ? 7 : d == ssm::kF32 ? 23 : 52;
  const int emin = d == ssm::kF16 ? -14 : d == ssm::kF64 ? -1022 : -126;
  const double a = std::fabs(v);
  const int e = a > 0 ? std::max(int(std::floor(std::log2(a))), emin) : emin;
  return std::ldexp(1.0, e - mant);
}

ssm::View matrix(std::int64_t rows, std::int64_t cols, std::int64_t rs, std::int64_t cs) {
  ssm::View v{};
  v.ndim = 2;
  v.size[0] = rows; v.size[1] = cols;
  v.stride[0] = rs; v.stride[1] = cs;
  return v;
}

// The SPEC's answer in float64 for one row.
std::vector<double> reference(const std::vector<double>& x, bool log) {
  const std::size_t n = x.size();
  std::vector<double> out(n);
  double m = -kInf;
  bool nan = false;
  std::size_t pinf = 0;
  for (double v : x) { nan |= std::isnan(v); m = std::max(m, v); pinf += v == kInf; }
  if (nan) { std::fill(out.begin(), out.end(), std::nan("")); return out; }
  if (pinf) {
    for (std::size_t i = 0; i < n; ++i) out[i] = x[i] == kInf ? (log ? -std::log(double(pinf)) : 1.0 / double(pinf)) : (log ? -kInf : 0.0);
    return out;
  }
  if (m == -kInf) { std::fill(out.begin(), out.end(), log ? -kInf : 0.0); return out; }
  double c = 0, dsum = 0;
  for (double v : x) { if (v == m) ++c; else dsum += std::exp(v - m); }
  const double logS = std::log(c) + std::log1p(dsum / c), S = c + dsum;
  for (std::size_t i = 0; i < n; ++i) out[i] = log ? (x[i] - m) - logS : std::exp(x[i] - m) / S;
  return out;
}

// got within the SPEC's bound of the float64 reference r (output dtype d)
bool close_to_reference(int d, bool log, double got, double r) {
  if (std::isnan(r) || std::isnan(got)) return std::isnan(r) && std::isnan(got);
  if (d == ssm::kF16 || d == ssm::kBF16) {
    const double rr = round_to(d, r);
    if (std::isinf(rr) || std::isinf(got)) return got == rr;
    return std::fabs(got - rr) <= ulp_of(d, rr);
  }
  if (std::isinf(r) || std::isinf(got)) return got == r;
  return std::fabs(got - r) <= (log ? 1e-5 * (1 + std::fabs(r)) : 1e-5 * std::fabs(r) + 1e-9);
}
// got within `ulps` ulps (of d) of want, the same non-finite values
bool close_ulps(int d, double got, double want, double ulps) {
  if (std::isnan(want) || std::isnan(got)) return std::isnan(want) && std::isnan(got);
  if (std::isinf(want) || std::isinf(got)) return got == want;
  return std::fabs(got - want) <= ulps * ulp_of(d, std::max(std::fabs(got), std::fabs(want)));
}

// Rows of length n (stored in dtype d): random, some -inf, +inf, a NaN, only -inf, one dominant entry.
std::vector<std::vector<double>> make_rows(std::mt19937& rng, int d, std::int64_t n) {
  std::normal_distribution<double> normal(0.0, 3.0);
  std::uniform_int_distribution<std::int64_t> pos(0, n - 1);
  std::vector<std::vector<double>> rows;
  auto fresh = [&] {
    std::vector<double> r(static_cast<std::size_t>(n));
    for (double& v : r) v = round_to(d, normal(rng));
    return r;
  };
  rows.push_back(fresh());
  auto r = fresh();
  for (std::int64_t k = 0; k < std::max<std::int64_t>(1, n / 8); ++k) r[std::size_t(pos(rng))] = -kInf;
  rows.push_back(r);
  r = fresh();
  r[std::size_t(pos(rng))] = kInf;
  r[std::size_t(pos(rng))] = kInf;
  rows.push_back(r);
  r = fresh();
  r[std::size_t(pos(rng))] = std::nan("");
  rows.push_back(r);
  rows.push_back(std::vector<double>(std::size_t(n), -kInf));
  r = fresh();
  for (double& v : r) v = round_to(d, v - 30.0);
  r[std::size_t(pos(rng))] = round_to(d, 20.0);
  rows.push_back(r);
  if (n > 1000) rows.resize(3);  // long rows: random, -inf, +inf (the others are covered by shorter rows)
  return rows;
}

struct Run { std::vector<Buf> outs; };  // per ISA, outputs in the order of the cases

const int kDtypes[] = {ssm::kF16, ssm::kBF16, ssm::kF32};
const std::int64_t kLengths[] = {1, 3, 4, 5, 7, 8, 9, 15, 16, 17, 511, 512, 513, 5000, 65536};

// One forward case: rows of x (dtype in), laid out along rows (dim 1) or along columns (dim 0).
struct FwdCase {
  int in, out;
  bool log, columns;
  std::int64_t n, rows;
  Buf x;
  std::vector<std::vector<double>> ref;
};

void run_forward(const FwdCase& c, Buf& out) {
  ssm::ForwardArgs a{};
  a.in = c.x.data();
  a.out = out.data();
  if (c.columns) {  // x is (n, rows): line r is column r
    a.in_view = a.out_view = matrix(c.n, c.rows, c.rows, 1);
    a.dim = 0;
  } else {
    a.in_view = a.out_view = matrix(c.rows, c.n, c.n, 1);
    a.dim = 1;
  }
  a.in_dtype = c.in;
  a.out_dtype = c.out;
  a.log = c.log;
  a.num_threads = c.n >= 65536 ? 2 : 1;
  ssm::softmax_forward(a);
}

std::size_t at(const FwdCase& c, std::int64_t r, std::int64_t k) {
  return std::size_t(c.columns ? k * c.rows + r : r * c.n + k);
}

std::vector<FwdCase> forward_cases() {
  std::vector<FwdCase> cases;
  std::mt19937 rng(2024);
  const int pairs[][2] = {{ssm::kF16, ssm::kF16}, {ssm::kBF16, ssm::kBF16}, {ssm::kF32, ssm::kF32},
                          {ssm::kF16, ssm::kF32}, {ssm::kBF16, ssm::kF32}, {ssm::kF32, ssm::kF16}};
  for (const auto& p : pairs)
    for (std::int64_t n : kLengths)
      for (bool log : {false, true})
        for (bool columns : {false, true}) {
          if (columns && n > 5000) continue;
          const auto rows = make_rows(rng, p[0], n);
          FwdCase c{p[0], p[1], log, columns, n, std::int64_t(rows.size()), Buf(p[0], rows.size() * std::size_t(n)), {}};
          for (std::int64_t r = 0; r < c.rows; ++r) {
            for (std::int64_t k = 0; k < n; ++k) c.x.set(at(c, r, k), rows[std::size_t(r)][std::size_t(k)]);
            c.ref.push_back(reference(rows[std::size_t(r)], log));
          }
          cases.push_back(std::move(c));
        }
  return cases;
}

// ---- backward ----
struct BwdCase {
  int yd, gd, od;
  bool log;
  std::int64_t n, rows;
  Buf y, g;
  std::vector<double> ref, scale;  // float64 result and the size of its terms (for the tolerance)
};

std::vector<BwdCase> backward_cases() {
  std::vector<BwdCase> cases;
  std::mt19937 rng(77);
  std::normal_distribution<double> normal(0.0, 2.0);
  const int triples[][3] = {{ssm::kF16, ssm::kF16, ssm::kF16}, {ssm::kBF16, ssm::kBF16, ssm::kBF16},
                            {ssm::kF32, ssm::kF32, ssm::kF32}, {ssm::kBF16, ssm::kF32, ssm::kF32}};
  for (const auto& t : triples)
    for (std::int64_t n : kLengths)
      for (bool log : {false, true}) {
        const std::int64_t rows = n > 1000 ? 1 : 3;
        BwdCase c{t[0], t[1], t[2], log, n, rows, Buf(t[0], std::size_t(rows * n)), Buf(t[1], std::size_t(rows * n)), {}, {}};
        for (std::int64_t r = 0; r < rows; ++r) {
          std::vector<double> x(static_cast<std::size_t>(n)), y(x), g(x);
          for (double& v : x) v = normal(rng);
          const auto yr = reference(x, log);
          for (std::int64_t k = 0; k < n; ++k) {
            const std::size_t i = std::size_t(r * n + k);
            c.y.set(i, yr[std::size_t(k)]);
            c.g.set(i, normal(rng));
            y[std::size_t(k)] = c.y.get(i);
            g[std::size_t(k)] = c.g.get(i);
          }
          double dot = 0, absdot = 0, gsum = 0, gabs = 0;
          for (std::int64_t k = 0; k < n; ++k) {
            const double yk = y[std::size_t(k)], gk = g[std::size_t(k)];
            dot += gk * yk; absdot += std::fabs(gk * yk); gsum += gk; gabs += std::fabs(gk);
          }
          for (std::int64_t k = 0; k < n; ++k) {
            const double yk = y[std::size_t(k)], gk = g[std::size_t(k)];
            if (log) {
              c.ref.push_back(gk - std::exp(yk) * gsum);
              c.scale.push_back(std::fabs(gk) + std::exp(yk) * gabs);
            } else {
              c.ref.push_back(yk * (gk - dot));
              c.scale.push_back(std::fabs(yk) * (std::fabs(gk) + absdot));
            }
          }
        }
        cases.push_back(std::move(c));
      }
  return cases;
}

void run_backward(const BwdCase& c, Buf& out) {
  ssm::BackwardArgs a{};
  a.y = c.y.data(); a.grad = c.g.data(); a.out = out.data();
  a.y_view = a.grad_view = a.out_view = matrix(c.rows, c.n, c.n, 1);
  a.dim = 1;
  a.y_dtype = c.yd; a.grad_dtype = c.gd; a.out_dtype = c.od;
  a.log = c.log;
  a.num_threads = 1;
  ssm::softmax_backward(a);
}

double eps_of(int d) { return d == ssm::kF16 ? 1.0 / 1024 : d == ssm::kBF16 ? 1.0 / 128 : 1.2e-7; }

// ---- sampling ----
struct SampleSpec {
  const char* name;
  float temperature = 1.0f;
  std::int64_t top_k = 0;
  float top_p = 1.0f, min_p = 0.0f;
  bool probs = false, replacement = true;
};

// The 64-entry test row: logits ~ N(0, 1.5) with 6 entries -inf (and, for probs, weights exp(x)).
std::vector<float> sample_row() {
  std::mt19937 rng(9);
  std::normal_distribution<float> normal(0.0f, 1.5f);
  std::vector<float> x(64);
  for (float& v : x) v = normal(rng);
  for (int i : {3, 17, 18, 40, 41, 63}) x[std::size_t(i)] = -std::numeric_limits<float>::infinity();
  return x;
}

// The float64 distribution the SPEC draws from (temperature, then top-k, top-p, min-p).
std::vector<double> sample_probs(const std::vector<float>& x, const SampleSpec& s) {
  const std::size_t n = x.size();
  std::vector<double> p(n);
  if (s.probs) {
    double t = 0;
    for (std::size_t i = 0; i < n; ++i) t += p[i] = std::isfinite(x[i]) ? std::exp(double(x[i])) : 0.0;
    for (double& v : p) v /= t;
    return p;
  }
  double m = -kInf;
  for (float v : x) m = std::max(m, double(v));
  std::vector<double> z(n);
  for (std::size_t i = 0; i < n; ++i) z[i] = (double(x[i]) - m) / s.temperature;
  std::vector<bool> keep(n, true);
  for (std::size_t i = 0; i < n; ++i) keep[i] = z[i] != -kInf;
  if (s.top_k > 0 && s.top_k < std::int64_t(n)) {
    std::vector<double> sorted(z);
    std::sort(sorted.begin(), sorted.end(), std::greater<double>());
    const double kth = sorted[std::size_t(s.top_k - 1)];
    for (std::size_t i = 0; i < n; ++i) keep[i] = keep[i] && z[i] >= kth;
  }
  auto normalise = [&] {
    double t = 0;
    for (std::size_t i = 0; i < n; ++i) t += p[i] = keep[i] ? std::exp(z[i]) : 0.0;
    for (double& v : p) v /= t;
  };
  normalise();
  if (s.top_p < 1.0f) {
    std::vector<bool> k2(n);
    for (std::size_t i = 0; i < n; ++i) {
      double above = 0;
      for (std::size_t j = 0; j < n; ++j) if (p[j] > p[i]) above += p[j];
      k2[i] = keep[i] && above < s.top_p;
    }
    keep = k2;
    normalise();
  }
  if (s.min_p > 0.0f) {
    const double pmax = *std::max_element(p.begin(), p.end());
    for (std::size_t i = 0; i < n; ++i) keep[i] = keep[i] && p[i] >= s.min_p * pmax;
    normalise();
  }
  return p;
}

// A top-p threshold in the middle of the gap around `target` between two neighbouring decision
// points (the masses above each entry), so float32 rounding in the kernel cannot move an entry across.
float safe_top_p(const std::vector<double>& p, double target) {
  std::vector<double> sorted(p);
  std::sort(sorted.begin(), sorted.end(), std::greater<double>());
  double cum = 0;
  for (double v : sorted) {
    if (target > cum && target <= cum + v) return float(cum + v / 2);
    cum += v;
  }
  return 1.0f;
}
// The same for min-p: half-way between the two ratios p_i / p_max around `target`.
float safe_min_p(const std::vector<double>& p, double target) {
  const double pmax = *std::max_element(p.begin(), p.end());
  double below = 0, above = 1;
  for (double v : p) {
    const double r = v / pmax;
    if (r < target) below = std::max(below, r);
    else above = std::min(above, r);
  }
  return float((below + above) / 2);
}

// Chi-square statistic of `counts` against probabilities `p` (bins with expectation < 5 merged);
// fails when an entry of probability 0 was drawn.
bool chi_square_ok(Check& c, const std::vector<std::int64_t>& counts, const std::vector<double>& p, std::int64_t total) {
  double stat = 0, pool_e = 0, pool_o = 0;
  int bins = 0;
  for (std::size_t i = 0; i < p.size(); ++i) {
    if (p[i] == 0) {
      if (counts[i]) { c.fail("entry %zu of probability 0 drawn %lld times", i, (long long)counts[i]); return false; }
      continue;
    }
    const double e = p[i] * double(total);
    if (e < 5) { pool_e += e; pool_o += double(counts[i]); continue; }
    stat += (double(counts[i]) - e) * (double(counts[i]) - e) / e;
    ++bins;
  }
  if (pool_e > 0) { stat += (pool_o - pool_e) * (pool_o - pool_e) / pool_e; ++bins; }
  const double df = std::max(1, bins - 1);
  // Wilson-Hilferty: the chi-square quantile at p ~ 1e-6 (z = 4.75)
  const double h = 2.0 / (9.0 * df), crit = df * std::pow(1 - h + 4.75 * std::sqrt(h), 3);
  if (!(stat <= crit)) { c.fail("chi-square %.1f > %.1f (df %.0f)", stat, crit, df); return false; }
  return true;
}

std::vector<std::int64_t> draw(const Buf& x, std::int64_t rows, std::int64_t cols, const SampleSpec& s, std::int64_t num_samples,
                               std::uint64_t seed0) {
  const std::size_t nr = std::size_t(rows);
  std::vector<float> temperature(nr, s.temperature), top_p(nr, s.top_p), min_p(nr, s.min_p);
  std::vector<std::int64_t> top_k(nr, s.top_k), seed(nr), row_id(nr), offset(nr, 0);
  for (std::size_t r = 0; r < nr; ++r) { seed[r] = std::int64_t(seed0 + 7919 * r); row_id[r] = std::int64_t(r); }
  std::vector<std::int64_t> tokens(nr * std::size_t(num_samples), -2);
  std::vector<float> logprobs(tokens.size());
  ssm::SampleArgs a{};
  a.x = x.data(); a.rows = rows; a.cols = cols; a.stride = cols; a.dtype = x.d; a.probs = s.probs;
  a.temperature = s.probs ? nullptr : temperature.data();
  a.top_k = s.probs || !s.top_k ? nullptr : top_k.data();
  a.top_p = s.probs || s.top_p >= 1 ? nullptr : top_p.data();
  a.min_p = s.probs || s.min_p <= 0 ? nullptr : min_p.data();
  a.seed = seed.data(); a.row_id = row_id.data(); a.offset = offset.data();
  a.num_samples = num_samples; a.replacement = s.replacement;
  a.tokens = tokens.data(); a.tokens_stride = num_samples;
  a.logprobs = s.probs ? nullptr : logprobs.data(); a.logprobs_stride = num_samples;
  a.num_threads = 1;
  ssm::sample(a);
  return tokens;
}

std::vector<SampleSpec> sample_specs(const std::vector<float>& row) {
  std::vector<SampleSpec> specs;
  SampleSpec s;
  s.name = "T 0.8"; s.temperature = 0.8f; specs.push_back(s);
  s = SampleSpec{}; s.name = "T 1.0, top-k 10"; s.top_k = 10; specs.push_back(s);
  s = SampleSpec{}; s.name = "T 1.3, top-p ~0.9"; s.temperature = 1.3f;
  s.top_p = safe_top_p(sample_probs(row, s), 0.9); specs.push_back(s);
  s = SampleSpec{}; s.name = "T 0.7, top-k 40, top-p ~0.95"; s.temperature = 0.7f; s.top_k = 40;
  s.top_p = safe_top_p(sample_probs(row, s), 0.95); specs.push_back(s);
  s = SampleSpec{}; s.name = "T 1.0, min-p ~0.05"; s.min_p = safe_min_p(sample_probs(row, s), 0.05); specs.push_back(s);
  s = SampleSpec{}; s.name = "probabilities in"; s.probs = true; specs.push_back(s);
  return specs;
}

// log S (csrc/softmax.h: log_at_least_1, narrow_log_normaliser), which every float32-accumulated log_softmax path
// takes, against long double: log x within 1.5 ulp for x in [1, 2^60) and at its edges; log S within 2e-10
// relative where D / C >= 2^-20 (log(C + D): C + D rounds) and within 4e-16 below (log C + log1p(D / C)).
void test_log_normaliser() {
  g_isa = "any";
  std::mt19937_64 rng(11);
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  {
    Check c("log_at_least_1 within 1.5 ulp of logl");
    std::vector<double> xs = {1.0, std::nextafter(1.0, 2.0), 1.4142135623730951, std::nextafter(1.4142135623730951, 2.0),
                              2.0, std::nextafter(2.0, 1.0), 3.0, 1e15, 0x1p59};
    for (int i = 0; i < 200000; ++i) xs.push_back(std::exp2(unit(rng) * 60.0)), xs.push_back(1.0 + unit(rng) * 1e-6);
    for (double x : xs) {
      const long double want = logl((long double)x);
      const double got = ssm::log_at_least_1(x);
      if (x == 1.0) {
        if (got != 0.0) c.fail("log 1 = %.17g", got);
        continue;
      }
      const double w = double(want), ulp = std::nextafter(w, kInf) - w;
      if (!(double(fabsl((long double)got - want)) <= 1.5 * ulp)) c.fail("log %.17g: %.17g, logl %.17Lg", x, got, want);
    }
  }
  {
    Check c("narrow_log_normaliser: log(C + D), or log C + log1p(D / C) below D / C = 2^-20");
    for (int i = 0; i < 200000; ++i) {
      const double count = double(1 + rng() % 8), rest = count * std::exp2(-100.0 * unit(rng)) * (i % 2 ? 1.0 : 300.0);
      const long double want = logl((long double)count) + log1pl((long double)rest / count);
      const double got = ssm::narrow_log_normaliser(count, rest);
      const double tol = rest >= count * 0x1p-20 ? 2e-10 : 4e-16;
      if (!(double(fabsl((got - want) / want)) <= tol)) c.fail("C %g D %.17g: %.17g, want %.17Lg", count, rest, got, want);
    }
  }
}

std::vector<std::string> isas(int argc, char** argv) {
  std::vector<std::string> out;
  for (const auto& name : ssm::supported_isas()) {
    const std::string n(name);
    bool wanted = argc < 2;
    for (int i = 1; i < argc; ++i) wanted = wanted || n == argv[i];
    if (wanted && n != "scalar") out.push_back(n);
  }
  out.insert(out.begin(), "scalar");  // the reference path first
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  const std::vector<std::string> list = isas(argc, argv);
  std::printf("kernel_test: ISAs");
  for (const auto& s : list) std::printf(" %s", s.c_str());
  std::printf("\n");
  test_log_normaliser();

  // ---- forward ----
  const auto fwd = forward_cases();
  std::vector<std::vector<Buf>> fwd_out(list.size());
  for (std::size_t i = 0; i < list.size(); ++i) {
    g_isa = list[i];
    ssm::set_isa(list[i]);
    double worst_ulps = 0;
    for (const auto& c : fwd) {
      fwd_out[i].emplace_back(c.out, c.x.size());
      Buf& o = fwd_out[i].back();
      run_forward(c, o);
      char name[160];
      std::snprintf(name, sizeof name, "%s %s->%s n=%lld%s vs float64", c.log ? "log_softmax" : "softmax", dname(c.in),
                    dname(c.out), (long long)c.n, c.columns ? " (along columns)" : "");
      Check chk(name);
      for (std::int64_t r = 0; r < c.rows; ++r)
        for (std::int64_t k = 0; k < c.n; ++k) {
          const double got = o.get(at(c, r, k)), want = c.ref[std::size_t(r)][std::size_t(k)];
          if (!close_to_reference(c.out, c.log, got, want))
            chk.fail("row %lld [%lld]: %.9g, reference %.9g", (long long)r, (long long)k, got, want);
        }
      if (i == 0) continue;
      std::snprintf(name, sizeof name, "%s %s->%s n=%lld%s vs scalar", c.log ? "log_softmax" : "softmax", dname(c.in),
                    dname(c.out), (long long)c.n, c.columns ? " (along columns)" : "");
      Check vs(name);
      const Buf& s = fwd_out[0][fwd_out[i].size() - 1];
      const double ulps = c.out == ssm::kF32 ? 8 : 1;
      for (std::size_t j = 0; j < o.size(); ++j) {
        const double a = o.get(j), b = s.get(j);
        if (!close_ulps(c.out, a, b, ulps)) vs.fail("[%zu]: %.9g, scalar %.9g", j, a, b);
        else if (std::isfinite(a) && a != b)
          worst_ulps = std::max(worst_ulps, std::fabs(a - b) / ulp_of(c.out, std::max(std::fabs(a), std::fabs(b))));
      }
    }
    if (i) std::printf("%-7s forward: at most %.0f ulp from scalar\n", list[i].c_str(), worst_ulps);
  }

  // ---- backward ----
  const auto bwd = backward_cases();
  std::vector<std::vector<Buf>> bwd_out(list.size());
  for (std::size_t i = 0; i < list.size(); ++i) {
    g_isa = list[i];
    ssm::set_isa(list[i]);
    for (const auto& c : bwd) {
      bwd_out[i].emplace_back(c.od, c.y.size());
      Buf& o = bwd_out[i].back();
      run_backward(c, o);
      char name[160];
      std::snprintf(name, sizeof name, "%s backward y %s, grad %s -> %s n=%lld", c.log ? "log_softmax" : "softmax", dname(c.yd),
                    dname(c.gd), dname(c.od), (long long)c.n);
      Check chk(std::string(name) + " vs float64");
      const double tol = c.od == ssm::kF32 ? 1e-5 : eps_of(c.od);  // float32: the SPEC's 1e-5; 16-bit: one ulp of the terms
      for (std::size_t j = 0; j < o.size(); ++j) {
        const double got = o.get(j), want = c.ref[j], scale = c.scale[j];
        if (!(std::fabs(got - want) <= tol * scale + ulp_of(c.od, want)))
          chk.fail("[%zu]: %.9g, reference %.9g (scale %.3g)", j, got, want, scale);
      }
      if (i == 0) continue;
      Check vs(std::string(name) + " vs scalar");
      const Buf& s = bwd_out[0][bwd_out[i].size() - 1];
      for (std::size_t j = 0; j < o.size(); ++j)
        if (!(std::fabs(o.get(j) - s.get(j)) <= 2 * tol * c.scale[j] + ulp_of(c.od, s.get(j))))
          vs.fail("[%zu]: %.9g, scalar %.9g", j, o.get(j), s.get(j));
    }
  }

  // ---- sampling ----
  for (std::size_t i = 0; i < list.size(); ++i) {
    g_isa = list[i];
    ssm::set_isa(list[i]);
    {
      Check c("greedy (T = 0): the argmax, lowest index on ties, every dtype and length");
      std::mt19937 rng(5);
      for (int d : kDtypes)
        for (std::int64_t n : kLengths) {
          const std::int64_t rows = 4;
          Buf x(d, std::size_t(rows * n));
          std::normal_distribution<double> normal(0.0, 2.0);
          std::uniform_int_distribution<std::int64_t> pos(0, n - 1);
          std::vector<std::int64_t> want(static_cast<std::size_t>(rows));
          for (std::int64_t r = 0; r < rows; ++r) {
            for (std::int64_t k = 0; k < n; ++k) x.set(std::size_t(r * n + k), std::max(-7.0, std::min(7.0, normal(rng))));
            std::int64_t a = pos(rng), b = pos(rng);
            if (a > b) std::swap(a, b);
            x.set(std::size_t(r * n + a), 9.0);
            if (r % 2) x.set(std::size_t(r * n + b), 9.0);  // a tie: the lower index wins
            if (r == 3) for (std::int64_t k = 0; k < n; k += 3) if (k != a && k != b) x.set(std::size_t(r * n + k), -kInf);
            want[std::size_t(r)] = a;
          }
          SampleSpec s;
          s.name = "greedy";
          s.temperature = 0.0f;
          const auto t = draw(x, rows, n, s, 1, 1234);
          for (std::int64_t r = 0; r < rows; ++r)
            if (t[std::size_t(r)] != want[std::size_t(r)])
              c.fail("%s n=%lld row %lld: token %lld, want %lld", dname(d), (long long)n, (long long)r,
                     (long long)t[std::size_t(r)], (long long)want[std::size_t(r)]);
        }
    }
    const std::vector<float> row = sample_row();
    for (int d : kDtypes) {
      Buf x(d, row.size());
      for (std::size_t k = 0; k < row.size(); ++k) x.set(k, row[k]);
      std::vector<float> stored(row.size());
      for (std::size_t k = 0; k < row.size(); ++k) stored[k] = float(x.get(k));
      for (const SampleSpec& s : sample_specs(stored)) {
        if (s.probs) {  // weights exp(x) stored in dtype d
          for (std::size_t k = 0; k < row.size(); ++k) x.set(k, std::isfinite(row[k]) ? std::exp(double(stored[k])) : 0.0);
          for (std::size_t k = 0; k < row.size(); ++k) stored[k] = x.get(k) > 0 ? float(std::log(x.get(k))) : -INFINITY;
        }
        const std::vector<double> p = sample_probs(stored, s);
        Check c(std::string("20000 draws, ") + s.name + ", " + dname(d) + ": chi-square vs float64 probabilities");
        const std::int64_t draws = 20000;
        const auto t = draw(x, 1, std::int64_t(row.size()), s, draws, 42 + std::uint64_t(d));
        std::vector<std::int64_t> counts(row.size());
        bool range_ok = true;
        for (std::int64_t v : t) {
          if (v < 0 || v >= std::int64_t(row.size())) { range_ok = false; continue; }
          ++counts[std::size_t(v)];
        }
        if (!range_ok) c.fail("a token out of range");
        else chi_square_ok(c, counts, p, draws);
      }
      {
        // Without replacement: 2000 rows (the same logits, each its own seed), 20 draws each.
        SampleSpec s;
        s.name = "without replacement";
        s.temperature = 1.0f;
        s.replacement = false;
        const std::int64_t rows = 2000, k = 20;
        for (std::size_t j = 0; j < row.size(); ++j) x.set(j, row[j]);
        Buf xs(d, std::size_t(rows) * row.size());
        for (std::int64_t r = 0; r < rows; ++r) std::memcpy(static_cast<std::uint8_t*>(xs.data()) + std::size_t(r) * x.bytes.size(), x.data(), x.bytes.size());
        const auto t = draw(xs, rows, std::int64_t(row.size()), s, k, 99);
        Check c(std::string("without replacement, 2000 rows x 20 draws, ") + dname(d) + ": no repeats, in range, first draw ~ p");
        std::vector<std::int64_t> first(row.size());
        for (std::int64_t r = 0; r < rows; ++r) {
          std::vector<bool> seen(row.size());
          for (std::int64_t j = 0; j < k; ++j) {
            const std::int64_t v = t[std::size_t(r * k + j)];
            if (v < 0 || v >= std::int64_t(row.size())) { c.fail("row %lld: token %lld out of range", (long long)r, (long long)v); break; }
            if (!std::isfinite(row[std::size_t(v)])) c.fail("row %lld: a -inf entry (%lld) drawn", (long long)r, (long long)v);
            if (seen[std::size_t(v)]) c.fail("row %lld: token %lld repeated", (long long)r, (long long)v);
            seen[std::size_t(v)] = true;
            if (j == 0) ++first[std::size_t(v)];
          }
        }
        for (std::size_t j = 0; j < row.size(); ++j) stored[j] = float(x.get(j));
        chi_square_ok(c, first, sample_probs(stored, s), rows);
      }
    }
    if (i == 0) continue;
    {
      // Without replacement over a long row: the vector Philox prefilter of the race decides which
      // entries are looked at, so a wrong random number changes tokens (same stream as scalar).
      Check c("without replacement, 64 rows x 16 of 5000 entries (f32, T 1): tokens the same as scalar's");
      const std::int64_t rows = 64, n = 5000, k = 16;
      Buf x(ssm::kF32, std::size_t(rows * n));
      std::mt19937 rng(31);
      std::normal_distribution<double> normal(0.0, 2.0);
      for (std::size_t j = 0; j < x.size(); ++j) x.set(j, normal(rng));
      SampleSpec s;
      s.name = "without replacement";
      s.replacement = false;
      const auto mine = draw(x, rows, n, s, k, 777);
      ssm::set_isa("scalar");
      const auto ref = draw(x, rows, n, s, k, 777);
      ssm::set_isa(list[i]);
      std::int64_t diff = 0;
      for (std::size_t j = 0; j < mine.size(); ++j) diff += mine[j] != ref[j];
      std::printf("%-7s sampling without replacement: %lld of %zu tokens differ from scalar\n", list[i].c_str(),
                  (long long)diff, mine.size());
      if (diff > std::int64_t(mine.size() / 1000)) c.fail("%lld of %zu tokens differ", (long long)diff, mine.size());
    }
    {
      Check c("tokens the same as the scalar ISA's (20000 draws, T 0.8, float32; <= 0.1% differ by rounding ties)");
      Buf x(ssm::kF32, row.size());
      for (std::size_t k = 0; k < row.size(); ++k) x.set(k, row[k]);
      SampleSpec s;
      s.name = "T 0.8";
      s.temperature = 0.8f;
      const auto mine = draw(x, 1, std::int64_t(row.size()), s, 20000, 4242);
      ssm::set_isa("scalar");
      const auto ref = draw(x, 1, std::int64_t(row.size()), s, 20000, 4242);
      ssm::set_isa(list[i]);
      std::int64_t diff = 0;
      for (std::size_t j = 0; j < mine.size(); ++j) diff += mine[j] != ref[j];
      std::printf("%-7s sampling: %lld of 20000 tokens differ from scalar\n", list[i].c_str(), (long long)diff);
      if (diff > 20) c.fail("%lld of 20000 tokens differ", (long long)diff);
    }
  }
  ssm::set_isa("auto");
  std::printf("kernel_test: %d passed, %d failed\n", g_passed, g_failed);
  return g_failed ? 1 : 0;
}

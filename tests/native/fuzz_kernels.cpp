// Coverage-guided fuzzing (libFuzzer) of the C++ kernels' entry points, below the Python layer.
//
// Each input picks an op (softmax / log_softmax forward, backward, sampling), dtypes, a shape, row
// strides, a thread count and the element bits (any bits: NaN, inf, subnormals). The kernels run on
// every ISA this CPU has; the harness checks what must hold whatever the data:
//   - forward (along either dim of a matrix with padded rows): the NaN pattern is per line (NaN iff it holds a NaN), softmax lies in [0, 1],
//     log_softmax in [-inf, 0], a NaN-free line sums to 1 (within the output's rounding), padding
//     between rows is never written, and every ISA agrees with the scalar path to a few ulps;
//   - backward: finite outputs for finite upstream gradients of a finite forward output;
//   - sampling: tokens are -1 (an invalid row) or in range, never an entry whose weight is 0 / -inf.
// Built with ASan + UBSan (see .ci/fuzz.sh), so any memory error or UB is a finding too.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "../../csrc/sampling.h"
#include "../../csrc/softmax.h"

namespace {

struct Reader {
  const std::uint8_t* p;
  std::size_t n;
  std::uint32_t take(unsigned bytes) {
    std::uint32_t v = 0;
    for (unsigned i = 0; i < bytes; ++i) v = (v << 8) | (n ? (--n, *p++) : 0u);
    return v;
  }
};

double as_double(const void* base, int dtype, std::int64_t i) {
  switch (dtype) {
    case ssm::kF16: return ssm::half_to_float(static_cast<const std::uint16_t*>(base)[i]);
    case ssm::kBF16: return ssm::bf16_to_float(static_cast<const std::uint16_t*>(base)[i]);
    case ssm::kF32: return static_cast<const float*>(base)[i];
    default: return static_cast<const double*>(base)[i];
  }
}

double eps_of(int dtype) {
  return dtype == ssm::kF16 ? 1.0 / 1024 : dtype == ssm::kBF16 ? 1.0 / 128 : dtype == ssm::kF32 ? 1.2e-7 : 2.3e-16;
}

[[noreturn]] void fail(const char* what, std::int64_t r, std::int64_t c, double a, double b) {
  std::fprintf(stderr, "fuzz_kernels: %s at [%lld, %lld]: %.17g vs %.17g\n", what, (long long)r, (long long)c, a, b);
  std::abort();
}

// Every ISA this CPU runs, scalar first (the reference the others are compared with).
std::vector<std::string> isas() {
  std::vector<std::string> all = ssm::supported_isas(), out{"scalar"};
  for (const auto& name : all)
    if (name != "scalar") out.push_back(name);
  return out;
}

// A (rows, cols) view with row stride `ld` (>= cols) and unit column stride.
ssm::View matrix(std::int64_t rows, std::int64_t cols, std::int64_t ld) {
  ssm::View v{};
  v.ndim = 2;
  v.size[0] = rows; v.size[1] = cols;
  v.stride[0] = ld; v.stride[1] = 1;
  return v;
}

// Softmax along `dim` of a (rows, cols) matrix: reduction line l, element k sits at at(l, k).
struct Lines {
  std::int64_t rows, cols, ld;
  int dim;
  std::int64_t count() const { return dim == 1 ? rows : cols; }
  std::int64_t length() const { return dim == 1 ? cols : rows; }
  std::int64_t at(std::int64_t l, std::int64_t k) const { return dim == 1 ? l * ld + k : k * ld + l; }
};

void fuzz_forward(Reader& in, int in_dtype, int out_dtype, bool log, std::int64_t rows, std::int64_t cols, int threads) {
  const int dim = int(in.take(1) & 1);
  const std::int64_t in_ld = cols + in.take(1) % 4, out_ld = cols + in.take(1) % 4;
  const std::size_t isz = ssm::dtype_size(in_dtype), osz = ssm::dtype_size(out_dtype);
  std::vector<std::uint8_t> x(std::size_t(rows * in_ld) * isz);
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = std::uint8_t(in.n ? in.take(1) : (i * 131u + 7u));
  const std::uint8_t kPad = 0xA5;
  std::vector<std::vector<std::uint8_t>> outs;
  for (const std::string& isa : isas()) {
    ssm::set_isa(isa);
    std::vector<std::uint8_t> out(std::size_t(rows * out_ld) * osz, kPad);
    ssm::ForwardArgs a{};
    a.in = x.data(); a.out = out.data();
    a.in_view = matrix(rows, cols, in_ld); a.out_view = matrix(rows, cols, out_ld);
    a.dim = dim; a.in_dtype = in_dtype; a.out_dtype = out_dtype; a.log = log; a.num_threads = threads;
    ssm::softmax_forward(a);
    outs.push_back(std::move(out));
  }
  ssm::set_isa("auto");
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t c = cols; c < out_ld; ++c)
      for (const auto& o : outs)
        for (std::size_t b = 0; b < osz; ++b)
          if (o[std::size_t(r * out_ld + c) * osz + b] != kPad) fail("padding written", r, c, 0, 0);
  const Lines li{rows, cols, in_ld, dim}, lo{rows, cols, out_ld, dim};
  const double tol = 4 * eps_of(out_dtype) + (out_dtype == ssm::kF64 ? 1e-12 : 0);
  for (std::int64_t l = 0; l < li.count(); ++l) {
    bool nan = false, all_masked = true;
    for (std::int64_t k = 0; k < li.length(); ++k) {
      const double v = as_double(x.data(), in_dtype, li.at(l, k));
      nan |= std::isnan(v);
      all_masked &= v == -INFINITY;
    }
    for (const auto& o : outs) {
      double sum = 0;
      for (std::int64_t k = 0; k < lo.length(); ++k) {
        const double v = as_double(o.data(), out_dtype, lo.at(l, k));
        if (std::isnan(v) != nan) fail("NaN pattern is not per line", l, k, v, nan);
        if (nan) continue;
        if (log ? !(v <= 0) : !(v >= 0 && v <= 1)) fail("value out of range", l, k, v, 0);
        sum += log ? std::exp(v) : v;
        const double ref = as_double(outs[0].data(), out_dtype, lo.at(l, k));  // the scalar path
        const double scale = log ? 1 + std::fabs(ref) : std::fabs(ref) + 1e-30;
        if (!(std::fabs(v - ref) <= tol * scale + (log ? 0 : 1e-7 * (out_dtype == ssm::kF32)) ||
              (std::isinf(v) && v == ref)))
          fail("ISA differs from the scalar path", l, k, v, ref);
      }
      if (nan) continue;
      if (!all_masked && !(std::fabs(sum - 1) <= 2 * eps_of(out_dtype) * std::sqrt(double(lo.length())) + 1e-6))
        fail("line does not sum to 1", l, -1, sum, 1);
      if (all_masked && sum != 0) fail("masked line is not all 0", l, -1, sum, 0);
    }
  }
}

void fuzz_backward(Reader& in, bool log, std::int64_t rows, std::int64_t cols, int threads) {
  const int dim = int(in.take(1) & 1);
  std::vector<float> x(std::size_t(rows * cols)), y(x.size()), g(x.size()), out(x.size());
  for (float& v : x) v = float(std::int32_t(in.take(2)) - 32768) / 256.0f;
  for (float& v : g) v = float(std::int32_t(in.take(1)) - 128) / 16.0f;
  const ssm::View m = matrix(rows, cols, cols);
  ssm::ForwardArgs f{};
  f.in = x.data(); f.out = y.data(); f.in_view = m; f.out_view = m; f.dim = dim;
  f.in_dtype = ssm::kF32; f.out_dtype = ssm::kF32; f.log = log; f.num_threads = threads;
  ssm::softmax_forward(f);
  for (const std::string& isa : isas()) {
    ssm::set_isa(isa);
    ssm::BackwardArgs b{};
    b.y = y.data(); b.grad = g.data(); b.out = out.data();
    b.y_view = m; b.grad_view = m; b.out_view = m; b.dim = dim;
    b.y_dtype = ssm::kF32; b.grad_dtype = ssm::kF32; b.out_dtype = ssm::kF32; b.log = log; b.num_threads = threads;
    ssm::softmax_backward(b);
    for (std::int64_t i = 0; i < rows * cols; ++i)
      if (!std::isfinite(out[std::size_t(i)])) fail("non-finite gradient", i / cols, i % cols, out[std::size_t(i)], 0);
  }
  ssm::set_isa("auto");
}

void fuzz_sampling(Reader& in, int dtype, bool probs, std::int64_t rows, std::int64_t cols, int threads) {
  const std::size_t sz = ssm::dtype_size(dtype);
  std::vector<std::uint8_t> x(std::size_t(rows * cols) * sz);
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = std::uint8_t(in.n ? in.take(1) : (i * 37u + 11u));
  const std::size_t nr = static_cast<std::size_t>(rows);
  std::vector<float> temperature(nr), top_p(nr), min_p(nr);
  std::vector<std::int64_t> top_k(nr), seed(nr), row_id(nr), offset(nr);
  const float temps[] = {0.0f, 1e-30f, 0.003f, 0.7f, 1.0f, 3.0f, 1e30f, INFINITY};
  for (std::int64_t r = 0; r < rows; ++r) {
    temperature[std::size_t(r)] = temps[in.take(1) % 8];
    top_k[std::size_t(r)] = in.take(1) % 5 ? 0 : std::int64_t(in.take(2) % std::uint32_t(cols + 2));
    top_p[std::size_t(r)] = in.take(1) % 3 ? 1.0f : float(in.take(1) % 100 + 1) / 100.0f;
    min_p[std::size_t(r)] = in.take(1) % 3 ? 0.0f : float(in.take(1) % 101) / 100.0f;
    seed[std::size_t(r)] = std::int64_t(in.take(4));
    row_id[std::size_t(r)] = r;
    offset[std::size_t(r)] = std::int64_t(in.take(2));
  }
  const bool replacement = in.take(1) & 1;
  std::int64_t num_samples = 1 + std::int64_t(in.take(1) % 8);
  if (!replacement) num_samples = std::min(num_samples, cols);
  std::vector<std::int64_t> tokens(std::size_t(rows * num_samples), -2);
  std::vector<float> logprobs(tokens.size());
  for (const std::string& isa : isas()) {
    ssm::set_isa(isa);
    ssm::SampleArgs a{};
    a.x = x.data(); a.rows = rows; a.cols = cols; a.stride = cols; a.dtype = dtype; a.probs = probs;
    a.temperature = probs ? nullptr : temperature.data();
    a.top_k = probs ? nullptr : top_k.data();
    a.top_p = probs ? nullptr : top_p.data();
    a.min_p = probs ? nullptr : min_p.data();
    a.seed = seed.data(); a.row_id = row_id.data(); a.offset = offset.data();
    a.num_samples = num_samples; a.replacement = replacement;
    a.tokens = tokens.data(); a.tokens_stride = num_samples;
    a.logprobs = probs ? nullptr : logprobs.data(); a.logprobs_stride = num_samples;
    a.num_threads = threads;
    ssm::sample(a);
    for (std::int64_t r = 0; r < rows; ++r) {
      // The filters always keep the most probable entry, so a row that is valid (no NaN, something
      // finite to draw; for weights: finite, >= 0, a positive sum) always yields a token.
      bool valid = true, any_candidate = false;
      for (std::int64_t c = 0; c < cols; ++c) {
        const double v = as_double(x.data(), dtype, r * cols + c);
        valid &= probs ? (std::isfinite(v) && v >= 0) : !std::isnan(v);
        any_candidate |= probs ? v > 0 : v != -INFINITY;
      }
      const bool must_draw = valid && any_candidate && (replacement || num_samples == 1);
      for (std::int64_t s = 0; s < num_samples; ++s) {
        const std::int64_t t = tokens[std::size_t(r * num_samples + s)];
        if (t == -1) {
          if (must_draw) fail("no token from a valid row", r, s, temperature[std::size_t(r)], double(top_k[std::size_t(r)]));
          continue;
        }
        if (!replacement)
          for (std::int64_t s2 = 0; s2 < s; ++s2)
            if (tokens[std::size_t(r * num_samples + s2)] == t) fail("token repeated without replacement", r, s, double(t), 0);
        if (t < 0 || t >= cols) fail("token out of range", r, s, double(t), double(cols));
        const double v = as_double(x.data(), dtype, r * cols + t);
        if (probs ? !(v > 0) : (v == -INFINITY || std::isnan(v))) fail("impossible token drawn", r, t, v, 0);
        if (!probs && !(logprobs[std::size_t(r * num_samples + s)] <= 0)) fail("positive log-prob", r, s, logprobs[0], 0);
      }
    }
  }
  ssm::set_isa("auto");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  Reader in{data, size};
  const std::uint32_t op = in.take(1) % 4;
  const int in_dtype = int(in.take(1) % 4), out_dtype = int(in.take(1) % 4);
  const std::int64_t rows = 1 + in.take(1) % 40;
  const std::int64_t cols = std::min<std::int64_t>(1 + in.take(2) % 3000, 40000 / rows);
  const int threads = 1 + int(in.take(1) % 4);
  switch (op) {
    case 0:
    case 1: fuzz_forward(in, in_dtype, out_dtype, op == 1, rows, cols, threads); break;
    case 2: fuzz_backward(in, in.take(1) & 1, rows, std::min<std::int64_t>(cols, 512), threads); break;
    default: fuzz_sampling(in, in_dtype, in.take(1) & 1, rows, cols, threads); break;
  }
  return 0;
}

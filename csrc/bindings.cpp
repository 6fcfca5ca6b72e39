// pybind11 module stablesoftmax._C: raw-pointer entry points (no libtorch); the GIL is released
// around all compute.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <string>
#include <vector>

#include "sampling.h"
#include "softmax.h"
#include "thread_pool.h"

namespace py = pybind11;

namespace {

// ValueError(msg) unless ok; a macro, so that the message (string concatenation, heap allocation) is built
// only when the check fails: a call makes a dozen checks, and a small one is otherwise dominated by them.
#define SSM_CHECK(ok, msg) \
  do {                     \
    if (!(ok)) throw py::value_error(msg); \
  } while (0)

void check_shape(std::int64_t rows, std::int64_t cols, int num_threads) {
  SSM_CHECK(rows >= 0 && cols >= 0, "rows and cols must be >= 0, got " + std::to_string(rows) + " x " + std::to_string(cols));
  SSM_CHECK(num_threads >= 1, "num_threads must be >= 1, got " + std::to_string(num_threads));
}

void check_dtype(int code, const char* what) {
  SSM_CHECK(ssm::valid_dtype(code), std::string(what) + " must be 0 (float16), 1 (bfloat16), 2 (float32) or 3 (float64), got " +
                                    std::to_string(code));
}

void check_ptr(std::uintptr_t p, const char* what, std::int64_t rows, std::int64_t cols) {
  SSM_CHECK(p != 0 || rows == 0 || cols == 0, std::string(what) + " is a null pointer");
}

ssm::View make_view(const std::vector<std::int64_t>& sizes, const std::vector<std::int64_t>& strides, const char* what) {
  SSM_CHECK(sizes.size() == strides.size(), std::string(what) + ": sizes and strides differ in length");
  SSM_CHECK(sizes.size() <= std::size_t(ssm::kMaxDims), std::string(what) + ": at most 64 dimensions");
  ssm::View v{};
  v.ndim = int(sizes.size());
  for (std::size_t i = 0; i < sizes.size(); ++i) {
    SSM_CHECK(sizes[i] >= 0, std::string(what) + ": sizes must be >= 0");
    SSM_CHECK(strides[i] >= 0, std::string(what) + ": strides must be >= 0");
    v.size[i] = sizes[i];
    v.stride[i] = strides[i];
  }
  return v;
}

bool has_elements(const std::vector<std::int64_t>& sizes) {
  for (auto s : sizes)
    if (s == 0) return false;
  return true;
}

int check_dim(int dim, const std::vector<std::int64_t>& sizes) {
  SSM_CHECK(!sizes.empty(), "tensors need at least one dimension");
  SSM_CHECK(dim >= 0 && dim < int(sizes.size()), "dim " + std::to_string(dim) + " out of range");
  return dim;
}

void softmax_forward(std::uintptr_t in_ptr, std::uintptr_t out_ptr, const std::vector<std::int64_t>& sizes,
                     const std::vector<std::int64_t>& in_strides, const std::vector<std::int64_t>& out_strides, int dim,
                     int in_dtype, int out_dtype, bool log, int num_threads) {
  SSM_CHECK(num_threads >= 1, "num_threads must be >= 1, got " + std::to_string(num_threads));
  check_dtype(in_dtype, "in_dtype");
  check_dtype(out_dtype, "out_dtype");
  const bool any = has_elements(sizes);
  SSM_CHECK(!any || in_ptr != 0, "in_ptr is a null pointer");
  SSM_CHECK(!any || out_ptr != 0, "out_ptr is a null pointer");
  ssm::ForwardArgs a{};
  a.in = reinterpret_cast<const void*>(in_ptr);
  a.out = reinterpret_cast<void*>(out_ptr);
  a.in_view = make_view(sizes, in_strides, "input");
  a.out_view = make_view(sizes, out_strides, "output");
  a.dim = check_dim(dim, sizes);
  a.in_dtype = in_dtype;
  a.out_dtype = out_dtype;
  a.log = log;
  a.num_threads = num_threads;
  py::gil_scoped_release nogil;
  ssm::softmax_forward(a);
}

void softmax_backward(std::uintptr_t y_ptr, std::uintptr_t grad_ptr, std::uintptr_t out_ptr,
                      const std::vector<std::int64_t>& sizes, const std::vector<std::int64_t>& y_strides,
                      const std::vector<std::int64_t>& grad_strides, const std::vector<std::int64_t>& out_strides,
                      int dim, int y_dtype, int grad_dtype, int out_dtype, bool log, int num_threads) {
  SSM_CHECK(num_threads >= 1, "num_threads must be >= 1, got " + std::to_string(num_threads));
  check_dtype(y_dtype, "y_dtype");
  check_dtype(grad_dtype, "grad_dtype");
  check_dtype(out_dtype, "out_dtype");
  const bool any = has_elements(sizes);
  SSM_CHECK(!any || y_ptr != 0, "y_ptr is a null pointer");
  SSM_CHECK(!any || grad_ptr != 0, "grad_ptr is a null pointer");
  SSM_CHECK(!any || out_ptr != 0, "out_ptr is a null pointer");
  ssm::BackwardArgs a{};
  a.y = reinterpret_cast<const void*>(y_ptr);
  a.grad = reinterpret_cast<const void*>(grad_ptr);
  a.out = reinterpret_cast<void*>(out_ptr);
  a.y_view = make_view(sizes, y_strides, "y");
  a.grad_view = make_view(sizes, grad_strides, "grad");
  a.out_view = make_view(sizes, out_strides, "output");
  a.dim = check_dim(dim, sizes);
  a.y_dtype = y_dtype;
  a.grad_dtype = grad_dtype;
  a.out_dtype = out_dtype;
  a.log = log;
  a.num_threads = num_threads;
  py::gil_scoped_release nogil;
  ssm::softmax_backward(a);
}

py::dict cpu_features() {
  const ssm::CpuFeatures f = ssm::cpu_features();
  py::dict d;
  d["avx2"] = f.avx2;
  d["fma"] = f.fma;
  d["f16c"] = f.f16c;
  d["avx512f"] = f.avx512f;
  d["avx512bw"] = f.avx512bw;
  d["avx512vl"] = f.avx512vl;
  d["avx512dq"] = f.avx512dq;
  d["avx512fp16"] = f.avx512fp16;
  d["avx512bf16"] = f.avx512bf16;
  d["os_avx512"] = f.os_avx512;
  d["neon"] = f.neon;
  d["isa"] = std::string(ssm::current_isa());
  d["isa_reason"] = ssm::isa_reason();
  d["supported_isas"] = ssm::supported_isas();
  return d;
}

void set_isa(const std::string& name) {
  try {
    ssm::set_isa(name);
  } catch (const std::invalid_argument& e) {
    throw py::value_error(e.what());
  }
}

void set_thread_runtime(const std::string& name) {
  try {
    ssm::set_thread_runtime(name);
  } catch (const std::invalid_argument& e) {
    throw py::value_error(e.what());
  }
}

// ---- sampling (csrc/sampling.cpp) ----
void sample_common(ssm::SampleArgs& a, std::uintptr_t x_ptr, std::int64_t rows, std::int64_t cols,
                   std::int64_t row_stride, int dtype, std::uintptr_t seed_ptr, std::uintptr_t row_id_ptr,
                   std::uintptr_t offset_ptr, std::int64_t num_samples, std::uintptr_t tokens_ptr,
                   std::int64_t tokens_stride, int num_threads) {
  check_shape(rows, cols, num_threads);
  check_dtype(dtype, "dtype");
  SSM_CHECK(num_samples >= 0, "num_samples must be >= 0, got " + std::to_string(num_samples));
  check_ptr(x_ptr, "x_ptr", rows, cols);
  for (auto [p, what] : {std::pair<std::uintptr_t, const char*>{seed_ptr, "seed_ptr"}, {row_id_ptr, "row_id_ptr"},
                         {offset_ptr, "offset_ptr"}})
    check_ptr(p, what, rows, 1);
  check_ptr(tokens_ptr, "tokens_ptr", rows, num_samples);
  a.x = reinterpret_cast<const void*>(x_ptr);
  a.rows = rows; a.cols = cols; a.stride = row_stride; a.dtype = dtype;
  a.seed = reinterpret_cast<const std::int64_t*>(seed_ptr);
  a.row_id = reinterpret_cast<const std::int64_t*>(row_id_ptr);
  a.offset = reinterpret_cast<const std::int64_t*>(offset_ptr);
  a.num_samples = num_samples;
  a.tokens = reinterpret_cast<std::int64_t*>(tokens_ptr);
  a.tokens_stride = tokens_stride;
  a.num_threads = num_threads;
}

void sample_rows(std::uintptr_t x_ptr, std::int64_t rows, std::int64_t cols, std::int64_t row_stride, int dtype,
                 std::uintptr_t temperature_ptr, std::uintptr_t top_k_ptr, std::uintptr_t top_p_ptr,
                 std::uintptr_t min_p_ptr, std::uintptr_t seed_ptr, std::uintptr_t row_id_ptr,
                 std::uintptr_t offset_ptr, std::int64_t num_samples, bool replacement, std::uintptr_t tokens_ptr,
                 std::int64_t tokens_stride, std::uintptr_t logprobs_ptr, std::int64_t logprobs_stride,
                 int num_threads) {
  ssm::SampleArgs a{};
  sample_common(a, x_ptr, rows, cols, row_stride, dtype, seed_ptr, row_id_ptr, offset_ptr, num_samples, tokens_ptr,
                tokens_stride, num_threads);
  check_ptr(temperature_ptr, "temperature_ptr", rows, 1);
  a.probs = false;
  a.temperature = reinterpret_cast<const float*>(temperature_ptr);
  a.top_k = reinterpret_cast<const std::int64_t*>(top_k_ptr);
  a.top_p = reinterpret_cast<const float*>(top_p_ptr);
  a.min_p = reinterpret_cast<const float*>(min_p_ptr);
  a.replacement = replacement;
  a.logprobs = reinterpret_cast<float*>(logprobs_ptr);
  a.logprobs_stride = logprobs_stride;
  py::gil_scoped_release nogil;
  ssm::sample(a);
}

void sample_probs(std::uintptr_t x_ptr, std::int64_t rows, std::int64_t cols, std::int64_t row_stride, int dtype,
                  std::uintptr_t seed_ptr, std::uintptr_t row_id_ptr, std::uintptr_t offset_ptr,
                  std::int64_t num_samples, bool replacement, std::uintptr_t tokens_ptr, std::int64_t tokens_stride,
                  int num_threads) {
  ssm::SampleArgs a{};
  sample_common(a, x_ptr, rows, cols, row_stride, dtype, seed_ptr, row_id_ptr, offset_ptr, num_samples, tokens_ptr,
                tokens_stride, num_threads);
  a.probs = true;
  a.replacement = replacement;
  py::gil_scoped_release nogil;
  ssm::sample(a);
}

// ---- shard passes of vocabulary-parallel sampling (csrc/shard_kernels.h) ----
ssm::ShardArgs shard_args(std::uintptr_t x_ptr, std::int64_t rows, std::int64_t cols, std::int64_t row_stride,
                          int dtype, std::uintptr_t m_ptr, std::uintptr_t t_ptr, std::uintptr_t cut_ptr,
                          std::uintptr_t min_p_ptr, int num_threads) {
  check_shape(rows, cols, num_threads);
  SSM_CHECK(dtype == ssm::kF16 || dtype == ssm::kBF16 || dtype == ssm::kF32,
        "shard kernels take float16, bfloat16 or float32 logits, got dtype code " + std::to_string(dtype));
  check_ptr(x_ptr, "x_ptr", rows, cols);
  check_ptr(m_ptr, "m_ptr", rows, 1);
  check_ptr(t_ptr, "t_ptr", rows, 1);
  ssm::ShardArgs a{};
  a.x = reinterpret_cast<const void*>(x_ptr);
  a.rows = rows; a.cols = cols; a.stride = row_stride; a.dtype = dtype;
  a.m = reinterpret_cast<const float*>(m_ptr);
  a.t = reinterpret_cast<const float*>(t_ptr);
  a.cut = reinterpret_cast<const float*>(cut_ptr);
  a.min_p = reinterpret_cast<const float*>(min_p_ptr);
  a.num_threads = num_threads;
  return a;
}

#define SSM_SHARD_ARGS std::uintptr_t x_ptr, std::int64_t rows, std::int64_t cols, std::int64_t row_stride, int dtype, \
    std::uintptr_t m_ptr, std::uintptr_t t_ptr, std::uintptr_t cut_ptr, std::uintptr_t min_p_ptr
#define SSM_SHARD_PASS x_ptr, rows, cols, row_stride, dtype, m_ptr, t_ptr, cut_ptr, min_p_ptr

void shard_mass(SSM_SHARD_ARGS, std::uintptr_t mass_ptr, int num_threads) {
  const auto a = shard_args(SSM_SHARD_PASS, num_threads);
  check_ptr(mass_ptr, "mass_ptr", rows, 1);
  py::gil_scoped_release nogil;
  ssm::shard_mass(a, reinterpret_cast<double*>(mass_ptr));
}

void shard_search(SSM_SHARD_ARGS, std::uintptr_t before_ptr, std::uintptr_t targets_ptr, std::int64_t n,
                  std::uintptr_t idx_ptr, std::uintptr_t last_ptr, int num_threads) {
  const auto a = shard_args(SSM_SHARD_PASS, num_threads);
  SSM_CHECK(n >= 0, "n must be >= 0");
  check_ptr(before_ptr, "before_ptr", rows, 1);
  check_ptr(targets_ptr, "targets_ptr", rows, n);
  check_ptr(idx_ptr, "idx_ptr", rows, n);
  check_ptr(last_ptr, "last_ptr", rows, 1);
  py::gil_scoped_release nogil;
  ssm::shard_search(a, reinterpret_cast<const double*>(before_ptr), reinterpret_cast<const double*>(targets_ptr), n,
                    reinterpret_cast<std::int64_t*>(idx_ptr), reinterpret_cast<std::int64_t*>(last_ptr));
}

void shard_histogram(SSM_SHARD_ARGS, bool counts, std::uintptr_t prefix_ptr, int shift, std::uintptr_t hist_ptr,
                     int num_threads) {
  const auto a = shard_args(SSM_SHARD_PASS, num_threads);
  SSM_CHECK(shift >= 0 && shift <= 24 && shift % 8 == 0, "shift must be 0, 8, 16 or 24, got " + std::to_string(shift));
  check_ptr(prefix_ptr, "prefix_ptr", rows, 1);
  check_ptr(hist_ptr, "hist_ptr", rows, 256);
  py::gil_scoped_release nogil;
  ssm::shard_histogram(a, counts, reinterpret_cast<const std::int64_t*>(prefix_ptr), shift,
                       reinterpret_cast<double*>(hist_ptr));
}

void shard_top_values(SSM_SHARD_ARGS, std::int64_t k, std::uintptr_t top_ptr, int num_threads) {
  const auto a = shard_args(SSM_SHARD_PASS, num_threads);
  SSM_CHECK(k >= 1, "k must be >= 1, got " + std::to_string(k));
  check_ptr(top_ptr, "top_ptr", rows, k);
  py::gil_scoped_release nogil;
  ssm::shard_top_values(a, k, reinterpret_cast<float*>(top_ptr));
}

void shard_race(SSM_SHARD_ARGS, std::uintptr_t seed_ptr, std::uintptr_t row_id_ptr, std::uintptr_t offset_ptr,
                std::int64_t col0, std::int64_t n, std::uintptr_t keys_ptr, std::uintptr_t ids_ptr,
                std::uintptr_t count_ptr, int num_threads) {
  const auto a = shard_args(SSM_SHARD_PASS, num_threads);
  SSM_CHECK(n >= 1 && col0 >= 0, "n must be >= 1 and col0 >= 0");
  for (auto [p, what] : {std::pair<std::uintptr_t, const char*>{seed_ptr, "seed_ptr"}, {row_id_ptr, "row_id_ptr"},
                         {offset_ptr, "offset_ptr"}, {count_ptr, "count_ptr"}})
    check_ptr(p, what, rows, 1);
  check_ptr(keys_ptr, "keys_ptr", rows, n);
  check_ptr(ids_ptr, "ids_ptr", rows, n);
  py::gil_scoped_release nogil;
  ssm::shard_race(a, reinterpret_cast<const std::int64_t*>(seed_ptr), reinterpret_cast<const std::int64_t*>(row_id_ptr),
                  reinterpret_cast<const std::int64_t*>(offset_ptr), col0, n, reinterpret_cast<float*>(keys_ptr),
                  reinterpret_cast<std::int64_t*>(ids_ptr), reinterpret_cast<std::int64_t*>(count_ptr));
}

#undef SSM_SHARD_ARGS
#undef SSM_SHARD_PASS

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "stablesoftmax C++ CPU kernels (raw pointers; sizes and strides in elements)";
  m.def("softmax_forward", &softmax_forward, py::arg("in_ptr"), py::arg("out_ptr"), py::arg("sizes"),
        py::arg("in_strides"), py::arg("out_strides"), py::arg("dim"), py::arg("in_dtype"), py::arg("out_dtype"),
        py::arg("log"), py::arg("num_threads"),
        "Softmax (log=False) or log_softmax (log=True) along `dim` of a strided tensor (sizes, strides in "
        "elements, >= 0) into another of the same sizes. dtype codes: 0=f16 1=bf16 2=f32 3=f64.");
  m.def("softmax_backward", &softmax_backward, py::arg("y_ptr"), py::arg("grad_ptr"), py::arg("out_ptr"),
        py::arg("sizes"), py::arg("y_strides"), py::arg("grad_strides"), py::arg("out_strides"), py::arg("dim"),
        py::arg("y_dtype"), py::arg("grad_dtype"), py::arg("out_dtype"), py::arg("log"), py::arg("num_threads"),
        "Input gradient from the forward output y and upstream grad along `dim` (strided, as softmax_forward): "
        "softmax y*(g - sum(g*y)); log_softmax g - exp(y)*sum(g).");
  m.def("pool_workers", &ssm::pool_workers, "Worker threads the extension's thread pool holds now (for tests).");
  m.def("pool_spin_us", &ssm::pool_spin_us, "Microseconds an idle worker spins before it sleeps (STABLESOFTMAX_POOL_SPIN_US).");
  ssm::OpenMpRuntime::get();  // finds torch's OpenMP runtime and registers its fork handler now, before any fork
  m.def("mark_forked_child", &ssm::OpenMpRuntime::mark_forked_child,
        "Tell the extension it runs in a forked child (OpenMP unusable there); see stablesoftmax/_extension.py.");
  m.def("thread_runtime", &ssm::thread_runtime, "('openmp' or 'pool', why): the threads parallel work runs on now.");
  m.def("set_thread_runtime", &set_thread_runtime, py::arg("name"),
        "'auto' (STABLESOFTMAX_CPU_THREADS, else torch's OpenMP where usable), 'openmp' or 'pool'.");
  m.def("cpu_features", &cpu_features, "CPU features (bool), 'isa' (in use), 'isa_reason' (why), 'supported_isas'");
  m.def("current_isa", [] { return std::string(ssm::current_isa()); }, "The ISA whose kernels run now.");
  m.def("supported_isas", &ssm::supported_isas, "The ISAs this build can run on this CPU, best first ('scalar' last).");
  m.def("set_isa", &set_isa, py::arg("name"), "'auto' (STABLESOFTMAX_CPU_ISA, else the best) or one of supported_isas()");
  m.def("sample_rows", &sample_rows, py::arg("x_ptr"), py::arg("rows"), py::arg("cols"), py::arg("row_stride"),
        py::arg("dtype"), py::arg("temperature_ptr"), py::arg("top_k_ptr"), py::arg("top_p_ptr"), py::arg("min_p_ptr"),
        py::arg("seed_ptr"), py::arg("row_id_ptr"), py::arg("offset_ptr"), py::arg("num_samples"),
        py::arg("replacement"), py::arg("tokens_ptr"), py::arg("tokens_stride"), py::arg("logprobs_ptr"),
        py::arg("logprobs_stride"), py::arg("num_threads"),
        "Fused sampling from logits (see backends/torch_sampling.py); filter pointers 0 = off, "
        "per-row arrays contiguous: temperature f32, top_k i64, top_p f32, min_p f32, seed/row_id/offset i64.");
  m.def("sample_probs", &sample_probs, py::arg("x_ptr"), py::arg("rows"), py::arg("cols"), py::arg("row_stride"),
        py::arg("dtype"), py::arg("seed_ptr"), py::arg("row_id_ptr"), py::arg("offset_ptr"), py::arg("num_samples"),
        py::arg("replacement"), py::arg("tokens_ptr"), py::arg("tokens_stride"), py::arg("num_threads"),
        "Sampling from rows of non-negative weights (multinomial).");
  // Shard passes (stablesoftmax/backends/cpp_shard.py): m/t/cut/min_p per-row float32 (cut, min_p 0 = off).
#define SSM_SHARD_NAMES py::arg("x_ptr"), py::arg("rows"), py::arg("cols"), py::arg("row_stride"), py::arg("dtype"), \
    py::arg("m_ptr"), py::arg("t_ptr"), py::arg("cut_ptr"), py::arg("min_p_ptr")
  m.def("shard_mass", &shard_mass, SSM_SHARD_NAMES, py::arg("mass_ptr"), py::arg("num_threads"),
        "Kept mass per row (f64).");
  m.def("shard_search", &shard_search, SSM_SHARD_NAMES, py::arg("before_ptr"), py::arg("targets_ptr"), py::arg("n"),
        py::arg("idx_ptr"), py::arg("last_ptr"), py::arg("num_threads"), "Inverse-CDF search of the shard.");
  m.def("shard_histogram", &shard_histogram, SSM_SHARD_NAMES, py::arg("counts"), py::arg("prefix_ptr"),
        py::arg("shift"), py::arg("hist_ptr"), py::arg("num_threads"), "One radix round (rows, 256) f64.");
  m.def("shard_top_values", &shard_top_values, SSM_SHARD_NAMES, py::arg("k"), py::arg("top_ptr"),
        py::arg("num_threads"), "The k largest z per row.");
  m.def("shard_race", &shard_race, SSM_SHARD_NAMES, py::arg("seed_ptr"), py::arg("row_id_ptr"), py::arg("offset_ptr"),
        py::arg("col0"), py::arg("n"), py::arg("keys_ptr"), py::arg("ids_ptr"), py::arg("count_ptr"),
        py::arg("num_threads"), "The shard's top-n race keys.");
#undef SSM_SHARD_NAMES
}

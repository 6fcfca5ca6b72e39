// pybind11 module stablesoftmax._C: raw-pointer entry points (no libtorch); the GIL is released
// around all compute.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "sampling.h"
#include "softmax.h"

namespace py = pybind11;

namespace {

void check(bool ok, const std::string& msg) {
  if (!ok) throw py::value_error(msg);
}

void check_shape(std::int64_t rows, std::int64_t cols, int num_threads) {
  check(rows >= 0 && cols >= 0, "rows and cols must be >= 0, got " + std::to_string(rows) + " x " + std::to_string(cols));
  check(num_threads >= 1, "num_threads must be >= 1, got " + std::to_string(num_threads));
}

void check_dtype(int code, const char* what) {
  check(ssm::valid_dtype(code), std::string(what) + " must be 0 (float16), 1 (bfloat16), 2 (float32) or 3 (float64), got " +
                                    std::to_string(code));
}

void check_ptr(std::uintptr_t p, const char* what, std::int64_t rows, std::int64_t cols) {
  check(p != 0 || rows == 0 || cols == 0, std::string(what) + " is a null pointer");
}

void softmax_forward(std::uintptr_t in_ptr, std::uintptr_t out_ptr, std::int64_t rows, std::int64_t cols,
                     std::int64_t in_row_stride, std::int64_t out_row_stride, int in_dtype, int out_dtype, bool log,
                     int num_threads) {
  check_shape(rows, cols, num_threads);
  check_dtype(in_dtype, "in_dtype");
  check_dtype(out_dtype, "out_dtype");
  check_ptr(in_ptr, "in_ptr", rows, cols);
  check_ptr(out_ptr, "out_ptr", rows, cols);
  const ssm::ForwardArgs a{reinterpret_cast<const void*>(in_ptr), reinterpret_cast<void*>(out_ptr), rows, cols,
                           in_row_stride, out_row_stride, in_dtype, out_dtype, log, num_threads};
  py::gil_scoped_release nogil;
  ssm::softmax_forward(a);
}

void softmax_backward(std::uintptr_t y_ptr, std::uintptr_t grad_ptr, std::uintptr_t out_ptr, std::int64_t rows,
                      std::int64_t cols, std::int64_t y_row_stride, std::int64_t grad_row_stride,
                      std::int64_t out_row_stride, int y_dtype, int grad_dtype, int out_dtype, bool log,
                      int num_threads) {
  check_shape(rows, cols, num_threads);
  check_dtype(y_dtype, "y_dtype");
  check_dtype(grad_dtype, "grad_dtype");
  check_dtype(out_dtype, "out_dtype");
  check_ptr(y_ptr, "y_ptr", rows, cols);
  check_ptr(grad_ptr, "grad_ptr", rows, cols);
  check_ptr(out_ptr, "out_ptr", rows, cols);
  const ssm::BackwardArgs a{reinterpret_cast<const void*>(y_ptr), reinterpret_cast<const void*>(grad_ptr),
                            reinterpret_cast<void*>(out_ptr), rows, cols, y_row_stride, grad_row_stride,
                            out_row_stride, y_dtype, grad_dtype, out_dtype, log, num_threads};
  py::gil_scoped_release nogil;
  ssm::softmax_backward(a);
}

py::dict cpu_features() {
  const ssm::CpuFeatures f = ssm::cpu_features();
  py::dict d;
  d["avx2"] = f.avx2;
  d["fma"] = f.fma;
  d["f16c"] = f.f16c;
  d["isa"] = std::string(ssm::current_isa());
  return d;
}

void set_isa(const std::string& name) {
  try {
    ssm::set_isa(name);
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
  check(num_samples >= 0, "num_samples must be >= 0, got " + std::to_string(num_samples));
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

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "stablesoftmax C++ CPU kernels (raw pointers; row stride in elements, unit column stride)";
  m.def("softmax_forward", &softmax_forward, py::arg("in_ptr"), py::arg("out_ptr"), py::arg("rows"), py::arg("cols"),
        py::arg("in_row_stride"), py::arg("out_row_stride"), py::arg("in_dtype"), py::arg("out_dtype"), py::arg("log"),
        py::arg("num_threads"),
        "Row-wise softmax (log=False) or log_softmax (log=True). dtype codes: 0=f16 1=bf16 2=f32 3=f64.");
  m.def("softmax_backward", &softmax_backward, py::arg("y_ptr"), py::arg("grad_ptr"), py::arg("out_ptr"),
        py::arg("rows"), py::arg("cols"), py::arg("y_row_stride"), py::arg("grad_row_stride"),
        py::arg("out_row_stride"), py::arg("y_dtype"), py::arg("grad_dtype"), py::arg("out_dtype"), py::arg("log"),
        py::arg("num_threads"),
        "Input gradient from the forward output y and upstream grad: softmax y*(g - sum(g*y)); "
        "log_softmax g - exp(y)*sum(g).");
  m.def("cpu_features", &cpu_features, "{'avx2', 'fma', 'f16c': bool, 'isa': the kernel path in use}");
  m.def("set_isa", &set_isa, py::arg("name"), "'auto' | 'avx2' | 'scalar' (for testing both paths)");
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
}

// stablesoftmax C++ CPU backend: fused sampling (see stablesoftmax/backends/torch_sampling.py for the
// algorithm; this is the same algorithm with the same random numbers).
#pragma once

#include <cstdint>

namespace ssm {

// One call of sample_rows (logits) or sample_probs (probabilities). Pointers are raw tensor data;
// per-row parameter arrays are contiguous and `rows` long; optional filters are null when off.
struct SampleArgs {
  const void* x;  // (rows, cols), unit column stride, row stride `stride` (elements)
  std::int64_t rows, cols, stride;
  int dtype;                         // 0 f16, 1 bf16, 2 f32, 3 f64
  bool probs;                        // true: x holds non-negative weights (sample_probs)
  const float* temperature;          // logits only
  const std::int64_t* top_k;         // nullable; 0 = off
  const float* top_p;                // nullable; >= 1 = off
  const float* min_p;                // nullable; 0 = off
  const std::int64_t* seed;          // Philox key per row
  const std::int64_t* row_id;        // counter word 1
  const std::int64_t* offset;        // counter words 2, 3
  std::int64_t num_samples;
  bool replacement;
  std::int64_t* tokens;              // (rows, num_samples), row stride tokens_stride
  std::int64_t tokens_stride;
  float* logprobs;                   // nullable; (rows, num_samples), row stride logprobs_stride
  std::int64_t logprobs_stride;
  int num_threads;
};

// One call of a shard pass of vocabulary-parallel sampling (stablesoftmax/backends/torch_shard.py gives
// the rules): this process holds the columns col0 .. col0 + cols - 1 of each row. Per row: m the global
// maximum, t the temperature, cut (nullable: -inf) and min_p (nullable: 0) the thresholds on z and e.
struct ShardArgs {
  const void* x;  // (rows, cols), unit column stride, row stride `stride` (elements); f16, bf16 or f32
  std::int64_t rows, cols, stride;
  int dtype;
  const float* m;
  const float* t;
  const float* cut;
  const float* min_p;
  int num_threads;
};

// Philox4x32-10 on counter `ctr` with key (lo, hi) = the 64-bit `key`; result written back to ctr.
inline void philox4x32_10(std::uint64_t key, std::uint32_t ctr[4]) {
  std::uint32_t k0 = std::uint32_t(key), k1 = std::uint32_t(key >> 32);
  std::uint32_t c0 = ctr[0], c1 = ctr[1], c2 = ctr[2], c3 = ctr[3];
  for (int round = 0; round < 10; ++round) {
    const std::uint64_t p0 = std::uint64_t(0xD2511F53u) * c0;
    const std::uint64_t p1 = std::uint64_t(0xCD9E8D57u) * c2;
    const std::uint32_t n0 = std::uint32_t(p1 >> 32) ^ c1 ^ k0;
    const std::uint32_t n2 = std::uint32_t(p0 >> 32) ^ c3 ^ k1;
    c1 = std::uint32_t(p1);
    c3 = std::uint32_t(p0);
    c0 = n0;
    c2 = n2;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  ctr[0] = c0; ctr[1] = c1; ctr[2] = c2; ctr[3] = c3;
}

// Arguments already validated by the bindings. Chooses the AVX2 or the portable path.
void sample(const SampleArgs& a);

// The shard passes (arguments validated by the bindings), on the active ISA.
// mass (rows) f64: the kept mass of each row.
void shard_mass(const ShardArgs& a, double* mass);
// targets (rows, n) f64 against the prefix before[r] + kept weights: idx (rows, n) the first local column
// whose prefix exceeds the target (cols where none), last (rows) the last column with weight (-1: none).
void shard_search(const ShardArgs& a, const double* before, const double* targets, std::int64_t n, std::int64_t* idx,
                  std::int64_t* last);
// One radix round over the float32 order key of z: hist (rows, 256) f64 over the entries with weight
// (counts: 1 per entry with z > -inf) whose key >> (shift + 8) equals prefix[r].
void shard_histogram(const ShardArgs& a, bool counts, const std::int64_t* prefix, int shift, double* hist);
// top (rows, k): the k largest z of each row, decreasing, -inf past cols.
void shard_top_values(const ShardArgs& a, std::int64_t k, float* top);
// The race over the kept entries with Philox words of global columns col0 + i: keys (rows, n) decreasing
// (-inf past them), ids (rows, n) global (-1 past them), count (rows) kept entries.
void shard_race(const ShardArgs& a, const std::int64_t* seed, const std::int64_t* row_id, const std::int64_t* offset,
                std::int64_t col0, std::int64_t n, float* keys, std::int64_t* ids, std::int64_t* count);

}  // namespace ssm

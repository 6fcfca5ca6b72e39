// Fused sampling kernels (CPU), written once against the vector layer and instantiated per ISA by
// isa_kernels.h inside namespace ssm::SSM_ISA (the same algorithm and random numbers as
// stablesoftmax/backends/torch_sampling.py).
//
// Per row (see torch_sampling.py for the rules), the paths are:
//  * plain temperature sampling with replacement: a max pass, then one exp+sum pass storing
//    per-block (kB elements) float sums as doubles; each sample finds its block through the
//    double prefix of block sums and rescans only that block (exps recomputed the same way).
//    A long row with few rows is split across threads (max and block sums per chunk).
//  * without replacement: the exponential race over all entries, pruned by the bound
//    key <= z + 17.33 (so Philox and the logs run only for entries that can still win).
//  * filters: a candidate list (index, z, e) that is a superset of the kept entries: the
//    top-k set (a heap over the inputs, then every z >= the k-th z), or for top-p alone the
//    entries above a histogram cut, or for min-p alone the entries above log(min_p); the exact
//    top-p / min-p rules then run on that list, and samples are drawn from it.
//  * anything unusual (float64, +inf logits, infinite or negative temperature): a generic path
//    that materialises z and e for the row and follows the reference step by step.
#pragma once

namespace ssm {
namespace SSM_ISA {
namespace {

using i64 = std::int64_t;
using u32 = std::uint32_t;

constexpr i64 kB = 512;                 // block length for the block sums
constexpr float kRaceSlack = 17.5f;     // -log(E) <= 16.7 for every E the race can draw (u <= 1 - 2^-24)
constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// ---------------------------------------------------------------- scratch memory

// Scratch vectors are thread_local, reused from row to row (no allocation on the hot path). One that
// had to grow past kScratchCapBytes for a long row (generic-path z and candidates, top-k copies) is
// released when the function that used it returns, so that after a call no thread keeps more than
// kScratchCapBytes per scratch vector, whatever the largest row it has seen. 4 MiB holds every vector of a
// 152,064-entry row (and up to 2^20 floats); a thread keeps a few of them, so a long-lived process with many
// threads keeps tens of MiB at most (at 16 MiB, a thread that once drew from a 2^22 row kept 48 MiB).
constexpr std::size_t kScratchCapBytes = std::size_t(4) << 20;  // 4 MiB per vector and thread

// Scratch vectors are ScratchVec: a vector past the cap is past kScratchMapBytes too, so its block is mapped
// and the release hands its pages back to the OS at once.
static_assert(kScratchCapBytes >= kScratchMapBytes, "a released scratch vector must be a mapped block");
template <class T> struct ReleaseIfLarge {
  ScratchVec<T>& v;
  ~ReleaseIfLarge() {
    if (v.capacity() * sizeof(T) > kScratchCapBytes) ScratchVec<T>().swap(v);
  }
};
template <class T> ReleaseIfLarge(ScratchVec<T>&) -> ReleaseIfLarge<T>;

// ---------------------------------------------------------------- random numbers

struct Rng {
  std::uint64_t key;
  u32 c1, c2, c3;
  i64 cached = -1;
  u32 w[4] = {0, 0, 0, 0};
  Rng(std::int64_t seed, std::int64_t row_id, std::int64_t offset)
      : key(std::uint64_t(seed)), c1(u32(std::uint64_t(row_id))), c2(u32(std::uint64_t(offset))),
        c3(u32(std::uint64_t(offset) >> 32)) {}
  // Uniform in [0, 1) for inverse-CDF sample k: word 0 of counter c0 = k.
  double uniform(i64 k) const {
    u32 c[4] = {u32(k), c1, c2, c3};
    philox4x32_10(key, c);
    return double(c[0]) * 0x1p-32;
  }
  // The race's 23-bit draw for entry i: word i % 4 of counter c0 = i / 4, shifted right by 9 (so
  // that u = (bits + 0.5) * 2^-23 has 24 significant bits: exact in float32, and never 1).
  u32 race_bits(i64 i) {
    const i64 g = i >> 2;
    if (g != cached) {
      w[0] = u32(g); w[1] = c1; w[2] = c2; w[3] = c3;
      philox4x32_10(key, w);
      cached = g;
    }
    return w[i & 3] >> 9;
  }
  // 1 - u_i exactly (a lower bound on E_i = -log(u_i)).
  double one_minus_u(i64 i) { return (8388608.0 - 0.5 - double(race_bits(i))) * 0x1p-23; }
  // log(E_i), E_i = -log(u_i): the race's per-entry draw (float32, as the reference).
  float log_exponential(i64 i) {
    const float u = (float(race_bits(i)) + 0.5f) * 0x1p-23f;
    const float e = -std::log(u);
    return std::log(e);
  }
};

// ---------------------------------------------------------------- vector helpers

// The race's 23-bit draws (Rng::race_bits) of entries i0 .. i0 + 4 * kLanes - 1 (i0 a multiple of 4), in
// entry order.
constexpr int kRaceBatch = 4 * kLanes;
inline void race_bits_batch(const Rng& rng, i64 i0, u32* out) {
  VI x0 = iota(u32(i0 >> 2)), x1 = iset(std::int32_t(rng.c1)), x2 = iset(std::int32_t(rng.c2)), x3 = iset(std::int32_t(rng.c3));
  philox_lanes(rng.key, x0, x1, x2, x3);
  u32 words[4][kLanes];
  store_u32(words[0], isrl<9>(x0));
  store_u32(words[1], isrl<9>(x1));
  store_u32(words[2], isrl<9>(x2));
  store_u32(words[3], isrl<9>(x3));
  for (int k = 0; k < kLanes; ++k)
    for (int j = 0; j < 4; ++j) out[4 * k + j] = words[j][k];
}

// exp over an array (the values the vector passes use).
void exp_array(const float* z, float* e, i64 n) {
  i64 i = 0;
  for (; i + kLanes <= n; i += kLanes) store(e + i, exp_sampling(load(z + i)));
  if (i < n) store_tail(e + i, int(n - i), exp_sampling(load_tail(z + i, int(n - i), -kInf)));
}

inline float exp1(float z) {
  float e;
  exp_array(&z, &e, 1);
  return e;
}
inline double exp_acc(double z) { return std::exp(z); }
inline float exp_acc(float z) { return exp1(z); }

// Loads of any storage type: float64 rows take the generic paths, but the vector passes are compiled
// for them too (the choice is made at run time), so they load through a float buffer.
template <class T> inline VF vload(const T* p) {
  if constexpr (std::is_same<T, double>::value) {
    float b[kLanes];
    for (int l = 0; l < kLanes; ++l) b[l] = float(p[l]);
    return load(b);
  } else {
    return load(p);
  }
}
template <class T> inline VF vload_tail(const T* p, int n, float pad) {
  if constexpr (std::is_same<T, double>::value) {
    float b[kLanes];
    for (int l = 0; l < n; ++l) b[l] = float(p[l]);
    return load_tail(b, n, pad);
  } else {
    return load_tail(p, n, pad);
  }
}
// n >= kLanes: a whole vector; else a tail padded with `pad`.
template <class T> inline VF load_upto(const T* p, i64 n, float pad) {
  return n >= kLanes ? vload(p) : vload_tail(p, int(n), pad);
}

// Calls f(j) for each set bit j of `bits`, lowest first.
template <class F> inline void for_each_bit(unsigned bits, F&& f) {
  while (bits) {
    f(__builtin_ctz(bits));
    bits &= bits - 1;
  }
}

// ---------------------------------------------------------------- row passes (float acc)

// max over n entries and whether any is NaN
template <class T> void row_max(const T* x, i64 n, float& m, bool& nan) {
  i64 i = 0;
  VF vm0 = vset(-kInf), vm1 = vm0;
  VM vn = lt(vm0, vm0);
  for (; i + 2 * kLanes <= n; i += 2 * kLanes) {
    const VF a = vload(x + i), b = vload(x + i + kLanes);
    vm0 = vmax(vm0, a);
    vm1 = vmax(vm1, b);
    vn = m_or(vn, unord(a, b));
  }
  for (; i < n; i += kLanes) {
    const VF a = i + kLanes <= n ? vload(x + i) : vload_tail(x + i, int(n - i), -kInf);
    vm0 = vmax(vm0, a);
    vn = m_or(vn, unord(a, a));
  }
  m = reduce_max(vmax(vm0, vm1));
  nan = mask_bits(vn) != 0;
}

// Weight transforms: logits e = exp((x - m) / T); probabilities w = x.
struct LogitW {
  float m, t;
  float z(float x) const { return (x - m) / t; }
  bool positive(float x) const { return z(x) >= kZCut; }
};
struct ProbW {
  float m = 0, t = 1;  // unused (uniform interface with LogitW)
  bool positive(float x) const { return x > 0; }
};

// An invalid probability: negative, NaN or infinite.
inline bool invalid_prob(float v) { return !(v >= 0.0f && v < kInf); }

// Sums of the weights of each block in [c0, c1) (c0 a multiple of kB, c1 a block end or the row end).
// For probabilities, a block holding an invalid entry sums to NaN (the caller reports the row).
template <class T, class W> void block_sums(const T* x, i64 c0, i64 c1, const W& w, double* out) {
  constexpr bool kProbs = std::is_same<W, ProbW>::value;
  for (i64 b0 = c0; b0 < c1; b0 += kB) {
    const i64 b1 = std::min(b0 + kB, c1);
    VF acc0 = vzero(), acc1 = acc0;
    i64 i = b0;
    if constexpr (kProbs) {
      // invalid lanes: v < 0, or !(v < inf) (NaN and +inf)
      const VF vinf = vset(kInf);
      VM bad = lt(vinf, vinf);
      auto check = [&](VF v) {
        bad = m_or(bad, m_or(lt(v, vzero()), m_or(unord(v, v), eq(v, vinf))));
        return v;
      };
      for (; i + 2 * kLanes <= b1; i += 2 * kLanes) {
        acc0 = add(acc0, check(vload(x + i)));
        acc1 = add(acc1, check(vload(x + i + kLanes)));
      }
      for (; i < b1; i += kLanes) acc0 = add(acc0, check(load_upto(x + i, b1 - i, 0.0f)));
      if (mask_bits(bad)) {
        out[(b0 - c0) / kB] = kNaN;
        continue;
      }
    } else {
      // Sums only steer the search to a block (which is then rescanned with exact division and
      // exp_sampling), so z here is (x - m) * (1/T) and exp flushes below 2^-125: a few ulp from the
      // rescan's weights, and z <= 0 exactly. The subtraction comes first: x * (1/T) - m * (1/T)
      // (one FMA) carries an error of ~|m / T| * 2^-24 into the exponent, which at large |m / T|
      // biased the draws (and at tiny T gave exp(+huge) or 0 for the maximum itself). The caller
      // guarantees 1/T is finite (plain_params sends other rows to the generic path).
      const VF vm = vset(w.m), vr = vset(1.0f / w.t);
      auto e = [&](VF v) { return exp_ftz(mul(sub(v, vm), vr)); };
      for (; i + 2 * kLanes <= b1; i += 2 * kLanes) {
        acc0 = add(acc0, e(vload(x + i)));
        acc1 = add(acc1, e(vload(x + i + kLanes)));
      }
      for (; i < b1; i += kLanes) acc0 = add(acc0, e(load_upto(x + i, b1 - i, -kInf)));
    }
    out[(b0 - c0) / kB] = reduce_sum(add(acc0, acc1));
  }
}

// The weights of entries [b0, b0 + n) into out (n <= kB).
template <class T, class W> void block_weights(const T* x, i64 b0, i64 n, const W& w, float* out) {
  constexpr bool kProbs = std::is_same<W, ProbW>::value;
  const VF vm = vset(kProbs ? 0.f : w.m), vt = vset(kProbs ? 1.f : w.t);
  i64 i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    const VF v = vload(x + b0 + i);
    store(out + i, kProbs ? v : exp_sampling<true>(div(sub(v, vm), vt)));
  }
  if (i < n) {
    const VF v = vload_tail(x + b0 + i, int(n - i), kProbs ? 0.f : -kInf);
    store_tail(out + i, int(n - i), kProbs ? v : exp_sampling(div(sub(v, vm), vt)));
  }
}

// ---------------------------------------------------------------- outputs

struct RowOut {
  i64* tok;
  float* lp;  // nullable
  i64 n;
  void fill_bad() const {
    for (i64 k = 0; k < n; ++k) {
      tok[k] = -1;
      if (lp) lp[k] = float(kNaN);
    }
  }
  void set(i64 k, i64 idx, double logprob) const {
    tok[k] = idx;
    if (lp) lp[k] = idx >= 0 ? float(logprob) : float(kNaN);
  }
};

// ---------------------------------------------------------------- top-n heap for the race

template <class K> struct TopN {
  std::vector<std::pair<K, i64>> h;
  i64 cap;
  static bool better(const std::pair<K, i64>& a, const std::pair<K, i64>& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  }
  explicit TopN(i64 c) : cap(c) { h.reserve(std::size_t(std::min<i64>(c, 1 << 16))); }
  bool full() const { return i64(h.size()) >= cap; }
  K threshold() const { return full() ? h.front().first : -std::numeric_limits<K>::infinity(); }
  void push(K key, i64 idx) {
    const std::pair<K, i64> e(key, idx);
    if (!full()) {
      h.push_back(e);
      std::push_heap(h.begin(), h.end(), better);
    } else if (better(e, h.front())) {
      std::pop_heap(h.begin(), h.end(), better);
      h.back() = e;
      std::push_heap(h.begin(), h.end(), better);
    }
  }
  void sorted() { std::sort(h.begin(), h.end(), better); }
};

// ---------------------------------------------------------------- candidate lists

template <class Acc> struct Cand {
  i64 idx;
  Acc z;  // log-weight (z for logits, log p for probabilities)
  Acc e;  // weight (> 0)
};

struct Filters {
  bool top_p_on = false, min_p_on = false;
  float top_p = 1, min_p = 0;
};

// The order of candidates by decreasing z, ties by increasing index: the order top-p walks. `order` gets
// positions into c (sorted by index), by a stable LSD radix sort of (z key, position) pairs, 11-bit digits,
// a digit all keys share skipped: O(C), where the comparison sort cost ~60 ns a candidate (a top-p 0.95
// row of 152,064 random logits keeps ~4,000). -0.0 counts as +0.0, as in the comparisons.
inline void order_by_z(const ScratchVec<Cand<float>>& c, ScratchVec<std::uint64_t>& order,
                       ScratchVec<std::uint64_t>& tmp) {
  const std::size_t n = c.size();
  order.resize(n);
  tmp.resize(n);
  for (std::size_t i = 0; i < n; ++i) {
    const float z = c[i].z == 0 ? 0.0f : c[i].z;
    u32 b;
    std::memcpy(&b, &z, sizeof b);
    const u32 ascending = (b & 0x80000000u) ? ~b : (b | 0x80000000u);  // unsigned order == float order
    order[i] = (std::uint64_t(~ascending) << 32) | std::uint64_t(i);
  }
  for (int shift = 32; shift < 64; shift += 11) {
    std::size_t count[2048] = {0};
    for (std::size_t i = 0; i < n; ++i) ++count[(order[i] >> shift) & 2047];
    if (count[(order[0] >> shift) & 2047] == n) continue;
    std::size_t at = 0;
    for (auto& k : count) at += std::exchange(k, at);
    for (std::size_t i = 0; i < n; ++i) tmp[count[(order[i] >> shift) & 2047]++] = order[i];
    order.swap(tmp);
  }
}

// How many candidates top-p keeps, walking c in `at(i)` order (decreasing z, ties by increasing index): whole
// groups of equal z, while the mass above them is below lim (that mass summed in the walk's order).
template <class Acc, class At> std::size_t top_p_kept(const ScratchVec<Cand<Acc>>& c, double lim, At at) {
  double above = 0;
  std::size_t i = 0;
  while (i < c.size()) {
    if (!(above < lim)) break;
    std::size_t j = i;
    const Acc z = c[at(i)].z;
    while (j < c.size() && c[at(j)].z == z) above += double(c[at(j++)].e);
    i = j;
  }
  return i;
}

// top-p then min-p on candidates (a superset of the kept entries whose complement top-p would
// drop anyway), then the draws. `mass` is the kept mass before top-p.
template <class Acc>
void finish(ScratchVec<Cand<Acc>>& c, double mass, const Filters& f, Rng& rng, bool replacement, const RowOut& out) {
  const auto by_index = [](const Cand<Acc>& a, const Cand<Acc>& b) { return a.idx < b.idx; };
  // candidate lists are made in index order; the draws below walk that order
  if (!std::is_sorted(c.begin(), c.end(), by_index)) std::sort(c.begin(), c.end(), by_index);
  if (f.top_p_on && !c.empty()) {
    const double lim = double(f.top_p) * mass;
    if constexpr (std::is_same<Acc, float>::value) {
      // the kept groups are those with z >= the last kept z: filtered in place, index order kept
      thread_local ScratchVec<std::uint64_t> order, tmp;
      const ReleaseIfLarge release_order{order};
      const ReleaseIfLarge release_tmp{tmp};
      order_by_z(c, order, tmp);
      const std::size_t kept = top_p_kept(c, lim, [&](std::size_t i) { return std::size_t(u32(order[i])); });
      if (kept == 0) c.clear();
      else if (kept < c.size()) {
        const float z_last = c[std::size_t(u32(order[kept - 1]))].z;
        c.erase(std::remove_if(c.begin(), c.end(), [z_last](const Cand<float>& a) { return !(a.z >= z_last); }), c.end());
      }
    } else {
      std::sort(c.begin(), c.end(), [](const Cand<Acc>& a, const Cand<Acc>& b) { return a.z > b.z || (a.z == b.z && a.idx < b.idx); });
      c.resize(top_p_kept(c, lim, [](std::size_t i) { return i; }));
      std::sort(c.begin(), c.end(), by_index);
    }
  }
  if (f.min_p_on) {
    const Acc mp = Acc(f.min_p);
    c.erase(std::remove_if(c.begin(), c.end(), [mp](const Cand<Acc>& a) { return !(a.e >= mp); }), c.end());
  }
  if (c.empty()) return out.fill_bad();
  thread_local ScratchVec<double> cum;
  const ReleaseIfLarge release_cum{cum};
  cum.resize(c.size());
  double total = 0;
  for (std::size_t i = 0; i < c.size(); ++i) cum[i] = total += double(c[i].e);
  const double log_total = std::log(total);
  if (replacement) {
    for (i64 k = 0; k < out.n; ++k) {
      const double target = rng.uniform(k) * total;
      std::size_t j = std::size_t(std::upper_bound(cum.begin(), cum.end(), target) - cum.begin());
      if (j >= c.size()) j = c.size() - 1;
      out.set(k, c[j].idx, double(c[j].z) - log_total);
    }
  } else {
    TopN<Acc> top(out.n);
    for (const auto& a : c) top.push(a.z - Acc(rng.log_exponential(a.idx)), a.idx);
    top.sorted();
    // candidate z by index, for the log-probabilities
    for (i64 k = 0; k < out.n; ++k) {
      if (k < i64(top.h.size())) {
        const i64 idx = top.h[std::size_t(k)].second;
        const auto it = std::lower_bound(c.begin(), c.end(), idx, [](const Cand<Acc>& a, i64 v) { return a.idx < v; });
        out.set(k, idx, double(it->z) - log_total);
      } else {
        out.set(k, -1, 0);
      }
    }
  }
}

// ---------------------------------------------------------------- generic path (any row)

template <class Acc, class T>
void generic_logits_row(const T* x, i64 V, Acc m, Acc t, i64 top_k, const Filters& f, Rng& rng, bool replacement,
                        const RowOut& out) {
  thread_local ScratchVec<Acc> z, tmp;
  const ReleaseIfLarge release_z{z};
  const ReleaseIfLarge release_tmp{tmp};
  z.resize(std::size_t(V));
  const Acc inf = std::numeric_limits<Acc>::infinity();
  for (i64 i = 0; i < V; ++i) {
    const Acc xi = load_as<Acc>(x + i);
    Acc s;
    if (m == inf) s = xi == inf ? Acc(0) : -inf;
    else s = xi - (std::isfinite(m) ? m : Acc(0));
    // -inf stays -inf at every T (at T = inf, -inf / inf would be NaN, which top-k ranks first)
    z[std::size_t(i)] = s == -inf ? -inf : s / t;
  }
  bool kth_nan = false;
  Acc kth = -inf;
  const bool k_on = top_k > 0 && top_k < V;
  if (k_on) {  // k-th largest z, NaN ranking above everything (as torch.sort / topk)
    tmp.clear();
    i64 nans = 0;
    for (i64 i = 0; i < V; ++i) {
      if (z[std::size_t(i)] != z[std::size_t(i)]) ++nans;
      else tmp.push_back(z[std::size_t(i)]);
    }
    if (top_k <= nans) {
      kth_nan = true;
    } else {
      const std::size_t r = std::size_t(top_k - nans - 1);
      std::nth_element(tmp.begin(), tmp.begin() + std::ptrdiff_t(r), tmp.end(), std::greater<Acc>());
      kth = tmp[r];
    }
  }
  thread_local ScratchVec<Cand<Acc>> c;
  const ReleaseIfLarge release_c{c};
  c.clear();
  double mass = 0;
  if (!kth_nan) {
    for (i64 i = 0; i < V; ++i) {
      const Acc zi = z[std::size_t(i)];
      if (!(zi >= kth)) continue;
      const Acc e = exp_acc(zi);
      if (!(e > 0)) continue;
      c.push_back({i, zi, e});
      mass += double(e);
    }
  }
  finish(c, mass, f, rng, replacement, out);
}

template <class Acc, class T>
void generic_probs_row(const T* x, i64 V, Rng& rng, bool replacement, const RowOut& out) {
  thread_local ScratchVec<Cand<Acc>> c;
  const ReleaseIfLarge release_c{c};
  c.clear();
  for (i64 i = 0; i < V; ++i) {
    const Acc w = load_as<Acc>(x + i);
    if (!(w >= 0 && w < std::numeric_limits<Acc>::infinity())) return out.fill_bad();
    if (w > 0) c.push_back({i, std::log(w), w});
  }
  finish(c, 0.0, Filters{}, rng, replacement, out);
}

// ---------------------------------------------------------------- fast paths (float acc)

// Inverse-CDF draws from block sums bs[0..nb) of the row's weights.
template <class T, class W>
void draw_from_blocks(const T* x, i64 V, const W& w, const double* bs, Rng& rng, const RowOut& out,
                      const LogitW* lw) {
  const i64 nb = (V + kB - 1) / kB;
  thread_local ScratchVec<double> prefix;
  const ReleaseIfLarge release_prefix{prefix};
  prefix.resize(std::size_t(nb + 1));
  prefix[0] = 0;
  for (i64 b = 0; b < nb; ++b) prefix[std::size_t(b + 1)] = prefix[std::size_t(b)] + bs[b];
  const double total = prefix[std::size_t(nb)];
  if (!(total > 0)) return out.fill_bad();
  const double log_total = std::log(total);
  alignas(32) float buf[kB];
  auto logp = [&](i64 idx) { return lw ? double(lw->z(load_as<float>(x + idx))) - log_total : 0.0; };
  for (i64 k = 0; k < out.n; ++k) {
    const double target = rng.uniform(k) * total;
    const i64 b = i64(std::upper_bound(prefix.begin() + 1, prefix.end(), target) - (prefix.begin() + 1));
    i64 pick = -1;
    if (b < nb) {
      const i64 b0 = b * kB, n = std::min(kB, V - b0);
      block_weights(x, b0, n, w, buf);
      double c = prefix[std::size_t(b)];
      i64 last = -1;
      for (i64 i = 0; i < n; ++i) {
        if (buf[i] > 0) last = i;
        c += double(buf[i]);
        if (c > target && buf[i] > 0) { pick = b0 + i; break; }
      }
      if (pick < 0 && last >= 0) pick = b0 + last;
    }
    if (pick < 0) {  // rounding put the target at the top: the last entry with weight
      for (i64 i = V - 1; i >= 0; --i)
        if (w.positive(load_as<float>(x + i))) { pick = i; break; }
    }
    out.set(k, pick, logp(pick));
  }
}

// Exponential race over the whole row (no filters), pruned: key <= logw + kRaceSlack.
template <class T, class W>
void race_row(const T* x, i64 V, const W& w, Rng& rng, const RowOut& out, double log_total) {
  constexpr bool kProbs = std::is_same<W, ProbW>::value;
  TopN<float> top(out.n);
  i64 count = 0;
  // Once the heap is full, an entry needs key > thr, i.e. E < w * exp(-thr) with w its weight; as
  // E = -log(u) >= 1 - u, an entry with 1 - u >= w * exp(-thr) (less a margin far above the float
  // rounding of the key) cannot enter, and its logarithms are never computed.
  constexpr double kMargin = 1.0 + 1e-4;
  double inv_exp_thr = kInf;  // exp(-thr) * kMargin; +inf while the heap is not full
  auto visit = [&](i64 i, float v) {  // v: the input value of a positive entry
    float lw;
    if constexpr (kProbs) {
      if (rng.one_minus_u(i) >= double(v) * inv_exp_thr) return;
      lw = std::log(v);
    } else {
      lw = w.z(v);
      if (inv_exp_thr != kInf && rng.one_minus_u(i) >= std::exp(double(lw)) * inv_exp_thr) return;
    }
    top.push(lw - rng.log_exponential(i), i);
  };
  // bound on the input value below which an entry cannot enter the heap
  auto bound = [&]() -> float {
    if (!top.full()) return kProbs ? 0.0f : -kInf;
    inv_exp_thr = std::exp(-double(top.threshold())) * kMargin;
    const float thr = top.threshold() - kRaceSlack;
    if constexpr (kProbs) return std::exp(thr);
    else {  // z < thr  <=  x < thr * t + m, less a margin for the rounding of both sides
      const float xb = thr * w.t + w.m;
      return xb - 1e-5f * (std::fabs(thr * w.t) + std::fabs(w.m)) - 1e-30f;
    }
  };
  float xb = bound();
  i64 i = 0;
  bool invalid = false;
  const VF vm = vset(kProbs ? 0.f : w.m), vt = vset(kProbs ? 1.f : w.t);
  const VF vcut = vset(kZCut), vinf = vset(kInf);
  VM vbad = lt(vinf, vinf);
  // The 1 - u test in vector form once the heap is full: Philox for kRaceBatch entries at a time, then
  // (1 - u) rounded down against w * exp(-thr) * kMargin (products in float: a prefilter only;
  // visit() repeats the test in double).
  u32 bits[kRaceBatch];
  i64 bits_at = -1;
  constexpr unsigned kAllLanes = kLanes == 32 ? ~0u : (1u << kLanes) - 1u;
  auto may_enter = [&](i64 i0, VF v, VF z) -> unsigned {
    if (inv_exp_thr == double(kInf)) return kAllLanes;
    const i64 batch = i0 - i0 % kRaceBatch;
    if (batch != bits_at) {
      bits_at = batch;
      race_bits_batch(rng, bits_at, bits);
    }
    VI b;
    std::memcpy(&b, bits + (i0 - batch), sizeof(VI));
    const VF omu = mul(cvt_float(isub(iset(8388607), b)), vset(0x1p-23f));  // <= 1 - u
    VF bound_w;
    if constexpr (kProbs) {
      (void)z;
      bound_w = mul(v, vset(float(std::min(inv_exp_thr, 1e38))));
    } else {
      bound_w = exp_sampling(add(z, vset(float(std::log(inv_exp_thr)))));
    }
    return mask_bits(lt(omu, bound_w));
  };
  for (; i + kLanes <= V; i += kLanes) {
    const VF v = vload(x + i);
    VM pos;
    VF z = vzero();
    if constexpr (kProbs) {
      pos = gt(v, vzero());
      vbad = m_or(vbad, m_or(lt(v, vzero()), m_or(unord(v, v), eq(v, vinf))));
    } else {
      z = div(sub(v, vm), vt);
      pos = ge(z, vcut);
    }
    const unsigned pm = mask_bits(pos);
    count += __builtin_popcount(pm);
    unsigned cm = pm & mask_bits(ge(v, vset(xb)));
    if (cm == 0) continue;
    cm &= may_enter(i, v, z);
    if (cm == 0) continue;
    float vb[kLanes];
    store(vb, v);
    for_each_bit(cm, [&](int j) {
      if (vb[j] >= xb) {
        visit(i + j, vb[j]);
        xb = bound();
      }
    });
  }
  invalid = mask_bits(vbad) != 0;
  for (; i < V; ++i) {
    const float v = load_as<float>(x + i);
    if constexpr (kProbs) invalid |= invalid_prob(v);
    if (!w.positive(v)) continue;
    ++count;
    if (v >= xb) {
      visit(i, v);
      xb = bound();
    }
  }
  if (invalid) return out.fill_bad();
  top.sorted();
  for (i64 k = 0; k < out.n; ++k) {
    if (k < i64(top.h.size()) && k < count) {
      const i64 idx = top.h[std::size_t(k)].second;
      double lp = 0;
      if constexpr (!kProbs) lp = double(w.z(load_as<float>(x + idx))) - log_total;
      out.set(k, idx, lp);
    } else {
      out.set(k, -1, 0);
    }
  }
}

// k-th largest input value (as float) of a NaN-free row.
template <class T> float kth_largest(const T* x, i64 V, i64 k) {
  thread_local ScratchVec<float> h;
  const ReleaseIfLarge release_h{h};
  if (k > 4096 || k * 8 > V) {
    h.resize(std::size_t(V));
    for (i64 i = 0; i < V; ++i) h[std::size_t(i)] = load_as<float>(x + i);
    std::nth_element(h.begin(), h.begin() + (k - 1), h.end(), std::greater<float>());
    return h[std::size_t(k - 1)];
  }
  h.resize(std::size_t(k));
  for (i64 i = 0; i < k; ++i) h[std::size_t(i)] = load_as<float>(x + i);
  std::make_heap(h.begin(), h.end(), std::greater<float>());  // min-heap
  float thr = h.front();
  auto offer = [&](float v) {
    if (v > thr) {
      std::pop_heap(h.begin(), h.end(), std::greater<float>());
      h.back() = v;
      std::push_heap(h.begin(), h.end(), std::greater<float>());
      thr = h.front();
    }
  };
  i64 i = k;
  for (; i + 2 * kLanes <= V; i += 2 * kLanes) {
    const VF a = vload(x + i), b = vload(x + i + kLanes);
    const VF vt = vset(thr);
    if ((mask_bits(gt(a, vt)) | mask_bits(gt(b, vt))) == 0) continue;
    float buf[2 * kLanes];
    store(buf, a);
    store(buf + kLanes, b);
    for (int j = 0; j < 2 * kLanes; ++j) offer(buf[j]);
  }
  for (; i < V; ++i) offer(load_as<float>(x + i));
  return thr;
}

// A logit below which z = (x - m) / t is below zlo: m + zlo * t less a margin far wider than the
// rounding of x - m and of the division (2^-20 relative, and t * 2^-140 for a subnormal quotient), rounded
// down to a float. z is monotone in x, so every x < cut has z(x) <= z(largest float < cut) < zlo.
// -inf (no cut) when that is not a finite float.
inline float logit_cut(const LogitW& w, float zlo) {
  const double zt = double(zlo) * double(w.t);
  const double margin = std::ldexp(std::fabs(double(w.m)) + std::fabs(zt), -20) + std::ldexp(double(w.t), -140);
  const double cut = double(w.m) + zt - margin;
  if (!(std::fabs(cut) <= double(std::numeric_limits<float>::max()))) return -kInf;
  float f = float(cut);
  if (double(f) > cut) f = std::nextafter(f, -kInf);
  return f;
}

// Entries with z > zlo (strict) or z >= zlo, with their weights (e > 0 only), into c; returns their mass.
// Only vectors holding a logit >= logit_cut(w, zlo) compute z (a compare, not a division, per entry).
template <class T>
double gather(const T* x, i64 V, const LogitW& w, float zlo, bool strict, ScratchVec<Cand<float>>& c) {
  thread_local ScratchVec<float> zs, es;
  const ReleaseIfLarge release_zs{zs};
  const ReleaseIfLarge release_es{es};
  thread_local ScratchVec<i64> ids;
  const ReleaseIfLarge release_ids{ids};
  zs.clear();
  ids.clear();
  i64 i = 0;
  const VF vm = vset(w.m), vt = vset(w.t), vlo = vset(zlo), vcut = vset(logit_cut(w, zlo));
  for (; i + kLanes <= V; i += kLanes) {
    const VF xv = vload(x + i);
    if (!mask_bits(ge(xv, vcut))) continue;
    const VF z = div(sub(xv, vm), vt);
    const unsigned mk = mask_bits(strict ? gt(z, vlo) : ge(z, vlo));
    if (!mk) continue;
    float zb[kLanes];
    store(zb, z);
    for_each_bit(mk, [&](int j) {
      zs.push_back(zb[j]);
      ids.push_back(i + j);
    });
  }
  for (; i < V; ++i) {
    const float z = w.z(load_as<float>(x + i));
    if (strict ? z > zlo : z >= zlo) {
      zs.push_back(z);
      ids.push_back(i);
    }
  }
  es.resize(zs.size());
  exp_array(zs.data(), es.data(), i64(zs.size()));
  c.clear();
  double mass = 0;
  for (std::size_t j = 0; j < zs.size(); ++j) {
    if (es[j] > 0) {
      c.push_back({ids[j], zs[j], es[j]});
      mass += double(es[j]);
    }
  }
  return mass;
}

// Total weight and a z cut for top-p: entries with z <= the cut carry (with everything above
// them) at least top_p of the mass, so top-p drops them. Returns the cut (-inf: none found).
template <class T> float top_p_cut(const T* x, i64 V, const LogitW& w, float top_p, double& total) {
  constexpr int kBins = 64;  // width 0.25 in z over (-16, 0]
  double hist[kBins] = {0};
  double sum = 0;
  i64 i = 0;
  const VF vm = vset(w.m), vt = vset(w.t), vlo = vset(-16.0f);
  while (i + kLanes <= V) {
    VF acc = vzero();
    const i64 stop = std::min(V - (kLanes - 1), i + kB);
    for (; i < stop; i += kLanes) {
      const VF z = div(sub(vload(x + i), vm), vt);
      const VF e = exp_sampling(z);
      acc = add(acc, e);
      const unsigned mk = mask_bits(gt(z, vlo));
      if (!mk) continue;
      float zb[kLanes], eb[kLanes];
      store(zb, z);
      store(eb, e);
      for_each_bit(mk, [&](int j) { hist[int(-zb[j] * 4.0f)] += double(eb[j]); });
    }
    sum += reduce_sum(acc);
  }
  for (; i < V; ++i) {
    const float z = w.z(load_as<float>(x + i));
    const float e = exp1(z);
    sum += double(e);
    if (z > -16.0f) hist[int(-z * 4.0f)] += double(e);
  }
  total = sum;
  const double lim = double(top_p) * sum * (1 + 1e-6) + 1e-300;
  double cum = 0;
  for (int b = 0; b < kBins; ++b) {
    cum += hist[b];
    if (cum >= lim) return -float(b + 1) * 0.25f;
  }
  return -kInf;
}

// ---------------------------------------------------------------- per-row driver

// parallel_for whose tasks leave the ISA's register state clean for the pool's other work (leave_isa()).
template <class F> void isa_parallel_for(int nt, i64 n, F&& f) {
  parallel_for(nt, n, [&](i64 i) {
    const LeaveIsa leave;
    f(i);
  });
}

// A temperature the fast paths handle: finite, > 0, and with a finite float reciprocal (the block
// sums scale by 1/T; a subnormal T below 2^-128 would make it inf, and 0 * inf = NaN at the max).
// Every other T > 0 (tiny or infinite) takes the generic path, which divides.
inline bool scalable(float t) { return t > 0 && std::isfinite(t) && std::isfinite(1.0f / t); }

struct Ctx {
  SampleArgs a;
};

template <class T> const T* row_ptr(const SampleArgs& a, i64 r) { return static_cast<const T*>(a.x) + r * a.stride; }

RowOut row_out(const SampleArgs& a, i64 r) {
  return RowOut{a.tokens + r * a.tokens_stride, a.logprobs ? a.logprobs + r * a.logprobs_stride : nullptr, a.num_samples};
}

// Whether a logits row takes the block-sum fast path (given its max and NaN flag).
// Row r draws with replacement at a finite temperature > 0 with no filter on (float storage)...
bool plain_params(const SampleArgs& a, i64 r) {
  if (a.dtype == kF64) return false;
  const float t = a.temperature[r];
  if (!scalable(t)) return false;
  if (a.top_k && a.top_k[r] > 0 && a.top_k[r] < a.cols) return false;
  if (a.top_p && !(a.top_p[r] >= 1)) return false;
  if (a.min_p && !(a.min_p[r] <= 0)) return false;
  return a.replacement;
}

// ... and its logits hold no NaN and have a finite max: block sums and an inverse-CDF draw suffice.
bool plain_fast(const SampleArgs& a, i64 r, float m, bool nan) { return !nan && std::isfinite(m) && plain_params(a, r); }

// The lowest index i with x[i] == m (m a value the row holds), or V.
template <class T, class Acc> i64 first_index_of(const T* x, i64 V, Acc m) {
  i64 i = 0;
  if constexpr (!std::is_same<T, double>::value) {
    const VF vm = vset(float(m));
    for (; i + kLanes <= V; i += kLanes) {
      const unsigned hit = mask_bits(eq(vload(x + i), vm));
      if (hit) return i + __builtin_ctz(hit);
    }
  }
  while (i < V && !(load_as<Acc>(x + i) == m)) ++i;
  return i;
}

// The plain case in one pass over the row (each block read from memory once for its max, then
// from L1 for its exponentials), in two steps. block_stats: for each block b in [b_lo, b_hi) its
// max bmax[b] and the sum of exp((x - bmax[b]) / t) over it (0 for a block without a finite max),
// and whether the blocks hold a NaN. Each block's numbers depend on that block alone, so a row split
// across threads at block boundaries gets bitwise what one thread gets (SPEC: bitwise invariance).
template <class T>
void block_stats(const T* x, i64 V, i64 b_lo, i64 b_hi, float t, double* bs, float* bmax, bool& nan) {
  nan = false;
  for (i64 b = b_lo; b < b_hi; ++b) {
    const i64 b0 = b * kB, n = std::min(kB, V - b0);
    float& bm = bmax[b];
    bool block_nan = false;
    row_max(x + b0, n, bm, block_nan);
    nan |= block_nan;
    if (bm > -kInf && bm < kInf) block_sums(x, b0, b0 + n, LogitW{bm, t}, bs + b);
    else bs[b] = 0;
  }
}

// rescale_block_sums: the row max m over the block maxima, and (when m is finite) every block sum
// rescaled to exp((x - m) / t), block by block. The sums are meaningful only when the row holds no
// NaN and m is finite (the caller checks with plain_fast). Returns m.
inline float rescale_block_sums(i64 nb, float t, const float* bmax, double* bs) {
  float m = -kInf;
  for (i64 b = 0; b < nb; ++b) m = std::max(m, bmax[b]);
  if (!std::isfinite(m)) return m;
  const double r = 1.0 / double(t);
  for (i64 b = 0; b < nb; ++b) bs[b] = bmax[b] == -kInf ? 0.0 : bs[b] * std::exp((double(bmax[b]) - double(m)) * r);
  return m;
}

template <class T> void max_and_block_sums(const T* x, i64 V, float t, double* bs, float* bmax, float& m, bool& nan) {
  const i64 nb = (V + kB - 1) / kB;
  block_stats(x, V, 0, nb, t, bs, bmax, nan);
  m = rescale_block_sums(nb, t, bmax, bs);
}

// Greedy without replacement: the n largest logits in decreasing order, lowest index first on
// ties. Candidates are the entries the shift rule keeps (a row holding +inf: its +inf entries;
// else every entry > -inf) and, with top_k on, those >= the k-th largest; draws past them get -1.
// Log-probability 0 for each (every pick is certain given the ones before it, as for one greedy
// draw). top_p and min_p do not restrict greedy rows: at T = 0 they act on a point mass.
template <class T, class Acc> void greedy_without_replacement(const T* x, i64 V, Acc m, i64 top_k, const RowOut& out) {
  const Acc inf = std::numeric_limits<Acc>::infinity();
  TopN<Acc> top(out.n);
  for (i64 i = 0; i < V; ++i) {
    const Acc v = load_as<Acc>(x + i);
    if (m == inf ? v == inf : v > -inf) top.push(v, i);
  }
  top.sorted();
  i64 kept = i64(top.h.size());
  if (top_k > 0 && top_k < kept) {  // the k-th largest is in the list: drop what lies below it
    const Acc kth = top.h[std::size_t(top_k - 1)].first;
    while (kept > top_k && top.h[std::size_t(kept - 1)].first < kth) --kept;
  }
  for (i64 k = 0; k < out.n; ++k) out.set(k, k < kept ? top.h[std::size_t(k)].second : -1, 0.0);
}

// One logits row; bs: its block sums when already computed (fast path), else null.
template <class T>
void logits_row(const SampleArgs& a, i64 r, float mf, bool nan, const double* bs) {
  using Acc = typename std::conditional<std::is_same<T, double>::value, double, float>::type;
  const T* x = row_ptr<T>(a, r);
  const i64 V = a.cols;
  const RowOut out = row_out(a, r);
  if (nan) return out.fill_bad();
  Acc m;
  if constexpr (std::is_same<Acc, double>::value) {
    m = -std::numeric_limits<double>::infinity();
    for (i64 i = 0; i < V; ++i) m = std::max(m, load_as<double>(x + i));
  } else {
    m = mf;
  }
  const float t = a.temperature[r];
  i64 top_k = a.top_k ? a.top_k[r] : 0;
  if (top_k >= V) top_k = 0;
  if (t == 0) {  // greedy: lowest index of the maximum
    if (m == -std::numeric_limits<Acc>::infinity()) return out.fill_bad();
    if (!a.replacement && out.n > 1) return greedy_without_replacement(x, V, m, top_k, out);
    const i64 idx = first_index_of(x, V, m);
    for (i64 k = 0; k < out.n; ++k) out.set(k, idx, 0.0);
    return;
  }
  if (t != t || t < 0 || m == -std::numeric_limits<Acc>::infinity()) return out.fill_bad();
  Rng rng(a.seed[r], a.row_id[r], a.offset[r]);
  Filters f;
  if (a.top_p && !(a.top_p[r] >= 1)) { f.top_p_on = true; f.top_p = a.top_p[r]; }
  if (a.min_p && !(a.min_p[r] <= 0)) { f.min_p_on = true; f.min_p = a.min_p[r]; }
  const bool generic = std::is_same<Acc, double>::value || !std::isfinite(m) || !scalable(t);
  if (generic) return generic_logits_row<Acc>(x, V, m, Acc(t), top_k, f, rng, a.replacement, out);
  if constexpr (std::is_same<Acc, float>::value) {
    const LogitW w{m, t};
    const bool filtered = top_k > 0 || f.top_p_on || f.min_p_on;
    if (!filtered) {
      const i64 nb = (V + kB - 1) / kB;
      thread_local ScratchVec<double> own;
      const ReleaseIfLarge release_own{own};
      if (!a.replacement) {
        double log_total = 0;
        if (a.logprobs) {
          own.resize(std::size_t(nb));
          block_sums(x, 0, V, w, own.data());
          double s = 0;
          for (double v : own) s += v;
          log_total = std::log(s);
        }
        return race_row(x, V, w, rng, out, log_total);
      }
      if (!bs) {
        own.resize(std::size_t(nb));
        block_sums(x, 0, V, w, own.data());
        bs = own.data();
      }
      return draw_from_blocks(x, V, w, bs, rng, out, &w);
    }
    thread_local ScratchVec<Cand<float>> c;
    const ReleaseIfLarge release_c{c};
    double mass;
    if (top_k > 0) {
      const float xk = kth_largest(x, V, top_k);
      mass = gather(x, V, w, w.z(xk), false, c);
    } else if (f.top_p_on) {
      double total = 0;
      const float cut = top_p_cut(x, V, w, f.top_p, total);
      gather(x, V, w, cut == -kInf ? kZCut : cut, cut != -kInf, c);
      mass = total;
    } else {  // min-p alone: e >= min_p needs z >= log(min_p) (slack for rounding)
      const float lo = std::log(f.min_p);
      const float zlo = lo - 1e-3f * (1.0f + std::fabs(lo));
      mass = gather(x, V, w, std::max(zlo, kZCut), false, c);
    }
    finish(c, mass, f, rng, a.replacement, out);
  }
}

template <class T> void probs_row(const SampleArgs& a, i64 r, const double* bs) {
  const T* x = row_ptr<T>(a, r);
  const i64 V = a.cols;
  const RowOut out = row_out(a, r);
  Rng rng(a.seed[r], a.row_id[r], a.offset[r]);
  if constexpr (std::is_same<T, double>::value) {
    return generic_probs_row<double>(x, V, rng, a.replacement, out);
  } else {
    const ProbW w;
    if (!a.replacement) return race_row(x, V, w, rng, out, 0.0);
    thread_local ScratchVec<double> own;
    const ReleaseIfLarge release_own{own};
    if (!bs) {
      own.resize(std::size_t((V + kB - 1) / kB));
      block_sums(x, 0, V, w, own.data());
      bs = own.data();
    }
    double total = 0;
    for (i64 b = 0; b < (V + kB - 1) / kB; ++b) total += bs[b];
    // float32 block sums of huge finite weights can overflow: redo the row in float64
    if (std::isinf(total)) return generic_probs_row<double>(x, V, rng, a.replacement, out);
    draw_from_blocks(x, V, w, bs, rng, out, static_cast<const LogitW*>(nullptr));
  }
}

template <class T> void run(const SampleArgs& a) {
  const i64 rows = a.rows, V = a.cols;
  const int nt = std::max(1, a.num_threads);
  // Split long rows across threads when there are fewer rows than threads (float types, with
  // replacement: the block-sum path).
  i64 chunks = 1;
  if (!std::is_same<T, double>::value && a.replacement && rows < nt && V >= 32768) {
    chunks = std::min<i64>((2 * nt + rows - 1) / rows, V / 16384);
  }
  if (chunks <= 1) {
    isa_parallel_for(nt, rows, [&](i64 r) {
      if (a.probs) return probs_row<T>(a, r, nullptr);
      float m = 0;
      bool nan = false;
      if constexpr (!std::is_same<T, double>::value) {
        if (plain_params(a, r)) {  // the fast path in one pass, if the row's values allow it
          thread_local ScratchVec<double> sums;
          const ReleaseIfLarge release_sums{sums};
          thread_local ScratchVec<float> bmax;
          const ReleaseIfLarge release_bmax{bmax};
          sums.resize(std::size_t((V + kB - 1) / kB));
          bmax.resize(sums.size());
          max_and_block_sums(row_ptr<T>(a, r), V, a.temperature[r], sums.data(), bmax.data(), m, nan);
          return logits_row<T>(a, r, m, nan, plain_fast(a, r, m, nan) ? sums.data() : nullptr);
        }
      }
      if (!std::is_same<T, double>::value) row_max(row_ptr<T>(a, r), V, m, nan);
      else {
        for (i64 i = 0; i < V; ++i) if (std::isnan(load_as<double>(row_ptr<T>(a, r) + i))) { nan = true; break; }
      }
      logits_row<T>(a, r, m, nan, nullptr);
    });
    return;
  }
  // Chunks are whole blocks, and each block's max and sum are computed as on one thread
  // (block_stats), then combined in block order: tokens do not depend on the split.
  const i64 nb = (V + kB - 1) / kB;
  const i64 blocks_per_chunk = (nb + chunks - 1) / chunks;
  chunks = (nb + blocks_per_chunk - 1) / blocks_per_chunk;
  const i64 csize = blocks_per_chunk * kB;
  std::vector<float> cmax(std::size_t(rows * chunks), -kInf);
  std::vector<char> cnan(std::size_t(rows * chunks), 0);
  std::vector<double> bs(std::size_t(rows * nb), 0.0);
  std::vector<float> bmax(std::size_t(rows * nb), -kInf);
  std::vector<char> plain(std::size_t(rows), 0);
  for (i64 r = 0; r < rows; ++r) plain[std::size_t(r)] = !a.probs && plain_params(a, r);
  isa_parallel_for(nt, rows * chunks, [&](i64 t) {
    const i64 r = t / chunks, c0 = (t % chunks) * csize, c1 = std::min(V, c0 + csize);
    bool nan = false;
    if (a.probs) {
      block_sums(row_ptr<T>(a, r), c0, c1, ProbW{}, bs.data() + r * nb + c0 / kB);
    } else if (plain[std::size_t(r)]) {
      block_stats(row_ptr<T>(a, r), V, c0 / kB, (c1 + kB - 1) / kB, a.temperature[r], bs.data() + r * nb,
                  bmax.data() + r * nb, nan);
    } else {
      row_max(row_ptr<T>(a, r) + c0, c1 - c0, cmax[std::size_t(t)], nan);
    }
    cnan[std::size_t(t)] = nan;
  });
  std::vector<float> m(std::size_t(rows), -kInf);
  std::vector<char> nan(std::size_t(rows), 0), fast(std::size_t(rows), 0);
  for (i64 r = 0; r < rows; ++r) {
    for (i64 c = 0; c < chunks; ++c) {
      m[std::size_t(r)] = std::max(m[std::size_t(r)], cmax[std::size_t(r * chunks + c)]);
      nan[std::size_t(r)] |= cnan[std::size_t(r * chunks + c)];
    }
    if (plain[std::size_t(r)]) m[std::size_t(r)] = rescale_block_sums(nb, a.temperature[r], bmax.data() + r * nb, bs.data() + r * nb);
    fast[std::size_t(r)] = a.probs ? 1 : plain_fast(a, r, m[std::size_t(r)], nan[std::size_t(r)]);
  }
  isa_parallel_for(nt, rows, [&](i64 r) {
    const double* b = fast[std::size_t(r)] ? bs.data() + r * nb : nullptr;
    if (a.probs) probs_row<T>(a, r, b);
    else logits_row<T>(a, r, m[std::size_t(r)], nan[std::size_t(r)], b);
  });
}

// One sample_rows / sample_probs call (arguments validated by the bindings).
void sample_kernel(const SampleArgs& a) {
  const LeaveIsa leave;
  if (a.rows == 0 || a.num_samples == 0) return;
  if (a.cols == 0) {
    for (i64 r = 0; r < a.rows; ++r) row_out(a, r).fill_bad();
    return;
  }
  with_dtype(a.dtype, [&](auto* tag) { run<std::remove_pointer_t<decltype(tag)>>(a); });
}

}  // namespace
}  // namespace SSM_ISA
}  // namespace ssm

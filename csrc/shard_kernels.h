// Shard passes of vocabulary-parallel sampling (CPU), written once against the vector layer and
// instantiated per ISA by isa_kernels.h (after sampling_kernels.h, whose helpers they use). The rules are
// those of stablesoftmax/backends/torch_shard.py: on a row, z_i = -inf if s_i = -inf else s_i / t (s from
// the softmax shift rule), e_i = exp(z_i), kept iff e_i > 0, z_i >= cut and e_i >= min_p, weight w_i = e_i
// where kept. The policy layer (stablesoftmax/distributed.py) combines the per-shard numbers across ranks.
// Rows are independent and each is done by one thread, in a fixed order: results do not depend on the
// thread count.

namespace ssm {
namespace SSM_ISA {
namespace {

// One row's parameters and its z / weight transforms.
struct ShardRow {
  float m, t, cut, min_p;
  bool inf_row;  // the row maximum is +inf: s = 0 on +inf entries, -inf elsewhere
  ShardRow(const ShardArgs& a, i64 r)
      : m(std::isfinite(a.m[r]) ? a.m[r] : 0.0f), t(a.t[r]), cut(a.cut ? a.cut[r] : -kInf),
        min_p(a.min_p ? a.min_p[r] : 0.0f), inf_row(a.m[r] == kInf) {}
  VF z(VF v) const {
    const VF ninf = vset(-kInf);
    const VF s = inf_row ? select(eq(v, vset(kInf)), vzero(), ninf) : sub(v, vset(m));
    return select(eq(s, ninf), ninf, div(s, vset(t)));
  }
  float z(float v) const {
    const float s = inf_row ? (v == kInf ? 0.0f : -kInf) : v - m;
    return s == -kInf ? -kInf : s / t;
  }
  // kept weights of the lanes (0 where dropped)
  VF w(VF z) const {
    const VF e = exp_sampling(z);
    return keep(m_and(m_and(gt(e, vzero()), ge(z, vset(cut))), ge(e, vset(min_p))), e);
  }
};

template <class T> const T* shard_row(const ShardArgs& a, i64 r) { return static_cast<const T*>(a.x) + r * a.stride; }

// The kept weights of entries [b0, b0 + n) into out (n <= kB).
template <class T> void shard_weights(const T* x, i64 b0, i64 n, const ShardRow& p, float* out) {
  i64 i = 0;
  for (; i + kLanes <= n; i += kLanes) store(out + i, p.w(p.z(vload(x + b0 + i))));
  if (i < n) store_tail(out + i, int(n - i), p.w(p.z(vload_tail(x + b0 + i, int(n - i), -kInf))));
}

// The kept mass of each kB block of the row (float lanes, added in double by reduce_sum).
template <class T> void shard_block_sums(const T* x, i64 V, const ShardRow& p, double* bs) {
  for (i64 b0 = 0; b0 < V; b0 += kB) {
    const i64 b1 = std::min(b0 + kB, V);
    VF acc = vzero();
    for (i64 i = b0; i < b1; i += kLanes) acc = add(acc, p.w(p.z(load_upto(x + i, b1 - i, -kInf))));
    bs[b0 / kB] = reduce_sum(acc);
  }
}

template <class F> void shard_rows(const ShardArgs& a, F&& f) {
  const LeaveIsa leave;
  if (a.rows == 0) return;
  ThreadPool::follow(a.num_threads);
  isa_parallel_for(int(std::min<i64>(a.num_threads, a.rows)), a.rows, f);
}

void shard_mass_kernel(const ShardArgs& a, double* mass) {
  with_dtype(a.dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    const i64 nb = (a.cols + kB - 1) / kB;
    shard_rows(a, [&](i64 r) {
      thread_local ScratchVec<double> bs;
      const ReleaseIfLarge release_bs{bs};
      bs.resize(std::size_t(nb));
      shard_block_sums(shard_row<T>(a, r), a.cols, ShardRow(a, r), bs.data());
      double total = 0;
      for (double b : bs) total += b;
      mass[r] = total;
    });
  });
}

void shard_search_kernel(const ShardArgs& a, const double* before, const double* targets, i64 n, i64* idx, i64* last) {
  with_dtype(a.dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    const i64 V = a.cols, nb = (V + kB - 1) / kB;
    shard_rows(a, [&](i64 r) {
      const T* x = shard_row<T>(a, r);
      const ShardRow p(a, r);
      thread_local ScratchVec<double> prefix;
      const ReleaseIfLarge release_prefix{prefix};
      prefix.resize(std::size_t(nb + 1));
      shard_block_sums(x, V, p, prefix.data() + 1);
      prefix[0] = before[r];
      for (i64 b = 0; b < nb; ++b) prefix[std::size_t(b + 1)] += prefix[std::size_t(b)];
      alignas(64) float buf[kB];
      auto last_in = [&](i64 b) {  // the last local column with weight in block b, or -1
        const i64 b0 = b * kB, len = std::min(kB, V - b0);
        shard_weights(x, b0, len, p, buf);
        for (i64 i = len - 1; i >= 0; --i)
          if (buf[i] > 0) return b0 + i;
        return i64(-1);
      };
      last[r] = -1;
      for (i64 b = nb - 1; b >= 0 && last[r] < 0; --b)
        if (prefix[std::size_t(b + 1)] > prefix[std::size_t(b)]) last[r] = last_in(b);
      for (i64 k = 0; k < n; ++k) {
        const double target = targets[r * n + k];
        const i64 b = i64(std::upper_bound(prefix.begin() + 1, prefix.end(), target) - (prefix.begin() + 1));
        i64 pick = V;
        if (b < nb) {
          const i64 b0 = b * kB, len = std::min(kB, V - b0);
          shard_weights(x, b0, len, p, buf);
          double c = prefix[std::size_t(b)];
          i64 last_pos = -1;
          for (i64 i = 0; i < len; ++i) {
            if (!(buf[i] > 0)) continue;
            last_pos = b0 + i;
            c += double(buf[i]);
            if (c > target) { pick = b0 + i; break; }
          }
          if (pick == V && last_pos >= 0) pick = last_pos;  // the block's float sum rounded past its entries
        }
        idx[r * n + k] = pick;
      }
    });
  });
}

// The unsigned order key of a float32 z (-0 folded onto +0), as torch_shard.order_key.
inline std::int64_t order_key32(float z) {
  z += 0.0f;
  std::int32_t b;
  std::memcpy(&b, &z, 4);
  const std::int64_t s = b < 0 ? std::int64_t(b ^ 0x7FFFFFFF) : std::int64_t(b);
  return s + (std::int64_t(1) << 31);
}

// Lanes whose order key (order_key32) has key >> (shift + 8) == want, for shift 0, 8 or 16 (want < 2^24).
template <int kShift> inline VM prefix_matches_at(VI key, std::int32_t want) {
  // the high part and want are below 2^24, so their XOR is 0 exactly when its float conversion is
  return eq(cvt_float(ixor(isrl<kShift + 8>(key), iset(want))), vzero());
}
inline VM prefix_matches(VF z, int shift, i64 want) {
  const VI b = as_int(add(z, vzero()));                              // -0 folded onto +0
  const VI s = ixor(b, isrl<1>(isra<31>(b)));                        // negative: all bits but the sign flipped
  const VI key = ixor(s, iset(std::int32_t(0x80000000u)));           // + 2^31 (mod 2^32): the unsigned key
  const std::int32_t w = std::int32_t(want);
  return shift == 16 ? prefix_matches_at<16>(key, w) : shift == 8 ? prefix_matches_at<8>(key, w) : prefix_matches_at<0>(key, w);
}

void shard_histogram_kernel(const ShardArgs& a, bool counts, const i64* prefix, int shift, double* hist) {
  with_dtype(a.dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    const i64 V = a.cols;
    const bool whole = shift + 8 >= 32;  // the first round: every entry with weight is live
    shard_rows(a, [&](i64 r) {
      const T* x = shard_row<T>(a, r);
      const ShardRow p(a, r);
      double part[4][256] = {};
      const i64 want = prefix[r];
      float zb[kLanes], wb[kLanes];
      for (i64 i = 0; i < V; i += kLanes) {
        const i64 len = std::min<i64>(kLanes, V - i);
        const VF z = p.z(load_upto(x + i, len, -kInf));
        const VF w = counts ? keep(m_and(gt(z, vset(-kInf)), ge(z, vset(p.cut))), vset(1.0f)) : p.w(z);
        unsigned live = mask_bits(gt(w, vzero())) & ((len == kLanes ? 0u : (1u << len)) - 1u);
        if (live && !whole) live &= mask_bits(prefix_matches(z, shift, want));
        if (!live) continue;
        store(zb, z);
        store(wb, w);
        // four partial histograms (lane j into part j % 4) so that runs of one bin do not chain their adds
        for_each_bit(live, [&](int j) { part[j & 3][(order_key32(zb[j]) >> shift) & 0xFF] += double(wb[j]); });
      }
      double* h = hist + r * 256;
      for (int b = 0; b < 256; ++b) h[b] = (part[0][b] + part[1][b]) + (part[2][b] + part[3][b]);
    });
  });
}

void shard_top_values_kernel(const ShardArgs& a, i64 k, float* top) {
  with_dtype(a.dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    const i64 V = a.cols;
    shard_rows(a, [&](i64 r) {
      const T* x = shard_row<T>(a, r);
      const ShardRow p(a, r);
      // z is non-decreasing in x, so the k largest z are the z of the k largest x (NaN taken as -inf)
      thread_local ScratchVec<float> h;
      const ReleaseIfLarge release_h{h};
      h.clear();
      for (i64 i = 0; i < V; ++i) {
        float v = load_as<float>(x + i);
        if (v != v) v = -kInf;
        if (i64(h.size()) < k) {
          h.push_back(v);
          std::push_heap(h.begin(), h.end(), std::greater<float>());
        } else if (v > h.front()) {
          std::pop_heap(h.begin(), h.end(), std::greater<float>());
          h.back() = v;
          std::push_heap(h.begin(), h.end(), std::greater<float>());
        }
      }
      std::sort(h.begin(), h.end(), std::greater<float>());
      for (i64 j = 0; j < k; ++j) top[r * k + j] = j < i64(h.size()) ? p.z(h[std::size_t(j)]) : -kInf;
    });
  });
}

void shard_race_kernel(const ShardArgs& a, const i64* seed, const i64* row_id, const i64* offset, i64 col0, i64 n,
                       float* keys, i64* ids, i64* count) {
  with_dtype(a.dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    const i64 V = a.cols;
    shard_rows(a, [&](i64 r) {
      const T* x = shard_row<T>(a, r);
      const ShardRow p(a, r);
      Rng rng(seed[r], row_id[r], offset[r]);
      TopN<float> heap(n);
      // Once the heap is full, an entry needs key = z - log E > thr; as E >= 1 - u, one with
      // 1 - u >= e * exp(-thr) (with a margin far above the float rounding of the key) cannot enter,
      // and its logarithms are never computed; nor can one with z + kRaceSlack < thr.
      constexpr double kMargin = 1.0 + 1e-4;
      i64 kept = 0;
      float zb[kLanes], wb[kLanes];
      for (i64 i = 0; i < V; i += kLanes) {
        const i64 len = std::min<i64>(kLanes, V - i);
        const VF z = p.z(load_upto(x + i, len, -kInf));
        const VF w = p.w(z);
        unsigned live = mask_bits(gt(w, vzero())) & ((len == kLanes ? 0u : (1u << len)) - 1u);
        kept += __builtin_popcount(live);
        if (heap.full()) live &= mask_bits(ge(add(z, vset(kRaceSlack)), vset(heap.threshold())));
        if (!live) continue;
        store(zb, z);
        store(wb, w);
        for_each_bit(live, [&](int j) {
          const i64 g = col0 + i + j;
          if (heap.full() && rng.one_minus_u(g) >= double(wb[j]) * std::exp(-double(heap.threshold())) * kMargin) return;
          heap.push(zb[j] - rng.log_exponential(g), g);
        });
      }
      heap.sorted();
      for (i64 k = 0; k < n; ++k) {
        const bool have = k < i64(heap.h.size());
        keys[r * n + k] = have ? heap.h[std::size_t(k)].first : -kInf;
        ids[r * n + k] = have ? heap.h[std::size_t(k)].second : -1;
      }
      count[r] = kept;
    });
  });
}

}  // namespace

}  // namespace SSM_ISA
}  // namespace ssm

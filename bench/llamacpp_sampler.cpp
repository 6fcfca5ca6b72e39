// Benchmark driver: times llama.cpp's sampler chains (llama.h's sampler API, no model) on one row of logits.
//
// Built and run by bench/bench_llamacpp.py against a llama.cpp build outside this repository; nothing of
// llama.cpp is part of stablesoftmax. The row is a raw little-endian float32 file written by the Python
// side, so both sides sample the same logits.
//
//   llamacpp_sampler --logits FILE [--iters N] [--warmup N] [--seed S]
//
// For each chain it prints CSV rows (case, impl, variant, threads, iters, median_us, p20_us, p80_us, token):
//   variant "chain+fill": refill the candidate array from the logits (as llama_sampler_sample does on every
//                         decoding step: {id, logit, 0} for each token), then llama_sampler_apply + selection;
//   variant "chain":      llama_sampler_apply + selection only (the refill happens outside the timed span).
// Each iteration is timed on its own with steady_clock; the figures are the median and the 20th / 80th
// percentiles over the timed iterations, after the warm-up iterations.
//
// Chains (what llama.cpp's common sampler builds for these settings, penalties/min-p/etc. left out):
//   top_k40_top_p0.95_T0.8: top_k(40) -> top_p(0.95, 1) -> temp(0.8) -> dist(seed)
//   temperature0.8:         temp(0.8) -> dist(seed)
//   greedy:                 greedy
// llama.cpp applies temperature after the top-k/top-p filters; stablesoftmax's SPEC applies it before
// them, so the first chain keeps a slightly different set of tokens: this is a speed comparison only.
// llama.cpp's samplers are single-threaded (threads = 1).

#include "llama.h"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

struct Stats {
    double median_us, p20_us, p80_us;
};

double quantile(std::vector<double> v, double q) {
    std::sort(v.begin(), v.end());
    const double pos = q * static_cast<double>(v.size() - 1);
    const size_t lo = static_cast<size_t>(pos);
    const size_t hi = std::min(lo + 1, v.size() - 1);
    const double frac = pos - static_cast<double>(lo);
    return v[lo] * (1.0 - frac) + v[hi] * frac;
}

Stats stats(const std::vector<double> & us) {
    return {quantile(us, 0.5), quantile(us, 0.2), quantile(us, 0.8)};
}

void fill(std::vector<llama_token_data> & cur, const std::vector<float> & logits) {
    const int n = static_cast<int>(logits.size());
    for (llama_token id = 0; id < n; id++) {
        cur[id] = llama_token_data{id, logits[id], 0.0f};
    }
}

llama_sampler * make_chain(const std::string & name, uint32_t seed) {
    llama_sampler * chain = llama_sampler_chain_init(llama_sampler_chain_default_params());
    if (name == "top_k40_top_p0.95_T0.8") {
        llama_sampler_chain_add(chain, llama_sampler_init_top_k(40));
        llama_sampler_chain_add(chain, llama_sampler_init_top_p(0.95f, 1));
        llama_sampler_chain_add(chain, llama_sampler_init_temp(0.8f));
        llama_sampler_chain_add(chain, llama_sampler_init_dist(seed));
    } else if (name == "temperature0.8") {
        llama_sampler_chain_add(chain, llama_sampler_init_temp(0.8f));
        llama_sampler_chain_add(chain, llama_sampler_init_dist(seed));
    } else if (name == "greedy") {
        llama_sampler_chain_add(chain, llama_sampler_init_greedy());
    } else {
        llama_sampler_free(chain);
        return nullptr;
    }
    return chain;
}

// Times `iters` decoding steps of one chain; returns (chain+fill, chain) statistics and the last token.
void run_case(const std::string & name, const std::vector<float> & logits, int iters, int warmup, uint32_t seed) {
    llama_sampler * chain = make_chain(name, seed);
    if (chain == nullptr) {
        std::fprintf(stderr, "unknown case %s\n", name.c_str());
        std::exit(2);
    }
    std::vector<llama_token_data> cur(logits.size());
    std::vector<double> with_fill, apply_only;
    with_fill.reserve(iters);
    apply_only.reserve(iters);
    llama_token token = -1;
    uint64_t checksum = 0;
    using clock = std::chrono::steady_clock;
    for (int it = 0; it < warmup + iters; it++) {
        const auto t0 = clock::now();
        fill(cur, logits);
        const auto t1 = clock::now();
        llama_token_data_array cur_p = {cur.data(), cur.size(), -1, false};
        llama_sampler_apply(chain, &cur_p);
        if (cur_p.selected < 0 || cur_p.selected >= static_cast<int64_t>(cur_p.size)) {
            std::fprintf(stderr, "%s: no token selected\n", name.c_str());
            std::exit(3);
        }
        token = cur_p.data[cur_p.selected].id;
        const auto t2 = clock::now();
        llama_sampler_accept(chain, token);
        checksum += static_cast<uint64_t>(token);
        if (it >= warmup) {
            with_fill.push_back(std::chrono::duration<double, std::micro>(t2 - t0).count());
            apply_only.push_back(std::chrono::duration<double, std::micro>(t2 - t1).count());
        }
    }
    llama_sampler_free(chain);
    const Stats a = stats(with_fill), b = stats(apply_only);
    std::printf("%s,llama.cpp,chain+fill,1,%d,%.3f,%.3f,%.3f,%d\n", name.c_str(), iters, a.median_us, a.p20_us,
                a.p80_us, token);
    std::printf("%s,llama.cpp,chain,1,%d,%.3f,%.3f,%.3f,%d\n", name.c_str(), iters, b.median_us, b.p20_us, b.p80_us,
                token);
    std::fprintf(stderr, "%s: token checksum %llu\n", name.c_str(), static_cast<unsigned long long>(checksum));
}

}  // namespace

int main(int argc, char ** argv) {
    std::string path;
    int iters = 2000, warmup = 100;
    uint32_t seed = 1234;
    std::vector<std::string> cases = {"top_k40_top_p0.95_T0.8", "temperature0.8", "greedy"};
    for (int i = 1; i < argc; i++) {
        const std::string arg = argv[i];
        const bool has_value = i + 1 < argc;
        if (arg == "--logits" && has_value) {
            path = argv[++i];
        } else if (arg == "--iters" && has_value) {
            iters = std::atoi(argv[++i]);
        } else if (arg == "--warmup" && has_value) {
            warmup = std::atoi(argv[++i]);
        } else if (arg == "--seed" && has_value) {
            seed = static_cast<uint32_t>(std::strtoul(argv[++i], nullptr, 10));
        } else if (arg == "--case" && has_value) {
            cases = {argv[++i]};
        } else {
            std::fprintf(stderr, "usage: %s --logits FILE [--iters N] [--warmup N] [--seed S] [--case NAME]\n",
                         argv[0]);
            return 2;
        }
    }
    if (path.empty() || iters < 1 || warmup < 0) {
        std::fprintf(stderr, "need --logits FILE and --iters >= 1\n");
        return 2;
    }
    FILE * f = std::fopen(path.c_str(), "rb");
    if (f == nullptr) {
        std::fprintf(stderr, "cannot open %s\n", path.c_str());
        return 2;
    }
    std::fseek(f, 0, SEEK_END);
    const long bytes = std::ftell(f);
    std::fseek(f, 0, SEEK_SET);
    if (bytes <= 0 || bytes % static_cast<long>(sizeof(float)) != 0) {
        std::fprintf(stderr, "%s: not a float32 row (%ld bytes)\n", path.c_str(), bytes);
        return 2;
    }
    std::vector<float> logits(static_cast<size_t>(bytes) / sizeof(float));
    if (std::fread(logits.data(), sizeof(float), logits.size(), f) != logits.size()) {
        std::fprintf(stderr, "%s: short read\n", path.c_str());
        return 2;
    }
    std::fclose(f);

    std::printf("# llama.cpp sampler chains on one row of %zu float32 logits; llama.cpp applies temperature after "
                "top-k/top-p, stablesoftmax before them (a speed comparison, not the same distribution)\n",
                logits.size());
    std::printf("case,impl,variant,threads,iters,median_us,p20_us,p80_us,token\n");
    for (const auto & name : cases) {
        run_case(name, logits, iters, warmup, seed);
    }
    return 0;
}

"""Sampling on every backend: distributions (chi-square), filters, non-finite rows, randomness, errors."""

from __future__ import annotations

import math

import pytest
import torch
from _stats import assert_fits, filtered_distribution
from conftest import DEVICE, ENGINES, INTERPRETED, isa_axis, on_engine

import stablesoftmax as ss

INF, NAN = math.inf, math.nan
DRAWS = 40_000


def _logits(rows, cols, gen, scale=2.0, dtype=torch.float32):
    return (torch.randn(rows, cols, generator=gen, dtype=torch.float64) * scale).to(dtype).to(DEVICE)


def _counts(tokens: torch.Tensor, cols: int) -> torch.Tensor:
    return torch.bincount(tokens.flatten().cpu(), minlength=cols)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize(
    "params",
    [
        {},
        {"temperature": 0.5},
        {"temperature": 3.0},
        {"top_k": 5},
        {"top_p": 0.6},
        {"min_p": 0.2},
        {"temperature": 0.7, "top_k": 12, "top_p": 0.9, "min_p": 0.05},
    ],
    ids=lambda p: ",".join(f"{k}={v}" for k, v in p.items()) or "plain",
)
@isa_axis
def test_distribution_after_temperature_and_filters(backend, params, dtype, gen):
    x = _logits(3, 40, gen, dtype=dtype)
    tokens = ss.sample_from_logits(x, DRAWS, seed=7, **params)
    assert tokens.shape == (3, DRAWS) and tokens.dtype == torch.int64
    for r in range(3):
        assert_fits(_counts(tokens[r], 40), filtered_distribution(x[r].cpu(), **params))


@isa_axis
def test_without_replacement_follows_sequential_draws(backend, gen):
    """Pairs drawn without replacement follow 'draw one, remove it, draw again'."""
    x = _logits(1, 6, gen, scale=1.0)
    p = filtered_distribution(x[0].cpu())
    trials = 6_000
    seeds = torch.arange(trials, dtype=torch.int64, device=DEVICE)
    pairs = ss.sample_from_logits(x.expand(trials, 6), 2, replacement=False, seed=seeds)
    assert (pairs[:, 0] != pairs[:, 1]).all()
    counts = _counts(pairs[:, 0] * 6 + pairs[:, 1], 36)
    expected = torch.zeros(36, dtype=torch.float64)
    for i in range(6):
        for j in range(6):
            if i != j:
                expected[i * 6 + j] = p[i] * p[j] / (1 - p[i])
    assert_fits(counts, expected)
    whole = ss.sample_from_logits(x, 6, replacement=False, seed=3)
    assert sorted(whole[0].tolist()) == list(range(6))


@isa_axis
def test_masked_and_filtered_entries_never_sampled(backend, gen):
    """Over 10**6 draws: -inf logits and entries removed by the filters never come back."""
    cols = 64
    x = _logits(4, cols, gen)
    x[0, ::2] = -INF
    x[1, :60] = -INF
    total = 0
    n = 250_000 if not INTERPRETED or backend != "triton" else 50_000
    seen = torch.zeros(4, cols, dtype=torch.int64)
    for seed in range(1_000_000 // (4 * n)):
        top_k, min_p = torch.tensor([0, 0, 10, 0]), torch.tensor([0, 0, 0, 0.3])
        tokens = ss.sample_from_logits(x, n, seed=seed, top_k=top_k, min_p=min_p)
        for r in range(4):
            seen[r] += _counts(tokens[r], cols)
        total += tokens.numel()
    assert total >= 1_000_000 * (n / 250_000)
    for r, params in enumerate([{}, {}, {"top_k": 10}, {"min_p": 0.3}]):
        allowed = filtered_distribution(x[r].cpu(), **params) > 0
        assert seen[r][~allowed].sum() == 0, f"row {r} sampled excluded entries"
        assert (seen[r][allowed] > 0).any()


@isa_axis
def test_infinite_logits_share_the_row(backend, gen):
    x = _logits(2, 30, gen, dtype=torch.float16)
    x[0, [3, 17, 29]] = INF
    x[1, :] = -INF
    x[1, [0, 9]] = INF
    tokens = ss.sample_from_logits(x, 30_000, seed=11, temperature=0.3, top_p=0.5)
    for r in range(2):
        assert_fits(_counts(tokens[r], 30), filtered_distribution(x[r].cpu()))


@isa_axis
def test_greedy_and_top_k_one_are_argmax(backend, gen):
    x = _logits(5, 300, gen, dtype=torch.bfloat16)
    expected = x.float().argmax(dim=1, keepdim=True)
    assert (ss.sample_from_logits(x, 3, top_k=1, seed=0) == expected).all()
    x[2, 10] = x[2, 200] = x[2].max() + 1  # a tie: greedy takes the lowest index (top_k=1 keeps both)
    expected[2] = 10
    assert (ss.sample_from_logits(x, 3, temperature=0.0, seed=0) == expected).all()
    assert set(ss.sample_from_logits(x[2], 200, top_k=1, seed=0).tolist()) == {10, 200}


@isa_axis
def test_per_row_parameters_act_per_row(backend, gen):
    x = _logits(4, 25, gen)
    params = [
        {"temperature": 0.5, "top_k": 0, "top_p": 1.0, "min_p": 0.0},
        {"temperature": 2.0, "top_k": 3, "top_p": 1.0, "min_p": 0.0},
        {"temperature": 1.0, "top_k": 0, "top_p": 0.3, "min_p": 0.0},
        {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.5},
    ]
    as_tensor = {k: torch.tensor([p[k] for p in params]) for k in params[0]}
    tokens = ss.sample_from_logits(x, DRAWS, seed=5, **as_tensor)
    for r, p in enumerate(params):
        assert_fits(_counts(tokens[r], 25), filtered_distribution(x[r].cpu(), **p))
    greedy = ss.sample_from_logits(x, 4, temperature=torch.tensor([0.0, 1.0, 0.0, 1.0]), seed=1)
    assert (greedy[0] == x[0].argmax()).all() and (greedy[2] == x[2].argmax()).all()


def test_batch_invariance_with_per_row_seeds(backend, gen):
    x = _logits(6, 500, gen, dtype=torch.float16)
    seeds = torch.tensor([101, 202, 303, 404, 505, 606])
    steps = torch.tensor([0, 1, 2, 3, 4, 5])
    batch = ss.sample_from_logits(x, 4, seed=seeds, offset=steps, top_p=0.95)
    for r in range(6):
        alone = ss.sample_from_logits(x[r : r + 1], 4, seed=seeds[r : r + 1], offset=steps[r : r + 1], top_p=0.95)
        assert torch.equal(alone[0], batch[r])
    perm = torch.tensor([5, 3, 1, 0, 2, 4])
    shuffled = ss.sample_from_logits(x[perm], 4, seed=seeds[perm], offset=steps[perm], top_p=0.95)
    assert torch.equal(shuffled, batch[perm])
    bigger = ss.sample_from_logits(
        torch.cat([x, x]), 4, seed=torch.cat([seeds, seeds + 1]), offset=torch.cat([steps, steps]), top_p=0.95
    )
    assert torch.equal(bigger[:6], batch)


def test_reproducible_from_seed_and_generator(backend, gen):
    x = _logits(3, 1000, gen)
    a = ss.sample_from_logits(x, 8, seed=1234, offset=7)
    assert torch.equal(a, ss.sample_from_logits(x, 8, seed=1234, offset=7))
    assert not torch.equal(a, ss.sample_from_logits(x, 8, seed=1234, offset=8))
    torch.manual_seed(99)
    b = ss.sample_from_logits(x, 8)
    torch.manual_seed(99)
    assert torch.equal(b, ss.sample_from_logits(x, 8))
    g1, g2 = torch.Generator(device=DEVICE).manual_seed(5), torch.Generator(device=DEVICE).manual_seed(5)
    assert torch.equal(ss.sample_from_logits(x, 8, generator=g1), ss.sample_from_logits(x, 8, generator=g2))
    assert torch.equal(ss.multinomial(x.softmax(-1), 4, generator=g1), ss.multinomial(x.softmax(-1), 4, generator=g2))
    cpu_gen = torch.Generator().manual_seed(5)  # a generator on another device is handled
    assert ss.sample_from_logits(x, 2, generator=cpu_gen).device == x.device


@isa_axis
def test_logprobs_are_those_of_the_filtered_distribution(backend, gen):
    x = _logits(2, 50, gen, dtype=torch.float16)
    tokens, logprobs = ss.sample_from_logits(x, 16, seed=3, temperature=0.8, top_k=20, return_logprobs=True)
    assert logprobs.dtype == torch.float32
    for r in range(2):
        p = filtered_distribution(x[r].cpu(), temperature=0.8, top_k=20)
        expected = p[tokens[r].cpu()].log()
        assert torch.allclose(logprobs[r].double().cpu(), expected, atol=1e-5, rtol=1e-5)
    _, greedy_logprobs = ss.sample_from_logits(x, 2, temperature=0, return_logprobs=True)
    assert (greedy_logprobs == 0).all()


def test_bad_rows_raise_naming_rows_counts_cause_and_fix(backend, gen):
    x = _logits(8, 100, gen, dtype=torch.float16)
    x[3, 7] = NAN
    x[3, 8] = INF
    nan_message = r"rows? 3\).*row 3: 1 NaN, 1 \+inf, 0 -inf.*float16 overflow.*bfloat16"
    with pytest.raises(ss.StableSoftmaxError, match=nan_message):
        ss.sample_from_logits(x)
    x[3] = 1.0
    x[5] = -INF
    masked_message = r"every logit -inf \(rows? 5\).*row 5: 0 NaN, 0 \+inf, 100 -inf.*loosen"
    with pytest.raises(ss.StableSoftmaxError, match=masked_message):
        ss.sample_from_logits(x)
    x[5] = 1.0
    x[6, :98] = -INF
    fewer = r"fewer candidates than num_samples=3 without replacement.*rows? 6"
    with pytest.raises(ss.StableSoftmaxError, match=fewer):
        ss.sample_from_logits(x, 3, replacement=False)
    with pytest.raises(ss.StableSoftmaxError, match="after the filters"):
        ss.sample_from_logits(x[:2], 3, replacement=False, top_k=2)


@isa_axis
def test_validate_false_returns_minus_one_without_raising(backend, gen):
    x = _logits(4, 100, gen, dtype=torch.float16)
    x[1, 5] = NAN
    x[2] = -INF
    tokens, logprobs = ss.sample_from_logits(x, 2, validate=False, seed=0, return_logprobs=True)
    assert (tokens[1] == -1).all() and (tokens[2] == -1).all()
    assert (tokens[[0, 3]] >= 0).all() and torch.isnan(logprobs[1]).all()
    bad_t = ss.sample_from_logits(x, 1, validate=False, seed=0, temperature=torch.tensor([1.0, 1.0, 1.0, -1.0]))
    assert bad_t[3, 0] == -1


def test_parameter_errors(backend):
    x = torch.randn(2, 10, device=DEVICE)
    for kwargs, pattern in [
        ({"temperature": -1.0}, "temperature"),
        ({"temperature": NAN}, "temperature"),
        ({"temperature": torch.tensor([1.0, NAN])}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"min_p": -0.1}, "min_p"),
        ({"top_k": -2}, "top_k"),
        ({"seed": 1, "generator": torch.Generator()}, "seed or generator"),
        ({"seed": torch.tensor([1.5, 2.5])}, "seed"),
        ({"top_k": torch.tensor([1, 2, 3])}, "batch shape"),
    ]:
        with pytest.raises(ss.StableSoftmaxError, match=pattern):
            ss.sample_from_logits(x, **kwargs)
    with pytest.raises(ss.StableSoftmaxError, match="num_samples"):
        ss.sample_from_logits(x, 0)
    with pytest.raises(ss.StableSoftmaxError, match="without replacement from 10"):
        ss.sample_from_logits(x, 11, replacement=False)
    with pytest.raises(ss.StableSoftmaxError, match="V >= 1"):
        ss.sample_from_logits(torch.randn(2, 0, device=DEVICE))


def test_shapes(backend, gen):
    x = _logits(6, 33, gen).view(2, 3, 33)
    assert ss.sample_from_logits(x, 4, seed=0).shape == (2, 3, 4)
    assert ss.sample_from_logits(x[0, 0], 2, seed=0).shape == (2,)
    assert ss.sample_from_logits(torch.randn(0, 5, device=DEVICE), 2).shape == (0, 2)
    assert ss.sample_from_logits(x.transpose(0, 2), seed=0).shape == (33, 3, 1)


def _tokens_per_backend(call, engines):
    """``call()`` on each engine: a backend, or "cpp-<isa>" for the C++ backend on one ISA."""
    out = {}
    for name in engines:
        with on_engine(name):
            out[name] = call().cpu()
    return out


def _assert_agree(per_backend: dict) -> None:
    """The same tokens on every backend, up to candidates that tie within rounding (SPEC: at most 0.1%)."""
    names = list(per_backend)
    for other in names[1:]:
        a, b = per_backend[names[0]], per_backend[other]
        mismatches = int((a != b).sum())
        assert mismatches <= a.numel() // 1000, f"{names[0]} vs {other}: {mismatches} of {a.numel()} tokens differ"


def _available(names):
    return [n for n in names if ss.available_backends()[n.partition("-")[0]].available]


@pytest.mark.parametrize(
    "params",
    [
        {"temperature": 0.8},
        {"temperature": 0.8, "num_samples": 6, "replacement": False},
        {"top_k": 40, "top_p": 0.9},
        {"min_p": 0.01, "num_samples": 3, "replacement": False},
    ],
    ids=["temperature", "race", "top_k_top_p", "min_p_race"],
)
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=str)
def test_backends_return_the_same_tokens(params, dtype, gen):
    """One algorithm, one random stream: every backend (and C++ ISA) draws the same tokens for the same seed."""
    x = _logits(16, 3000, gen, dtype=dtype)
    draw = lambda: ss.sample_from_logits(x, seed=77, offset=3, **params)  # noqa: E731
    _assert_agree(_tokens_per_backend(draw, _available(ENGINES)))


@pytest.mark.parametrize("replacement", [True, False], ids=["replacement", "no_replacement"])
def test_backends_agree_on_long_rows_and_multinomial(replacement, gen):
    """Long vocabulary rows (C++ vector paths, block sums, the pruned race) against the torch reference."""
    x = _logits(4, 152_064, gen, dtype=torch.float16)
    backends = _available([e for e in ENGINES if e != "triton"] if DEVICE.type == "cpu" else ["triton", "torch"])
    per_backend = _tokens_per_backend(
        lambda: ss.sample_from_logits(x, 8, temperature=0.9, replacement=replacement, seed=5), backends
    )
    _assert_agree(per_backend)
    p = torch.softmax(x.float(), -1).to(torch.float16)

    def draw():
        torch.manual_seed(11)
        return ss.multinomial(p, 8, replacement)

    _assert_agree(_tokens_per_backend(draw, backends))


def test_race_uniforms_stay_inside_the_open_interval():
    """Every Philox word maps to 0 < u < 1 exactly, so no entry gets an infinite race key."""
    from stablesoftmax.backends.torch_sampling import race_uniform

    words = torch.tensor([0, 1, 511, 512, 2**31, 2**32 - 512, 2**32 - 1], dtype=torch.int64)
    u = race_uniform(words)
    assert (u > 0).all() and (u < 1).all()
    assert torch.isfinite(torch.log(-torch.log(u))).all()
    assert u[-1].item() == 1 - 2**-24 and u[0].item() == 2**-24  # the extremes, exact


@pytest.mark.skipif(not torch.cuda.is_available(), reason="host syncs and CUDA graphs exist on CUDA only")
def test_validate_false_never_syncs_and_captures_in_a_cuda_graph(gen):
    """SPEC: with validate=False nothing is checked on the host (no device sync, CUDA-graph safe)."""
    x = _logits(8, 32_000, gen, dtype=torch.float16)
    seeds = torch.arange(100, 108, device=DEVICE)
    cases = [
        {},
        {"temperature": 0.7, "top_k": 50, "top_p": 0.9},
        {"min_p": 0.1},
        {"num_samples": 3, "replacement": False},
    ]
    for params in cases:  # warm up: kernels compiled, caches filled
        ss.sample_from_logits(x, seed=seeds, validate=False, **params)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for params in cases:
            ss.sample_from_logits(x, seed=seeds, validate=False, **params)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    for params in cases:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = ss.sample_from_logits(x, seed=seeds, validate=False, **params)
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(captured, ss.sample_from_logits(x, seed=seeds, validate=False, **params))
    probs = torch.softmax(x.float(), -1)
    ss.multinomial(probs, 2, replacement=True)  # warm up
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):  # multinomial: no host check while capturing
        drawn = ss.multinomial(probs, 2, replacement=True)
    graph.replay()
    torch.cuda.synchronize()
    assert (probs.gather(1, drawn) > 0).all()

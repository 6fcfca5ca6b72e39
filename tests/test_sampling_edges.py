"""Sampling at the edges: large |logit / T|, tiny and infinite temperatures, greedy without replacement.

Every test runs on each sampling engine that can run here: the C++ backend once per CPU kernel
path (``conftest.ENGINES``: every ISA in ``_C.supported_isas()``, scalar included), the torch
backend, and Triton (interpreted on CPU, so its shapes stay small there).
"""

from __future__ import annotations

import math
import os

import pytest
import torch
from _stats import assert_fits, filtered_distribution
from conftest import CPP_ISAS, DEVICE, ENGINES, INTERPRETED, on_engine, require_backend

import stablesoftmax as ss

INF = math.inf


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest):
    """One backend forced (and for cpp one CPU kernel path); yields the engine's name."""
    with on_engine(request.param):
        yield request.param


def _small(engine: str) -> bool:
    return engine == "triton" and INTERPRETED


def _counts(tokens: torch.Tensor, cols: int) -> torch.Tensor:
    return torch.bincount(tokens.flatten().cpu(), minlength=cols)


# --------------------------------------------------------------------------- large |logit / T|


@pytest.mark.parametrize(("centre", "spread", "temperature"), [(3000.0, 0.003, 0.003), (1000.0, 0.01, 0.01)])
def test_distribution_at_large_logit_over_temperature(engine, centre, spread, temperature, gen):
    """|x / T| ~ 1e5-1e6: z = (x - m) / T must be formed by subtracting first (the old AVX2 block sums
    took x * (1/T) - m * (1/T) in one FMA: chi-square/df in the tens at these sizes)."""
    cols, draws = (256, 20_000) if _small(engine) else (4096, 400_000)
    x = (centre + spread * torch.randn(1, cols, generator=gen, dtype=torch.float64)).float().to(DEVICE)
    tokens = ss.sample_from_logits(x, draws, temperature=temperature, seed=1)
    assert_fits(_counts(tokens, cols), filtered_distribution(x[0].cpu(), temperature=temperature))


def test_logprobs_never_positive_at_large_logit_over_temperature(engine, gen):
    x = torch.tensor([[1000.3, 1000.0]], device=DEVICE)
    tokens, lp = ss.sample_from_logits(x, 64, temperature=0.01, seed=1, return_logprobs=True)
    expected = filtered_distribution(x[0].cpu(), temperature=0.01).log()[tokens[0].cpu()]
    assert (lp <= 0).all(), lp
    assert torch.allclose(lp[0].double().cpu(), expected, atol=1e-6, rtol=1e-5)
    cols = 256 if _small(engine) else 4096
    y = (3000 + 0.003 * torch.randn(2, cols, generator=gen, dtype=torch.float64)).float().to(DEVICE)
    tokens, lp = ss.sample_from_logits(y, 256, temperature=0.003, seed=2, return_logprobs=True)
    assert (lp <= 0).all()
    for r in range(2):
        expected = filtered_distribution(y[r].cpu(), temperature=0.003).log()[tokens[r].cpu()]
        assert torch.allclose(lp[r].double().cpu(), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("temperature", [1e-9, 1e-30, 1e-40], ids=["1e-9", "1e-30", "subnormal"])
def test_tiny_temperature_gives_the_argmax(engine, temperature, gen):
    """float16 rows with a unique maximum at T -> 0: every draw is the argmax (was -1 for 50 of 64 rows)."""
    rows, cols = (4, 2000) if _small(engine) else (64, 32_000)
    x = torch.randn(rows, cols, generator=gen).half()
    top = torch.randint(0, cols, (rows,), generator=gen)
    x[torch.arange(rows), top] = 8.0  # above every other entry: a unique maximum
    x = x.to(DEVICE)
    tokens, lp = ss.sample_from_logits(x, 4, temperature=temperature, validate=False, seed=0, return_logprobs=True)
    assert torch.equal(tokens.cpu(), top[:, None].expand(rows, 4))
    assert (lp == 0).all()
    one = ss.sample_from_logits(torch.tensor([[3.0]], device=DEVICE), 3, temperature=temperature, seed=0)
    assert one.tolist() == [[0, 0, 0]]


# --------------------------------------------------------------------------- temperature limits


def _draw_per_engine(call) -> dict:
    out = {}
    for name in ENGINES:
        if not ss.available_backends()[name.partition("-")[0]].available:
            continue
        with on_engine(name):
            out[name] = [t.cpu() for t in call()]
    return out


def _assert_identical(per_engine: dict) -> None:
    names = list(per_engine)
    for other in names[1:]:
        for a, b in zip(per_engine[names[0]], per_engine[other]):
            assert torch.equal(a, b), f"{names[0]} vs {other}"


@pytest.mark.parametrize("params", [{}, {"top_k": 1}, {"top_p": 0.3}, {"min_p": 0.9}], ids=lambda p: str(p) or "plain")
def test_infinite_temperature_is_uniform_over_the_finite_entries(engine, params):
    """T = inf: every finite entry ties at z = 0, so every filter keeps them all (top_k=1 raised
    'nothing left' when the row also held -inf entries: -inf / inf was NaN, ranked first)."""
    x = torch.tensor([[1.0, -INF, 5.0, -3.0, -INF, 0.5]], device=DEVICE)
    tokens = ss.sample_from_logits(x, 12_000, temperature=INF, seed=4, **params)
    expected = torch.tensor([0.25, 0, 0.25, 0.25, 0, 0.25], dtype=torch.float64)
    assert_fits(_counts(tokens, 6), expected)
    two = ss.sample_from_logits(torch.tensor([[1.0, 2.0]], device=DEVICE), 2000, temperature=INF, top_k=1, seed=0)
    assert_fits(_counts(two, 2), torch.tensor([0.5, 0.5], dtype=torch.float64))


def test_temperature_limits_identical_on_every_engine(gen):
    """Tiny T: uniform over the tied maxima; T = inf: uniform over the finite entries; the weights
    are exactly 1, so every engine returns the very same tokens (and log-probabilities)."""
    x = torch.randn(3, 300, generator=gen).half()
    x[:, 7] = x[:, 100] = x[:, 299] = 9.0  # three tied maxima per row
    x[1, ::3] = -INF
    x = x.to(DEVICE)
    for params in [
        {"temperature": 1e-30},
        {"temperature": 1e-40, "top_p": 0.5},
        {"temperature": INF},
        {"temperature": INF, "top_k": 2, "min_p": 0.5},
        {"temperature": INF, "num_samples": 5, "replacement": False},
    ]:
        kwargs = {"num_samples": 500, "seed": 9, "offset": 2, "return_logprobs": True, **params}
        per = _draw_per_engine(lambda kw=kwargs: ss.sample_from_logits(x, **kw))
        _assert_identical(per)
        tokens = next(iter(per.values()))[0]
        if params["temperature"] < 1:
            assert set(tokens.flatten().tolist()) == {7, 100, 299}
        else:
            assert not torch.isinf(x.cpu().float().gather(1, tokens)).any()


# --------------------------------------------------------------------------- a cut among equal z


@pytest.mark.parametrize("temperature", [1.0, 0.37, 3000.0])
def test_top_k_keeps_every_logit_whose_z_ties_the_kth(engine, temperature, gen):
    """Distinct logits that round to one z = (x - m) / T: top-k keeps all of them, and nothing below.
    Below a 1.0 maximum, logits in [0, 1e-6) give x - 1 on about 17 float32 values, ~100 logits each:
    the kth z is one of those levels. (The C++ kernel skips the division for logits under a cut in x;
    the entries just below the kept level test that cut.)"""
    cols = 400 if _small(engine) else 2000
    x = torch.rand(1, cols, generator=gen) * 1e-6
    x[0, 0] = 1.0
    z = (x - 1.0) / torch.tensor(temperature)  # float32, rounded as every engine rounds it
    kth = z.topk(40).values[0, -1]
    kept = set(torch.nonzero(z[0] >= kth).flatten().tolist())
    assert 40 < len(kept) < cols - 100  # ties at the cut, and entries just below it
    tokens = ss.sample_from_logits(x.to(DEVICE), 6000, temperature=temperature, top_k=40, seed=3).cpu()
    assert set(tokens.flatten().tolist()) == kept


# --------------------------------------------------------------------------- greedy without replacement


def _greedy_reference(row: torch.Tensor, n: int, top_k: int = 0) -> list[int]:
    """The n largest in decreasing order, lowest index first on ties; -1 past the candidates."""
    v = row.double().tolist()
    has_inf = INF in v
    cand = [i for i, a in enumerate(v) if (a == INF if has_inf else a > -INF)]
    order = sorted(cand, key=lambda i: (-v[i], i))
    if 0 < top_k < len(v):
        kth = sorted(v, reverse=True)[top_k - 1]
        order = [i for i in order if v[i] >= kth]
    order = order[:n]
    return order + [-1] * (n - len(order))


def test_greedy_without_replacement_is_the_top_n_in_order(engine):
    x = torch.tensor([[0.0, 2.0, 1.0]], device=DEVICE)
    tokens, lp = ss.sample_from_logits(x, 3, temperature=0, replacement=False, return_logprobs=True)
    assert tokens.tolist() == [[1, 2, 0]]
    assert (lp == 0).all()
    ties = torch.tensor([[1.0, 3.0, 3.0, 0.0, 3.0, -0.0, 0.0]], device=DEVICE)
    assert ss.sample_from_logits(ties, 7, temperature=0, replacement=False).tolist() == [[1, 2, 4, 0, 3, 5, 6]]
    with_inf = torch.tensor([[INF, 1.0, INF, 5.0]], device=DEVICE)
    assert ss.sample_from_logits(with_inf, 2, temperature=0, replacement=False).tolist() == [[0, 2]]
    masked = torch.tensor([[0.0, -INF, 1.0]], device=DEVICE)
    got = ss.sample_from_logits(masked, 3, temperature=0, replacement=False, validate=False)
    assert got.tolist() == [[2, 0, -1]]
    with pytest.raises(ss.StableSoftmaxError, match="fewer candidates than num_samples=3"):
        ss.sample_from_logits(masked, 3, temperature=0, replacement=False)
    with pytest.raises(ss.StableSoftmaxError, match="after the filters"):
        ss.sample_from_logits(x, 3, temperature=0, replacement=False, top_k=2)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64], ids=str)
def test_greedy_rows_among_sampled_rows(engine, dtype, gen):
    """Per-row temperatures with some zeros: greedy rows give the top-n in order with log-prob 0,
    the others distinct draws; with a per-row top_k the greedy order stops at the top-k set."""
    rows, cols, n = 6, 200, 8
    x = torch.randn(rows, cols, generator=gen).mul(2).round().to(dtype)  # many ties
    x[2, ::2] = -INF
    x = x.to(DEVICE)
    temperature = torch.tensor([0.0, 1.0, 0.0, 0.7, 0.0, 0.0])
    top_k = torch.tensor([0, 0, 0, 5, 3, 0])
    tokens, lp = ss.sample_from_logits(
        x, n, temperature=temperature, top_k=top_k, replacement=False, seed=3, return_logprobs=True, validate=False
    )
    for r in range(rows):
        row = tokens[r].cpu().tolist()
        if temperature[r] == 0:
            assert row == _greedy_reference(x[r].cpu(), n, int(top_k[r])), r
            assert (lp[r][tokens[r] >= 0] == 0).all()
        elif top_k[r] == 0:
            assert len(set(row)) == n and min(row) >= 0
            assert (lp[r] < 0).all()


# Bitwise invariance to batch size, position, thread count and split, per ISA: tests/test_invariance.py.


# --------------------------------------------------------------------------- bounded scratch memory

_RSS_SCRIPT = """
import gc, os, sys
import torch
import stablesoftmax as ss
from stablesoftmax import _C

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

case, isa = sys.argv[1], sys.argv[2]
_C.set_isa(isa)
torch.set_num_threads(2)
with ss.use_backend("cpp"):
    ss.sample_from_logits(torch.randn(4, 5000, dtype=torch.float64), 2, seed=0, top_k=4500)  # warm up
    gc.collect()
    before = rss()
    if case == "float64":  # the generic path: z, candidates and their prefix sums per row
        x = torch.randn(2, 1 << 22, dtype=torch.float64)
        ss.sample_from_logits(x, 4, seed=0)
    else:  # a large top-k: a copy of the row to select from
        x = torch.randn(2, 1 << 23)
        ss.sample_from_logits(x, 4, seed=0, top_k=5000)
    del x
    gc.collect()
    print(rss() - before)
"""


@pytest.mark.slow
@pytest.mark.parametrize("case", ["float64", "top_k"])
@pytest.mark.parametrize("isa", CPP_ISAS or ["auto"])
def test_scratch_memory_is_released_after_large_rows(case, isa):
    """Scratch grown for a long row does not stay resident (it used to stay at the largest row's
    size: ~160 MiB per thread for a 2**22 float64 row, 32 MiB per thread for top-k on 2**23)."""
    import subprocess
    import sys

    require_backend("cpp")
    if not os.path.exists("/proc/self/statm"):
        pytest.skip("RSS is read from /proc/self/statm (Linux)")
    out = subprocess.run(
        [sys.executable, "-c", _RSS_SCRIPT, case, isa], capture_output=True, text=True, check=True, timeout=300
    )
    grown = int(out.stdout.split()[-1])
    assert grown < 24 << 20, f"{grown / 2**20:.0f} MiB still resident after the call"


_PEAK_SCRIPT = """
import resource, sys
import torch
import stablesoftmax as ss

params = {"plain": {}, "top_k": {"top_k": 50, "min_p": 0.01}, "race": {"num_samples": 4, "replacement": False}}
x = torch.randn(1, 1 << 23, dtype=torch.float16)
with ss.use_backend("torch"):
    ss.sample_from_logits(torch.randn(2, 100), 2, seed=0)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    ss.sample_from_logits(x, **{"num_samples": 8, "seed": 0, "return_logprobs": True, **params[sys.argv[1]]})
    print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
"""


@pytest.mark.slow
@pytest.mark.parametrize("case", ["plain", "top_k", "race"])
def test_torch_backend_sampling_memory_is_bounded(case):
    """A long row goes through the torch backend in column chunks (STABLESOFTMAX_TORCH_CHUNK_BYTES):
    sampling a 16 MiB float16 row used to raise peak RSS by ~20 bytes per entry (hundreds of MiB)."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, case], capture_output=True, text=True, check=True)
    grown = int(out.stdout.split()[-1])
    assert grown < 48 << 20, f"peak RSS grew by {grown / 2**20:.0f} MiB"


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64], ids=str)
def test_torch_backend_column_chunks_give_the_same_tokens(dtype, gen, monkeypatch):
    """The column-chunked long-row path draws bitwise the tokens of the whole-row path."""
    from stablesoftmax.backends import torch_softmax

    require_backend("torch")
    cols = 6_000
    x = torch.randn(5, cols, generator=gen) * 3
    x[1, ::3] = -INF
    x[2, [5, 900, 4444]] = INF
    x[3] = x[3].round()
    x = x.to(dtype).to(DEVICE)
    temperature = torch.tensor([0.0, 1.0, 0.0, 0.7, 0.0])
    cases = [
        {},
        {"temperature": 0.5, "top_k": 7, "min_p": 0.1},
        {"num_samples": 6, "replacement": False, "top_k": 20},
        {"temperature": temperature, "num_samples": 9, "replacement": False, "top_k": 2000},
        {"temperature": temperature, "num_samples": 9},
        {"temperature": INF, "top_k": 1},
    ]
    with ss.use_backend("torch"):
        for params in cases:
            kwargs = {"num_samples": 2000, "seed": 3, "offset": 1, "return_logprobs": True, "validate": False, **params}
            whole = ss.sample_from_logits(x, **kwargs)
            with monkeypatch.context() as mp:  # 5 * 4 (float64: 5 * 8) bytes per column: 2000 (1000) columns
                mp.setattr(torch_softmax, "CPU_CHUNK_BYTES", 80 * 500)
                mp.setattr(torch_softmax, "CHUNK_BYTES", 80 * 500)
                chunked = ss.sample_from_logits(x, **kwargs)
            assert torch.equal(whole[0], chunked[0]), params
            assert torch.allclose(whole[1], chunked[1], equal_nan=True, atol=1e-6), params

"""multinomial: the torch.multinomial drop-in, on every backend."""

from __future__ import annotations

import math

import pytest
import torch
from _stats import assert_fits
from conftest import DEVICE, INTERPRETED, isa_axis

import stablesoftmax as ss


def _probs(rows, cols, gen, dtype):
    return torch.rand(rows, cols, generator=gen, dtype=torch.float64).pow(3).mul(7).to(dtype).to(DEVICE)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64], ids=str)
@isa_axis
def test_unnormalised_rows_follow_their_distribution(backend, dtype, gen):
    p = _probs(3, 30, gen, dtype)
    p[1, ::3] = 0
    tokens = ss.multinomial(p, 30_000, replacement=True)
    assert tokens.shape == (3, 30_000) and tokens.dtype == torch.int64
    for r in range(3):
        expected = p[r].double().cpu()
        assert_fits(torch.bincount(tokens[r].cpu(), minlength=30), expected / expected.sum())


@isa_axis
def test_tiny_float16_probabilities_and_zeros(backend):
    """Zero-probability entries never come back, even beside float16 subnormals (pytorch#192812)."""
    cols = 4096
    p = torch.zeros(4, cols, dtype=torch.float16)
    p[:, ::7] = 6e-8  # float16 subnormal
    p[:, 5] = 1.0
    p = p.to(DEVICE)
    tokens = ss.multinomial(p, 100_000, replacement=True)
    assert (p.gather(1, tokens) > 0).all()
    single = ss.multinomial(p, 1)
    assert (p.gather(1, single) > 0).all()


@isa_axis
def test_without_replacement(backend, gen):
    p = _probs(1, 5, gen, torch.float32)
    p_cpu = p[0].double().cpu() / p[0].double().cpu().sum()
    trials = 5_000
    torch.manual_seed(0)
    pairs = ss.multinomial(p.expand(trials, 5).contiguous(), 2)
    assert (pairs[:, 0] != pairs[:, 1]).all()
    counts = torch.bincount((pairs[:, 0] * 5 + pairs[:, 1]).cpu(), minlength=25)
    expected = torch.zeros(25, dtype=torch.float64)
    for i in range(5):
        for j in range(5):
            if i != j:
                expected[i * 5 + j] = p_cpu[i] * p_cpu[j] / (1 - p_cpu[i])
    assert_fits(counts, expected)
    every = ss.multinomial(p[0], 5)
    assert sorted(every.tolist()) == [0, 1, 2, 3, 4] and every.shape == (5,)


def test_no_limit_on_categories(backend):
    cols = (1 << 24) + 17 if not (INTERPRETED and backend == "triton") else 70_000
    p = torch.zeros(cols, dtype=torch.float32, device=DEVICE)
    p[-1] = 3.0
    p[-17] = 1.0
    torch.manual_seed(0)
    tokens = ss.multinomial(p, 2000, replacement=True)
    assert set(tokens.tolist()) == {cols - 1, cols - 17}
    assert 0.65 < float((tokens == cols - 1).double().mean()) < 0.85


def test_errors_name_row_column_and_cause(backend):
    p = torch.rand(4, 10, device=DEVICE)
    bad = p.clone()
    bad[2, 7] = math.nan
    with pytest.raises(ss.StableSoftmaxError, match=r"NaN.*\[2, 7\].*float16 overflow.*bfloat16"):
        ss.multinomial(bad, 1)
    bad = p.clone()
    bad[1, 3] = math.inf
    with pytest.raises(ss.StableSoftmaxError, match=r"inf.*\[1, 3\]"):
        ss.multinomial(bad, 1)
    bad = p.clone()
    bad[0, 9] = -0.5
    with pytest.raises(ss.StableSoftmaxError, match=r"negative.*\[0, 9\]"):
        ss.multinomial(bad, 1)
    bad = p.clone()
    bad[3] = 0
    with pytest.raises(ss.StableSoftmaxError, match=r"sum to zero.*\(row 3\)"):
        ss.multinomial(bad, 1)
    bad = p.clone()
    bad[1, 2:] = 0
    with pytest.raises(ss.StableSoftmaxError, match=r"row 1 has fewer non-zero entries.*num_samples=3"):
        ss.multinomial(bad, 3)
    with pytest.raises(ss.StableSoftmaxError, match="without replacement from 10"):
        ss.multinomial(p, 11)
    with pytest.raises(ss.StableSoftmaxError, match="1-D or 2-D"):
        ss.multinomial(p.view(2, 2, 10), 1)
    with pytest.raises(ss.StableSoftmaxError, match="float"):
        ss.multinomial(torch.ones(3, dtype=torch.int64, device=DEVICE), 1)


def test_inside_a_graph_capture_bad_rows_give_minus_one(backend, gen, monkeypatch):
    """Capturing a CUDA graph, multinomial checks nothing on the host (that would sync): a bad row's draws
    are -1 (as sample_from_logits(validate=False)) and the other rows draw as in an ordinary call.
    The capture is simulated (no GPU here); the CUDA-graph test in test_sampling.py runs it for real."""
    from stablesoftmax import _sampling

    p = _probs(5, 40, gen, torch.float32)
    p[1, 3] = math.nan
    p[3] = 0
    good = [0, 2, 4]
    expected = ss.multinomial(p[good], 6, replacement=True, generator=torch.Generator(DEVICE).manual_seed(9))
    monkeypatch.setattr(_sampling, "_capturing", lambda device: True)
    tokens = ss.multinomial(p, 6, replacement=True, generator=torch.Generator(DEVICE).manual_seed(9))
    assert (tokens[[1, 3]] == -1).all()
    assert (tokens[good] >= 0).all() and (p[good].gather(1, tokens[good]) > 0).all()
    assert torch.equal(tokens[0], expected[0])  # row 0: the same stream (seed and row index) as in the ordinary call


_INVALID = {"NaN": math.nan, "inf": math.inf, "negative": -0.25}


@pytest.mark.parametrize("replacement", [True, False], ids=["replacement", "no_replacement"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("kind", list(_INVALID))
def test_invalid_entries_found_in_long_rows(backend, dtype, kind, replacement, gen):
    """The validation fused into the kernels finds one bad entry anywhere in a long row (vector body, tail)."""
    # long enough for split rows and many blocks (shorter for interpreted Triton); odd, so there is a vector tail
    rows, cols = 3, 5_003 if INTERPRETED and backend == "triton" else 40_003
    p = _probs(rows, cols, gen, dtype)
    assert ss.multinomial(p, 2, replacement).shape == (rows, 2)
    for row, col in [(1, cols // 2 + 9), (2, cols - 1)]:
        bad = p.clone()
        bad[row, col] = _INVALID[kind]
        pattern = rf"{kind} entries in 1 of 3 rows \(row {row}\)\. row {row}: .*first at \[{row}, {col}\]"
        with pytest.raises(ss.StableSoftmaxError, match=pattern):
            ss.multinomial(bad, 2, replacement)


def test_huge_finite_weights_are_valid(backend):
    """float32 weights near the float32 maximum: their sum overflows float32 but the row is valid."""
    p = torch.full((2, 3000), 3e38, dtype=torch.float32)
    p[:, 1234] = 0
    tokens = ss.multinomial(p.to(DEVICE), 500, replacement=True)
    assert not (tokens == 1234).any()
    assert tokens.unique().numel() > 300


@pytest.mark.slow
def test_ten_million_draws_never_pick_a_zero_beside_subnormals(backend):
    """10**7 draws (10**5 interpreted) from float16 rows of exact zeros between subnormal and tiny weights."""
    cols = 1024
    gen = torch.Generator().manual_seed(5)
    subnormal = torch.randint(1, 1024, (2, cols), generator=gen).to(torch.float64) * 2.0**-24  # every float16 subnormal
    p = torch.where(torch.arange(cols) % 2 == 1, subnormal, 0.0)
    p[1, 1::64] = 1e-3  # a few normal weights among them
    p = p.to(torch.float16).to(DEVICE)
    assert (p[:, 1::2] > 0).all() and (p[:, ::2] == 0).all()
    draws = 100_000 if INTERPRETED and backend == "triton" else 5_000_000
    tokens = ss.multinomial(p, draws, replacement=True)  # 2 rows: 10**7 draws
    assert (tokens % 2 == 1).all(), "a zero-probability entry was drawn"
    single = ss.multinomial(p.repeat(1000, 1), 1)
    assert (single % 2 == 1).all()
    every = ss.multinomial(p.repeat(50, 1), cols // 2, replacement=False)  # every non-zero entry, none else
    assert (every.sort(dim=1).values == torch.arange(1, cols, 2, device=every.device)).all()

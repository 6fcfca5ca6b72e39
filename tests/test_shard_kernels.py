"""The C++ shard kernels of vocabulary-parallel sampling against the torch ones (backends/torch_shard.py).

Per ISA, on fresh random logits of every 16/32-bit dtype with ``-inf``/``+inf`` entries, padded rows and
a per-row temperature: the kept mass (float64, another order of additions: close), the inverse-CDF
search, the radix histograms, the top values and the race (equal: the same float32 arithmetic), each
with and without the cut and min-p thresholds. Shard column offsets that are not multiples of 4 check
that the race reads the Philox words of global columns.
"""

from __future__ import annotations

import pytest
import torch
from _reference import shard_case
from conftest import CPP_ISAS, cpp_isa, require_backend

from stablesoftmax.backends import torch_shard


@pytest.fixture(autouse=True)
def _cpp_backend():
    """The C++ extension must be there on CI (require_backend fails there, skips elsewhere)."""
    require_backend("cpp")


def _cpp_shard():
    from stablesoftmax.backends import cpp_shard

    return cpp_shard


ROWS, COLS = 6, 1500


def _case(dtype: torch.dtype, seed: int):
    return shard_case(dtype, seed, ROWS, COLS)


DTYPES = [torch.float32, torch.float16, torch.bfloat16]
FILTERS = [(False, False), (True, False), (False, True), (True, True)]


@pytest.mark.parametrize("isa", CPP_ISAS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("filters", FILTERS, ids=["none", "cut", "min_p", "both"])
def test_mass_and_search(isa: str, dtype: torch.dtype, filters) -> None:
    x, m, t, cut, min_p = _case(dtype, 1)
    cut = cut if filters[0] else None
    min_p = min_p if filters[1] else None
    with cpp_isa(isa):
        mass = _cpp_shard().kept_mass(x, m, t, cut, min_p)
        want = torch_shard.kept_mass(x, m, t, cut, min_p)
        torch.testing.assert_close(mass, want, rtol=2e-6, atol=1e-300)
        before = torch.linspace(0.0, 3.0, ROWS, dtype=torch.float64)
        u = torch.rand(ROWS, 40, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        targets = before[:, None] + (u * 1.1 - 0.05) * want[:, None]  # some before the shard, some past it
        idx, last = _cpp_shard().search(x, m, t, cut, min_p, before, targets)
        want_idx, want_last = torch_shard.search(x, m, t, cut, min_p, before, targets)
    assert torch.equal(last, want_last)
    # a target within rounding of a boundary may fall either side: allow a neighbouring kept column
    differ = idx != want_idx
    assert differ.float().mean() < 0.05, (idx[differ], want_idx[differ])
    assert torch.equal(idx >= COLS, want_idx >= COLS) or differ.sum() <= 2


@pytest.mark.parametrize("isa", CPP_ISAS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("counts", [False, True], ids=["mass", "counts"])
def test_histogram_rounds(isa: str, dtype: torch.dtype, counts: bool) -> None:
    x, m, t, cut, _ = _case(dtype, 3)
    z = torch_shard.z_of(x, m, t)
    key, _ = torch_shard.order_key(z)
    with cpp_isa(isa):
        for c in (None, cut):
            prefix = torch.zeros((ROWS, 1), dtype=torch.int64)
            for shift in (24, 16, 8, 0):
                got = _cpp_shard().histogram(x, m, t, c, counts, prefix, shift)
                want = torch_shard.histogram(x, m, t, c, counts, prefix, shift)
                torch.testing.assert_close(got, want, rtol=1e-12 if counts else 2e-6, atol=1e-300)  # exp: ulps
                # follow the key of each row's median-ish live entry down
                pick = key.gather(1, torch.full((ROWS, 1), COLS // 3))
                prefix = pick >> shift
                assert got.sum() > 0


@pytest.mark.parametrize("isa", CPP_ISAS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_top_values(isa: str, dtype: torch.dtype) -> None:
    x, m, t, _, _ = _case(dtype, 4)
    with cpp_isa(isa):
        for k in (1, 7, 50, COLS + 3):
            got = _cpp_shard().top_values(x, m, t, k)
            want = torch_shard.top_values(x, m, t, k)
            assert torch.equal(got, want), k


@pytest.mark.parametrize("isa", CPP_ISAS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("filters", FILTERS, ids=["none", "cut", "min_p", "both"])
def test_race(isa: str, dtype: torch.dtype, filters) -> None:
    x, m, t, cut, min_p = _case(dtype, 5)
    cut = cut if filters[0] else None
    min_p = min_p if filters[1] else None
    seed = torch.tensor([1, -5, 2**62, 7, 0, 99])
    row_id = torch.arange(ROWS)
    offset = torch.tensor([0, 1, 2**40, 3, 4, 5])
    with cpp_isa(isa):
        for col0 in (0, 3, 1_000_001):
            for n in (1, 5, 2000):
                keys, ids, count = _cpp_shard().race(x, m, t, cut, min_p, seed, row_id, offset, torch.tensor(col0), n)
                wk, wi, wc = torch_shard.race(x, m, t, cut, min_p, seed, row_id, offset, torch.tensor(col0), n)
                assert torch.equal(count, wc)
                torch.testing.assert_close(keys, wk.float(), rtol=2e-6, atol=1e-6)  # std::log vs torch.log: ulps
                assert torch.equal(ids, wi), (col0, n)

"""The Triton shard kernels of vocabulary-parallel sampling against the torch ones (backends/torch_shard.py).

On DEVICE (Triton's interpreter on CPU tensors without a GPU), on fresh random logits of every 16/32-bit
dtype with ``-inf``/``+inf`` entries, padding columns, a masked row and a per-row temperature (``inf``
included): the kept mass (float64 block sums in another order: close), the inverse-CDF search, the radix
histograms (counts equal, masses within exp's ulps), the top values (equal: the same float32 arithmetic)
and the race (ids and counts equal, keys within log's ulps), each with and without the cut and min-p
thresholds. Shard column offsets that are not multiples of 4 (and one past 2**32) check that the race
reads the Philox words of global columns. 700 columns span several blocks of the interpreter's plan.
"""

from __future__ import annotations

import math

import pytest
import torch
from _reference import shard_case
from conftest import DEVICE, import_or_skip_off_ci, record_tensor_sizes, require_backend

import stablesoftmax as ss
import stablesoftmax.distributed as sd
from stablesoftmax.backends import torch_shard

import_or_skip_off_ci("triton", "the Triton shard kernels")


from stablesoftmax.backends import triton_launch, triton_sampling  # noqa: E402
from stablesoftmax.backends import triton_shard as T  # noqa: E402

ROWS, COLS = 6, 700
# exp and log against torch's: ulps in the interpreter (numpy); on a GPU Triton's fast exp (ex2.approx of
# z * log2(e)) is off by up to ~|z| * 6e-8 relative, and its log by ~1e-7 absolute
EXP_RTOL = 2e-6 if DEVICE.type == "cpu" else 1e-5
LOG_ATOL = 1e-6 if DEVICE.type == "cpu" else 1e-5


def _case(dtype: torch.dtype, seed: int):
    return shard_case(dtype, seed, ROWS, COLS, DEVICE)


DTYPES = [torch.float32, torch.float16, torch.bfloat16]
FILTERS = [(False, False), (True, False), (False, True), (True, True)]
FILTER_IDS = ["none", "cut", "min_p", "both"]


def _filters(cut, min_p, filters):
    return (cut if filters[0] else None), (min_p if filters[1] else None)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("filters", FILTERS, ids=FILTER_IDS)
def test_mass_and_search(dtype: torch.dtype, filters) -> None:
    x, m, t, cut, min_p = _case(dtype, 1)
    cut, min_p = _filters(cut, min_p, filters)
    mass = T.kept_mass(x, m, t, cut, min_p)
    want = torch_shard.kept_mass(x, m, t, cut, min_p)
    assert mass.dtype == torch.float64 and mass.shape == (ROWS,)
    torch.testing.assert_close(mass, want, rtol=EXP_RTOL, atol=1e-300)  # float64 in another order; exp
    assert mass[3] == 0 and (mass[[0, 1, 2, 4, 5]] > 0).all()
    before = torch.linspace(0.0, 3.0, ROWS, dtype=torch.float64, device=DEVICE)
    u = torch.rand(ROWS, 16, generator=torch.Generator().manual_seed(2), dtype=torch.float64).to(DEVICE)
    targets = before[:, None] + (u * 1.1 - 0.05) * want[:, None]  # some before the shard, some past it
    idx, last = T.search(x, m, t, cut, min_p, before, targets)
    want_idx, want_last = torch_shard.search(x, m, t, cut, min_p, before, targets)
    assert idx.dtype == last.dtype == torch.int64 and idx.shape == targets.shape
    assert torch.equal(last, want_last)
    # a target within rounding of a boundary may fall either side: allow a neighbouring kept column
    differ = idx != want_idx
    assert differ.float().mean() < 0.05, (idx[differ], want_idx[differ])
    assert (idx >= COLS).any() and (idx < COLS).any()
    assert torch.equal(idx >= COLS, want_idx >= COLS) or differ.sum() <= 2


def test_search_is_exact_on_a_one_hot_and_a_flat_row() -> None:
    # weights of exactly representable sums: the block prefix and the rescan agree with the reference bit for bit
    x = torch.full((2, COLS), -math.inf, device=DEVICE)
    x[0, 517] = 0.0  # one kept column in the second block
    x[1] = 0.0  # every weight 1: prefix i + 1
    m = torch.zeros(2, 1, device=DEVICE)
    t = torch.ones(2, 1, device=DEVICE)
    before = torch.tensor([0.5, 10.0], dtype=torch.float64, device=DEVICE)
    targets = torch.tensor([[0.0, 0.5, 1.2, 1.5, 2.0], [9.0, 10.0, 10.5, 265.0, 709.99]], dtype=torch.float64)
    targets = targets.to(DEVICE)
    idx, last = T.search(x, m, t, None, None, before, targets)
    want_idx, want_last = torch_shard.search(x, m, t, None, None, before, targets)
    assert torch.equal(idx, want_idx) and torch.equal(last, want_last)
    assert idx.tolist() == [[0, 517, 517, COLS, COLS], [0, 0, 0, 255, 699]] and last.tolist() == [517, COLS - 1]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("counts", [False, True], ids=["mass", "counts"])
def test_histogram_rounds(dtype: torch.dtype, counts: bool) -> None:
    x, m, t, cut, _ = _case(dtype, 3)
    z = torch_shard.z_of(x, m, t)
    key, _ = torch_shard.order_key(z)
    for c in (None, cut):
        prefix = torch.zeros((ROWS, 1), dtype=torch.int64, device=DEVICE)
        for shift in (24, 16, 8, 0):
            got = T.histogram(x, m, t, c, counts, prefix, shift)
            want = torch_shard.histogram(x, m, t, c, counts, prefix, shift)
            assert got.shape == (ROWS, 256) and got.dtype == torch.float64
            if counts:
                assert torch.equal(got, want)
            else:
                torch.testing.assert_close(got, want, rtol=EXP_RTOL, atol=1e-300)  # exp
            assert torch.equal(got > 0, want > 0)
            # follow the key of each row's median-ish live entry down
            prefix = key.gather(1, torch.full((ROWS, 1), COLS // 3, device=DEVICE)) >> shift
            assert got.sum() > 0


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_top_values(dtype: torch.dtype, block_select: str) -> None:
    x, m, t, _, _ = _case(dtype, 4)
    for k in (1, 7, 50, COLS + 3):
        got = T.top_values(x, m, t, k)
        want = torch_shard.top_values(x, m, t, k)
        assert torch.equal(got, want), k


def test_z_rounds_and_overflows_like_torch() -> None:
    # tiny temperatures: quotients past float32's range are -inf (torch's overflow), the others rounded to nearest
    g = torch.Generator().manual_seed(6)
    x = -torch.randn(4, 64, generator=g).abs() * 1e3
    x[:, 0] = 0.0
    x[0, 1:4] = torch.tensor([-3.4e28, -3.5e28, -1e30])  # around the overflow threshold at t = 1e-10
    m = torch.zeros(4, 1)
    t = torch.tensor([1e-10, 1e-36, 3e-7, 0.1])[:, None]
    x, m, t = x.to(DEVICE), m.to(DEVICE), t.to(DEVICE)
    got = T.top_values(x, m, t, 64)
    want = torch_shard.top_values(x, m, t, 64)
    assert torch.equal(got, want)
    assert torch.isinf(want[1]).any() and torch.isinf(want[0]).sum() == 2 and torch.isfinite(want[:, 0]).all()


# every filter combination on float32; the 16-bit dtypes (only the load differs) with both filters
RACE_CASES = [(torch.float32, f) for f in FILTERS] + [(d, (True, True)) for d in DTYPES[1:]]
RACE_IDS = [f"{FILTER_IDS[FILTERS.index(f)]}-{d}" for d, f in RACE_CASES]


@pytest.mark.parametrize(("dtype", "filters"), RACE_CASES, ids=RACE_IDS)
def test_race(dtype: torch.dtype, filters, block_select: str) -> None:
    x, m, t, cut, min_p = _case(dtype, 5)
    cut, min_p = _filters(cut, min_p, filters)
    seed = torch.tensor([1, -5, 2**62, 7, 0, 99], device=DEVICE)
    row_id = torch.arange(ROWS, device=DEVICE)
    offset = torch.tensor([0, 1, 2**40, 3, 4, 5], device=DEVICE)
    for col0, n in ((0, 5), (3, COLS + 100), (2**32 + 1_000_001, 1)):  # past the kept entries: -inf, -1
        start = torch.tensor(col0, device=DEVICE)
        keys, ids, count = T.race(x, m, t, cut, min_p, seed, row_id, offset, start, n)
        wk, wi, wc = torch_shard.race(x, m, t, cut, min_p, seed, row_id, offset, start, n)
        assert keys.dtype == torch.float32 and ids.dtype == count.dtype == torch.int64
        assert keys.shape == ids.shape == (ROWS, n)
        assert torch.equal(count, wc)
        torch.testing.assert_close(keys, wk.float(), rtol=EXP_RTOL, atol=LOG_ATOL)  # log
        assert torch.equal(ids, wi), (col0, n)
        assert count[3] == 0 and (ids[3] == -1).all() and (ids[0, :1] >= col0).all()


def test_equal_values_rank_the_lowest_column_first(block_select: str) -> None:
    # a flat row across two blocks: every z is 0, the k best are the k lowest columns, for every width
    x = torch.zeros(2, COLS, device=DEVICE)
    x[1, :600] = -math.inf  # the second row's ties start in the second block
    m = torch.zeros(2, 1, device=DEVICE)
    t = torch.ones(2, 1, device=DEVICE)
    for k in (1, 9, 100):
        packed, col, _ = T._best(T._top_kernel, x, k, m.reshape(-1), t.reshape(-1))
        assert col[0].tolist() == list(range(k)) and col[1].tolist() == list(range(600, 600 + k)), k
        assert torch.equal(triton_sampling._packed_values(packed[0]), torch.zeros(k, device=DEVICE))


def test_race_with_fewer_kept_entries_than_samples(block_select: str) -> None:
    x = torch.full((1, COLS), -math.inf, device=DEVICE)
    x[0, [3, 600]] = 0.0  # one kept entry in each block
    m, t = torch.zeros(1, 1, device=DEVICE), torch.ones(1, 1, device=DEVICE)
    stream = [torch.zeros(1, dtype=torch.int64, device=DEVICE) for _ in range(3)]
    start = torch.tensor(2**33 + 2, device=DEVICE)
    keys, ids, count = T.race(x, m, t, None, None, *stream, start, 3)
    want_keys, want_ids, want_count = torch_shard.race(x, m, t, None, None, *stream, start, 3)
    assert torch.equal(ids, want_ids) and torch.equal(count, want_count) and count.tolist() == [2]
    assert sorted(ids[0, :2].tolist()) == [2**33 + 5, 2**33 + 602] and ids[0, 2] == -1
    torch.testing.assert_close(keys, want_keys, rtol=EXP_RTOL, atol=LOG_ATOL)
    assert keys[0, 2] == -math.inf and torch.isfinite(keys[0, :2]).all()


@pytest.mark.parametrize("n", [2, 16])
def test_no_workspace_of_the_shard_size(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    """The race and the top values keep each block's few best: no tensor they make holds a tenth of
    rows x cols entries (before, (rows, cols) float32 keys / z)."""
    rows, cols = 4, 8192
    g = torch.Generator().manual_seed(11)
    x = (torch.randn(rows, cols, generator=g) * 3).to(DEVICE)
    m = x.amax(dim=1, keepdim=True)
    t = torch.tensor([[0.7], [1.0], [2.0], [1.3]], device=DEVICE)
    stream = [torch.arange(rows, device=DEVICE) + i for i in range(3)]
    start = torch.tensor(12345, device=DEVICE)
    sizes = record_tensor_sizes(monkeypatch, T)
    got = (*T.race(x, m, t, None, None, *stream, start, n), T.top_values(x, m, t, n))
    monkeypatch.undo()
    assert sizes and max(sizes) < rows * cols // 10, max(sizes)
    want = (*torch_shard.race(x, m, t, None, None, *stream, start, n), torch_shard.top_values(x, m, t, n))
    torch.testing.assert_close(got[0], want[0], rtol=EXP_RTOL, atol=LOG_ATOL)
    for a, b in zip(got[1:], want[1:]):
        assert torch.equal(a, b)


def test_grid_pieces_give_the_one_launch_results(monkeypatch) -> None:
    # the kernels add their piece's program-id offsets: a grid cut into pieces gives the same numbers
    x, m, t, cut, min_p = _case(torch.float32, 7)
    before = torch.zeros(ROWS, dtype=torch.float64, device=DEVICE)
    targets = torch.rand(ROWS, 3, generator=torch.Generator().manual_seed(8), dtype=torch.float64).to(DEVICE)
    seed, row_id, offset = (torch.arange(ROWS, device=DEVICE) for _ in range(3))
    start = torch.tensor(5, device=DEVICE)

    def run():
        mass = T.kept_mass(x, m, t, cut, min_p)
        return (
            mass,
            *T.search(x, m, t, cut, min_p, before, targets * mass[:, None]),
            T.histogram(x, m, t, cut, False, torch.zeros((ROWS, 1), dtype=torch.int64, device=DEVICE), 24),
            T.top_values(x, m, t, 9),
            *T.race(x, m, t, cut, min_p, seed, row_id, offset, start, 4),
        )

    whole = run()
    monkeypatch.setattr(triton_launch, "MAX_GRID_X", 4)
    monkeypatch.setattr(triton_launch, "MAX_GRID_YZ", 1)
    for a, b in zip(whole, run()):
        assert torch.equal(a, b)


def test_float64_and_strided_shards() -> None:
    x, m, t, cut, min_p = _case(torch.float32, 9)
    wide = torch.full((ROWS, 2 * COLS), 7.0, device=DEVICE)
    wide[:, ::2] = x
    strided = wide[:, ::2]  # column stride 2: copied once
    assert torch.equal(T.top_values(strided, m, t, 5), torch_shard.top_values(x, m, t, 5))
    torch.testing.assert_close(T.kept_mass(strided, m, t, cut, min_p), torch_shard.kept_mass(x, m, t, cut, min_p),
                               rtol=EXP_RTOL, atol=1e-300)  # fmt: skip
    x64 = x.double()
    m64, t64 = m.double(), t.double()
    assert torch.equal(T.kept_mass(x64, m64, t64, None, None), torch_shard.kept_mass(x64, m64, t64, None, None))


def test_distributed_picks_the_triton_kernels_for_cuda_tensors() -> None:
    require_backend("triton")
    x = torch.zeros(2, 3, device=DEVICE)
    with ss.use_backend("triton"):
        assert sd._shard_kernels(x) is (T if DEVICE.type == "cuda" else torch_shard)  # the interpreter: torch ops
        assert sd._shard_kernels(x.double()) is torch_shard
        assert sd._shard_kernels(x.half()) is (T if DEVICE.type == "cuda" else torch_shard)

"""CUDA grid limits (x <= 2**31 - 1, y and z <= 65,535) on every Triton launch, whatever the shape.

The launches for huge shapes are recorded, not run: meta tensors (nothing allocated), every kernel
replaced by a recorder, the planners' CUDA constants (as tests/test_aot.py does). A second set of
tests lowers the limits so that small shapes are cut into several launches in the interpreter, and
checks that the results are bitwise those of the one-launch grid.
"""

from __future__ import annotations

import math

import pytest
import torch

from .conftest import DEVICE, import_or_skip_off_ci

triton = import_or_skip_off_ci("triton", "the Triton launch wrappers")

from stablesoftmax.backends import triton_launch as L  # noqa: E402
from stablesoftmax.backends import triton_sampling as T  # noqa: E402
from stablesoftmax.backends import triton_shard as H  # noqa: E402
from stablesoftmax.backends import triton_softmax as S  # noqa: E402

SOFTMAX_KERNELS = ("_fwd_fused_kernel", "_fwd_looped_kernel", "_fwd_split_stats_kernel", "_fwd_split_write_kernel",
                   "_bwd_fused_kernel", "_bwd_looped_kernel")  # fmt: skip
SAMPLING_KERNELS = ("_stats_kernel", "_select_init_kernel", "_count_kernel", "_count_select_kernel",
                    "_mass_select_kernel", "_block_kernel", "_draw_kernel")  # fmt: skip
# The planner's GPU / interpreter constant pairs of the sampler (the recorded launches use the GPU ones).
SAMPLING_CONSTANTS = ("BLOCK", "TILE", "COUNT_BLOCK", "COUNT_CHUNK", "MASS_BLOCK", "MASS_CHUNK")


# --------------------------------------------------------------------------- grid_pieces


@pytest.mark.parametrize("grid", [(0,), (1,), (7,), (6, 5), (7, 1), (1, 9), (5, 4, 3), (3, 0)])
def test_grid_pieces_tile_the_grid_exactly_within_the_limits(monkeypatch, grid):
    monkeypatch.setattr(L, "MAX_GRID_X", 3)
    monkeypatch.setattr(L, "MAX_GRID_YZ", 2)
    seen = []
    for sub, off in L.grid_pieces(grid):
        assert len(sub) == len(off) == len(grid)
        assert sub[0] <= 3 and all(g <= 2 for g in sub[1:]), sub
        for idx in _programs(sub):
            seen.append(tuple(i + o for i, o in zip(idx, off)))
    assert sorted(seen) == sorted(_programs(grid))  # every program once, none twice, none outside


def test_grid_pieces_one_piece_within_the_limits():
    assert L.grid_pieces((2**31 - 1, 65535, 65535)) == [((2**31 - 1, 65535, 65535), (0, 0, 0))]
    big = 2**31 - 1
    assert L.grid_pieces((2**31, 65536)) == [
        ((big, 65535), (0, 0)), ((big, 1), (0, 65535)), ((1, 65535), (big, 0)), ((1, 1), (big, 65535)),
    ]  # fmt: skip


def _programs(grid):
    if not grid:
        return [()]
    return [(i, *rest) for i in range(grid[0]) for rest in _programs(grid[1:])]


# --------------------------------------------------------------------------- huge shapes, recorded


class _Recorder:
    def __init__(self, name, fn, log):
        self.name, self.arg_names, self.log = name, list(fn.arg_names), log

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            named = dict(zip(self.arg_names, args))
            self.log.append((self.name, tuple(grid), named.get("pid0", 0), named.get("pid1", 0)))

        return launch


@pytest.fixture
def launches(monkeypatch):
    """Record every launch as a GPU with 132 SMs would plan it (the planners' CUDA constants)."""
    monkeypatch.setattr(S, "_sm_count", lambda device_type, index: 132)
    for name in SAMPLING_CONSTANTS:
        monkeypatch.setattr(T, f"_{name}_INTERP", getattr(T, f"_{name}_GPU"))
    log = []
    for mod, names in ((S, SOFTMAX_KERNELS), (T, SAMPLING_KERNELS), (H, ("_hist_kernel", "_mass_round_kernel"))):
        for name in names:
            monkeypatch.setattr(mod, name, _Recorder(name, getattr(mod, name), log))
    return log


def _check(log, expect, rounds=None):
    """Every recorded grid within CUDA's limits; per kernel the pieces cover exactly the grid ``expect[name]``,
    ``rounds[name]`` times over (default once: the radix select launches its kernels once a round)."""
    assert log
    covered, times = {}, {}
    for name, grid, pid0, pid1 in log:
        g = tuple(grid) + (1,) * (3 - len(grid))
        assert 1 <= g[0] <= 2**31 - 1 and 1 <= g[1] <= 65535 and 1 <= g[2] <= 65535, (name, grid)
        rect = (pid0, pid1, g[0], g[1])
        times[name, rect] = times.get((name, rect), 0) + 1
        if times[name, rect] == 1:
            covered.setdefault(name, []).append(rect)
    assert set(covered) == set(expect), (sorted(covered), sorted(expect))
    for (name, _), n in times.items():
        assert n == (rounds or {}).get(name, 1), (name, n)
    for name, rects in covered.items():
        want = tuple(expect[name]) + (1,) * (2 - len(expect[name]))
        assert sum(a * b for _, _, a, b in rects) == want[0] * want[1], name
        assert max(p0 + a for p0, _, a, _ in rects) == want[0] and max(p1 + b for _, p1, _, b in rects) == want[1]
        # disjoint: sorted by origin, no two pieces start at the same program
        assert len({(p0, p1) for p0, p1, _, _ in rects}) == len(rects)


def _meta(rows, cols, dtype=torch.float16):
    return torch.empty(rows, cols, dtype=dtype, device="meta")


def _sample(x, n, replacement=True, top_k=False):
    rows = x.shape[0]
    i64 = dict(dtype=torch.int64, device="meta")
    f32 = dict(dtype=torch.float32, device="meta")
    seed = torch.empty(rows, **i64)
    T.sample_rows(
        x, torch.empty(rows, **f32), torch.empty(rows, **i64) if top_k else None, None, None, seed, seed, seed,
        n, replacement, torch.empty(rows, n, **i64), torch.empty(rows, n, **f32),
    )  # fmt: skip


def test_draw_past_65535_sample_groups(launches):
    """``_draw`` at V = 152,064 put ``cdiv(n, 8)`` sample groups on grid y: past 65,535 from n ~ 524,281."""
    n = 2**20
    _sample(_meta(1, 152064), n)
    plan = T._Plan(1, 152064, n, torch.device("cuda"))
    assert triton.cdiv(n, plan.SB) > 65535  # the case that failed
    groups = triton.cdiv(n, plan.SB)
    _check(launches, {"_stats_kernel": (1, plan.nb), "_block_kernel": (1, plan.nb), "_draw_kernel": (1, groups)})


@pytest.mark.parametrize("cols", [67_107_841, 2**27 + 5])
def test_stats_and_block_past_65535_blocks(launches, cols):
    """``_stats`` / ``_block`` put ``cdiv(V, 1024)`` blocks on grid y: past 65,535 for V > 67,107,840."""
    x = _meta(2, cols)
    _sample(x, 1, top_k=True)
    plan = T._Plan(2, cols, 1, torch.device("cuda"))
    assert plan.nb > 65535
    grid_r = triton.cdiv(2, plan.R)
    _check(launches, {"_stats_kernel": (grid_r, plan.nb), "_select_init_kernel": (triton.cdiv(2, plan.RI),),
                      "_count_kernel": (2, plan.nbc), "_count_select_kernel": (2,), "_block_kernel": (grid_r, plan.nb),
                      "_draw_kernel": (2, 1)},
           rounds={"_count_kernel": 4})  # fmt: skip
    launches.clear()
    seed = torch.empty(2, dtype=torch.int64, device="meta")
    T.sample_probs(x, seed, seed, seed, 1, True, torch.empty(2, 1, dtype=torch.int64, device="meta"))
    _check(launches, {"_block_kernel": (grid_r, plan.nb), "_draw_kernel": (2, 1)})


def test_radix_select_past_65535_blocks(launches):
    """The top-k count and top-p mass rounds put ``cdiv(V, HB)`` blocks on grid y: past 65,535 for V > 2**29."""
    rows = 3
    seed = torch.empty(rows, dtype=torch.int64, device="meta")
    x = _meta(rows, 2**29 + 7)  # past 65,535 count and mass blocks
    f32 = torch.empty(rows, dtype=torch.float32, device="meta")
    tokens = torch.empty(rows, 1, dtype=torch.int64, device="meta")
    T.sample_rows(x, f32, seed, f32, None, seed, seed, seed, 1, True, tokens, None)
    plan = T._Plan(rows, x.shape[1], 1, torch.device("cuda"))
    assert plan.nbc > 65535 and plan.nbm > 65535
    grid_r = triton.cdiv(rows, plan.R)
    # 8 mass rounds with a select kernel after each (too many mass blocks a row to take the step in the rounds)
    rounds = {"_count_kernel": 4, "_mass_round_kernel": 8, "_mass_select_kernel": 8}
    _check(launches, {"_stats_kernel": (grid_r, plan.nb), "_select_init_kernel": (triton.cdiv(rows, plan.RI),),
                      "_count_kernel": (rows, plan.nbc), "_count_select_kernel": (rows,),
                      "_mass_round_kernel": (rows, plan.nbm), "_mass_select_kernel": (rows,),
                      "_block_kernel": (grid_r, plan.nb), "_draw_kernel": (rows, 1)}, rounds)  # fmt: skip


def test_softmax_past_2_31_programs(launches):
    """One program per row (looped, backward) or per packed tile (fused) on grid x: past 2**31 - 1 for huge batches."""
    rows = 2**31 + 3
    x = _meta(rows, 8)  # fused: 512 rows per program
    S.softmax_forward(x, x, False, rows_per_program=1)
    S.softmax_backward(x, x, x, True, rows_per_program=1)
    _check(launches, {"_fwd_fused_kernel": (rows,), "_bwd_fused_kernel": (rows,)})
    launches.clear()
    x = _meta(rows, 20000)  # looped: one program per row
    S.softmax_forward(x, x, True)
    S.softmax_backward(x, x, x, False)
    _check(launches, {"_fwd_looped_kernel": (rows,), "_bwd_looped_kernel": (rows,)})


def test_softmax_split_grid_within_limits(launches):
    x = _meta(3, 2**26)
    S.softmax_forward(x, x, False)
    plan = S._plan(3, 2**26, torch.device("cuda"))
    assert plan.path == "split" and plan.split <= S.MAX_SPLIT
    _check(launches, {"_fwd_split_stats_kernel": (3, plan.split), "_fwd_split_write_kernel": (3, plan.split)})


# --------------------------------------------------------------------------- the cut grids, run


@pytest.fixture
def tiny_limits(monkeypatch):
    """Limits low enough that the small shapes below need several launches per kernel."""

    def lower():
        monkeypatch.setattr(L, "MAX_GRID_X", 2)
        monkeypatch.setattr(L, "MAX_GRID_YZ", 2)

    return lower


def _softmax_cases(gen):
    x_short = torch.randn(7, 37, generator=gen).mul_(6).to(DEVICE)
    x_long = torch.randn(5, 300, generator=gen).mul_(6).half().to(DEVICE)
    x_long[1, 17] = math.inf
    x_long[3, 200] = math.nan
    return [
        ("fused", x_short, dict(rows_per_program=1)),
        ("looped", x_long, dict(block_size=32, split=1)),
        ("split", x_long, dict(block_size=32, split=5)),
    ]


@pytest.mark.parametrize("log", [False, True])
def test_softmax_cut_grids_give_the_same_bits(tiny_limits, gen, log):
    cases = _softmax_cases(gen)
    want = []
    for path, x, kw in cases:
        assert S._plan(*x.shape, x.device, block_size=kw.get("block_size"), split=kw.get("split"),
                       rows_per_program=kw.get("rows_per_program")).path == path  # fmt: skip
        out = torch.empty_like(x, dtype=torch.float32)
        S.softmax_forward(x, out, log, **kw)
        grad = torch.empty_like(out)
        S.softmax_backward(out, torch.ones_like(out), grad, log, **{k: v for k, v in kw.items() if k != "split"})
        want.append((out, grad))
    tiny_limits()
    assert len(L.grid_pieces((7,))) == 4 and len(L.grid_pieces((5, 5))) == 9
    for (path, x, kw), (out_want, grad_want) in zip(cases, want):
        out = torch.empty_like(out_want)
        S.softmax_forward(x, out, log, **kw)
        grad = torch.empty_like(out)
        S.softmax_backward(out, torch.ones_like(out), grad, log, **{k: v for k, v in kw.items() if k != "split"})
        torch.testing.assert_close(out, out_want, rtol=0, atol=0, equal_nan=True, msg=path)
        torch.testing.assert_close(grad, grad_want, rtol=0, atol=0, equal_nan=True, msg=path)


def _draws(logits, n, replacement, top_k):
    rows = logits.shape[0]
    dev = logits.device
    temperature = torch.tensor([0.7, 1.0, 0.0, 1.3, 0.9], device=dev)[:rows]
    seed = torch.full((rows,), 1234, dtype=torch.int64, device=dev)
    row_id = torch.arange(rows, dtype=torch.int64, device=dev)
    offset = torch.zeros(rows, dtype=torch.int64, device=dev)
    tokens = torch.empty(rows, n, dtype=torch.int64, device=dev)
    lp = torch.empty(rows, n, dtype=torch.float32, device=dev)
    k = torch.full((rows,), 40, dtype=torch.int64, device=dev) if top_k else None
    T.sample_rows(logits, temperature, k, None, None, seed, row_id, offset, n, replacement, tokens, lp)
    probs = torch.softmax(logits.float(), -1)
    ptok = torch.empty(rows, n, dtype=torch.int64, device=dev)
    T.sample_probs(probs, seed, row_id, offset, n, replacement, ptok)
    return tokens, lp, ptok


@pytest.mark.parametrize("replacement,top_k", [(True, False), (True, True), (False, False)])
def test_sampling_cut_grids_give_the_same_tokens(monkeypatch, tiny_limits, gen, replacement, top_k):
    # small blocks and tiles so that a 5 x 1000 call has several row groups, blocks and sample groups
    monkeypatch.setattr(T, "_BLOCK_INTERP", 128)
    monkeypatch.setattr(T, "_TILE_INTERP", 256)
    monkeypatch.setattr(T, "_COUNT_BLOCK_INTERP", 128)  # several blocks per row in the radix select's rounds
    monkeypatch.setattr(T, "_MASS_BLOCK_INTERP", 128)
    logits = torch.randn(5, 1000, generator=gen).mul_(3).half().to(DEVICE)
    n = 20 if replacement else 6
    plan = T._Plan(5, 1000, n, logits.device)
    assert triton.cdiv(5, plan.R) > 2 and plan.nb > 2 and (not replacement or triton.cdiv(n, plan.SB) > 2), vars(plan)
    assert plan.nbc > 2  # five rows of count blocks: several pieces each way
    want = _draws(logits, n, replacement, top_k)
    tiny_limits()
    got = _draws(logits, n, replacement, top_k)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)
    assert (want[0] >= 0).any()


@pytest.mark.parametrize("replacement,top_k", [(True, False), (True, True), (False, False)])
def test_rows_of_more_blocks_than_a_tile_read_their_block_summaries_in_pieces(monkeypatch, gen, replacement, top_k):
    # blocks of 16 columns, 63 a row, and block maxima / sums / arguments read 4 at a time (on a GPU: rows of
    # more than 4,096 blocks, V > 2^22): the tokens and log-probabilities of reading them all at once, bit for
    # bit (the interpreter's cumsum is sequential, and the pieces add the carry first); a greedy row, a row
    # whose maximum lies in the last piece, and a NaN row
    monkeypatch.setattr(T, "_BLOCK_INTERP", 16)
    logits = torch.randn(5, 1000, generator=gen).mul_(3).half()
    logits[1, 997] = 30.0  # row 1's maximum in the last block
    logits[2, 998] = 30.0  # the greedy row's argmax in the last piece
    logits[4, 500] = math.nan
    logits = logits.to(DEVICE)
    n = 20 if replacement else 6
    want = _draws(logits, n, replacement, top_k)
    monkeypatch.setattr(T, "_NB_TILE", 4)
    plan = T._Plan(5, 1000, n, logits.device)
    assert plan.nb == 63 and plan.NB_P2 == 4, vars(plan)
    got = _draws(logits, n, replacement, top_k)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)
    tokens, _, probs_tokens = got
    assert tokens[2, 0] == 998 and (tokens[2] == 998).all() == replacement  # greedy: the n largest without
    assert (tokens[4] == -1).all() and (tokens[[0, 1, 3]] >= 0).all()
    assert (probs_tokens[[0, 1, 3]] >= 0).all()


def _spy(monkeypatch, module, name):
    """The keyword arguments of every launch of ``module.name``, which still runs."""
    kernel, seen = getattr(module, name), []

    class Spy:
        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                seen.append(kwargs)
                return kernel[grid](*args, **kwargs)

            return launch

    monkeypatch.setattr(module, name, Spy())
    return seen


@pytest.mark.parametrize("replacement", [True, False])
def test_rows_of_many_blocks_take_their_max_computed_once(monkeypatch, gen, replacement):
    # blocks of 16 columns, 63 a row, and "many blocks" lowered to 8 (on a GPU: rows of more than 1,024 blocks,
    # V > 2^20, whose block kernel programs would each read all of the row's block maxima): without top-k /
    # top-p the block kernels are given the row's max, computed once; the tokens and log-probabilities are
    # those of each program's own max, bit for bit. A row with two +inf, a greedy row, a row of -inf, a NaN row.
    monkeypatch.setattr(T, "_BLOCK_INTERP", 16)
    logits = torch.randn(5, 1000, generator=gen).mul_(3).half()
    logits[1, [3, 990]] = math.inf
    logits[2, 998] = 30.0
    logits[3] = -math.inf
    logits[4, 500] = math.nan
    logits = logits.to(DEVICE)
    n = 20 if replacement else 6
    spied = _spy(monkeypatch, T, "_block_kernel")
    want = _draws(logits, n, replacement, False)
    assert [kw["ROW_MAX"] for kw in spied] == [False, False]  # (logits, then probabilities)
    monkeypatch.setattr(T, "_ROW_MAX_BLOCKS", 8)
    got = _draws(logits, n, replacement, False)
    assert [kw["ROW_MAX"] for kw in spied[2:]] == [True, False]
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)
    tokens, lp, _ = got
    inf_draws = tokens[1] if replacement else tokens[1, :2]  # (without replacement: then the row runs out)
    assert set(inf_draws.tolist()) == {3, 990} and (tokens[1, 2:] == -1).all() != replacement
    assert tokens[2, 0] == 998 and (tokens[2] == 998).all() == replacement
    assert (tokens[3:] == -1).all() and (tokens[[0, 2]] >= 0).all()
    assert torch.isfinite(lp[[0, 2]]).all() and lp[3:].isnan().all()


def test_top_k_and_top_p_rows_take_the_select_row_max(monkeypatch, gen):
    # the select's set-up kernel has each row's max: the block kernels are given it at any row length
    spied = _spy(monkeypatch, T, "_block_kernel")
    logits = torch.randn(5, 300, generator=gen).mul_(3).half().to(DEVICE)
    _draws(logits, 4, True, True)
    assert [kw["ROW_MAX"] for kw in spied] == [True, False]

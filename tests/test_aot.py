"""The launch configurations the GPU planners choose, recorded without a GPU (meta tensors, every
kernel replaced by a recorder, the planner's CUDA constants), against the limits the AOT check
(``.ci/aot.sh``) found necessary for zero register spills on sm_80 / sm_90 / sm_100.

The AOT check itself compiles these configurations; these tests pin the planner decisions that
keep them spill-free, so a change to the planner fails here first, in seconds.
"""

from __future__ import annotations

import pytest
import torch
from conftest import import_or_skip_off_ci

triton = import_or_skip_off_ci("triton", "the AOT compiles need the triton package")

from stablesoftmax.backends import triton_sampling as T  # noqa: E402
from stablesoftmax.backends import triton_shard as H  # noqa: E402
from stablesoftmax.backends import triton_softmax as S  # noqa: E402


class _Recorder:
    def __init__(self, name, log):
        self.name, self.log = name, log

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.log.append((self.name, tuple(grid), kwargs))


@pytest.fixture
def sampling_launches(monkeypatch):
    """Record the sampling launches as a GPU would plan them (the planner's CUDA constants)."""
    for name in ("BLOCK", "TILE", "COUNT_BLOCK", "COUNT_CHUNK", "MASS_BLOCK", "MASS_CHUNK"):
        monkeypatch.setattr(T, f"_{name}_INTERP", getattr(T, f"_{name}_GPU"))
    log = []
    for name in ("_stats_kernel", "_select_init_kernel", "_count_kernel", "_count_select_kernel",
                 "_mass_select_kernel", "_block_kernel", "_draw_kernel"):  # fmt: skip
        monkeypatch.setattr(T, name, _Recorder(name, log))
    monkeypatch.setattr(H, "_mass_round_kernel", _Recorder("_mass_round_kernel", log))
    return log


def _sample(rows, cols, dtype=torch.float16):
    meta = dict(device="meta")
    i64 = dict(dtype=torch.int64, **meta)
    f32 = dict(dtype=torch.float32, **meta)
    seed = torch.empty(rows, **i64)
    T.sample_rows(
        torch.empty(rows, cols, dtype=dtype, **meta), torch.empty(rows, **f32), torch.empty(rows, **i64),
        torch.empty(rows, **f32), torch.empty(rows, **f32), seed, seed, seed, 1, True,
        torch.empty(rows, 1, **i64), None,
    )  # fmt: skip


@pytest.mark.parametrize("rows,cols", [(4096, 8), (4096, 16), (512, 100), (4096, 1000), (64, 152064), (1, 2**24)])
def test_radix_select_tiles_per_thread(sampling_launches, rows, cols):
    """Values a thread holds in the radix select's kernels (4 warps): the count rounds' histogram step,
    the (CH, 256) float64 compare-and-sum of the mass rounds, the select kernels' (JB, 256) partial
    histograms and the set-up kernel's block maxima stay within the sizes compiled spill-free."""
    _sample(rows, cols)
    by_name = {}
    for name, _, kw in sampling_launches:
        by_name.setdefault(name, []).append(kw)
    assert len(by_name["_count_kernel"]) == 4 and len(by_name["_mass_round_kernel"]) == 8  # 8-bit and 4-bit rounds
    for kw in by_name["_count_kernel"]:
        assert kw["CH"] <= 2048 and kw["HB"] % kw["CH"] == 0, kw
    for kw in by_name["_mass_round_kernel"]:
        assert kw["CH"] * (1 << kw["BITS"]) // 128 <= 32 and kw["HB"] % kw["CH"] == 0, kw
    for kw in by_name["_mass_select_kernel"] + by_name["_mass_round_kernel"]:
        assert kw["JB"] * (1 << kw["BITS"]) // 128 <= 16, kw
    (kw,) = by_name["_select_init_kernel"]
    assert kw["R"] * kw["NB_P2"] <= 4096 or kw["R"] == 1, kw
    # launches: stats, set-up, 4 count rounds (counts added atomically, each round's select step in its own
    # programs), the last top-k step, 8 mass rounds (their steps in the next round's programs where a row has
    # at most _FUSED_SELECT_BLOCKS mass blocks, else a select kernel between rounds), the last top-p step,
    # block, draw
    fused = T._Plan(rows, cols, 1, torch.device("cuda")).nbm <= T._FUSED_SELECT_BLOCKS
    assert len(by_name["_count_select_kernel"]) == 1
    assert len(by_name["_mass_select_kernel"]) == (1 if fused else 8)
    assert len(sampling_launches) == (18 if fused else 25), [name for name, _, _ in sampling_launches]


def test_fused_softmax_of_the_longest_fused_row_holds_16_elements_per_thread():
    """At 16,384 columns with 16 warps (32 elements a thread), ptxas spilled on sm_80 (float16, odd lengths)."""
    for cols in (8207, 16384):
        plan = S._plan(1, cols, torch.device("cuda"))
        assert plan.path == "fused" and plan.block == 16384
        assert plan.block * plan.rows_per_program // (32 * plan.num_warps) <= 16, plan


@pytest.mark.parametrize("cols", [16, 100, 128, 1000, 1024])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_short_fused_rows_lie_within_one_warp(cols, dtype):
    """Fused tiles of rows up to 1,024 columns (the AOT check's SASS budget rests on this layout): each row's lanes
    within one warp (warp-local reductions; the row's normaliser computed once per thread, not once per row of the
    tile), 32 elements of one row a thread, every lane holding data; unaligned rows (scalar accesses) too."""
    x = torch.empty(64, cols, dtype=dtype, device="meta")
    vector = S._vector(cols, x)
    assert vector == (16 // x.element_size() if cols % 16 == 0 else 1)
    plan = S._plan(64, cols, torch.device("cuda"), vector=vector)
    assert plan.path == "fused"
    lanes_per_row = max(plan.block // plan.pieces // vector, 1)
    assert lanes_per_row <= 32 and 32 % lanes_per_row == 0, plan
    assert plan.block // lanes_per_row == min(32, plan.block), plan
    assert plan.rows_per_program * lanes_per_row >= 32 * plan.num_warps, plan


def _aot_tool():
    """The AOT sweep tool as a module; the environment it sets for its compiles (no interpreter) undone."""
    import importlib.util
    import os
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / ".ci" / "aot_sweep.py"
    spec = importlib.util.spec_from_file_location("aot_sweep", path)
    mod = importlib.util.module_from_spec(spec)
    saved = dict(os.environ)
    try:
        spec.loader.exec_module(mod)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return mod


_SASS = """
        /*0000*/                   S2R R0, SR_TID.X ;
        /*0010*/                   ISETP.GE.AND P0, PT, R0, 0x4, PT ;
        /*0020*/               @P0 BRA 0x0060 ;
        /*0030*/                   FADD R1, R1, R2 ;
        /*0040*/                   FADD R1, R1, R3 ;
        /*0050*/                   BRA 0x0020 ;
        /*0060*/                   CALL.REL.NOINC 0x00b0 ;
        /*0070*/               @P1 EXIT ;
        /*0080*/                   STG.E desc[UR4][R2.64], R1 ;
        /*0090*/                   EXIT ;
        /*00a0*/                   BRA 0x00a0;
        /*00b0*/                   MUFU.RCP R4, R5 ;
        /*00c0*/                   RET.REL.NODEC R20 0x0 ;
"""


def test_sass_counts_leave_out_subroutines_and_padding():
    # the AOT check's SASS per element: the loop's span, and the kernel's reachable instructions: not the
    # division's slow-path subroutine (called; it returns) nor the padding past the last EXIT
    counts = _aot_tool().sass_counts(_SASS)
    assert counts == dict(sass_total=13, sass_loop=4, sass_loops=[4], sass_reach=10), counts


def test_softmax_without_the_rare_branches_is_the_usual_path(monkeypatch, gen):
    # what the AOT check counts (the kernels compiled with _RARE_CASES off) computes the same outputs on rows
    # without +inf, on the fused and the long-row paths (interpreter)
    x = torch.randn(3, 20_000, generator=gen).mul_(4).half()
    x[1, 7] = -float("inf")
    short = x[:, :300].contiguous()

    def outputs():
        got = []
        for t in (x, short):
            for lg in (False, True):
                out = torch.empty_like(t)
                S.softmax_forward(t, out, lg)
                got.append(out)
        return got

    want = outputs()
    monkeypatch.setattr(S, "_RARE_CASES", triton.language.constexpr(False))
    for got, expected in zip(outputs(), want, strict=True):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)

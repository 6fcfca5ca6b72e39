"""The launch configurations the GPU planners choose, recorded without a GPU (meta tensors, every
kernel replaced by a recorder, the planner's CUDA constants), against the limits the AOT check
(``.ci/aot.sh``) found necessary for zero register spills on sm_80 / sm_90 / sm_100.

The AOT check itself compiles these configurations; these tests pin the planner decisions that
keep them spill-free, so a change to the planner fails here first, in seconds.
"""

from __future__ import annotations

import pytest
import torch

triton = pytest.importorskip("triton")

from stablesoftmax.backends import triton_sampling as T  # noqa: E402
from stablesoftmax.backends import triton_softmax as S  # noqa: E402


class _Recorder:
    def __init__(self, name, log):
        self.name, self.log = name, log

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.log.append((self.name, tuple(grid), kwargs))


@pytest.fixture
def sampling_launches(monkeypatch):
    """Record the sampling launches as a GPU would plan them (the planner's CUDA constants)."""
    monkeypatch.setattr(T, "_BLOCK_INTERP", T._BLOCK_GPU)
    monkeypatch.setattr(T, "_TILE_INTERP", T._TILE_GPU)
    monkeypatch.setattr(T, "_FBLOCK_INTERP", T._FBLOCK_GPU)
    log = []
    for name in ("_stats_kernel", "_threshold_kernel", "_block_kernel", "_draw_kernel"):
        monkeypatch.setattr(T, name, _Recorder(name, log))
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


@pytest.mark.parametrize("rows,cols", [(4096, 8), (4096, 16), (512, 100), (4096, 1000), (64, 152064), (1, 152064)])
def test_threshold_kernel_rows_per_program_and_register_cap(sampling_launches, rows, cols):
    """512 short rows per program spilled KB per thread (per-row bisection state); with ptxas left to
    choose, one row per program still spilled at 64-72 registers on sm_80."""
    _sample(rows, cols)
    (kw,) = [kw for name, _, kw in sampling_launches if name == "_threshold_kernel"]
    assert kw["R"] <= T._MAX_THRESHOLD_ROWS
    assert kw["R"] == 1 or kw["R"] * kw["FB"] <= 1024, kw
    assert kw["maxnreg"] == 128


def test_fused_softmax_of_the_longest_fused_row_holds_16_elements_per_thread():
    """At 16,384 columns with 16 warps (32 elements a thread), ptxas spilled on sm_80 (float16, odd lengths)."""
    for cols in (8207, 16384):
        plan = S._plan(1, cols, torch.device("cuda"))
        assert plan.path == "fused" and plan.block == 16384
        assert plan.block * plan.rows_per_program // (32 * plan.num_warps) <= 16, plan

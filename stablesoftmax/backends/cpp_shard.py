"""Thin adapter from tensors to the C++ shard kernels (``csrc/shard_kernels.h``) of vocabulary-parallel
sampling; the interface and the rules are those of :mod:`.torch_shard`. CPU tensors, float16 /
bfloat16 / float32 logits (float64 takes :mod:`.torch_shard`). Each call reads the shard once (the
search reads its blocks again), vectorised on the CPU's ISA, one thread per row.
"""

from __future__ import annotations

import torch

from .. import _C
from .torch_shard import z_of

__all__ = ["histogram", "kept_mass", "race", "search", "top_values", "z_of"]

_DTYPE_CODES = {torch.float16: 0, torch.bfloat16: 1, torch.float32: 2}


def _row(t: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """A per-row ``(rows, 1)`` or ``(rows,)`` parameter as a contiguous ``(rows,)`` tensor of ``dtype``."""
    if t is None:
        return None
    return t.reshape(-1).to(dtype=dtype).contiguous()


def _ptr(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()


def _common(x: torch.Tensor, m, t, cut, min_p) -> tuple[tuple, list[torch.Tensor | None]]:
    """The shard arguments of every entry point, and the tensors that must outlive the call."""
    x = x if x.stride(1) == 1 or x.shape[1] <= 1 else x.contiguous()
    keep = [x, *(_row(v, torch.float32) for v in (m, t, cut, min_p))]
    args = (x.data_ptr(), x.shape[0], x.shape[1], x.stride(0), _DTYPE_CODES[x.dtype], *(_ptr(v) for v in keep[1:]))
    return args, keep


def kept_mass(x: torch.Tensor, m, t, cut, min_p) -> torch.Tensor:
    """See :func:`.torch_shard.kept_mass`."""
    args, _keep = _common(x, m, t, cut, min_p)
    mass = torch.empty(x.shape[0], dtype=torch.float64)
    _C.shard_mass(*args, mass.data_ptr(), torch.get_num_threads())
    return mass


def search(x: torch.Tensor, m, t, cut, min_p, before: torch.Tensor, targets: torch.Tensor):
    """See :func:`.torch_shard.search`."""
    args, _keep = _common(x, m, t, cut, min_p)
    before = before.to(torch.float64).contiguous()
    targets = targets.to(torch.float64).contiguous()
    idx = torch.empty(targets.shape, dtype=torch.int64)
    last = torch.empty(x.shape[0], dtype=torch.int64)
    n = targets.shape[1]
    _C.shard_search(*args, before.data_ptr(), targets.data_ptr(), n, idx.data_ptr(), last.data_ptr(),
                    torch.get_num_threads())  # fmt: skip
    return idx, last


def histogram(x: torch.Tensor, m, t, cut, counts: bool, prefix: torch.Tensor, shift: int) -> torch.Tensor:
    """See :func:`.torch_shard.histogram` (float32 keys: ``shift`` in 24, 16, 8, 0)."""
    args, _keep = _common(x, m, t, cut, None)
    prefix = prefix.reshape(-1).to(torch.int64).contiguous()
    hist = torch.empty((x.shape[0], 256), dtype=torch.float64)
    _C.shard_histogram(*args, bool(counts), prefix.data_ptr(), shift, hist.data_ptr(), torch.get_num_threads())
    return hist


def top_values(x: torch.Tensor, m, t, k: int) -> torch.Tensor:
    """See :func:`.torch_shard.top_values`."""
    args, _keep = _common(x, m, t, None, None)
    top = torch.empty((x.shape[0], k), dtype=torch.float32)
    _C.shard_top_values(*args, k, top.data_ptr(), torch.get_num_threads())
    return top


def race(x: torch.Tensor, m, t, cut, min_p, seed, row_id, offset, col0: torch.Tensor, n: int):
    """See :func:`.torch_shard.race`."""
    args, _keep = _common(x, m, t, cut, min_p)
    stream = [v.reshape(-1).to(torch.int64).contiguous() for v in (seed, row_id, offset)]
    rows = x.shape[0]
    keys = torch.empty((rows, n), dtype=torch.float32)
    ids = torch.empty((rows, n), dtype=torch.int64)
    count = torch.empty(rows, dtype=torch.int64)
    _C.shard_race(*args, *(v.data_ptr() for v in stream), int(col0), n, keys.data_ptr(), ids.data_ptr(),
                  count.data_ptr(), torch.get_num_threads())  # fmt: skip
    return keys, ids, count

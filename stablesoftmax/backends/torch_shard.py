"""Pure-torch shard kernels of vocabulary-parallel sampling (:mod:`stablesoftmax.distributed`).

Each rank holds the columns ``col0 .. col0 + cols - 1`` of the logits. The policy layer finds
the global row maximum ``m`` and turns every filter into per-row thresholds; these kernels do
the per-shard passes, so that only a few numbers per row cross the process group. On a row,
with ``s`` from the softmax shift rule and ``t`` the temperature (1 for greedy rows)::

    z_i = -inf if s_i == -inf else s_i / t        e_i = exp(z_i)
    kept_i = e_i > 0  and  z_i >= cut  and  e_i >= min_p        w_i = e_i if kept_i else 0

``cut`` (top-k and top-p, found by the policy layer as a value of ``z``) and ``min_p`` are
``(rows, 1)`` tensors or ``None`` (off). ``m``, ``t``, ``cut`` and ``min_p`` are in the
accumulation dtype (float32; float64 for float64 logits). The C++ and Triton shard kernels
compute the same numbers (the mass and prefix sums in another order of float64 additions).
"""

from __future__ import annotations

import torch

from .torch_sampling import _counters, pad_columns, philox, race_uniform
from .torch_softmax import _shifted

__all__ = ["histogram", "kept_mass", "key_value", "order_key", "race", "search", "top_values", "z_of"]

_NEG_INF = float("-inf")


def z_of(x: torch.Tensor, m: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``z = s / t`` of logits ``x`` (any shape broadcasting with ``m`` and ``t``), ``-inf`` kept."""
    s = _shifted(x, m, m.dtype)
    return torch.where(s == _NEG_INF, _NEG_INF, s / t)


def _weights(
    x: torch.Tensor, m: torch.Tensor, t: torch.Tensor, cut: torch.Tensor | None, min_p: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(z, w)``: the scaled logits and the kept weights (0 where dropped)."""
    z = z_of(x, m, t)
    e = torch.exp(z)
    keep = e > 0
    if cut is not None:
        keep &= z >= cut
    if min_p is not None:
        keep &= e >= min_p
    return z, torch.where(keep, e, 0)


def kept_mass(
    x: torch.Tensor, m: torch.Tensor, t: torch.Tensor, cut: torch.Tensor | None, min_p: torch.Tensor | None
) -> torch.Tensor:
    """``(rows,)`` float64: the sum of the kept weights ``w`` of each row of this shard."""
    return torch.cumsum(_weights(x, m, t, cut, min_p)[1].to(torch.float64), dim=1)[:, -1]


def search(
    x: torch.Tensor,
    m: torch.Tensor,
    t: torch.Tensor,
    cut: torch.Tensor | None,
    min_p: torch.Tensor | None,
    before: torch.Tensor,
    targets: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse-CDF search of this shard: ``(idx, last)``.

    ``before (rows,)`` float64 is the kept mass of the ranks before this one and ``targets (rows, n)``
    float64 the draws ``u * S``. ``idx (rows, n)`` int64 is the lowest local column whose inclusive
    prefix ``before + sum(w[:i + 1])`` exceeds the target with ``w_i > 0`` (``cols`` where none does:
    the target lies beyond this shard); ``last (rows,)`` is the last local column with ``w > 0``
    (``-1`` if none).
    """
    w = _weights(x, m, t, cut, min_p)[1]
    cdf = before[:, None] + torch.cumsum(w.to(torch.float64), dim=1)
    idx = torch.searchsorted(cdf, targets, right=True)
    cols = torch.arange(x.shape[1], device=x.device)
    last = torch.where(w > 0, cols, -1).amax(dim=1)
    return idx, last


def order_key(z: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Unsigned order-preserving bits of ``z`` (float32 or float64) in int64, and their width.

    ``-0.0`` is folded onto ``+0.0`` first (they compare equal). For float64 the key is the
    unsigned order in two's complement (top bit flipped), read only byte by byte.
    """
    z = z + 0.0
    if z.dtype == torch.float32:
        bits = z.view(torch.int32).to(torch.int64)
        signed = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
        return signed + 2**31, 32
    bits = z.view(torch.int64)
    signed = torch.where(bits < 0, bits ^ 0x7FFFFFFFFFFFFFFF, bits)
    return signed ^ -(2**63), 64


def key_value(key: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The value of ``dtype`` (float32 or float64) whose order key (:func:`order_key`) is ``key`` (int64)."""
    if dtype == torch.float32:
        signed = key - 2**31
        bits = torch.where(signed < 0, signed ^ 0x7FFFFFFF, signed)
        return bits.to(torch.int32).view(torch.float32)
    signed = key ^ -(2**63)
    return torch.where(signed < 0, signed ^ 0x7FFFFFFFFFFFFFFF, signed).view(torch.float64)


def histogram(
    x: torch.Tensor,
    m: torch.Tensor,
    t: torch.Tensor,
    cut: torch.Tensor | None,
    counts: bool,
    prefix: torch.Tensor,
    shift: int,
) -> torch.Tensor:
    """One round of the radix select: ``(rows, 256)`` float64.

    Over the entries with weight ``> 0`` (``w``; with ``counts``, 1 for every ``z > -inf`` at or
    above ``cut``) whose order key (:func:`order_key` of ``z``) agrees with ``prefix (rows, 1)``
    int64 above bit ``shift + 8``: the summed weight per value of the key's byte at ``shift``.
    """
    z, w = _weights(x, m, t, cut, None)
    if counts:
        w = (z > _NEG_INF).to(torch.float64) if cut is None else ((z > _NEG_INF) & (z >= cut)).to(torch.float64)
    key, width = order_key(z)
    live = w > 0
    if shift + 8 < width:
        high = (key >> (shift + 8)) & ((1 << (width - shift - 8)) - 1)
        live &= high == prefix
    slot = torch.where(live, (key >> shift) & 0xFF, 256)
    hist = torch.zeros((x.shape[0], 257), dtype=torch.float64, device=x.device)
    return hist.scatter_add_(1, slot, w.to(torch.float64))[:, :256]


def top_values(x: torch.Tensor, m: torch.Tensor, t: torch.Tensor, k: int) -> torch.Tensor:
    """``(rows, k)``: the ``k`` largest ``z`` of each row of this shard, decreasing, ``-inf`` past ``cols``."""
    z = z_of(x, m, t)
    cols = z.shape[1]
    return pad_columns(torch.topk(z, min(k, cols), dim=1).values, k, _NEG_INF)


def _exponentials(
    seed: torch.Tensor, row_id: torch.Tensor, offset: torch.Tensor, col0: torch.Tensor, cols: int
) -> torch.Tensor:
    """``(rows, cols)`` Exp(1) draws of the race for the global columns ``col0 .. col0 + cols - 1``.

    Global column ``i`` reads word ``i % 4`` of Philox counter ``c0 = i // 4``, as in the single-device race.
    """
    c1, c2, c3 = (v[:, None] for v in _counters(row_id, offset))
    groups = cols // 4 + 2
    c0 = (col0 // 4 + torch.arange(groups, device=seed.device, dtype=torch.int64))[None, :]
    words = torch.stack(philox(seed[:, None], c0, c1, c2, c3), dim=-1).flatten(1)
    words = words.index_select(1, col0 % 4 + torch.arange(cols, device=seed.device, dtype=torch.int64))
    return -torch.log(race_uniform(words))


def race(
    x: torch.Tensor,
    m: torch.Tensor,
    t: torch.Tensor,
    cut: torch.Tensor | None,
    min_p: torch.Tensor | None,
    seed: torch.Tensor,
    row_id: torch.Tensor,
    offset: torch.Tensor,
    col0: torch.Tensor,
    n: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """This shard's part of the exponential race: ``(keys, ids, count)``.

    ``keys (rows, n)`` are the ``n`` largest keys ``z_i - log E_i`` over the kept entries, decreasing
    (``-inf`` past them), with ``E_i`` from the Philox word of the global column ``col0 + i``;
    ``ids (rows, n)`` int64 are their global columns (``-1`` past them); ``count (rows,)`` int64 is
    the number of kept entries.
    """
    z, w = _weights(x, m, t, cut, min_p)
    cols = w.shape[1]
    positive = w > 0
    exps = _exponentials(seed, row_id, offset, col0, cols)
    key = torch.where(positive, z - torch.log(exps), _NEG_INF)
    top = torch.topk(key, min(n, cols), dim=1)
    keys, ids = top.values, top.indices + col0
    ids = torch.where(keys > _NEG_INF, ids, -1)
    return pad_columns(keys, n, _NEG_INF), pad_columns(ids, n, -1), positive.sum(dim=1)

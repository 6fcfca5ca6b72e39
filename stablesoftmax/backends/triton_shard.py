"""Triton shard kernels of vocabulary-parallel sampling (:mod:`stablesoftmax.distributed`) on CUDA.

The interface and the rules are those of :mod:`.torch_shard` (the reference); this module computes
the same numbers with Triton kernels for the per-element work and a few small, sync-free torch ops
(``cumsum``, ``searchsorted``, ``topk``) on top. float16 / bfloat16 / float32 logits; float64 and
empty shards take :mod:`.torch_shard`. Nothing here synchronises with the host: the column offset
``col0`` is read on the device (the CUDA-graph promise of ``validate=False``).

Launch plan (``B`` columns per block, ``nb = cdiv(cols, B)``; every grid through
:func:`~.triton_launch.grid_pieces`):

``_mass_kernel``    grid (rows, nb): the float64 sum of the kept weights ``w`` of each block and
                    its last kept column -> (rows, nb). :func:`kept_mass` sums the blocks in block
                    order (``cumsum``); :func:`search` takes a float64 prefix over the blocks, finds
                    each target's block (``searchsorted``), then
``_search_kernel``  grid (rows, n): per target a rescan of its block with a float64 running sum
                    (``tl.cumsum``): the first column whose prefix exceeds the target.
``_hist_kernel``    grid (rows, nbh): per block of ``HB`` columns a 256-bin float64 histogram of
                    the live entries (a float32 ``(CH, 256)`` compare-and-sum per chunk of ``CH``
                    columns that holds a live entry, the chunks' sums added in float64, no atomics)
                    -> (rows, nbh, 256), summed over the blocks
                    in block order. Also the mass rounds of :mod:`.triton_sampling`'s top-p select,
                    which marks a settled row by a negative prefix (nothing read, zeros written).
``_top_kernel``     grid (rows, nb): each block's ``W`` largest ``z`` (``W``: the next power of two from
                    ``min(k, cols)``, at most ``B``), packed with their columns into int64
                    (:func:`.triton_sampling._pack`) -> (rows, nb, W); ``torch.topk`` of those gives
                    the row's ``k`` largest.
``_race_kernel``    grid (rows, nb): the same for the race keys ``z - log E`` of the kept entries, ``E``
                    from the Philox word of the global column ``col0 + i`` (the stream and the
                    uniforms of :mod:`.triton_sampling`), and each block's kept count -> (rows, nb).
                    Equal keys rank the lowest column first.

``z = s / t`` is rounded to nearest like torch's division, including its overflow to ``-inf`` at
tiny ``t``; an entry whose quotient certainly overflows is set to ``-inf`` without dividing, so the
interpreter never sees the overflow (only quotients within two float32 ulps of the overflow
threshold are divided as they are). The kept mass, the histograms and the search's prefix sums are
the reference's float64 sums in another order of additions; ``exp`` and ``log`` differ from torch's
by ulps.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import torch_shard
from .torch_sampling import pad_columns
from .torch_shard import z_of
from .triton_launch import grid_pieces, launch_guard
from .triton_sampling import (
    _column_words,
    _key,
    _mass_advance,
    _next_pow2,
    _pack,
    _packed_values,
    _race_merge,
    _race_width,
    _store_top,
    _words_of,
)

__all__ = ["histogram", "kept_mass", "race", "search", "top_values", "z_of"]

# Columns per block (GPU / interpreter): the weight, z and race kernels, and the search's rescan.
_BLOCK_GPU, _BLOCK_INTERP = 1024, 512
# Columns per histogram program, and per step of its (CH, 256) compare-and-sum (GPU; the interpreter's 0:
# its whole block in one step).
_HIST_BLOCK_GPU, _HIST_BLOCK_INTERP = 4096, 512
_HIST_CHUNK_GPU, _HIST_CHUNK_INTERP = 16, 0
_BINS = 256
# Half of the smallest float32 above 2**127: |s| / 2 > this * min(t, 1) implies |s / t| >= 2**128 - 2**103,
# the quotients that round to infinity in float32 (the product below is rounded, hence one float32 ulp of slack).
_HALF_OVERFLOW = tl.constexpr(2.0**127 * (1.0 + 2.0**-23))
_NEG_INF = float("-inf")


# --------------------------------------------------------------------------- device helpers


@triton.jit
def _z(x, m, t):
    """``z = s / t`` of float32 ``x`` for a row's scalar ``m`` and ``t``, as :func:`.torch_shard.z_of`.

    ``s`` follows the shift rule (``m`` not finite: ``s = x``; ``m = +inf``: 0 on the ``+inf``
    entries, ``-inf`` elsewhere), the division is rounded to nearest, ``s = -inf`` gives ``-inf``.
    """
    inf = float("inf")
    finite_m = (m == m) & (tl.abs(m) != inf)
    s = x - tl.where(finite_m, m, 0.0)
    s = tl.where(m == inf, tl.where(s == inf, 0.0, -inf), s)
    # the quotient rounds to +-inf; a subnormal t (T = 1e-40) is first scaled by 2**64 on both sides, exactly,
    # so that the product keeps float32's precision (|s| capped at 2**60: beyond, it overflows either way)
    tiny = t < 5.421010862427522e-20  # 2**-64
    a = tl.where(tiny, tl.minimum(tl.abs(s), 2.0**60) * 1.8446744073709552e19, tl.abs(s))
    over = a * 0.5 > _HALF_OVERFLOW * tl.where(tiny, tl.where(tiny, t, 0.0) * 1.8446744073709552e19, tl.minimum(t, 1.0))
    q = tl.math.div_rn(tl.where(over, 0.0, s), t)  # (a dummy dividend of -1 would overflow at tiny t)
    z = tl.where(over, tl.where(s < 0.0, -inf, inf), q)
    return tl.where(s == -inf, -inf, z)


@triton.jit
def _weights(x, m, t, cut, minp, HAS_CUT: tl.constexpr, HAS_MINP: tl.constexpr):
    """``(z, w)``: the scaled logits and the kept weights ``w = exp(z)`` (0 where dropped)."""
    z = _z(x, m, t)
    e = tl.exp(z)
    keep = e > 0.0
    if HAS_CUT:
        keep = keep & (z >= cut)
    if HAS_MINP:
        keep = keep & (e >= minp)
    return z, tl.where(keep, e, 0.0)


@triton.jit
def _params(row, m_ptr, t_ptr, cut_ptr, minp_ptr, HAS_CUT: tl.constexpr, HAS_MINP: tl.constexpr):
    """The row's ``m``, ``t``, ``cut`` and ``min_p`` (0 where off) as float32 scalars."""
    m = tl.load(m_ptr + row)
    t = tl.load(t_ptr + row)
    cut = 0.0
    minp = 0.0
    if HAS_CUT:
        cut = tl.load(cut_ptr + row)
    if HAS_MINP:
        minp = tl.load(minp_ptr + row)
    return m, t, cut, minp


@triton.jit
def _order_key(z):
    """:func:`.torch_shard.order_key` of float32 ``z``: its bits' unsigned order in int64 (``-0.0`` as ``+0.0``)."""
    return _key(z).to(tl.int64) + 2147483648


# --------------------------------------------------------------------------- kernels


@triton.jit
def _mass_kernel(
    x_ptr, stride, cols, m_ptr, t_ptr, cut_ptr, minp_ptr, sum_ptr, last_ptr, nb, pid0, pid1,
    HAS_CUT: tl.constexpr, HAS_MINP: tl.constexpr, B: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64) + pid0
    part = tl.program_id(1) + pid1
    offs = part * B + tl.arange(0, B)
    msk = offs < cols
    x = tl.load(x_ptr + row * stride + offs, mask=msk, other=-float("inf")).to(tl.float32)
    m, t, cut, minp = _params(row, m_ptr, t_ptr, cut_ptr, minp_ptr, HAS_CUT, HAS_MINP)
    _, w = _weights(x, m, t, cut, minp, HAS_CUT, HAS_MINP)
    out = row * nb + part
    tl.store(sum_ptr + out, tl.sum(w.to(tl.float64), axis=0))
    tl.store(last_ptr + out, tl.max(tl.where(w > 0.0, offs, -1), axis=0))


@triton.jit
def _search_kernel(
    x_ptr, stride, cols, m_ptr, t_ptr, cut_ptr, minp_ptr, before_ptr, target_ptr, block_ptr, base_ptr, last_ptr,
    idx_ptr, n, nb, pid0, pid1,
    HAS_CUT: tl.constexpr, HAS_MINP: tl.constexpr, B: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64) + pid0
    at = row * n + tl.program_id(1) + pid1
    b = tl.load(block_ptr + at)  # the target's block, nb when it lies past the shard
    inside = b < nb
    bc = tl.minimum(b, nb - 1)
    offs = bc * B + tl.arange(0, B)
    end = tl.where(inside, cols, 0)  # nothing to read for a target past the shard
    x = tl.load(x_ptr + row * stride + offs, mask=offs < end, other=-float("inf")).to(tl.float32)
    m, t, cut, minp = _params(row, m_ptr, t_ptr, cut_ptr, minp_ptr, HAS_CUT, HAS_MINP)
    _, w = _weights(x, m, t, cut, minp, HAS_CUT, HAS_MINP)
    # inclusive prefix: the ranks before, then the blocks before, then the block's own running sum
    running = tl.load(before_ptr + row) + (tl.load(base_ptr + at) + tl.cumsum(w.to(tl.float64), axis=0))
    inner = tl.sum((running <= tl.load(target_ptr + at)).to(tl.int32), axis=0)  # the first column above it
    block_last = tl.load(last_ptr + row * nb + bc).to(tl.int64)  # rounding left none above: the last kept one
    idx = tl.where(inner < B, bc * B + inner, block_last)
    tl.store(idx_ptr + at, tl.where(inside, idx, cols).to(tl.int64))


@triton.jit
def _block_histogram(
    x_ptr, stride, cols, row, part, m, t, cut, prefix, shift,
    HAS_CUT: tl.constexpr, COUNTS: tl.constexpr, HAS_PREFIX: tl.constexpr, HB: tl.constexpr, CH: tl.constexpr,
    BITS: tl.constexpr,
):  # fmt: skip
    """The 2**BITS-bin float64 histogram (masses, or counts with COUNTS) of ``(key >> shift)`` over the live
    entries of block ``part`` of a row: those whose key matches ``prefix`` above the bin's bits (all with
    HAS_PREFIX off); zeros for a negative prefix (a settled row).

    Each chunk of ``CH`` columns sums its ``(CH, bins)`` one-hot compare in float32 (counts exact, masses
    the SPEC's float32 accumulation), and the chunks' sums add up in float64: one float64 add per bin and
    chunk instead of one per bin and entry (float64 runs at 1/64 of float32 on A10 / L4 / L40S parts)."""
    bins = tl.arange(0, 1 << BITS)
    acc = tl.zeros([1 << BITS], tl.float64)
    if prefix >= 0:
        for c in range(0, HB, CH):
            offs = part * HB + c + tl.arange(0, CH)
            x = tl.load(x_ptr + row * stride + offs, mask=offs < cols, other=-float("inf")).to(tl.float32)
            z, w = _weights(x, m, t, cut, 0.0, HAS_CUT, False)
            if COUNTS:  # every z > -inf at or above the cut counts 1, underflowed weights included
                live = z > -float("inf")
                if HAS_CUT:
                    live = live & (z >= cut)
                wt = live.to(tl.float32)
            else:
                wt = w
            key = _order_key(z)
            live = wt > 0.0
            if HAS_PREFIX:
                live = live & ((key >> (shift + BITS)) == prefix)
            if tl.max(live.to(tl.int32), axis=0) > 0:  # the (CH, bins) compare-and-sum only where something is live
                slot = (key >> shift) & ((1 << BITS) - 1)
                hit = live[:, None] & (slot[:, None] == bins[None, :])
                acc += tl.sum(tl.where(hit, wt[:, None], 0.0), axis=0).to(tl.float64)
    return acc


@triton.jit
def _hist_kernel(
    x_ptr, stride, cols, m_ptr, t_ptr, cut_ptr, prefix_ptr, shift, hist_ptr, nb, pid0, pid1,
    HAS_CUT: tl.constexpr, COUNTS: tl.constexpr, HAS_PREFIX: tl.constexpr, HB: tl.constexpr, CH: tl.constexpr,
    BITS: tl.constexpr = 8,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64) + pid0
    part = tl.program_id(1) + pid1
    m, t, cut, _ = _params(row, m_ptr, t_ptr, cut_ptr, m_ptr, HAS_CUT, False)
    prefix = tl.load(prefix_ptr + row)
    acc = _block_histogram(x_ptr, stride, cols, row, part, m, t, cut, prefix, shift, HAS_CUT, COUNTS, HAS_PREFIX,
                           HB, CH, BITS)  # fmt: skip
    tl.store(hist_ptr + (row * nb + part) * (1 << BITS) + tl.arange(0, 1 << BITS), acc)


@triton.jit
def _mass_round_kernel(
    x_ptr, stride, cols, m_ptr, t_ptr, cut_ptr, topp_ptr, prefix_ptr, mass_ptr, n_rows, rnd, shift, hist_ptr, nb,
    pid0, pid1, HAS_CUT: tl.constexpr, FIRST: tl.constexpr, SECOND: tl.constexpr, FUSED: tl.constexpr,
    HB: tl.constexpr, CH: tl.constexpr, JB: tl.constexpr, BITS: tl.constexpr,
):  # fmt: skip
    # Mass round ``rnd`` of triton_sampling's top-p select (4 key bits a round) on the prefix of state[rnd]
    # (negative: the row is settled); partials (2, rows, nb, 2**BITS), round rnd's at rnd % 2. With FUSED
    # (few blocks a row), every program first takes the previous round's select step itself
    # (triton_sampling._mass_advance: the partials summed in block order, the same in every program; the first
    # program stores state[rnd]), so no select kernel runs between rounds; else a select kernel ran before.
    row = tl.program_id(0).to(tl.int64) + pid0
    part = tl.program_id(1) + pid1
    if FIRST or not FUSED:
        prefix = tl.load(prefix_ptr + rnd * n_rows + row)
    else:
        prefix = tl.load(prefix_ptr + (rnd - 1) * n_rows + row)
        if prefix >= 0:
            prefix, goal, above = _mass_advance(hist_ptr, nb, topp_ptr, prefix_ptr, mass_ptr, n_rows, rnd - 1, row,
                                                prefix, SECOND, JB, BITS)  # fmt: skip
            if part == 0:
                at = 2 * (rnd * n_rows + row)
                tl.store(mass_ptr + at, goal)
                tl.store(mass_ptr + at + 1, above)
        if part == 0:
            tl.store(prefix_ptr + rnd * n_rows + row, prefix)
    m, t, cut, _ = _params(row, m_ptr, t_ptr, cut_ptr, m_ptr, HAS_CUT, False)
    acc = _block_histogram(x_ptr, stride, cols, row, part, m, t, cut, prefix, shift, HAS_CUT, False, not FIRST,
                           HB, CH, BITS)  # fmt: skip
    nbins: tl.constexpr = 1 << BITS
    tl.store(hist_ptr + (((rnd % 2) * n_rows + row) * nb + part) * nbins + tl.arange(0, nbins), acc)


@triton.jit
def _store_block_top(cand_ptr, slot, packed, W: tl.constexpr, B: tl.constexpr):
    """A block's ``W`` best of its ``(B,)`` packed candidates -> ``cand_ptr + slot * W + [0, W)``."""
    one = tl.arange(0, 1)
    _store_top(cand_ptr, one.to(tl.int64) + slot, tl.reshape(packed, [1, B]), one < 1, W, B)


@triton.jit
def _top_kernel(x_ptr, stride, cols, m_ptr, t_ptr, cand_ptr, nb, pid0, pid1, B: tl.constexpr, W: tl.constexpr):
    row = tl.program_id(0).to(tl.int64) + pid0
    part = tl.program_id(1) + pid1
    offs = part * B + tl.arange(0, B)
    msk = offs < cols
    x = tl.load(x_ptr + row * stride + offs, mask=msk, other=-float("inf")).to(tl.float32)
    z = _z(x, tl.load(m_ptr + row), tl.load(t_ptr + row))
    z = tl.where(z != z, float("nan"), z)  # one NaN, above +inf (torch.topk's order)
    _store_block_top(cand_ptr, row * nb + part, _pack(_key(z), offs, msk), W, B)


@triton.jit
def _race_kernel(
    x_ptr, stride, cols, m_ptr, t_ptr, cut_ptr, minp_ptr, seed_ptr, rowid_ptr, off_ptr, col0_ptr, cand_ptr,
    count_ptr, nb, pid0, pid1, HAS_CUT: tl.constexpr, HAS_MINP: tl.constexpr, B: tl.constexpr, W: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64) + pid0
    part = tl.program_id(1) + pid1
    offs = part * B + tl.arange(0, B)
    msk = offs < cols
    x = tl.load(x_ptr + row * stride + offs, mask=msk, other=-float("inf")).to(tl.float32)
    m, t, cut, minp = _params(row, m_ptr, t_ptr, cut_ptr, minp_ptr, HAS_CUT, HAS_MINP)
    z, w = _weights(x, m, t, cut, minp, HAS_CUT, HAS_MINP)
    # global column g reads word g % 4 of Philox counter g // 4, as in the single-device race: one Philox
    # per 4 columns where the block starts on a multiple of 4 (every block, when the shard does)
    first = tl.load(col0_ptr) + part * B
    seed, rid, off = tl.load(seed_ptr + row), tl.load(rowid_ptr + row), tl.load(off_ptr + row)
    if first % 4 == 0:
        bits = tl.reshape(_column_words(seed, rid, off, first, 1, B), [B])
    else:
        bits = _words_of(seed, rid, off, first + tl.arange(0, B))
    u = ((bits >> 9).to(tl.float32) + 0.5) * 1.1920928955078125e-07  # 2**-23: exact, in (0, 1)
    kept = w > 0.0
    slot = row * nb + part
    tl.store(count_ptr + slot, tl.sum(kept.to(tl.int32), axis=0))
    _store_block_top(cand_ptr, slot, _pack(_key(z - tl.log(-tl.log(u))), offs, kept), W, B)


# --------------------------------------------------------------------------- host side


def _block(cols: int, device: torch.device) -> int:
    """Columns per block of the weight, z and race kernels (a power of two, at least 16)."""
    return max(16, min(_BLOCK_GPU if device.type == "cuda" else _BLOCK_INTERP, _next_pow2(cols)))


def _shard(x: torch.Tensor) -> torch.Tensor:
    """``x`` with unit column stride (the kernels index rows by ``stride(0)``)."""
    return x if x.stride(1) == 1 or x.shape[1] <= 1 else x.contiguous()


def _rowvec(v: torch.Tensor | None, like: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A per-row ``(rows, 1)`` or ``(rows,)`` parameter as a contiguous ``(rows,)`` tensor of ``dtype``
    on ``like``'s device (``like`` itself where ``v`` is None: a pointer the kernel does not read)."""
    if v is None:
        return like
    return v.reshape(-1).to(device=like.device, dtype=dtype).contiguous()


def _defer(x: torch.Tensor) -> bool:
    """float64 logits and empty shards take the torch reference."""
    return x.dtype == torch.float64 or x.shape[0] == 0 or x.shape[1] == 0


def _launch(kernel, grid: tuple[int, int], *args, **meta) -> None:
    """``kernel`` over ``grid`` within CUDA's limits; its last two arguments are the piece's offsets."""
    for piece, offsets in grid_pieces(grid):
        kernel[piece](*args, *offsets, **meta)


def _block_sums(x: torch.Tensor, m, t, cut, min_p) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``(sums, last, B)``: per block of ``B`` columns the float64 kept mass and its last kept column (-1: none)."""
    rows, cols = x.shape
    block = _block(cols, x.device)
    nb = triton.cdiv(cols, block)
    mv, tv = _rowvec(m, x), _rowvec(t, x)
    sums = torch.empty((rows, nb), dtype=torch.float64, device=x.device)
    last = torch.empty((rows, nb), dtype=torch.int32, device=x.device)
    _launch(
        _mass_kernel, (rows, nb), x, x.stride(0), cols, mv, tv, _rowvec(cut, mv), _rowvec(min_p, mv), sums, last, nb,
        HAS_CUT=cut is not None, HAS_MINP=min_p is not None, B=block,
    )  # fmt: skip
    return sums, last, block


def kept_mass(
    x: torch.Tensor, m: torch.Tensor, t: torch.Tensor, cut: torch.Tensor | None, min_p: torch.Tensor | None
) -> torch.Tensor:
    """``(rows,)`` float64: the kept mass of each row of this shard; see :func:`.torch_shard.kept_mass`.

    Parameters
    ----------
    x : torch.Tensor
        ``(rows, cols)`` logits of this shard (float16, bfloat16 or float32).
    m, t : torch.Tensor
        ``(rows, 1)`` global row maximum and temperature (float32).
    cut, min_p : torch.Tensor or None
        ``(rows, 1)`` thresholds on ``z`` and on ``exp(z)``, or None (off).

    Returns
    -------
    torch.Tensor
        The float64 block sums, added in block order.
    """
    if _defer(x):
        return torch_shard.kept_mass(x, m, t, cut, min_p)
    with launch_guard(x):
        sums, _, _ = _block_sums(_shard(x), m, t, cut, min_p)
        return torch.cumsum(sums, dim=1)[:, -1]


def search(
    x: torch.Tensor,
    m: torch.Tensor,
    t: torch.Tensor,
    cut: torch.Tensor | None,
    min_p: torch.Tensor | None,
    before: torch.Tensor,
    targets: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse-CDF search of this shard: ``(idx, last)``; see :func:`.torch_shard.search`.

    Parameters
    ----------
    x, m, t, cut, min_p
        As for :func:`kept_mass`.
    before : torch.Tensor
        ``(rows,)`` float64 kept mass of the ranks before this one.
    targets : torch.Tensor
        ``(rows, n)`` float64 draws ``u * S``.

    Returns
    -------
    tuple of torch.Tensor
        ``idx (rows, n)`` int64, the lowest local column whose inclusive prefix exceeds the target
        (``cols`` past the shard; the block's last kept column where the rescan's rounding left none
        above the target), and ``last (rows,)`` int64, the last kept column (-1 if none).
    """
    if _defer(x) or targets.shape[1] == 0:
        return torch_shard.search(x, m, t, cut, min_p, before, targets)
    with launch_guard(x):
        x = _shard(x)
        rows, cols = x.shape
        n = targets.shape[1]
        sums, last, block = _block_sums(x, m, t, cut, min_p)
        nb = sums.shape[1]
        before = _rowvec(before, x, torch.float64)
        targets = targets.to(device=x.device, dtype=torch.float64).contiguous()
        prefix = torch.cumsum(sums, dim=1)
        blocks = torch.searchsorted(before[:, None] + prefix, targets, right=True)  # (rows, n) in [0, nb]
        exclusive = torch.cat([torch.zeros_like(prefix[:, :1]), prefix[:, :-1]], dim=1)
        base = exclusive.gather(1, blocks.clamp_max(nb - 1))
        idx = torch.empty((rows, n), dtype=torch.int64, device=x.device)
        mv, tv = _rowvec(m, x), _rowvec(t, x)
        _launch(
            _search_kernel, (rows, n), x, x.stride(0), cols, mv, tv, _rowvec(cut, mv), _rowvec(min_p, mv), before,
            targets, blocks, base, last, idx, n, nb, HAS_CUT=cut is not None, HAS_MINP=min_p is not None, B=block,
        )  # fmt: skip
        return idx, last.amax(dim=1).to(torch.int64)


def histogram(
    x: torch.Tensor,
    m: torch.Tensor,
    t: torch.Tensor,
    cut: torch.Tensor | None,
    counts: bool,
    prefix: torch.Tensor,
    shift: int,
) -> torch.Tensor:
    """One round of the radix select: ``(rows, 256)`` float64; see :func:`.torch_shard.histogram`.

    Parameters
    ----------
    x, m, t, cut
        As for :func:`kept_mass` (no ``min_p``).
    counts : bool
        Count 1 for every ``z > -inf`` at or above ``cut`` instead of summing the weights.
    prefix : torch.Tensor
        ``(rows, 1)`` int64: the key bits above ``shift + 8`` found so far.
    shift : int
        The key byte of this round (float32 keys: 24, 16, 8 or 0).

    Returns
    -------
    torch.Tensor
        The per-block histograms summed in block order.
    """
    if _defer(x):
        return torch_shard.histogram(x, m, t, cut, counts, prefix, shift)
    with launch_guard(x):
        x = _shard(x)
        rows, cols = x.shape
        cuda = x.device.type == "cuda"
        hb = max(16, min(_HIST_BLOCK_GPU if cuda else _HIST_BLOCK_INTERP, _next_pow2(cols)))
        chunk = _HIST_CHUNK_GPU if cuda else _HIST_CHUNK_INTERP
        nb = triton.cdiv(cols, hb)
        mv, tv = _rowvec(m, x), _rowvec(t, x)
        hist = torch.empty((rows, nb, _BINS), dtype=torch.float64, device=x.device)
        _launch(
            _hist_kernel, (rows, nb), x, x.stride(0), cols, mv, tv, _rowvec(cut, mv), _rowvec(prefix, x, torch.int64),
            shift, hist, nb, HAS_CUT=cut is not None, COUNTS=bool(counts), HAS_PREFIX=shift + 8 < 32, HB=hb,
            CH=min(chunk, hb) if chunk else hb,
        )  # fmt: skip
        return torch.cumsum(hist, dim=1)[:, -1]


def _best(
    kernel, x: torch.Tensor, n: int, *args, per_block: tuple[torch.dtype, ...] = (), **meta
) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]:
    """``(packed, col, outputs)``: the ``n`` best packed candidates of each row, decreasing, and their columns,
    (rows, min(n, cols)), from ``kernel``'s per-block ``W`` best (rows, nb, W)
    (:func:`.triton_sampling._race_merge`), and one (rows, nb) output per dtype of ``per_block``. The kernel
    takes ``(x, stride, cols, *args, cand, *outputs, nb, pid0, pid1)`` and ``meta`` with ``B`` and ``W``."""
    rows, cols = x.shape
    block = _block(cols, x.device)
    nb = triton.cdiv(cols, block)
    width = _race_width(n, cols, block)
    cand = torch.empty((rows, nb, width), dtype=torch.int64, device=x.device)
    outputs = tuple(torch.empty((rows, nb), dtype=dtype, device=x.device) for dtype in per_block)
    _launch(kernel, (rows, nb), x, x.stride(0), cols, *args, cand, *outputs, nb, B=block, W=width, **meta)
    return *_race_merge(cand, n, cols), outputs


def top_values(x: torch.Tensor, m: torch.Tensor, t: torch.Tensor, k: int) -> torch.Tensor:
    """``(rows, k)``: the ``k`` largest ``z`` of each row, decreasing, ``-inf`` past ``cols``; see
    :func:`.torch_shard.top_values`.

    Parameters
    ----------
    x, m, t
        As for :func:`kept_mass`.
    k : int
        How many values per row.

    Returns
    -------
    torch.Tensor
        float32, from ``torch.topk`` on the kernel's ``z``.
    """
    if _defer(x):
        return torch_shard.top_values(x, m, t, k)
    with launch_guard(x):
        x = _shard(x)
        packed, _, _ = _best(_top_kernel, x, k, _rowvec(m, x), _rowvec(t, x))
        return pad_columns(_packed_values(packed), k, _NEG_INF)


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
    """This shard's part of the exponential race: ``(keys, ids, count)``; see :func:`.torch_shard.race`.

    Parameters
    ----------
    x, m, t, cut, min_p
        As for :func:`kept_mass`.
    seed, row_id, offset : torch.Tensor
        ``(rows,)`` int64: the rows' Philox streams.
    col0 : torch.Tensor
        0-d int64 on the device: the global column of this shard's first column (read by the kernel).
    n : int
        How many keys per row.

    Returns
    -------
    tuple of torch.Tensor
        ``keys (rows, n)`` float32 decreasing (``-inf`` past the kept entries), ``ids (rows, n)`` int64
        global columns (``-1`` past them), ``count (rows,)`` int64 kept entries.
    """
    if _defer(x):
        return torch_shard.race(x, m, t, cut, min_p, seed, row_id, offset, col0, n)
    with launch_guard(x):
        x = _shard(x)
        mv, tv = _rowvec(m, x), _rowvec(t, x)
        stream = [_rowvec(v, x, torch.int64) for v in (seed, row_id, offset)]
        start = torch.as_tensor(col0, dtype=torch.int64, device=x.device).reshape(1)
        packed, local, (count,) = _best(
            _race_kernel, x, n, mv, tv, _rowvec(cut, mv), _rowvec(min_p, mv), *stream, start,
            per_block=(torch.int32,), HAS_CUT=cut is not None, HAS_MINP=min_p is not None,
        )  # fmt: skip
        ids = torch.where(local >= 0, local + start[0], -1)
        return pad_columns(_packed_values(packed), n, _NEG_INF), pad_columns(ids, n, -1), count.sum(dim=1)

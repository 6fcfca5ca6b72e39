"""Triton kernels: numerically stable softmax / log_softmax (forward and backward) by rows.

Every kernel applies the shift rule of the SPEC, accumulating in float32 (float64 when
an input or the output is float64):

* ``m`` = row maximum; a NaN anywhere in a row makes the whole output row NaN (tracked
  with an explicit ``x != x`` flag, never through ``max``);
* ``s_i = x_i - m`` where ``m`` is finite, ``x_i - 0`` where ``m = -inf``, and
  ``0 if x_i == +inf else -inf`` where ``m = +inf``;
* ``e_i = exp(s_i)``, ``S = sum e_i`` (``1`` where it is ``0``, a fully masked row);
* softmax ``e_i / S``; log_softmax ``s_i - log S``.

Forward paths (see :func:`_plan`):

``fused``
    ``next_power_of_2(cols) <= MAX_FUSED_COLS``: a program holds one or more whole rows
    in registers; one read, one write.
``looped``
    longer rows, enough of them to fill the device: one program per row. The row is read
    chunk by chunk; per chunk, per-lane running maxima, counts of entries at the max, and
    rescaled sums of the entries below it (one ``exp`` per element; +inf counted apart; a
    NaN poisons its lane's sum), reduced to the chunk's partial, which goes to a small
    workspace; the partials are then combined, and the second loop writes, walking the
    row backwards so that its most recently read tail is still in L2.
``split``
    longer rows, too few of them to fill the device (decoding, ``1 x 152064``): one
    program per chunk. Kernel 1 writes each chunk's partial (max, count at the max, sum
    below it, +inf count; NaN in the sum) to the workspace; kernel 2 combines its row's
    partials and writes its chunk.

Batch invariance: the looped and split paths cut a row into the same chunks (a function
of the row length and the accumulation dtype only, never of the number of rows), compute
each chunk's partial with the same code and combine the partials with the same code, in
the same order, so a row's output is bitwise the same whichever path the batch size
selects. The fused path packs a number of rows per program that depends on the row
length only, so its tile (and reduction order) is the same for any batch size too.

log_softmax takes ``log S`` as ``log1p`` of the sum below the max when one entry holds
the max, so that ``-log S`` keeps its relative accuracy when ``S`` is within an ulp of 1.
Values past the output dtype's range are stored as +-inf (round to nearest).

Backward has the fused and looped paths (``sum(g * y)`` or ``sum(g)`` per row, then the
write). All offsets of a row start are computed in int64.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from .triton_launch import grid_pieces, launch_guard

__all__ = [
    "LOOPED_BLOCK",
    "MAX_FUSED_COLS",
    "MAX_SPLIT",
    "MIN_SPLIT_CHUNK",
    "Plan",
    "softmax_backward",
    "softmax_forward",
]

#: Longest row (rounded up to a power of two) that one program holds in registers,
#: for float32 accumulation; float64 accumulation holds a quarter of it.
MAX_FUSED_COLS = 16384
MAX_FUSED_COLS_F64 = 4096
#: Columns per iteration of the looped / split kernels (float32 / float64 accumulation).
LOOPED_BLOCK = 4096
LOOPED_BLOCK_F64 = 2048
#: Fewest columns one program of the split path handles, and most chunks per row.
MIN_SPLIT_CHUNK = 4096
MAX_SPLIT = 1024
#: Elements a fused program aims to hold when it packs several short rows.
_FUSED_TILE = 4096
#: Multiprocessor count assumed off CUDA (the interpreter), small so that tests take the
#: split path with modest shapes.
_FALLBACK_SMS = 4
#: Programs per multiprocessor the split decision aims for.
_PROGRAMS_PER_SM = 4
#: Register cap handed to ptxas for the looped forward kernel with float32 accumulation: left alone,
#: ptxas aimed at three 16-warp programs per SM on sm_90 (40 registers) and spilled; 64 keeps two, as
#: before, with no spill. (float64 accumulation needs ~150 registers and keeps ptxas's choice.)
_LOOPED_MAXNREG = 64


# --------------------------------------------------------------------------- kernels


@triton.jit
def _acc(x, ACC_F64: tl.constexpr):
    if ACC_F64:
        return x.to(tl.float64)
    else:
        return x.to(tl.float32)


@triton.jit
def _shift(x, m):
    """``s = x - m`` under the shift rule; ``m`` broadcasts against ``x``."""
    inf = float("inf")
    m_safe = tl.where(tl.abs(m) == inf, 0.0, m)
    s_inf = tl.where(x == inf, 0.0, -inf)
    return tl.where(m == inf, s_inf, x - m_safe)


@triton.jit
def _online_update(x, m_vec, c_vec, d_vec, k_vec):
    """Fold one block of ``x`` (accumulation dtype, pads = -inf) into the per-lane state.

    ``m_vec``: running max over finite values and -inf; ``c_vec``: how many entries equal
    it (finite ones only); ``d_vec``: sum of ``exp(x - m_vec)`` over the entries below it
    (kept apart so that ``log(c + d)`` stays accurate when ``d`` is tiny); ``k_vec``: count
    of +inf. A NaN turns its lane's ``d_vec`` into NaN, which arithmetic then carries to
    the row sum (``max`` never sees it).
    """
    inf = float("inf")
    is_nan = x != x
    is_pinf = x == inf
    k_vec += is_pinf.to(tl.int32)
    xc = tl.where(is_nan | is_pinf, -inf, x)
    gt = xc > m_vec
    eq = (xc == m_vec) & (xc != -inf)
    hi = tl.maximum(m_vec, xc)
    lo = tl.minimum(m_vec, xc)
    # exp(lo - hi) is the factor of whichever side is smaller; 0 when both are -inf.
    t = tl.exp(lo - tl.where(hi == -inf, 0.0, hi))
    d_vec = tl.where(gt, (d_vec + c_vec) * t, tl.where(eq, d_vec, d_vec + t))
    c_vec = tl.where(gt, 1.0, tl.where(eq, c_vec + 1.0, c_vec))
    d_vec = tl.where(is_nan, float("nan"), d_vec)
    return hi, c_vec, d_vec, k_vec


@triton.jit
def _combine(m_p, c_p, d_p):
    """Merge partial states (max, count at max, sum below max) along axis 0."""
    m = tl.max(m_p, axis=0)
    on_max = m_p == m
    scale = tl.exp(m_p - tl.where(m == -float("inf"), 0.0, m))
    c = tl.sum(tl.where(on_max, c_p, 0.0), axis=0)
    d = tl.sum(tl.where(on_max, d_p, (d_p + c_p) * scale), axis=0)
    return m, c, d


@triton.jit
def _log1p(t):
    """log(1 + t), accurate for small t with an accurate log (Goldberg's trick)."""
    u = 1.0 + t
    return tl.where(u == 1.0, t, tl.log(u) * (t / tl.where(u == 1.0, 1.0, u - 1.0)))


@triton.jit
def _normaliser(m, c, d, k):
    """Row (max, sum, log sum) that the write pass uses: +inf entries win, an empty sum is 1.

    ``c`` entries sit at the max, ``d`` is the sum below it, ``k`` counts +inf.
    """
    kf = k.to(d.dtype)
    total = c + d
    total = tl.where(total == 0.0, 1.0, total)
    log_total = tl.where(c == 1.0, _log1p(d), tl.log(total))
    m_eff = tl.where(k > 0, float("inf"), m)
    s_eff = tl.where(k > 0, kf, total)
    log_s = tl.where(k > 0, tl.log(tl.where(k > 0, kf, 1.0)), log_total)
    return m_eff, s_eff, log_s


@triton.jit
def _finish(x, m_eff, s_eff, log_s, has_nan, LOG: tl.constexpr):
    s = _shift(x, m_eff)
    if LOG:  # noqa: SIM108 (constexpr branch)
        y = s - log_s
    else:
        y = tl.exp(s) * (1.0 / s_eff)
    return tl.where(has_nan, float("nan"), y)


@triton.jit
def _cast_out(y, dst: tl.constexpr):
    """``y.to(dst)`` rounded to nearest even, values past the largest finite of ``dst``
    becoming +-inf, the same on a GPU and in the interpreter (whose casts warn on
    overflow and truncate to bfloat16)."""
    big: tl.constexpr = 0.0
    if dst == tl.float16:
        big = 65520.0  # 65504 + half an ulp
    elif (dst == tl.float32 or dst == tl.bfloat16) and y.dtype == tl.float64:
        big = 3.4028235677973366e38  # 2**128 - 2**103: float32's
    if big != 0.0:
        y = tl.where(y >= big, float("inf"), tl.where(y <= -big, -float("inf"), y))
    if dst == tl.bfloat16:
        # Round to nearest even on the float32 bits and keep the top half: the
        # interpreter's own float32 -> bfloat16 cast truncates (and mishandles subnormals),
        # and it has no float64 -> bfloat16 cast (float64 goes through float32 here).
        if y.dtype == tl.float64:
            y = y.to(tl.float32)
        bits = y.to(tl.uint32, bitcast=True)
        rounded = bits + 0x7FFF + ((bits >> 16) & 1)
        bits = tl.where(y != y, bits | 0x400000, rounded)  # NaN stays a quiet NaN
        return (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        return y.to(dst)


@triton.jit
def _fwd_fused_kernel(
    x_ptr, out_ptr, rows, cols, x_stride, out_stride, pid0,
    BLOCK: tl.constexpr, ROWS: tl.constexpr, LOG: tl.constexpr, ACC_F64: tl.constexpr,
):  # fmt: skip
    row = (tl.program_id(0).to(tl.int64) + pid0) * ROWS + tl.arange(0, ROWS).to(tl.int64)
    col = tl.arange(0, BLOCK)
    mask = (row[:, None] < rows) & (col[None, :] < cols)
    x = tl.load(x_ptr + row[:, None] * x_stride + col[None, :], mask=mask, other=-float("inf"))
    x = _acc(x, ACC_F64)
    is_nan = x != x
    has_nan = tl.max(is_nan.to(tl.int32), axis=1) > 0
    m = tl.max(tl.where(is_nan, -float("inf"), x), axis=1)  # NaN rows are overwritten below
    s = _shift(x, m[:, None])
    e = tl.exp(s)
    at_max = s == 0.0  # the max's entries (the +inf ones when m = +inf)
    c = tl.sum(at_max.to(e.dtype), axis=1)
    d = tl.sum(tl.where(at_max, 0.0, e), axis=1)
    total = c + d
    total = tl.where(total == 0.0, 1.0, total)  # a row of -inf
    if LOG:  # noqa: SIM108 (constexpr branch)
        y = s - tl.where(c == 1.0, _log1p(d), tl.log(total))[:, None]
    else:
        y = e * (1.0 / total)[:, None]
    y = tl.where(has_nan[:, None], float("nan"), y)
    tl.store(out_ptr + row[:, None] * out_stride + col[None, :], _cast_out(y, out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _chunk_partial(x_row, begin, cols, BLOCK: tl.constexpr, CHUNK_BLOCKS: tl.constexpr, ACC_F64: tl.constexpr):
    """The partial (max, count at the max, sum below it, +inf count) of the chunk of
    ``CHUNK_BLOCKS`` blocks at ``begin``.

    The one code both the looped and the split path run per chunk (same blocks, same lane
    state, same reduction), so that their partials are bitwise the same. The block count is
    a constant, so that the usual one-block chunk compiles to straight-line code (a loop
    carried across the looped kernel's chunk loop spilled on sm_90).
    """
    lane = tl.arange(0, BLOCK)
    m_vec = _acc(tl.full([BLOCK], -float("inf"), tl.float32), ACC_F64)
    c_vec = _acc(tl.zeros([BLOCK], tl.float32), ACC_F64)
    d_vec = _acc(tl.zeros([BLOCK], tl.float32), ACC_F64)
    k_vec = tl.zeros([BLOCK], tl.int32)
    for j in range(0, CHUNK_BLOCKS):
        col = begin + j * BLOCK + lane
        x = tl.load(x_row + col, mask=col < cols, other=-float("inf"), eviction_policy="evict_last")
        m_vec, c_vec, d_vec, k_vec = _online_update(_acc(x, ACC_F64), m_vec, c_vec, d_vec, k_vec)
    m, c, d = _combine(m_vec, c_vec, d_vec)
    return m, c, d, tl.sum(k_vec, axis=0).to(d.dtype)


@triton.jit
def _store_partial(ws, m, c, d, k):
    tl.store(ws + 0, m)
    tl.store(ws + 1, c)
    tl.store(ws + 2, d)
    tl.store(ws + 3, k)


@triton.jit
def _row_normaliser(ws_row, n_split, SPLIT_P2: tl.constexpr):
    """Combine a row's ``n_split`` partials (the same code and order on both paths): the
    (max, sum, log sum) of the write pass and whether the row holds a NaN."""
    idx = tl.arange(0, SPLIT_P2)
    pmask = idx < n_split
    ws = ws_row + idx * 4
    m_p = tl.load(ws + 0, mask=pmask, other=-float("inf"))
    c_p = tl.load(ws + 1, mask=pmask, other=0.0)
    d_p = tl.load(ws + 2, mask=pmask, other=0.0)
    k_p = tl.load(ws + 3, mask=pmask, other=0.0)
    m, c, d = _combine(m_p, c_p, d_p)
    m_eff, s_eff, log_s = _normaliser(m, c, d, tl.sum(k_p, axis=0))
    return m_eff, s_eff, log_s, d != d  # a chunk's NaN sum poisons the total


@triton.jit
def _fwd_looped_kernel(
    x_ptr, out_ptr, ws_ptr, cols, x_stride, out_stride, chunk, n_split, pid0,
    BLOCK: tl.constexpr, CHUNK_BLOCKS: tl.constexpr, SPLIT_P2: tl.constexpr, LOG: tl.constexpr,
    ACC_F64: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64) + pid0
    x_row = x_ptr + row * x_stride
    out_row = out_ptr + row * out_stride
    ws_row = ws_ptr + row * n_split * 4
    for part in range(0, n_split):
        m, c, d, k = _chunk_partial(x_row, part * chunk, cols, BLOCK, CHUNK_BLOCKS, ACC_F64)
        _store_partial(ws_row + part * 4, m, c, d, k)
    tl.debug_barrier()  # the partials stored above, visible to every thread of the program
    m_eff, s_eff, log_s, has_nan = _row_normaliser(ws_row, n_split, SPLIT_P2)
    lane = tl.arange(0, BLOCK)
    n_blocks = tl.cdiv(cols, BLOCK)
    for i in range(0, n_blocks):
        col = (n_blocks - 1 - i) * BLOCK + lane  # backwards: the tail read last is in L2
        mask = col < cols
        x = tl.load(x_row + col, mask=mask, other=0.0, eviction_policy="evict_first")
        y = _finish(_acc(x, ACC_F64), m_eff, s_eff, log_s, has_nan, LOG)
        tl.store(out_row + col, _cast_out(y, out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _fwd_split_stats_kernel(
    x_ptr, ws_ptr, cols, x_stride, chunk, n_split, pid0, pid1,
    BLOCK: tl.constexpr, CHUNK_BLOCKS: tl.constexpr, ACC_F64: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64) + pid0
    part = tl.program_id(1) + pid1
    m, c, d, k = _chunk_partial(x_ptr + row * x_stride, part * chunk, cols, BLOCK, CHUNK_BLOCKS, ACC_F64)
    _store_partial(ws_ptr + (row * n_split + part) * 4, m, c, d, k)


@triton.jit
def _fwd_split_write_kernel(
    x_ptr, out_ptr, ws_ptr, cols, x_stride, out_stride, chunk, n_split, pid0, pid1,
    BLOCK: tl.constexpr, SPLIT_P2: tl.constexpr, LOG: tl.constexpr, ACC_F64: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64) + pid0
    part = tl.program_id(1) + pid1
    m_eff, s_eff, log_s, has_nan = _row_normaliser(ws_ptr + row * n_split * 4, n_split, SPLIT_P2)
    x_row = x_ptr + row * x_stride
    out_row = out_ptr + row * out_stride
    lane = tl.arange(0, BLOCK)
    begin = part * chunk
    for off in range(0, chunk, BLOCK):
        col = begin + off + lane
        mask = col < cols
        x = tl.load(x_row + col, mask=mask, other=0.0, eviction_policy="evict_first")
        y = _finish(_acc(x, ACC_F64), m_eff, s_eff, log_s, has_nan, LOG)
        tl.store(out_row + col, _cast_out(y, out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _bwd_fused_kernel(
    y_ptr, g_ptr, out_ptr, rows, cols, y_stride, g_stride, out_stride, pid0,
    BLOCK: tl.constexpr, ROWS: tl.constexpr, LOG: tl.constexpr, ACC_F64: tl.constexpr,
):  # fmt: skip
    row = (tl.program_id(0).to(tl.int64) + pid0) * ROWS + tl.arange(0, ROWS).to(tl.int64)
    col = tl.arange(0, BLOCK)
    mask = (row[:, None] < rows) & (col[None, :] < cols)
    y = _acc(tl.load(y_ptr + row[:, None] * y_stride + col[None, :], mask=mask, other=0.0), ACC_F64)
    g = _acc(tl.load(g_ptr + row[:, None] * g_stride + col[None, :], mask=mask, other=0.0), ACC_F64)
    if LOG:
        total = tl.sum(g, axis=1)
        r = g - tl.exp(y) * total[:, None]
    else:
        total = tl.sum(g * y, axis=1)
        r = y * (g - total[:, None])
    tl.store(out_ptr + row[:, None] * out_stride + col[None, :], _cast_out(r, out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _bwd_looped_kernel(
    y_ptr, g_ptr, out_ptr, cols, y_stride, g_stride, out_stride, pid0,
    BLOCK: tl.constexpr, LOG: tl.constexpr, ACC_F64: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64) + pid0
    y_row = y_ptr + row * y_stride
    g_row = g_ptr + row * g_stride
    out_row = out_ptr + row * out_stride
    lane = tl.arange(0, BLOCK)
    acc = _acc(tl.zeros([BLOCK], tl.float32), ACC_F64)
    for start in range(0, cols, BLOCK):
        col = start + lane
        mask = col < cols
        g = _acc(tl.load(g_row + col, mask=mask, other=0.0, eviction_policy="evict_last"), ACC_F64)
        if LOG:
            acc += g
        else:
            y = _acc(tl.load(y_row + col, mask=mask, other=0.0, eviction_policy="evict_last"), ACC_F64)
            acc += g * y
    total = tl.sum(acc, axis=0)
    n_blocks = tl.cdiv(cols, BLOCK)
    for i in range(0, n_blocks):
        col = (n_blocks - 1 - i) * BLOCK + lane
        mask = col < cols
        y = _acc(tl.load(y_row + col, mask=mask, other=0.0, eviction_policy="evict_first"), ACC_F64)
        g = _acc(tl.load(g_row + col, mask=mask, other=0.0, eviction_policy="evict_first"), ACC_F64)
        if LOG:  # noqa: SIM108 (constexpr branch)
            r = g - tl.exp(y) * total
        else:
            r = y * (g - total)
        tl.store(out_row + col, _cast_out(r, out_ptr.dtype.element_ty), mask=mask)


# --------------------------------------------------------------------------- planning


class Plan(NamedTuple):
    """How one call runs: the path, its block, and the launch shape."""

    path: str  # "fused", "looped" or "split"
    block: int  # columns per block (fused: the whole row, padded to a power of two)
    rows_per_program: int  # fused only; 1 otherwise
    split: int  # chunks per row (looped and split: the same for both; fused: 1)
    chunk: int  # columns per chunk, a multiple of ``block`` (fused: cols)
    num_warps: int


@functools.cache
def _sm_count(device_type: str, index: int | None) -> int:
    if device_type == "cuda" and torch.cuda.is_available():
        return int(torch.cuda.get_device_properties(0 if index is None else index).multi_processor_count)
    return _FALLBACK_SMS


def _check_pow2(name: str, value: int) -> None:
    if value < 1 or value & (value - 1):
        raise ValueError(f"{name} must be a power of two >= 1, got {value}")


def _fused_warps(elements: int) -> int:
    # About 16-32 elements per thread; 4 to 32 warps (16 elements per thread at 16,384: with 16
    # warps ptxas keeps a float16 row of odd length at 64 registers on sm_80 by spilling).
    return min(max(triton.next_power_of_2(max(elements // 512, 1)), 4), 32)


def _plan(
    rows: int,
    cols: int,
    device: torch.device,
    *,
    acc_f64: bool = False,
    block_size: int | None = None,
    split: int | None = None,
    rows_per_program: int | None = None,
    allow_split: bool = True,
) -> Plan:
    """Choose the path and launch shape for ``rows x cols``.

    ``block_size`` (a power of two) forces the block: the fused path when it covers the
    row, the looped or split path otherwise. ``split`` forces the number of chunks per
    row (``1``: one chunk, the looped path; more: the split path, at most
    ``ceil(cols / block)``). ``rows_per_program`` (a power of two) forces the rows a fused
    program packs.

    Unforced, everything that decides a row's arithmetic (the fused tile; the block, the
    chunks and their number) depends on ``cols`` and ``acc_f64`` only; ``rows`` picks
    between the looped and split paths alone, which compute the same bits.
    """
    if rows < 1 or cols < 1:
        raise ValueError(f"rows and cols must be >= 1, got {rows} x {cols}")
    device = torch.device(device)
    sms = _sm_count(device.type, device.index)
    row_p2 = triton.next_power_of_2(cols)
    max_fused = MAX_FUSED_COLS_F64 if acc_f64 else MAX_FUSED_COLS
    looped_block = LOOPED_BLOCK_F64 if acc_f64 else LOOPED_BLOCK
    if block_size is not None:
        _check_pow2("block_size", block_size)
    if split is not None and split < 1:
        raise ValueError(f"split must be >= 1, got {split}")
    if rows_per_program is not None:
        _check_pow2("rows_per_program", rows_per_program)

    if block_size is not None:
        fused = block_size >= row_p2 and (split is None or split == 1)
    else:
        fused = row_p2 <= max_fused and (split is None or split == 1)
    if fused:
        block = row_p2
        # Pack short rows up to a tile of _FUSED_TILE, whatever the number of rows: the tile (and
        # so the order of each row's reductions on a GPU) must not depend on the batch.
        rpp = max(_FUSED_TILE // block, 1) if rows_per_program is None else rows_per_program
        return Plan("fused", block, rpp, 1, cols, _fused_warps(block * rpp))

    if block_size is not None:
        block = min(block_size, row_p2)
    elif split is not None and split > 1:
        block = min(looped_block, triton.next_power_of_2(triton.cdiv(cols, split)))
    else:
        block = min(looped_block, row_p2)
    warps = min(max(block // 256, 4), 16)  # about 8 elements per thread and state vector

    # The chunks: as many blocks as fit MIN_SPLIT_CHUNK columns (one block unforced), at most
    # MAX_SPLIT chunks; a function of cols (and the forced arguments) only.
    unforced = triton.cdiv(cols, triton.cdiv(MIN_SPLIT_CHUNK, block) * block)
    n_split = max(min(split if split is not None else unforced, MAX_SPLIT), 1)
    chunk = triton.cdiv(triton.cdiv(cols, n_split), block) * block
    n_split = triton.cdiv(cols, chunk)
    # rows only choose the path: one program per row (looped) or per chunk (split), the same bits
    use_split = split > 1 if split is not None else allow_split and rows < sms * _PROGRAMS_PER_SM
    if use_split and n_split > 1:
        return Plan("split", block, 1, n_split, chunk, warps)
    return Plan("looped", block, 1, n_split, chunk, warps)


# --------------------------------------------------------------------------- entry points


def softmax_forward(
    x: torch.Tensor,
    out: torch.Tensor,
    log: bool,
    *,
    block_size: int | None = None,
    split: int | None = None,
    rows_per_program: int | None = None,
) -> None:
    """Softmax (or log_softmax) of each row of 2-D ``x`` (unit column stride) into ``out``.

    ``out`` is 2-D with unit column stride (any row stride) and may have another dtype.
    The keyword-only arguments force a plan for tests; see :func:`_plan`.
    """
    rows, cols = x.shape
    # a column stride only matters with more than one column (a size-1 dim may have any stride)
    assert out.shape == x.shape and (cols <= 1 or (x.stride(1) == 1 and out.stride(1) == 1))
    acc_f64 = x.dtype == torch.float64 or out.dtype == torch.float64
    plan = _plan(
        rows, cols, x.device, acc_f64=acc_f64, block_size=block_size, split=split, rows_per_program=rows_per_program
    )
    log = bool(log)
    with launch_guard(x):
        if plan.path == "fused":
            for grid, (pid0,) in grid_pieces((triton.cdiv(rows, plan.rows_per_program),)):
                _fwd_fused_kernel[grid](
                    x, out, rows, cols, x.stride(0), out.stride(0), pid0,
                    BLOCK=plan.block, ROWS=plan.rows_per_program, LOG=log, ACC_F64=acc_f64, num_warps=plan.num_warps,
                )  # fmt: skip
            return
        ws = torch.empty((rows, plan.split, 4), dtype=torch.float64 if acc_f64 else torch.float32, device=x.device)
        split_p2 = triton.next_power_of_2(plan.split)
        if plan.path == "looped":
            for grid, (pid0,) in grid_pieces((rows,)):
                _fwd_looped_kernel[grid](
                    x, out, ws, cols, x.stride(0), out.stride(0), plan.chunk, plan.split, pid0,
                    BLOCK=plan.block, CHUNK_BLOCKS=plan.chunk // plan.block, SPLIT_P2=split_p2, LOG=log,
                    ACC_F64=acc_f64, num_warps=plan.num_warps,
                    maxnreg=None if acc_f64 else _LOOPED_MAXNREG,
                )  # fmt: skip
            return
        pieces = grid_pieces((rows, plan.split))
        for grid, (pid0, pid1) in pieces:
            _fwd_split_stats_kernel[grid](
                x, ws, cols, x.stride(0), plan.chunk, plan.split, pid0, pid1,
                BLOCK=plan.block, CHUNK_BLOCKS=plan.chunk // plan.block, ACC_F64=acc_f64, num_warps=plan.num_warps,
            )  # fmt: skip
        for grid, (pid0, pid1) in pieces:
            _fwd_split_write_kernel[grid](
                x, out, ws, cols, x.stride(0), out.stride(0), plan.chunk, plan.split, pid0, pid1,
                BLOCK=plan.block, SPLIT_P2=split_p2, LOG=log, ACC_F64=acc_f64, num_warps=plan.num_warps,
            )  # fmt: skip


def softmax_backward(
    y: torch.Tensor,
    grad: torch.Tensor,
    out: torch.Tensor,
    log: bool,
    *,
    block_size: int | None = None,
    rows_per_program: int | None = None,
) -> None:
    """Gradient wrt the input, from the forward output ``y`` and the upstream ``grad``.

    softmax: ``y * (g - sum(g * y))``; log_softmax: ``g - exp(y) * sum(g)``; float32 math
    (float64 if any tensor is float64). The keyword-only arguments force a plan for tests.
    """
    rows, cols = y.shape
    assert grad.shape == y.shape and out.shape == y.shape
    assert cols <= 1 or (y.stride(1) == 1 and grad.stride(1) == 1 and out.stride(1) == 1)
    acc_f64 = torch.float64 in (y.dtype, grad.dtype, out.dtype)
    plan = _plan(
        rows, cols, y.device, acc_f64=acc_f64, block_size=block_size, rows_per_program=rows_per_program,
        allow_split=False,
    )  # fmt: skip
    log = bool(log)
    with launch_guard(y):
        if plan.path == "fused":
            for grid, (pid0,) in grid_pieces((triton.cdiv(rows, plan.rows_per_program),)):
                _bwd_fused_kernel[grid](
                    y, grad, out, rows, cols, y.stride(0), grad.stride(0), out.stride(0), pid0,
                    BLOCK=plan.block, ROWS=plan.rows_per_program, LOG=log, ACC_F64=acc_f64, num_warps=plan.num_warps,
                )  # fmt: skip
        else:
            for grid, (pid0,) in grid_pieces((rows,)):
                _bwd_looped_kernel[grid](
                    y, grad, out, cols, y.stride(0), grad.stride(0), out.stride(0), pid0,
                    BLOCK=plan.block, LOG=log, ACC_F64=acc_f64, num_warps=plan.num_warps,
                )  # fmt: skip

"""Triton kernels: numerically stable softmax / log_softmax (forward and backward) by rows.

Every kernel applies the shift rule of the SPEC, accumulating in float32 (float64 when
an input or the output is float64):

* ``m`` = row maximum; a NaN anywhere in a row makes the whole output row NaN;
* ``s_i = x_i - m`` where ``m`` is finite, ``x_i - 0`` where ``m = -inf``, and
  ``0 if x_i == +inf else -inf`` where ``m = +inf``;
* ``e_i = exp(s_i)``, ``S = sum e_i`` (``1`` where it is ``0``, a fully masked row);
* softmax ``e_i / S``; log_softmax ``s_i - log S``.

The rare cases cost nothing per element on the usual path: the max is taken with a
NaN-propagating ``max`` (one ``max.NaN``), so a NaN row has a NaN max and ``x - m`` carries
it to every output; a +inf max is a uniform branch per tile, block or row, taken only
when there is one. On NVIDIA PTX (``NATIVE``) the exponentials are one
``ex2.approx.ftz`` (no subnormal fix-up; bfloat16 softmax outputs, which can hold
float32's subnormals, keep the full ``exp``) and the float32 -> float16 / bfloat16
stores use the hardware's round-to-nearest casts, which already overflow to +-inf; the
interpreter takes ``tl.exp`` and rounds by hand (``_cast_out``).

Forward paths (see :func:`_plan`):

``fused``
    ``next_power_of_2(cols) <= MAX_FUSED_COLS``: a program holds one or more whole rows
    in registers; one read, one write.
``looped``
    longer rows, enough of them to fill the device: one program per row. The row is read
    chunk by chunk (one block of ``LOOPED_BLOCK`` columns per chunk, in registers): per
    chunk its max, then ``exp(x - max)`` summed (log_softmax: the entries at the max
    counted apart), one ``exp`` per element, to the chunk's partial in a small workspace;
    the partials are then combined, and the second loop writes, walking the row
    backwards so that its most recently read tail is still in L2.
``split``
    longer rows, too few of them to fill the device (decoding, ``1 x 152064``): one
    program per chunk. Kernel 1 writes each chunk's partial (the same code as the looped
    path) to the workspace; kernel 2 combines its row's partials and writes its chunk.

Batch invariance: the looped and split paths cut a row into the same chunks (a function
of the row length and the accumulation dtype only, never of the number of rows), compute
each chunk's partial with the same code and combine the partials with the same code, in
the same order, so a row's output is bitwise the same whichever path the batch size
selects. The fused path packs a number of rows per program that depends on the row
length only, and lays a tile out by the row length and the dtypes only (each short row within
one warp), so its reduction order is the same for any batch size too.

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

from .triton_launch import grid_pieces, launch_guard, native_ptx

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
#: Register cap handed to ptxas for the looped forward kernel with float32 accumulation: 4 warps
#: hold a 4,096-column block at 32 elements per thread, and rows of odd length (16-bit scalar
#: accesses) spilled at ptxas's own choice, at 64 and at 96. (float64 accumulation keeps ptxas's choice.)
_LOOPED_MAXNREG = 128
#: Fewest warps of the split path's write kernel: it has no reductions to amortise, and with 4 warps
#: ptxas spilled on rows of odd length.
_MIN_WRITE_WARPS = 8
#: Register cap of the fused backward kernel: at ptxas's own choice (80 on sm_100) a float16 tile of
#: 32 rows of odd length spilled.
_BWD_FUSED_MAXNREG = 128
#: The rare rows' branches (a +inf max: per tile, block or row) compiled in. Always, but for the AOT check
#: (.ci/aot_sweep.py), which compiles each kernel once more without them to count the SASS of the usual path.
_RARE_CASES = tl.constexpr(True)


# --------------------------------------------------------------------------- kernels


@triton.jit
def _acc(x, ACC_F64: tl.constexpr):
    if ACC_F64:
        return x.to(tl.float64)
    else:
        return x.to(tl.float32)


@triton.jit
def _max_nan(a, b):
    """``max`` that returns NaN when either side is NaN (one ``max.NaN`` instruction): a row's
    maximum is then NaN exactly when the row holds a NaN, and ``x - m`` carries it to every
    output of the row, with no per-element NaN bookkeeping."""
    return tl.maximum(a, b, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def _nan_max(x, axis: tl.constexpr, NATIVE: tl.constexpr):
    """The max along ``axis``, NaN where a NaN is among the values: one ``max.NaN`` per element
    on NVIDIA PTX; the interpreter (whose reductions with a Python combine function run element by
    element) takes its own ``max`` and a NaN flag."""
    if NATIVE:
        return tl.reduce(x, axis, _max_nan)
    else:
        is_nan = x != x
        has_nan = tl.max(is_nan.to(tl.int32), axis=axis) > 0
        return tl.where(has_nan, float("nan"), tl.max(tl.where(is_nan, -float("inf"), x), axis=axis))


@triton.jit
def _exp(s, FTZ: tl.constexpr):
    """``exp(s)``; with ``FTZ`` (float32 on NVIDIA PTX only) one ``ex2.approx.ftz``: results below
    float32's smallest normal (~1.2e-38) become 0, which saves the subnormal fix-up around the
    ``ex2`` and changes no float16 output and no float32 one by more than the SPEC's 1e-9."""
    if FTZ:
        return tl.inline_asm_elementwise(
            "ex2.approx.ftz.f32 $0, $1;", "=f,f", [s * 1.4426950408889634], dtype=tl.float32, is_pure=True, pack=1
        )
    else:
        return tl.exp(s)


@triton.jit
def _cast_out(y, dst: tl.constexpr, NATIVE: tl.constexpr, BOUNDED: tl.constexpr):
    """``y.to(dst)`` rounded to nearest even, values past the largest finite of ``dst``
    becoming +-inf. ``NATIVE`` (NVIDIA PTX): the hardware casts do exactly that from float32.
    Otherwise (the interpreter, whose casts warn on overflow and truncate to bfloat16; and any
    cast from float64) the rounding is done by hand. ``BOUNDED``: ``|y| <= 1`` (softmax), no
    overflow to handle."""
    if NATIVE and y.dtype == tl.float32:
        return y.to(dst)
    big: tl.constexpr = 0.0
    if not BOUNDED:
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
def _log_total(c, d):
    """``log(c + d)`` for ``c`` entries at the max and a sum ``d`` below it, ``0`` for an empty sum
    (a row of -inf). With one entry at the max it is ``log1p(d)`` (Goldberg's trick: ``log(u) *
    d / (u - 1)`` for ``u = 1 + d``), so that ``-log S`` keeps its relative accuracy when ``S`` is
    within an ulp of 1; one ``log`` either way."""
    one = c == 1.0
    u = tl.where(one, 1.0 + d, c + d)
    log_u = tl.log(tl.where(u == 0.0, 1.0, u))
    exact = u == 1.0  # log1p(d) = d to working precision
    return tl.where(one, tl.where(exact, d, log_u * (d / tl.where(exact, 1.0, u - 1.0))), log_u)


@triton.jit
def _inf_rule(x, m):
    """The rare rows whose max ``m`` is +inf, made ordinary: their entries become ``0`` at +inf
    and ``-inf`` elsewhere, their max ``0``; ``x - m`` is then the SPEC's shift for them. The
    caller runs this only when some row of its tile has a +inf (a uniform branch). ``x`` is a
    fused tile ``[K, ROWS, W]``, ``m`` its rows' maxima ``[ROWS]``."""
    inf_row = m == float("inf")
    x = tl.where(inf_row[None, :, None], tl.where(x == float("inf"), 0.0, -float("inf")), x)
    return x, tl.where(inf_row, 0.0, m)


@triton.jit
def _row_sum(t):
    """Per-row sums of a fused tile ``[K, ROWS, W]``: the K pieces a thread holds first, then its lanes."""
    return tl.sum(tl.sum(t, axis=0), axis=1)


@triton.jit
def _fused_offsets(row, rows, cols, stride, BLOCK: tl.constexpr, K: tl.constexpr):
    """Offsets and mask of a fused tile ``[K, ROWS, BLOCK // K]``: element ``(k, r, j)`` is column
    ``k * (BLOCK // K) + j`` of row ``row[r]``. With the column pieces outermost, Triton's layout gives
    each row to the lanes of one warp (``BLOCK // K`` columns across them, the K pieces in each
    thread's registers), so a row's reductions are a thread's own sums then a few shuffles: no shared
    memory, and the per-row scalar work (the normaliser, ``log S``) is done once per thread, not once
    per row of the tile. K = 1 is the plain ``[ROWS, BLOCK]`` tile."""
    W: tl.constexpr = BLOCK // K
    col = tl.arange(0, K)[:, None, None] * W + tl.arange(0, W)[None, None, :]
    r3 = row[None, :, None]
    return r3 * stride + col, (r3 < rows) & (col < cols)


@triton.jit
def _fwd_fused_kernel(
    x_ptr, out_ptr, rows, cols, x_stride, out_stride, pid0,
    BLOCK: tl.constexpr, ROWS: tl.constexpr, K: tl.constexpr, LOG: tl.constexpr, ACC_F64: tl.constexpr,
    NATIVE: tl.constexpr,
):  # fmt: skip
    row = (tl.program_id(0).to(tl.int64) + pid0) * ROWS + tl.arange(0, ROWS).to(tl.int64)
    x_off, mask = _fused_offsets(row, rows, cols, x_stride, BLOCK, K)
    x = _acc(tl.load(x_ptr + x_off, mask=mask, other=-float("inf")), ACC_F64)
    m = _nan_max(_nan_max(x, 0, NATIVE), 1, NATIVE)  # NaN for a row with a NaN: then every s below is NaN
    if _RARE_CASES:  # noqa: SIM102 (a constexpr: the branch compiled out when off)
        if tl.max(m, axis=0) == float("inf"):
            x, m = _inf_rule(x, m)
    s = x - tl.where(m == -float("inf"), 0.0, m)[None, :, None]
    dst: tl.constexpr = out_ptr.dtype.element_ty
    if LOG:
        e = _exp(s, NATIVE and not ACC_F64)
        at_max = s == 0.0  # the max's entries
        c = _row_sum(at_max.to(e.dtype))
        d = _row_sum(tl.where(at_max, 0.0, e))
        y = s - _log_total(c, d)[None, :, None]
    else:
        e = _exp(s, NATIVE and not ACC_F64 and dst != tl.bfloat16)  # bfloat16 keeps float32's subnormals
        total = _row_sum(e)
        y = e * (1.0 / tl.where(total == 0.0, 1.0, total))[None, :, None]  # a row of -inf sums to 0
    out_off, _ = _fused_offsets(row, rows, cols, out_stride, BLOCK, K)
    tl.store(out_ptr + out_off, _cast_out(y, dst, NATIVE, not LOG), mask=mask)


@triton.jit
def _merge(m, c, d, k, mb, cb, db, kb):
    """Two partials (max, count at the max, sum below it, +inf count) as one."""
    mn = tl.maximum(m, mb)
    base = tl.where(mn == -float("inf"), 0.0, mn)
    c_out = tl.where(m == mn, c, 0.0) + tl.where(mb == mn, cb, 0.0)
    d_out = tl.where(m == mn, d, (d + c) * tl.exp(m - base)) + tl.where(mb == mn, db, (db + cb) * tl.exp(mb - base))
    return mn, c_out, d_out, k + kb


@triton.jit
def _block_partial(x_in, ACC_F64: tl.constexpr, LOG: tl.constexpr, FTZ: tl.constexpr, NATIVE: tl.constexpr):
    """The partial of one block ``x`` (accumulation dtype, pads = -inf): ``(m, c, d, k)``.

    ``m`` is its max (NaN when it holds a NaN, which makes ``d`` NaN, and the combination carries
    that to the row); ``k`` counts +inf. log_softmax keeps ``c``, how many entries equal ``m``, apart
    from ``d``, the sum of ``exp(x - m)`` over the others, so that ``log(c + d)`` stays accurate when
    ``d`` is tiny; softmax only needs the sum (``c = 0``, ``d`` = all of it). A block with a +inf
    (rare; a uniform branch) gives only its count, ``m = -inf``: its row's output is the +inf rule,
    for which nothing else matters.
    """
    m_in = _nan_max(x_in, 0, NATIVE)
    x = _acc(x_in, ACC_F64)
    m = _acc(m_in, ACC_F64)
    zero = tl.zeros([], x.dtype)
    if _RARE_CASES:
        if m == float("inf"):
            k = tl.sum((x == float("inf")).to(x.dtype), axis=0)
            m, c, d = -float("inf") + zero, zero, zero
        else:
            m, c, d, k = _finite_partial(x, m, x_in == m_in, zero, LOG, FTZ)
    else:
        m, c, d, k = _finite_partial(x, m, x_in == m_in, zero, LOG, FTZ)
    return m, c, d, k


@triton.jit
def _finite_partial(x, m, at_max, zero, LOG: tl.constexpr, FTZ: tl.constexpr):
    """:func:`_block_partial` of a block without +inf (``m`` its max, finite, -inf or NaN; ``at_max``: the
    entries equal to it, compared in the input dtype)."""
    s = x - tl.where(m == -float("inf"), 0.0, m)
    e = _exp(s, FTZ)
    if LOG:
        d = tl.sum(tl.where(at_max, 0.0, e), axis=0)
        # The entries at the max have e = 1 exactly: their count is the whole sum less d, to the nearest integer
        # (the two sums' rounding, < 0.01 for a block of 4,096, is far below 1/2): one add an element, not a
        # select and an add.
        c = tl.floor(tl.sum(e, axis=0) - d + 0.5)
    else:
        c = zero
        d = tl.sum(e, axis=0)
    return m, c, d, zero


@triton.jit
def _chunk_partial(
    x_row, begin, cols, BLOCK: tl.constexpr, CHUNK_BLOCKS: tl.constexpr, LOG: tl.constexpr, ACC_F64: tl.constexpr,
    NATIVE: tl.constexpr,
):  # fmt: skip
    """The partial of the chunk of ``CHUNK_BLOCKS`` blocks at ``begin``: the one code both the
    looped and the split path run per chunk (same blocks, same reductions, same merge order), so
    that their partials are bitwise the same. Unforced float32 plans have one block per chunk."""
    lane = tl.arange(0, BLOCK)
    x = tl.load(x_row + begin + lane, mask=begin + lane < cols, other=-float("inf"), eviction_policy="evict_last")
    m, c, d, k = _block_partial(x, ACC_F64, LOG, NATIVE and not ACC_F64, NATIVE)
    for j in tl.static_range(1, CHUNK_BLOCKS):
        col = begin + j * BLOCK + lane
        x = tl.load(x_row + col, mask=col < cols, other=-float("inf"), eviction_policy="evict_last")
        mb, cb, db, kb = _block_partial(x, ACC_F64, LOG, NATIVE and not ACC_F64, NATIVE)
        m, c, d, k = _merge(m, c, d, k, mb, cb, db, kb)
    return m, c, d, k


@triton.jit
def _store_partial(ws, m, c, d, k):
    tl.store(ws + 0, m)
    tl.store(ws + 1, c)
    tl.store(ws + 2, d)
    tl.store(ws + 3, k)


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
def _row_normaliser(ws_row, n_split, SPLIT_P2: tl.constexpr):
    """Combine a row's ``n_split`` partials (the same code and order on both paths) into what
    the write pass needs: ``(m, scale, log_s)``.

    ``m`` is the row's max, ``+inf`` when it holds a +inf and NaN when it holds a NaN (a chunk's
    NaN sum poisons the total); softmax is ``exp(x - m) * scale``, log_softmax ``x - m - log_s``
    (with the +inf rule when ``m`` is +inf: ``scale = 1 / k``, ``log_s = log k``).
    """
    idx = tl.arange(0, SPLIT_P2)
    pmask = idx < n_split
    ws = ws_row + idx * 4
    m_p = tl.load(ws + 0, mask=pmask, other=-float("inf"))
    c_p = tl.load(ws + 1, mask=pmask, other=0.0)
    d_p = tl.load(ws + 2, mask=pmask, other=0.0)
    k = tl.sum(tl.load(ws + 3, mask=pmask, other=0.0), axis=0)
    m, c, d = _combine(m_p, c_p, d_p)
    total = c + d
    total = tl.where(total == 0.0, 1.0, total)
    log_s = tl.where(k > 0, tl.log(tl.where(k > 0, k, 1.0)), _log_total(c, d))
    m = tl.where(d != d, float("nan"), tl.where(k > 0, float("inf"), m))
    return m, 1.0 / tl.where(k > 0, k, total), log_s


@triton.jit
def _output_values(x, base, scale, log_s, dst: tl.constexpr, FTZ: tl.constexpr, LOG: tl.constexpr,
                   ACC_F64: tl.constexpr, NATIVE: tl.constexpr):  # fmt: skip
    """The outputs of entries ``x`` of a row with a finite or -inf max (``base``: the max, 0 for -inf)."""
    s = _acc(x, ACC_F64) - base
    if LOG:  # noqa: SIM108 (constexpr branch)
        y = s - log_s
    else:
        y = _exp(s, FTZ) * scale
    return _cast_out(y, dst, NATIVE, not LOG)


@triton.jit
def _write_edge(x_row, out_row, begin, end, base, scale, log_s, VEC: tl.constexpr, FTZ: tl.constexpr,
                LOG: tl.constexpr, ACC_F64: tl.constexpr, NATIVE: tl.constexpr):  # fmt: skip
    """The outputs of columns ``[begin, end)``, fewer than ``VEC``, one access each."""
    col = begin + tl.arange(0, VEC)
    mask = col < end
    x = tl.load(x_row + col, mask=mask, other=0.0, eviction_policy="evict_first")
    y = _output_values(x, base, scale, log_s, out_row.dtype.element_ty, FTZ, LOG, ACC_F64, NATIVE)
    tl.store(out_row + col, y, mask=mask)


@triton.jit
def _write_range(
    x_ptr, x_off, out_ptr, out_off, begin, end, cols, m, scale, log_s, BACKWARDS: tl.constexpr,
    BLOCK: tl.constexpr, VEC: tl.constexpr, LOG: tl.constexpr, ACC_F64: tl.constexpr, NATIVE: tl.constexpr,
):  # fmt: skip
    """Write the outputs of columns ``[begin, end)`` of the row at ``x_ptr + x_off`` to ``out_ptr + out_off``
    (block by block; last block first when ``BACKWARDS``, so that the tail the stats pass read last is still
    in L2). ``m`` as :func:`_row_normaliser` gives it; the +inf rule runs in its own loop, off the usual path.

    ``VEC > 1`` (rows whose length or stride is not a multiple of 16, whose input and output reach a 16-byte
    boundary at the same column): the columns up to that boundary and past the last whole group of ``VEC``
    are written apart, fewer than ``VEC`` each, and the groups between with 128-bit accesses; the host
    checks the alignment of both tensors and the strides' congruence, the kernel is told the offsets'
    divisibility. An element's output does not depend on which part writes it (no reduction here).
    """
    if _RARE_CASES:
        if m == float("inf"):  # k entries +inf: 1/k (-log k) there, 0 (-inf) elsewhere
            _write_inf_rule(x_ptr + x_off, out_ptr + out_off, begin, end, cols, scale, log_s, BACKWARDS, BLOCK, LOG,
                            ACC_F64, NATIVE)  # fmt: skip
        else:
            _write_finite(x_ptr, x_off, out_ptr, out_off, begin, end, cols, m, scale, log_s, BACKWARDS, BLOCK, VEC,
                          LOG, ACC_F64, NATIVE)  # fmt: skip
    else:
        _write_finite(x_ptr, x_off, out_ptr, out_off, begin, end, cols, m, scale, log_s, BACKWARDS, BLOCK, VEC, LOG,
                      ACC_F64, NATIVE)  # fmt: skip


@triton.jit
def _write_inf_rule(
    x_row, out_row, begin, end, cols, scale, log_s, BACKWARDS: tl.constexpr, BLOCK: tl.constexpr, LOG: tl.constexpr,
    ACC_F64: tl.constexpr, NATIVE: tl.constexpr,
):  # fmt: skip
    """:func:`_write_range` of a row with ``k`` entries +inf: ``1 / k`` (``-log k``) there, 0 (-inf) elsewhere."""
    lane = tl.arange(0, BLOCK)
    dst: tl.constexpr = out_row.dtype.element_ty
    n_blocks = tl.cdiv(end - begin, BLOCK)
    for i in range(0, n_blocks):
        col = begin + ((n_blocks - 1 - i) if BACKWARDS else i) * BLOCK + lane
        mask = col < cols
        x = tl.load(x_row + col, mask=mask, other=0.0, eviction_policy="evict_first")
        at_inf = x == float("inf")
        if LOG:  # noqa: SIM108 (constexpr branch)
            y = tl.where(at_inf, -log_s, -float("inf"))
        else:
            y = tl.where(at_inf, scale, 0.0)
        tl.store(out_row + col, _cast_out(_acc(y, ACC_F64), dst, NATIVE, False), mask=mask)


@triton.jit
def _write_finite(
    x_ptr, x_off, out_ptr, out_off, begin, end, cols, m, scale, log_s, BACKWARDS: tl.constexpr,
    BLOCK: tl.constexpr, VEC: tl.constexpr, LOG: tl.constexpr, ACC_F64: tl.constexpr, NATIVE: tl.constexpr,
):  # fmt: skip
    """:func:`_write_range` of a row whose max ``m`` is finite or -inf."""
    lane = tl.arange(0, BLOCK)
    dst: tl.constexpr = out_ptr.dtype.element_ty
    ftz: tl.constexpr = NATIVE and not ACC_F64 and (LOG or dst != tl.bfloat16)
    x_row = x_ptr + x_off
    out_row = out_ptr + out_off
    base = tl.where(m == -float("inf"), 0.0, m)  # a row of -inf: exp(-inf - 0) = 0
    if VEC > 1:
        lead = (VEC - (x_off + begin) % VEC) % VEC
        body = tl.minimum(begin + lead, end)
        n_body = (end - body) // VEC * VEC
        _write_edge(x_row, out_row, begin, body, base, scale, log_s, VEC, ftz, LOG, ACC_F64, NATIVE)  # the head
        _write_edge(x_row, out_row, body + n_body, end, base, scale, log_s, VEC, ftz, LOG, ACC_F64, NATIVE)  # tail
        x_body = x_ptr + tl.multiple_of(x_off + body, VEC)
        out_body = out_ptr + tl.multiple_of(out_off + body, VEC)
        n_vec = tl.multiple_of(n_body, VEC)
        n_group_blocks = tl.cdiv(n_body, BLOCK)
        for g in range(0, n_group_blocks):  # (names apart from the other branches': other int types)
            at = ((n_group_blocks - 1 - g) if BACKWARDS else g) * BLOCK + lane
            in_body = at < n_vec
            xg = tl.load(x_body + at, mask=in_body, other=0.0, eviction_policy="evict_first")
            yg = _output_values(xg, base, scale, log_s, dst, ftz, LOG, ACC_F64, NATIVE)
            tl.store(out_body + at, yg, mask=in_body)
    else:
        n_blocks = tl.cdiv(end - begin, BLOCK)
        for i in range(0, n_blocks):
            col = begin + ((n_blocks - 1 - i) if BACKWARDS else i) * BLOCK + lane
            mask = col < cols
            x = tl.load(x_row + col, mask=mask, other=0.0, eviction_policy="evict_first")
            tl.store(
                out_row + col, _output_values(x, base, scale, log_s, dst, ftz, LOG, ACC_F64, NATIVE), mask=mask
            )


@triton.jit
def _fwd_looped_kernel(
    x_ptr, out_ptr, ws_ptr, cols, x_stride, out_stride, chunk, n_split, pid0,
    BLOCK: tl.constexpr, CHUNK_BLOCKS: tl.constexpr, SPLIT_P2: tl.constexpr, VEC: tl.constexpr, LOG: tl.constexpr,
    ACC_F64: tl.constexpr, NATIVE: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64) + pid0
    x_row = x_ptr + row * x_stride
    ws_row = ws_ptr + row * n_split * 4
    for part in range(0, n_split):
        m, c, d, k = _chunk_partial(x_row, part * chunk, cols, BLOCK, CHUNK_BLOCKS, LOG, ACC_F64, NATIVE)
        _store_partial(ws_row + part * 4, m, c, d, k)
    tl.debug_barrier()  # the partials stored above, visible to every thread of the program
    m, scale, log_s = _row_normaliser(ws_row, n_split, SPLIT_P2)
    _write_range(x_ptr, row * x_stride, out_ptr, row * out_stride, 0, cols, cols, m, scale, log_s, True, BLOCK, VEC,
                 LOG, ACC_F64, NATIVE)  # fmt: skip


@triton.jit
def _fwd_split_stats_kernel(
    x_ptr, ws_ptr, cols, x_stride, chunk, n_split, pid0, pid1,
    BLOCK: tl.constexpr, CHUNK_BLOCKS: tl.constexpr, LOG: tl.constexpr, ACC_F64: tl.constexpr, NATIVE: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64) + pid0
    part = tl.program_id(1) + pid1
    m, c, d, k = _chunk_partial(x_ptr + row * x_stride, part * chunk, cols, BLOCK, CHUNK_BLOCKS, LOG, ACC_F64, NATIVE)
    _store_partial(ws_ptr + (row * n_split + part) * 4, m, c, d, k)


@triton.jit
def _fwd_split_write_kernel(
    x_ptr, out_ptr, ws_ptr, cols, x_stride, out_stride, chunk, n_split, pid0, pid1,
    BLOCK: tl.constexpr, SPLIT_P2: tl.constexpr, VEC: tl.constexpr, LOG: tl.constexpr, ACC_F64: tl.constexpr,
    NATIVE: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64) + pid0
    part = tl.program_id(1) + pid1
    m, scale, log_s = _row_normaliser(ws_ptr + row * n_split * 4, n_split, SPLIT_P2)
    begin = part * chunk
    _write_range(
        x_ptr, row * x_stride, out_ptr, row * out_stride, begin, tl.minimum(begin + chunk, cols), cols,
        m, scale, log_s, False, BLOCK, VEC, LOG, ACC_F64, NATIVE,
    )  # fmt: skip


@triton.jit
def _bwd_fused_kernel(
    y_ptr, g_ptr, out_ptr, rows, cols, y_stride, g_stride, out_stride, pid0,
    BLOCK: tl.constexpr, ROWS: tl.constexpr, K: tl.constexpr, LOG: tl.constexpr, ACC_F64: tl.constexpr,
    NATIVE: tl.constexpr,
):  # fmt: skip
    row = (tl.program_id(0).to(tl.int64) + pid0) * ROWS + tl.arange(0, ROWS).to(tl.int64)
    y_off, mask = _fused_offsets(row, rows, cols, y_stride, BLOCK, K)
    g_off, _ = _fused_offsets(row, rows, cols, g_stride, BLOCK, K)
    y = _acc(tl.load(y_ptr + y_off, mask=mask, other=0.0), ACC_F64)
    g = _acc(tl.load(g_ptr + g_off, mask=mask, other=0.0), ACC_F64)
    if LOG:
        total = _row_sum(g)
        r = g - _exp(y, NATIVE and not ACC_F64) * total[None, :, None]
    else:
        total = _row_sum(g * y)
        r = y * (g - total[None, :, None])
    r = _cast_out(r, out_ptr.dtype.element_ty, NATIVE, False)
    out_off, _ = _fused_offsets(row, rows, cols, out_stride, BLOCK, K)
    tl.store(out_ptr + out_off, r, mask=mask)


@triton.jit
def _bwd_looped_kernel(
    y_ptr, g_ptr, out_ptr, cols, y_stride, g_stride, out_stride, pid0,
    BLOCK: tl.constexpr, LOG: tl.constexpr, ACC_F64: tl.constexpr, NATIVE: tl.constexpr,
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
            r = g - _exp(y, NATIVE and not ACC_F64) * total
        else:
            r = y * (g - total)
        tl.store(out_row + col, _cast_out(r, out_ptr.dtype.element_ty, NATIVE, False), mask=mask)


# --------------------------------------------------------------------------- planning


class Plan(NamedTuple):
    """How one call runs: the path, its block, and the launch shape."""

    path: str  # "fused", "looped" or "split"
    block: int  # columns per block (fused: the whole row, padded to a power of two)
    rows_per_program: int  # fused only; 1 otherwise
    split: int  # chunks per row (looped and split: the same for both; fused: 1)
    chunk: int  # columns per chunk, a multiple of ``block`` (fused: cols)
    num_warps: int
    pieces: int = 1  # fused only: K, the column pieces of a row in each thread (see _fused_offsets)


@functools.cache
def _sm_count(device_type: str, index: int | None) -> int:
    if device_type == "cuda" and torch.cuda.is_available():
        return int(torch.cuda.get_device_properties(0 if index is None else index).multi_processor_count)
    return _FALLBACK_SMS


def _check_pow2(name: str, value: int) -> None:
    if value < 1 or value & (value - 1):
        raise ValueError(f"{name} must be a power of two >= 1, got {value}")


def _fused_tile(block: int, rows_per_program: int, vector: int, acc_f64: bool) -> tuple[int, int]:
    """(K, warps) of a fused tile (see :func:`_fused_offsets`). Rows of up to 1,024 columns get about
    32 elements a thread (16 with float64 accumulation), each row within one warp: ``BLOCK / 32`` lanes
    across a row, each lane K accesses of ``vector`` elements. Longer rows keep one tile row across
    all the warps (K = 1). A function of the row length, the dtypes and the alignment only."""
    if block > 1024:
        return 1, _fused_warps(block * rows_per_program)
    per_thread = min(16 if acc_f64 else 32, block)
    pieces = max(per_thread // vector, 1)
    return pieces, min(max(block * rows_per_program // per_thread // 32, 1), 8)


def _vector(cols: int, *tensors: torch.Tensor) -> int:
    """Elements of the 128-bit accesses Triton can make on these rows (1 when it cannot vectorise):
    its specialisation needs 16-byte aligned data, and a row stride and length divisible by 16."""
    aligned = cols % 16 == 0 and all(t.data_ptr() % 16 == 0 and t.stride(0) % 16 == 0 for t in tensors)
    return max(16 // max(t.element_size() for t in tensors), 1) if aligned else 1


def _phase_vector(cols: int, x: torch.Tensor, out: torch.Tensor) -> int:
    """``VEC`` of the write pass (:func:`_write_range`): the elements of a 16-byte group of the narrower of
    ``x`` and ``out`` where Triton's specialisation cannot vectorise these rows (a length or a row stride not
    a multiple of 16) but every row's input and output reach a 16-byte boundary at the same column (both
    tensors 16-byte aligned, row strides congruent modulo the group); else 1 (the write as it was)."""
    if _vector(cols, x, out) > 1 or cols < 64:
        return 1
    vec = 16 // min(x.element_size(), out.element_size())
    if x.data_ptr() % 16 or out.data_ptr() % 16 or (x.stride(0) - out.stride(0)) % vec:
        return 1
    return vec


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
    vector: int = 4,
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
        pieces, warps = _fused_tile(block, rpp, vector, acc_f64)
        return Plan("fused", block, rpp, 1, cols, warps, pieces)

    if block_size is not None:
        block = min(block_size, row_p2)
    elif split is not None and split > 1:
        block = min(looped_block, triton.next_power_of_2(triton.cdiv(cols, split)))
    else:
        block = min(looped_block, row_p2)
    # about 32 elements per thread: a chunk's reductions (max, sums) cost per thread, not per element
    warps = min(max(block // 1024, 4), 16)

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
        rows, cols, x.device, acc_f64=acc_f64, block_size=block_size, split=split, rows_per_program=rows_per_program,
        vector=_vector(cols, x),
    )  # fmt: skip
    log = bool(log)
    native = native_ptx(x.device)
    with launch_guard(x):
        if plan.path == "fused":
            for grid, (pid0,) in grid_pieces((triton.cdiv(rows, plan.rows_per_program),)):
                _fwd_fused_kernel[grid](
                    x, out, rows, cols, x.stride(0), out.stride(0), pid0,
                    BLOCK=plan.block, ROWS=plan.rows_per_program, K=plan.pieces, LOG=log, ACC_F64=acc_f64,
                    NATIVE=native, num_warps=plan.num_warps,
                )  # fmt: skip
            return
        ws = torch.empty((rows, plan.split, 4), dtype=torch.float64 if acc_f64 else torch.float32, device=x.device)
        write_vec = _phase_vector(cols, x, out)
        split_p2 = triton.next_power_of_2(plan.split)
        if plan.path == "looped":
            for grid, (pid0,) in grid_pieces((rows,)):
                _fwd_looped_kernel[grid](
                    x, out, ws, cols, x.stride(0), out.stride(0), plan.chunk, plan.split, pid0,
                    BLOCK=plan.block, CHUNK_BLOCKS=plan.chunk // plan.block, SPLIT_P2=split_p2, VEC=write_vec,
                    LOG=log, ACC_F64=acc_f64, NATIVE=native, num_warps=plan.num_warps,
                    maxnreg=None if acc_f64 else _LOOPED_MAXNREG,
                )  # fmt: skip
            return
        pieces = grid_pieces((rows, plan.split))
        for grid, (pid0, pid1) in pieces:
            _fwd_split_stats_kernel[grid](
                x, ws, cols, x.stride(0), plan.chunk, plan.split, pid0, pid1,
                BLOCK=plan.block, CHUNK_BLOCKS=plan.chunk // plan.block, LOG=log, ACC_F64=acc_f64, NATIVE=native,
                num_warps=plan.num_warps,
            )  # fmt: skip
        for grid, (pid0, pid1) in pieces:
            _fwd_split_write_kernel[grid](
                x, out, ws, cols, x.stride(0), out.stride(0), plan.chunk, plan.split, pid0, pid1,
                BLOCK=plan.block, SPLIT_P2=split_p2, VEC=write_vec, LOG=log, ACC_F64=acc_f64, NATIVE=native,
                num_warps=max(plan.num_warps, _MIN_WRITE_WARPS),
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
        allow_split=False, vector=_vector(cols, y, grad),
    )  # fmt: skip
    log = bool(log)
    native = native_ptx(y.device)
    with launch_guard(y):
        if plan.path == "fused":
            for grid, (pid0,) in grid_pieces((triton.cdiv(rows, plan.rows_per_program),)):
                _bwd_fused_kernel[grid](
                    y, grad, out, rows, cols, y.stride(0), grad.stride(0), out.stride(0), pid0,
                    BLOCK=plan.block, ROWS=plan.rows_per_program, K=plan.pieces, LOG=log, ACC_F64=acc_f64,
                    NATIVE=native, num_warps=plan.num_warps, maxnreg=_BWD_FUSED_MAXNREG,
                )  # fmt: skip
        else:
            for grid, (pid0,) in grid_pieces((rows,)):
                _bwd_looped_kernel[grid](
                    y, grad, out, cols, y.stride(0), grad.stride(0), out.stride(0), pid0,
                    BLOCK=plan.block, LOG=log, ACC_F64=acc_f64, NATIVE=native, num_warps=plan.num_warps,
                )  # fmt: skip

"""Triton sampling kernels: the algorithm of :mod:`stablesoftmax.backends.torch_sampling`, on the GPU.

Same steps, same Philox4x32-10 stream, same uniform conversions and filter definitions as
the torch reference, so both return the same tokens except where two candidates tie
within float rounding. Nothing here synchronises with the device: every decision on the
host depends on shapes, dtypes, ``None``-ness and ``top_k_max`` only (CUDA-graph safe).

Launch plan for ``sample_rows`` (logits; ``B`` columns per block, ``nb = cdiv(V, B)``):

``_stats_kernel``      grid (row groups, nb): per block its max (NaN if the block holds a
                       NaN) and the lowest index of that max -> workspace (rows, nb).
``_threshold_kernel``  grid (row groups,), only with top-k / top-p: per row the filter
                       threshold as an ordered float key (``keep iff key(z) >= thr``),
                       found by bisection over the float's ordered bit pattern: top-k the
                       largest ``t`` with ``count(key >= t) >= k``, then top-p the smallest
                       ``t`` with ``mass(key > t) < top_p * kept mass`` (float64 sums).
``_block_kernel``      grid (row groups, nb): weights ``w_i`` (shift rule, ``z = s / T``
                       rounded to nearest, ``e = exp z``, filters) -> float64 block sums
                       and the last index with weight; without replacement also the race
                       key ``z_i - log E_i`` of every entry.
``_draw_kernel``       grid (rows, cdiv(n, SB)), with replacement: float64 prefix of the
                       row's block sums, per sample ``u_k * S`` -> its block, a re-read of
                       that block and a float64 ``tl.cumsum`` -> the index; greedy, NaN and
                       empty rows; log-probabilities ``z_i - log S``.

Without replacement the ``n`` largest race keys come from ``torch.topk`` on the key
workspace (the reference's selection), followed by a few sync-free torch ops.
``sample_probs`` runs ``_block_kernel`` / ``_draw_kernel`` in their probability mode.
float64 logits are handed to the torch reference (its float64 keys would need 64-bit
bisection; nobody samples float64 logits on a GPU hot path).

Every launch goes through :func:`~.triton_launch.grid_pieces`: a grid past CUDA's limits
(``nb > 65,535`` blocks, for more than ~67 million categories, or ``cdiv(n, SB) > 65,535``
sample groups, for more than ~524,000 samples at a 152,064 vocabulary) is launched as
several pieces, each kernel adding its piece's program-id offsets (``pid0``, ``pid1``).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from . import torch_sampling as _reference
from .torch_softmax import _shifted
from .triton_launch import grid_pieces, launch_guard

__all__ = ["sample_probs", "sample_rows"]

# Columns per block (GPU / interpreter) and elements per program tile.
_BLOCK_GPU, _BLOCK_INTERP = 1024, 4096
_TILE_GPU, _TILE_INTERP = 4096, 1 << 20
# Columns per step of the threshold bisection loops.
_FBLOCK_GPU, _FBLOCK_INTERP = 4096, 16384

# Rows one threshold program bisects at once (short rows): each row's bisection state lives in
# registers, and 512 rows per program spilled kilobytes per thread.
_MAX_THRESHOLD_ROWS = 16
# Register cap handed to ptxas for the threshold kernel: left alone, ptxas holds it to 64-72
# registers (occupancy) and spills; the kernel is bound by its passes over the row, not by occupancy.
_THRESHOLD_MAXNREG = 128

# From this many samples per row on, blocks shrink towards sqrt(V) columns.
_MANY_SAMPLES = 256

_KEY_NEG_INF = -2139095041  # ordered key of float32 -inf (0xFF800000 ^ 0x7FFFFFFF as int32)
_KEY_NONE = -(2**31)  # a threshold that keeps everything


# --------------------------------------------------------------------------- device helpers


@triton.jit
def _philox(k0, k1, c0, c1, c2, c3):
    """Philox4x32-10 on uint32 tensors of one shape; key (k0, k1), counter (c0, c1, c2, c3)."""
    for _ in tl.static_range(10):
        hi0 = tl.umulhi(c0, 0xD2511F53)
        lo0 = c0 * 0xD2511F53
        hi1 = tl.umulhi(c2, 0xCD9E8D57)
        lo1 = c2 * 0xCD9E8D57
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = k0 + 0x9E3779B9
        k1 = k1 + 0xBB67AE85
    return c0, c1, c2, c3


@triton.jit
def _stream(seed, row_id, offset, c0):
    """Philox words for counters ``c0`` (uint32) of a row's stream (int64 seed, row id, offset)."""
    zero = tl.zeros_like(c0)
    k0 = zero + seed.to(tl.uint32)
    k1 = zero + (seed >> 32).to(tl.uint32)
    c1 = zero + row_id.to(tl.uint32)
    c2 = zero + offset.to(tl.uint32)
    c3 = zero + (offset >> 32).to(tl.uint32)
    return _philox(k0, k1, c0, c1, c2, c3)


@triton.jit
def _shift(x, m):
    """``s = x - m`` under the softmax shift rule; ``m`` broadcasts against ``x``."""
    inf = float("inf")
    m_safe = tl.where(tl.abs(m) == inf, 0.0, m)
    s_inf = tl.where(x == inf, 0.0, -inf)
    return tl.where(m == inf, s_inf, x - m_safe)


@triton.jit
def _logit_z(x, m, tdiv):
    """``z = shift(x, m) / T`` in float32, rounded to nearest like torch's division (the subtraction
    first, then one division); ``s = -inf`` gives ``-inf`` at every ``T`` (``-inf / inf`` is NaN).

    ``s`` is first clamped to ``-1e38 * min(T, 1)``, so that ``z >= -1e38`` stays finite at tiny
    ``T`` (no overflow, which the interpreter reports): such an entry's weight is 0 either way.
    """
    s = _shift(x, m)
    neg_inf = s == -float("inf")
    t = tl.zeros_like(s) + tdiv
    s = tl.maximum(tl.where(neg_inf, -1.0, s), -1e38 * tl.minimum(t, 1.0))
    return tl.where(neg_inf, -float("inf"), tl.math.div_rn(s, t))


@triton.jit
def _key(z):
    """Ordered int32 key of float32 ``z`` (int order == float order; -0.0 counts as +0.0)."""
    z = tl.where(z == 0.0, 0.0, z)
    b = z.to(tl.int32, bitcast=True)
    return tl.where(b < 0, b ^ 0x7FFFFFFF, b)


@triton.jit
def _weights(x, m, tdiv, thr, minp, HAS_THR: tl.constexpr, HAS_MINP: tl.constexpr):
    """``(z, w)``: scaled logits and filtered weights ``w = e`` where kept, else 0."""
    z = _logit_z(x, m, tdiv)
    e = tl.exp(z)
    keep = e > 0.0
    if HAS_THR:
        keep = keep & (_key(z) >= thr)
    if HAS_MINP:
        keep = keep & (e >= minp)
    return z, tl.where(keep, e, 0.0)


@triton.jit
def _row_max(ws_max_ptr, rows, rmask, nb, NB_P2: tl.constexpr):
    """Per row (vector ``rows``): NaN-free max over the block maxima, and whether a NaN was seen."""
    j = tl.arange(0, NB_P2)
    msk = rmask[:, None] & (j[None, :] < nb)
    bm = tl.load(ws_max_ptr + rows[:, None] * nb + j[None, :], mask=msk, other=-float("inf"))
    is_nan = bm != bm
    m = tl.max(tl.where(is_nan, -float("inf"), bm), axis=1)
    return m, tl.max(is_nan.to(tl.int32), axis=1) > 0


# --------------------------------------------------------------------------- kernels


@triton.jit
def _stats_kernel(x_ptr, stride, n_rows, V, ws_max_ptr, ws_arg_ptr, nb, pid0, pid1, R: tl.constexpr, B: tl.constexpr):
    rows = (tl.program_id(0).to(tl.int64) + pid0) * R + tl.arange(0, R)
    rmask = rows < n_rows
    part = tl.program_id(1) + pid1
    cols = part * B + tl.arange(0, B)
    msk = rmask[:, None] & (cols[None, :] < V)
    x = tl.load(x_ptr + rows[:, None] * stride + cols[None, :], mask=msk, other=-float("inf")).to(tl.float32)
    is_nan = x != x
    xc = tl.where(is_nan, -float("inf"), x)
    bmax = tl.max(xc, axis=1)
    arg = tl.min(tl.where(msk & (xc == bmax[:, None]), cols[None, :], 2147483647), axis=1)
    any_nan = tl.max(is_nan.to(tl.int32), axis=1) > 0
    out = rows * nb + part
    tl.store(ws_max_ptr + out, tl.where(any_nan, float("nan"), bmax), mask=rmask)
    tl.store(ws_arg_ptr + out, arg, mask=rmask)


@triton.jit
def _threshold_kernel(
    x_ptr, stride, n_rows, V, ws_max_ptr, nb, temp_ptr, topk_ptr, topp_ptr, thr_ptr, pid0,
    HAS_TOPK: tl.constexpr, HAS_TOPP: tl.constexpr, R: tl.constexpr, FB: tl.constexpr, NB_P2: tl.constexpr,
):  # fmt: skip
    # The bisection state is int32: keys lie in [key(-inf), key(0)] = [-2139095041, 0], so every
    # ``hi - lo + 1`` fits (int64 state doubled the registers of every per-row value and spilled).
    rows = (tl.program_id(0).to(tl.int64) + pid0) * R + tl.arange(0, R)
    rmask = rows < n_rows
    m, _ = _row_max(ws_max_ptr, rows, rmask, nb, NB_P2)
    t = tl.load(temp_ptr + rows, mask=rmask, other=1.0)
    tdiv = tl.where(t == 0.0, 1.0, t)[:, None]
    m2 = m[:, None]
    x_rows = x_ptr + rows[:, None] * stride
    thr = tl.full([R], -2147483648, tl.int32)
    if HAS_TOPK:
        k = tl.load(topk_ptr + rows, mask=rmask, other=0)
        lo = tl.full([R], -2139095041, tl.int32)  # key(-inf): count(key >= lo) = V >= k
        hi = tl.zeros([R], tl.int32)  # key(0): z <= 0
        for _ in range(32):
            mid = lo + ((hi - lo + 1) >> 1)
            cnt = tl.zeros([R], tl.int32)
            for c in range(0, V, FB):
                cols = c + tl.arange(0, FB)
                msk = rmask[:, None] & (cols[None, :] < V)
                x = tl.load(x_rows + cols[None, :], mask=msk, other=-float("inf"))
                key = _key(_logit_z(x.to(tl.float32), m2, tdiv))
                cnt += tl.sum((msk & (key >= mid[:, None])).to(tl.int32), axis=1)
            ok = cnt.to(tl.int64) >= k
            lo = tl.where(ok, mid, lo)
            hi = tl.where(ok, hi, mid - 1)
        thr = tl.where(k > 0, lo, thr)
    if HAS_TOPP:
        p = tl.load(topp_ptr + rows, mask=rmask, other=1.0)
        total = tl.zeros([R], tl.float64)
        for c in range(0, V, FB):
            cols = c + tl.arange(0, FB)
            msk = rmask[:, None] & (cols[None, :] < V)
            x = tl.load(x_rows + cols[None, :], mask=msk, other=-float("inf"))
            z, w = _weights(x.to(tl.float32), m2, tdiv, thr[:, None], 0.0, True, False)
            total += tl.sum(w.to(tl.float64), axis=1)
        goal = p.to(tl.float64) * total
        lo = tl.maximum(thr, -2139095041)
        hi = tl.zeros([R], tl.int32)
        for _ in range(32):
            mid = lo + ((hi - lo) >> 1)
            mass = tl.zeros([R], tl.float64)
            for c in range(0, V, FB):
                cols = c + tl.arange(0, FB)
                msk = rmask[:, None] & (cols[None, :] < V)
                x = tl.load(x_rows + cols[None, :], mask=msk, other=-float("inf"))
                z, w = _weights(x.to(tl.float32), m2, tdiv, thr[:, None], 0.0, True, False)
                above = _key(z) > mid[:, None]
                mass += tl.sum(tl.where(above, w, 0.0).to(tl.float64), axis=1)
            ok = mass < goal
            hi = tl.where(ok, mid, hi)
            lo = tl.where(ok, lo, mid + 1)
        thr = tl.where(p < 1.0, lo, thr)
    tl.store(thr_ptr + rows, thr, mask=rmask)


@triton.jit
def _block_kernel(
    x_ptr, stride, n_rows, V, ws_max_ptr, nb, temp_ptr, thr_ptr, minp_ptr,
    seed_ptr, rowid_ptr, off_ptr, sum_ptr, last_ptr, key_ptr, pid0, pid1,
    IS_PROBS: tl.constexpr, ACC_F64: tl.constexpr, HAS_THR: tl.constexpr, HAS_MINP: tl.constexpr,
    RACE: tl.constexpr, R: tl.constexpr, B: tl.constexpr, NB_P2: tl.constexpr,
):  # fmt: skip
    rows = (tl.program_id(0).to(tl.int64) + pid0) * R + tl.arange(0, R)
    rmask = rows < n_rows
    part = tl.program_id(1) + pid1
    cols = part * B + tl.arange(0, B)
    msk = rmask[:, None] & (cols[None, :] < V)
    ptrs = x_ptr + rows[:, None] * stride + cols[None, :]
    if IS_PROBS:
        x = tl.load(ptrs, mask=msk, other=0.0)
        w = x.to(tl.float64) if ACC_F64 else x.to(tl.float32)
        log_w = tl.log(tl.where(w > 0.0, w, 1.0))
    else:
        x = tl.load(ptrs, mask=msk, other=-float("inf")).to(tl.float32)
        m, _ = _row_max(ws_max_ptr, rows, rmask, nb, NB_P2)
        t = tl.load(temp_ptr + rows, mask=rmask, other=1.0)
        tdiv = tl.where(t == 0.0, 1.0, t)
        thr = 0
        minp = 0.0
        if HAS_THR:
            thr = tl.load(thr_ptr + rows, mask=rmask, other=0)[:, None]
        if HAS_MINP:
            minp = tl.load(minp_ptr + rows, mask=rmask, other=0.0)[:, None]
        log_w, w = _weights(x, m[:, None], tdiv[:, None], thr, minp, HAS_THR, HAS_MINP)
    positive = w > 0.0
    out = rows * nb + part
    block_sum = tl.sum(w.to(tl.float64), axis=1)
    if IS_PROBS:  # a block holding a negative, NaN or infinite probability sums to NaN
        invalid = (w < 0.0) | (w != w) | (w == float("inf"))
        block_sum = tl.where(tl.max(invalid.to(tl.int32), axis=1) > 0, float("nan"), block_sum)
    tl.store(sum_ptr + out, block_sum, mask=rmask)
    tl.store(last_ptr + out, tl.max(tl.where(positive, cols[None, :], -1), axis=1), mask=rmask)
    if RACE:
        seed = tl.load(seed_ptr + rows, mask=rmask, other=0)[:, None]
        rid = tl.load(rowid_ptr + rows, mask=rmask, other=0)[:, None]
        off = tl.load(off_ptr + rows, mask=rmask, other=0)[:, None]
        c0 = (tl.zeros([R, B], tl.int32) + cols[None, :] // 4).to(tl.uint32)
        r0, r1, r2, r3 = _stream(seed, rid, off, c0)
        word = cols[None, :] % 4
        bits = tl.where(word == 0, r0, tl.where(word == 1, r1, tl.where(word == 2, r2, r3)))
        u = ((bits >> 9).to(tl.float32) + 0.5) * 1.1920928955078125e-07  # 2**-23: exact, in (0, 1)
        log_e = tl.log(-tl.log(u))
        key = tl.where(positive, log_w - log_e.to(log_w.dtype), -float("inf"))
        tl.store(key_ptr + rows[:, None] * V + cols[None, :], key, mask=msk)


@triton.jit
def _draw_kernel(
    x_ptr, stride, V, n, ws_max_ptr, ws_arg_ptr, sum_ptr, last_ptr, nb, temp_ptr, thr_ptr, minp_ptr,
    seed_ptr, rowid_ptr, off_ptr, tok_ptr, lp_ptr, pid0, pid1,
    IS_PROBS: tl.constexpr, ACC_F64: tl.constexpr, HAS_THR: tl.constexpr, HAS_MINP: tl.constexpr,
    WANT_LP: tl.constexpr, SB: tl.constexpr, B: tl.constexpr, NB_P2: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64) + pid0
    j = tl.arange(0, NB_P2)
    jm = j < nb
    sums = tl.load(sum_ptr + row * nb + j, mask=jm, other=0.0)
    row_invalid = tl.max((sums != sums).to(tl.int32), axis=0) > 0  # probabilities: an invalid entry
    sums = tl.where(sums < float("inf"), sums, 0.0)  # only a NaN row (its +inf hidden from the max) sums to inf
    incl = tl.cumsum(sums, axis=0)  # float64 prefix of the block sums
    total = tl.max(incl, axis=0)
    last_all = tl.max(tl.load(last_ptr + row * nb + j, mask=jm, other=-1), axis=0)

    k = (tl.program_id(1) + pid1) * SB + tl.arange(0, SB)
    kmask = k < n
    seed = tl.load(seed_ptr + row)
    r0, _, _, _ = _stream(seed, tl.load(rowid_ptr + row), tl.load(off_ptr + row), k.to(tl.uint32))
    target = r0.to(tl.float64) * 2.3283064365386963e-10 * total
    # the block: how many inclusive block prefixes are <= the target
    b = tl.sum(((incl[None, :] <= target[:, None]) & jm[None, :]).to(tl.int32), axis=1)
    in_range = b < nb
    excl = tl.max(tl.where(j[None, :] < b[:, None], incl[None, :], 0.0), axis=1)
    t_local = target - excl
    bc = tl.minimum(b, nb - 1)
    cols = bc[:, None] * B + tl.arange(0, B)[None, :]
    msk = (cols < V) & (kmask & in_range)[:, None]
    ptrs = x_ptr + row * stride + cols
    if IS_PROBS:
        if ACC_F64:
            w = tl.load(ptrs, mask=msk, other=0.0).to(tl.float64)
        else:
            w = tl.load(ptrs, mask=msk, other=0.0).to(tl.float32)
    else:
        m, has_nan = _row_max(ws_max_ptr, tl.zeros([1], tl.int64) + row, tl.full([1], 1, tl.int1), nb, NB_P2)
        t = tl.load(temp_ptr + row)
        tdiv = tl.where(t == 0.0, 1.0, t)
        thr = 0
        minp = 0.0
        if HAS_THR:
            thr = tl.load(thr_ptr + row)
        if HAS_MINP:
            minp = tl.load(minp_ptr + row)
        x = tl.load(ptrs, mask=msk, other=-float("inf")).to(tl.float32)
        _, w = _weights(x, m[:, None], tdiv, thr, minp, HAS_THR, HAS_MINP)
    cum = tl.cumsum(w.to(tl.float64), axis=1)
    inner = tl.sum((cum <= t_local[:, None]).to(tl.int32), axis=1)
    block_last = tl.load(last_ptr + row * nb + bc, mask=kmask, other=-1)
    idx = tl.where(in_range, tl.minimum(bc * B + inner, block_last), last_all)
    tok = tl.where(total > 0.0, idx, -1).to(tl.int64)
    if IS_PROBS:
        tok = tl.where(row_invalid, -1, tok)
    else:
        bm = tl.load(ws_max_ptr + row * nb + j, mask=jm, other=-float("inf"))
        m1 = tl.sum(m, axis=0)  # the (1,)-vector as a scalar
        nan1 = tl.sum(has_nan.to(tl.int32), axis=0) > 0
        args = tl.load(ws_arg_ptr + row * nb + j, mask=jm, other=2147483647)
        arg = tl.min(tl.where(jm & (bm == m1), args, 2147483647), axis=0).to(tl.int64)
        greedy = t == 0.0
        tok = tl.where(greedy, tl.where(m1 > -float("inf"), arg, -1), tok)
        tok = tl.where(nan1, -1, tok)
        if WANT_LP:
            xi = tl.load(x_ptr + row * stride + tl.maximum(tok, 0), mask=kmask, other=0.0).to(tl.float32)
            zi = _logit_z(xi, m1, tdiv)
            lp = zi.to(tl.float64) - tl.log(tl.where(total > 0.0, total, 1.0))
            lp = tl.where(greedy, 0.0, lp)
            lp = tl.where(tok >= 0, lp, float("nan"))
            tl.store(lp_ptr + row * n + k, lp.to(tl.float32), mask=kmask)
    tl.store(tok_ptr + row * n + k, tok, mask=kmask)


# --------------------------------------------------------------------------- host side


def _next_pow2(v: int) -> int:
    return 1 << max(int(v) - 1, 0).bit_length()


class _Plan:
    """Block and tile sizes for one call (shapes and device type only)."""

    def __init__(self, rows: int, cols: int, num_samples: int, device: torch.device) -> None:
        interp = device.type != "cuda"
        block_max, tile, fblock = (
            (_BLOCK_INTERP, _TILE_INTERP, _FBLOCK_INTERP) if interp else (_BLOCK_GPU, _TILE_GPU, _FBLOCK_GPU)
        )
        self.B = min(block_max, _next_pow2(cols))
        if num_samples >= _MANY_SAMPLES:  # each sample re-reads one block: balance block and search
            self.B = min(self.B, max(16, _next_pow2(math.isqrt(cols - 1) + 1)))
        self.nb = triton.cdiv(cols, self.B)
        self.NB_P2 = _next_pow2(self.nb)
        rows_p2 = _next_pow2(rows)
        self.R = max(1, min(rows_p2, tile // self.B))
        self.FB = min(fblock, _next_pow2(cols))
        # several short rows per threshold program: a tile of at most a quarter of a row step
        # (1,024 elements on a GPU; a larger tile of short rows spilled at any register count)
        self.RF = max(1, min(rows_p2, fblock // 4 // self.FB, _MAX_THRESHOLD_ROWS))
        self.SB = max(1, min(_next_pow2(num_samples), tile // max(self.B, self.NB_P2)))


def _workspace(rows: int, plan: _Plan, device: torch.device, stats: bool):
    ws = {
        "sum": torch.empty((rows, plan.nb), dtype=torch.float64, device=device),
        "last": torch.empty((rows, plan.nb), dtype=torch.int32, device=device),
    }
    if stats:
        ws["max"] = torch.empty((rows, plan.nb), dtype=torch.float32, device=device)
        ws["arg"] = torch.empty((rows, plan.nb), dtype=torch.int32, device=device)
    return ws


def _race_select(keys: torch.Tensor, num_samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``n`` largest race keys per row, in decreasing order; ``-1`` where a row runs out."""
    rows, cols = keys.shape
    n = min(num_samples, cols)
    vals, idx = torch.topk(keys, n, dim=1)
    idx = torch.where(vals > -math.inf, idx, -1)
    if n < num_samples:
        idx = torch.cat([idx, idx.new_full((rows, num_samples - n), -1)], dim=1)
    return idx


def sample_rows(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor | None,
    top_p: torch.Tensor | None,
    min_p: torch.Tensor | None,
    seed: torch.Tensor,
    row_id: torch.Tensor,
    offset: torch.Tensor,
    num_samples: int,
    replacement: bool,
    tokens: torch.Tensor,
    logprobs: torch.Tensor | None,
    top_k_max: int | None = None,
) -> None:
    """Sample ``tokens`` (rows, n) int64 from logits (rows, V); see :func:`torch_sampling.sample_rows`.

    ``top_k_max`` serves only greedy rows without replacement (the reference's
    :func:`~.torch_sampling.greedy_order`); the bisection does not need it.
    """
    with launch_guard(logits):  # every launch on the input's device and its current stream
        rows, cols = logits.shape
        if rows == 0:
            return
        if logits.dtype == torch.float64:
            _reference.sample_rows(
                logits, temperature, top_k, top_p, min_p, seed, row_id, offset, num_samples, replacement,
                tokens, logprobs, top_k_max=top_k_max,
            )  # fmt: skip
            return
        device = logits.device
        seed, row_id, offset = seed.contiguous(), row_id.contiguous(), offset.contiguous()
        plan = _Plan(rows, cols, num_samples, device)
        ws = _workspace(rows, plan, device, stats=True)
        stride = logits.stride(0)
        temperature = temperature.contiguous()
        for grid, (pid0, pid1) in grid_pieces((triton.cdiv(rows, plan.R), plan.nb)):
            _stats_kernel[grid](
                logits, stride, rows, cols, ws["max"], ws["arg"], plan.nb, pid0, pid1, R=plan.R, B=plan.B
            )
        has_thr = top_k is not None or top_p is not None
        thr = None
        if has_thr:
            thr = torch.empty(rows, dtype=torch.int32, device=device)
            topk_arg = top_k.contiguous() if top_k is not None else temperature
            topp_arg = top_p.contiguous() if top_p is not None else temperature
            for grid, (pid0,) in grid_pieces((triton.cdiv(rows, plan.RF),)):
                _threshold_kernel[grid](
                    logits, stride, rows, cols, ws["max"], plan.nb, temperature, topk_arg, topp_arg, thr, pid0,
                    HAS_TOPK=top_k is not None, HAS_TOPP=top_p is not None,
                    R=plan.RF, FB=plan.FB, NB_P2=plan.NB_P2, maxnreg=_THRESHOLD_MAXNREG,
                )  # fmt: skip
        minp = min_p.contiguous() if min_p is not None else temperature
        thr_arg = thr if thr is not None else temperature
        keys = None
        if not replacement:
            keys = torch.empty((rows, cols), dtype=torch.float32, device=device)
        for grid, (pid0, pid1) in grid_pieces((triton.cdiv(rows, plan.R), plan.nb)):
            _block_kernel[grid](
                logits, stride, rows, cols, ws["max"], plan.nb, temperature, thr_arg, minp,
                seed, row_id, offset, ws["sum"], ws["last"], keys if keys is not None else ws["sum"], pid0, pid1,
                IS_PROBS=False, ACC_F64=False, HAS_THR=has_thr, HAS_MINP=min_p is not None,
                RACE=not replacement, R=plan.R, B=plan.B, NB_P2=plan.NB_P2,
            )  # fmt: skip
        if replacement:
            lp = logprobs if logprobs is not None else tokens
            for grid, (pid0, pid1) in grid_pieces((rows, triton.cdiv(num_samples, plan.SB))):
                _draw_kernel[grid](
                    logits, stride, cols, num_samples, ws["max"], ws["arg"], ws["sum"], ws["last"], plan.nb,
                    temperature, thr_arg, minp, seed, row_id, offset, tokens, lp, pid0, pid1,
                    IS_PROBS=False, ACC_F64=False, HAS_THR=has_thr, HAS_MINP=min_p is not None,
                    WANT_LP=logprobs is not None, SB=plan.SB, B=plan.B, NB_P2=plan.NB_P2,
                )  # fmt: skip
            return
        # without replacement: the race's n largest keys, then the row rules (sync-free torch ops)
        assert keys is not None
        drawn = _race_select(keys, num_samples)
        bm = ws["max"]
        has_nan = torch.isnan(bm).any(dim=1, keepdim=True)
        m = torch.where(torch.isnan(bm), -math.inf, bm).amax(dim=1, keepdim=True)
        greedy = (temperature == 0)[:, None]
        # greedy rows: the n largest logits in order (the reference's rule, sync-free torch ops)
        greedy_tok = torch.where(m > -math.inf, _reference.greedy_order(logits, m, top_k, top_k_max, num_samples), -1)
        chosen = torch.where(greedy, greedy_tok, drawn)
        chosen = torch.where(has_nan, -1, chosen)
        tokens.copy_(chosen)
        if logprobs is not None:
            total = ws["sum"].sum(dim=1, keepdim=True)
            x = logits.gather(1, chosen.clamp_min(0)).float()
            z = _shifted(x, m, torch.float32) / torch.where(greedy, 1.0, temperature[:, None])
            picked = torch.where(greedy, 0.0, z.to(torch.float64) - torch.log(total))
            logprobs.copy_(torch.where(chosen >= 0, picked, math.nan))


def sample_probs(
    probs: torch.Tensor,
    seed: torch.Tensor,
    row_id: torch.Tensor,
    offset: torch.Tensor,
    num_samples: int,
    replacement: bool,
    tokens: torch.Tensor,
) -> None:
    """Draw from rows of weights into ``tokens``; a row holding a negative, NaN or infinite entry, or
    summing to zero, gets ``-1`` (as do draws past a row's non-zero entries without replacement)."""
    with launch_guard(probs):  # every launch on the input's device and its current stream
        rows, cols = probs.shape
        if rows == 0:
            return
        device = probs.device
        seed, row_id, offset = seed.contiguous(), row_id.contiguous(), offset.contiguous()
        acc_f64 = probs.dtype == torch.float64
        plan = _Plan(rows, cols, num_samples, device)
        ws = _workspace(rows, plan, device, stats=False)
        stride = probs.stride(0)
        keys = None
        if not replacement:
            keys = torch.empty((rows, cols), dtype=torch.float64 if acc_f64 else torch.float32, device=device)
        dummy = ws["sum"]
        for grid, (pid0, pid1) in grid_pieces((triton.cdiv(rows, plan.R), plan.nb)):
            _block_kernel[grid](
                probs, stride, rows, cols, dummy, plan.nb, dummy, dummy, dummy,
                seed, row_id, offset, ws["sum"], ws["last"], keys if keys is not None else dummy, pid0, pid1,
                IS_PROBS=True, ACC_F64=acc_f64, HAS_THR=False, HAS_MINP=False,
                RACE=not replacement, R=plan.R, B=plan.B, NB_P2=plan.NB_P2,
            )  # fmt: skip
        if replacement:
            for grid, (pid0, pid1) in grid_pieces((rows, triton.cdiv(num_samples, plan.SB))):
                _draw_kernel[grid](
                    probs, stride, cols, num_samples, dummy, dummy, ws["sum"], ws["last"], plan.nb,
                    dummy, dummy, dummy, seed, row_id, offset, tokens, tokens, pid0, pid1,
                    IS_PROBS=True, ACC_F64=acc_f64, HAS_THR=False, HAS_MINP=False,
                    WANT_LP=False, SB=plan.SB, B=plan.B, NB_P2=plan.NB_P2,
                )  # fmt: skip
            return
        assert keys is not None
        invalid = torch.isnan(ws["sum"]).any(dim=1, keepdim=True)
        tokens.copy_(torch.where(invalid, -1, _race_select(keys, num_samples)))

"""Triton sampling kernels: the algorithm of :mod:`stablesoftmax.backends.torch_sampling`, on the GPU.

Same steps, same Philox4x32-10 stream, same uniform conversions and filter definitions as
the torch reference, so both return the same tokens except where two candidates tie
within float rounding. Nothing here synchronises with the device: every decision on the
host depends on shapes, dtypes, ``None``-ness and ``top_k_max`` only (CUDA-graph safe).

Launch plan for ``sample_rows`` (logits; ``B`` columns per block, ``nb = cdiv(V, B)``):

``_stats_kernel``      grid (row groups, nb): per block its max (NaN if the block holds a
                       NaN) and the lowest index of that max -> workspace (rows, nb).
Only with top-k / top-p, the filter threshold (an ordered int32 key, ``keep iff key(z) >= thr``)
by a radix select (top-k 8 key bits a round, top-p 4): one histogram kernel a round, whose programs first
take the previous round's select step themselves (per-row state per round in a device workspace), and one
tiny per-row kernel for the last step (``HBC = 8192``, ``HBM = 4096``): 15 launches for both filters, 28 before.

``_select_init_kernel``  grid (cdiv(rows, RI),): per row ``m``, ``T``, and which rows have nothing to
                         find (filter off, greedy, NaN or empty rows: every later kernel skips them);
                         zeroes the count histograms.
``_count_kernel``        x4, grid (rows, cdiv(V, HBC)): the select step from the previous round's counts
                         (the bin holding the remaining rank -> prefix, rank), then 256-bin
                         ``tl.histogram`` counts of the byte of ``key(x)`` (``z`` is monotone in ``x``: the
                         k-th largest ``z`` is ``z(x_k)``) among the entries matching the prefix, added
                         atomically into the row's (rows, 256) int32 histogram of the round (integer adds:
                         the same in any order).
``_count_select_kernel`` grid (rows,): the last step: ``thr = key(z(x_k))``.
``triton_shard._mass_round_kernel`` x8 (4 key bits a round), grid (rows, cdiv(V, HBM)): the select step
                         from the previous round's partial masses (summed in block order, the same in every
                         program; the first round's total is the kept mass, ``goal = top_p * total``; the
                         bin where the mass at or above it reaches the goal -> prefix, mass above), then
                         float64 16-bin masses of ``key(z)`` of what top-k kept (a float32 (256, 16)
                         compare-and-sum per chunk that holds a live entry, the chunks' sums added in
                         float64) -> (rows, nbm, 16) partials.
``_mass_select_kernel``  grid (rows,): the last step: ``thr``, the smallest key whose strictly-above mass is
                         ``< goal``. Where a row has more than ``_FUSED_SELECT_BLOCKS`` mass blocks (each
                         program would read them all), also every step between rounds.
``_block_kernel``      grid (row groups, nb): weights ``w_i`` (shift rule, ``z = s / T``
                       rounded to nearest, ``e = exp z``, filters) -> float64 block sums
                       and the last index with weight; without replacement also the race
                       key ``z_i - log E_i`` of every entry.
``_draw_kernel``       grid (rows, cdiv(n, SB)), with replacement: float64 prefix of the
                       row's block sums, per sample ``u_k * S`` -> its block, a re-read of
                       that block and a float64 ``tl.cumsum`` -> the index; greedy, NaN and
                       empty rows; log-probabilities ``z_i - log S``.

Every kernel reads a row's block summaries (maxima, sums, arguments) ``_NB_TILE`` (4,096) at a time, so
rows of more blocks (V > 2^22 on a GPU) take several steps in block order instead of one tile of 2^14
float64 sums (which spilled ~2 KB a thread). A block kernel program reads all of its row's maxima only on
rows of at most ``_ROW_MAX_BLOCKS`` (1,024) blocks without top-k / top-p: otherwise it is given the row's
max, computed once (those reads grow as nb^2 a row, 1 GB at V = 2^24).

Without replacement ``_block_kernel`` keeps each block's ``W`` best race candidates (``W`` the power of
two from ``min(n, V)``, at most a block), the key and the column packed into one int64 (greedy rows: the
logit's key, lowest column first on ties): a (rows, nb, W) workspace, never (rows, V) keys (2.5 GB at
4,096 x 152,064). ``torch.topk`` on it gives the row's ``n`` best in decreasing order (the reference's
selection: the n best of the row are among its blocks' W best), followed by a few sync-free torch ops on
(rows, n); greedy rows' top-k is applied there. float64 probabilities keep (rows, V) float64 keys.
``sample_probs`` runs ``_block_kernel`` / ``_draw_kernel`` in their probability mode.
float64 logits are handed to the torch reference (its float64 keys would need a 64-bit
select; nobody samples float64 logits on a GPU hot path).

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
from .torch_sampling import pad_columns
from .torch_shard import key_value
from .torch_softmax import _shifted
from .triton_launch import grid_pieces, launch_guard

__all__ = ["sample_probs", "sample_rows"]

# Columns per block (GPU / interpreter) and elements per program tile.
_BLOCK_GPU, _BLOCK_INTERP = 1024, 4096
_TILE_GPU, _TILE_INTERP = 4096, 1 << 20
# Radix select (GPU / interpreter): columns per program of the top-k count rounds and per
# tl.histogram step; columns per program of the top-p mass rounds (triton_shard's _hist_kernel) and
# per step of its (CH, 16) float32 compare-and-sum (CH x 16 / 128 threads = 32 values a thread; each
# step's 16 sums then added in float64).
_COUNT_BLOCK_GPU, _COUNT_BLOCK_INTERP = 8192, 512
_COUNT_CHUNK_GPU, _COUNT_CHUNK_INTERP = 2048, 1 << 20
_MASS_BLOCK_GPU, _MASS_BLOCK_INTERP = 4096, 512
_MASS_CHUNK_GPU, _MASS_CHUNK_INTERP = 256, 1 << 20
# Key bits per top-p mass round: the (CH, bins) compare-and-sum costs ~bins per entry, and the first
# two 8-bit rounds see nearly every kept entry (z's exponent spans few bins): 8 rounds of 16 bins
# cost ~8 x 16 per entry instead of ~2-3 x 256.
_MASS_BITS = 4
# Rows per program of the select's set-up kernel (at most 4,096 block maxima a program), and
# partial histograms summed per step of a select kernel (8 x 256: 16 values a thread).
_INIT_ROWS = 16
# Block summaries (maxima, sums) a program reads at a time: a row of more blocks (V > 4,096 x B, 2^22 on a
# GPU) is read in pieces (the draw kernel's float64 prefix of 2^14 blocks spilled ~2 KB a thread).
_NB_TILE = 4096
_SELECT_BLOCKS = 8
# Blocks a row up to which each block kernel program takes its row's max from the row's block maxima (NB_P2
# loads at a time); a row of more blocks (V > 2^20 on a GPU) has its max computed once first (by torch,
# sync-free), since those reads grow as nb^2 a row: 4 MB at 1,024 blocks, 1 GB at 16,384 (V = 2^24). With
# top-k / top-p the select's set-up kernel has computed it, at any length.
_ROW_MAX_BLOCKS = 1024
# Mass blocks a row up to which each mass round's programs take the previous round's select step themselves
# (each reads the row's nbm x 16 partials: 8 KB at 64 blocks, V <= 262,144 on a GPU); above, a select kernel
# runs between rounds (nbm^2 partial reads would outgrow the round).
_FUSED_SELECT_BLOCKS = 64
# Key bytes of the radix select, high first.
_SHIFTS = (24, 16, 8, 0)

# From this many samples per row on, blocks shrink towards sqrt(V) columns.
_MANY_SAMPLES = 256

_KEY_NONE = tl.constexpr(-(2**31))  # a threshold that keeps everything
_NO_CANDIDATE = tl.constexpr(-(2**63))  # a packed race candidate below every real one
_HAS_TOPK = tl.constexpr(hasattr(tl, "topk"))


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
def _words_of(seed, row_id, offset, cols):
    """Stream words of columns ``cols`` (an int tensor): column c takes word c % 4 of counter c // 4.
    One Philox per entry: for column ranges that do not start on a multiple of 4."""
    r0, r1, r2, r3 = _stream(seed, row_id, offset, (cols >> 2).to(tl.uint32))
    word = cols & 3
    return tl.where(word == 0, r0, tl.where(word == 1, r1, tl.where(word == 2, r2, r3)))


@triton.jit
def _column_words(seed, row_id, offset, first, R: tl.constexpr, B: tl.constexpr):
    """(R, B) stream words of columns ``first + [0, B)``, ``first`` a multiple of 4 and ``B`` a power of
    two from 4 on: one Philox per 4 columns (the words of :func:`_words_of`), interleaved into column
    order by two joins and a reshape."""
    q = (first >> 2) + tl.arange(0, B // 4)
    r0, r1, r2, r3 = _stream(seed, row_id, offset, (tl.zeros([R, B // 4], q.dtype) + q[None, :]).to(tl.uint32))
    return tl.reshape(tl.join(tl.join(r0, r2), tl.join(r1, r3)), [R, B])


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
def _pack(key, cols, live):
    """int64 race candidates: the ordered int32 ``key`` in the high word and ``2**32 - 1 - col`` in the low
    one (unique, so ordering them is exact; lowest column first on equal keys), ``_NO_CANDIDATE`` where not
    ``live``. :func:`_race_merge` takes the column back out of the low word."""
    packed = (key.to(tl.int64) << 32) | (4294967295 - cols.to(tl.int64))
    return tl.where(live, packed, _NO_CANDIDATE)


@triton.jit
def _block_top(packed, W: tl.constexpr, B: tl.constexpr):
    """The ``W`` largest of each row of ``(R, B)`` packed candidates, as ``(R, W)`` (``W`` a power of two
    ``<= B``; all ``B`` of them, in any order, when ``W == B``), or their ``(R, B)`` descending sort of which
    the first ``W`` are the ones (where ``tl.topk`` is missing, before Triton 3.4)."""
    if W == 1:
        return tl.max(packed, axis=1, keep_dims=True)
    elif W == B:
        return packed
    elif _HAS_TOPK:
        return tl.topk(packed, W, dim=1)
    else:
        return tl.sort(packed, dim=1, descending=True)


@triton.jit
def _store_top(ptr, at, packed, rmask, W: tl.constexpr, B: tl.constexpr):
    """The ``W`` largest packed candidates of each row of ``(R, B)`` -> ``ptr + at[r] * W + [0, W)``."""
    top = _block_top(packed, W, B)
    j = tl.arange(0, top.shape[1])
    tl.store(ptr + at[:, None] * W + j[None, :], top, mask=rmask[:, None] & (j[None, :] < W))


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
    """Per row (vector ``rows``): NaN-free max over the block maxima, and whether a NaN was seen (``NB_P2``
    block maxima at a time: exact in any order)."""
    m = tl.full(rows.shape, -float("inf"), tl.float32)
    nan = tl.zeros(rows.shape, tl.int32)
    for c in range(0, nb, NB_P2):
        j = c + tl.arange(0, NB_P2)
        msk = rmask[:, None] & (j[None, :] < nb)
        bm = tl.load(ws_max_ptr + rows[:, None] * nb + j[None, :], mask=msk, other=-float("inf"))
        is_nan = bm != bm
        m = tl.maximum(m, tl.max(tl.where(is_nan, -float("inf"), bm), axis=1))
        nan = tl.maximum(nan, tl.max(is_nan.to(tl.int32), axis=1))
    return m, nan > 0


@triton.jit
def _block_prefix(sum_ptr, at, j0, c, nb, carry):
    """Inclusive float64 prefix of block sums ``c + j0`` of the row at ``sum_ptr + at`` after ``carry`` (the
    sums of the blocks before ``c``), whether one is NaN (probabilities: an invalid entry), and the mask."""
    j = c + j0
    jm = j < nb
    sums = tl.load(sum_ptr + at + j, mask=jm, other=0.0)
    invalid = tl.max((sums != sums).to(tl.int32), axis=0)
    sums = tl.where(sums < float("inf"), sums, 0.0)  # only a NaN row (its +inf hidden from the max) sums to inf
    incl = tl.cumsum(tl.where(j0 == 0, sums + carry, sums), axis=0)  # the carry first, as one sequential sum
    return incl, invalid, jm


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
def _bin_counts(slot, live):
    """256-bin int32 counts of the int32 ``slot`` values of the ``live`` entries (``tl.histogram``:
    integer adds, so the same counts in any order of addition)."""
    counts = tl.histogram(tl.where(live, slot, 0), 256)
    dead = tl.sum((live == 0).to(tl.int32), axis=0)
    return counts - tl.where(tl.arange(0, 256) == 0, dead, 0)


@triton.jit
def _from_key(key):
    """float32 of an ordered int32 ``key`` (the inverse of :func:`_key`)."""
    return tl.where(key < 0, key ^ 0x7FFFFFFF, key).to(tl.float32, bitcast=True)


@triton.jit
def _select_init_kernel(
    ws_max_ptr, nb, n_rows, V, temp_ptr, topk_ptr, topp_ptr, m_ptr, t_ptr, rank_ptr, kprefix_ptr, cut_ptr,
    pprefix_ptr, thr_ptr, chist_ptr, pid0, HAS_TOPK: tl.constexpr, HAS_TOPP: tl.constexpr, R: tl.constexpr,
    NB_P2: tl.constexpr, ROUNDS: tl.constexpr,
):  # fmt: skip
    rows = (tl.program_id(0).to(tl.int64) + pid0) * R + tl.arange(0, R)
    rmask = rows < n_rows
    m, has_nan = _row_max(ws_max_ptr, rows, rmask, nb, NB_P2)
    t = tl.load(temp_ptr + rows, mask=rmask, other=1.0)
    tl.store(m_ptr + rows, m, mask=rmask)
    tl.store(t_ptr + rows, tl.where(t == 0.0, 1.0, t), mask=rmask)
    tl.store(cut_ptr + rows, tl.full([R], -float("inf"), tl.float32), mask=rmask)
    tl.store(thr_ptr + rows, tl.full([R], _KEY_NONE, tl.int32), mask=rmask)
    # settled before any round (no threshold is read): greedy rows, NaN rows (-1) and empty rows (-1)
    settled = (t == 0.0) | has_nan | (m == -float("inf"))
    if HAS_TOPK:  # the rank still to find within the prefix; 0: nothing to find (k = 0 or k >= V, or settled)
        k = tl.load(topk_ptr + rows, mask=rmask, other=0)
        tl.store(rank_ptr + rows, tl.where((k > 0) & (k < V) & ~settled, k, 0), mask=rmask)
        tl.store(kprefix_ptr + rows, tl.zeros([R], tl.int64), mask=rmask)
        bins = tl.arange(0, 256)
        for r in tl.static_range(ROUNDS):  # the count rounds' histograms, which they add into
            tl.store(chist_ptr + (r * n_rows + rows[:, None]) * 256 + bins[None, :], tl.zeros([R, 256], tl.int32),
                     mask=rmask[:, None])  # fmt: skip
    if HAS_TOPP:  # prefix -1: nothing to find (p = 1, or settled), the mass rounds skip the row
        p = tl.load(topp_ptr + rows, mask=rmask, other=1.0)
        tl.store(pprefix_ptr + rows, tl.where((p < 1.0) & ~settled, 0, -1).to(tl.int64), mask=rmask)


@triton.jit
def _count_step(hist_ptr, hrow, rank, prefix):
    """One top-k radix step from the 256-bin counts of histogram row ``hrow`` (bin ``b`` of ``key >> shift``):
    the rank still to find within the bin holding it, and the prefix extended by that bin."""
    i = tl.arange(0, 256)
    b, above = _pick_bin(tl.load(hist_ptr + hrow * 256 + (255 - i)), 0, rank.to(tl.int32), 256)
    return rank - above, (prefix << 8) | b.to(tl.int64)


@triton.jit
def _count_kernel(
    x_ptr, stride, V, rank_ptr, prefix_ptr, n_rows, rnd, shift, hist_ptr, pid0, pid1,
    FIRST: tl.constexpr, HB: tl.constexpr, CH: tl.constexpr,
):  # fmt: skip
    # Round ``rnd`` of the top-k select: state[rnd] (rank, prefix: (rounds, rows) each) is round 0's from the
    # set-up kernel; a later round's every program first takes the select step from state[rnd - 1] and the
    # previous round's counts (the first program stores it), so no select kernel runs between rounds.
    # Counts on the order key of x itself: z = div_rn(shift(x, m), T) does not decrease with x, so the
    # k-th largest z is z(the k-th largest x), and no m, T or division is needed here. The block's counts are
    # added into the row's (rounds, rows, 256) histogram atomically: integer adds, the same in any order.
    row = tl.program_id(0).to(tl.int64) + pid0
    part = tl.program_id(1) + pid1
    if FIRST:
        rank = tl.load(rank_ptr + row)
        prefix = tl.load(prefix_ptr + row)
    else:
        rank = tl.load(rank_ptr + (rnd - 1) * n_rows + row)
        prefix = tl.load(prefix_ptr + (rnd - 1) * n_rows + row)
        if rank > 0:
            rank, prefix = _count_step(hist_ptr, (rnd - 1) * n_rows + row, rank, prefix)
        if part == 0:
            tl.store(rank_ptr + rnd * n_rows + row, rank)
            tl.store(prefix_ptr + rnd * n_rows + row, prefix)
    if rank > 0:  # top-k on for this row, the rank not yet found
        acc = tl.zeros([256], tl.int32)
        for c in range(0, HB, CH):
            offs = part * HB + c + tl.arange(0, CH)
            inside = offs < V
            x = tl.load(x_ptr + row * stride + offs, mask=inside, other=-float("inf")).to(tl.float32)
            key = _key(x).to(tl.int64) + 2147483648  # unsigned order, as the mass rounds' keys
            live = inside
            if not FIRST:
                live = live & ((key >> (shift + 8)) == prefix)
            acc += _bin_counts(((key >> shift) & 0xFF).to(tl.int32), live)
        bins = tl.arange(0, 256)
        tl.atomic_add(hist_ptr + (rnd * n_rows + row) * 256 + bins, acc, mask=acc != 0)


@triton.jit
def _bin_totals(hist_ptr, row, nbh, JB: tl.constexpr, NBINS: tl.constexpr):
    """A row's ``(nbh, NBINS)`` partial histograms summed in block order (``JB`` blocks a step), the bins
    from the top down: entry ``i`` is bin ``NBINS - 1 - i``, so an inclusive prefix is the weight at or above a bin."""
    i = tl.arange(0, NBINS)
    h = tl.zeros([NBINS], hist_ptr.dtype.element_ty)
    for j0 in range(0, nbh, JB):
        j = j0 + tl.arange(0, JB)
        h += tl.sum(tl.load(hist_ptr + (row * nbh + j[:, None]) * NBINS + (NBINS - 1 - i)[None, :],
                            mask=(j < nbh)[:, None], other=0), axis=0)  # fmt: skip
    return h


@triton.jit
def _pick_bin(h, above, goal, NBINS: tl.constexpr):
    """One radix step on bin totals ``h`` (top bin first): the first bin where ``above`` + the weight
    at or above it reaches ``goal``, and the weight strictly above that bin (``above`` included).

    Should rounding leave no bin reaching ``goal``, the lowest non-empty bin.
    """
    i = tl.arange(0, NBINS)
    reached = (above + tl.cumsum(h, axis=0)) >= goal
    first = tl.sum((reached == 0).to(tl.int32), axis=0)
    lowest = tl.max(tl.where(h > 0, i, 0), axis=0)
    first = tl.where(first < NBINS, first, lowest)
    return NBINS - 1 - first, above + tl.sum(tl.where(i < first, h, 0), axis=0)


@triton.jit
def _count_select_kernel(
    hist_ptr, rank_ptr, prefix_ptr, n_rows, rnd, x_m_ptr, t_ptr, cut_ptr, thr_ptr, pid0,
):  # fmt: skip
    # The top-k select's last step, from state[rnd] and round rnd's counts: the k-th largest x, then its z
    # (keep z >= z_k).
    row = tl.program_id(0).to(tl.int64) + pid0
    rank = tl.load(rank_ptr + rnd * n_rows + row)
    if rank > 0:
        prefix = tl.load(prefix_ptr + rnd * n_rows + row)
        _, prefix = _count_step(hist_ptr, rnd * n_rows + row, rank, prefix)
        x_k = _from_key((prefix - 2147483648).to(tl.int32))
        z_k = _logit_z(x_k, tl.load(x_m_ptr + row), tl.load(t_ptr + row))
        tl.store(cut_ptr + row, z_k)
        tl.store(thr_ptr + row, _key(z_k))


@triton.jit
def _mass_step(hist_ptr, nbh, hrow, prefix, goal, above, FIRST: tl.constexpr, JB: tl.constexpr, BITS: tl.constexpr):
    """One top-p radix step from the ``(nbh, 2**BITS)`` partial float64 mass histograms of histogram row
    ``hrow``: the prefix extended by the bin where the mass at or above it reaches ``goal``, the goal, and the
    mass strictly above that bin. In the first step ``goal`` is top_p and ``above`` 0: every kept entry is live
    in the first round, so its histogram sums to the kept mass, and the goal is top_p times that."""
    h = _bin_totals(hist_ptr, hrow, nbh, JB, 1 << BITS)
    if FIRST:
        goal = goal * tl.sum(h, axis=0)
    b, above = _pick_bin(h, above, goal, 1 << BITS)
    return (prefix << BITS) | b.to(tl.int64), goal, above


@triton.jit
def _mass_advance(hist_ptr, nbh, topp_ptr, prefix_ptr, mass_ptr, n_rows, rnd, row, prefix,
                  FIRST: tl.constexpr, JB: tl.constexpr, BITS: tl.constexpr):  # fmt: skip
    """The top-p select's step after mass round ``rnd`` for a row whose state[rnd] prefix is ``prefix`` (>= 0):
    state[rnd + 1]'s prefix, goal and mass above, from state[rnd] (prefix (rounds, rows) int64; mass
    (rounds, rows, 2) float64: the goal top_p * kept mass, and the mass above the prefix) and round rnd's
    partials (buffer rnd % 2)."""
    at = 2 * (rnd * n_rows + row)
    if FIRST:
        goal = tl.load(topp_ptr + row).to(tl.float64)
        above = 0.0
    else:
        goal = tl.load(mass_ptr + at)
        above = tl.load(mass_ptr + at + 1)
    return _mass_step(hist_ptr, nbh, (rnd % 2) * n_rows + row, prefix, goal, above, FIRST, JB, BITS)


@triton.jit
def _mass_select_kernel(
    hist_ptr, nbh, topp_ptr, prefix_ptr, mass_ptr, n_rows, rnd, thr_ptr, pid0,
    FIRST: tl.constexpr, LAST: tl.constexpr, JB: tl.constexpr, BITS: tl.constexpr,
):  # fmt: skip
    # The step after round rnd as a kernel of its own: state[rnd + 1]; the last: the smallest key whose
    # strictly-above mass is < goal (keep key(z) >= it). (Rounds with few blocks take the step in the next
    # round's programs instead: triton_shard._mass_round_kernel.)
    row = tl.program_id(0).to(tl.int64) + pid0
    prefix = tl.load(prefix_ptr + rnd * n_rows + row)
    if prefix >= 0:  # top-p on for this row
        prefix, goal, above = _mass_advance(hist_ptr, nbh, topp_ptr, prefix_ptr, mass_ptr, n_rows, rnd, row, prefix,
                                            FIRST, JB, BITS)  # fmt: skip
        if LAST:
            tl.store(thr_ptr + row, (prefix - 2147483648).to(tl.int32))
        else:
            at = 2 * ((rnd + 1) * n_rows + row)
            tl.store(mass_ptr + at, goal)
            tl.store(mass_ptr + at + 1, above)
    if not LAST:
        tl.store(prefix_ptr + (rnd + 1) * n_rows + row, prefix)


@triton.jit
def _block_kernel(
    x_ptr, stride, n_rows, V, ws_max_ptr, m_ptr, nb, temp_ptr, thr_ptr, minp_ptr,
    seed_ptr, rowid_ptr, off_ptr, sum_ptr, last_ptr, key_ptr, pid0, pid1,
    IS_PROBS: tl.constexpr, ACC_F64: tl.constexpr, HAS_THR: tl.constexpr, HAS_MINP: tl.constexpr,
    RACE: tl.constexpr, W: tl.constexpr, R: tl.constexpr, B: tl.constexpr, NB_P2: tl.constexpr,
    ROW_MAX: tl.constexpr,
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
        if ROW_MAX:  # the row's (NaN-free) max, computed once for all of its blocks
            m = tl.load(m_ptr + rows, mask=rmask, other=0.0)
        else:  # from its block maxima (NB_P2 at a time)
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
        if B >= 4:
            bits = _column_words(seed, rid, off, part * B, R, B)
        else:
            bits = _words_of(seed, rid, off, tl.zeros([R, B], tl.int32) + cols[None, :])
        u = ((bits >> 9).to(tl.float32) + 0.5) * 1.1920928955078125e-07  # 2**-23: exact, in (0, 1)
        log_e = tl.log(-tl.log(u))
        key = tl.where(positive, log_w - log_e.to(log_w.dtype), -float("inf"))
        if W == 0:  # every key -> (rows, V) (float64 probabilities: no room for the column beside the key)
            tl.store(key_ptr + rows[:, None] * V + cols[None, :], key, mask=msk)
        else:  # the block's W best candidates -> (rows, nb, W)
            packed = _pack(_key(key), cols[None, :], positive)
            if not IS_PROBS:  # greedy rows: the largest logits of the shift rule's entries (lowest column first)
                greedy = t == 0.0
                if tl.max(greedy.to(tl.int32), axis=0) > 0:  # (a uniform branch: only programs holding one)
                    live = msk & tl.where(m[:, None] == float("inf"), x == float("inf"), x > -float("inf"))
                    packed = tl.where(greedy[:, None], _pack(_key(x), cols[None, :], live), packed)
            _store_top(key_ptr, out, packed, rmask, W, B)


@triton.jit
def _draw_kernel(
    x_ptr, stride, V, n, ws_max_ptr, ws_arg_ptr, sum_ptr, last_ptr, nb, temp_ptr, thr_ptr, minp_ptr,
    seed_ptr, rowid_ptr, off_ptr, tok_ptr, lp_ptr, pid0, pid1,
    IS_PROBS: tl.constexpr, ACC_F64: tl.constexpr, HAS_THR: tl.constexpr, HAS_MINP: tl.constexpr,
    WANT_LP: tl.constexpr, SB: tl.constexpr, B: tl.constexpr, NB_P2: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64) + pid0
    # NB_P2 block sums at a time (all of them but on rows of more than _NB_TILE blocks): the float64 prefix
    # of the block sums in block order, twice (the total, then each target's block), recomputed alike
    j0 = tl.arange(0, NB_P2)
    total = tl.sum(tl.zeros([NB_P2], tl.float64), axis=0)
    invalid = tl.max(tl.zeros([NB_P2], tl.int32), axis=0)
    last_all = tl.max(tl.full([NB_P2], -1, tl.int32), axis=0)
    for c in range(0, nb, NB_P2):
        incl, bad, jm = _block_prefix(sum_ptr, row * nb, j0, c, nb, total)
        total = tl.max(incl, axis=0)  # the prefix never decreases
        invalid = tl.maximum(invalid, bad)
        last_all = tl.maximum(last_all, tl.max(tl.load(last_ptr + row * nb + c + j0, mask=jm, other=-1), axis=0))
    row_invalid = invalid > 0  # probabilities: an invalid entry

    k = (tl.program_id(1) + pid1) * SB + tl.arange(0, SB)
    kmask = k < n
    seed = tl.load(seed_ptr + row)
    r0, _, _, _ = _stream(seed, tl.load(rowid_ptr + row), tl.load(off_ptr + row), k.to(tl.uint32))
    target = r0.to(tl.float64) * 2.3283064365386963e-10 * total
    # the block: how many inclusive block prefixes are <= the target; the prefix before it
    b = tl.zeros([SB], tl.int32)
    excl = tl.zeros([SB], tl.float64)
    carry = tl.sum(tl.zeros([NB_P2], tl.float64), axis=0)
    for c in range(0, nb, NB_P2):
        incl, _again, jm = _block_prefix(sum_ptr, row * nb, j0, c, nb, carry)
        carry = tl.max(incl, axis=0)
        below = (incl[None, :] <= target[:, None]) & jm[None, :]
        b += tl.sum(below.to(tl.int32), axis=1)
        excl = tl.maximum(excl, tl.max(tl.where(below, incl[None, :], 0.0), axis=1))
    in_range = b < nb
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
        m1 = tl.sum(m, axis=0)  # the (1,)-vector as a scalar
        nan1 = tl.sum(has_nan.to(tl.int32), axis=0) > 0
        arg = tl.min(tl.full([NB_P2], 2147483647, tl.int32), axis=0)  # the lowest column at the row maximum
        for c in range(0, nb, NB_P2):
            j = c + j0
            jm = j < nb
            bm = tl.load(ws_max_ptr + row * nb + j, mask=jm, other=-float("inf"))
            args = tl.load(ws_arg_ptr + row * nb + j, mask=jm, other=2147483647)
            arg = tl.minimum(arg, tl.min(tl.where(jm & (bm == m1), args, 2147483647), axis=0))
        arg = arg.to(tl.int64)
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
        block_max, tile = (_BLOCK_INTERP, _TILE_INTERP) if interp else (_BLOCK_GPU, _TILE_GPU)
        self.B = min(block_max, _next_pow2(cols))
        if num_samples >= _MANY_SAMPLES:  # each sample re-reads one block: balance block and search
            self.B = min(self.B, max(16, _next_pow2(math.isqrt(cols - 1) + 1)))
        self.nb = triton.cdiv(cols, self.B)
        self.NB_P2 = min(_next_pow2(self.nb), _NB_TILE)  # block summaries a program holds at a time
        rows_p2 = _next_pow2(rows)
        self.R = max(1, min(rows_p2, tile // self.B))
        # the radix select's top-k count rounds and top-p mass rounds
        count_block, count_chunk, mass_block, mass_chunk = (
            (_COUNT_BLOCK_INTERP, _COUNT_CHUNK_INTERP, _MASS_BLOCK_INTERP, _MASS_CHUNK_INTERP)
            if interp
            else (_COUNT_BLOCK_GPU, _COUNT_CHUNK_GPU, _MASS_BLOCK_GPU, _MASS_CHUNK_GPU)
        )
        self.HBC = max(16, min(count_block, _next_pow2(cols)))
        self.CHC = min(count_chunk, self.HBC)
        self.nbc = triton.cdiv(cols, self.HBC)
        self.HBM = max(16, min(mass_block, _next_pow2(cols)))
        self.CHM = min(mass_chunk, self.HBM)
        self.nbm = triton.cdiv(cols, self.HBM)
        self.RI = max(1, min(_INIT_ROWS, 4096 // self.NB_P2))
        # The race's block kernel (Philox words, two logs an entry) and the draw kernel (float64 prefix sums
        # of (SB, B) and (SB, NB_P2)) need about twice a plain block's registers: 16 entries a thread, not 32
        # (at 32, ptxas spilled up to 268 bytes). The race takes 8 warps for a full tile, the draw half a tile.
        self.race_warps = 8 if self.R * self.B >= _TILE_GPU else 4
        self.SB = max(1, min(_next_pow2(num_samples), tile // 2 // max(self.B, self.NB_P2)))


def _launch_shape(num_warps: int) -> dict[str, int]:
    """Warps and register cap of a block or draw kernel launch. The cap, 255, limits nothing (it is the
    most a thread can have) but ptxas's own choice: without it, ptxas chose as few as 64 registers on
    sm_80 / sm_100 and spilled 4-36 bytes; given it, it takes what it needs (100-200) and spills nothing."""
    return {"num_warps": num_warps, "maxnreg": 255}


def _workspace(rows: int, plan: _Plan, device: torch.device, stats: bool):
    ws = {
        "sum": torch.empty((rows, plan.nb), dtype=torch.float64, device=device),
        "last": torch.empty((rows, plan.nb), dtype=torch.int32, device=device),
    }
    if stats:
        ws["max"] = torch.empty((rows, plan.nb), dtype=torch.float32, device=device)
        ws["arg"] = torch.empty((rows, plan.nb), dtype=torch.int32, device=device)
    return ws


def _race_width(num_samples: int, cols: int, block: int) -> int:
    """Candidates each block of ``block`` columns keeps for the ``n`` best of a row: the next power of two
    from ``min(n, V)``, at most the block."""
    return min(_next_pow2(min(num_samples, cols)), block)


def _race_select(keys: torch.Tensor, num_samples: int) -> torch.Tensor:
    """The ``n`` largest race keys per row (a (rows, V) workspace), in decreasing order; ``-1`` where a row
    runs out."""
    n = min(num_samples, keys.shape[1])
    vals, idx = torch.topk(keys, n, dim=1)
    return pad_columns(torch.where(vals > -math.inf, idx, -1), num_samples, -1)


def _race_merge(cand: torch.Tensor, num_samples: int, cols: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``n = min(num_samples, V)`` best of the blocks' packed candidates (rows, nb, W), in decreasing
    order: ``(packed, column)``, both (rows, n), the column ``-1`` where a row runs out (every candidate of
    a block is in its W best until the row's n best are)."""
    rows = cand.shape[0]
    n = min(num_samples, cols)
    packed = torch.topk(cand.view(rows, -1), n, dim=1).values
    col = torch.where(packed > _NO_CANDIDATE.value, 4294967295 - (packed & 4294967295), -1)
    return packed, col


def _packed_values(packed: torch.Tensor) -> torch.Tensor:
    """float32 values of packed candidates' keys (the high word, a signed :func:`_key`), ``-inf`` where none."""
    value = key_value((packed >> 32) + 2**31, torch.float32)  # the unsigned order key of torch_shard
    return torch.where(packed > _NO_CANDIDATE.value, value, -math.inf)


def _greedy_top_k(packed: torch.Tensor, col: torch.Tensor, top_k: torch.Tensor, cols: int) -> torch.Tensor:
    """Greedy rows' top-k on their n largest logits (``packed`` from :func:`_race_merge`): an entry stays
    iff it is ``>=`` the k-th largest logit (the reference's ``kth``), which lies in the list when ``k <= n``
    (a missing one is ``-inf``: fewer than k entries above ``-inf``, nothing is cut) and below it otherwise."""
    n = packed.shape[1]
    k = top_k.clamp(1, cols)[:, None]
    key = packed >> 32  # the ordered key of the logit (a missing entry's is below every real one)
    kth = key.gather(1, (k - 1).clamp(max=n - 1))
    keep = (top_k == 0)[:, None] | (k > n) | (key >= kth)
    return torch.where(keep, col, -1)


def _mass_select(hist, plan, topp, pprefix, mass, rnd, thr, jb) -> None:
    """The top-p select's step after mass round ``rnd`` as a kernel of its own (the last step, or every step
    of rows with more than ``_FUSED_SELECT_BLOCKS`` mass blocks)."""
    rows = pprefix.shape[1]
    last = rnd == pprefix.shape[0] - 1
    for grid, (pid0,) in grid_pieces((rows,)):
        _mass_select_kernel[grid](
            hist, plan.nbm, topp, pprefix, mass, rows, rnd, thr, pid0,
            FIRST=rnd == 0, LAST=last, JB=jb, BITS=_MASS_BITS,
        )  # fmt: skip


def _radix_threshold(
    logits: torch.Tensor,
    ws_max: torch.Tensor,
    plan: _Plan,
    temperature: torch.Tensor,
    top_k: torch.Tensor | None,
    top_p: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row the filter threshold, an ordered int32 key of ``z`` (keep iff ``key(z) >= thr``), and the
    row's NaN-free max (which the set-up kernel computes from the block maxima).

    Top-k: the k-th largest ``x`` by a radix select on its key, 8 bits a round (count histograms),
    then ``thr = key(z(x_k))``. Top-p: the smallest key whose strictly-above mass is ``< top_p``
    times the kept mass, by a radix select on ``key(z)``, 4 bits a round, over float64 mass histograms of what
    top-k kept (the first round's histogram sums to the kept mass). Each round: one histogram kernel
    over (rows, blocks) whose programs first take the previous round's select step (the same state in
    every program: top-k's counts are added atomically, top-p's per-block partials summed in block order;
    the first program stores it); a per-row kernel takes the last step. Rows with a filter off skip its
    rounds.
    """
    from . import triton_shard as _shard  # (here: it imports this module's device helpers)

    rows, cols = logits.shape
    device = logits.device
    stride = logits.stride(0)
    m = torch.empty(rows, dtype=torch.float32, device=device)  # the row's NaN-free max
    tdiv = torch.empty_like(m)
    cut = torch.empty_like(m)
    thr = torch.empty(rows, dtype=torch.int32, device=device)
    rounds_k, rounds_p = len(_SHIFTS), 32 // _MASS_BITS
    # per-round state: top-k rank and prefix, (rounds, rows) each; top-p prefix; top-p goal and mass above
    kstate = torch.empty((2, rounds_k, rows) if top_k is not None else (2, 1, rows), dtype=torch.int64, device=device)
    pprefix = torch.empty((rounds_p if top_p is not None else 1, rows), dtype=torch.int64, device=device)
    rank, kprefix = kstate[0], kstate[1]
    # the count rounds' histograms, zeroed by the set-up kernel (each round adds into its own)
    chist = torch.empty((rounds_k, rows, 256) if top_k is not None else (1,), dtype=torch.int32, device=device)
    topk_arg = top_k.contiguous() if top_k is not None else temperature
    topp_arg = top_p.contiguous() if top_p is not None else temperature
    for grid, (pid0,) in grid_pieces((triton.cdiv(rows, plan.RI),)):
        _select_init_kernel[grid](
            ws_max, plan.nb, rows, cols, temperature, topk_arg, topp_arg, m, tdiv, rank, kprefix, cut, pprefix, thr,
            chist, pid0, HAS_TOPK=top_k is not None, HAS_TOPP=top_p is not None, R=plan.RI, NB_P2=plan.NB_P2,
            ROUNDS=rounds_k,
        )  # fmt: skip
    if top_k is not None:
        for rnd, shift in enumerate(_SHIFTS):
            for grid, (pid0, pid1) in grid_pieces((rows, plan.nbc)):
                _count_kernel[grid](
                    logits, stride, cols, rank, kprefix, rows, rnd, shift, chist, pid0, pid1,
                    FIRST=rnd == 0, HB=plan.HBC, CH=plan.CHC,
                )  # fmt: skip
        for grid, (pid0,) in grid_pieces((rows,)):
            _count_select_kernel[grid](chist, rank, kprefix, rows, rounds_k - 1, m, tdiv, cut, thr, pid0)
    if top_p is not None:
        hist = torch.empty((2, rows, plan.nbm, 1 << _MASS_BITS), dtype=torch.float64, device=device)
        mass = torch.empty((rounds_p, rows, 2), dtype=torch.float64, device=device)
        jb = _SELECT_BLOCKS * 256 >> _MASS_BITS
        fused = plan.nbm <= _FUSED_SELECT_BLOCKS
        for rnd in range(rounds_p):
            if rnd > 0 and not fused:
                _mass_select(hist, plan, topp_arg, pprefix, mass, rnd - 1, thr, jb)
            for grid, (pid0, pid1) in grid_pieces((rows, plan.nbm)):
                _shard._mass_round_kernel[grid](
                    logits, stride, cols, m, tdiv, cut, topp_arg, pprefix, mass, rows, rnd,
                    32 - _MASS_BITS * (rnd + 1), hist, plan.nbm, pid0, pid1, HAS_CUT=top_k is not None,
                    FIRST=rnd == 0, SECOND=rnd == 1, FUSED=fused, HB=plan.HBM, CH=plan.CHM, JB=jb, BITS=_MASS_BITS,
                )  # fmt: skip
        _mass_select(hist, plan, topp_arg, pprefix, mass, rounds_p - 1, thr, jb)
    return thr, m


def _nan_free_max(block_max: torch.Tensor) -> torch.Tensor:
    """Per row the max of the block maxima (rows, nb) that are not NaN (exact in any order)."""
    return torch.where(torch.isnan(block_max), -math.inf, block_max).amax(dim=1)


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

    ``top_k_max`` serves only float64 logits (handed to the reference); the radix select and the race's
    block candidates do not need it.
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
        thr = row_max = None
        if has_thr:
            thr, row_max = _radix_threshold(logits, ws["max"], plan, temperature, top_k, top_p)
        elif plan.nb > _ROW_MAX_BLOCKS:
            row_max = _nan_free_max(ws["max"])
        minp = min_p.contiguous() if min_p is not None else temperature
        thr_arg = thr if thr is not None else temperature
        width = 0 if replacement else _race_width(num_samples, cols, plan.B)
        cand = None
        if not replacement:  # the race's W best candidates of each block (never a (rows, V) workspace)
            cand = torch.empty((rows, plan.nb, width), dtype=torch.int64, device=device)
        for grid, (pid0, pid1) in grid_pieces((triton.cdiv(rows, plan.R), plan.nb)):
            _block_kernel[grid](
                logits, stride, rows, cols, ws["max"], row_max if row_max is not None else ws["max"], plan.nb,
                temperature, thr_arg, minp, seed, row_id, offset, ws["sum"], ws["last"],
                cand if cand is not None else ws["sum"], pid0, pid1,
                IS_PROBS=False, ACC_F64=False, HAS_THR=has_thr, HAS_MINP=min_p is not None,
                RACE=not replacement, W=width, R=plan.R, B=plan.B,
                NB_P2=plan.NB_P2 if row_max is None else 1, ROW_MAX=row_max is not None,  # (one compile for any nb)
                **_launch_shape(4 if replacement else plan.race_warps),
            )  # fmt: skip
        if replacement:
            lp = logprobs if logprobs is not None else tokens
            for grid, (pid0, pid1) in grid_pieces((rows, triton.cdiv(num_samples, plan.SB))):
                _draw_kernel[grid](
                    logits, stride, cols, num_samples, ws["max"], ws["arg"], ws["sum"], ws["last"], plan.nb,
                    temperature, thr_arg, minp, seed, row_id, offset, tokens, lp, pid0, pid1,
                    IS_PROBS=False, ACC_F64=False, HAS_THR=has_thr, HAS_MINP=min_p is not None,
                    WANT_LP=logprobs is not None, SB=plan.SB, B=plan.B, NB_P2=plan.NB_P2, **_launch_shape(4),
                )  # fmt: skip
            return
        # without replacement: the n best candidates (race keys; greedy rows: logits), then the row rules
        # (sync-free torch ops on (rows, n))
        assert cand is not None
        packed, chosen = _race_merge(cand, num_samples, cols)
        greedy = (temperature == 0)[:, None]
        if top_k is not None:  # (sampled rows had it in the threshold)
            chosen = torch.where(greedy, _greedy_top_k(packed, chosen, top_k, cols), chosen)
        bm = ws["max"]
        has_nan = torch.isnan(bm).any(dim=1, keepdim=True)
        chosen = pad_columns(torch.where(has_nan, -1, chosen), num_samples, -1)
        tokens.copy_(chosen)
        if logprobs is not None:
            total = ws["sum"].sum(dim=1, keepdim=True)
            x = logits.gather(1, chosen.clamp_min(0)).float()
            m = (row_max if row_max is not None else _nan_free_max(bm))[:, None]
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
        # float64 probabilities: every race key (no room for the column beside a float64 key); else the
        # W best packed candidates of each block
        width = 0 if replacement or acc_f64 else _race_width(num_samples, cols, plan.B)
        keys = None
        if not replacement:
            shape = (rows, cols) if width == 0 else (rows, plan.nb, width)
            keys = torch.empty(shape, dtype=torch.float64 if width == 0 else torch.int64, device=device)
        dummy = ws["sum"]
        for grid, (pid0, pid1) in grid_pieces((triton.cdiv(rows, plan.R), plan.nb)):
            _block_kernel[grid](
                probs, stride, rows, cols, dummy, dummy, plan.nb, dummy, dummy, dummy,
                seed, row_id, offset, ws["sum"], ws["last"], keys if keys is not None else dummy, pid0, pid1,
                IS_PROBS=True, ACC_F64=acc_f64, HAS_THR=False, HAS_MINP=False,
                RACE=not replacement, W=width, R=plan.R, B=plan.B, NB_P2=plan.NB_P2, ROW_MAX=False,
                **_launch_shape(4 if replacement else plan.race_warps),
            )  # fmt: skip
        if replacement:
            for grid, (pid0, pid1) in grid_pieces((rows, triton.cdiv(num_samples, plan.SB))):
                _draw_kernel[grid](
                    probs, stride, cols, num_samples, dummy, dummy, ws["sum"], ws["last"], plan.nb,
                    dummy, dummy, dummy, seed, row_id, offset, tokens, tokens, pid0, pid1,
                    IS_PROBS=True, ACC_F64=acc_f64, HAS_THR=False, HAS_MINP=False,
                    WANT_LP=False, SB=plan.SB, B=plan.B, NB_P2=plan.NB_P2, **_launch_shape(4),
                )  # fmt: skip
            return
        assert keys is not None
        invalid = torch.isnan(ws["sum"]).any(dim=1, keepdim=True)
        if width == 0:
            drawn = _race_select(keys, num_samples)
        else:
            drawn = pad_columns(_race_merge(keys, num_samples, cols)[1], num_samples, -1)
        tokens.copy_(torch.where(invalid, -1, drawn))

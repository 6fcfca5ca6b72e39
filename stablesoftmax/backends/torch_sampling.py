"""Pure-torch sampling kernels: the reference implementation of the package's one sampling algorithm.

The C++ and Triton kernels implement the same steps with the same random numbers, so the
three backends return the same tokens except where two candidates tie within rounding.

Random numbers: Philox4x32-10 (Salmon et al., SC'11; the generator behind ``tl.rand``),
keyed by the row's 64-bit seed, with counter ``(c0, row_id, offset_lo, offset_hi)``.
``row_id`` is the row's index for an int seed and 0 for per-row seeds (batch invariance).

Per row, on ``z_i = s_i / T`` (``s`` from the softmax shift rule, so ``+inf`` entries
share the row and ``-inf`` entries are never chosen), ``e_i = exp(z_i)``:

1. top-k keeps ``z_i >= `` the k-th largest ``z``; 2. top-p keeps ``i`` iff the mass of
   kept entries with ``z_j > z_i`` is ``< top_p`` times the kept mass; 3. min-p keeps
   ``e_i >= min_p`` (``e_max = 1``); weights ``w_i = e_i`` where kept, else 0.
4. With replacement, sample ``k`` is the smallest ``i`` whose inclusive prefix sum of
   ``w`` (accumulated in float64) exceeds ``u_k * S``, ``u_k = word0(c0=k) * 2**-32``.
   Without replacement (exponential race), the samples are the ``n`` kept entries with
   the largest key ``z_i - log E_i`` (``log p_i - log E_i`` for probabilities), in
   decreasing order of the key, where ``E_i = -log(u_i)``,
   ``u_i = ((w >> 9) + 0.5) * 2**-23`` (float32: 24 significant bits, exact, so ``0 < u < 1`` and
   ``E > 0``), ``w`` = word ``i % 4`` of counter ``c0 = i // 4``.
5. ``T == 0`` rows are greedy: the lowest index of the maximum; without replacement, the ``n``
   largest logits in decreasing order, lowest index first on ties (:func:`greedy_order`).
   Their log-probabilities are 0 (each pick is certain given the ones before it).
``z_i = s_i / T`` is computed as such (the subtraction first, then one rounded division, never
``x_i / T - m / T``), except that ``s_i = -inf`` gives ``z_i = -inf`` at every ``T`` (``-inf / inf``
would be NaN): tiny ``T`` leaves the maxima, ``T = inf`` every finite entry, with equal weights.
A row with NaN (for probabilities: a negative, NaN or infinite entry), or with fewer than
``n`` candidates without replacement (or none at all), gets ``-1`` in the places it cannot
fill; its log-probability there is NaN. (The policy layer sends a single draw without
replacement down the inverse-CDF path: the same distribution, far fewer random numbers.)
"""

from __future__ import annotations

import torch

from .torch_softmax import _row_max, _shifted, chunks

__all__ = ["greedy_order", "pad_columns", "philox", "race_uniform", "sample_probs", "sample_rows", "uniform_per_sample"]

_M0, _M1 = 0xD2511F53, 0xCD9E8D57
_W0, _W1 = 0x9E3779B9, 0xBB67AE85
_MASK32 = 0xFFFFFFFF


def pad_columns(t: torch.Tensor, width: int, fill: float) -> torch.Tensor:
    """``t`` (rows, c) widened to ``width >= c`` columns with ``fill`` (``t`` itself where it is that wide)."""
    if t.shape[1] >= width:
        return t
    return torch.cat([t, t.new_full((t.shape[0], width - t.shape[1]), fill)], dim=1)


def _mulhilo(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """High and low 32 bits of ``a * b`` for a 32-bit constant and int64 tensors holding uint32."""
    x = b * (a & 0xFFFF)  # < 2**48: exact in int64
    y = b * (a >> 16)
    lo = (((y & 0xFFFF) << 16) + x) & _MASK32
    hi = (y + (x >> 16)) >> 16
    return hi, lo


def philox(
    seed: torch.Tensor, c0: torch.Tensor, c1: torch.Tensor, c2: torch.Tensor, c3: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Philox4x32-10 on int64 tensors (broadcast together) holding uint32 counters.

    ``seed`` is an int64 tensor: its low and high 32 bits are the two key words.
    Returns the four output words as int64 tensors in ``[0, 2**32)``.
    """
    k0, k1 = seed & _MASK32, (seed >> 32) & _MASK32
    for _ in range(10):
        hi0, lo0 = _mulhilo(_M0, c0)
        hi1, lo1 = _mulhilo(_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0, k1 = (k0 + _W0) & _MASK32, (k1 + _W1) & _MASK32
    return c0, c1, c2, c3


def _counters(row_id: torch.Tensor, offset: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return row_id & _MASK32, offset & _MASK32, (offset >> 32) & _MASK32


def uniform_per_sample(seed: torch.Tensor, row_id: torch.Tensor, offset: torch.Tensor, n: int) -> torch.Tensor:
    """``(rows, n)`` float64 uniforms in [0, 1) for inverse-CDF sampling: word 0 of counter ``c0 = k``."""
    c1, c2, c3 = (t[:, None] for t in _counters(row_id, offset))
    c0 = torch.arange(n, device=seed.device, dtype=torch.int64)[None, :]
    word0 = philox(seed[:, None], c0, c1, c2, c3)[0]
    return word0.to(torch.float64) * 2.0**-32


def _exponentials(
    seed: torch.Tensor, row_id: torch.Tensor, offset: torch.Tensor, cols: int, start: int = 0
) -> torch.Tensor:
    """``(rows, cols)`` float32 Exp(1) draws of the race for columns ``start .. start + cols - 1``
    (``start`` a multiple of 4): one Philox call per four columns."""
    c1, c2, c3 = (t[:, None] for t in _counters(row_id, offset))
    c0 = torch.arange(start // 4, (start + cols + 3) // 4, device=seed.device, dtype=torch.int64)[None, :]
    words = torch.stack(philox(seed[:, None], c0, c1, c2, c3), dim=-1).flatten(1)[:, :cols]
    return -torch.log(race_uniform(words))


def race_uniform(words: torch.Tensor) -> torch.Tensor:
    """The race's uniforms from Philox words: ``((w >> 9) + 0.5) * 2**-23`` in float32.

    24 significant bits, so every value is exact and ``0 < u < 1``: ``E = -log(u) > 0``. (With
    ``(w >> 8) + 0.5`` the top value rounds to 1 in float32, ``E = 0`` and a key of ``+inf``.)
    """
    return ((words >> 9).to(torch.float32) + 0.5) * 2.0**-23


def _draw(
    w: torch.Tensor,
    log_w: torch.Tensor,
    ok: torch.Tensor,
    seed: torch.Tensor,
    row_id: torch.Tensor,
    offset: torch.Tensor,
    num_samples: int,
    replacement: bool,
) -> torch.Tensor:
    """Indices drawn from weights ``w >= 0`` (rows, V), ``log_w`` their logs; ``-1`` where a row cannot give one."""
    rows, cols = w.shape
    positive = w > 0
    if replacement:
        cdf = torch.cumsum(w.to(torch.float64), dim=1)
        target = uniform_per_sample(seed, row_id, offset, num_samples) * cdf[:, -1:]
        idx = torch.searchsorted(cdf, target, right=True)
        # rounding can put the target at the very top: take the last entry with weight
        last = torch.where(positive, torch.arange(cols, device=w.device), -1).amax(dim=1, keepdim=True)
        idx = torch.minimum(idx, last)
        available = positive.any(dim=1, keepdim=True).expand(rows, num_samples)
    else:
        key = torch.where(positive, log_w - torch.log(_exponentials(seed, row_id, offset, cols)), -float("inf"))
        n = min(num_samples, cols)
        idx = pad_columns(torch.topk(key, n, dim=1).indices, num_samples, -1)
        counts = positive.sum(dim=1, keepdim=True)
        available = torch.arange(num_samples, device=w.device)[None, :] < counts
    return torch.where(available & ok[:, None], idx, -1)


def _ordered_key(x: torch.Tensor) -> torch.Tensor:
    """int64 keys in the order of float32 ``x`` (-0.0 ties with +0.0)."""
    x = torch.where(x == 0, 0.0, x.float())
    bits = x.view(torch.int32).to(torch.int64)
    return torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)


def greedy_order(
    logits: torch.Tensor,
    m: torch.Tensor,
    top_k: torch.Tensor | None,
    top_k_max: int | None,
    num_samples: int,
    step: int | None = None,
) -> torch.Tensor:
    """Greedy draws without replacement: per row the ``num_samples`` largest logits in decreasing
    order, lowest index first on ties; ``-1`` past the candidates.

    Candidates are the entries the shift rule keeps (in a row holding ``+inf``, its ``+inf``
    entries; else every entry ``> -inf``) and, where ``top_k`` is on, those ``>=`` the k-th largest.
    ``m`` is the row maximum (rows, 1). NaN rows are the caller's to mark. ``step``: columns per
    chunk (the row in one piece when None); the chunks' winners are merged, with the same result.
    """
    rows, cols = logits.shape
    n = min(num_samples, cols)
    acc = torch.float64 if logits.dtype == torch.float64 else torch.float32
    spans = [(c0, min(c0 + (step or cols), cols)) for c0 in range(0, cols, step or cols)]

    def values(c0: int, c1: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = logits[:, c0:c1].to(acc)
        return x, torch.where(m == float("inf"), x == float("inf"), x > -float("inf"))

    kth = None
    if top_k is not None:
        if top_k_max is None:  # (only with the row in one piece)
            ranked = torch.sort(logits.to(acc), dim=1, descending=True).values
        else:
            k, best = min(top_k_max, cols), None
            for c0, c1 in spans:
                x, _ = values(c0, c1)
                best = _merge_top(best, *torch.topk(x, min(k, c1 - c0), dim=1), k)
            assert best is not None
            ranked = best[0]
        kth = ranked.gather(1, (top_k.clamp(1, ranked.shape[1]) - 1)[:, None])
    count = torch.zeros((rows, 1), dtype=torch.int64, device=logits.device)
    top: tuple[torch.Tensor, torch.Tensor] | None = None
    for c0, c1 in spans:
        x, cand = values(c0, c1)
        if kth is not None:
            assert top_k is not None
            cand &= (top_k == 0)[:, None] | (x >= kth)
        count += cand.sum(dim=1, keepdim=True)
        cols_here = torch.arange(c0, c1, device=x.device, dtype=torch.int64)
        if acc == torch.float64:  # no room for the index next to a 64-bit key: stable sorts
            key = torch.where(cand, x, -float("inf"))
            if top is not None:  # earlier columns first, so that ties keep the lower index
                key, cols_here = torch.cat([top[0], key], dim=1), torch.cat([top[1], cols_here.expand(rows, -1)], dim=1)
            key, order = torch.sort(key, dim=1, descending=True, stable=True)
            top = key[:, :n], cols_here.expand(rows, -1).gather(1, order[:, :n])
        else:  # (value, -index) packed into one int64: unique keys, so topk's order is exact
            key = torch.where(cand, _ordered_key(x) * 2**32 + ((2**32 - 1) - cols_here), -(2**63))
            vals, at = torch.topk(key, min(n, c1 - c0), dim=1)
            top = _merge_top(top, vals, at + c0, n)
    assert top is not None
    idx = top[1]
    idx = torch.where(torch.arange(n, device=logits.device)[None, :] < count, idx, -1)
    return pad_columns(idx, num_samples, -1)


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
    acc = torch.float64 if probs.dtype == torch.float64 else torch.float32
    for r in _row_chunks(probs):
        w = probs[r].to(acc)
        valid = torch.isfinite(w) & (w >= 0)
        ok = valid.all(dim=1)
        w = torch.where(valid, w, 0)
        tokens[r] = _draw(w, torch.log(w), ok, seed[r], row_id[r], offset[r], num_samples, replacement)


def _row_chunks(x: torch.Tensor) -> list[slice]:
    """Row slices whose temporaries (about twice the softmax's, for the float64 prefix) fit the budget."""
    rows, cols = x.shape
    step = max(chunks(rows, 2 * cols, 8, x.device)[0] // 2, 1)
    return [slice(r0, r0 + step) for r0 in range(0, rows, step)]


def _top_p_floor(z: torch.Tensor, w: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Per row, the smallest ``z`` that top-p keeps: mass strictly above it ``< top_p`` times the total."""
    z_sorted, order = torch.sort(torch.where(w > 0, z, -float("inf")), dim=1, descending=True)
    w_sorted = w.gather(1, order).to(torch.float64)
    above = torch.cumsum(w_sorted, dim=1) - w_sorted  # mass before each position
    cols = z.shape[1]
    position = torch.arange(cols, device=z.device).expand_as(z_sorted)
    starts = torch.ones_like(z_sorted, dtype=torch.bool)
    starts[:, 1:] = z_sorted[:, 1:] != z_sorted[:, :-1]
    group_start = torch.where(starts, position, 0).cummax(dim=1).values
    strictly_above = above.gather(1, group_start)  # ties share the mass strictly above their value
    keep_sorted = strictly_above < top_p[:, None].to(torch.float64) * w_sorted.sum(dim=1, keepdim=True)
    return torch.where(keep_sorted, z_sorted, float("inf")).amin(dim=1, keepdim=True)


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
    """Sample ``tokens`` (rows, n) int64 from logits (rows, V); per-row parameters as 1-D tensors.

    A filter given as ``None`` is off for every row; within a tensor, ``top_k`` 0, ``top_p`` 1
    and ``min_p`` 0 mean off (the caller normalises). ``top_k_max``, when the caller knows it,
    bounds ``top_k`` and replaces a full sort by ``torch.topk``. ``logprobs`` (float32,
    optional) receives each token's log-probability under the filtered distribution.
    Nothing here synchronises with the device.
    """
    rows, cols = logits.shape
    col_step = _column_step(logits)
    if col_step < cols and top_p is None and (top_k is None or top_k_max is not None):
        for r in range(rows):  # rows too long for the budget: one row at a time, in column chunks
            sl = slice(r, r + 1)
            _sample_long_row(
                logits[sl], temperature[sl], None if top_k is None else top_k[sl], None if min_p is None else min_p[sl],
                seed[sl], row_id[sl], offset[sl], num_samples, replacement, tokens[sl],
                None if logprobs is None else logprobs[sl], top_k_max, col_step,
            )  # fmt: skip
        return
    for r in _row_chunks(logits):  # (top-p and per-row top_k without a bound sort whole rows)
        _sample_chunk(
            logits[r], temperature[r], None if top_k is None else top_k[r], None if top_p is None else top_p[r],
            None if min_p is None else min_p[r], seed[r], row_id[r], offset[r], num_samples, replacement,
            tokens[r], None if logprobs is None else logprobs[r], top_k_max,
        )  # fmt: skip


def _sample_chunk(
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
    top_k_max: int | None,
) -> None:
    acc = torch.float64 if logits.dtype == torch.float64 else torch.float32
    rows, cols = logits.shape
    m = _row_max(logits, cols, acc)
    s = _shifted(logits, m, acc)
    greedy = temperature == 0
    z = s / torch.where(greedy, 1.0, temperature.to(acc))[:, None]
    e = torch.exp(z)  # (a NaN z, from -inf / inf at T = inf, gives e = NaN: not kept, never drawn)
    keep = e > 0
    if top_k is not None:
        # -inf / inf is NaN, which topk and sort rank first: rank the -inf entries of T = inf rows last
        zr = torch.nan_to_num(z, nan=-float("inf"), posinf=float("inf"), neginf=-float("inf"))
        if top_k_max is not None:
            ranked = torch.topk(zr, min(top_k_max, cols), dim=1).values
        else:
            ranked = torch.sort(zr, dim=1, descending=True).values
        kth = ranked.gather(1, (top_k.clamp(1, ranked.shape[1]) - 1)[:, None])
        keep &= (top_k == 0)[:, None] | (zr >= kth)
    if top_p is not None:
        floor = _top_p_floor(z, torch.where(keep, e, 0), top_p)
        keep &= (top_p >= 1)[:, None] | (z >= floor)
    if min_p is not None:
        keep &= e >= min_p[:, None].to(acc)
    w = torch.where(keep, e, 0)
    has_nan = torch.isnan(m[:, 0])
    drawn = _draw(w, z, ~has_nan, seed, row_id, offset, num_samples, replacement)
    if replacement:
        argmax = logits.argmax(dim=1, keepdim=True).expand(rows, num_samples)
    elif logits.device.type == "cpu" and not bool(greedy.any()):  # (no device to sync with on the CPU)
        argmax = drawn  # no greedy row here: skip the ordering
    else:  # greedy rows without replacement: the n largest, in order
        argmax = greedy_order(logits, m, top_k, top_k_max, num_samples)
    greedy_ok = (greedy & ~has_nan & (m[:, 0] > -float("inf")))[:, None]
    chosen = torch.where(greedy[:, None], torch.where(greedy_ok, argmax, -1), drawn)
    tokens.copy_(chosen)
    if logprobs is not None:
        total = w.to(torch.float64).sum(dim=1, keepdim=True)
        picked = z.gather(1, chosen.clamp_min(0)).to(torch.float64) - torch.log(total)
        picked = torch.where(greedy[:, None], 0.0, picked)
        logprobs.copy_(torch.where(chosen >= 0, picked, float("nan")))


def _column_step(x: torch.Tensor) -> int:
    """Columns per chunk of a long row: the softmax's column chunk for the accumulation dtype (so a
    row that softmax takes whole is sampled whole too), a multiple of 4 so that chunks start on a
    Philox counter. Rows up to this long keep the one-piece path (:func:`_row_chunks`)."""
    itemsize = 8 if x.dtype == torch.float64 else 4
    return max(chunks(1, x.shape[1], itemsize, x.device)[1] // 4 * 4, 4)


def _merge_top(
    best: tuple[torch.Tensor, torch.Tensor] | None, vals: torch.Tensor, idx: torch.Tensor, n: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``n`` largest of ``best`` and (``vals``, ``idx``), values in decreasing order."""
    if best is not None:
        vals, idx = torch.cat([best[0], vals], dim=1), torch.cat([best[1], idx], dim=1)
    top, at = torch.topk(vals, min(n, vals.shape[1]), dim=1)
    return top, idx.gather(1, at)


def _sample_long_row(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor | None,
    min_p: torch.Tensor | None,
    seed: torch.Tensor,
    row_id: torch.Tensor,
    offset: torch.Tensor,
    num_samples: int,
    replacement: bool,
    tokens: torch.Tensor,
    logprobs: torch.Tensor | None,
    top_k_max: int | None,
    step: int,
) -> None:
    """:func:`_sample_chunk` for one row (1, V) in column chunks of ``step``: the same weights, the
    same float64 prefix sums (a sequential scan carried across chunks) and race keys, so the same
    tokens; the temporaries stay within the chunk budget (top-p needs the whole row and is not here)."""
    acc = torch.float64 if logits.dtype == torch.float64 else torch.float32
    cols = logits.shape[1]
    spans = [(c0, min(c0 + step, cols)) for c0 in range(0, cols, step)]
    m = _row_max(logits, step, acc)
    greedy = temperature == 0
    tdiv = torch.where(greedy, 1.0, temperature.to(acc))[:, None]

    def z_of(c0: int, c1: int) -> torch.Tensor:
        z = _shifted(logits[:, c0:c1], m, acc) / tdiv
        return torch.nan_to_num_(z, nan=-float("inf"), posinf=float("inf"), neginf=-float("inf"))

    kth = None
    if top_k is not None:
        assert top_k_max is not None
        k = min(top_k_max, cols)
        ranked = None
        for c0, c1 in spans:
            z = z_of(c0, c1)
            ranked = _merge_top(ranked, *torch.topk(z, min(k, c1 - c0), dim=1), k)
        assert ranked is not None
        kth = ranked[0].gather(1, (top_k.clamp(1, ranked[0].shape[1]) - 1)[:, None])

    def weights(c0: int, c1: int) -> tuple[torch.Tensor, torch.Tensor]:
        z = z_of(c0, c1)
        e = torch.exp(z)
        keep = e > 0
        if kth is not None:
            assert top_k is not None
            keep &= (top_k == 0)[:, None] | (z >= kth)
        if min_p is not None:
            keep &= e >= min_p[:, None].to(acc)
        return z, torch.where(keep, e, 0)

    has_nan = torch.isnan(m[:, 0])
    total = torch.zeros((1, 1), dtype=torch.float64, device=logits.device)
    if replacement:
        last = torch.full((1, 1), -1, dtype=torch.int64, device=logits.device)
        starts = torch.empty((1, len(spans)), dtype=torch.float64, device=logits.device)
        for i, (c0, c1) in enumerate(spans):  # the row's float64 prefix sum, chunk by chunk: where each chunk starts
            _, w = weights(c0, c1)
            starts[:, i : i + 1] = total
            total = torch.cumsum(torch.cat([total, w.to(torch.float64)], dim=1), dim=1)[:, -1:].clone()  # not a view
            cols_here = torch.arange(c0, c1, device=w.device)
            last = torch.maximum(last, torch.where(w > 0, cols_here, -1).amax(dim=1, keepdim=True))
        target = uniform_per_sample(seed, row_id, offset, num_samples) * total
        idx = torch.full_like(target, cols, dtype=torch.int64)
        for i, (c0, c1) in enumerate(spans):
            _, w = weights(c0, c1)
            cdf = torch.cumsum(torch.cat([starts[:, i : i + 1], w.to(torch.float64)], dim=1), dim=1)[:, 1:]
            local = torch.searchsorted(cdf, target, right=True)
            idx = torch.where((idx == cols) & (local < c1 - c0), c0 + local, idx)
        idx = torch.minimum(idx, last)
        available = (last >= 0).expand(1, num_samples)
    else:
        n = min(num_samples, cols)
        best, count = None, torch.zeros((1, 1), dtype=torch.int64, device=logits.device)
        for c0, c1 in spans:
            z, w = weights(c0, c1)
            positive = w > 0
            key = torch.where(positive, z - torch.log(_exponentials(seed, row_id, offset, c1 - c0, c0)), -float("inf"))
            top, at = torch.topk(key, min(n, c1 - c0), dim=1)
            best = _merge_top(best, top, at + c0, n)
            count += positive.sum(dim=1, keepdim=True)
            total += w.to(torch.float64).sum(dim=1, keepdim=True)
        assert best is not None
        idx = pad_columns(best[1], num_samples, -1)
        available = torch.arange(num_samples, device=logits.device)[None, :] < count
    drawn = torch.where(available & ~has_nan[:, None], idx, -1)
    if replacement:
        argmax = logits.argmax(dim=1, keepdim=True).expand(1, num_samples)
    elif logits.device.type == "cpu" and not bool(greedy.any()):
        argmax = drawn
    else:
        argmax = greedy_order(logits, m, top_k, top_k_max, num_samples, step)
    greedy_ok = (greedy & ~has_nan & (m[:, 0] > -float("inf")))[:, None]
    chosen = torch.where(greedy[:, None], torch.where(greedy_ok, argmax, -1), drawn)
    tokens.copy_(chosen)
    if logprobs is not None:  # (total: the prefix sum's end with replacement, else a chunked sum)
        z = _shifted(logits.gather(1, chosen.clamp_min(0)), m, acc) / tdiv
        picked = torch.where(greedy[:, None], 0.0, z.to(torch.float64) - torch.log(total))
        logprobs.copy_(torch.where(chosen >= 0, picked, float("nan")))

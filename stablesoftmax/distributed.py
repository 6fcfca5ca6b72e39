"""Vocabulary-parallel sampling and log-probabilities over :mod:`torch.distributed`.

When tensor parallelism shards ``lm_head`` by vocabulary, rank ``r`` of a process group holds
the logits of a contiguous slice of the vocabulary, ``local_logits (..., V_r)``, ranks in
vocabulary order (shards may differ in size; padding columns may be ``-inf``). The functions
here return, on every rank, what the single-device call returns on the gathered logits
``(..., V)``, with communication that does not grow with ``V``:

* :func:`sample_from_logits` - the global token ids (and log-probabilities), the same on
  every rank and equal to :func:`stablesoftmax.sample_from_logits` on the gathered logits with
  the same seed, except where two candidates tie within rounding (the float64 prefix sums
  and masses are summed in another order);
* :func:`log_softmax` - this rank's slice of the global log-softmax (the SPEC's non-finite rules);
* :func:`logprobs_of` - the log-probability of given global token ids.

The algorithm is the one of :mod:`stablesoftmax.backends.torch_sampling`, split by columns:
the row maximum and the argmax by an all-gather of each rank's maximum; top-k by an all-gather
of each rank's local top-k (an int ``top_k``) or by a radix select (a per-row tensor, no host
sync); top-p by a radix select on the order-preserving bits of the scaled logits, with float64
masses all-reduced per byte (4 rounds of 256 bins for float32, 8 for float64 input), which
finds the exact cut; min-p locally; with replacement, an all-gather of each rank's kept mass,
a prefix across ranks, and a min-all-reduce of each rank's candidate; without replacement,
the exponential race keyed by the global column, each rank's top-``n`` keys all-gathered.
``docs/distributed.md`` counts the bytes. The passes over the shard are the shard kernels of the
backend that samples the tensor (C++ on CPU, Triton on CUDA, torch ops elsewhere and for float64;
``backends/torch_shard.py`` documents them).

Randomness: ``seed`` (an int, or one int per row) keys the stream exactly as in the
single-device call. Without ``seed``, the group's rank 0 draws the call's seed from its
device's default generator (every rank draws, so the generators stay in step) and
broadcasts it: ``torch.manual_seed(s)`` on rank 0 reproduces the single-device call.

Every rank must pass the same keyword arguments (the same kinds of values, the same
per-row tensors) and logits of the same batch shape and dtype. With ``validate=True`` the
ranks agree on the shard sizes and on any parameter error before the first collective of
the computation (one all-gather of four int64 per rank), so an error raises the same
:class:`~stablesoftmax.StableSoftmaxError` on every rank and no rank waits in a collective.
With ``validate=False`` nothing synchronises with the host: rows that cannot be sampled give
``-1``, and parameter errors on scalars raise on every rank by themselves (each rank checks
the same values).
"""

from __future__ import annotations

import math
from types import ModuleType

import torch
import torch.distributed as dist

from ._dispatch import backend_for
from ._errors import StableSoftmaxError
from ._sampling import (
    _EMPTY_HINT,
    _OVERFLOW_HINT,
    _SHOWN_ROWS,
    RowParam,
    _check_num_samples,
    _check_tensor,
    _draw_with_replacement,
    _filter_params,
    _random_stream,
    _rows_word,
)
from .backends import torch_shard
from .backends.torch_sampling import pad_columns, uniform_per_sample
from .backends.torch_softmax import _ones_and_rest, _shifted, _total

__all__ = ["comm_stats", "log_softmax", "logprobs_of", "reset_comm_stats", "sample_from_logits"]

_NEG_INF = -math.inf
_DTYPE_CODES = {torch.float16: 0, torch.bfloat16: 1, torch.float32: 2, torch.float64: 3}
# with replacement: ranks that do not hold the drawn column answer _NOT_FOUND + (2**40 - 1 - last positive column)
_NOT_FOUND = 2**62
_COLUMN_LIMIT = 2**40

_STATS = {"collectives": 0, "bytes_sent": 0, "bytes_received": 0}


def comm_stats() -> dict[str, int]:
    """Collectives issued by this process since :func:`reset_comm_stats`, and their bytes.

    ``bytes_sent``: what this rank contributed (the input tensor of each collective);
    ``bytes_received``: the size of each result on this rank (``world`` times the input for
    an all-gather, the input's size for an all-reduce or broadcast).
    """
    return dict(_STATS)


def reset_comm_stats() -> None:
    """Zero the counters of :func:`comm_stats`."""
    for key in _STATS:
        _STATS[key] = 0


class _Comm:
    """The group's collectives, counted."""

    def __init__(self, group: dist.ProcessGroup | None):
        if not dist.is_available() or not dist.is_initialized():
            raise StableSoftmaxError(
                "stablesoftmax.distributed needs an initialised torch.distributed process group "
                "(torch.distributed.init_process_group)"
            )
        self.group = group
        self.rank = dist.get_rank(group)
        self.world = dist.get_world_size(group)

    def _count(self, t: torch.Tensor, factor: int) -> None:
        nbytes = t.numel() * t.element_size()
        _STATS["collectives"] += 1
        _STATS["bytes_sent"] += nbytes
        _STATS["bytes_received"] += nbytes * factor

    def all_gather(self, t: torch.Tensor) -> torch.Tensor:
        """``(world, *t.shape)``: every rank's ``t``, in rank order."""
        t = t.contiguous()
        self._count(t, self.world)
        if self.world == 1:
            return t.unsqueeze(0)
        parts = [torch.empty_like(t) for _ in range(self.world)]
        dist.all_gather(parts, t, group=self.group)
        return torch.stack(parts)

    def all_reduce(self, t: torch.Tensor, op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM) -> torch.Tensor:
        t = t.contiguous().clone()
        self._count(t, 1)
        if self.world > 1:
            dist.all_reduce(t, op=op, group=self.group)
        return t

    def broadcast_from_first(self, t: torch.Tensor) -> torch.Tensor:
        t = t.contiguous().clone()
        self._count(t, 1)
        if self.world > 1:
            src = dist.get_global_rank(self.group, 0) if self.group is not None else 0
            dist.broadcast(t, src=src, group=self.group)
        return t


class _Layout:
    """Where this rank's columns start, and (when agreed on the host) every shard's size."""

    def __init__(self, col0: torch.Tensor, cols: int, sizes: list[int] | None):
        self.col0 = col0  # 0-d int64 on the device
        self.cols = cols
        self.sizes = sizes  # host list, or None when nothing may sync with the host
        self.vocab = None if sizes is None else sum(sizes)


def _agree(
    comm: _Comm, x: torch.Tensor | None, rows: int, error: Exception | None, on_host: bool, op: str
) -> _Layout:
    """Shard sizes from every rank; with ``on_host``, also agree on errors (raise on every rank)."""
    device = x.device if x is not None else torch.device("cpu")
    cols = int(x.shape[-1]) if x is not None else 0
    dtype = _DTYPE_CODES.get(x.dtype, -1) if x is not None else -1
    mine = torch.tensor([cols, int(error is not None), rows, dtype], dtype=torch.int64, device=device)
    table = comm.all_gather(mine)
    col0 = table[: comm.rank, 0].sum()
    if not on_host:
        if error is not None:
            raise error
        return _Layout(col0, cols, None)
    info = table.tolist()
    failed = [r for r, row in enumerate(info) if row[1]]
    if failed:
        if len(failed) == comm.world:  # every rank failed its own checks: each raises what one device would
            assert error is not None
            raise error
        messages: list[str | None] = [None] * comm.world
        dist.all_gather_object(messages, None if error is None else str(error), group=comm.group)
        first = failed[0]  # the same text on every rank
        raise StableSoftmaxError(f"{messages[first]} (on rank {first} of {comm.world})") from error
    if len({row[2] for row in info}) > 1 or len({row[3] for row in info}) > 1:
        raise StableSoftmaxError(
            f"{op}(): every rank must pass logits of the same batch size and dtype; got (rows, dtype code) "
            f"{[(row[2], row[3]) for row in info]} by rank"
        )
    sizes = [row[0] for row in info]
    if any(s < 1 for s in sizes):
        raise StableSoftmaxError(f"{op}(): every rank needs a shard of at least one column, got sizes {sizes}")
    return _Layout(col0, cols, sizes)


def _rows_of(local_logits: torch.Tensor, op: str) -> tuple[torch.Tensor, torch.Size, int]:
    _check_tensor(local_logits, op, "local_logits")
    if local_logits.ndim == 0 or local_logits.shape[-1] == 0:
        raise StableSoftmaxError(
            f"{op}(): local_logits must have shape (..., V_r) with V_r >= 1, got {tuple(local_logits.shape)}"
        )
    batch = local_logits.shape[:-1]
    rows = math.prod(batch)
    x = local_logits.reshape(rows, local_logits.shape[-1])
    if x.stride(1) != 1:
        x = x.contiguous()
    return x, batch, rows


def _shard_kernels(x: torch.Tensor) -> ModuleType:
    """The shard kernels of the backend that samples ``x`` on one device (C++ on CPU, Triton on CUDA,
    torch ops elsewhere and for float64)."""
    name = backend_for(x, "sampling")
    if name == "cpp" and x.dtype != torch.float64:
        from .backends import cpp_shard

        return cpp_shard
    if name == "triton" and x.is_cuda and x.dtype != torch.float64:
        from .backends import triton_shard

        return triton_shard
    return torch_shard


def _accumulation(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _global_max(comm: _Comm, x: torch.Tensor, layout: _Layout, acc: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Row maximum ``(rows, 1)`` in ``acc`` (NaN-propagating), global argmax ``(rows,)`` (lowest index on ties)."""
    local_max = x.amax(dim=1)
    local_arg = x.argmax(dim=1) + layout.col0
    table = comm.all_gather(torch.stack([local_max.to(torch.float64), local_arg.to(torch.float64)], dim=1))
    maxima = table[:, :, 0]  # (world, rows)
    m = maxima.amax(dim=0)  # amax propagates NaN
    first = (maxima == m).to(torch.int8).argmax(dim=0)  # the first rank holding the maximum
    argmax = table[:, :, 1].gather(0, first[None, :])[0].to(torch.int64)
    return m.to(acc)[:, None], argmax


def _log_total(comm: _Comm, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The softmax's ``(S, log S)`` per row from every rank's shifted logits ``s`` (see torch_softmax)."""
    ones, rest = _ones_and_rest(s.exp())
    summed = comm.all_reduce(torch.cat([ones, rest], dim=1).to(torch.float64)).to(s.dtype)
    return _total(summed[:, :1], summed[:, 1:])


def log_softmax(local_logits: torch.Tensor, *, group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """This rank's slice of the log-softmax over the whole vocabulary (last dimension).

    ``+inf`` entries share the mass (``-log k`` each), ``-inf`` entries stay ``-inf``, a row of
    only ``-inf`` is all ``-inf`` and a row holding NaN (on any rank) is NaN. Computed in float32
    (float64 for float64 input); the output has the input's dtype and shape. Communication: one
    all-gather of two float64 and one all-reduce of two float64 per row.
    """
    op = "log_softmax"
    comm = _Comm(group)
    error = x = None
    rows = 0
    try:
        x, _, rows = _rows_of(local_logits, op)
    except (StableSoftmaxError, TypeError) as exc:
        error = exc
    layout = _agree(comm, x, rows, error, True, op)
    assert x is not None
    acc = _accumulation(x)
    if rows == 0:
        return torch.empty_like(local_logits)
    m, _ = _global_max(comm, x, layout, acc)
    s = _shifted(x, m, acc)
    log_total = _log_total(comm, s)[1]
    return (s - log_total).to(local_logits.dtype).view(local_logits.shape)


def logprobs_of(
    local_logits: torch.Tensor, tokens: torch.Tensor, *, group: dist.ProcessGroup | None = None
) -> torch.Tensor:
    """Log-probability of the global token ids ``tokens (..., n)`` under the softmax of the whole vocabulary.

    The same on every rank; equal to ``stablesoftmax.log_softmax(gathered).gather(-1, tokens)``
    (computed in float32, float64 for float64 input; returned in the input's dtype). Token ids
    outside ``[0, V)`` are an error on every rank. Communication: one all-gather of two float64
    per row, one all-reduce of ``2 + n`` float64 per row.
    """
    op = "logprobs_of"
    comm = _Comm(group)
    error = x = None
    rows = 0
    try:
        x, batch, rows = _rows_of(local_logits, op)
        if not isinstance(tokens, torch.Tensor) or tokens.dtype.is_floating_point or tokens.dtype.is_complex:
            raise StableSoftmaxError(f"{op}(): tokens must be an integer tensor")
        if tokens.ndim == 0 or tokens.shape[:-1] != batch:
            raise StableSoftmaxError(
                f"{op}(): tokens of shape {tuple(tokens.shape)} must be (..., n) with the logits' batch shape "
                f"{tuple(batch)}"
            )
    except (StableSoftmaxError, TypeError) as exc:
        error = exc
    layout = _agree(comm, x, rows, error, True, op)
    assert x is not None and layout.vocab is not None
    ids = tokens.reshape(rows, tokens.shape[-1]).to(device=x.device, dtype=torch.int64)
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= layout.vocab):  # the same ids on every rank
        raise StableSoftmaxError(f"{op}(): token ids must lie in [0, {layout.vocab}), got {ids.min()} .. {ids.max()}")
    if rows == 0:
        return torch.empty(tokens.shape, dtype=local_logits.dtype, device=x.device)
    acc = _accumulation(x)
    m, _ = _global_max(comm, x, layout, acc)
    s = _shifted(x, m, acc)
    ones, rest = _ones_and_rest(s.exp())
    local = ids - layout.col0
    mine = (local >= 0) & (local < layout.cols)
    picked = torch.where(mine, s.gather(1, local.clamp(0, layout.cols - 1)), 0.0)
    summed = comm.all_reduce(torch.cat([ones, rest, picked], dim=1).to(torch.float64))
    log_total = _total(summed[:, :1].to(acc), summed[:, 1:2].to(acc))[1]
    return (summed[:, 2:].to(acc) - log_total).to(local_logits.dtype).view(tokens.shape)


def _radix_cut(
    comm: _Comm,
    kernels: ModuleType,
    x: torch.Tensor,
    m: torch.Tensor,
    t: torch.Tensor,
    cut: torch.Tensor | None,
    counts: bool,
    bound: torch.Tensor,
) -> torch.Tensor:
    """Per row, the smallest value ``v`` of ``z`` among the entries with weight ``> 0`` (see
    ``torch_shard.histogram``) whose weight strictly above ``v`` (summed over every rank) is ``< bound``:
    ``(rows, 1)`` in ``m``'s dtype, ``+inf`` for a row without weight (it keeps nothing).

    One byte of the order-preserving bits of ``z`` per round, most significant first: the
    float64 weight per byte value is all-reduced (256 bins per row), the bin holding the cut is
    the lowest non-empty bin whose weight strictly above is ``< bound``, and the search goes
    on inside it. Then ``w > 0 and z >= v`` is the kept set.
    """
    rows = x.shape[0]
    width = 32 if m.dtype == torch.float32 else 64
    prefix = torch.zeros((rows, 1), dtype=torch.int64, device=x.device)
    mass_above = torch.zeros((rows, 1), dtype=torch.float64, device=x.device)
    found = torch.ones((rows, 1), dtype=torch.bool, device=x.device)
    bins = torch.arange(256, device=x.device)
    for shift in range(width - 8, -1, -8):
        hist = comm.all_reduce(kernels.histogram(x, m, t, cut, counts, prefix, shift))
        # weight strictly above each bin: suffix sums, exclusive
        suffix = torch.flip(torch.cumsum(torch.flip(hist, [1]), 1), [1]) - hist
        strictly = mass_above + suffix
        candidate = (hist > 0) & (strictly < bound)
        chosen = torch.where(candidate, bins, 256).amin(dim=1, keepdim=True)  # the lowest candidate bin
        found &= chosen < 256
        chosen = chosen.clamp_max(255)
        mass_above = strictly.gather(1, chosen)
        prefix = (prefix << 8) | chosen
    value = torch_shard.key_value(prefix, m.dtype)[:, :1].to(m.dtype)
    return torch.where(found, value, math.inf)


def _draw_with_replacement_global(
    comm: _Comm, kernels: ModuleType, x, m, t, cut, min_p, layout: _Layout, seed, row_id, offset, num_samples: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse CDF over the concatenated rows: ``(rows, n)`` global ids (``-1`` where a row has no
    weight) and the row's kept mass ``(rows, 1)`` float64."""
    cols = x.shape[1]
    masses = comm.all_gather(kernels.kept_mass(x, m, t, cut, min_p))  # (world, rows)
    prefix = torch.zeros_like(masses[0])
    before = prefix
    for r in range(comm.world):  # the prefix in rank order, the same additions on every rank
        if r == comm.rank:
            before = prefix
        prefix = prefix + masses[r]
    target = uniform_per_sample(seed, row_id, offset, num_samples) * prefix[:, None]
    idx, last = kernels.search(x, m, t, cut, min_p, before, target)
    last = torch.where(last >= 0, last + layout.col0, -1)[:, None]
    answer = torch.where(idx < cols, idx + layout.col0, _NOT_FOUND + (_COLUMN_LIMIT - 1 - last))
    answer = comm.all_reduce(answer, dist.ReduceOp.MIN)
    # rounding put the target at the very top: the last column with weight (-1 for a row without any)
    fallback = _COLUMN_LIMIT - 1 - (answer - _NOT_FOUND)
    return torch.where(answer < _NOT_FOUND, answer, fallback), prefix[:, None]


def _draw_race_global(
    comm: _Comm, kernels: ModuleType, x, m, t, cut, min_p, layout: _Layout, seed, row_id, offset, num_samples: int
) -> torch.Tensor:
    """Exponential race: each rank's top-``n`` keys all-gathered; ``-1`` past a row's candidates."""
    rows = x.shape[0]
    keys, ids, count = kernels.race(x, m, t, cut, min_p, seed, row_id, offset, layout.col0, num_samples)
    parts = [keys.to(torch.float64), ids.to(torch.float64), count[:, None].to(torch.float64)]
    table = comm.all_gather(torch.cat(parts, dim=1))  # (world, rows, 2n + 1)
    all_values = table[:, :, :num_samples].permute(1, 0, 2).reshape(rows, -1)
    all_ids = table[:, :, num_samples : 2 * num_samples].permute(1, 0, 2).reshape(rows, -1)
    counts = table[:, :, 2 * num_samples].sum(dim=0)[:, None]
    best = torch.topk(all_values, num_samples, dim=1).indices
    chosen = all_ids.gather(1, best).to(torch.int64)
    available = torch.arange(num_samples, device=x.device)[None, :] < counts
    return torch.where(available, chosen, -1)


def _greedy_top_n(
    comm: _Comm,
    x: torch.Tensor,
    layout: _Layout,
    m: torch.Tensor,
    k_tensor: torch.Tensor | None,
    k_max: int | None,
    n: int,
) -> torch.Tensor:
    """Greedy without replacement (``_sampling``'s rule): the ``n`` largest logits in decreasing order, lowest
    global index first on ties, among the entries the shift rule keeps (a row holding ``+inf``: those) and,
    with top-k, those ``>=`` the k-th largest; ``-1`` past the candidates. Each rank's ``n`` best are gathered."""
    rows, cols = x.shape
    s = _shifted(x, m, m.dtype)
    candidate = s > _NEG_INF
    if k_tensor is not None:
        kernels = _shard_kernels(x)
        candidate &= s >= _top_k_cut(comm, kernels, x, m, torch.ones_like(m), k_tensor, k_max)
    ranked = torch.sort(torch.where(candidate, s, _NEG_INF), dim=1, descending=True, stable=True)
    local = min(n, cols)
    values = pad_columns(ranked.values[:, :local].to(torch.float64), n, _NEG_INF)
    ids = pad_columns((ranked.indices[:, :local] + layout.col0).to(torch.float64), n, -1.0)
    table = comm.all_gather(torch.cat([values, ids], dim=1))  # (world, rows, 2n), ranks in column order
    all_values = table[:, :, :n].permute(1, 0, 2).reshape(rows, -1)
    all_ids = table[:, :, n:].permute(1, 0, 2).reshape(rows, -1)
    # a stable sort keeps ties in gathered order, which is increasing global index
    best = torch.sort(all_values, dim=1, descending=True, stable=True).indices[:, :n]
    chosen = all_ids.gather(1, best).to(torch.int64)
    return torch.where(all_values.gather(1, best) > _NEG_INF, chosen, -1)


def _top_k_cut(
    comm: _Comm,
    kernels: ModuleType,
    x: torch.Tensor,
    m: torch.Tensor,
    t: torch.Tensor,
    top_k: torch.Tensor,
    k_max: int | None,
) -> torch.Tensor:
    """The global k-th largest ``z`` per row, ``(rows, 1)`` (``-inf`` where ``top_k`` is 0: off)."""
    rows = x.shape[0]
    if k_max is not None:  # an int: gather every rank's top-k candidates
        candidates = comm.all_gather(kernels.top_values(x, m, t, k_max)).permute(1, 0, 2).reshape(rows, -1)
        kth = torch.topk(candidates, k_max, dim=1).values[:, k_max - 1 :]
    else:  # per-row k: radix select by counts, no host sync
        kth = _radix_cut(comm, kernels, x, m, t, None, True, top_k.to(torch.float64)[:, None])
    return torch.where((top_k == 0)[:, None], _NEG_INF, kth)


def _bad_row_error(
    comm: _Comm, x: torch.Tensor, vocab: int, bad_rows: list[int], why: str, hint: str
) -> StableSoftmaxError:
    """The single-device message (``_sampling._rows_error``), its counts summed over the ranks."""
    shown_rows = bad_rows[:_SHOWN_ROWS]
    sub = x[shown_rows]
    local = torch.stack(
        [torch.isnan(sub).sum(dim=1), (sub == math.inf).sum(dim=1), (sub == -math.inf).sum(dim=1)], dim=1
    )
    counts = comm.all_reduce(local.to(torch.int64)).tolist()
    shown = ", ".join(str(r) for r in shown_rows) + (", ..." if len(bad_rows) > _SHOWN_ROWS else "")
    details = "; ".join(f"row {r}: {c[0]} NaN, {c[1]} +inf, {c[2]} -inf of {vocab}" for r, c in zip(shown_rows, counts))
    return StableSoftmaxError(
        f"sample_from_logits(): {len(bad_rows)} of {x.shape[0]} rows {why} ({_rows_word(bad_rows)} {shown}). "
        f"{details}. {hint}"
    )


def _raise_for_bad_rows(
    comm: _Comm,
    x: torch.Tensor,
    vocab: int,
    m: torch.Tensor,
    tokens: torch.Tensor,
    num_samples: int,
    has_filters: bool,
) -> None:
    """``_sampling._raise_for_bad_rows`` on the shards: ``tokens`` and ``m`` are the same on every rank."""
    if int(tokens.min()) >= 0:
        return
    bad = (tokens < 0).any(dim=1)
    bad_rows = bad.nonzero().flatten().tolist()
    nan_row = torch.isnan(m[:, 0])
    nan_rows = [r for r in bad_rows if bool(nan_row[r])]
    if nan_rows:
        raise _bad_row_error(comm, x, vocab, nan_rows, "hold NaN logits", _OVERFLOW_HINT)
    empty_rows = [r for r in bad_rows if bool((tokens[r] < 0).all())]
    if empty_rows:
        masked = all(bool(m[r, 0] == -math.inf) for r in empty_rows)
        why = "have every logit -inf" if masked else "have nothing left to sample after the filters"
        raise _bad_row_error(comm, x, vocab, empty_rows, why, _EMPTY_HINT)
    raise _bad_row_error(
        comm, x, vocab, bad_rows,
        f"have fewer candidates than num_samples={num_samples} without replacement"
        + (" after the filters" if has_filters else ""),
        "Fix: sample with replacement=True, ask for fewer samples"
        + (", or loosen top_k / top_p / min_p." if has_filters else "."),
    )  # fmt: skip


def _sample(
    comm: _Comm,
    x: torch.Tensor,
    layout: _Layout,
    m: torch.Tensor,
    greedy: torch.Tensor,
    temp: torch.Tensor,
    k_tensor: torch.Tensor | None,
    k_max: int | None,
    p_tensor: torch.Tensor | None,
    minp_tensor: torch.Tensor | None,
    keys: torch.Tensor,
    row_ids: torch.Tensor,
    offsets: torch.Tensor,
    num_samples: int,
    replacement: bool,
    return_logprobs: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The filters and the draw of ``torch_sampling._sample_chunk`` on this rank's columns: global ids
    ``(rows, n)`` (``-1`` where a row has too few candidates) and, when asked, their float64 log-probs."""
    acc = m.dtype
    kernels = _shard_kernels(x)
    t = torch.where(greedy, 1.0, temp.to(acc))[:, None].to(acc)
    cut = None
    if k_tensor is not None:
        cut = _top_k_cut(comm, kernels, x, m, t, k_tensor, k_max)
    if p_tensor is not None:
        total = comm.all_reduce(kernels.kept_mass(x, m, t, cut, None)[:, None])
        bound = p_tensor[:, None].to(torch.float64) * total
        cut_p = torch.where((p_tensor >= 1)[:, None], _NEG_INF, _radix_cut(comm, kernels, x, m, t, cut, False, bound))
        cut = cut_p if cut is None else torch.maximum(cut, cut_p)
    min_p = None if minp_tensor is None else minp_tensor[:, None].to(acc)
    draw = (kernels, x, m, t, cut, min_p, layout, keys, row_ids, offsets, num_samples)
    mass = None
    if _draw_with_replacement(num_samples, replacement):
        chosen, mass = _draw_with_replacement_global(comm, *draw)
    else:
        chosen = _draw_race_global(comm, *draw)
    if not return_logprobs:
        return chosen, None
    local = chosen - layout.col0
    mine = (local >= 0) & (local < layout.cols)
    picked_x = x.gather(1, local.clamp(0, layout.cols - 1))
    picked = torch.where(mine, torch_shard.z_of(picked_x, m, t).to(torch.float64), 0.0)
    if mass is None:  # the race: the kept mass is summed here
        summed = comm.all_reduce(torch.cat([kernels.kept_mass(x, m, t, cut, min_p)[:, None], picked], dim=1))
        mass, picked = summed[:, :1], summed[:, 1:]
    else:
        picked = comm.all_reduce(picked)
    return chosen, picked - torch.log(mass)


def sample_from_logits(
    local_logits: torch.Tensor,
    num_samples: int = 1,
    *,
    group: dist.ProcessGroup | None = None,
    temperature: RowParam = 1.0,
    top_k: RowParam | None = None,
    top_p: RowParam | None = None,
    min_p: RowParam | None = None,
    replacement: bool = True,
    seed: RowParam | None = None,
    offset: RowParam = 0,
    return_logprobs: bool = False,
    validate: bool = True,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Sample global token ids from this rank's vocabulary shard; the same answer on every rank.

    Parameters are those of :func:`stablesoftmax.sample_from_logits` (no ``generator``: without
    ``seed``, rank 0 of ``group`` draws the seed from its default generator and broadcasts it),
    plus ``group`` (default: the world). ``local_logits (..., V_r)`` is this rank's contiguous
    slice of the vocabulary, ranks in vocabulary order. A per-row ``top_k`` tensor, ``top_p``
    and ``min_p`` work without any host sync; an int ``top_k`` gathers ``k`` candidates per rank.

    Returns
    -------
    torch.Tensor or (torch.Tensor, torch.Tensor)
        int64 global token ids ``(..., num_samples)`` (and their float32 log-probabilities),
        equal to the single-device call on the gathered logits except where two candidates tie
        within rounding.

    Raises
    ------
    StableSoftmaxError
        On every rank, for bad parameters on any rank and (with ``validate``) for rows holding
        NaN or with nothing to sample, with the single-device message.
    """
    op = "sample_from_logits"
    comm = _Comm(group)
    error = x = None
    rows = 0
    try:
        x, batch, rows = _rows_of(local_logits, op)
        _check_num_samples(num_samples, op)
        device = x.device
        temp, k_tensor, k_max, p_tensor, minp_tensor = _filter_params(
            temperature, top_k, top_p, min_p, rows, batch, device, None, validate
        )
        keys, row_ids, offsets = _random_stream(seed, offset, None, rows, batch, device)
    except (StableSoftmaxError, TypeError) as exc:
        error = exc
    layout = _agree(comm, x, rows, error, validate, op)
    assert x is not None
    vocab = layout.vocab
    if vocab is not None and not replacement and num_samples > vocab:
        raise StableSoftmaxError(
            f"{op}(): cannot draw {num_samples} samples without replacement from {vocab} categories"
        )
    if rows == 0:
        empty = torch.empty((*batch, num_samples), dtype=torch.int64, device=x.device)
        return (empty, empty.float()) if return_logprobs else empty
    all_greedy = not isinstance(temperature, torch.Tensor) and temperature == 0
    if seed is None and not all_greedy:
        keys = comm.broadcast_from_first(keys)
    if k_max is not None and vocab is not None and k_max >= vocab:
        k_tensor = k_max = None  # off

    acc = _accumulation(x)
    m, argmax = _global_max(comm, x, layout, acc)
    greedy = temp == 0
    has_nan = torch.isnan(m[:, 0])
    greedy_ok = (greedy & ~has_nan & (m[:, 0] > _NEG_INF))[:, None]
    if replacement or num_samples == 1 or not (all_greedy or isinstance(temperature, torch.Tensor)):
        greedy_tokens = torch.where(greedy_ok, argmax[:, None], -1).expand(rows, num_samples)
    else:
        greedy_tokens = torch.where(greedy_ok, _greedy_top_n(comm, x, layout, m, k_tensor, k_max, num_samples), -1)
    logprobs = None
    if all_greedy:  # a scalar temperature 0: nothing else to compute or communicate
        chosen = greedy_tokens.contiguous()
        if return_logprobs:
            logprobs = torch.where(chosen >= 0, 0.0, math.nan).to(torch.float32)
    else:
        chosen, logprobs = _sample(
            comm, x, layout, m, greedy, temp, k_tensor, k_max, p_tensor, minp_tensor,
            keys, row_ids, offsets, num_samples, replacement, return_logprobs,
        )  # fmt: skip
        chosen = torch.where(greedy[:, None], greedy_tokens, torch.where(has_nan[:, None], -1, chosen))
        if logprobs is not None:
            logprobs = torch.where(chosen >= 0, torch.where(greedy[:, None], 0.0, logprobs), math.nan)
            logprobs = logprobs.to(torch.float32)
    if validate:
        assert vocab is not None
        has_filters = any(t is not None for t in (k_tensor, p_tensor, minp_tensor))
        _raise_for_bad_rows(comm, x, vocab, m, chosen, num_samples, has_filters)
    tokens = chosen.view(*batch, num_samples)
    if logprobs is not None:
        return tokens, logprobs.view(*batch, num_samples)
    return tokens

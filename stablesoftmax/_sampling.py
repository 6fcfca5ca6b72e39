"""multinomial and sample_from_logits: the SPEC's sampling rules, decided once, in front of the dispatch.

This layer checks arguments, turns every per-row parameter into a 1-D tensor, derives the
random stream (Philox key per row, row id, offset) from ``seed`` / ``offset`` /
``generator``, and turns the kernels' ``-1`` (a row that cannot be sampled) into a
:class:`StableSoftmaxError` that names the rows, what is wrong with them and what to do.
The algorithm itself is documented in :mod:`stablesoftmax.backends.torch_sampling`.
"""

from __future__ import annotations

import functools
import math
import numbers
import operator
from typing import Any, Literal, Union, overload

import torch

from ._dispatch import sampling_kernels_for
from ._errors import StableSoftmaxError, UnsupportedError
from ._softmax import FLOAT_DTYPES

__all__ = ["multinomial", "sample_from_logits"]

RowParam = Union[float, int, torch.Tensor]
_SHOWN_ROWS = 5
_OVERFLOW_HINT = (
    "Likely cause: float16 overflow upstream (activations past 65504 become inf, then inf - inf = NaN). "
    "Fix: load the model in bfloat16 or float32 (e.g. torch_dtype=torch.bfloat16)."
)
_EMPTY_HINT = (
    "Likely cause: every entry masked (-inf) by a logits processor or attention mask, or removed by "
    "top_k / top_p / min_p. Fix: loosen the filter, or check the masks that produced these rows."
)


def _check_tensor(x: torch.Tensor, op: str, what: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{op}(): {what} must be a torch.Tensor, not {type(x).__name__}")
    if x.is_nested or x.layout != torch.strided:
        kind = "a nested" if x.is_nested else f"a {x.layout} (sparse)"
        raise UnsupportedError(
            f"{op}(): {what} is {kind} tensor; only dense (strided) tensors are supported: "
            "pass a dense tensor (e.g. t.to_padded_tensor(...) or t.to_dense()), or one component at a time"
        )
    if x.dtype not in FLOAT_DTYPES:
        raise StableSoftmaxError(f"{op}(): {what} must be float16, bfloat16, float32 or float64, not {x.dtype}")


def _is_bool(value: Any) -> bool:
    """A Python or NumPy bool: never taken as a number here (Python bools have ``__index__``)."""
    return isinstance(value, bool) or (type(value).__module__ == "numpy" and type(value).__name__ in ("bool", "bool_"))


def _as_int(value: Any, what: str) -> int:
    """An integral argument as a Python int: int, NumPy integer, anything with ``__index__``; not bool, not float."""
    if not _is_bool(value):
        try:
            return operator.index(value)
        except TypeError:
            pass
    raise TypeError(f"{what} must be an int, not {type(value).__name__}")


def _as_real(value: Any, what: str) -> float:
    """A real scalar argument (int, float, NumPy number) as a float; not bool, complex or str."""
    if _is_bool(value) or not isinstance(value, numbers.Real):
        raise TypeError(f"{what} must be a real number or a tensor, not {type(value).__name__}")
    return float(value)


def _check_bool(value: Any, what: str) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{what} must be a bool, not {type(value).__name__}")


def _check_generator(generator: Any, op: str) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"{op}(): generator must be a torch.Generator or None, not {type(generator).__name__}")


def _check_num_samples(num_samples: Any, op: str) -> int:
    """``num_samples`` as an int >= 1 (an int, NumPy integer or 0-dim integer tensor, as torch takes)."""
    n = _as_int(num_samples, f"{op}(): num_samples")
    if n < 1:
        raise StableSoftmaxError(f"{op}(): num_samples must be a positive int, not {n}")
    return n


def _check_param_tensor(value: torch.Tensor, name: str, integer: bool) -> None:
    """A per-row parameter tensor: dense, real, integer-valued where ``integer``."""
    if value.is_nested or value.layout != torch.strided:
        raise UnsupportedError(f"{name} must be a dense (strided) tensor, not a nested or sparse one")
    dtype = value.dtype
    if dtype.is_complex or dtype == torch.bool or (integer and dtype.is_floating_point):
        want = "an integer tensor (e.g. torch.int64)" if integer else "a real (float or integer) tensor"
        raise StableSoftmaxError(f"{name} must be {want}, not {dtype}")


def wrap_int64(seed: int) -> int:
    """Any int as an int64 (two's complement wrap: uint64 seeds welcome)."""
    return (seed + 2**63) % 2**64 - 2**63


def _capturing(device: torch.device) -> bool:
    """A CUDA graph is being captured: a tensor made now is filled only when the graph replays."""
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


@functools.lru_cache(maxsize=64)
def _cached_constant(value: float | int, rows: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.full((rows,), value, dtype=dtype, device=device)


def _constant(value: float | int, rows: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A read-only 1-D tensor of ``rows`` copies of ``value`` (kernels never write their parameters).

    Decoding calls with the same scalars every step; building the tensors costs more than the
    kernel on a batch of one, so they are cached (never from inside a CUDA-graph capture).
    """
    if _capturing(device):
        return torch.full((rows,), value, dtype=dtype, device=device)
    return _cached_constant(value, rows, dtype, device)


@functools.lru_cache(maxsize=16)
def _cached_row_ids(rows: int, device: torch.device) -> torch.Tensor:
    return torch.arange(rows, dtype=torch.int64, device=device)


def _row_ids(rows: int, device: torch.device) -> torch.Tensor:
    """``0 .. rows - 1`` as int64 (read-only, cached like :func:`_constant`)."""
    if _capturing(device):
        return torch.arange(rows, dtype=torch.int64, device=device)
    return _cached_row_ids(rows, device)


def _per_row(value: RowParam, rows: int, batch: torch.Size, device: torch.device, dtype: torch.dtype, name: str):
    """A scalar or a tensor broadcastable to the batch shape, as a contiguous 1-D tensor of ``rows`` entries."""
    if isinstance(value, torch.Tensor):
        try:
            shaped = value.expand(batch)
        except RuntimeError as exc:
            raise StableSoftmaxError(
                f"{name} of shape {tuple(value.shape)} does not match the batch shape {tuple(batch)}"
            ) from exc
        if value.device.type == "meta" and device.type != "meta":
            raise StableSoftmaxError(
                f"{name} is on the meta device (it holds no values) but the logits are on {device}: "
                f"create {name} on {device}"
            )
        return shaped.to(device=device, dtype=dtype).reshape(rows).contiguous()
    return _constant(value, rows, dtype, device)


def _random_stream(
    seed: RowParam | None,
    offset: RowParam,
    generator: torch.Generator | None,
    rows: int,
    batch: torch.Size,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Philox key per row, counter row id per row, offset per row (all int64).

    An int ``seed`` and int ``offset`` (the decoding case) are answered from a cache of read-only tensors (never
    inside a CUDA-graph capture).
    """
    if seed.__class__ is int and offset.__class__ is int and generator is None and not _capturing(device):
        return _cached_stream(seed, offset, rows, device)
    return _checked_stream(seed, offset, generator, rows, batch, device)


@functools.lru_cache(maxsize=64)
def _cached_stream(seed: int, offset: int, rows: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """:func:`_checked_stream` for a Python int seed and offset (the batch shape does not matter for scalars)."""
    return _checked_stream(seed, offset, None, rows, (rows,), device)


def _checked_stream(
    seed: RowParam | None,
    offset: RowParam,
    generator: torch.Generator | None,
    rows: int,
    batch: torch.Size | tuple[int, ...],
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`_random_stream` without its cache."""
    if seed is not None and generator is not None:
        raise StableSoftmaxError("pass seed or generator, not both")
    if isinstance(offset, torch.Tensor):
        _check_param_tensor(offset, "offset", integer=True)
    else:
        offset = wrap_int64(_as_int(offset, "offset"))  # modulo 2**64, as the SPEC says
    offsets = _per_row(offset, rows, batch, device, torch.int64, "offset")
    if isinstance(seed, torch.Tensor):  # per-row seeds: each row keyed by its own seed alone
        _check_param_tensor(seed, "seed", integer=True)
        keys = _per_row(seed, rows, batch, device, torch.int64, "seed")
        return keys, _constant(0, rows, torch.int64, device), offsets
    if seed is None:  # draw the call's seed from the generator, so manual_seed reproduces the run
        gen_device = generator.device if generator is not None else device
        drawn = torch.randint(-(2**63), 2**63 - 1, (1,), dtype=torch.int64, generator=generator, device=gen_device)
        keys = drawn.to(device)
        if rows > 1:
            keys = keys.expand(rows).contiguous()
    else:
        keys = _constant(wrap_int64(_as_int(seed, "seed")), rows, torch.int64, device)
    return keys, _row_ids(rows, device), offsets


def _counts(row: torch.Tensor) -> str:
    nan = int(torch.isnan(row).sum())
    pos = int((row == math.inf).sum())
    neg = int((row == -math.inf).sum())
    return f"{nan} NaN, {pos} +inf, {neg} -inf of {row.numel()}"


def _rows_error(op: str, x: torch.Tensor, bad_rows: list[int], why: str, hint: str) -> StableSoftmaxError:
    shown = ", ".join(str(r) for r in bad_rows[:_SHOWN_ROWS]) + (", ..." if len(bad_rows) > _SHOWN_ROWS else "")
    details = "; ".join(f"row {r}: {_counts(x[r])}" for r in bad_rows[:_SHOWN_ROWS])
    return StableSoftmaxError(
        f"{op}(): {len(bad_rows)} of {x.shape[0]} rows {why} ({_rows_word(bad_rows)} {shown}). {details}. {hint}"
    )


def _raise_for_bad_rows(
    x: torch.Tensor, tokens: torch.Tensor, num_samples: int, replacement: bool, has_filters: bool
) -> None:
    """Turn the kernels' -1 into the SPEC's error (one device sync, only when validating)."""
    if (tokens.item() if tokens.numel() == 1 else int(tokens.min())) >= 0:  # item(): one token, no reduction
        return
    bad = (tokens < 0).any(dim=1)
    op = "sample_from_logits"
    bad_rows = bad.nonzero().flatten().tolist()
    nan_rows = [r for r in bad_rows if bool(torch.isnan(x[r]).any())]
    if nan_rows:
        raise _rows_error(op, x, nan_rows, "hold NaN logits", _OVERFLOW_HINT)
    empty_rows = [r for r in bad_rows if bool((tokens[r] < 0).all())]
    if empty_rows:
        masked = all(bool((x[r] == -math.inf).all()) for r in empty_rows)
        why = "have every logit -inf" if masked else "have nothing left to sample after the filters"
        raise _rows_error(op, x, empty_rows, why, _EMPTY_HINT)
    raise _rows_error(
        op, x, bad_rows,
        f"have fewer candidates than num_samples={num_samples} without replacement"
        + (" after the filters" if has_filters else ""),
        "Fix: sample with replacement=True, ask for fewer samples"
        + (", or loosen top_k / top_p / min_p." if has_filters else "."),
    )  # fmt: skip


def _draw_with_replacement(num_samples: int, replacement: bool) -> bool:
    """One draw is the same distribution either way; the inverse-CDF draw reads far less randomness than the race."""
    return replacement or num_samples == 1


def _real_param(value: RowParam, name: str) -> RowParam:
    """A float-valued per-row parameter: a real scalar (as float) or a real tensor."""
    if isinstance(value, torch.Tensor):
        _check_param_tensor(value, name, integer=False)
        return value
    return _as_real(value, name)


def _check_range(value: RowParam, name: str, low: float, high: float, low_open: bool, validate: bool) -> None:
    """Check a scalar always, a tensor only when validating (that costs a device sync)."""
    if isinstance(value, torch.Tensor):
        if not validate or value.device.type == "meta":  # meta: no values; _per_row names the problem
            return
        v = value.double()
        ok = bool(((v > low) if low_open else (v >= low)).all() and (v <= high).all())
        shown = value.flatten()[:_SHOWN_ROWS].tolist()
    else:
        ok = (value > low if low_open else value >= low) and value <= high
        shown = value
    if not ok:
        bracket = "(" if low_open else "["
        raise StableSoftmaxError(f"{name} must lie in {bracket}{low}, {high}], got {shown}")


_PLAIN = frozenset((int, float))  # exact Python scalar types; bool, NumPy scalars and tensors take the general path


def _plain(value: Any) -> bool:
    """A Python ``int`` or ``float`` (not a subclass such as ``bool``): safe to key a cache by."""
    return value.__class__ in _PLAIN


@functools.lru_cache(maxsize=128)
def _cached_filter_params(
    temperature: float | int,
    top_k: int | None,
    top_p: float | int | None,
    min_p: float | int | None,
    rows: int,
    device: torch.device,
    vocab: int | None,
) -> tuple[torch.Tensor, torch.Tensor | None, int | None, torch.Tensor | None, torch.Tensor | None]:
    """:func:`_checked_filter_params` for Python scalars, one entry per distinct call (a decoding loop repeats them).

    Only results are cached: a bad value raises on every call. ``validate`` and the batch shape do not change the
    result for scalars (a scalar is always checked, and broadcast to ``rows`` entries).
    """
    return _checked_filter_params(temperature, top_k, top_p, min_p, rows, (rows,), device, vocab, False)


def _filter_params(
    temperature: RowParam,
    top_k: RowParam | None,
    top_p: RowParam | None,
    min_p: RowParam | None,
    rows: int,
    batch: tuple[int, ...],
    device: torch.device,
    vocab: int | None,
    validate: bool,
) -> tuple[torch.Tensor, torch.Tensor | None, int | None, torch.Tensor | None, torch.Tensor | None]:
    """Checked per-row ``temperature`` (float32), ``top_k`` (int64; with ``k_max``, a bound known on the host),
    ``top_p`` and ``min_p`` (float32), in the SPEC's order; ``None`` where a filter is off. A ``top_k`` of 0 or
    ``>= vocab`` is off (``vocab`` None: not known here, only 0 is). Shared by :func:`sample_from_logits` and
    :mod:`stablesoftmax.distributed`.

    Python ``int`` / ``float`` parameters (the decoding case) are answered from a cache: the tensors are read-only
    and the same for the same scalars (never inside a CUDA-graph capture, where a tensor must be made afresh).
    """
    if (
        _plain(temperature)
        and (top_k is None or top_k.__class__ is int)
        and (top_p is None or _plain(top_p))
        and (min_p is None or _plain(min_p))
        and not _capturing(device)
    ):
        return _cached_filter_params(temperature, top_k, top_p, min_p, rows, device, vocab)
    return _checked_filter_params(temperature, top_k, top_p, min_p, rows, batch, device, vocab, validate)


def _checked_filter_params(
    temperature: RowParam,
    top_k: RowParam | None,
    top_p: RowParam | None,
    min_p: RowParam | None,
    rows: int,
    batch: tuple[int, ...],
    device: torch.device,
    vocab: int | None,
    validate: bool,
) -> tuple[torch.Tensor, torch.Tensor | None, int | None, torch.Tensor | None, torch.Tensor | None]:
    """:func:`_filter_params` without its cache: checks every parameter and builds the tensors."""
    _check_range(temperature, "temperature", 0.0, math.inf, False, validate)
    temp = _per_row(temperature, rows, batch, device, torch.float32, "temperature")
    if isinstance(temperature, torch.Tensor):  # unchecked bad values: a -1 row, not a wrong answer
        temp = torch.where(temp >= 0, temp, math.nan)
    k_tensor = p_tensor = minp_tensor = None
    k_max = None  # a bound on top_k known on the host: topk instead of a full sort
    if isinstance(top_k, torch.Tensor):
        _check_range(top_k, "top_k", 0, math.inf, False, validate)
        k_tensor = _per_row(top_k, rows, batch, device, torch.int64, "top_k")
        on = (k_tensor > 0) & (k_tensor < vocab) if vocab is not None else k_tensor > 0
        k_tensor = torch.where(on, k_tensor, 0)
    elif top_k is not None:
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
            raise StableSoftmaxError(f"top_k must be a non-negative int or an int tensor, got {top_k!r}")
        if top_k > 0 and (vocab is None or top_k < vocab):
            k_tensor, k_max = _constant(top_k, rows, torch.int64, device), top_k
    if top_p is not None:
        _check_range(top_p, "top_p", 0.0, 1.0, True, validate)
        if isinstance(top_p, torch.Tensor) or top_p < 1:
            p_tensor = _per_row(top_p, rows, batch, device, torch.float32, "top_p")
    if min_p is not None:
        _check_range(min_p, "min_p", 0.0, 1.0, False, validate)
        if isinstance(min_p, torch.Tensor) or min_p > 0:
            minp_tensor = _per_row(min_p, rows, batch, device, torch.float32, "min_p")
    return temp, k_tensor, k_max, p_tensor, minp_tensor


@overload
def sample_from_logits(
    logits: torch.Tensor,
    num_samples: int = 1,
    *,
    temperature: RowParam = 1.0,
    top_k: RowParam | None = None,
    top_p: RowParam | None = None,
    min_p: RowParam | None = None,
    replacement: bool = True,
    generator: torch.Generator | None = None,
    seed: RowParam | None = None,
    offset: RowParam = 0,
    return_logprobs: Literal[False] = False,
    validate: bool = True,
) -> torch.Tensor: ...


@overload
def sample_from_logits(
    logits: torch.Tensor,
    num_samples: int = 1,
    *,
    temperature: RowParam = 1.0,
    top_k: RowParam | None = None,
    top_p: RowParam | None = None,
    min_p: RowParam | None = None,
    replacement: bool = True,
    generator: torch.Generator | None = None,
    seed: RowParam | None = None,
    offset: RowParam = 0,
    return_logprobs: Literal[True],
    validate: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]: ...


@overload
def sample_from_logits(
    logits: torch.Tensor,
    num_samples: int = 1,
    *,
    temperature: RowParam = 1.0,
    top_k: RowParam | None = None,
    top_p: RowParam | None = None,
    min_p: RowParam | None = None,
    replacement: bool = True,
    generator: torch.Generator | None = None,
    seed: RowParam | None = None,
    offset: RowParam = 0,
    return_logprobs: bool = False,
    validate: bool = True,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]: ...


def sample_from_logits(
    logits: torch.Tensor,
    num_samples: int = 1,
    *,
    temperature: RowParam = 1.0,
    top_k: RowParam | None = None,
    top_p: RowParam | None = None,
    min_p: RowParam | None = None,
    replacement: bool = True,
    generator: torch.Generator | None = None,
    seed: RowParam | None = None,
    offset: RowParam = 0,
    return_logprobs: bool = False,
    validate: bool = True,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Sample token ids from logits without materialising probabilities.

    Per row, in this order: ``(x - max) / temperature`` in float32, ``top_k``, ``top_p``,
    ``min_p``, then ``num_samples`` draws. ``-inf`` logits are never chosen; ``+inf`` logits
    share the row uniformly.

    Parameters
    ----------
    logits : torch.Tensor
        ``(..., V)`` float16 / bfloat16 / float32 / float64 logits, any device.
    num_samples : int, default 1
        Draws per row.
    temperature : float or torch.Tensor, default 1.0
        Scalar or per-row; ``0`` means greedy (argmax, lowest index on ties). Negative or NaN is an error.
    top_k : int or torch.Tensor, optional
        Keep entries ``>=`` the k-th largest; ``0`` or ``>= V`` is off.
    top_p : float or torch.Tensor, optional
        In (0, 1]: keep entries whose strictly-more-probable mass is ``< top_p``; 1 is off.
    min_p : float or torch.Tensor, optional
        In [0, 1]: keep entries with ``p >= min_p * p_max``; 0 is off.
    replacement : bool, default True
        Without replacement, the draws follow drawing one at a time and removing it.
    generator : torch.Generator, optional
        Source of the call's seed (any device); default: the device's default generator.
    seed : int or torch.Tensor, optional
        An int keys one stream for the call (rows draw distinct sub-streams by index); an
        int64 tensor of one seed per row keys each row by its own seed (batch invariant).
    offset : int or torch.Tensor, default 0
        Counter offset, e.g. the decoding step; an int or one per row.
    return_logprobs : bool, default False
        Also return the float32 log-probability of each token under the distribution sampled from.
    validate : bool, default True
        Check rows on the host and raise for NaN rows or rows with nothing left. With False,
        nothing synchronises with the device and such rows return ``-1`` (log-probability NaN).

    Returns
    -------
    torch.Tensor or (torch.Tensor, torch.Tensor)
        int64 token ids ``(..., num_samples)``, and their log-probabilities when asked.

    Raises
    ------
    StableSoftmaxError
        For bad parameters, and (with ``validate``) rows holding NaN or with nothing to
        sample, naming the rows, the counts of NaN / +inf / -inf, the likely cause and the fix.
    """
    if torch.compiler.is_compiling():
        from . import _compiled

        return _compiled.sample_from_logits(
            logits, num_samples, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
            replacement=replacement, generator=generator, seed=seed, offset=offset,
            return_logprobs=return_logprobs, validate=validate,
        )  # fmt: skip
    op = "sample_from_logits"
    _check_tensor(logits, op, "logits")
    # Python ints / floats / bools (the decoding loop's arguments) are checked inline, anything else by the helpers
    if num_samples.__class__ is not int or num_samples < 1:
        num_samples = _check_num_samples(num_samples, op)
    if replacement.__class__ is not bool:
        _check_bool(replacement, f"{op}(): replacement")
    if return_logprobs.__class__ is not bool:
        _check_bool(return_logprobs, f"{op}(): return_logprobs")
    if validate.__class__ is not bool:
        _check_bool(validate, f"{op}(): validate")
    if generator is not None:
        _check_generator(generator, op)
    if temperature.__class__ is not float:
        temperature = _real_param(temperature, "temperature")
    if top_p is not None and top_p.__class__ is not float:
        top_p = _real_param(top_p, "top_p")
    if min_p is not None and min_p.__class__ is not float:
        min_p = _real_param(min_p, "min_p")
    if isinstance(top_k, torch.Tensor):
        _check_param_tensor(top_k, "top_k", integer=True)
    elif top_k is not None:
        if top_k.__class__ is not int:
            top_k = _as_int(top_k, "top_k")
        if top_k < 0:
            raise StableSoftmaxError(f"top_k must be a non-negative int or an int tensor, got {top_k!r}")
    shape = logits.shape
    if len(shape) == 0 or shape[-1] == 0:
        raise StableSoftmaxError(f"{op}(): logits must have shape (..., V) with V >= 1, got {tuple(shape)}")
    vocab = shape[-1]
    if not replacement and num_samples > vocab:
        raise StableSoftmaxError(
            f"{op}(): cannot draw {num_samples} samples without replacement from {vocab} categories"
        )
    batch = shape[:-1]
    rows = batch[0] if len(batch) == 1 else math.prod(batch)
    device = logits.device
    if rows == 0 or device.type == "meta":  # nothing to draw, or no data to draw from: shapes only
        empty = torch.empty((*batch, num_samples), dtype=torch.int64, device=device)
        return (empty, empty.float()) if return_logprobs else empty
    x = logits if len(shape) == 2 else logits.reshape(rows, vocab)
    if x.stride(1) != 1:
        x = x.contiguous()

    temp, k_tensor, k_max, p_tensor, minp_tensor = _filter_params(
        temperature, top_k, top_p, min_p, rows, batch, device, vocab, validate
    )
    keys, row_ids, offsets = _random_stream(seed, offset, generator, rows, batch, device)

    tokens = torch.empty((rows, num_samples), dtype=torch.int64, device=device)
    logprobs = torch.empty((rows, num_samples), dtype=torch.float32, device=device) if return_logprobs else None
    sampling_kernels_for(x).sample_rows(
        x, temp, k_tensor, p_tensor, minp_tensor, keys, row_ids, offsets, num_samples,
        _draw_with_replacement(num_samples, replacement),
        tokens, logprobs, top_k_max=k_max,
    )  # fmt: skip
    if validate:
        has_filters = any(t is not None for t in (k_tensor, p_tensor, minp_tensor))
        _raise_for_bad_rows(x, tokens, num_samples, replacement, has_filters)
    if len(shape) != 2:
        tokens = tokens.view(*batch, num_samples)
        if logprobs is not None:
            logprobs = logprobs.view(*batch, num_samples)
    if logprobs is not None:
        return tokens, logprobs
    return tokens


def _describe_entries(row: torch.Tensor, r: int) -> str:
    """Counts of the invalid entries of one probability row, and the first of them."""
    nan = int(torch.isnan(row).sum())
    inf = int(torch.isinf(row).sum())
    neg = int((row < 0).sum())
    first = int((~torch.isfinite(row) | (row < 0)).nonzero()[0, 0])
    where = f"first at [{r}, {first}] = {row[first].item()}"
    return f"row {r}: {nan} NaN, {inf} inf, {neg} negative of {row.numel()}, {where}"


def _raise_for_bad_probs(p: torch.Tensor, tokens: torch.Tensor, num_samples: int) -> None:
    """Turn the kernels' -1 into the SPEC's error; reads only the rows that failed."""
    op = "multinomial"
    bad_rows = (tokens < 0).any(dim=1).nonzero().flatten().tolist()
    sub = p[bad_rows]
    invalid = (~torch.isfinite(sub) | (sub < 0)).any(dim=1).nonzero().flatten().tolist()  # positions in sub
    if invalid:
        invalid_rows = [bad_rows[i] for i in invalid]
        shown = invalid_rows[:_SHOWN_ROWS]
        rows_part = sub[invalid[:_SHOWN_ROWS]]
        kinds = [
            kind
            for kind, hit in (
                ("NaN", torch.isnan(rows_part).any()),
                ("inf", torch.isinf(rows_part).any()),
                ("negative", (rows_part < 0).any()),
            )
            if bool(hit)
        ]
        details = "; ".join(_describe_entries(rows_part[i], r) for i, r in enumerate(shown))
        hints = []
        if bool((torch.isnan(rows_part) | (rows_part == math.inf)).any()):
            hints.append(_OVERFLOW_HINT)
        if bool((rows_part < 0).any()):
            hints.append(
                "Negative entries mean the input is not probabilities (logits or log-probabilities?): "
                "pass softmax(logits) or exp(logprobs), or sample the logits with sample_from_logits."
            )
        more = ", ..." if len(invalid_rows) > _SHOWN_ROWS else ""
        raise StableSoftmaxError(
            f"{op}(): probability tensor contains {' and '.join(kinds)} entries in {len(invalid_rows)} of "
            f"{p.shape[0]} rows ({_rows_word(shown)} {', '.join(map(str, shown))}{more}). {details}. " + " ".join(hints)
        )
    positive = (sub > 0).sum(dim=1).tolist()
    zero_rows = [r for r, n in zip(bad_rows, positive) if n == 0]
    if zero_rows:
        raise _rows_error(op, p, zero_rows, "sum to zero, nothing to draw", _EMPTY_HINT)
    r0 = bad_rows[0]
    shown = bad_rows[:_SHOWN_ROWS]
    verb = "has" if len(bad_rows) == 1 else "have"
    raise StableSoftmaxError(
        f"{op}(): {_rows_word(bad_rows)} {', '.join(map(str, shown))}{', ...' if len(bad_rows) > len(shown) else ''} "
        f"{verb} fewer non-zero entries (row {r0}: {positive[0]}) than num_samples={num_samples} without replacement "
        "(torch would return zero-probability entries). Fix: replacement=True or fewer samples."
    )


def _rows_word(rows: list[int]) -> str:
    return "row" if len(rows) == 1 else "rows"


def multinomial(
    input: torch.Tensor,
    num_samples: int,
    replacement: bool = False,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw category indices from rows of probabilities, a drop-in for :func:`torch.multinomial`.

    Rows need not sum to 1; they are accumulated in float32 (float64 for float64) whatever
    the input dtype, zero-probability entries are never returned, and there is no limit on
    the number of categories.

    Parameters
    ----------
    input : torch.Tensor
        ``(V,)`` or ``(rows, V)`` non-negative, finite weights, any float dtype and device.
    num_samples : int
        Draws per row.
    replacement : bool, default False
        Without replacement, each row needs at least ``num_samples`` non-zero entries.
    generator : torch.Generator, optional
        Source of randomness (any device); default: the device's default generator.

    Returns
    -------
    torch.Tensor
        int64 indices, ``(num_samples,)`` or ``(rows, num_samples)``.

    Raises
    ------
    StableSoftmaxError
        Naming row and column of a NaN, infinite or negative entry (with the likely cause
        and the fix), a row that sums to zero, or too many samples without replacement.

    Notes
    -----
    Inside a CUDA-graph capture nothing is checked on the host (no device sync; the graph
    can be captured): the draws of a bad row are ``-1`` instead of the error.
    """
    if torch.compiler.is_compiling():
        from . import _compiled

        return _compiled.multinomial(input, num_samples, replacement, generator=generator)
    op = "multinomial"
    _check_tensor(input, op, "input")
    num_samples = _check_num_samples(num_samples, op)
    _check_bool(replacement, f"{op}(): replacement")
    _check_generator(generator, op)
    if input.ndim not in (1, 2):
        raise StableSoftmaxError(f"{op}(): input must be 1-D or 2-D, got shape {tuple(input.shape)}")
    p = input if input.ndim == 2 else input.unsqueeze(0)
    rows = p.shape[0]
    if not replacement and num_samples > p.shape[1]:
        raise StableSoftmaxError(
            f"{op}(): cannot draw {num_samples} samples without replacement from {p.shape[1]} categories"
        )
    if rows == 0 or p.device.type == "meta":  # as torch: no rows give no draws; a meta tensor gives the shape
        tokens = torch.empty((rows, num_samples), dtype=torch.int64, device=p.device)
        return tokens if input.ndim == 2 else tokens.view(num_samples)
    if p.shape[1] == 0:
        raise StableSoftmaxError(f"{op}(): input has no categories (shape {tuple(input.shape)}): nothing to draw")
    if p.stride(1) != 1:
        p = p.contiguous()
    keys, row_ids, offsets = _random_stream(None, 0, generator, rows, torch.Size([rows]), p.device)
    tokens = torch.empty((rows, num_samples), dtype=torch.int64, device=p.device)
    with_replacement = _draw_with_replacement(num_samples, replacement)
    sampling_kernels_for(p).sample_probs(p, keys, row_ids, offsets, num_samples, with_replacement, tokens)
    # The one validation pass was fused into the kernel; reading its verdict syncs with the device, which a
    # CUDA-graph capture cannot do: there (as sample_from_logits(validate=False)) a bad row's draws are -1.
    if not _capturing(p.device) and int(tokens.min()) < 0:
        _raise_for_bad_probs(p, tokens, num_samples)
    return tokens if input.ndim == 2 else tokens.view(num_samples)

"""warmup: run every kernel specialisation a serving engine's batch sizes need, before a CUDA-graph capture.

Triton compiles a kernel the first time it meets a new specialisation, and compiling (module loading) is not
allowed while a CUDA graph is being captured. A specialisation depends on more than the dtype: an int argument
equal to 1 becomes a constant, ints and pointers divisible by 16 get alignment hints, and the launch plans
(rows per program, the split of long rows across programs) change with the number of rows. A capture of batch
size 1, 2, 4, ..., 512 can so need about twenty specialisations of one call. :func:`warmup` makes the calls the
engine will make, at each batch size, on random data, so that every one of them is compiled and cached.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from ._errors import StableSoftmaxError
from ._sampling import multinomial, sample_from_logits
from ._softmax import log_softmax, softmax

__all__ = ["warmup"]

_SAMPLING_KEYS = ("temperature", "top_k", "top_p", "min_p", "replacement", "return_logprobs")


def _rows_of(value: Any, rows: int) -> Any:
    """A per-row tensor parameter as ``rows`` copies of its first value (kernels see the same dtype and layout)."""
    if isinstance(value, torch.Tensor):
        return value.reshape(-1)[:1].expand(rows).contiguous()
    return value


def warmup(
    vocab: int,
    batch_sizes: Iterable[int],
    *,
    device: torch.device | str,
    dtype: torch.dtype = torch.float16,
    num_samples: int = 1,
    sampling: dict[str, Any] | None = None,
    softmax_ops: bool = True,
    probabilities: bool = False,
) -> int:
    """Compile ahead of time what later calls at these batch sizes will launch (for CUDA-graph capture).

    Runs, for each batch size ``b``, on random ``(b, vocab)`` logits of ``dtype`` on ``device``:
    ``sample_from_logits(..., num_samples, validate=False, seed=..., **sampling)``; with ``softmax_ops``,
    :func:`softmax` and :func:`log_softmax` along the last dimension (to ``dtype``); with ``probabilities``,
    :func:`multinomial` of float32 probabilities. Then synchronises the device. Capture the graphs after it.

    Parameters
    ----------
    vocab : int
        Row length (the vocabulary size), >= 1.
    batch_sizes : iterable of int
        Every batch size the engine will capture or run (each >= 1).
    device : torch.device or str
        Where the engine runs.
    dtype : torch.dtype, default torch.float16
        The logits' dtype.
    num_samples : int, default 1
        Samples per row, as the engine asks.
    sampling : dict, optional
        The engine's ``sample_from_logits`` filter arguments (``temperature``, ``top_k``, ``top_p``, ``min_p``,
        ``replacement``, ``return_logprobs``): which are given, not their values, decides the kernels; a per-row
        tensor is resized to each batch size.
    softmax_ops : bool, default True
        Also warm up ``softmax`` and ``log_softmax``.
    probabilities : bool, default False
        Also warm up ``multinomial``.

    Returns
    -------
    int
        How many calls were made.

    Notes
    -----
    The calls use contiguous logits: a capture on a strided view (e.g. ``logits[:, -1]``) whose row stride is
    divisible by 16 where ``vocab`` is not can still meet a new specialisation; warm such a call up by making
    it once outside the capture.
    """
    sampling = dict(sampling or {})
    unknown = sorted(set(sampling) - set(_SAMPLING_KEYS))
    if unknown:
        raise StableSoftmaxError(f"warmup(): unknown sampling argument(s) {unknown}; expected some of {_SAMPLING_KEYS}")
    if not isinstance(vocab, int) or vocab < 1:
        raise StableSoftmaxError(f"warmup(): vocab must be an int >= 1, got {vocab!r}")
    sizes = sorted(set(batch_sizes))
    if not sizes or any(not isinstance(b, int) or b < 1 for b in sizes):
        raise StableSoftmaxError(f"warmup(): batch_sizes must be ints >= 1, got {sizes!r}")
    device = torch.device(device)
    gen = torch.Generator(device="cpu").manual_seed(0)
    calls = 0
    for rows in sizes:
        logits = torch.randn(rows, vocab, generator=gen).to(device=device, dtype=dtype)
        params = {key: _rows_of(value, rows) for key, value in sampling.items()}
        seeds = torch.arange(rows, dtype=torch.int64, device=device)
        sample_from_logits(logits, num_samples, seed=seeds, validate=False, **params)
        calls += 1
        if softmax_ops:
            softmax(logits, -1)
            log_softmax(logits, -1)
            calls += 2
        if probabilities:
            multinomial(softmax(logits, -1, dtype=torch.float32), num_samples, params.get("replacement", True))
            calls += 1
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return calls

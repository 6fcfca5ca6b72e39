"""Thin adapter from tensors to the C++ extension's fused sampling kernels (``stablesoftmax._C``).

Same algorithm and random numbers as :mod:`.torch_sampling` (see its docstring); the kernels
read the logits (or probabilities) once or twice and never materialise a row's probabilities.
"""

from __future__ import annotations

import torch

from .. import _C

__all__ = ["sample_probs", "sample_rows"]

_DTYPE_CODES = {torch.float16: 0, torch.bfloat16: 1, torch.float32: 2, torch.float64: 3}


def _param(t: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """A per-row parameter as a contiguous CPU tensor of ``dtype`` (None stays None)."""
    if t is None or (t.dtype == dtype and t.is_contiguous()):
        return t
    return t.to(dtype=dtype).contiguous()


def _ptr(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()


def _output(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself when the kernels can write it in place (unit column stride), else a scratch copy."""
    return t if t.stride(1) == 1 or t.shape[1] <= 1 else torch.empty(t.shape, dtype=t.dtype)


def _input(x: torch.Tensor) -> torch.Tensor:
    if x.dtype not in _DTYPE_CODES:
        x = x.float()
    return x if x.stride(1) == 1 or x.shape[1] <= 1 else x.contiguous()


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
    """Sample ``tokens`` (rows, n) int64 from logits (rows, V); see ``torch_sampling.sample_rows``.

    ``top_k_max`` is accepted for interface parity; the kernels select the top-k without a sort anyway.
    """
    del top_k_max
    x = _input(logits)
    rows, cols = x.shape
    params = (
        _param(temperature, torch.float32), _param(top_k, torch.int64), _param(top_p, torch.float32),
        _param(min_p, torch.float32), _param(seed, torch.int64), _param(row_id, torch.int64),
        _param(offset, torch.int64),
    )  # fmt: skip
    tok = _output(tokens)
    lp = None if logprobs is None else _output(logprobs)
    _C.sample_rows(
        x.data_ptr(), rows, cols, x.stride(0), _DTYPE_CODES[x.dtype], *(_ptr(p) for p in params),
        num_samples, bool(replacement), tok.data_ptr(), tok.stride(0),
        _ptr(lp), 0 if lp is None else lp.stride(0), torch.get_num_threads(),
    )  # fmt: skip
    if tok is not tokens:
        tokens.copy_(tok)
    if lp is not None and logprobs is not None and lp is not logprobs:
        logprobs.copy_(lp)


def sample_probs(
    probs: torch.Tensor,
    seed: torch.Tensor,
    row_id: torch.Tensor,
    offset: torch.Tensor,
    num_samples: int,
    replacement: bool,
    tokens: torch.Tensor,
) -> None:
    """Draw from rows of weights into ``tokens``; invalid or empty rows get ``-1`` (see ``torch_sampling``)."""
    p = _input(probs)
    rows, cols = p.shape
    keys, ids, offs = (_param(t, torch.int64) for t in (seed, row_id, offset))
    tok = _output(tokens)
    _C.sample_probs(
        p.data_ptr(), rows, cols, p.stride(0), _DTYPE_CODES[p.dtype], _ptr(keys), _ptr(ids), _ptr(offs),
        num_samples, bool(replacement), tok.data_ptr(), tok.stride(0), torch.get_num_threads(),
    )  # fmt: skip
    if tok is not tokens:
        tokens.copy_(tok)

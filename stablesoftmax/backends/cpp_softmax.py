"""Thin adapter from tensors to the C++ extension's raw-pointer kernels (``stablesoftmax._C``).

The kernels take any strides (sizes and strides in elements) and reduce along ``dim`` inside
the extension: no transposed copies with torch ops. The extension runs its threads on torch's own
OpenMP team (no second set of threads competing with torch's for the cores), and in a forked child,
where that team is gone, on a pool of its own (``_C.thread_runtime()`` says which).
"""

from __future__ import annotations

import torch

from .. import _C

__all__ = [
    "STRIDED",
    "isa",
    "pool_workers",
    "softmax_backward",
    "softmax_backward_strided",
    "softmax_forward",
    "softmax_forward_strided",
]

#: The strided entry points below take tensors of any layout and a dimension.
STRIDED = True

_DTYPE_CODES = {torch.float16: 0, torch.bfloat16: 1, torch.float32: 2, torch.float64: 3}


def isa() -> str:
    """The instruction set the extension's kernels use on this CPU (``"avx2"`` or ``"scalar"``)."""
    return str(_C.cpu_features()["isa"])


def pool_workers() -> int:
    """Worker threads the extension's pool holds now (it follows ``torch.get_num_threads()``)."""
    return int(_C.pool_workers())


def softmax_forward_strided(x: torch.Tensor, out: torch.Tensor, dim: int, log: bool) -> None:
    """Softmax (or log_softmax) of ``x`` along ``dim`` into ``out`` (same shape, any strides)."""
    _C.softmax_forward(
        x.data_ptr(), out.data_ptr(), list(x.shape), list(x.stride()), list(out.stride()), dim,
        _DTYPE_CODES[x.dtype], _DTYPE_CODES[out.dtype], log, torch.get_num_threads(),
    )  # fmt: skip


def softmax_backward_strided(y: torch.Tensor, grad: torch.Tensor, out: torch.Tensor, dim: int, log: bool) -> None:
    """Gradient wrt the input along ``dim``, from the forward output ``y`` and the upstream ``grad``."""
    _C.softmax_backward(
        y.data_ptr(), grad.data_ptr(), out.data_ptr(), list(y.shape), list(y.stride()), list(grad.stride()),
        list(out.stride()), dim, _DTYPE_CODES[y.dtype], _DTYPE_CODES[grad.dtype], _DTYPE_CODES[out.dtype], log,
        torch.get_num_threads(),
    )  # fmt: skip


def softmax_forward(x: torch.Tensor, out: torch.Tensor, log: bool) -> None:
    """Softmax (or log_softmax) of each row of 2-D ``x`` into ``out``."""
    softmax_forward_strided(x, out, 1, log)


def softmax_backward(y: torch.Tensor, grad: torch.Tensor, out: torch.Tensor, log: bool) -> None:
    """Gradient wrt the input of each row of 2-D tensors."""
    softmax_backward_strided(y, grad, out, 1, log)

"""Thin adapter from tensors to the C++ extension's raw-pointer kernels (``stablesoftmax._C``)."""

from __future__ import annotations

import torch

from .. import _C

__all__ = ["isa", "softmax_backward", "softmax_forward"]

_DTYPE_CODES = {torch.float16: 0, torch.bfloat16: 1, torch.float32: 2, torch.float64: 3}


def isa() -> str:
    """The instruction set the extension's kernels use on this CPU (``"avx2"`` or ``"scalar"``)."""
    return str(_C.cpu_features()["isa"])


def softmax_forward(x: torch.Tensor, out: torch.Tensor, log: bool) -> None:
    """Softmax (or log_softmax) of each row of 2-D ``x`` (unit column stride) into ``out``."""
    rows, cols = x.shape
    _C.softmax_forward(
        x.data_ptr(), out.data_ptr(), rows, cols, x.stride(0), out.stride(0),
        _DTYPE_CODES[x.dtype], _DTYPE_CODES[out.dtype], log, torch.get_num_threads(),
    )  # fmt: skip


def softmax_backward(y: torch.Tensor, grad: torch.Tensor, out: torch.Tensor, log: bool) -> None:
    """Gradient wrt the input, from the forward output ``y`` and the upstream ``grad``."""
    rows, cols = y.shape
    _C.softmax_backward(
        y.data_ptr(), grad.data_ptr(), out.data_ptr(), rows, cols, y.stride(0), grad.stride(0), out.stride(0),
        _DTYPE_CODES[y.dtype], _DTYPE_CODES[grad.dtype], _DTYPE_CODES[out.dtype], log, torch.get_num_threads(),
    )  # fmt: skip

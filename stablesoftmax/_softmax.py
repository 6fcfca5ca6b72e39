"""softmax and log_softmax: the SPEC's rules, decided once, in front of the backend dispatch.

This layer validates arguments, decides dtypes (output: the input's or ``dtype``;
accumulation: float32, float64 when either side is float64) and the output layout (torch's:
contiguous), and hands the tensors to the backend chosen by :mod:`stablesoftmax._dispatch`:
the C++ backend takes any strides and a dimension; the others take 2-D ``(rows, cols)`` views
with the reduced dimension last and unit stride. The kernels implement one definition of the op, the shift
rule documented in :mod:`stablesoftmax.backends.torch_softmax`, which yields the SPEC's
non-finite table: ``-inf`` masks stay masked, ``+inf`` entries share the mass, NaN rows
stay NaN.
"""

from __future__ import annotations

import operator
from typing import Any

import torch

from ._dispatch import kernels_for
from ._errors import StableSoftmaxError, UnsupportedError

__all__ = ["log_softmax", "softmax"]

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_PYTHON_DTYPES = {float: torch.float64, int: torch.int64, bool: torch.bool, complex: torch.complex128}


def _output_dtype(input: torch.Tensor, dtype: torch.dtype | None, op: str) -> torch.dtype:
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"{op}(): input must be a torch.Tensor, not {type(input).__name__}")
    dtype = _PYTHON_DTYPES.get(dtype, dtype) if isinstance(dtype, type) else dtype  # dtype=float, as torch
    if dtype is not None and not isinstance(dtype, torch.dtype):
        raise TypeError(f"{op}(): dtype must be a torch.dtype or None, not {type(dtype).__name__}")
    if input.is_nested or input.layout != torch.strided:
        kind = "a nested" if input.is_nested else f"a {input.layout} (sparse)"
        raise UnsupportedError(
            f"{op}(): input is {kind} tensor; only dense (strided) tensors are supported: use torch.{op} for it, "
            "or pass a dense tensor (t.to_dense(), t.to_padded_tensor(float('-inf'))) or one component at a time"
        )
    if input.is_complex():
        raise UnsupportedError(f"{op}(): complex input ({input.dtype}) is not supported; take .real or .abs() first")
    if dtype is None and input.dtype not in FLOAT_DTYPES:
        raise UnsupportedError(
            f"{op}(): input dtype {input.dtype} is not supported; pass dtype=torch.float32 to convert it"
        )
    out_dtype = input.dtype if dtype is None else dtype
    if out_dtype not in FLOAT_DTYPES:
        raise UnsupportedError(
            f"{op}(): output dtype {out_dtype} is not supported; use float16, bfloat16, float32 or float64"
        )
    return out_dtype


def _normalize_dim(dim: int | None, ndim: int, op: str) -> int:
    if dim is None:
        raise StableSoftmaxError(f"{op}(): dim must be given (an int); implicit dim choice is deprecated in torch")
    if isinstance(dim, bool) or (type(dim).__module__ == "numpy" and type(dim).__name__ in ("bool", "bool_")):
        raise TypeError(f"{op}(): dim must be an int, not {type(dim).__name__}")
    try:
        dim = operator.index(dim)  # int, NumPy integer, 0-dim integer tensor: as torch
    except TypeError:
        raise TypeError(f"{op}(): dim must be an int, not {type(dim).__name__}") from None
    rank = max(ndim, 1)
    if not -rank <= dim < rank:
        raise IndexError(f"{op}(): dim {dim} is out of range for a tensor of {ndim} dimensions")
    return dim % rank


def _as_rows(x: torch.Tensor, dim: int) -> torch.Tensor:
    """A 2-D ``(rows, cols)`` view (or copy) of ``x`` with dimension ``dim`` last and unit stride
    (for backends that take rows; the C++ one takes any strides)."""
    if x.ndim == 2 and dim == 1 and (x.stride(1) == 1 or x.shape[1] <= 1):  # the common call: x itself
        return x
    if x.ndim == 0:
        return x.reshape(1, 1)
    moved = x.movedim(dim, -1)
    rows2d = moved.reshape(-1, moved.shape[-1])
    return rows2d if rows2d.stride(1) == 1 or rows2d.shape[1] <= 1 else rows2d.contiguous()


def _at_least_1d(t: torch.Tensor) -> torch.Tensor:
    return t.view(1) if t.ndim == 0 else t


def _forward(input: torch.Tensor, dim: int, out_dtype: torch.dtype, log: bool) -> torch.Tensor:
    if input.dtype not in FLOAT_DTYPES:  # integer / bool input with an explicit float dtype, as torch
        input = input.to(out_dtype)
    # torch's layout for the result: contiguous, whatever the input's (channels_last included)
    # (empty_like: a third of the cost of torch.empty(shape, dtype=, device=) on a small tensor)
    out = torch.empty_like(input, dtype=out_dtype, memory_format=torch.contiguous_format)
    if input.numel() == 0:
        return out
    kernels = kernels_for(input)
    if getattr(kernels, "STRIDED", False):  # reduces along any dim of any layout in the kernel
        kernels.softmax_forward_strided(_at_least_1d(input), _at_least_1d(out), dim, log)
        return out
    x = _as_rows(input, dim)
    if dim == input.ndim - 1 or input.ndim == 0:
        kernels.softmax_forward(x, out.view(x.shape), log)
        return out
    rows = torch.empty(x.shape, dtype=out_dtype, device=input.device)
    kernels.softmax_forward(x, rows, log)
    out.movedim(dim, -1).copy_(rows.view(input.movedim(dim, -1).shape))
    return out


def _backward(y: torch.Tensor, grad: torch.Tensor, dim: int, grad_dtype: torch.dtype, log: bool) -> torch.Tensor:
    dim %= max(y.ndim, 1)  # the backward op takes torch's dims (``_softmax_backward_data(..., dim=-1)``)
    kernels = kernels_for(y)
    out = torch.empty_like(y, dtype=grad_dtype, memory_format=torch.contiguous_format)  # as torch's gradient
    if getattr(kernels, "STRIDED", False):
        kernels.softmax_backward_strided(_at_least_1d(y), _at_least_1d(grad), _at_least_1d(out), dim, log)
        return out
    y2, g2 = _as_rows(y, dim), _as_rows(grad, dim)
    if dim == y.ndim - 1 or y.ndim == 0:
        kernels.softmax_backward(y2, g2, out.view(y2.shape), log)
        return out
    rows = torch.empty(y2.shape, dtype=grad_dtype, device=y.device)
    kernels.softmax_backward(y2, g2, rows, log)
    out.movedim(dim, -1).copy_(rows.view(y.movedim(dim, -1).shape))
    return out


def _double_backward(
    y: torch.Tensor, grad: torch.Tensor, v: torch.Tensor, dim: int, log: bool, needs: tuple[bool, ...] = (True, True)
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Gradients of the backward map ``(y, g) -> dx`` wrt ``y`` and ``g``, given the upstream ``v`` (shaped as dx).

    softmax: ``dx = y * (g - sum(g * y))``, so ``dL/dg = y * (v - sum(v * y))`` and
    ``dL/dy = v * (g - sum(g * y)) - g * sum(v * y)``.
    log_softmax: ``dx = g - exp(y) * sum(g)``, so ``dL/dg = v - sum(v * exp(y))`` and
    ``dL/dy = -v * exp(y) * sum(g)``.

    Differentiable torch ops in float32 (float64 when any side is float64), each result in the
    dtype of the tensor it is the gradient of: autograd goes on to any order through them, and
    ``dL/dy`` reaches the input through the forward's own backward. ``-inf`` entries of a
    log_softmax output contribute ``exp(-inf) = 0``: masked rows stay 0, never NaN.
    """
    acc = torch.float64 if torch.float64 in (y.dtype, grad.dtype, v.dtype) else torch.float32
    yf, gf, vf = y.to(acc), grad.to(acc), v.to(acc)
    d_y = d_g = None
    if log:
        p = yf.exp()
        if needs[0]:
            d_y = (-(vf * p) * gf.sum(dim, keepdim=True)).to(y.dtype)
        if needs[1]:
            d_g = (vf - (vf * p).sum(dim, keepdim=True)).to(grad.dtype)
    else:
        vy = (vf * yf).sum(dim, keepdim=True)
        if needs[0]:
            d_y = (vf * (gf - (gf * yf).sum(dim, keepdim=True)) - gf * vy).to(y.dtype)
        if needs[1]:
            d_g = (yf * (vf - vy)).to(grad.dtype)
    return d_y, d_g


def _gradient(y: torch.Tensor, grad: torch.Tensor, dim: int, grad_dtype: torch.dtype, log: bool) -> torch.Tensor:
    """The backward kernel, also for empty tensors (no kernel call)."""
    if y.numel() == 0:
        return torch.zeros(y.shape, dtype=grad_dtype, device=y.device)
    return _backward(y, grad, dim, grad_dtype, log)


class _SoftmaxBackwardFunction(torch.autograd.Function):
    """The backward kernel as a differentiable function of the forward output and the upstream gradient."""

    @staticmethod
    def forward(
        ctx: Any, y: torch.Tensor, grad: torch.Tensor, dim: int, grad_dtype: torch.dtype, log: bool
    ) -> torch.Tensor:
        ctx.save_for_backward(y, grad)
        ctx.dim, ctx.log = dim, log
        return _gradient(y, grad, dim, grad_dtype, log)

    @staticmethod
    def backward(ctx: Any, v: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        y, grad = ctx.saved_tensors
        d_y, d_g = _double_backward(y, grad, v, ctx.dim, ctx.log, ctx.needs_input_grad[:2])
        return d_y, d_g, None, None, None


class _SoftmaxFunction(torch.autograd.Function):
    """Autograd for both ops: backward in float32 (float64), gradient in the input's dtype, to any order.

    The backward is itself a differentiable function (:class:`_SoftmaxBackwardFunction`) of the
    saved output, so ``create_graph=True`` records it and higher derivatives are exact.
    """

    @staticmethod
    def forward(ctx: Any, input: torch.Tensor, dim: int, out_dtype: torch.dtype, log: bool) -> torch.Tensor:
        out = _forward(input, dim, out_dtype, log)
        ctx.save_for_backward(out)
        ctx.dim, ctx.log, ctx.input_dtype = dim, log, input.dtype
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None]:
        (out,) = ctx.saved_tensors
        return _SoftmaxBackwardFunction.apply(out, grad, ctx.dim, ctx.input_dtype, ctx.log), None, None, None


def _apply(input: torch.Tensor, dim: int | None, dtype: torch.dtype | None, log: bool) -> torch.Tensor:
    op = "log_softmax" if log else "softmax"
    out_dtype = _output_dtype(input, dtype, op)
    d = _normalize_dim(dim, input.ndim, op)
    if input.requires_grad and torch.is_grad_enabled():
        return _SoftmaxFunction.apply(input, d, out_dtype, log)
    return _forward(input, d, out_dtype, log)


def softmax(input: torch.Tensor, dim: int | None = -1, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Numerically stable softmax along ``dim``, a drop-in for :func:`torch.softmax`.

    Computes in float32 (float64 for float64 input or output) after subtracting the row
    maximum. Non-finite rows get the limits of softmax instead of NaN: ``-inf`` entries give
    0, a row of only ``-inf`` gives all zeros, ``k`` entries of ``+inf`` give ``1/k`` each;
    a row holding NaN stays NaN.

    Parameters
    ----------
    input : torch.Tensor
        Floating-point tensor of any rank, shape, strides and device (float16, bfloat16,
        float32, float64; other dtypes need ``dtype``).
    dim : int, default -1
        The dimension along which the result sums to 1.
    dtype : torch.dtype, optional
        Output dtype; by default the input's. The input is read at full precision.

    Returns
    -------
    torch.Tensor
        Same shape as ``input``, dtype ``dtype`` or the input's, on the input's device.

    Raises
    ------
    StableSoftmaxError
        For an unsupported dtype, or an explicitly chosen backend that cannot run here.
    """
    if torch.compiler.is_compiling():
        from . import _compiled

        return _compiled.softmax(input, dim, dtype)
    return _apply(input, dim, dtype, log=False)


def log_softmax(input: torch.Tensor, dim: int | None = -1, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Numerically stable log-softmax along ``dim``, a drop-in for :func:`torch.log_softmax`.

    Same rules as :func:`softmax`: ``-inf`` entries stay ``-inf``, a fully masked row is all
    ``-inf``, ``k`` entries of ``+inf`` give ``-log k`` each (``-inf`` elsewhere), NaN rows stay NaN.

    Parameters
    ----------
    input : torch.Tensor
        Floating-point tensor of any rank, shape, strides and device.
    dim : int, default -1
        The dimension to normalise over.
    dtype : torch.dtype, optional
        Output dtype; by default the input's.

    Returns
    -------
    torch.Tensor
        Same shape as ``input``.
    """
    if torch.compiler.is_compiling():
        from . import _compiled

        return _compiled.log_softmax(input, dim, dtype)
    return _apply(input, dim, dtype, log=True)

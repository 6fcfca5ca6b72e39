"""Autograd of softmax / log_softmax to any order, on every backend, eagerly, patched and as custom ops.

The backward is itself differentiable (no ``once_differentiable``): ``gradcheck`` and
``gradgradcheck`` in float64 on losses with a second path to the input (``softmax(x) * x``, where
dropping the Hessian term shows as a Jacobian mismatch), several dims, ``dtype=``, and ``-inf``
masks (gradients exactly 0 there, never NaN). Third derivatives are compared with torch's own op.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import INTERPRETED
from torch.autograd import gradcheck, gradgradcheck

import stablesoftmax as ss
from stablesoftmax import _compiled

INF = math.inf
OPS = {
    "softmax": (ss.softmax, torch.softmax, False),
    "log_softmax": (ss.log_softmax, torch.log_softmax, True),
}
CUSTOM_OPS = {"softmax": _compiled.softmax, "log_softmax": _compiled.log_softmax}


def _small(backend: str) -> bool:
    return backend == "triton" and INTERPRETED  # each interpreted launch is slow: tiny shapes, few dims


def _cases(backend: str) -> list[tuple[tuple[int, ...], int]]:
    if _small(backend):
        return [((2, 3), 1), ((3, 2), 0)]
    return [((3, 5, 4), 0), ((3, 5, 4), 1), ((3, 5, 4), -1), ((6, 7), -1), ((7,), 0)]


def _x(shape, gen, dtype=torch.float64):
    return (torch.randn(shape, generator=gen, dtype=torch.float64) * 2).to(dtype).requires_grad_(True)


def _derivatives(fn, x: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """First, second and third derivatives of sum(w * fn(x) * x) along fixed directions."""
    (g1,) = torch.autograd.grad((fn(x) * x * w).sum(), x, create_graph=True)
    (g2,) = torch.autograd.grad((g1 * g1).sum(), x, create_graph=True)
    (g3,) = torch.autograd.grad((g2 * w).sum(), x)
    return g1, g2, g3


@pytest.mark.parametrize("name", list(OPS))
def test_gradcheck_and_gradgradcheck_every_backend(name, backend, gen):
    op, _, _ = OPS[name]
    for shape, dim in _cases(backend):
        x = _x(shape, gen)
        assert gradcheck(lambda t, dim=dim: op(t, dim) * t, (x,))
        assert gradgradcheck(lambda t, dim=dim: op(t, dim) * t, (x,))


@pytest.mark.parametrize("name", list(OPS))
def test_third_derivative_matches_torch(name, backend, gen):
    op, torch_op, _ = OPS[name]
    shape, dim = _cases(backend)[0]
    x = _x(shape, gen)
    w = torch.randn(shape, generator=gen, dtype=torch.float64)
    got = _derivatives(lambda t: op(t, dim), x, w)
    expected = _derivatives(lambda t: torch_op(t, dim), x, w)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", list(OPS))
def test_dtype_argument(name, gen):
    """dtype=: float64 math checked by gradgradcheck; float32 / float16 input: derivatives in the input's dtype."""
    op, torch_op, _ = OPS[name]
    x = _x((4, 9), gen)
    assert gradgradcheck(lambda t: op(t, 1, dtype=torch.float64) * t, (x,))
    w = torch.randn(4, 9, generator=gen, dtype=torch.float64)
    expected = _derivatives(lambda t: torch_op(t, 1), x, w)
    for dtype, out_dtype, tol in ((torch.float32, torch.float64, 1e-5), (torch.float16, torch.float32, 2e-2)):
        low = x.detach().to(dtype).requires_grad_(True)
        got = _derivatives(lambda t, out_dtype=out_dtype: op(t, 1, dtype=out_dtype), low, w.to(dtype))
        for g, e in zip(got, expected):
            assert g.dtype == dtype
            scale = e.abs().max().item()
            torch.testing.assert_close(g.double(), e, rtol=tol, atol=tol * scale)


def _masked(gen, shape=(4, 6)):
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * 2
    mask = torch.zeros(shape, dtype=torch.bool)
    mask[0, [1, shape[1] - 1]] = True  # some -inf
    mask[-1] = True  # a fully masked row
    return x.masked_fill(mask, -INF).requires_grad_(True), mask


@pytest.mark.parametrize("name", list(OPS))
def test_masked_rows_give_zero_gradients_to_second_order(name, backend, gen):
    op, _, log = OPS[name]
    x, mask = _masked(gen, (2, 4) if _small(backend) else (4, 6))

    def loss(t):  # -inf entries (and log_softmax's -inf outputs) kept out of the arithmetic
        y = op(t, -1)
        if log:
            y = torch.where(mask, 0.0, y)
        return y * torch.where(mask, 0.0, t)

    assert gradcheck(loss, (x,))
    assert gradgradcheck(loss, (x,))
    w = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    (g1,) = torch.autograd.grad((loss(x) * w).sum(), x, create_graph=True)
    (g2,) = torch.autograd.grad((g1 * g1).sum(), x)
    for g in (g1, g2):
        assert torch.isfinite(g).all()
        assert (g[mask] == 0).all()


@pytest.mark.parametrize(
    "call",
    [
        lambda t: torch.softmax(t, 1) * t,
        lambda t: F.softmax(t, dim=0) * t,
        lambda t: t.softmax(-1, torch.float64) * t,
        lambda t: torch.log_softmax(t, 1) * t,
        lambda t: F.log_softmax(t, dim=0) * t,
        lambda t: t.log_softmax(-1) * t,
        lambda t: torch.nn.Softmax(1)(t) * t,
    ],
    ids=["torch.softmax", "F.softmax", "Tensor.softmax", "torch.log_softmax", "F.log_softmax", "Tensor.log_softmax",
         "nn.Softmax"],
)  # fmt: skip
def test_patched_entry_points_double_backward(call, gen):
    x = _x((3, 5), gen)
    with ss.patched():
        out = call(x)
        assert type(out.grad_fn.next_functions[0][0]).__name__ == "_SoftmaxFunctionBackward"  # the package's
        assert gradgradcheck(call, (x,))


@pytest.mark.parametrize("name", list(OPS))
def test_custom_op_autograd_to_second_order(name, gen):
    """The custom ops' registered autograd (what torch.compile records) is differentiable too."""
    op = CUSTOM_OPS[name]
    x = _x((3, 4, 5), gen)
    for dim in (0, 2):
        assert gradcheck(lambda t, dim=dim: op(t, dim) * t, (x,))
        assert gradgradcheck(lambda t, dim=dim: op(t, dim) * t, (x,))
    masked, mask = _masked(gen)
    y = op(masked, 1, torch.float64)
    (g1,) = torch.autograd.grad((torch.where(mask, 0.0, y) * torch.where(mask, 0.0, masked)).sum(), masked,
                                create_graph=True)  # fmt: skip
    (g2,) = torch.autograd.grad((g1 * g1).sum(), masked)
    assert torch.isfinite(g2).all() and (g2[mask] == 0).all()


@pytest.mark.parametrize("name", list(OPS))
def test_double_backward_under_compile(name, gen):
    """Dynamo traces the custom ops and their autograd: second derivatives as eager. AOTAutograd (the
    default backends) refuses double backward itself, loudly: never a silently wrong Hessian."""
    op, torch_op, _ = OPS[name]
    x = _x((3, 6), gen)
    w = torch.randn(3, 6, generator=gen, dtype=torch.float64)
    torch._dynamo.reset()
    compiled = torch.compile(lambda t: op(t, -1), fullgraph=True, backend="eager")
    assert gradgradcheck(lambda t: compiled(t) * t, (x,))
    got = _derivatives(compiled, x, w)
    expected = _derivatives(lambda t: torch_op(t, -1), x, w)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)
    torch._dynamo.reset()
    aot = torch.compile(lambda t: op(t, -1), fullgraph=True, backend="aot_eager")
    (g1,) = torch.autograd.grad((aot(x) * x).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="does not currently support double backward"):
        torch.autograd.grad(g1.sum(), x)
    torch._dynamo.reset()

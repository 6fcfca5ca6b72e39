"""softmax / log_softmax on every backend against a float64 reference on fresh random data."""

from __future__ import annotations

import math

import pytest
import torch
from _reference import INF, assert_close_to_reference, reference
from conftest import DEVICE, INTERPRETED, isa_axis

import stablesoftmax as ss

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
# (rows, cols): tiny to real LLM vocabularies. Interpreted Triton gets the small ones only.
SHAPES = [(1, 1), (3, 7), (5, 1000), (2, 5000), (4, 40000), (1, 152_064), (2, 262_144)]
LONG_SHAPES = [(64, 152_064), (1, 1 << 20)]
NAN = float("nan")


def _op(log: bool):
    return ss.log_softmax if log else ss.softmax


def _random(shape, dtype, gen, scale=4.0):
    """Fresh normal data; float16 also gets values near its 65504 limit in the first row."""
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * scale
    if dtype == torch.float16 and x.numel() > 4:
        x.view(-1)[:4] = torch.tensor([60000.0, -60000.0, 59000.0, 1.5])
    return x.to(dtype).to(DEVICE)


def _too_slow(backend: str, shape) -> bool:
    return INTERPRETED and backend == "triton" and shape[0] * shape[1] > 160_000


@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@isa_axis
def test_matches_float64_reference(backend, shape, dtype, log, gen):
    if _too_slow(backend, shape):
        shape = (1, shape[1]) if shape[1] <= 160_000 else (1, 70_000)
    x = _random(shape, dtype, gen)
    out = _op(log)(x, -1)
    assert out.dtype == dtype and out.device == x.device
    assert_close_to_reference(out, reference(x, -1, log), log)


@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
@pytest.mark.parametrize("in_dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.float64, torch.float16], ids=str)
@isa_axis
def test_dtype_argument(backend, in_dtype, out_dtype, log, gen):
    x = _random((6, 3000), in_dtype, gen, scale=8.0)
    out = _op(log)(x, -1, dtype=out_dtype)
    assert out.dtype == out_dtype
    assert_close_to_reference(out, reference(x, -1, log), log)


@pytest.mark.slow
@pytest.mark.parametrize("shape", LONG_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=str)
def test_long_rows(backend, shape, dtype, gen):
    if _too_slow(backend, shape):  # interpreted Triton: one row of the full length
        shape = (1, shape[1])
    x = _random(shape, dtype, gen, scale=10.0)
    for log in (False, True):
        assert_close_to_reference(_op(log)(x, -1), reference(x, -1, log), log)


@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
@isa_axis
def test_non_contiguous_and_other_dims(backend, log, gen):
    op = _op(log)
    wide = _random((6, 900), torch.float32, gen)
    cases = [
        (wide[:, :700], -1),  # row stride 900, unit column stride
        (wide[::2, 100:], 1),  # strided rows
        (wide.t(), 0),  # transposed: reduce along unit stride
        (wide.t(), 1),  # reduce along the strided dimension
        (_random((3, 4, 50), torch.float16, gen), 1),  # middle dimension
        (_random((3, 4, 50), torch.bfloat16, gen).permute(2, 0, 1), 0),
        (_random((1, 40), torch.float32, gen).expand(5, 40), -1),  # zero row stride
    ]
    for x, dim in cases:
        out = op(x, dim)
        assert out.shape == x.shape
        assert_close_to_reference(out, reference(x, dim, log), log)


def _nonfinite_rows(dtype):
    rows = [
        [1.0, 2.0, 3.0, -INF, 0.5],  # some -inf
        [-INF] * 5,  # a masked row
        [1.0, INF, -2.0, INF, -INF],  # k = 2 entries +inf
        [INF, INF, INF, INF, INF],  # all +inf
        [INF, 1.0, 2.0, 3.0, 4.0],  # one +inf
        [1.0, NAN, 2.0, 3.0, 4.0],  # NaN
        [NAN, INF, -INF, 1.0, 2.0],  # NaN beside infinities
        [-INF, -INF, 7.0, -INF, -INF],  # a single finite entry
    ]
    return torch.tensor(rows, dtype=dtype, device=DEVICE)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@isa_axis
def test_non_finite_table(backend, dtype):
    x = _nonfinite_rows(dtype)
    y, logy = ss.softmax(x, -1), ss.log_softmax(x, -1)
    assert_close_to_reference(y, reference(x, -1, False), False)
    assert_close_to_reference(logy, reference(x, -1, True), True)
    # spelled out, the SPEC's table
    assert y[0, 3] == 0 and logy[0, 3] == -INF
    assert (y[1] == 0).all() and (logy[1] == -INF).all()
    assert y[2].tolist() == [0.0, 0.5, 0.0, 0.5, 0.0]
    assert logy[2, 1].item() == pytest.approx(-math.log(2), rel=1e-2) and logy[2, 0] == -INF
    assert torch.isnan(y[5]).all() and torch.isnan(logy[6]).all()
    assert y[7].tolist() == [0.0, 0.0, 1.0, 0.0, 0.0] and logy[7, 2] == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@isa_axis
def test_non_finite_in_long_rows(backend, dtype, gen):
    """The rules hold when the special entries sit in different blocks of a long row, for whole rows
    and for rows split across threads (one row at a time)."""
    x = torch.randn(4, 70_000, generator=gen).to(dtype).to(DEVICE)
    x[0, 123], x[0, 65_000] = INF, INF
    x[1, 69_999] = NAN
    x[2] = -INF
    x[3, :60_000] = -INF
    for log in (False, True):
        assert_close_to_reference(_op(log)(x, -1), reference(x, -1, log), log)
        for row in (0, 3):
            single = x[row : row + 1]
            assert_close_to_reference(_op(log)(single, -1), reference(single, -1, log), log)


def test_empty_and_zero_dim(backend):
    for shape, dim in [((0, 5), -1), ((5, 0), -1), ((0,), 0), ((2, 0, 3), 2)]:
        x = torch.empty(shape, device=DEVICE)
        assert ss.softmax(x, dim).shape == x.shape
        assert ss.log_softmax(x, dim, dtype=torch.float64).dtype == torch.float64
    scalar = torch.tensor(3.5, device=DEVICE)
    assert ss.softmax(scalar, 0).item() == 1.0 and ss.log_softmax(scalar, -1).item() == 0.0
    assert ss.softmax(scalar, 0).shape == ()


@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
def test_gradcheck_float64(backend, log, gen):
    op = _op(log)
    x = torch.randn(3, 17, dtype=torch.float64, generator=gen).to(DEVICE).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: op(t, -1), (x,))
    assert torch.autograd.gradcheck(lambda t: op(t, 0), (x,))


@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@isa_axis
def test_backward_matches_float64(backend, dtype, log, gen):
    x = _random((4, 3000), dtype, gen).requires_grad_()
    grad = torch.randn(4, 3000, generator=gen, dtype=torch.float64).to(DEVICE)
    _op(log)(x, -1).backward(grad.to(dtype))
    x64 = x.detach().double().requires_grad_()
    (torch.log_softmax if log else torch.softmax)(x64, -1).backward(grad.to(dtype).double())
    assert x.grad is not None and x.grad.dtype == dtype
    tol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]
    scale = x64.grad.abs().amax(-1, keepdim=True)
    assert ((x.grad.double() - x64.grad).abs() <= tol * scale + 1e-7).all()

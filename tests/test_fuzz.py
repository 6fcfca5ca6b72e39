"""Property fuzzing of softmax / log_softmax against the SPEC's float64 reference, on every backend.

Random rank 0-5, sizes 0-300, every dim, every input/output dtype pair, and every kind of view
(contiguous, transposed, stepped, expanded with stride 0, storage offset), with ``+inf`` / ``-inf`` /
NaN at random positions, values within 1e-3 of 0 and near the float16 limit. Checks the values
(SPEC bounds), dtype, shape, device and that the output strides are torch's own for the same call.

The example count comes from the hypothesis profile (``HYPOTHESIS_PROFILE``, see ``conftest.py``):
``ci`` (derandomised, fixed examples, the default) or ``long`` (run before a stop).
"""

from __future__ import annotations

import math

import pytest
import torch
from _reference import assert_close_to_reference, reference
from conftest import DEVICE, ENGINES, INTERPRETED, cpp_isa, require_backend
from hypothesis import given
from hypothesis import strategies as st

import stablesoftmax as ss

IN_DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
OUT_DTYPES = [None, torch.float16, torch.bfloat16, torch.float32, torch.float64]
VIEWS = ["contiguous", "transposed", "stepped", "expanded", "offset"]
# Interpreted Triton costs ~ms per program: keep its tensors small.
MAX_NUMEL = {"triton": 3_000 if INTERPRETED else 200_000, "cpp": 60_000, "torch": 60_000}


@st.composite
def cases(draw, backend: str):
    rank = draw(st.integers(0, 5))
    budget = MAX_NUMEL[backend]
    shape: list[int] = []
    for _ in range(rank):
        room = max(budget // max(math.prod(shape), 1), 1)
        shape.append(draw(st.integers(0, min(300, room))))
    dim = draw(st.integers(-max(rank, 1), max(rank, 1) - 1))
    view = draw(st.sampled_from(VIEWS))
    in_dtype = draw(st.sampled_from(IN_DTYPES))
    out_dtype = draw(st.sampled_from(OUT_DTYPES))
    scale = draw(st.sampled_from([1e-4, 1.0, 8.0, 300.0, 3e4]))
    specials = draw(st.sampled_from(["none", "none", "some", "many"]))
    seed = draw(st.integers(0, 2**31 - 1))
    log = draw(st.booleans())
    return shape, dim, view, in_dtype, out_dtype, scale, specials, seed, log


def _make_input(shape, view, in_dtype, scale, specials, seed) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=gen, dtype=torch.float64) * scale
    flat = base.view(-1)
    n = flat.numel()
    if n and specials != "none":
        k = max(1, n // (50 if specials == "some" else 4))
        where = torch.randint(0, n, (k,), generator=gen)
        kinds = torch.randint(0, 6, (k,), generator=gen)
        values = torch.tensor([math.inf, -math.inf, -math.inf, math.nan, 6.0e4, 5e-4], dtype=torch.float64)
        flat[where] = values[kinds] * torch.where(kinds >= 4, torch.randn(k, generator=gen).sign(), 1.0)
    x = base.to(in_dtype)
    if view == "transposed" and x.ndim >= 2:
        x = x.transpose(0, -1).contiguous().transpose(0, -1)
    elif view == "stepped" and x.ndim >= 1:
        x = torch.cat([x, x], dim=-1)[..., ::2] if x.shape[-1] else x
    elif view == "expanded" and x.ndim >= 1 and x.shape[0] > 0:
        x = x[:1].expand(x.shape)  # stride 0 along dim 0
    elif view == "offset" and x.numel():
        storage = torch.cat([torch.zeros(3, dtype=in_dtype), x.reshape(-1)])
        x = storage[3:].view(x.shape)
    return x.to(DEVICE)


def _check(backend: str, case) -> None:
    shape, dim, view, in_dtype, out_dtype, scale, specials, seed, log = case
    x = _make_input(shape, view, in_dtype, scale, specials, seed)
    op = ss.log_softmax if log else ss.softmax
    with ss.use_backend(backend):
        out = op(x, dim, dtype=out_dtype)
    expected_dtype = out_dtype or in_dtype
    torch_out = (torch.log_softmax if log else torch.softmax)(x, dim, dtype=out_dtype)
    assert out.dtype == expected_dtype and out.shape == x.shape and out.device == x.device
    assert out.stride() == torch_out.stride(), (out.stride(), torch_out.stride())
    if x.numel():
        assert_close_to_reference(out, reference(x, dim % max(x.ndim, 1), log), log)


@pytest.mark.parametrize("engine", ENGINES)
def test_fuzz_against_reference(engine):
    """Every backend, the C++ one once per ISA ("cpp-avx2", "cpp-scalar", ...)."""
    backend, _, isa = engine.partition("-")
    require_backend(backend)

    @given(case=cases(backend))
    def run(case):
        _check(backend, case)

    with cpp_isa(isa or None):
        run()

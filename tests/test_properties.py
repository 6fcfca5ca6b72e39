"""Property tests (hypothesis, derandomised): rows sum to 1, shift invariance, backends agree."""

from __future__ import annotations

import pytest
import torch
from conftest import BACKENDS, DEVICE, require_backend
from hypothesis import given, settings
from hypothesis import strategies as st

import stablesoftmax as ss

PROPERTY_SETTINGS = settings(max_examples=25, deadline=None, derandomize=True)
dtypes = st.sampled_from([torch.float16, torch.bfloat16, torch.float32])


@st.composite
def logits(draw):
    rows = draw(st.integers(1, 4))
    cols = draw(st.integers(1, 3000))
    scale = draw(st.sampled_from([0.1, 1.0, 10.0, 100.0]))
    seed = draw(st.integers(0, 2**31 - 1))
    dtype = draw(dtypes)
    x = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale
    return x.to(dtype).to(DEVICE)


@pytest.mark.parametrize("name", BACKENDS)
@PROPERTY_SETTINGS
@given(x=logits())
def test_rows_sum_to_one(name, x):
    require_backend(name)
    with ss.use_backend(name):
        y = ss.softmax(x, -1, dtype=torch.float32)
        logy = ss.log_softmax(x, -1)
    assert torch.allclose(y.double().sum(-1), torch.ones(x.shape[0], dtype=torch.float64, device=DEVICE), atol=1e-5)
    assert (y >= 0).all() and (logy <= 0).all()


@pytest.mark.parametrize("name", BACKENDS)
@PROPERTY_SETTINGS
@given(x=logits(), shift=st.sampled_from([-1000.0, -3.0, 2.0, 50.0, 4096.0]))
def test_invariant_to_adding_a_constant(name, x, shift):
    require_backend(name)
    x32 = x.float()
    with ss.use_backend(name):
        y = ss.softmax(x32, -1)
        y_shifted = ss.softmax(x32 + shift, -1)
    # x + shift rounds in float32: allow for that rounding, amplified by exp
    tol = 1e-5 + 2 * torch.finfo(torch.float32).eps * (x32.abs().amax() + abs(shift))
    assert torch.allclose(y, y_shifted, rtol=float(tol), atol=1e-9)


@PROPERTY_SETTINGS
@given(x=logits(), log=st.booleans())
def test_backends_agree(x, log):
    results = {}
    for name in BACKENDS:
        require_backend(name)
        with ss.use_backend(name):
            results[name] = (ss.log_softmax if log else ss.softmax)(x, -1, dtype=torch.float32)
    base = results["torch"]
    for name, out in results.items():
        assert torch.allclose(out, base, rtol=2e-5, atol=1e-7 if not log else 2e-5), name

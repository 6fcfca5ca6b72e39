"""The decoding fast path of ``sample_from_logits``: Python ``int`` / ``float`` parameters are checked inline and their
per-row tensors come from caches. Each test compares that path with the general one (0-dim tensors, NumPy scalars,
per-row tensors, or the uncached helpers), bitwise, and checks that a cache never hides an error or hands out a
tensor a caller can see change."""

from __future__ import annotations

import pytest
import torch
from conftest import DEVICE, import_or_skip_off_ci

import stablesoftmax as ss
from stablesoftmax import _sampling
from stablesoftmax._errors import StableSoftmaxError

np = import_or_skip_off_ci("numpy", "a test extra")

V = 1000


def _logits(*batch: int, seed: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*batch, V, generator=g) * 4).to(DEVICE)


def _same(a, b) -> None:
    if isinstance(a, tuple):
        assert len(a) == len(b)
        for u, v in zip(a, b):
            _same(u, v)
        return
    if a is None or b is None:
        assert a is None and b is None
        return
    assert a.dtype == b.dtype and a.shape == b.shape and a.device == b.device
    assert torch.equal(a, b) or (a.is_floating_point() and torch.equal(a.isnan(), b.isnan()))


@pytest.mark.parametrize("validate", [False, True])
@pytest.mark.parametrize(
    "params",
    [
        {"temperature": 0.8, "top_k": 40, "top_p": 0.95},
        {"temperature": 1, "top_k": 5},
        {"temperature": 0.7, "top_p": 0.5, "min_p": 0.05},
        {"temperature": 0.0},
        {"temperature": 1.3, "top_k": 0, "top_p": 1.0, "min_p": 0.0},
        {"temperature": 0.9, "top_k": V + 5},
    ],
)
def test_scalars_match_tensor_parameters(params, validate):
    """Python scalars (cached) and the same values as 0-dim tensors (the general path) draw the same tokens."""
    x = _logits(4)
    as_tensors = {
        k: torch.tensor(v, dtype=torch.int64 if k == "top_k" else torch.float32, device=DEVICE)
        for k, v in params.items()
    }
    for step in range(3):  # a decoding loop: the same scalars again, the offset moving
        kw = {"seed": 11, "offset": step, "validate": validate, "return_logprobs": True}
        fast = ss.sample_from_logits(x, 2, **params, **kw)
        again = ss.sample_from_logits(x, 2, **params, **kw)
        general = ss.sample_from_logits(x, 2, **as_tensors, **{**kw, "offset": torch.tensor(step)})
        _same(fast, again)
        _same(fast, general)


def test_numpy_and_int_scalars_take_the_same_values():
    """NumPy scalars and ints (the general path) give what the equal Python floats give."""
    x = _logits(3)
    want = ss.sample_from_logits(x, temperature=1.0, top_k=7, top_p=1.0, seed=5)
    _same(want, ss.sample_from_logits(x, temperature=1, top_k=np.int64(7), top_p=1, seed=5))
    _same(want, ss.sample_from_logits(x, temperature=np.float32(1.0), top_k=7, top_p=np.float64(1.0), seed=5))
    _same(want, ss.sample_from_logits(x, temperature=1.0, top_k=7, top_p=1.0, seed=np.int64(5)))
    _same(want, ss.sample_from_logits(x, temperature=1.0, top_k=7, seed=5, offset=np.int32(0)))


def test_int_seed_and_offset_match_tensor_ones():
    """A cached int seed / offset stream and the general path (offset as a tensor) draw alike; big ints wrap."""
    x = _logits(5)
    for seed, offset in [(0, 0), (1234, 17), (2**64 - 1, 2**64 + 3), (-(2**63), -1)]:
        fast = ss.sample_from_logits(x, 3, seed=seed, offset=offset)
        wrapped = _sampling.wrap_int64(offset)
        general = ss.sample_from_logits(x, 3, seed=seed, offset=torch.full((5,), wrapped, dtype=torch.int64))
        _same(fast, general)
        # the helper distributed.py calls gives what its uncached body gives
        _same(
            _sampling._random_stream(seed, offset, None, 5, torch.Size([5]), x.device),
            _sampling._checked_stream(seed, offset, None, 5, torch.Size([5]), x.device),
        )


def test_filter_params_helper_unchanged():
    """``_filter_params`` (imported by distributed.py): same arguments, same values, with and without its cache."""
    for args in [
        (0.8, 40, 0.95, None),
        (1, None, 1, 0),
        (0.0, 0, None, 0.1),
        (0.5, V, 0.3, None),
        (0.5, 3, None, None),
    ]:
        for vocab in (V, None):
            got = _sampling._filter_params(*args, 6, (2, 3), DEVICE, vocab, True)
            want = _sampling._checked_filter_params(*args, 6, (2, 3), DEVICE, vocab, True)
            assert len(got) == 5 and got[2] == want[2]
            _same(tuple(got[i] for i in (0, 1, 3, 4)), tuple(want[i] for i in (0, 1, 3, 4)))


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"temperature": -0.5}, StableSoftmaxError),
        ({"temperature": float("nan")}, StableSoftmaxError),
        ({"temperature": True}, TypeError),
        ({"top_k": -1}, StableSoftmaxError),
        ({"top_k": True}, TypeError),
        ({"top_k": 2.0}, TypeError),
        ({"top_p": 0.0}, StableSoftmaxError),
        ({"top_p": 1.5}, StableSoftmaxError),
        ({"top_p": False}, TypeError),
        ({"min_p": 1.01}, StableSoftmaxError),
        ({"seed": 1.5}, TypeError),
        ({"seed": True}, TypeError),
        ({"offset": 2.0}, TypeError),
        ({"offset": False}, TypeError),
        ({"replacement": 1}, TypeError),
        ({"validate": 0}, TypeError),
        ({"return_logprobs": None}, TypeError),
    ],
)
def test_bad_scalars_raise_on_every_call(kwargs, error):
    """A cache holds only results: a bad value raises each time, also after good calls with the same others."""
    x = _logits(2)
    ss.sample_from_logits(x, temperature=0.8, top_k=40, top_p=0.95, seed=1)
    for _ in range(2):
        with pytest.raises(error):
            ss.sample_from_logits(x, **{"temperature": 0.8, "seed": 1, **kwargs})


@pytest.mark.parametrize("num_samples", [0, -2, 1.0, True])
def test_bad_num_samples_raise(num_samples):
    with pytest.raises((TypeError, StableSoftmaxError)):
        ss.sample_from_logits(_logits(1), num_samples)


def test_negative_top_k_raises_on_empty_batches():
    """Checked before the shortcut for empty batches, as before the fast path."""
    with pytest.raises(StableSoftmaxError, match="top_k"):
        ss.sample_from_logits(torch.empty(0, V, device=DEVICE), top_k=-3)


def test_outputs_are_fresh_and_cached_tensors_untouched():
    """Each call returns new tensors; writing into them does not change the next call's parameters or tokens."""
    x = _logits(1)
    kw = {"temperature": 0.8, "top_k": 40, "top_p": 0.95, "seed": 9}
    first = ss.sample_from_logits(x, 4, return_logprobs=True, **kw)
    want = tuple(t.clone() for t in first)
    first[0].fill_(-7)
    first[1].fill_(123.0)
    second = ss.sample_from_logits(x, 4, return_logprobs=True, **kw)
    assert second[0].data_ptr() != first[0].data_ptr()
    _same(second, want)


@pytest.mark.parametrize("batch", [(1,), (3,), (2, 3), (2, 1, 2)])
def test_shapes_with_and_without_reshape(batch):
    """2-D logits skip the reshape and the final view; other ranks keep them; the rows draw alike either way."""
    x = _logits(*batch)
    rows = x.reshape(-1, V)
    tokens, logprobs = ss.sample_from_logits(x, 2, temperature=0.8, top_k=40, seed=4, return_logprobs=True)
    assert tokens.shape == (*batch, 2) and logprobs.shape == (*batch, 2)
    flat_t, flat_l = ss.sample_from_logits(rows, 2, temperature=0.8, top_k=40, seed=4, return_logprobs=True)
    _same((tokens.reshape(-1, 2), logprobs.reshape(-1, 2)), (flat_t, flat_l))


def test_validate_with_one_token_still_raises():
    """The single-token check (``item`` instead of a reduction) still finds a NaN row and an empty row."""
    x = _logits(1)
    x[0, 5] = float("nan")
    with pytest.raises(StableSoftmaxError, match="NaN"):
        ss.sample_from_logits(x, temperature=0.8, top_k=40, seed=1)
    masked = torch.full((1, V), float("-inf"), device=DEVICE)
    with pytest.raises(StableSoftmaxError, match="-inf"):
        ss.sample_from_logits(masked, temperature=0.8, seed=1)
    assert int(ss.sample_from_logits(masked, seed=1, validate=False)) == -1

"""warmup(): after it, calls at the warmed-up batch sizes launch no kernel specialisation it did not launch."""

from __future__ import annotations

import contextlib

import pytest
import torch
import triton
from conftest import DEVICE

import stablesoftmax as ss

_SAMPLING = {"temperature": 0.7, "top_k": 40, "top_p": 0.9, "return_logprobs": True}


def _spec(value):
    """What Triton specialises a launch argument on: ints equal to 1 or divisible by 16, pointer alignment."""
    if isinstance(value, torch.Tensor):
        return ("tensor", value.dtype, value.data_ptr() % 16 == 0)
    if isinstance(value, bool) or not isinstance(value, int):
        return value
    return "one" if value == 1 else "div16" if value % 16 == 0 else "int"


@contextlib.contextmanager
def _launches():
    """Record every Triton launch as (kernel, specialisation of each argument)."""
    seen: set = set()
    classes = [triton.runtime.jit.JITFunction]
    with contextlib.suppress(AttributeError):
        classes.append(triton.runtime.interpreter.InterpretedFunction)
    originals = {cls: cls.run for cls in classes}

    def recorder(original):
        def run(self, *args, grid, warmup, **kwargs):
            name = getattr(self, "fn", self).__name__
            seen.add((name, tuple(map(_spec, args)), tuple(sorted((k, _spec(v)) for k, v in kwargs.items()))))
            return original(self, *args, grid=grid, warmup=warmup, **kwargs)

        return run

    try:
        for cls, original in originals.items():
            cls.run = recorder(original)
        yield seen
    finally:
        for cls, original in originals.items():
            cls.run = original


def _serve(rows: int, vocab: int) -> None:
    """The calls an engine makes at one batch size."""
    logits = torch.randn(rows, vocab, device=DEVICE).half()
    seeds = torch.arange(rows, device=DEVICE) + 100
    ss.sample_from_logits(logits, seed=seeds, validate=False, **_SAMPLING)
    ss.softmax(logits, -1)
    ss.log_softmax(logits, -1)


def test_warmup_covers_every_later_launch():
    vocab = 300
    with ss.use_backend("triton"):
        with _launches() as warmed:
            calls = ss.warmup(vocab, [1, 2, 5], device=DEVICE, sampling=_SAMPLING)
        assert calls == 9 and warmed
        with _launches() as later:
            for rows in (5, 1, 2):
                _serve(rows, vocab)
    assert later and later <= warmed


def test_a_batch_size_left_out_can_need_new_kernels():
    """The check above can fail: one row is a specialisation of its own (an int argument equal to 1)."""
    vocab = 300
    with ss.use_backend("triton"):
        with _launches() as warmed:
            ss.warmup(vocab, [2, 5], device=DEVICE, sampling=_SAMPLING)
        with _launches() as later:
            _serve(1, vocab)
    assert not later <= warmed


def test_per_row_tensors_and_multinomial():
    temperature = torch.tensor([0.5, 1.0, 2.0], device=DEVICE)
    calls = ss.warmup(300, [1, 3], device=DEVICE, dtype=torch.bfloat16, num_samples=2,
                      sampling={"temperature": temperature, "min_p": 0.05}, probabilities=True)  # fmt: skip
    assert calls == 8


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        ((0, [1]), {}, "vocab"),
        ((10, []), {}, "batch_sizes"),
        ((10, [0]), {}, "batch_sizes"),
        ((10, [1]), {"sampling": {"topk": 3}}, "unknown sampling"),
    ],
)
def test_bad_arguments(args, kwargs, match):
    with pytest.raises(ss.StableSoftmaxError, match=match):
        ss.warmup(*args, device=DEVICE, **kwargs)

"""Every Triton launch (softmax forward / backward, logits sampling, probability sampling) runs
under the one device guard, with the input's CUDA device current.

Triton launches on the current device and its current stream: with the input on ``cuda:1`` and
``cuda:0`` current, an unguarded launch runs on the wrong device. Without two GPUs the guard is
checked with a recording ``torch.cuda.device`` and every tensor reported as on ``cuda:1``; each
kernel is wrapped to record which device was current when it was launched (it still runs,
interpreted). A real two-GPU test runs where two GPUs are visible.
"""

from __future__ import annotations

import pytest
import torch
from conftest import DEVICE, require_backend

import stablesoftmax as ss

SOFTMAX_KERNELS = (
    "_fwd_fused_kernel", "_fwd_looped_kernel", "_fwd_split_stats_kernel", "_fwd_split_write_kernel",
    "_bwd_fused_kernel", "_bwd_looped_kernel",
)  # fmt: skip
SAMPLING_KERNELS = (
    "_stats_kernel", "_select_init_kernel", "_count_kernel", "_count_select_kernel", "_mass_select_kernel",
    "_block_kernel", "_draw_kernel",
)  # fmt: skip
SHARD_KERNELS = ("_hist_kernel", "_mass_round_kernel")  # distributed sampling's histograms, top-p's mass rounds
FAKE_INDEX = 1  # the device every tensor is reported to live on


class _Spy:
    """Stands in for a ``@triton.jit`` kernel: records the current (fake) device per launch, then launches."""

    def __init__(self, name, kernel, state, log):
        self.name, self.kernel, self.state, self.log = name, kernel, state, log

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.log.append((self.name, self.state["current"]))
            return self.kernel[grid](*args, **kwargs)

        return launch


@pytest.fixture
def launches(monkeypatch):
    """The list of (kernel, device current at its launch) of the test body's Triton launches."""
    require_backend("triton")
    from stablesoftmax.backends import triton_launch, triton_sampling, triton_shard, triton_softmax

    state = {"current": None}
    log: list[tuple[str, int | None]] = []

    class FakeDevice:  # torch.cuda.device's protocol: make `index` current, restore on exit
        def __init__(self, index):
            self.index = index.index if isinstance(index, torch.device) else index

        def __enter__(self):
            self.prev, state["current"] = state["current"], self.index

        def __exit__(self, *exc):
            state["current"] = self.prev
            return False

    monkeypatch.setattr(torch.cuda, "device", FakeDevice)
    monkeypatch.setattr(triton_launch, "_cuda_index", lambda t: FAKE_INDEX)
    for mod, names in (
        (triton_softmax, SOFTMAX_KERNELS), (triton_sampling, SAMPLING_KERNELS), (triton_shard, SHARD_KERNELS),
    ):  # fmt: skip
        for name in names:
            monkeypatch.setattr(mod, name, _Spy(name, getattr(mod, name), state, log))
    with ss.use_backend("triton"):
        yield log
    assert state["current"] is None  # every guard restored the caller's device


def _assert_guarded(log, expected):
    assert {name for name, _ in log} == set(expected), log
    unguarded = [name for name, current in log if current != FAKE_INDEX]
    assert not unguarded, f"launched without the input's device current: {unguarded}"


def test_softmax_launches_run_on_the_inputs_device(launches, gen):
    from stablesoftmax.backends import triton_softmax as S

    x = torch.randn(3, 300, generator=gen).to(DEVICE)
    out = torch.empty_like(x)
    for log in (False, True):
        S.softmax_forward(x, out, log)  # fused
        S.softmax_forward(x, out, log, block_size=128, split=1)  # looped
        S.softmax_forward(x, out, log, block_size=128, split=3)  # split: stats + write
        S.softmax_backward(out, x, torch.empty_like(x), log)  # fused
        S.softmax_backward(out, x, torch.empty_like(x), log, block_size=128)  # looped
    _assert_guarded(launches, SOFTMAX_KERNELS)


def test_softmax_through_the_api_and_autograd_run_on_the_inputs_device(launches, gen):
    x = torch.randn(4, 200, generator=gen).to(DEVICE).requires_grad_()
    ss.log_softmax(x, -1).sum().backward()
    torch.testing.assert_close(x.grad, torch.func.grad(lambda t: torch.log_softmax(t, -1).sum())(x.detach()))
    _assert_guarded(launches, ("_fwd_fused_kernel", "_bwd_fused_kernel"))


def test_sampling_from_logits_runs_on_the_inputs_device(launches, gen):
    x = torch.randn(3, 500, generator=gen).to(DEVICE)
    with_filters = ss.sample_from_logits(x, temperature=0.8, top_k=20, top_p=0.9, min_p=0.01, seed=7)
    assert with_filters.shape == (3, 1)
    ss.sample_from_logits(x, num_samples=4, replacement=False, seed=7)  # the race keys (_block_kernel)
    _assert_guarded(launches, (*SAMPLING_KERNELS, "_mass_round_kernel"))


def test_sampling_from_probabilities_runs_on_the_inputs_device(launches, gen):
    p = torch.rand(3, 500, generator=gen).to(DEVICE)
    g = torch.Generator(DEVICE).manual_seed(3)
    assert ss.multinomial(p, 8, replacement=True, generator=g).shape == (3, 8)
    assert ss.multinomial(p, 8, replacement=False, generator=g).shape == (3, 8)
    _assert_guarded(launches, ("_block_kernel", "_draw_kernel"))


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_two_gpus_input_on_the_second_while_the_first_is_current():
    require_backend("triton")
    gen = torch.Generator().manual_seed(20261202)
    x_host = torch.randn(16, 40_000, generator=gen) * 3
    x = x_host.to("cuda:1")
    with ss.use_backend("triton"):
        with torch.cuda.device(1):  # the answers with the input's device current
            want_y = ss.softmax(x, -1)
            want_lp = ss.log_softmax(x, -1, dtype=torch.float32)
            want_tok = ss.sample_from_logits(x, top_k=50, top_p=0.9, seed=11, num_samples=3)
            p = want_y.double()
            want_multi = ss.multinomial(p, 5, generator=torch.Generator("cuda:1").manual_seed(5))
        torch.cuda.set_device(0)
        stream = torch.cuda.Stream(device="cuda:1")  # a caller's side stream on the input's device
        with torch.cuda.stream(stream):
            y = ss.softmax(x, -1)
            lp = ss.log_softmax(x, -1, dtype=torch.float32)
            tok = ss.sample_from_logits(x, top_k=50, top_p=0.9, seed=11, num_samples=3)
            multi = ss.multinomial(p, 5, generator=torch.Generator("cuda:1").manual_seed(5))
        stream.synchronize()
        assert torch.cuda.current_device() == 0
    torch.testing.assert_close(want_y, torch.softmax(x_host.double(), -1).float().to("cuda:1"))
    assert torch.equal(y, want_y) and torch.equal(lp, want_lp)
    assert torch.equal(tok, want_tok) and torch.equal(multi, want_multi)
    assert y.device == tok.device == multi.device == torch.device("cuda:1")

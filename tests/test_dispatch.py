"""Backend choice: automatic, by environment, by context manager; errors for what cannot run."""

from __future__ import annotations

import pytest
import torch
from _reference import assert_close_to_reference, reference
from conftest import DEVICE, require_backend

import stablesoftmax as ss
from stablesoftmax.backends import torch_softmax


def test_available_backends_reports_every_backend_with_a_reason():
    statuses = ss.available_backends()
    assert set(statuses) == {"triton", "cpp", "torch"}
    assert statuses["torch"].available
    for status in statuses.values():
        assert isinstance(status, ss.BackendStatus) and status.reason
        assert status.name in str(status)


def test_automatic_choice_by_device(monkeypatch):
    monkeypatch.delenv("STABLESOFTMAX_BACKEND", raising=False)
    expected_cpu = "cpp" if ss.available_backends()["cpp"].available else "torch"
    assert ss.backend_for(torch.zeros(1)) == expected_cpu
    assert ss.backend_for("cpu") == expected_cpu
    assert ss.backend_for(torch.device("meta")) == "torch"  # everything else: pure torch
    if torch.cuda.is_available():
        assert ss.backend_for("cuda") in ("triton", "torch")


def test_environment_variable_and_context_manager(monkeypatch):
    monkeypatch.setenv("STABLESOFTMAX_BACKEND", "torch")
    assert ss.backend_for("cpu") == "torch"
    require_backend("cpp")
    with ss.use_backend("cpp"):  # the context manager wins over the environment
        assert ss.backend_for("cpu") == "cpp"
        with ss.use_backend("auto"):
            assert ss.backend_for("cpu") == "cpp"
    assert ss.backend_for("cpu") == "torch"


def test_bad_names_and_impossible_choices_raise(monkeypatch):
    monkeypatch.setenv("STABLESOFTMAX_BACKEND", "cuda-please")
    with pytest.raises(ss.StableSoftmaxError, match="STABLESOFTMAX_BACKEND"):
        ss.softmax(torch.randn(2, 3))
    monkeypatch.delenv("STABLESOFTMAX_BACKEND")
    with pytest.raises(ss.StableSoftmaxError, match=r"not one of"), ss.use_backend("fast"):
        pass
    require_backend("cpp")
    with ss.use_backend("cpp"), pytest.raises(ss.StableSoftmaxError, match="cannot run here"):
        ss.backend_for("meta")
    assert issubclass(ss.StableSoftmaxError, RuntimeError)


def test_invalid_inputs_raise_clear_errors(backend):
    with pytest.raises(ss.StableSoftmaxError, match=r"dtype=torch\.float32"):
        ss.softmax(torch.arange(6, device=DEVICE).view(2, 3), -1)
    with pytest.raises(ss.StableSoftmaxError, match="output dtype"):
        ss.softmax(torch.randn(2, 3, device=DEVICE), -1, dtype=torch.int32)
    with pytest.raises(ss.StableSoftmaxError, match="complex"):
        ss.softmax(torch.randn(2, 3, dtype=torch.complex64, device=DEVICE), -1, dtype=torch.float32)
    with pytest.raises(IndexError, match="out of range"):
        ss.log_softmax(torch.randn(2, 3, device=DEVICE), 2)
    with pytest.raises(TypeError):
        ss.softmax([1.0, 2.0])  # type: ignore[arg-type]


def test_integer_input_with_dtype_converts_first_as_torch(backend):
    x = torch.arange(12, device=DEVICE).view(3, 4)
    out = ss.softmax(x, -1, dtype=torch.float32)
    assert_close_to_reference(out, torch.softmax(x.double(), -1), False)


@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
def test_torch_backend_bounds_memory_with_column_chunks(monkeypatch, log):
    """Rows longer than the memory budget go through the three-pass column-chunked path."""
    monkeypatch.setattr(torch_softmax, "CHUNK_BYTES", 4096)
    monkeypatch.setattr(torch_softmax, "CPU_CHUNK_BYTES", 4096)
    x = torch.randn(3, 2000, dtype=torch.float16, device=DEVICE) * 6
    x[1, 1500] = float("inf")
    x[2] = float("-inf")
    with ss.use_backend("torch"):
        out = (ss.log_softmax if log else ss.softmax)(x, -1)
    assert_close_to_reference(out, reference(x, -1, log), log)

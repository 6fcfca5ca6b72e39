"""Backend selection: which implementation runs a call, and why the others cannot.

The three backends hold kernels only; every rule of the SPEC is applied in front of this
layer. The choice, in order of precedence:

1. :func:`use_backend` (a context manager, per thread / task),
2. the ``STABLESOFTMAX_BACKEND`` environment variable (``auto``, ``triton``, ``cpp``, ``torch``),
3. ``auto``: Triton for CUDA / ROCm tensors when it imports, the C++ extension for CPU
   tensors when it was built, pure torch for everything else (Intel XPU, Apple MPS, ...).

An automatic choice falls back quietly; an explicit choice that cannot run raises
:class:`~stablesoftmax.StableSoftmaxError`.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Union

import torch

from ._errors import StableSoftmaxError

__all__ = ["BACKENDS", "BackendStatus", "available_backends", "backend_for", "use_backend"]

BACKENDS = ("triton", "cpp", "torch")
_CHOICES = ("auto", *BACKENDS)
_ENV_VAR = "STABLESOFTMAX_BACKEND"
_forced: contextvars.ContextVar[str | None] = contextvars.ContextVar("stablesoftmax_backend", default=None)

DeviceLike = Union[torch.Tensor, torch.device, str]


@dataclass(frozen=True)
class BackendStatus:
    """Whether a backend can run in this process, and why (not)."""

    name: str
    available: bool
    reason: str

    def __str__(self) -> str:
        return f"{self.name}: {'available' if self.available else 'unavailable'} ({self.reason})"


def _interpret_mode() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


_KERNEL_MODULES = {
    ("torch", "softmax"): "torch_softmax",
    ("torch", "sampling"): "torch_sampling",
    ("cpp", "softmax"): "cpp_softmax",
    ("cpp", "sampling"): "cpp_sampling",
    ("triton", "softmax"): "triton_softmax",
    ("triton", "sampling"): "triton_sampling",
}


@functools.cache
def _import_status(name: str, family: str = "softmax") -> tuple[ModuleType | None, str]:
    """Import a backend's kernel module for an op family once; return it (or None) and a reason."""
    if name == "triton":
        try:
            import triton
        except ImportError as exc:
            return None, f"triton not importable ({exc}); pip install 'stablesoftmax[triton]'"
    try:
        module = importlib.import_module(f".backends.{_KERNEL_MODULES[name, family]}", __package__)
    except ImportError as exc:
        if name == "cpp":
            return None, f"C++ extension not importable ({exc}); reinstall with a C++ compiler present"
        return None, f"{name} {family} kernels not importable ({exc})"
    except Exception as exc:  # a broken triton install must not break the package
        return None, f"{name} {family} kernels failed to load ({type(exc).__name__}: {exc})"
    if name == "torch":
        return module, "pure torch ops, any device"
    if name == "cpp":
        return module, f"C++ extension, CPU tensors, ISA {module.isa()}" if family == "softmax" else "C++ extension"
    return module, f"triton {triton.__version__}"


def _device_of(x: DeviceLike) -> torch.device:
    if isinstance(x, torch.Tensor):
        return x.device
    return torch.device(x)


def _runs_on(name: str, device: torch.device) -> tuple[bool, str]:
    """Whether backend ``name`` (assumed importable) can run on ``device``."""
    if name == "torch":
        return True, ""
    if name == "cpp":
        return device.type == "cpu", f"the cpp backend runs on CPU tensors, not {device.type}"
    if device.type == "cuda":
        return True, ""
    if device.type == "cpu" and _interpret_mode():
        return True, ""
    return False, (
        f"the triton backend runs on CUDA/ROCm tensors, not {device.type}"
        + ("; set TRITON_INTERPRET=1 before importing triton to run it on CPU tensors" if device.type == "cpu" else "")
    )


def available_backends() -> dict[str, BackendStatus]:
    """Report each backend and whether it can run in this process.

    Returns
    -------
    dict of str to BackendStatus
        Keyed by backend name (``"triton"``, ``"cpp"``, ``"torch"``); each status says
        whether the backend is available and, if not, why.
    """
    statuses = {}
    for name in BACKENDS:
        module, reason = _import_status(name)
        if module is not None and name == "triton" and not torch.cuda.is_available() and not _interpret_mode():
            statuses[name] = BackendStatus(name, False, f"{reason} imports, but no CUDA/ROCm device is visible")
        else:
            statuses[name] = BackendStatus(name, module is not None, reason)
    return statuses


def requested_backend() -> str:
    """The backend asked for by :func:`use_backend` or the environment, else ``"auto"``."""
    name = _forced.get()
    if name is not None:
        return name
    name = os.environ.get(_ENV_VAR, "auto").strip().lower() or "auto"
    if name not in _CHOICES:
        raise StableSoftmaxError(f"{_ENV_VAR}={name!r} is not one of {', '.join(_CHOICES)}")
    return name


# (requested backend, device type, op family) -> kernel module: the per-call fast path. Filled
# only by successful choices, so a choice that raises is re-examined (and raises) every time.
_chosen: dict[tuple[str, str, str], ModuleType] = {}


def backend_for(x: DeviceLike, family: str = "softmax") -> str:
    """Name the backend a call on tensor (or device) ``x`` would use.

    Parameters
    ----------
    x : torch.Tensor, torch.device or str
        The input tensor, or the device it lives on.
    family : {"softmax", "sampling"}, default "softmax"
        The op family asked about.

    Returns
    -------
    str
        ``"triton"``, ``"cpp"`` or ``"torch"``.

    Raises
    ------
    StableSoftmaxError
        If a backend was chosen explicitly and cannot run on that device.
    """
    device = _device_of(x)
    requested = requested_backend()
    if requested != "auto":
        module, reason = _import_status(requested, family)
        if module is None:
            raise StableSoftmaxError(f"backend {requested!r} was requested but is unavailable: {reason}")
        ok, why = _runs_on(requested, device)
        if not ok:
            raise StableSoftmaxError(f"backend {requested!r} was requested but cannot run here: {why}")
        return requested
    if device.type == "cuda":
        preference = ("triton", "torch")
    elif device.type == "cpu":
        preference = ("cpp", "torch")
    else:
        preference = ("torch",)
    for name in preference:
        if _import_status(name, family)[0] is not None:
            return name
    return "torch"


def kernels_for(x: torch.Tensor, family: str = "softmax") -> ModuleType:
    """The kernel module (of op ``family``) of the backend chosen for tensor ``x``."""
    key = (_forced.get() or os.environ.get(_ENV_VAR) or "auto", x.device.type, family)
    module = _chosen.get(key)
    if module is None:
        module = _import_status(backend_for(x, family), family)[0]
        assert module is not None
        _chosen[key] = module
    return module


def sampling_kernels_for(x: torch.Tensor) -> ModuleType:
    """The sampling kernel module of the backend chosen for ``x``."""
    return kernels_for(x, "sampling")


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Force a backend inside a ``with`` block (per thread and asyncio task).

    Parameters
    ----------
    name : {"auto", "triton", "cpp", "torch"}
        The backend to use; ``"auto"`` restores the automatic choice.
    """
    if name not in _CHOICES:
        raise StableSoftmaxError(f"backend {name!r} is not one of {', '.join(_CHOICES)}")
    token = _forced.set(name)
    try:
        yield
    finally:
        _forced.reset(token)

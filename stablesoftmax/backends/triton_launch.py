"""The device guard every Triton launch of the package runs under (softmax and sampling alike).

Triton launches a kernel on the *current* CUDA device and that device's current stream,
whatever device the tensors live on. With logits on ``cuda:1`` and ``cuda:0`` current (as
``device_map="auto"`` leaves it), a launch would run on the wrong device. Every launch site
enters :func:`launch_guard` for its input first: inside it the input's device is current,
so the launch goes to that device and to the stream the caller made current there
(``torch.cuda.stream`` is per device). Off CUDA (the interpreter) it does nothing.
"""

from __future__ import annotations

import contextlib

import torch

__all__ = ["launch_guard"]


def _cuda_index(t: torch.Tensor) -> int | None:
    """The CUDA device index the guard makes current for ``t``; ``None`` off CUDA."""
    if t.device.type != "cuda":
        return None
    return t.device.index if t.device.index is not None else torch.cuda.current_device()


def launch_guard(t: torch.Tensor) -> contextlib.AbstractContextManager:
    """Make ``t``'s CUDA device (and so its current stream) current for the launches inside.

    Entered always, not only when the device differs: ``torch.cuda.device`` restores the
    caller's device on exit and costs a driver-side exchange only when it changes anything.
    """
    index = _cuda_index(t)
    if index is None:
        return contextlib.nullcontext()
    return torch.cuda.device(index)

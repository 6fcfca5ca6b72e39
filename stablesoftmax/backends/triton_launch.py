"""The device guard every Triton launch of the package runs under (softmax and sampling alike).

Triton launches a kernel on the *current* CUDA device and that device's current stream,
whatever device the tensors live on. With logits on ``cuda:1`` and ``cuda:0`` current (as
``device_map="auto"`` leaves it), a launch would run on the wrong device. Every launch site
enters :func:`launch_guard` for its input first: inside it the input's device is current,
so the launch goes to that device and to the stream the caller made current there
(``torch.cuda.stream`` is per device). Off CUDA (the interpreter) it does nothing.

:func:`grid_pieces` keeps every launch within CUDA's grid limits (x <= 2**31 - 1, y and z
<= 65,535): a grid past them is cut into pieces launched one after the other, each kernel
adding the piece's program-id offsets, so every program does the work it would have done
in the one oversized grid (results unchanged; one piece for every usual shape).
"""

from __future__ import annotations

import contextlib
import os

import torch

__all__ = ["MAX_GRID_X", "MAX_GRID_YZ", "grid_pieces", "launch_guard", "native_ptx"]

#: CUDA's limits on a launch grid: x up to 2**31 - 1 programs, y and z up to 65,535.
MAX_GRID_X = 2**31 - 1
MAX_GRID_YZ = 65535


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


def native_ptx(device: torch.device) -> bool:
    """Whether kernels launched for ``device`` are compiled to NVIDIA PTX, so that they may use
    its instructions inline (``ex2.approx.ftz``) and its correctly rounding casts.

    True on CUDA (and on ``meta``, which the ahead-of-time compile check launches with, standing
    for CUDA); false in Triton's interpreter (``TRITON_INTERPRET=1``: no inline PTX, and casts that
    truncate to bfloat16 and warn on float16 overflow), on ROCm and on every other device.
    """
    interpreted = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")  # as _dispatch reads it
    return device.type in ("cuda", "meta") and torch.version.hip is None and not interpreted


def grid_pieces(grid: tuple[int, ...]) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Cut ``grid`` into sub-grids within CUDA's limits, each with its program-id offsets.

    Parameters
    ----------
    grid : tuple of int
        The launch grid as the planner wants it (1 to 3 dimensions, each >= 0).

    Returns
    -------
    list of (tuple of int, tuple of int)
        ``(sub_grid, offsets)`` pairs in launch order, both as long as ``grid``: a piece's
        program ``p`` does the work of program ``p + offsets`` of ``grid``. A grid within
        the limits (every usual shape) comes back as the one piece ``(grid, (0, ...))``.
        The limits are read at call time (:data:`MAX_GRID_X`, :data:`MAX_GRID_YZ`), so that
        tests can lower them to exercise the cut in the interpreter.
    """
    limits = (MAX_GRID_X, MAX_GRID_YZ, MAX_GRID_YZ)[: len(grid)]
    pieces: list[tuple[tuple[int, ...], tuple[int, ...]]] = [((), ())]
    for size, limit in zip(grid, limits):
        spans = [(start, min(limit, size - start)) for start in range(0, size, limit)] or [(0, 0)]
        pieces = [((*g, n), (*o, start)) for g, o in pieces for start, n in spans]
    return pieces

"""The pure-torch backend against torch's own float32 softmax, interleaved A/B in one process, medians.

Usage: ``python bench/bench_torch_fallback.py [--repeats 15] [--threads N] [--ops softmax,log_softmax,backward]``.

For each shape and dtype ``d`` (``d -> d``) it times, alternating call by call:

* ``torch``: ``torch.softmax(x, -1, dtype=torch.float32).to(d)`` (``torch.log_softmax`` likewise; the ``.to(d)``
  is a no-op for float32): torch's max-subtracted float32 softmax with the cast to the output dtype a user needs;
* ``torch backend``: ``stablesoftmax.softmax(x, -1)`` forced onto the torch backend with ``use_backend("torch")``;
* ``backward``: the input gradient through autograd, ``torch.autograd.grad`` of each op's output with a fixed
  upstream gradient, torch's ``softmax(x, -1, dtype=float32).to(d)`` against the torch backend.

The table prints the median milliseconds of each and their ratio (torch backend / torch).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

import stablesoftmax as ss

SHAPES = [(64, 152_064), (256, 32_000), (1, 152_064)]
DTYPES = [torch.float16, torch.float32, torch.bfloat16]


def _median_ms_interleaved(calls: list[Callable[[], object]], repeats: int) -> list[float]:
    """Median wall time (ms) of each call, the calls alternating so that machine noise hits them alike."""
    for call in calls:  # warm-up: allocator, lazy init
        call()
    times: list[list[float]] = [[] for _ in calls]
    for _ in range(repeats):
        for k, call in enumerate(calls):
            t0 = time.perf_counter()
            call()
            times[k].append((time.perf_counter() - t0) * 1e3)
    return [statistics.median(t) for t in times]


def _forward_pair(x: torch.Tensor, op: str) -> tuple[Callable[[], object], Callable[[], object]]:
    torch_op, ours = getattr(torch, op), getattr(ss, op)

    def reference() -> torch.Tensor:
        return torch_op(x, -1, dtype=torch.float32).to(x.dtype)

    def backend() -> torch.Tensor:
        with ss.use_backend("torch"):
            return ours(x, -1)

    return reference, backend


def _backward_pair(x: torch.Tensor, op: str) -> tuple[Callable[[], object], Callable[[], object]]:
    torch_op, ours = getattr(torch, op), getattr(ss, op)
    leaf = x.clone().requires_grad_(True)
    upstream = torch.randn(x.shape, generator=torch.Generator().manual_seed(1)).to(x.dtype)
    y_ref = torch_op(leaf, -1, dtype=torch.float32).to(x.dtype)
    with ss.use_backend("torch"):
        y_ours = ours(leaf, -1)

    def reference() -> object:
        return torch.autograd.grad(y_ref, leaf, upstream, retain_graph=True)

    def backend() -> object:
        with ss.use_backend("torch"):
            return torch.autograd.grad(y_ours, leaf, upstream, retain_graph=True)

    return reference, backend


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--ops", default="softmax,log_softmax,backward")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ops = args.ops.split(",")
    print(
        f"torch {torch.__version__}, stablesoftmax {ss.__version__}, {torch.get_num_threads()} threads, "
        f"{args.repeats} interleaved repeats, medians"
    )
    print(f"| {'op':<20} | {'shape':<12} | {'dtype':<8} | {'torch ms':>9} | {'torch backend ms':>16} | {'ratio':>5} |")
    print(f"|{'-' * 22}|{'-' * 14}|{'-' * 10}|{'-' * 11}|{'-' * 18}|{'-' * 7}|")
    for rows, cols in SHAPES:
        for dtype in DTYPES:
            x = (torch.randn(rows, cols, generator=torch.Generator().manual_seed(0)) * 4).to(dtype)
            for op in ops:
                if op == "backward":
                    pairs = [(f"{name} backward", _backward_pair(x, name)) for name in ("softmax", "log_softmax")]
                else:
                    pairs = [(op, _forward_pair(x, op))]
                for label, calls in pairs:
                    ref_ms, ours_ms = _median_ms_interleaved(list(calls), args.repeats)
                    print(
                        f"| {label:<20} | {rows}x{cols:<9,} | {str(dtype)[6:]:<8} | {ref_ms:9.2f} | "
                        f"{ours_ms:16.2f} | {ours_ms / ref_ms:5.2f} |",
                        flush=True,
                    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

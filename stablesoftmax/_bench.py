"""Benchmark harness shared by ``python -m stablesoftmax bench`` and ``bench/bench_softmax.py``.

Each case times one backend (forced with :func:`~stablesoftmax.use_backend`) against
``torch.softmax`` and against a same-size half-to-float copy, in the same process and run.
CPU timings use :class:`torch.utils.benchmark.Timer` (median of blocked runs, outputs
allocated inside the timed statement as a real call does); GPU timings use
``triton.testing.do_bench``.
"""

from __future__ import annotations

import platform
from dataclasses import asdict, dataclass, fields
from typing import Callable

import torch

from ._dispatch import available_backends, use_backend
from ._sampling import multinomial, sample_from_logits
from ._softmax import softmax

__all__ = ["SAMPLING_SHAPES", "SHAPES", "Result", "format_table", "run_sampling_bench", "run_softmax_bench"]

SHAPES = [(1, 152_064), (64, 152_064), (256, 32_000), (4096, 4096)]
SAMPLING_SHAPES = [(1, 152_064), (64, 152_064), (256, 32_000)]


@dataclass
class Result:
    device: str
    op: str
    shape: str
    dtypes: str
    impl: str
    ms: float
    gbps: float
    speedup_vs_torch: float
    ms_copy: float


def _timer(fn: Callable[[], object], device: torch.device, min_run_time: float) -> float:
    """Median milliseconds per call of ``fn``."""
    if device.type == "cuda":
        import triton.testing

        rep = max(int(min_run_time * 1000), 50)
        return float(triton.testing.do_bench(fn, warmup=25, rep=rep, return_mode="median"))
    from torch.utils import benchmark

    fn()  # warm up (first-call dispatch, thread pool start)
    measurement = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return measurement.blocked_autorange(min_run_time=min_run_time).median * 1e3


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} cpu x{torch.get_num_threads()}"


def _backends_for(device: torch.device) -> list[str]:
    statuses = available_backends()
    names = ["triton", "torch"] if device.type == "cuda" else ["cpp", "torch"]
    return [n for n in names if statuses[n].available]


def run_softmax_bench(
    device: torch.device | str = "cpu",
    shapes: list[tuple[int, int]] | None = None,
    min_run_time: float = 0.5,
) -> list[Result]:
    """Time softmax float16 -> float16 and float16 -> float32 on every backend for ``device``."""
    device = torch.device(device)
    results = []
    for rows, cols in shapes or SHAPES:
        x = torch.randn(rows, cols, device=device).mul_(4).half()
        copy_ms = _timer(lambda x=x: x.float(), device, min_run_time)
        for out_dtype in (torch.float16, torch.float32):
            dtype_arg = None if out_dtype == torch.float16 else out_dtype
            bytes_moved = x.numel() * (x.element_size() + out_dtype.itemsize)
            base_ms = _timer(lambda x=x, d=dtype_arg: torch.softmax(x, -1, dtype=d), device, min_run_time)
            label = f"float16->{str(out_dtype).replace('torch.', '')}"
            results.append(Result(str(device.type), "softmax", f"{rows}x{cols}", label, "torch.softmax",
                                  base_ms, bytes_moved / base_ms / 1e6, 1.0, copy_ms))  # fmt: skip
            for name in _backends_for(device):
                with use_backend(name):
                    ms = _timer(lambda x=x, d=dtype_arg: softmax(x, -1, dtype=d), device, min_run_time)
                results.append(Result(str(device.type), "softmax", f"{rows}x{cols}", label, name,
                                      ms, bytes_moved / ms / 1e6, base_ms / ms, copy_ms))  # fmt: skip
    return results


def _torch_temperature_sampling(x: torch.Tensor, temperature: float) -> torch.Tensor:
    return torch.multinomial(torch.softmax(x.float() / temperature, -1), 1)


def _transformers_top_k_top_p(x: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """The top-k / top-p pipeline of transformers' logits warpers, then softmax and multinomial."""
    scores = x.float() / temperature
    kth = torch.topk(scores, top_k)[0][..., -1, None]
    scores = scores.masked_fill(scores < kth, -float("inf"))
    sorted_logits, sorted_indices = torch.sort(scores, descending=False)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove_sorted = cumulative <= (1 - top_p)
    remove_sorted[..., -1:] = False
    remove = remove_sorted.scatter(1, sorted_indices, remove_sorted)
    scores = scores.masked_fill(remove, -float("inf"))
    return torch.multinomial(torch.softmax(scores, dim=-1), 1)


def run_sampling_bench(
    device: torch.device | str = "cpu",
    shapes: list[tuple[int, int]] | None = None,
    min_run_time: float = 0.5,
) -> list[Result]:
    """Time temperature sampling, top-k 50 / top-p 0.9 sampling and multinomial (1 draw; 4 without
    replacement) against torch."""
    device = torch.device(device)
    results = []
    for rows, cols in shapes or SAMPLING_SHAPES:
        x = torch.randn(rows, cols, device=device).mul_(4).half()
        probs = torch.softmax(x.float(), -1)
        cases = [
            ("temperature 0.7", lambda x=x: _torch_temperature_sampling(x, 0.7), "torch softmax+multinomial",
             lambda x=x: sample_from_logits(x, temperature=0.7, validate=False), x),
            ("top_k 50 top_p 0.9", lambda x=x: _transformers_top_k_top_p(x, 0.7, 50, 0.9), "transformers pipeline",
             lambda x=x: sample_from_logits(x, temperature=0.7, top_k=50, top_p=0.9, validate=False), x),
            ("multinomial", lambda p=probs: torch.multinomial(p, 1), "torch.multinomial",
             lambda p=probs: multinomial(p, 1), probs),
            ("multinomial 4 no repl.", lambda p=probs: torch.multinomial(p, 4), "torch.multinomial",
             lambda p=probs: multinomial(p, 4), probs),
        ]  # fmt: skip
        for label, baseline, baseline_name, ours, data in cases:
            bytes_read = data.numel() * data.element_size()
            base_ms = _timer(baseline, device, min_run_time)
            results.append(Result(str(device.type), "sampling", f"{rows}x{cols}", label, baseline_name,
                                  base_ms, bytes_read / base_ms / 1e6, 1.0, float("nan")))  # fmt: skip
            for name in _backends_for(device):
                with use_backend(name):
                    ms = _timer(ours, device, min_run_time)
                results.append(Result(str(device.type), "sampling", f"{rows}x{cols}", label, name,
                                      ms, bytes_read / ms / 1e6, base_ms / ms, float("nan")))  # fmt: skip
    return results


def format_table(results: list[Result]) -> str:
    """A fixed-width text table of the results."""
    header = f"{'shape':>14} {'case':>19} {'impl':>26} {'ms':>9} {'GB/s':>7} {'vs torch':>9} {'ms x.float()':>12}"
    lines = [header, "-" * len(header)]
    for r in results:
        lines.append(
            f"{r.shape:>14} {r.dtypes:>19} {r.impl:>26} {r.ms:>9.3f} {r.gbps:>7.1f} "
            f"{r.speedup_vs_torch:>8.2f}x {r.ms_copy:>12.3f}"
        )
    return "\n".join(lines)


def write_csv(results: list[Result], path: str) -> None:
    import csv

    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[fl.name for fl in fields(Result)])
        writer.writeheader()
        for r in results:
            writer.writerow(asdict(r))

"""Benchmark harness shared by ``python -m stablesoftmax bench`` and ``bench/bench_softmax.py``.

Each case times one backend (forced with :func:`~stablesoftmax.use_backend`) against
``torch.softmax`` and against a same-size copy into the output dtype (the memory floor: read the input once,
write the output once), in the same process and run.
CPU timings use :class:`torch.utils.benchmark.Timer` (blocked runs, outputs allocated inside
the timed statement as a real call does); GPU timings use ``triton.testing.do_bench``. Each
result carries the 20th, 50th and 80th percentile of the per-call time.

:func:`write_csv` merges results into one CSV (a row per case and machine, replaced when measured
again) with the package version and git commit, torch version, CPU model, ISA, thread count, GPU
and timestamp; :func:`plot` draws them.
"""

from __future__ import annotations

import csv
import datetime
import os
import platform
import subprocess
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable

import torch

from ._dispatch import available_backends, use_backend
from ._sampling import multinomial, sample_from_logits
from ._softmax import softmax

__all__ = [
    "SAMPLING_SHAPES",
    "SHAPES",
    "Result",
    "environment",
    "format_table",
    "impl_label",
    "plot",
    "run_sampling_bench",
    "run_softmax_bench",
    "write_csv",
]

SHAPES = [(1, 152_064), (64, 152_064), (256, 32_000), (4096, 4096), (16_384, 64)]  # the last: attention rows
SAMPLING_SHAPES = [(1, 152_064), (64, 152_064), (256, 32_000)]


# How the package's backends are named in tables, CSV rows and plots: never a bare "torch", which reads
# as the torch.softmax baseline.
_IMPL_LABELS = {"cpp": "stablesoftmax[cpp]", "triton": "stablesoftmax[triton]", "torch": "stablesoftmax[torch-ops]"}


def impl_label(backend: str) -> str:
    return _IMPL_LABELS.get(backend, backend)


@dataclass
class Result:
    device: str
    op: str
    shape: str
    dtypes: str
    impl: str
    ms: float  # the median (p50)
    gbps: float
    speedup_vs_torch: float
    ms_copy: float
    ms_p20: float = float("nan")
    ms_p80: float = float("nan")


def _quantiles(times: list[float]) -> tuple[float, float, float]:
    t = torch.tensor(times, dtype=torch.float64)
    q = torch.quantile(t, torch.tensor([0.2, 0.5, 0.8], dtype=torch.float64))
    return float(q[0]), float(q[1]), float(q[2])


def _timer(fn: Callable[[], object], device: torch.device, min_run_time: float) -> tuple[float, float, float]:
    """(p20, p50, p80) milliseconds per call of ``fn``."""
    if device.type == "cuda":
        import triton.testing

        rep = max(int(min_run_time * 1000), 50)
        q = triton.testing.do_bench(fn, warmup=25, rep=rep, quantiles=[0.2, 0.5, 0.8])
        return float(q[0]), float(q[1]), float(q[2])
    from torch.utils import benchmark

    fn()  # warm up (first-call dispatch, thread pool start)
    measurement = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    m = measurement.blocked_autorange(min_run_time=min_run_time)
    p20, p50, p80 = _quantiles(m.times) if len(m.times) > 1 else (m.median,) * 3
    return p20 * 1e3, p50 * 1e3, p80 * 1e3


def cpu_model() -> str:
    """The CPU's marketing name (``/proc/cpuinfo`` on Linux), else what :mod:`platform` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith(("model name", "Model", "Hardware")) and ":" in line:
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    if platform.system() == "Darwin":
        try:
            cmd = ["sysctl", "-n", "machdep.cpu.brand_string"]
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=5)
            if out.returncode == 0 and out.stdout.strip():
                return out.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model()} x{torch.get_num_threads()} threads"


def _git_commit() -> str:
    """The commit of the source tree the package was imported from ('' for an installed copy)."""
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return ""
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return ""
    if out.returncode != 0:
        return ""
    return out.stdout.strip() + ("+dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")


def environment(device: torch.device) -> dict[str, str]:
    """Where a benchmark ran: recorded in every CSV row."""
    from . import __version__

    try:
        from . import _C

        isa = str(_C.cpu_features().get("isa", ""))
        thread_runtime = str(_C.thread_runtime()[0])
    except ImportError:
        isa = "none (no C++ extension)"
        thread_runtime = ""
    gpu = torch.cuda.get_device_name(device if device.type == "cuda" else None) if torch.cuda.is_available() else ""
    return {
        "package_version": __version__,
        "git_commit": _git_commit(),
        "torch_version": torch.__version__,
        "cpu_model": cpu_model(),
        "isa": isa,
        "threads": str(torch.get_num_threads()),
        "cpu_thread_runtime": thread_runtime,
        "gpu": gpu,
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _backends_for(device: torch.device) -> list[str]:
    statuses = available_backends()
    names = ["triton", "torch"] if device.type == "cuda" else ["cpp", "torch"]
    return [n for n in names if statuses[n].available]


def missing_backends(device: torch.device) -> list[str]:
    """The backends that would be timed on ``device`` but cannot run here, with the reason."""
    statuses = available_backends()
    names = ["triton"] if device.type == "cuda" else ["cpp"]
    return [f"{n}: {statuses[n].reason}" for n in names if not statuses[n].available]


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
        for out_dtype in (torch.float16, torch.float32):
            dtype_arg = None if out_dtype == torch.float16 else out_dtype
            # the memory floor: a new tensor of the output's dtype from one read of the input
            copy_ms = _timer(lambda x=x, o=out_dtype: x.to(o, copy=True), device, min_run_time)[1]
            bytes_moved = x.numel() * (x.element_size() + out_dtype.itemsize)
            b20, base_ms, b80 = _timer(lambda x=x, d=dtype_arg: torch.softmax(x, -1, dtype=d), device, min_run_time)
            label = f"float16->{str(out_dtype).replace('torch.', '')}"
            results.append(Result(str(device.type), "softmax", f"{rows}x{cols}", label, "torch.softmax",
                                  base_ms, bytes_moved / base_ms / 1e6, 1.0, copy_ms, b20, b80))  # fmt: skip
            for name in _backends_for(device):
                with use_backend(name):
                    p20, ms, p80 = _timer(lambda x=x, d=dtype_arg: softmax(x, -1, dtype=d), device, min_run_time)
                results.append(Result(str(device.type), "softmax", f"{rows}x{cols}", label, impl_label(name),
                                      ms, bytes_moved / ms / 1e6, base_ms / ms, copy_ms, p20, p80))  # fmt: skip
        if rows == 1 and device.type == "cpu":
            results += _interleaved_bench(x, device, min_run_time)
        if cols <= 512:
            results += _causal_bench(x, device, min_run_time)
    return results


def _compare(
    shape: str, label: str, baseline: Callable[[], object], ours: Callable[[], object], bytes_moved: int,
    device: torch.device, min_run_time: float, floor_ms: float = float("nan"),
) -> list[Result]:  # fmt: skip
    """One softmax case: torch's ``baseline`` and ``ours`` on every backend for ``device``, ratios against the first."""
    b20, base_ms, b80 = _timer(baseline, device, min_run_time)
    results = [Result(str(device.type), "softmax", shape, label, "torch.softmax", base_ms, bytes_moved / base_ms / 1e6,
                      1.0, floor_ms, b20, b80)]  # fmt: skip
    for name in _backends_for(device):
        with use_backend(name):
            p20, ms, p80 = _timer(ours, device, min_run_time)
        results.append(Result(str(device.type), "softmax", shape, label, impl_label(name), ms, bytes_moved / ms / 1e6,
                              base_ms / ms, floor_ms, p20, p80))  # fmt: skip
    return results


def _interleaved_bench(x: torch.Tensor, device: torch.device, min_run_time: float) -> list[Result]:
    """Softmax of one decoding row, each call followed by a torch op (``x.float()``), as in a patched model: the
    pair's time shows whether our threads and torch's compete for the cores after a call."""
    return _compare(f"{x.shape[0]}x{x.shape[1]}", "float16->float16, then x.float()",
                    lambda: (torch.softmax(x, -1), x.float()), lambda: (softmax(x, -1), x.float()),
                    x.numel() * 2 * x.element_size(), device, min_run_time)  # fmt: skip


def _causal_bench(x: torch.Tensor, device: torch.device, min_run_time: float) -> list[Result]:
    """Attention rows under a causal mask (``-inf`` above the diagonal of each ``cols x cols`` block of rows), as
    eager attention computes them: most vectors then hold masked entries, whose exponentials are 0."""
    rows, cols = x.shape
    q = torch.arange(rows, device=device)[:, None] % cols
    masked = x.masked_fill(torch.arange(cols, device=device)[None, :] > q, -float("inf"))
    return _compare(f"{rows}x{cols}", "float16->float16, causal mask", lambda: torch.softmax(masked, -1),
                    lambda: softmax(masked, -1), masked.numel() * 2 * masked.element_size(), device,
                    min_run_time)  # fmt: skip


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
        # constrained decoding (a grammar or JSON schema): 90% of the vocabulary masked with -inf
        allowed = torch.rand(rows, cols, generator=torch.Generator().manual_seed(0)).to(device) < 0.1
        constrained = x.masked_fill(~allowed, -float("inf"))
        cases = [
            ("temperature 0.7", lambda x=x: _torch_temperature_sampling(x, 0.7), "torch softmax+multinomial",
             lambda x=x: sample_from_logits(x, temperature=0.7, validate=False), x),
            ("temperature 0.7, 90% -inf", lambda x=constrained: _torch_temperature_sampling(x, 0.7),
             "torch softmax+multinomial", lambda x=constrained: sample_from_logits(x, temperature=0.7, validate=False),
             constrained),
            ("top_k 50 top_p 0.9", lambda x=x: _transformers_top_k_top_p(x, 0.7, 50, 0.9), "transformers pipeline",
             lambda x=x: sample_from_logits(x, temperature=0.7, top_k=50, top_p=0.9, validate=False), x),
            ("multinomial", lambda p=probs: torch.multinomial(p, 1), "torch.multinomial",
             lambda p=probs: multinomial(p, 1), probs),
            ("multinomial 4 no repl.", lambda p=probs: torch.multinomial(p, 4), "torch.multinomial",
             lambda p=probs: multinomial(p, 4), probs),
        ]  # fmt: skip
        for label, baseline, baseline_name, ours, data in cases:
            bytes_read = data.numel() * data.element_size()
            b20, base_ms, b80 = _timer(baseline, device, min_run_time)
            results.append(Result(str(device.type), "sampling", f"{rows}x{cols}", label, baseline_name,
                                  base_ms, bytes_read / base_ms / 1e6, 1.0, float("nan"), b20, b80))  # fmt: skip
            for name in _backends_for(device):
                with use_backend(name):
                    p20, ms, p80 = _timer(ours, device, min_run_time)
                results.append(Result(str(device.type), "sampling", f"{rows}x{cols}", label, impl_label(name),
                                      ms, bytes_read / ms / 1e6, base_ms / ms, float("nan"), p20, p80))  # fmt: skip
    return results


def format_table(results: list[Result]) -> str:
    """A fixed-width text table of the results."""
    header = (f"{'shape':>14} {'case':>19} {'impl':>26} {'ms':>9} {'GB/s':>7} {'vs torch':>9} {'floor ms':>9} "
              f"{'vs floor':>9}")  # fmt: skip
    lines = [header, "-" * len(header)]
    for r in results:
        lines.append(
            f"{r.shape:>14} {r.dtypes:>19} {r.impl:>26} {r.ms:>9.3f} {r.gbps:>7.1f} "
            f"{r.speedup_vs_torch:>8.2f}x {r.ms_copy:>9.3f} {r.ms / r.ms_copy:>8.2f}x"
        )
    return "\n".join(lines)


# The columns that say which measurement a CSV row is: measuring it again replaces the row.
KEY_COLUMNS = ("op", "shape", "dtypes", "impl", "device", "cpu_model", "gpu", "isa", "threads", "cpu_thread_runtime",
               "torch_version", "package_version", "git_commit")  # fmt: skip


def _columns() -> list[str]:
    env = ["package_version", "git_commit", "torch_version", "cpu_model", "isa", "threads", "cpu_thread_runtime", "gpu",
           "timestamp"]  # fmt: skip
    return [f.name for f in fields(Result)] + env


def write_csv(results: list[Result], path: str | os.PathLike[str], env: dict[str, str]) -> int:
    """Merge ``results`` (measured in ``env``) into the CSV at ``path``; returns the number of rows written.

    Rows already there with the same :data:`KEY_COLUMNS` are replaced, others are kept, new ones appended.
    """
    columns = _columns()
    rows: dict[tuple[str, ...], dict[str, str]] = {}
    path = Path(path)
    if path.exists():
        with open(path, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                full = {c: row.get(c) or "" for c in columns}
                rows[tuple(full[c] for c in KEY_COLUMNS)] = full
    for r in results:
        full = {c: str(v) for c, v in {**asdict(r), **env}.items()}
        rows[tuple(full[c] for c in KEY_COLUMNS)] = full
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows.values())
    os.replace(tmp, path)
    return len(rows)


# One colour per implementation, whatever subset a plot shows (baselines grey, the package's backends coloured).
_COLOURS = {
    "stablesoftmax[cpp]": "#1f77b4",
    "stablesoftmax[triton]": "#2ca02c",
    "stablesoftmax[torch-ops]": "#ff7f0e",
    "torch.softmax": "#7f7f7f",
    "torch softmax+multinomial": "#7f7f7f",
    "transformers pipeline": "#a0a0a0",
    "torch.multinomial": "#7f7f7f",
}
_ORDER = list(_COLOURS)


def plot(results: list[Result], title: str, path: str | os.PathLike[str], speedup: bool = False) -> None:
    """A grouped bar chart (GB/s, or speed-up over the baseline on a log scale): legend outside the bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if speedup:  # the baselines are the line at 1x (their names differ per case: one bar series each would gap)
        results = [r for r in results if r.impl in _IMPL_LABELS.values()]
    groups = list(dict.fromkeys((r.shape, r.dtypes) for r in results))  # in the order measured
    impls = sorted({r.impl for r in results}, key=lambda name: _ORDER.index(name) if name in _ORDER else len(_ORDER))
    fig, ax = plt.subplots(figsize=(max(8.0, 1.6 * len(groups) + 3), 4.8))
    width = 0.8 / max(len(impls), 1)
    for i, impl in enumerate(impls):
        value = (lambda r: r.speedup_vs_torch) if speedup else (lambda r: r.gbps)
        heights = [next((value(r) for r in results if (r.shape, r.dtypes, r.impl) == (*g, impl)), 0) for g in groups]
        ax.bar([j + i * width for j in range(len(groups))], heights, width, label=impl, color=_COLOURS.get(impl))
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(groups))])
    ax.set_xticklabels([f"{s}\n{d}" for s, d in groups], fontsize=8, rotation=30, ha="right")
    if speedup:
        ax.set_yscale("log")
        ax.axhline(1.0, color="black", linewidth=0.8, label="baseline (torch / transformers), 1x")
        ax.set_ylabel("speed-up over the baseline (x), higher is better")
    else:
        ax.set_ylabel("effective GB/s (read + write), higher is better")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)

"""Full benchmark: every backend against torch (softmax, then sampling); CSV and PNG under bench/results/.

Usage: ``python bench/bench_softmax.py [--device cpu|cuda] [--min-run-time 1.0] [--only softmax|sampling]``.
See bench/README.md for the method.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import torch

from stablesoftmax._bench import (
    SAMPLING_SHAPES,
    SHAPES,
    device_name,
    format_table,
    run_sampling_bench,
    run_softmax_bench,
    write_csv,
)

RESULTS = Path(__file__).parent / "results"


def plot(results, title: str, path: Path, speedup: bool = False) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({(r.shape, r.dtypes) for r in results}, key=lambda g: (g[1], SHAPES_ORDER.get(g[0], 0)))
    impls = sorted({r.impl for r in results}, key=lambda name: name not in ("cpp", "triton", "torch"))
    fig, ax = plt.subplots(figsize=(max(8, 1.3 * len(groups)), 4.5))
    width = 0.8 / len(impls)
    for i, impl in enumerate(impls):
        value = (lambda r: r.speedup_vs_torch) if speedup else (lambda r: r.gbps)
        heights = [next((value(r) for r in results if (r.shape, r.dtypes, r.impl) == (*g, impl)), 0) for g in groups]
        ax.bar([j + i * width for j in range(len(groups))], heights, width, label=impl)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(groups))])
    ax.set_xticklabels([f"{s}\n{d}" for s, d in groups], fontsize=8)
    if speedup:
        ax.set_yscale("log")
        ax.set_ylabel("speed-up over the torch baseline (x)")
    else:
        ax.set_ylabel("effective GB/s (read + write)")
    ax.set_title(title, fontsize=10)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


SHAPES_ORDER = {f"{r}x{c}": i for i, (r, c) in enumerate(SHAPES)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--min-run-time", type=float, default=1.0)
    parser.add_argument("--only", choices=["softmax", "sampling"], help="run one half only")
    args = parser.parse_args()
    device = torch.device(args.device)
    name = device_name(device)
    slug = re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_").lower()
    RESULTS.mkdir(exist_ok=True)
    for op, run, shapes in [("softmax", run_softmax_bench, SHAPES), ("sampling", run_sampling_bench, SAMPLING_SHAPES)]:
        if args.only not in (None, op):
            continue
        results = run(device, shapes, args.min_run_time)
        title = f"{op} on {name}, torch {torch.__version__}"
        print(title)
        print(format_table(results))
        stem = RESULTS / f"{op}_{slug}"
        write_csv(results, f"{stem}.csv")
        plot(results, title, Path(f"{stem}.png"), speedup=op == "sampling")
        print(f"wrote {stem}.csv and .png")


if __name__ == "__main__":
    main()

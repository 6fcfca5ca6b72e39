"""Full benchmark: every backend against torch (softmax, then sampling); prints the tables, and writes CSV and PNG
into the directory given with ``--out DIR``, or into the committed ``bench/results/`` with ``--update-results``.

Usage: ``python bench/bench_softmax.py [--device cpu|cuda] [--min-run-time 1.0] [--only softmax|sampling]
[--out DIR | --update-results]``. See bench/README.md for the method and the CSV columns.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import torch

import stablesoftmax
from stablesoftmax._bench import (
    SAMPLING_SHAPES,
    SHAPES,
    device_name,
    environment,
    format_table,
    missing_backends,
    plot,
    run_sampling_bench,
    run_softmax_bench,
    write_csv,
)

RESULTS = Path(__file__).parent / "results"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--min-run-time", type=float, default=1.0)
    parser.add_argument("--only", choices=["softmax", "sampling"], help="run one half only")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--out", metavar="DIR", type=Path, help="write CSV (merged with earlier runs) and PNG here")
    where.add_argument("--update-results", action="store_true", help=f"write into the committed {RESULTS}")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"error: --device {args.device}: no CUDA device is visible here", file=sys.stderr)
        return 2
    out = RESULTS if args.update_results else args.out
    name = device_name(device)
    slug = re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_").lower()
    env = environment(device)
    for missing in missing_backends(device):
        print(f"note: no rows for backend {missing}")
    for op, run, shapes in [("softmax", run_softmax_bench, SHAPES), ("sampling", run_sampling_bench, SAMPLING_SHAPES)]:
        if args.only not in (None, op):
            continue
        results = run(device, shapes, args.min_run_time)
        title = f"{op} on {name}, torch {torch.__version__}, stablesoftmax {stablesoftmax.__version__}"
        print(title)
        print(format_table(results))
        if out is None:
            continue
        out.mkdir(parents=True, exist_ok=True)
        stem = out / f"{op}_{slug}"
        rows = write_csv(results, f"{stem}.csv", env)
        plot(results, title, Path(f"{stem}.png"), speedup=op == "sampling")
        print(f"wrote {stem}.csv ({rows} rows) and {stem}.png")
    if out is None:
        print("(nothing written: pass --out DIR, or --update-results for bench/results/)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Command line: ``python -m stablesoftmax info | bench | demo``."""

from __future__ import annotations

import argparse
import platform
import sys

import torch


def _info() -> int:
    import stablesoftmax as ss

    print(f"stablesoftmax {ss.__version__}  torch {torch.__version__}  python {platform.python_version()}")
    try:
        import triton

        print(f"triton {triton.__version__}")
    except ImportError:
        print("triton: not installed")
    try:
        from stablesoftmax import _C

        features = _C.cpu_features()
        print("cpu: " + ", ".join(f"{k}={v}" for k, v in features.items()) + f", threads={torch.get_num_threads()}")
    except ImportError:
        print(f"cpu: {platform.processor() or platform.machine()} (C++ extension not built)")
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none visible"
    print(f"gpu: {gpu}")
    print("backends:")
    for status in ss.available_backends().values():
        print(f"  {status}")
    for device in ["cpu"] + (["cuda"] if torch.cuda.is_available() else []):
        print(f"  automatic choice for {device} tensors: {ss.backend_for(device)}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from ._bench import SAMPLING_SHAPES, SHAPES, device_name, format_table, run_sampling_bench, run_softmax_bench

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    run_time = 0.5 if args.full else 0.2
    print(f"benchmark on {device_name(device)}, torch {torch.__version__} (median ms; ratios from this run)")
    print("\nsoftmax (float16 input):")
    print(format_table(run_softmax_bench(device, SHAPES if args.full else SHAPES[:3], run_time)))
    print("\nsampling (float16 logits, one token per row):")
    print(format_table(run_sampling_bench(device, SAMPLING_SHAPES if args.full else SAMPLING_SHAPES[:1], run_time)))
    return 0


def _demo() -> int:
    import stablesoftmax as ss

    inf = float("inf")
    # Float16 logits as an overflowing model produces them: one activation hit +inf, one row fully masked.
    logits = torch.tensor(
        [[2.0, inf, 1.0, -inf], [-inf, -inf, -inf, -inf], [65504.0, 65504.0, 1.0, 0.0]], dtype=torch.float16
    )
    print("float16 logits (row 0: an overflowed activation; row 1: every token masked; row 2: at the float16 limit):")
    print(logits)
    print("\ntorch.softmax:")
    print(torch.softmax(logits, -1))
    print("\nstablesoftmax.softmax (the limits of softmax; masks stay masked):")
    print(ss.softmax(logits, -1))
    print("\ntorch.log_softmax:")
    print(torch.log_softmax(logits, -1))
    print("\nstablesoftmax.log_softmax:")
    print(ss.log_softmax(logits, -1))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stablesoftmax", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions, CPU features, GPU, backends and why each is (not) available")
    bench = sub.add_parser("bench", help="time each backend against torch softmax and sampling on built-in data")
    bench.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    bench.add_argument("--full", action="store_true", help="all shapes, longer timing")
    sub.add_parser("demo", help="what torch answers for overflowed float16 logits, and what stablesoftmax answers")
    args = parser.parse_args(argv)
    if args.command == "info":
        return _info()
    if args.command == "bench":
        return _bench(args)
    return _demo()


if __name__ == "__main__":
    sys.exit(main())

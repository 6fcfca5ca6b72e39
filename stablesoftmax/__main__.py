"""Command line: ``python -m stablesoftmax info | bench | demo | diagnose FILE``.

``diagnose`` exits with 0 when every row of every tensor is fine, 1 when some row holds NaN or
``+inf`` or is fully masked (like a linter), and 2 for usage and file errors.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import torch


def _versions() -> str:
    """Versions of the optional companions, read from the installed metadata (nothing is imported)."""
    from importlib import metadata

    found = []
    for name in ("numpy", "transformers", "safetensors"):
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            found.append(f"{name}: not installed")
    return ", ".join(found)


def _devices() -> list[str]:
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices.append("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append("mps")
    xpu = getattr(torch, "xpu", None)
    if xpu is not None and xpu.is_available():
        devices.append("xpu")
    return devices


def _info() -> int:
    import stablesoftmax as ss

    print(f"stablesoftmax {ss.__version__}  torch {torch.__version__}  python {platform.python_version()}")
    try:
        import triton

        print(f"triton {triton.__version__}")
    except ImportError:
        print("triton: not installed")
    print(_versions())
    from ._bench import cpu_model

    try:
        from stablesoftmax import _C

        features = _C.cpu_features()
        print(
            f"cpu: {cpu_model()}: " + ", ".join(f"{k}={v}" for k, v in features.items())
            + f", threads={torch.get_num_threads()}"
        )  # fmt: skip
        runtime, why = _C.thread_runtime()
        print(f"cpu threads: {runtime} ({why})")
    except ImportError as exc:
        print(f"cpu: {cpu_model()} (C++ extension not importable: {exc})")
    if ss.EXTENSION_NOTE:
        print(f"note: {ss.EXTENSION_NOTE}")
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none visible"
    print(f"gpu: {gpu}")
    print("backends:")
    for status in ss.available_backends().values():
        print(f"  {status}")
    for device in _devices():
        try:
            choice = f"softmax {ss.backend_for(device)}, sampling {ss.backend_for(device, 'sampling')}"
        except ss.StableSoftmaxError as exc:
            choice = f"none ({exc})"
        print(f"  automatic choice for {device} tensors: {choice}")
    return 0


def _bench_device(name: str | None) -> torch.device:
    """The device to benchmark on; a :class:`_UsageError` for a typo or a device this machine does not have."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as exc:
        raise _UsageError(f"--device {name!r} is not a device ({_first_line(exc)}); use cpu or cuda") from None
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise _UsageError(f"--device {name}: no CUDA device is visible here (torch {torch.__version__}); use cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise _UsageError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) visible")
        return device
    raise _UsageError(f"--device {name}: the benchmark runs on cpu or cuda, not {device.type}")


def _out_dir(path: str) -> Path:
    """The directory to write into; never the committed bench/results/ of the source tree."""
    out = Path(path).expanduser()
    committed = Path(__file__).resolve().parent.parent / "bench" / "results"
    # Also a checkout's bench/results/ when this is an installed copy (a wheel) run in or on a clone.
    where = out.resolve()
    in_checkout = where.parts[-2:] == ("bench", "results") and (where.parents[1] / "stablesoftmax").is_dir()
    if where == committed.resolve() or in_checkout:
        raise _UsageError(
            f"--out {path}: that is the committed bench/results/; to update it on purpose run "
            "python bench/bench_softmax.py --update-results"
        )
    if out.exists() and not out.is_dir():
        raise _UsageError(f"--out {path}: exists and is not a directory")
    return out


def _bench(args: argparse.Namespace) -> int:
    import stablesoftmax as ss

    from . import _bench as b

    try:
        device = _bench_device(args.device)
        out = None if args.out is None else _out_dir(args.out)
    except _UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    run_time = 0.5 if args.full else 0.2
    print(f"benchmark on {b.device_name(device)}, torch {torch.__version__} (median ms; ratios from this run)")
    if ss.EXTENSION_NOTE:
        print(f"note: {ss.EXTENSION_NOTE}")
    for missing in b.missing_backends(device):
        print(f"note: no rows for backend {missing}")
    env = b.environment(device)
    halves = [
        ("softmax", "softmax (float16 input):", b.run_softmax_bench, b.SHAPES if args.full else b.SHAPES[:3]),
        ("sampling", "sampling (float16 logits, one token per row):", b.run_sampling_bench,
         b.SAMPLING_SHAPES if args.full else b.SAMPLING_SHAPES[:1]),
    ]  # fmt: skip
    for op, heading, run, shapes in halves:
        results = run(device, shapes, run_time)
        print(f"\n{heading}")
        print(b.format_table(results))
        if out is None:
            continue
        out.mkdir(parents=True, exist_ok=True)
        csv_path = out / f"{op}.csv"
        rows = b.write_csv(results, csv_path, env)
        written = f"wrote {csv_path} ({rows} rows)"
        try:
            title = f"{op} on {b.device_name(device)}, torch {torch.__version__}, stablesoftmax {ss.__version__}"
            b.plot(results, title, out / f"{op}_{device.type}.png", speedup=op == "sampling")
            written += f" and {out / f'{op}_{device.type}.png'}"
        except ImportError:
            written += " (no plot: pip install matplotlib)"
        print(written)
    if out is None:
        print("\n(pass --out DIR to keep the results: a CSV per half, merged with earlier runs, and a plot)")
    return 0


def _first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def _wrapped(exc: BaseException) -> str:
    return textwrap.fill(f"{type(exc).__name__}: {exc}", width=110, initial_indent="  ", subsequent_indent="    ")


def _print_rows(t: torch.Tensor) -> None:
    for i, row in enumerate(t.tolist()):
        print(f"  row {i}: [" + ", ".join(f"{v:.4g}" for v in row) + "]")


def _demo() -> int:
    import stablesoftmax as ss

    inf = float("inf")
    gen = torch.Generator().manual_seed(0)
    # Float16 logits as an overflowing model produces them, over a vocabulary of 6 tokens.
    logits = (torch.randn(3, 6, generator=gen) * 3).to(torch.float16)
    logits[0, [2, 4]] = inf  # activations that overflowed float16's 65504
    logits[1] = -inf  # a logits processor masked every token
    logits[2, [1, 4]] = 64992.0  # close to the float16 limit
    print("float16 logits (row 0: activations overflowed to +inf; row 1: every token masked by a logits processor;")
    print(f"row 2: close to the float16 limit 65504), torch {torch.__version__}, seed 0:")
    _print_rows(logits)

    print("\n(1) torch.softmax(logits.float(), -1), then torch.multinomial(probs, 1)")
    _print_rows(torch.softmax(logits.float(), -1))
    try:
        torch.multinomial(torch.softmax(logits.float(), -1), 1, generator=gen)
    except RuntimeError as exc:
        print(f"  {_first_line(exc)}")
    print("stablesoftmax.softmax(logits, -1): the limits of softmax, masks stay masked")
    _print_rows(ss.softmax(logits, -1))
    rows = [0, 2]
    tokens = ss.sample_from_logits(logits[rows], 4, generator=gen)
    print(f"stablesoftmax.sample_from_logits(logits[{rows}], 4): {tokens.tolist()}")
    drawn = ss.multinomial(ss.softmax(logits[rows], -1), 4, replacement=True, generator=gen)
    print(f"stablesoftmax.multinomial(stablesoftmax.softmax(logits[{rows}], -1), 4): {drawn.tolist()}")
    try:
        ss.sample_from_logits(logits, generator=gen)
    except ss.StableSoftmaxError as exc:
        print("on all rows (row 1 has nothing to sample):")
        print(_wrapped(exc))

    cool = torch.tensor([[3.0, 7.5, 1.0, 2.0, -1.0, 0.5]], dtype=torch.float16)
    print(f"\n(2) temperature 1e-4 on float16 logits {cool.flatten().tolist()}")
    print(f"torch.softmax(logits / 1e-4, -1) in float16: {torch.softmax(cool / 1e-4, -1).flatten().tolist()}")
    greedy = ss.sample_from_logits(cool, 1, temperature=1e-4, generator=gen)
    print(f"stablesoftmax.sample_from_logits(logits, temperature=1e-4): {greedy.tolist()} (the argmax)")

    upstream = torch.tensor([[1.0, inf, 2.0, 0.5, -1.0, 1.5]], dtype=torch.float16)
    broken = upstream - upstream.max()  # what a model computes after an overflow: inf - inf = NaN
    print(f"\n(3) a NaN row (x - max after an overflow, inf - inf): {broken.flatten().tolist()}")
    try:
        ss.sample_from_logits(broken, generator=gen)
    except ss.StableSoftmaxError as exc:
        print(_wrapped(exc))
    print(
        "\nFind such rows in saved tensors: python -m stablesoftmax diagnose logits.pt (or stablesoftmax.diagnose(x))"
    )
    return 0


def _label(prefix: str, key: object) -> str:
    return f"{prefix}[{key}]" if isinstance(key, int) else (f"{prefix}.{key}" if prefix else str(key))


def _flatten(obj: object, prefix: str = "") -> Iterator[tuple[str, object]]:
    """(label, leaf) pairs of nested dicts / lists / tuples: keys for dict entries, [i] for sequence items."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield from _flatten(value, _label(prefix, key))
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield from _flatten(value, _label(prefix, i))
    else:
        yield prefix, obj


class _UsageError(Exception):
    """A file or usage problem: one line on stderr, exit status 2."""


def _load(path: str) -> object:
    """The tensor(s) in a .pt / .pth / .npy / .npz / .safetensors file."""
    if os.path.isdir(path):
        raise _UsageError(f"{path}: is a directory; pass a tensor file in it (.pt, .pth, .npy, .npz, .safetensors)")
    if not os.path.exists(path):
        raise _UsageError(f"{path}: no such file")
    if not os.path.isfile(path):
        raise _UsageError(f"{path}: not a regular file")
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in (".pt", ".pth", ".npy", ".npz", ".safetensors"):
        raise _UsageError(
            f"{path}: unsupported file type {suffix or '(none)'!r}; expected .pt, .pth, .npy, .npz or .safetensors"
        )
    try:
        if suffix in (".pt", ".pth"):
            return torch.load(path, map_location="cpu", weights_only=True)
        if suffix in (".npy", ".npz"):
            try:
                import numpy
            except ImportError:
                raise _UsageError(f"{path}: reading {suffix} files needs NumPy: pip install numpy") from None
            try:
                loaded = numpy.load(path, allow_pickle=False)
            except ValueError as exc:
                if "allow_pickle" not in str(exc):
                    raise
                if _pickled_array(path, numpy):  # a real object array: only pickle could read it
                    raise _UsageError(
                        f"{path}: holds Python objects (an object array), not numbers; it cannot be read without "
                        "unpickling, which runs code from the file: save a numeric array instead"
                    ) from None
                raise _UsageError(f"{path}: cannot read: not a NumPy {suffix} file (no valid header)") from None
            if isinstance(loaded, numpy.ndarray):
                return torch.from_numpy(loaded)
            with loaded:
                return {name: torch.from_numpy(loaded[name]) for name in loaded.files}
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise _UsageError(
                f"{path}: reading .safetensors files needs the safetensors package: pip install safetensors"
            ) from None
        return load_file(path)
    except _UsageError:
        raise
    except Exception as exc:  # any reader's error: name the file, say why, no traceback
        raise _UsageError(f"{path}: cannot read: {_reason(exc)}") from exc


def _pickled_array(path: str, numpy: object) -> bool:
    """Whether a file numpy refused without pickling is a genuine .npy of Python objects (not garbage)."""
    fmt = numpy.lib.format  # type: ignore[attr-defined]
    try:
        with open(path, "rb") as f:
            version = fmt.read_magic(f)
            read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            _, _, dtype = read(f, max_header_size=1 << 20)
        return bool(dtype.hasobject)
    except Exception:  # not a .npy header at all (an .npz is a zip: numpy names the member)
        return path.lower().endswith(".npz")


def _reason(exc: BaseException) -> str:
    """One line out of a reader's error; torch.load's weights-only errors bury the reason mid-message."""
    text = str(exc).strip()
    marker = "WeightsUnpickler error:"
    if marker in text:
        detail = text.split(marker, 1)[1].strip().splitlines()[0].split(". ")[0].rstrip(".")
        return (
            f"torch.load(weights_only=True) refused it ({detail}); only tensors and plain containers of tensors "
            "are read: save the tensor or a state_dict"
        )
    return text.splitlines()[0] if text else type(exc).__name__


def _diagnose(args: argparse.Namespace) -> int:
    from ._diagnose import diagnose

    try:
        loaded = _load(args.file)
        name = os.path.basename(args.file)
        if isinstance(loaded, torch.Tensor):
            if args.key is not None:
                raise _UsageError(f"{args.file}: holds a single tensor; --key {args.key!r} does not apply")
            targets = [(name, loaded)]
        else:
            leaves = [(label, leaf) for label, leaf in _flatten(loaded) if isinstance(leaf, torch.Tensor)]
            if args.key is not None:
                chosen = [(label, leaf) for label, leaf in leaves if label == args.key]
                if not chosen:
                    known = ", ".join(label for label, _ in leaves[:10]) + (", ..." if len(leaves) > 10 else "")
                    raise _UsageError(f"{args.file}: no tensor under key {args.key!r} (tensors: {known or 'none'})")
                targets = chosen
            else:
                targets = [(label, leaf) for label, leaf in leaves if leaf.dtype.is_floating_point]
                if not targets:
                    raise _UsageError(f"{args.file}: no floating-point tensor found")
        reports = []
        for label, tensor in targets:
            try:
                reports.append((label, diagnose(tensor, args.dim)))
            except (IndexError, RuntimeError) as exc:
                where = f"{args.file}: " + (f"{label}: " if label != name else "")
                raise _UsageError(f"{where}{exc}") from exc
    except _UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for i, (label, report) in enumerate(reports):
        print(("\n" if i else "") + f"== {label}")
        print(report)
    bad = [label for label, report in reports if not report.ok]
    if len(reports) > 1:
        print(
            f"\n{len(reports)} tensors checked, {len(bad)} with bad rows" + (f": {', '.join(bad[:10])}" if bad else "")
        )
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stablesoftmax", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions, CPU features, GPU, backends and why each is (not) available")
    bench = sub.add_parser("bench", help="time each backend against torch softmax and sampling on built-in data")
    bench.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    bench.add_argument("--full", action="store_true", help="all shapes, longer timing")
    bench.add_argument(
        "--out", metavar="DIR", help="write softmax.csv / sampling.csv (merged with earlier runs) and plots into DIR"
    )
    sub.add_parser("demo", help="what torch answers for overflowed float16 logits, and what stablesoftmax answers")
    diag = sub.add_parser(
        "diagnose",
        help="per-row NaN / +inf / -inf counts and float16 headroom of saved tensors (exit 1 if any row is bad)",
        description="Report the rows softmax and sampling would choke on. Exit status: 0 every row fine, "
        "1 some row holds NaN or +inf or is fully masked, 2 usage or file error.",
    )
    diag.add_argument("file", help="a .pt / .pth (tensor, or dict / list of tensors), .npy, .npz or .safetensors file")
    diag.add_argument("--dim", type=int, default=-1, help="the row dimension, as for softmax (default -1)")
    diag.add_argument("--key", help="check only this tensor of a dict / list (nested: a.b, list items: [i])")
    args = parser.parse_args(argv)
    if args.command == "info":
        return _info()
    if args.command == "bench":
        return _bench(args)
    if args.command == "diagnose":
        return _diagnose(args)
    return _demo()


if __name__ == "__main__":
    sys.exit(main())

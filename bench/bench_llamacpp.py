"""stablesoftmax's ``sample_from_logits`` against llama.cpp's sampler chain on the same decoding row (1 x 152,064).

Usage: ``python bench/bench_llamacpp.py [--out DIR] [--build-dir /tmp/llamacpp-build] [--llama-src DIR]
[--runs 3] [--min-run-time 0.5] [--iters 2000] [--isa auto|avx2|scalar|...] [--profile]``

llama.cpp is a benchmark-only dependency built outside the repository on demand: ``--llama-src`` names a llama.cpp
source tree; without it the sources come from the llama-cpp-python sdist (``pip download --no-deps --no-binary
:all: llama-cpp-python``, its ``vendor/llama.cpp``), unpacked under the build directory. Only libllama and the ggml
CPU backend are built (static, Release, ``GGML_NATIVE=ON``), then ``bench/llamacpp_sampler.cpp`` is linked against
them. See bench/README.md for what is measured.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import torch

VOCAB = 152_064
SEED = 1234
HERE = Path(__file__).resolve().parent
DRIVER_SRC = HERE / "llamacpp_sampler.cpp"
DEFAULT_BUILD = Path(tempfile.gettempdir()) / "llamacpp-build"

# case -> sample_from_logits keyword arguments (the SPEC's order: temperature, then top-k, then top-p)
CASES = {
    "top_k40_top_p0.95_T0.8": {"temperature": 0.8, "top_k": 40, "top_p": 0.95},
    "temperature0.8": {"temperature": 0.8},
    "greedy": {"temperature": 0.0},
}
TARGET_CASE = "top_k40_top_p0.95_T0.8"
TARGET_RATIO = 3.0

# --profile: the target call taken apart, one parameter at a time (1 thread and all threads, float32 row)
PROFILE = {
    "profile:T0.8": {"temperature": 0.8},
    "profile:T0.8_top_k40": {"temperature": 0.8, "top_k": 40},
    "profile:T0.8_top_p0.95": {"temperature": 0.8, "top_p": 0.95},
    "profile:T0.8_top_k40_top_p0.95": {"temperature": 0.8, "top_k": 40, "top_p": 0.95},
    "profile:T0.8_top_k40_top_p0.95_validate": {"temperature": 0.8, "top_k": 40, "top_p": 0.95, "validate": True},
    "profile:T0.8_top_k1000_top_p0.95": {"temperature": 0.8, "top_k": 1000, "top_p": 0.95},
    "profile:greedy": {"temperature": 0.0},
}

COLUMNS = [
    "case", "impl", "variant", "dtype", "threads", "median_us", "p20_us", "p80_us", "ratio", "ratio_vs_chain_only",
    "runs", "isa", "cpu_model", "torch_version", "package_version", "git_commit", "timestamp", "note",
]  # fmt: skip
KEY = ("case", "impl", "variant", "dtype", "threads", "isa", "cpu_model")
NOTE = (
    "llama.cpp applies temperature after top-k/top-p, stablesoftmax (SPEC) before: a speed comparison on the same "
    "row, not the same distribution; ratio = llama.cpp chain+fill median / this row's median"
)


class BuildError(RuntimeError):
    pass


def _run(cmd: list[str], what: str, cwd: Path | None = None) -> str:
    try:
        out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    except OSError as e:
        raise BuildError(f"{what}: cannot run {cmd[0]}: {e}") from e
    if out.returncode != 0:
        tail = "\n".join((out.stdout + out.stderr).strip().splitlines()[-20:])
        raise BuildError(f"{what} failed (exit {out.returncode}): {' '.join(cmd)}\n{tail}")
    return out.stdout


def _cached_source(build_dir: Path) -> Path | None:
    cache = build_dir / "CMakeCache.txt"
    if not cache.exists():
        return None
    for line in cache.read_text(errors="replace").splitlines():
        if line.startswith("CMAKE_HOME_DIRECTORY:"):
            src = Path(line.split("=", 1)[1].strip())
            return src if (src / "include" / "llama.h").exists() else None
    return None


def _download_source(build_dir: Path) -> Path:
    """llama.cpp's sources from the llama-cpp-python sdist, unpacked under ``build_dir/_sdist``."""
    dl = build_dir / "_sdist"
    for tree in sorted(dl.glob("llama_cpp_python-*/vendor/llama.cpp")):
        if (tree / "include" / "llama.h").exists():
            return tree
    dl.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "llama-cpp-python"]
    cmd += ["-d", str(dl)]
    try:
        _run(cmd, "downloading the llama-cpp-python sdist")
    except BuildError as e:
        raise BuildError(f"{e}\nllama.cpp cannot be had: pass --llama-src DIR (a llama.cpp source tree)") from None
    archives = sorted(dl.glob("llama_cpp_python-*.tar.gz"))
    if not archives:
        raise BuildError(f"no llama_cpp_python-*.tar.gz in {dl} after pip download; pass --llama-src DIR")
    with tarfile.open(archives[-1]) as tar:
        tar.extractall(dl, filter="data")
    for tree in sorted(dl.glob("llama_cpp_python-*/vendor/llama.cpp")):
        if (tree / "include" / "llama.h").exists():
            return tree
    raise BuildError(f"{archives[-1].name} holds no vendor/llama.cpp/include/llama.h; pass --llama-src DIR")


def _libs(build_dir: Path) -> list[Path]:
    names = ["libllama.a", "libggml.a", "libggml-cpu.a", "libggml-base.a"]
    found = []
    for name in names:
        hits = sorted(build_dir.rglob(name))
        if not hits:
            return []
        found.append(hits[0])
    return found


def build_driver(build_dir: Path, llama_src: Path | None, jobs: int = 2) -> Path:
    """Builds libllama + ggml CPU (if missing) and the driver (if missing or older than its source)."""
    build_dir.mkdir(parents=True, exist_ok=True)
    src = llama_src or _cached_source(build_dir) or _download_source(build_dir)
    if not (src / "include" / "llama.h").exists():
        raise BuildError(f"{src} is not a llama.cpp source tree (no include/llama.h)")
    libs = _libs(build_dir)
    if not libs:
        if shutil.which("cmake") is None:
            raise BuildError("cmake is not on PATH: it is needed to build llama.cpp")
        print(f"building llama.cpp from {src} into {build_dir} (libllama + ggml CPU, static, Release)", flush=True)
        configure = [
            "cmake", "-S", str(src), "-B", str(build_dir), "-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=OFF",
            "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_COMMON=OFF", "-DLLAMA_BUILD_TESTS=OFF",
            "-DLLAMA_BUILD_TOOLS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=OFF",
            "-DLLAMA_BUILD_APP=OFF", "-DGGML_NATIVE=ON",
        ]  # fmt: skip
        _run(configure, "configuring llama.cpp")
        _run(["cmake", "--build", str(build_dir), "-j", str(jobs), "--target", "llama"], "building llama.cpp")
        libs = _libs(build_dir)
        if not libs:
            raise BuildError(f"llama.cpp built, but libllama.a / libggml*.a are not under {build_dir}")
    driver = build_dir / "llamacpp_sampler"
    if driver.exists() and driver.stat().st_mtime >= DRIVER_SRC.stat().st_mtime:
        return driver
    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if cxx is None:
        raise BuildError("no C++ compiler (set CXX)")
    # -O3 -march=native: the flags of the llama.cpp Release build with GGML_NATIVE (the refill loop is ours)
    includes = [f"-I{src / 'include'}", f"-I{src / 'ggml' / 'include'}"]
    link = [str(p) for p in libs] + ["-fopenmp", "-lpthread", "-ldl", "-lm"]
    cmd = [cxx, "-O3", "-march=native", "-std=c++17", *includes, str(DRIVER_SRC), "-o", str(driver), *link]
    _run(cmd, "building bench/llamacpp_sampler.cpp")
    return driver


def parse_driver_csv(text: str) -> list[dict[str, str]]:
    """The driver's CSV (``#`` lines are comments)."""
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    return list(csv.DictReader(lines))


def run_driver(driver: Path, logits_path: Path, iters: int, seed: int) -> list[dict[str, str]]:
    cmd = [str(driver), "--logits", str(logits_path), "--iters", str(iters), "--seed", str(seed)]
    out = _run(cmd, "llama.cpp driver")
    rows = parse_driver_csv(out)
    if not rows:
        raise BuildError(f"the llama.cpp driver printed no rows:\n{out}")
    return rows


def make_row(vocab: int = VOCAB, seed: int = SEED) -> torch.Tensor:
    """The decoding row both sides sample: float32 ``randn * 4`` (as bench_softmax.py's sampling logits)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, vocab, generator=g, dtype=torch.float32) * 4


def time_ours(x: torch.Tensor, kwargs: dict, threads: int, min_run_time: float) -> tuple[float, float, float]:
    """(p20, p50, p80) microseconds of one ``sample_from_logits`` call (stablesoftmax._bench's CPU timer)."""
    from stablesoftmax import sample_from_logits

    kw = {"validate": False, "seed": SEED, **kwargs}
    return time_fn(lambda: sample_from_logits(x, **kw), threads, min_run_time)


def kernel_only_fn(x: torch.Tensor, kwargs: dict):
    """The C++ kernel call that ``sample_from_logits`` makes, its arguments prepared once outside the timed span
    (profiling: the call minus Python's argument handling and the stream set-up)."""
    from stablesoftmax import _sampling

    rows, vocab = x.shape
    device = x.device
    temp, k_tensor, k_max, p_tensor, minp_tensor = _sampling._filter_params(
        kwargs.get("temperature", 1.0), kwargs.get("top_k"), kwargs.get("top_p"), kwargs.get("min_p"),
        rows, (rows,), device, vocab, False,
    )  # fmt: skip
    keys, row_ids, offsets = _sampling._random_stream(SEED, 0, None, rows, (rows,), device)
    kernels = _sampling.sampling_kernels_for(x)
    tokens = torch.empty((rows, 1), dtype=torch.int64)

    def call():
        kernels.sample_rows(x, temp, k_tensor, p_tensor, minp_tensor, keys, row_ids, offsets, 1, True, tokens, None,
                            top_k_max=k_max)  # fmt: skip
        return tokens

    return call


def time_fn(fn, threads: int, min_run_time: float) -> tuple[float, float, float]:
    """(p20, p50, p80) microseconds per call of ``fn`` on ``threads`` threads (stablesoftmax._bench's CPU timer)."""
    from stablesoftmax._bench import _timer

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        p20, p50, p80 = _timer(fn, torch.device("cpu"), min_run_time)
    finally:
        torch.set_num_threads(previous)
    return p20 * 1e3, p50 * 1e3, p80 * 1e3


def best_of(runs: list[list[dict]]) -> list[dict]:
    """Per key, the run with the lowest median (the machine is shared: the best of N is the least disturbed)."""
    best: dict[tuple, dict] = {}
    for rows in runs:
        for row in rows:
            k = (row["case"], row["impl"], row["variant"], row["dtype"], row["threads"])
            if k not in best or float(row["median_us"]) < float(best[k]["median_us"]):
                best[k] = dict(row)
    for row in best.values():
        row["runs"] = str(len(runs))
    return list(best.values())


def sort_rows(rows: list[dict]) -> list[dict]:
    """The cases in their order (profile rows last), llama.cpp first, then float32 before float16, by threads."""
    order = list(CASES) + list(PROFILE)

    def key(r: dict) -> tuple:
        case = r["case"]
        base = case.removeprefix("profile:")
        rank = order.index(case) if case in order else len(order)
        kind = 1 if case.startswith("profile:") else 0
        sub = next((i for i, c in enumerate(CASES) if base.startswith(c)), len(CASES))
        return (kind, rank, sub, case, r["impl"] != "llama.cpp", r["dtype"] != "float32", int(r["threads"]),
                r["variant"] != "chain+fill", r["variant"])  # fmt: skip

    return sorted(rows, key=key)


def add_ratios(rows: list[dict]) -> None:
    """ratio = llama.cpp chain+fill median / median; ratio_vs_chain_only: against llama.cpp's apply alone."""
    base = {r["case"]: float(r["median_us"]) for r in rows if r["impl"] == "llama.cpp" and r["variant"] == "chain+fill"}
    only = {r["case"]: float(r["median_us"]) for r in rows if r["impl"] == "llama.cpp" and r["variant"] == "chain"}
    for r in rows:
        med = float(r["median_us"])
        r["ratio"] = f"{base[r['case']] / med:.3f}" if r["case"] in base else ""
        r["ratio_vs_chain_only"] = f"{only[r['case']] / med:.3f}" if r["case"] in only else ""


def write_csv(rows: list[dict], path: Path, env: dict[str, str]) -> int:
    """Merges ``rows`` (plus ``env``) into ``path``: a row with the same key is replaced. Returns the row count."""
    new = [{c: str({**env, **r}.get(c, "")) for c in COLUMNS} for r in rows]
    keys = {tuple(r[k] for k in KEY) for r in new}
    kept = []
    if path.exists():
        with open(path, newline="", encoding="utf-8") as f:
            kept = [r for r in csv.DictReader(f) if tuple(r.get(k, "") for k in KEY) not in keys]
    merged = kept + new
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in merged:
            w.writerow({c: r.get(c, "") for c in COLUMNS})
    return len(merged)


def format_table(rows: list[dict]) -> str:
    head = (f"{'case':<42} {'impl':<20} {'variant':<14} {'dtype':<8} {'thr':>3} {'median us':>10} {'ratio':>7} "
            f"{'vs chain':>8}")  # fmt: skip
    lines = [head]
    for r in rows:
        lines.append(
            f"{r['case']:<42} {r['impl']:<20} {r['variant']:<14} {r['dtype']:<8} {r['threads']:>3} "
            f"{float(r['median_us']):>10.1f} {r.get('ratio', ''):>7} {r.get('ratio_vs_chain_only', ''):>8}"
        )
    return "\n".join(lines)


def _our_row(case: str, variant: str, dtype: str, threads: int, timing: tuple[float, float, float]) -> dict:
    p20, p50, p80 = timing
    return {
        "case": case, "impl": "stablesoftmax[cpp]", "variant": variant, "dtype": dtype, "threads": str(threads),
        "median_us": f"{p50:.3f}", "p20_us": f"{p20:.3f}", "p80_us": f"{p80:.3f}",
    }  # fmt: skip


def measure_once(driver: Path | None, logits_path: Path, x32: torch.Tensor, args: argparse.Namespace) -> list[dict]:
    rows: list[dict] = []
    if driver is not None:
        for r in run_driver(driver, logits_path, args.iters, SEED):
            rows.append({k: r[k] for k in ("case", "impl", "variant", "threads", "median_us", "p20_us", "p80_us")}
                        | {"dtype": "float32"})  # fmt: skip
    all_threads = torch.get_num_threads()
    thread_counts = sorted({1, all_threads})
    cases = dict(CASES)
    if args.profile:
        cases.update(PROFILE)
    if args.profile:  # the kernel alone (arguments prepared once), and the whole call on a tiny row (its overhead)
        for case, kwargs in CASES.items():
            for threads in thread_counts:
                timing = time_fn(kernel_only_fn(x32, kwargs), threads, args.min_run_time)
                rows.append(_our_row(f"profile:{case}_kernel_only", "validate=False", "float32", threads, timing))
        timing = time_ours(x32[:, :64].contiguous(), CASES[TARGET_CASE], 1, args.min_run_time)
        rows.append(_our_row(f"profile:{TARGET_CASE}_1x64_row", "validate=False", "float32", 1, timing))
    for dtype in (torch.float32, torch.float16):
        x = x32.to(dtype)
        for case, kwargs in cases.items():
            if case.startswith("profile:") and dtype != torch.float32:
                continue
            variant = "validate" if kwargs.get("validate") else "validate=False"
            for threads in thread_counts:
                timing = time_ours(x, kwargs, threads, args.min_run_time)
                rows.append(_our_row(case, variant, str(dtype).split(".")[-1], threads, timing))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--out", metavar="DIR", type=Path, help="write llamacpp_<cpu>.csv here (merged with earlier rows)"
    )
    parser.add_argument("--build-dir", type=Path, default=DEFAULT_BUILD, help="llama.cpp build (outside the repo)")
    parser.add_argument("--llama-src", type=Path, help="a llama.cpp source tree (default: the llama-cpp-python sdist)")
    parser.add_argument("--runs", type=int, default=1, help="repeat everything N times, keep each case's best median")
    parser.add_argument("--min-run-time", type=float, default=0.5, help="seconds per stablesoftmax timing")
    parser.add_argument("--iters", type=int, default=2000, help="timed llama.cpp iterations per chain")
    parser.add_argument("--isa", help="stablesoftmax's C++ ISA (_C.set_isa): auto, avx2, scalar, ...")
    parser.add_argument("--profile", action="store_true", help="also time the target call one parameter at a time")
    parser.add_argument("--jobs", type=int, default=2, help="parallel jobs for the llama.cpp build")
    parser.add_argument("--no-llamacpp", action="store_true", help="time stablesoftmax only (no ratios)")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.iters < 1:
        parser.error("--runs and --iters must be >= 1")

    import stablesoftmax
    from stablesoftmax._bench import cpu_model, environment

    try:
        from stablesoftmax import _C
    except ImportError:
        print("error: the C++ extension is not built; this benchmark times stablesoftmax[cpp]", file=sys.stderr)
        return 2
    if args.isa:
        _C.set_isa(args.isa)
    driver = None
    if not args.no_llamacpp:
        try:
            driver = build_driver(args.build_dir, args.llama_src, args.jobs)
        except BuildError as e:
            print(f"error: llama.cpp: {e}", file=sys.stderr)
            return 2

    x32 = make_row()
    env = environment(torch.device("cpu"))
    env["isa"] = str(_C.cpu_features().get("isa", ""))
    env["note"] = NOTE
    with tempfile.TemporaryDirectory() as tmp:
        logits_path = Path(tmp) / "row.f32"
        logits_path.write_bytes(x32.contiguous().numpy().astype("<f4").tobytes())
        with stablesoftmax.use_backend("cpp"):
            runs = []
            for i in range(args.runs):
                print(f"run {i + 1}/{args.runs}", flush=True)
                runs.append(measure_once(driver, logits_path, x32, args))
    rows = sort_rows(best_of(runs))
    add_ratios(rows)
    print(f"1 x {VOCAB} row, {cpu_model()}, stablesoftmax ISA {env['isa']}, torch {torch.__version__}, "
          f"best median of {args.runs} run(s)")  # fmt: skip
    print(format_table(rows))
    print(f"note: {NOTE}")
    target = [r for r in rows if r["case"] == TARGET_CASE and r["impl"] != "llama.cpp" and r["ratio"]]
    if target:
        best = max(float(r["ratio"]) for r in target)
        worst = min(float(r["ratio"]) for r in target)
        verdict = "meets" if worst >= TARGET_RATIO else ("partly meets" if best >= TARGET_RATIO else "misses")
        print(f"{TARGET_CASE}: {worst:.2f}x to {best:.2f}x llama.cpp (chain+fill): "
              f"{verdict} the {TARGET_RATIO:g}x target")  # fmt: skip
    if args.out is not None:
        slug = re.sub(r"[^A-Za-z0-9]+", "_", cpu_model()).strip("_").lower()
        path = args.out / f"llamacpp_{slug}.csv"
        n = write_csv(rows, path, env)
        print(f"wrote {path} ({n} rows)")
    else:
        print("(nothing written: pass --out DIR)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

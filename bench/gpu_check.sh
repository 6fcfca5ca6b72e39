#!/usr/bin/env bash
# The prepared GPU check: on one H100 / H200 in about 8 minutes, in one go,
#   1. the test suite on CUDA (pytest -x -q, backend auto: triton on CUDA), time-boxed;
#   2. softmax (float16 -> float16 / float32) of the package's backends against torch.softmax, with the
#      same-size copy (the memory floor) per case, and Liger-Kernel's softmax when it imports;
#   3. the device copy bandwidth (x.clone(): one read, one write) at a few sizes;
#   4. sampling (temperature, top-k / top-p, multinomial) against torch's pipeline.
# Everything goes as CSV into the directory given (default $OUT): env.csv, pytest.csv, softmax.csv, copy.csv,
# sampling.csv and steps.csv (each step's status and seconds). Exit status: non-zero when a step failed.
#
# Usage: bash bench/gpu_check.sh [--smoke] [DIR]
#   --smoke  tiny sizes and a short pytest selection, so that the whole script runs on a CPU machine with
#            Triton's interpreter (TRITON_INTERPRET=1 is set when no GPU is visible); tests/test_gpu_check.py.
# Environment: PYTHON (default python), GPU_CHECK_PYTEST (the pytest targets; default "tests", smoke
# "tests/test_aot.py"), GPU_CHECK_PYTEST_TIMEOUT (seconds, default 300), GPU_CHECK_MIN_RUN_TIME (seconds per
# timing, default 0.2; smoke 0.01).
set -uo pipefail

smoke=0
if [ "${1:-}" = "--smoke" ]; then
    smoke=1
    shift
fi
out=${1:-${OUT:-}}
if [ -z "$out" ]; then
    echo "usage: bash bench/gpu_check.sh [--smoke] DIR   (or set OUT)" >&2
    exit 2
fi
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$(dirname "$0")/.." || exit 2
py=${PYTHON:-python}

if ! "$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    if [ "$smoke" = 0 ]; then
        echo "gpu_check: no CUDA device visible; run with --smoke on a CPU machine" >&2
        exit 2
    fi
    export TRITON_INTERPRET=1
fi
if [ "$smoke" = 1 ]; then
    targets=${GPU_CHECK_PYTEST:-tests/test_aot.py}
    min_run_time=${GPU_CHECK_MIN_RUN_TIME:-0.01}
else
    targets=${GPU_CHECK_PYTEST:-tests}
    min_run_time=${GPU_CHECK_MIN_RUN_TIME:-0.2}
fi
pytest_timeout=${GPU_CHECK_PYTEST_TIMEOUT:-300}

echo "step,status,seconds,note" > "$out/steps.csv"
failed=0
step() {  # step NAME COMMAND...: run, time and record one step
    local name=$1 start rc
    shift
    start=$(date +%s)
    echo "=== gpu_check: $name"
    "$@"
    rc=$?
    echo "$name,$rc,$(( $(date +%s) - start )),$([ "$rc" = 0 ] && echo ok || echo failed)" >> "$out/steps.csv"
    [ "$rc" = 0 ] || failed=1
}

run_pytest() {
    # shellcheck disable=SC2086  # the targets are a word list
    timeout "$pytest_timeout" "$py" -m pytest -x -q -p no:cacheprovider $targets --junitxml="$out/pytest.xml"
    local rc=$?
    "$py" - "$out/pytest.xml" "$out/pytest.csv" <<'EOF'
import csv, sys, xml.etree.ElementTree as ET

src, dst = sys.argv[1:]
rows = []
try:
    root = ET.parse(src).getroot()
except (OSError, ET.ParseError) as exc:  # killed by the timeout before the report was written
    root = None
    rows.append({"test": "(no report)", "outcome": "error", "seconds": "", "message": str(exc)[:200]})
for case in root.iter("testcase") if root is not None else ():
    outcome, message = "passed", ""
    for tag in ("failure", "error", "skipped"):
        node = case.find(tag)
        if node is not None:
            outcome, message = {"failure": "failed"}.get(tag, tag), (node.get("message") or "")[:200]
            break
    rows.append({"test": f"{case.get('classname')}::{case.get('name')}", "outcome": outcome,
                 "seconds": case.get("time", ""), "message": message.replace("\n", " ")})
with open(dst, "w", newline="", encoding="utf-8") as f:
    writer = csv.DictWriter(f, fieldnames=["test", "outcome", "seconds", "message"])
    writer.writeheader()
    writer.writerows(rows)
counts = {}
for r in rows:
    counts[r["outcome"]] = counts.get(r["outcome"], 0) + 1
print("pytest:", ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
EOF
    return $rc
}

run_benchmarks() {
    "$py" - "$out" "$smoke" "$min_run_time" <<'EOF'
import csv, sys
from pathlib import Path

import torch

import stablesoftmax
from stablesoftmax import _bench
from stablesoftmax._bench import Result, environment, format_table, write_csv

out, smoke, min_run_time = Path(sys.argv[1]), sys.argv[2] == "1", float(sys.argv[3])
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
env = environment(device)
import triton

env["triton_version"] = triton.__version__
env["triton_interpret"] = "1" if device.type == "cpu" else "0"
with open(out / "env.csv", "w", newline="", encoding="utf-8") as f:
    w = csv.writer(f)
    w.writerow(["key", "value"])
    w.writerows(env.items())
env.pop("triton_version"), env.pop("triton_interpret")
if device.type == "cpu":  # the smoke run: time the Triton kernels in the interpreter, as a GPU run would on a GPU
    _bench._backends_for = lambda device: ["triton"]
if smoke:
    soft_shapes, samp_shapes, copy_sizes = [(3, 300), (2, 1000)], [(2, 300)], [1 << 20]
else:
    soft_shapes = list(dict.fromkeys(_bench.SHAPES + [(8192, 4096), (2048, 16384), (512, 65536), (128, 262144),
                                                      (64, 50257), (256, 152064)]))
    samp_shapes = _bench.SAMPLING_SHAPES + [(256, 152064)]
    copy_sizes = [16 << 20, 256 << 20, 1 << 30]

# copy bandwidth: the memory floor of a kernel that reads and writes each byte once
copy_rows = []
for nbytes in copy_sizes:
    x = torch.empty(nbytes // 2, dtype=torch.float16, device=device).normal_()
    p20, ms, p80 = _bench._timer(lambda x=x: x.clone(), device, min_run_time)
    copy_rows.append({"device": device.type, "gpu": env["gpu"], "op": "clone float16", "mbytes": nbytes >> 20,
                      "ms": ms, "ms_p20": p20, "ms_p80": p80, "gbps": 2 * nbytes / ms / 1e6})
    del x
with open(out / "copy.csv", "w", newline="", encoding="utf-8") as f:
    w = csv.DictWriter(f, fieldnames=list(copy_rows[0]))
    w.writeheader()
    w.writerows(copy_rows)
for r in copy_rows:
    print(f"copy {r['mbytes']} MiB: {r['ms']:.3f} ms, {r['gbps']:.1f} GB/s")

# softmax against torch.softmax, plus Liger-Kernel's softmax (float16 -> float16) when it imports
results = _bench.run_softmax_bench(device, soft_shapes, min_run_time)
try:
    from liger_kernel.ops.softmax import LigerSoftmaxFunction
except ImportError as exc:
    print(f"note: Liger-Kernel not importable ({exc}); no liger_kernel rows (pip install liger-kernel)")
else:
    base = {(r.shape, r.dtypes): r for r in results if r.impl == "torch.softmax"}
    for rows, cols in soft_shapes:
        x = torch.randn(rows, cols, device=device).mul_(4).half()
        ref = base[(f"{rows}x{cols}", "float16->float16")]
        try:
            p20, ms, p80 = _bench._timer(lambda x=x: LigerSoftmaxFunction.apply(x), device, min_run_time)
        except Exception as exc:  # noqa: BLE001 (a third-party kernel: record and go on)
            print(f"note: liger_kernel softmax failed at {rows}x{cols}: {exc}")
            continue
        results.append(Result(device.type, "softmax", f"{rows}x{cols}", "float16->float16", "liger_kernel", ms,
                              x.numel() * 4 / ms / 1e6, ref.ms / ms, ref.ms_copy, p20, p80))
print(format_table(results))
write_csv(results, out / "softmax.csv", env)

# sampling against torch's pipeline
results = _bench.run_sampling_bench(device, samp_shapes, min_run_time)
print(format_table(results))
write_csv(results, out / "sampling.csv", env)
print(f"stablesoftmax {stablesoftmax.__version__}: CSV in {out}")
EOF
}

step pytest run_pytest
step benchmarks run_benchmarks
echo "=== gpu_check: done, CSV in $out (failed=$failed)"
cat "$out/steps.csv"
exit $failed

"""bench/gpu_check.sh end to end in its smoke mode (tiny sizes; Triton's interpreter without a GPU):
every step runs and every CSV is written with its columns."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import import_or_skip_off_ci

import_or_skip_off_ci("triton", "the smoke run uses the Triton interpreter")

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "gpu_check.sh"

RESULT_COLUMNS = ["device", "op", "shape", "dtypes", "impl", "ms", "gbps", "speedup_vs_torch", "ms_copy", "ms_p20",
                  "ms_p80", "package_version", "git_commit", "torch_version", "cpu_model", "isa", "threads",
                  "cpu_thread_runtime", "gpu", "timestamp"]  # fmt: skip


def _read(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash and timeout")
def test_gpu_check_smoke_writes_every_csv(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, GPU_CHECK_PYTEST="tests/test_aot.py")
    proc = subprocess.run(["bash", str(SCRIPT), "--smoke", str(tmp_path)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    log = proc.stdout[-4000:] + proc.stderr[-4000:]
    assert proc.returncode == 0, log

    cols, steps = _read(tmp_path / "steps.csv")
    assert cols == ["step", "status", "seconds", "note"]
    assert [(s["step"], s["status"]) for s in steps] == [("pytest", "0"), ("benchmarks", "0")], log

    cols, tests = _read(tmp_path / "pytest.csv")
    assert cols == ["test", "outcome", "seconds", "message"]
    assert tests and all(t["outcome"] == "passed" for t in tests), tests
    assert any("test_aot" in t["test"] for t in tests)

    cols, env_rows = _read(tmp_path / "env.csv")
    assert cols == ["key", "value"]
    assert {"torch_version", "triton_version", "gpu", "triton_interpret"} <= {r["key"] for r in env_rows}

    cols, copies = _read(tmp_path / "copy.csv")
    assert cols == ["device", "gpu", "op", "mbytes", "ms", "ms_p20", "ms_p80", "gbps"]
    assert copies and all(float(r["gbps"]) > 0 for r in copies)

    for name, baselines in (
        ("softmax", {"torch.softmax"}),
        ("sampling", {"torch softmax+multinomial", "transformers pipeline", "torch.multinomial"}),
    ):
        cols, rows = _read(tmp_path / f"{name}.csv")
        assert cols == RESULT_COLUMNS, name
        impls = {r["impl"] for r in rows}
        assert baselines <= impls and "stablesoftmax[triton]" in impls, (name, impls)
        assert all(float(r["ms"]) > 0 for r in rows), name
    if "Liger-Kernel not importable" not in proc.stdout:
        assert "liger_kernel" in {r["impl"] for r in _read(tmp_path / "softmax.csv")[1]}

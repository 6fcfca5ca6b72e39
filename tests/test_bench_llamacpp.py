"""bench/bench_llamacpp.py without llama.cpp: a fake driver prints the driver's CSV, stablesoftmax's timer is
replaced by fixed figures; checks the parsing, best-of-runs, ratios, the CSV columns and the merge."""

from __future__ import annotations

import csv
import importlib.util
import stat
import sys
from pathlib import Path

import pytest
import torch
from conftest import import_or_skip_off_ci

import_or_skip_off_ci("stablesoftmax._C", "the benchmark times the C++ backend")

BENCH = Path(__file__).resolve().parent.parent / "bench" / "bench_llamacpp.py"

DRIVER_OUTPUT = """\
# llama.cpp sampler chains on one row of 152064 float32 logits; a comment line
case,impl,variant,threads,iters,median_us,p20_us,p80_us,token
top_k40_top_p0.95_T0.8,llama.cpp,chain+fill,1,10,{fill},1.0,2.0,7
top_k40_top_p0.95_T0.8,llama.cpp,chain,1,10,{chain},1.0,2.0,7
temperature0.8,llama.cpp,chain+fill,1,10,900.0,1.0,2.0,3
temperature0.8,llama.cpp,chain,1,10,800.0,1.0,2.0,3
greedy,llama.cpp,chain+fill,1,10,300.0,1.0,2.0,5
greedy,llama.cpp,chain,1,10,100.0,1.0,2.0,5
"""


@pytest.fixture
def bench():
    spec = importlib.util.spec_from_file_location("bench_llamacpp", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fake_driver(tmp_path: Path, fill: float, chain: float) -> Path:
    out = tmp_path / "driver_output.txt"
    out.write_text(DRIVER_OUTPUT.format(fill=fill, chain=chain))
    driver = tmp_path / "fake_driver"
    driver.write_text(f"#!{sys.executable}\nimport sys\nsys.stdout.write(open({str(out)!r}).read())\n")
    driver.chmod(driver.stat().st_mode | stat.S_IXUSR)
    return driver


def test_parse_skips_comments(bench) -> None:
    rows = bench.parse_driver_csv(DRIVER_OUTPUT.format(fill=1200.0, chain=1100.0))
    assert len(rows) == 6 and rows[0]["case"] == "top_k40_top_p0.95_T0.8" and rows[0]["median_us"] == "1200.0"


def test_main_writes_best_of_runs_with_ratios_and_merges(bench, tmp_path: Path, monkeypatch, capsys) -> None:
    driver = _fake_driver(tmp_path, fill=1200.0, chain=1100.0)
    monkeypatch.setattr(bench, "build_driver", lambda *a: driver)
    calls = []
    per_run = len(bench.CASES) * 2 * len({1, torch.get_num_threads()})  # cases x dtypes x thread counts

    def fake_time(x, kwargs, threads, min_run_time):
        calls.append((x.dtype, tuple(sorted(kwargs.items())), threads))
        median = 300.0 if len(calls) > per_run else 400.0  # the second run is faster: its medians are kept
        return median - 10, median, median + 10

    monkeypatch.setattr(bench, "time_ours", fake_time)
    out = tmp_path / "results"
    assert bench.main(["--out", str(out), "--runs", "2", "--iters", "10"]) == 0
    printed = capsys.readouterr().out
    assert "meets the 3x target" in printed
    (path,) = out.glob("llamacpp_*.csv")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for column in ("case", "impl", "threads", "median_us", "ratio", "isa", "cpu_model", "dtype", "runs"):
        assert column in rows[0]
    from stablesoftmax import _C

    assert {r["isa"] for r in rows} == {_C.cpu_features()["isa"]}
    ours = [r for r in rows if r["impl"] == "stablesoftmax[cpp]"]
    assert {r["dtype"] for r in ours} == {"float32", "float16"}
    target = [r for r in ours if r["case"] == "top_k40_top_p0.95_T0.8"]
    assert len(calls) == 2 * per_run and all(float(r["median_us"]) == 300.0 for r in ours)
    for r in target:
        assert float(r["ratio"]) == pytest.approx(4.0)
        assert float(r["ratio_vs_chain_only"]) == pytest.approx(1100 / 300, abs=1e-3)
        assert r["runs"] == "2"
    llama = {(r["case"], r["variant"]): r for r in rows if r["impl"] == "llama.cpp"}
    assert float(llama[("greedy", "chain")]["ratio"]) == pytest.approx(3.0)
    # each stablesoftmax case ran per dtype, per thread count, per run; the target call with the SPEC's parameters
    assert any(dict(kw) == {"temperature": 0.8, "top_k": 40, "top_p": 0.95} for _, kw, _ in calls)
    # measured again (a slower llama.cpp): same keys replace their rows, a row from another ISA stays
    text = path.read_text()
    other = text.splitlines()[1].replace(f",{_C.cpu_features()['isa']},", ",otherisa,", 1)
    path.write_text(text + other + "\n")
    monkeypatch.setattr(bench, "build_driver", lambda *a: _fake_driver(tmp_path, fill=600.0, chain=500.0))
    assert bench.main(["--out", str(out), "--iters", "10"]) == 0
    assert "misses the 3x target" in capsys.readouterr().out
    with open(path, newline="") as f:
        again = list(csv.DictReader(f))
    assert len(again) == len(rows) + 1
    fill = next(r for r in again if r["impl"] == "llama.cpp" and r["variant"] == "chain+fill" and r["isa"] != "otherisa"
                and r["case"] == "top_k40_top_p0.95_T0.8")  # fmt: skip
    assert float(fill["median_us"]) == 600.0


def test_build_failure_is_a_clear_error(bench, tmp_path: Path, monkeypatch, capsys) -> None:
    def fail(*a):
        raise bench.BuildError("no sources (test)")

    monkeypatch.setattr(bench, "build_driver", fail)
    assert bench.main(["--build-dir", str(tmp_path)]) == 2
    assert "error: llama.cpp: no sources (test)" in capsys.readouterr().err


def test_row_is_fixed_by_the_seed(bench) -> None:
    a, b = bench.make_row(vocab=1000), bench.make_row(vocab=1000)
    assert a.shape == (1, 1000) and a.dtype.is_floating_point and bool((a == b).all())

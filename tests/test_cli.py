"""The command line (``python -m stablesoftmax info | demo | diagnose FILE``) and :func:`stablesoftmax.diagnose`."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import import_or_skip_off_ci

import stablesoftmax as ss
from stablesoftmax import _diagnose
from stablesoftmax.__main__ import main

INF, NAN = math.inf, math.nan
FLOAT_DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def planted(gen: torch.Generator, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Random logits with scattered NaN / +inf / -inf entries (about 4 % each)."""
    x = (torch.randn(shape, generator=gen) * 4).to(dtype)
    u = torch.rand(shape, generator=gen)
    x[u < 0.04] = NAN
    x[(u >= 0.04) & (u < 0.08)] = INF
    x[(u >= 0.08) & (u < 0.12)] = -INF
    return x


def reference(x: torch.Tensor, dim: int) -> dict[str, torch.Tensor]:
    """Per-row counts computed directly, the obvious way."""
    rows = x.movedim(dim, -1).reshape(-1, x.shape[dim]).double()
    finite = torch.isfinite(rows)
    return {
        "nan": torch.isnan(rows).sum(1),
        "pos_inf": (rows == INF).sum(1),
        "neg_inf": (rows == -INF).sum(1),
        "fully_masked": (rows == -INF).all(1),
        "max_abs": torch.where(finite, rows.abs(), torch.zeros_like(rows)).amax(1),
    }


def assert_matches(d: ss.Diagnosis, x: torch.Tensor, dim: int) -> None:
    ref = reference(x.cpu(), dim)
    for name, expected in ref.items():
        got = getattr(d, name)
        assert got.device.type == "cpu"
        assert torch.equal(got, expected.to(got.dtype)), name
    bad = (ref["nan"] > 0) | (ref["pos_inf"] > 0) | ref["fully_masked"]
    assert d.bad_rows == bad.nonzero().flatten().tolist()
    assert d.ok == (not bool(bad.any()))


def table(out: str) -> dict[int, tuple[int, int, int]]:
    """Row index -> (NaN, +inf, -inf) from the printed table of a 2-D tensor's diagnosis."""
    found = {}
    for line in out.splitlines():
        m = re.match(r"^\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s", line)
        if m:
            row, *counts = (int(g) for g in m.groups())
            found[row] = tuple(counts)
    return found


# --- diagnose() ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("dim", [-1, 0, 1])
def test_counts_match_direct_computation(gen: torch.Generator, device: str, dtype: torch.dtype, dim: int) -> None:
    x = planted(gen, (5, 6, 7), dtype)
    x.movedim(dim, -1)[1, 3] = -INF  # a fully masked row (a view: writes through)
    x = x.to(device)
    d = ss.diagnose(x, dim)
    assert d.shape == (5, 6, 7) and d.dtype == dtype and d.dim == dim % 3 and d.device == str(x.device)
    assert d.rows == 5 * 6 * 7 // x.shape[dim] and d.row_length == x.shape[dim]
    assert_matches(d, x, dim)
    assert not d.ok  # 4 % of each kind over 210 entries: some rows are bad


def test_fully_masked_rows_and_clean_rows(gen: torch.Generator) -> None:
    x = torch.randn(6, 9, generator=gen)
    assert ss.diagnose(x).ok and ss.diagnose(x).bad_rows == []
    x[[1, 4]] = -INF
    x[2, 3] = -INF  # a partly masked row is fine
    d = ss.diagnose(x)
    assert d.fully_masked.tolist() == [False, True, False, False, True, False]
    assert d.neg_inf.tolist() == [0, 9, 1, 0, 9, 0]
    assert d.bad_rows == [1, 4] and not d.ok


def test_chunked_reduction_matches(gen: torch.Generator, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tiny chunks over non-contiguous views (rows, columns and pieces of rows) give the same answer."""
    x = planted(gen, (4, 5, 33), torch.float16)
    x[1, 2] = -INF
    views = [(x, -1), (x.transpose(0, 2), 0), (x.transpose(0, 2), 1), (x[:, ::2, 1::3], -1), (x.permute(2, 0, 1), 2)]
    expected = [ss.diagnose(v, dim) for v, dim in views]
    for budget in (1, 7, 64, 1000):
        monkeypatch.setattr(_diagnose, "_CHUNK_BYTES", budget)
        for (v, dim), want in zip(views, expected):
            got = ss.diagnose(v, dim)
            assert_matches(got, v, dim)
            for name in ("nan", "pos_inf", "neg_inf", "fully_masked", "max_abs"):
                assert torch.equal(getattr(got, name), getattr(want, name))


def test_zero_dim() -> None:
    for value, bad in [(2.5, False), (NAN, True), (INF, True), (-INF, True)]:
        d = ss.diagnose(torch.tensor(value))
        assert d.rows == 1 and d.row_length == 1 and d.shape == () and d.dim == 0
        assert d.bad_rows == ([0] if bad else []) and d.ok == (not bad)
    assert bool(ss.diagnose(torch.tensor(-INF)).fully_masked[0])
    assert ss.diagnose(torch.tensor(-3.0), dim=-1).max_abs.tolist() == [3.0]
    with pytest.raises(IndexError):
        ss.diagnose(torch.tensor(1.0), dim=1)


def test_empty_tensors() -> None:
    d = ss.diagnose(torch.empty(0, 5))
    assert d.rows == 0 and d.ok and d.bad_rows == [] and d.nan.shape == (0,)
    assert "no rows" in str(d)
    d = ss.diagnose(torch.empty(3, 0))
    assert d.rows == 3 and d.row_length == 0 and d.ok and not bool(d.fully_masked.any())
    assert "3 rows of length 0" in str(d)
    assert ss.diagnose(torch.empty(2, 0, 4), dim=0).rows == 0


def test_float16_headroom() -> None:
    x = torch.tensor(
        [[65504.0, 1.0, -2.0], [-32752.0, 3.0, INF], [1000.0, -1.0, 0.5], [-INF, -INF, -INF]], dtype=torch.float16
    )
    d = ss.diagnose(x)
    assert d.max_abs.tolist() == [65504.0, 32752.0, 1000.0, 0.0]  # +inf is not a finite value
    assert d.headroom.tolist() == pytest.approx([1.0, 2.0, 65.504, math.inf])
    assert d.near_limit.tolist() == [True, True, False, False]
    assert d.bad_rows == [1, 3]
    assert d.flagged_rows == [0, 1, 3]  # near the limit is printed, but is not an error
    assert d.overall_max_abs == 65504.0
    text = str(d)
    assert "near float16 limit" in text and "headroom 1x" in text and "overflowed 65504" in text


def test_integer_and_bool_tensors(gen: torch.Generator) -> None:
    x = torch.randint(-1000, 1000, (4, 6), generator=gen)
    x[2, 1] = -(2**63)  # |int64 min| must not wrap
    d = ss.diagnose(x)
    assert d.ok and d.nan.sum() == 0 and d.pos_inf.sum() == 0 and d.neg_inf.sum() == 0
    assert d.max_abs[2] == 2.0**63
    assert torch.equal(d.max_abs[[0, 1, 3]], x[[0, 1, 3]].abs().amax(1).double())
    assert ss.diagnose(torch.tensor([[True, False], [False, False]])).max_abs.tolist() == [1.0, 0.0]


def test_rejects_bad_input() -> None:
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        ss.diagnose([1.0, 2.0])  # type: ignore[arg-type]
    with pytest.raises(ss.StableSoftmaxError, match="complex"):
        ss.diagnose(torch.ones(2, 3, dtype=torch.complex64))
    with pytest.raises(IndexError, match="out of range"):
        ss.diagnose(torch.ones(2, 3), dim=2)


def test_str_table(gen: torch.Generator) -> None:
    x = torch.randn(30, 8, generator=gen).to(torch.float16)
    x[:25, 0] = NAN  # 25 bad rows: 20 printed, 5 counted
    x[27, 3] = INF
    text = str(ss.diagnose(x))
    lines = text.splitlines()
    assert lines[0].startswith("tensor 30x8 float16 on cpu, dim 1: 30 rows of 8; rows with NaN 25, +inf 1")
    assert "row" in lines[1] and "NaN" in lines[1] and "headroom" in lines[1]
    rows = table(text)
    assert sorted(rows) == list(range(20))
    assert all(counts == (1, 0, 0) for counts in rows.values())
    assert "... 6 more" in text
    assert "bfloat16 or float32" in text
    assert repr(ss.diagnose(x)).startswith("Diagnosis(shape=(30, 8)")


def test_str_multi_index(gen: torch.Generator) -> None:
    x = torch.randn(2, 3, 4, generator=gen)
    x[1, 2, 0] = NAN
    d = ss.diagnose(x)
    assert d.bad_rows == [5] and d.row_index(5) == (1, 2)
    assert "(1, 2)" in str(d)
    assert "No problems" in str(ss.diagnose(torch.randn(2, 3, generator=gen)))


# --- the command line ------------------------------------------------------------------------------------------


def test_info(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for name in ss.available_backends():
        assert f"{name}:" in out
    assert "automatic choice for cpu tensors" in out
    assert "numpy" in out and "safetensors" in out and "transformers" in out


def test_demo(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "probability tensor contains" in out
    assert "StableSoftmaxError" in out and "row" in out
    assert "NaN" in out and "bfloat16" in out
    assert "(the argmax)" in out
    assert len(out.splitlines()) <= 45


@pytest.fixture
def bad_logits(gen: torch.Generator) -> torch.Tensor:
    x = (torch.randn(6, 10, generator=gen) * 3).to(torch.float16)
    x[1, [2, 7]] = NAN
    x[3] = -INF
    x[4, 5] = INF
    return x


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = main(["diagnose", *args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_diagnose_pt_tensor(tmp_path: Path, capsys, gen, bad_logits) -> None:
    clean = tmp_path / "clean.pt"
    torch.save(torch.randn(4, 5, generator=gen), clean)
    status, out, err = run(capsys, str(clean))
    assert status == 0 and err == "" and "No problems" in out
    path = tmp_path / "logits.pth"
    torch.save(bad_logits, path)
    status, out, err = run(capsys, str(path))
    assert status == 1 and err == ""
    assert table(out) == {1: (2, 0, 0), 3: (0, 0, 10), 4: (0, 1, 0)}
    assert "fully masked" in out and "6 rows of 10" in out
    status, out, _ = run(capsys, str(path), "--dim", "0")
    assert status == 1 and "10 rows of 6" in out
    assert table(out) == {2: (1, 0, 1), 5: (0, 1, 1), 7: (1, 0, 1)}


def test_diagnose_pt_dict(tmp_path: Path, capsys, gen, bad_logits) -> None:
    path = tmp_path / "state.pt"
    good = torch.randn(3, 4, generator=gen)
    torch.save({"logits": bad_logits, "scores": good, "ids": torch.arange(5), "more": [good, bad_logits]}, path)
    status, out, _ = run(capsys, str(path))
    assert status == 1
    assert "== logits" in out and "== scores" in out and "== more[0]" in out and "== more[1]" in out
    assert "== ids" not in out  # only floating tensors unless asked for
    assert "4 tensors checked, 2 with bad rows: logits, more[1]" in out
    status, out, _ = run(capsys, str(path), "--key", "scores")
    assert status == 0 and "== scores" in out and "== logits" not in out
    status, out, _ = run(capsys, str(path), "--key", "more[1]")
    assert status == 1 and table(out) == {1: (2, 0, 0), 3: (0, 0, 10), 4: (0, 1, 0)}
    status, out, _ = run(capsys, str(path), "--key", "ids")
    assert status == 0 and "int64" in out
    status, out, err = run(capsys, str(path), "--key", "nope")
    assert status == 2 and out == "" and "nope" in err and "logits" in err


def test_diagnose_npy(tmp_path: Path, capsys, gen, bad_logits) -> None:
    np = import_or_skip_off_ci("numpy", "a test extra")
    path = tmp_path / "logits.npy"
    np.save(path, bad_logits.float().numpy())
    status, out, _ = run(capsys, str(path))
    assert status == 1 and "float32" in out and table(out) == {1: (2, 0, 0), 3: (0, 0, 10), 4: (0, 1, 0)}
    np.save(path, torch.randn(3, 3, generator=gen).numpy())
    assert run(capsys, str(path))[0] == 0


def test_diagnose_safetensors(tmp_path: Path, capsys, gen, bad_logits) -> None:
    st = import_or_skip_off_ci("safetensors.torch", "a test extra")
    path = tmp_path / "model.safetensors"
    st.save_file({"lm_head.out": bad_logits, "ok": torch.randn(2, 8, generator=gen)}, str(path))
    status, out, _ = run(capsys, str(path))
    assert status == 1 and "== lm_head.out" in out and "== ok" in out
    status, out, _ = run(capsys, str(path), "--key", "lm_head.out")
    assert status == 1 and table(out) == {1: (2, 0, 0), 3: (0, 0, 10), 4: (0, 1, 0)}
    assert run(capsys, str(path), "--key", "ok")[0] == 0


def test_diagnose_file_errors(tmp_path: Path, capsys, gen) -> None:
    cases = []
    cases.append((tmp_path / "missing.pt", "no such file"))
    odd = tmp_path / "logits.txt"
    odd.write_text("1 2 3")
    cases.append((odd, "unsupported file type '.txt'"))
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    cases.append((garbage, "cannot read"))
    for path, message in cases:
        status, out, err = run(capsys, str(path))
        assert status == 2 and out == ""
        assert message in err and err.count("\n") == 1 and "Traceback" not in err
    single = tmp_path / "single.pt"
    torch.save(torch.randn(2, 3, generator=gen), single)
    assert run(capsys, str(single), "--dim", "5")[0] == 2
    assert run(capsys, str(single), "--key", "x")[0] == 2
    empty = tmp_path / "ints.pt"
    torch.save({"ids": torch.arange(4)}, empty)
    status, _, err = run(capsys, str(empty))
    assert status == 2 and "no floating-point tensor" in err


def test_entry_point_subprocess(tmp_path: Path, gen, bad_logits) -> None:
    path = tmp_path / "logits.pt"
    torch.save(bad_logits, path)
    proc = subprocess.run(
        [sys.executable, "-m", "stablesoftmax", "diagnose", str(path)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 1, proc.stderr
    assert table(proc.stdout) == {1: (2, 0, 0), 3: (0, 0, 10), 4: (0, 1, 0)}


def test_diagnose_npy_errors_say_what_is_wrong(tmp_path: Path, capsys, monkeypatch) -> None:
    np = import_or_skip_off_ci("numpy", "a test extra")
    garbage = tmp_path / "garbage.npy"
    garbage.write_bytes(b"\x00not an array at all" * 10)
    status, out, err = run(capsys, str(garbage))
    assert status == 2 and out == "" and "allow_pickle" not in err and "not a NumPy .npy file" in err
    objects = tmp_path / "objects.npy"
    np.save(objects, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    status, _, err = run(capsys, str(objects))
    assert status == 2 and "allow_pickle" not in err and "Python objects" in err
    status, _, err = run(capsys, str(tmp_path))  # a directory is not "no such file"
    assert status == 2 and "is a directory" in err and "no such file" not in err
    good = tmp_path / "good.npy"
    np.save(good, np.ones((2, 3), dtype=np.float32))
    monkeypatch.setitem(sys.modules, "numpy", None)  # numpy absent: import numpy raises ImportError
    status, _, err = run(capsys, str(good))
    assert status == 2 and "pip install numpy" in err and err.count("\n") == 1


# --- bench ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", ["meta", "cdua", "cuda:99", *([] if torch.cuda.is_available() else ["cuda"])])
def test_bench_unknown_or_absent_device_is_one_line_exit_2(capsys, device: str) -> None:
    assert main(["bench", "--device", device]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("error: --device") and captured.err.count("\n") == 1


def test_bench_never_writes_over_the_committed_results(capsys) -> None:
    committed = Path(__file__).resolve().parent.parent / "bench" / "results"
    assert main(["bench", "--out", str(committed)]) == 2
    assert "committed bench/results" in capsys.readouterr().err


def test_bench_never_writes_over_a_checkouts_results(tmp_path: Path, capsys) -> None:
    # An installed copy (a wheel) run on a clone: its own bench/results/ is elsewhere, the clone's is still refused.
    clone = tmp_path / "clone"
    (clone / "stablesoftmax").mkdir(parents=True)
    (clone / "bench" / "results").mkdir(parents=True)
    assert main(["bench", "--out", str(clone / "bench" / "results")]) == 2
    assert "committed bench/results" in capsys.readouterr().err
    assert not any((clone / "bench" / "results").iterdir())


def _fake_results(impl_ms: float) -> list:
    from stablesoftmax._bench import Result

    return [
        Result("cpu", "softmax", "2x8", "float16->float16", "torch.softmax", 2.0, 1.0, 1.0, 0.5, 1.9, 2.1),
        Result("cpu", "softmax", "2x8", "float16->float16", "stablesoftmax[cpp]", impl_ms, 2.0, 2.0, 0.5, 0.9, 1.1),
    ]


def test_bench_out_writes_merged_csv_with_the_environment(tmp_path: Path, capsys, monkeypatch) -> None:
    import csv

    from stablesoftmax import _bench

    monkeypatch.setattr(_bench, "run_softmax_bench", lambda *a: _fake_results(1.0))
    monkeypatch.setattr(_bench, "run_sampling_bench", lambda *a: [])
    monkeypatch.setattr(_bench, "plot", lambda *a, **k: None)
    out = tmp_path / "results"
    assert main(["bench", "--device", "cpu", "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    with open(out / "softmax.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2
    for column in ("package_version", "git_commit", "torch_version", "cpu_model", "isa", "threads",
                   "cpu_thread_runtime", "gpu", "timestamp", "ms_p20", "ms", "ms_p80"):  # fmt: skip
        assert column in rows[0]
    assert rows[0]["torch_version"] == torch.__version__ and rows[0]["threads"] == str(torch.get_num_threads())
    assert rows[1]["impl"] == "stablesoftmax[cpp]" and float(rows[1]["ms_p20"]) <= float(rows[1]["ms"])
    # measured again: the same keys replace their rows; a row measured elsewhere (another thread count) stays
    with open(out / "softmax.csv", newline="") as f:
        text = f.read()
    (out / "softmax.csv").write_text(text + text.splitlines()[1].replace(",2,", ",64,", 1) + "\n")
    monkeypatch.setattr(_bench, "run_softmax_bench", lambda *a: _fake_results(0.5))
    assert main(["bench", "--device", "cpu", "--out", str(out)]) == 0
    with open(out / "softmax.csv", newline="") as f:
        again = list(csv.DictReader(f))
    assert len(again) == 3
    assert float(next(r for r in again if r["impl"] == "stablesoftmax[cpp]")["ms"]) == 0.5


def test_bench_labels_and_missing_backend_note(capsys, monkeypatch) -> None:
    from stablesoftmax import _bench, _dispatch

    assert _bench.impl_label("torch") == "stablesoftmax[torch-ops]" != "torch.softmax"
    statuses = dict(_dispatch.available_backends())
    statuses["cpp"] = ss.BackendStatus("cpp", False, "C++ extension not importable (test)")
    monkeypatch.setattr(_bench, "available_backends", lambda: statuses)
    monkeypatch.setattr(_bench, "run_softmax_bench", lambda *a: [])
    monkeypatch.setattr(_bench, "run_sampling_bench", lambda *a: [])
    assert main(["bench", "--device", "cpu"]) == 0
    assert "note: no rows for backend cpp: C++ extension not importable (test)" in capsys.readouterr().out


def test_plot_has_stable_colours_and_says_higher_is_better(tmp_path: Path) -> None:
    import_or_skip_off_ci("matplotlib", "a test extra")
    from stablesoftmax import _bench

    _bench.plot(_fake_results(1.0), "t", tmp_path / "a.png")
    _bench.plot(_fake_results(1.0), "t", tmp_path / "b.png", speedup=True)
    assert (tmp_path / "a.png").stat().st_size > 1000 and (tmp_path / "b.png").stat().st_size > 1000


# --- running from a source checkout ----------------------------------------------------------------------------


def _package(root: Path, version: str, built: bool) -> Path:
    import importlib.machinery

    pkg = root / "stablesoftmax"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(f'__version__ = "{version}"\n')
    if built:
        (pkg / f"_C{importlib.machinery.EXTENSION_SUFFIXES[0]}").write_bytes(b"")
    return pkg


def test_source_tree_without_extension_uses_the_installed_copy(tmp_path: Path) -> None:
    from stablesoftmax import _extension

    src = _package(tmp_path / "clone", "0.1.0", built=False)
    site = _package(tmp_path / "site", "0.1.0", built=True)
    path = [str(src)]
    note = _extension.use_installed_extension(path, [str(tmp_path / "clone"), str(tmp_path / "site")], findable=False)
    assert path == [str(src), str(site)]
    assert note is not None and "using the extension of the installed copy" in note and str(site) in note
    assert _extension.use_installed_extension([str(src)], [str(tmp_path / "site")], findable=True) is None


def test_source_tree_without_extension_says_what_to_type(tmp_path: Path, capsys, monkeypatch) -> None:
    from stablesoftmax import _extension

    src = _package(tmp_path / "clone", "0.2.0.dev0", built=False)
    _package(tmp_path / "site", "0.1.0", built=True)
    path = [str(src)]
    note = _extension.use_installed_extension(path, [str(tmp_path / "site")], findable=False)
    assert path == [str(src)]  # another version's extension is not used
    assert note is not None and "C++ backend is off" in note and "pip install -e ." in note
    assert _extension.use_installed_extension([str(src)], [str(tmp_path / "nothing")], findable=False) is None
    monkeypatch.setattr(ss, "EXTENSION_NOTE", note)
    assert main(["info"]) == 0
    assert f"note: {note}" in capsys.readouterr().out


_HIDE_NUMPY = """
import sys
class _NoNumpy:
    def find_spec(self, name, path=None, target=None):
        if name == "numpy" or name.startswith("numpy."):
            raise ModuleNotFoundError(f"No module named {name!r}")
sys.meta_path.insert(0, _NoNumpy())
"""


def test_import_prints_nothing_without_numpy() -> None:
    """torch warns at import when NumPy is missing; the package needs no NumPy and keeps its import silent."""
    plain = subprocess.run([sys.executable, "-c", _HIDE_NUMPY + "import torch"], capture_output=True, text=True,
                           timeout=120)  # fmt: skip
    ours = subprocess.run([sys.executable, "-c", _HIDE_NUMPY + "import stablesoftmax; import torch"],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert plain.returncode == 0 and ours.returncode == 0, (plain.stderr, ours.stderr)
    if "NumPy" not in plain.stderr:
        pytest.skip("this torch does not warn about a missing NumPy")
    assert ours.stderr == ""

"""Shared fixtures: the device under test, and one fixture per backend that can run on it.

Without a GPU the Triton kernels run on CPU tensors in Triton's interpreter, which must be
switched on before triton is first imported. On CI (``CI=true``) a backend that cannot run
is a failure, not a skip: every backend must be tested there.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import tempfile

# A compile cache of this run's own: inductor's on-disk cache outlives the process and does not key
# on a custom op's fake implementation, so a cache left by other code would make results depend on
# what ran before.
if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="stablesoftmax-inductor-")
    atexit.register(shutil.rmtree, os.environ["TORCHINDUCTOR_CACHE_DIR"], ignore_errors=True)

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
from hypothesis import settings

import stablesoftmax as ss

# Hypothesis profiles: "ci" (the default) is derandomised, so the suite is the same every run;
# "long" is the deeper run made before a stop: HYPOTHESIS_PROFILE=long pytest tests/test_fuzz.py
settings.register_profile("ci", max_examples=200, deadline=None, derandomize=True, print_blob=True)
settings.register_profile("long", max_examples=3000, deadline=None, derandomize=False, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto`` (the addopts in pyproject.toml): a worker per CPU this process may use, at most 8 (each one
    imports torch and runs its own thread pools)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cpus, 8))


DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
# Backends that run on DEVICE; the cpp backend exists only for CPU tensors.
BACKENDS = ["triton", "cpp", "torch"] if DEVICE.type == "cpu" else ["triton", "torch"]
INTERPRETED = DEVICE.type == "cpu"  # Triton runs interpreted: keep its shapes small


def _cpp_isas() -> list[str]:
    """The C++ extension's ISAs that run on this CPU, best first, "scalar" last ([] without the extension)."""
    if "cpp" not in BACKENDS:
        return []
    try:
        from stablesoftmax import _C
    except ImportError:
        return []
    return [str(name) for name in _C.supported_isas()]


#: Every C++ kernel path this build runs here (e.g. ["avx2", "scalar"]), computed at collection time.
CPP_ISAS = _cpp_isas()
#: The backends with the C++ one once per ISA ("cpp-avx2", "cpp-scalar", ...); a bare "cpp" where the
#: extension does not import, so that ``backend`` fails on CI and skips elsewhere, as for any backend.
ENGINES = [b for b in BACKENDS if b != "cpp"] + (
    ([f"cpp-{isa}" for isa in CPP_ISAS] or ["cpp"]) if "cpp" in BACKENDS else []
)


@contextlib.contextmanager
def cpp_isa(name: str | None):
    """Run the block with the C++ kernels of ISA ``name`` (None: leave the choice alone); restores "auto"."""
    if name is None:
        yield
        return
    from stablesoftmax import _C

    if name not in CPP_ISAS:
        pytest.skip(f"this CPU or build has no {name} kernels (it runs {CPP_ISAS})")
    _C.set_isa(name)
    try:
        yield
    finally:
        _C.set_isa("auto")


@contextlib.contextmanager
def on_engine(engine: str):
    """One backend forced and, for "cpp-<isa>", that ISA's kernels; yields the backend's name."""
    backend, _, isa = engine.partition("-")
    require_backend(backend)
    with cpp_isa(isa or None), ss.use_backend(backend):
        yield backend


#: ``@isa_axis`` on a test that takes the ``backend`` fixture runs it once per C++ ISA (ids "cpp-avx2", ...)
#: besides the other backends; the test still sees ``backend == "cpp"``. For the tests that exercise kernels.
isa_axis = pytest.mark.parametrize("backend", ENGINES, indirect=True)


def require_backend(name: str) -> None:
    status = ss.available_backends()[name]
    if not status.available:
        if os.environ.get("CI"):
            pytest.fail(f"backend {name} must be available on CI: {status.reason}")
        pytest.skip(f"backend {name} unavailable here: {status.reason}")


def import_or_skip_off_ci(name: str, why: str):
    """``importlib.import_module(name)`` for a test module. Off CI a missing module skips the whole test module;
    on CI (which installs the test extras and builds the extension) it fails it: a missing module there is a
    broken install, not an absent device, and must not pass as a skip."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"{name} must import on CI ({why}): {exc}", pytrace=False)
        pytest.skip(f"{name} does not import here ({why}): {exc}", allow_module_level=True)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest):
    """Run the test body with one backend forced; yields its name ("cpp" for "cpp-<isa>" under ``isa_axis``)."""
    with on_engine(request.param) as name:
        yield name


@pytest.fixture
def gen() -> torch.Generator:
    """A fixed-seed generator: fresh random data per test, the same every run."""
    return torch.Generator().manual_seed(20261123)


def record_tensor_sizes(monkeypatch: pytest.MonkeyPatch, module) -> list[int]:
    """Record the element count of every tensor that ``module``'s ``torch.empty / topk / where / full / cat /
    zeros`` calls make, until ``monkeypatch.undo()`` (a workspace-size test's probe)."""
    sizes: list[int] = []
    made = {name: getattr(torch, name) for name in ("empty", "topk", "where", "full", "cat", "zeros")}

    def recording(name):
        def make(*args, **kwargs):
            result = made[name](*args, **kwargs)
            for t in result if isinstance(result, tuple) else (result,):
                if isinstance(t, torch.Tensor):
                    sizes.append(t.numel())
            return result

        return make

    for name in made:
        monkeypatch.setattr(module.torch, name, recording(name))
    return sizes


@pytest.fixture(params=["topk", "sort"])
def block_select(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The Triton race's and top values' per-block W best by ``tl.topk`` or, as on Triton before 3.4, by a full
    sort (the interpreter only: on a GPU the switch is read at compile time)."""
    if request.param == "sort":
        if DEVICE.type == "cuda":
            pytest.skip("the switch is read at compile time; the interpreter covers the sort")
        import triton.language as tl

        from stablesoftmax.backends import triton_sampling

        monkeypatch.setattr(triton_sampling, "_HAS_TOPK", tl.constexpr(False))
    return request.param

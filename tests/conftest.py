"""Shared fixtures: the device under test, and one fixture per backend that can run on it.

Without a GPU the Triton kernels run on CPU tensors in Triton's interpreter, which must be
switched on before triton is first imported. On CI (``CI=true``) a backend that cannot run
is a failure, not a skip: every backend must be tested there.
"""

from __future__ import annotations

import atexit
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

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
# Backends that run on DEVICE; the cpp backend exists only for CPU tensors.
BACKENDS = ["triton", "cpp", "torch"] if DEVICE.type == "cpu" else ["triton", "torch"]
INTERPRETED = DEVICE.type == "cpu"  # Triton runs interpreted: keep its shapes small


def require_backend(name: str) -> None:
    status = ss.available_backends()[name]
    if not status.available:
        if os.environ.get("CI"):
            pytest.fail(f"backend {name} must be available on CI: {status.reason}")
        pytest.skip(f"backend {name} unavailable here: {status.reason}")


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest):
    """Run the test body with one backend forced; yields its name."""
    require_backend(request.param)
    with ss.use_backend(request.param):
        yield request.param


@pytest.fixture
def gen() -> torch.Generator:
    """A fixed-seed generator: fresh random data per test, the same every run."""
    return torch.Generator().manual_seed(20261123)

"""Run from outside the source tree against an installed wheel: the C++ backend loads and agrees.

The package and its extension must both come from site-packages, installed from a manylinux wheel (.ci/wheels.sh).
"""

import importlib.metadata
import sys
import sysconfig
from pathlib import Path

import torch

import stablesoftmax as ss
from stablesoftmax import _C

source_tree = Path(sys.argv[1]).resolve()
site = Path(sysconfig.get_paths()["platlib"]).resolve()
for module in (ss, _C):
    where = Path(module.__file__).resolve()
    assert source_tree not in where.parents, f"imported the source tree, not the wheel: {where}"
    assert site in where.parents, f"{module.__name__} is not from site-packages ({site}): {where}"
wheel_info = importlib.metadata.distribution("stablesoftmax").read_text("WHEEL") or ""
tags = [line.split(":", 1)[1].strip() for line in wheel_info.splitlines() if line.startswith("Tag:")]
assert tags and all("-manylinux_" in tag for tag in tags), f"not installed from a manylinux wheel: {tags}"
status = ss.available_backends()["cpp"]
assert status.available, status
assert ss.backend_for("cpu") == "cpp"
gen = torch.Generator().manual_seed(0)
for dtype in (torch.float16, torch.bfloat16, torch.float32):
    x = (torch.randn(8, 152_064, generator=gen) * 5).to(dtype)
    with ss.use_backend("cpp"):
        ours = ss.softmax(x, -1, dtype=torch.float32)
    with ss.use_backend("torch"):
        pure = ss.softmax(x, -1, dtype=torch.float32)
    ref = torch.softmax(x.double(), -1)
    assert ((ours.double() - ref).abs() <= 1e-5 * ref.abs() + 1e-9).all(), dtype
    assert torch.allclose(ours, pure, rtol=2e-5, atol=1e-9), dtype
print(f"wheel OK ({', '.join(tags)}): {ss.__file__}; {_C.__file__}; {status}")

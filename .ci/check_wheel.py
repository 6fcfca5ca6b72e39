"""Run from outside the source tree against an installed wheel: the C++ backend loads and agrees."""

import sys

import torch

import stablesoftmax as ss

source_tree = sys.argv[1]
assert not ss.__file__.startswith(source_tree), f"imported the source tree, not the wheel: {ss.__file__}"
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
print(f"wheel OK: {ss.__file__}; {status}")

"""Layouts: results (and gradients) have torch's strides for every layout and dim, on every backend;
the C++ backend reduces along any dimension inside its kernels (fork-safe, no torch ops)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from _reference import assert_close_to_reference, reference
from conftest import DEVICE, isa_axis, require_backend

import stablesoftmax as ss


def _layouts(gen: torch.Generator) -> dict[str, torch.Tensor]:
    def r(*shape, dtype=torch.float32):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * 3).to(dtype).to(DEVICE)

    base = r(30, 41)
    return {
        "contiguous": r(3, 5, 7),
        "channels_last": r(2, 6, 5, 4).to(memory_format=torch.channels_last),
        "channels_last_3d": r(2, 5, 3, 4, 3, dtype=torch.float16).to(memory_format=torch.channels_last_3d),
        "transposed": base.t(),
        "permuted": r(4, 6, 5, dtype=torch.bfloat16).permute(2, 0, 1),
        "expanded": r(1, 9).expand(6, 9),
        "expanded_middle": r(3, 1, 8).expand(3, 5, 8),
        "sliced": base[1::3, 2::4],
        "offset": base.view(-1)[17 : 17 + 35 * 11].view(35, 11)[3:, 1:],
        "vector": r(23),
    }


LAYOUTS = list(_layouts(torch.Generator().manual_seed(0)))


def _cases(name: str, gen: torch.Generator):
    x = _layouts(gen)[name]
    return x, range(x.ndim)


@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
@pytest.mark.parametrize("name", LAYOUTS)
@isa_axis
def test_forward_strides_and_values(backend, name, log, gen):
    x, dims = _cases(name, gen)
    op = ss.log_softmax if log else ss.softmax
    ref_op = torch.log_softmax if log else torch.softmax
    for dim in dims:
        out = op(x, dim)
        expected = ref_op(x, dim)
        assert out.shape == expected.shape and out.dtype == expected.dtype
        assert out.stride() == expected.stride(), (name, dim)
        assert_close_to_reference(out, reference(x, dim, log), log)
        if out.ndim > 1:  # what failed under patch(): a view that needs torch's layout
            out.view(out.shape[0], -1)


@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
@pytest.mark.parametrize("name", LAYOUTS)
@isa_axis
def test_backward_strides_and_values(backend, name, log, gen):
    x, dims = _cases(name, gen)
    op = ss.log_softmax if log else ss.softmax
    ref_op = torch.log_softmax if log else torch.softmax
    for dim in dims:
        for grad_layout in (("contiguous", "transposed", "expanded")[dim % 3],):
            leaf = x.detach().requires_grad_()
            y = op(leaf, dim)
            g = torch.randn(y.shape, generator=gen).to(y.dtype).to(DEVICE)
            if grad_layout == "transposed" and y.ndim > 1:
                g = g.mT.contiguous().mT
            elif grad_layout == "expanded":
                g = g[..., :1].expand(y.shape)
            (got,) = torch.autograd.grad(y, leaf, g)
            leaf64 = x.detach().double().requires_grad_()
            (want,) = torch.autograd.grad(ref_op(leaf64, dim), leaf64, g.double())
            leaf_t = x.detach().requires_grad_()
            (torch_grad,) = torch.autograd.grad(ref_op(leaf_t, dim), leaf_t, g)
            assert got.stride() == torch_grad.stride(), (name, dim, grad_layout)
            assert got.dtype == torch_grad.dtype
            tol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[x.dtype]
            scale = want.abs().amax() + g.double().abs().amax() * (x.shape[dim] if log else 1)
            assert ((got.double() - want).abs() <= tol * scale + 1e-7).all(), (name, dim, grad_layout)


def test_channels_last_view_under_patch(backend, gen):
    x = torch.randn(2, 3, 4, 5, generator=gen).to(DEVICE).to(memory_format=torch.channels_last)
    with ss.patched():
        y = torch.softmax(x, 1)
        assert y.view(2, -1).shape == (2, 60)
        assert y.stride() == torch.empty(2, 3, 4, 5).stride()


@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
def test_size_one_dims_with_any_stride(backend, log, gen):
    """A reduced dimension of size 1 with a non-unit stride (the Triton backend used to assert)."""
    op = ss.log_softmax if log else ss.softmax
    cases = [
        (torch.randn(1, 19, generator=gen), 0),
        (torch.randn(4, generator=gen)[::4], 0),
        (torch.randn(5, 3, generator=gen)[:, 1:2], 1),
        (torch.randn(3, 1, 4, generator=gen).permute(2, 1, 0), 1),
    ]
    for x, dim in cases:
        x = x.to(DEVICE)
        out = op(x, dim)
        assert out.stride() == torch.softmax(x, dim).stride()
        assert_close_to_reference(out, reference(x, dim, log), log)
        leaf = x.detach().requires_grad_()
        g = torch.randn(x.shape, generator=gen).to(DEVICE)
        (got,) = torch.autograd.grad(op(leaf, dim), leaf, g)
        leaf64 = x.detach().double().requires_grad_()
        (want,) = torch.autograd.grad((torch.log_softmax if log else torch.softmax)(leaf64, dim), leaf64, g.double())
        assert torch.allclose(got.double(), want, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
@isa_axis
def test_reduce_first_dim_of_a_matrix(backend, dtype, log, gen):
    """softmax(x, 0) of a (V, N) tensor: columns reduced in place, tails of the column tiles, non-finite columns."""
    rows, cols = (300, 77) if backend != "triton" else (40, 19)
    x = (torch.randn(rows, cols, generator=gen, dtype=torch.float64) * 4).to(dtype).to(DEVICE)
    x[:, 3] = -float("inf")
    x[5, 4] = float("inf")
    x[7, 6] = float("nan")
    x[: rows // 2, 9] = -float("inf")
    op = ss.log_softmax if log else ss.softmax
    assert_close_to_reference(op(x, 0), reference(x, 0, log), log)
    assert_close_to_reference(op(x, 0, dtype=torch.float32), reference(x, 0, log), log)
    y = x[:, :64].clone()  # a column tile without special values: the vector path
    assert_close_to_reference(op(y, 0), reference(y, 0, log), log)


_FORK_CHILD = textwrap.dedent(
    """
    import os, sys, time, torch
    import stablesoftmax as ss
    torch.set_num_threads(4)
    a = torch.randn(1024, 1024)
    for _ in range(3):  # the parent uses torch's intra-op threads (OpenMP), and the package's pool
        (a @ a).t().contiguous().sum()
    ss.softmax(torch.randn(4, 100_000), -1)
    # Inputs made here: in the child, any large torch op of its own would hang in torch's pool.
    x = torch.randn(1024, 1024).requires_grad_()
    g = torch.randn(1024, 1024)
    v = torch.randn(2, 512, 512)
    rows = torch.randn(8, 100_000)
    pid = os.fork()
    if pid == 0:
        try:
            with ss.use_backend("cpp"):
                y = ss.softmax(x, 0)
                y.backward(g)
                z = ss.log_softmax(v, 1)
                w = ss.softmax(rows, -1)  # the package's own pool, rebuilt in the child
            small = [y[:, :8], x.grad[:, :8], z[0, :, :8], w[:, :1000]]  # checks below torch's grain size
            ok = all(bool(torch.isfinite(t).all()) for t in small) and abs(float(y[:, :8].double().sum()) - 8) < 1e-4
            os._exit(0 if ok else 3)
        except BaseException as exc:
            print(exc, file=sys.stderr)
            os._exit(4)
    for _ in range(600):  # wait up to 60 s, then kill a hung child
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            sys.exit(os.waitstatus_to_exitcode(status))
        time.sleep(0.1)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    print("the forked child hung", file=sys.stderr)
    sys.exit(5)
    """
)


@pytest.mark.skipif(not hasattr(os, "fork") or DEVICE.type != "cpu", reason="fork on CPU only")
def test_forked_child_reduces_along_dim_0():
    """A forked child after the parent used torch's OpenMP threads: softmax(x, 0) and its backward must
    not touch torch's intra-op pool (it hangs in a child) and the package's pool must be rebuilt."""
    require_backend("cpp")
    env = {k: v for k, v in os.environ.items() if k != "STABLESOFTMAX_BACKEND"}
    proc = subprocess.run([sys.executable, "-c", _FORK_CHILD], env=env, timeout=120, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]

"""The C++ backend's threads and memory: the pool follows the thread count, concurrent callers get
the serial results, per-thread scratch stays bounded, and staged and recomputed exponentials agree.
Bitwise invariance to batch size, position, thread count and split: tests/test_invariance.py."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading

import pytest
import torch
from conftest import CPP_ISAS, DEVICE, cpp_isa, require_backend

import stablesoftmax as ss

pytestmark = pytest.mark.skipif(DEVICE.type != "cpu", reason="the C++ backend runs on CPU tensors")


@pytest.fixture
def cpp():
    require_backend("cpp")
    from stablesoftmax import _C

    threads = torch.get_num_threads()
    with ss.use_backend("cpp"):
        yield _C
    torch.set_num_threads(threads)


def test_pool_follows_the_thread_count(cpp):
    x = torch.randn(64, 65_536)
    torch.set_num_threads(64)
    ss.softmax(x, -1)
    assert cpp.pool_workers() == 63
    for threads in (2, 1, 4, 2):
        torch.set_num_threads(threads)
        ss.softmax(x, -1)
        assert cpp.pool_workers() <= threads - 1
    torch.set_num_threads(64)
    ss.log_softmax(x, 0)  # the column kernels use the same pool
    torch.set_num_threads(3)
    ss.log_softmax(x, 0)
    assert cpp.pool_workers() <= 2


_SPIN_CHILD = textwrap.dedent(
    """
    import torch, stablesoftmax as ss
    from stablesoftmax import _C
    torch.set_num_threads(2)
    x = torch.randn(64, 65_536, generator=torch.Generator().manual_seed(3))
    with ss.use_backend("cpp"):
        a = ss.softmax(x, -1)
        b = ss.softmax(x, -1)  # the workers slept in between when the spin is 0
    want = torch.softmax(x.double(), -1)
    assert torch.equal(a, b) and torch.allclose(a.double(), want, rtol=1e-5, atol=1e-12)
    print(_C.pool_spin_us())
    """
)


@pytest.mark.parametrize(("value", "spin"), [(None, 200), ("0", 0), ("20", 20), ("fast", 200), ("-5", 200)])
def test_pool_spin_follows_the_environment(value, spin):
    """STABLESOFTMAX_POOL_SPIN_US sets how long idle workers spin (0: they sleep at once); a value that is not a
    non-negative integer keeps the default. The results do not depend on it."""
    require_backend("cpp")
    env = {k: v for k, v in os.environ.items() if k not in ("STABLESOFTMAX_BACKEND", "STABLESOFTMAX_POOL_SPIN_US")}
    if value is not None:
        env["STABLESOFTMAX_POOL_SPIN_US"] = value
    proc = subprocess.run([sys.executable, "-c", _SPIN_CHILD], env=env, timeout=300, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert int(proc.stdout.split()[-1]) == spin


def test_concurrent_callers_get_the_serial_results(cpp):
    gen = torch.Generator().manual_seed(5)
    inputs = [torch.randn(r, c, generator=gen).half() for r, c in [(1, 152_064), (4, 70_000), (64, 3000), (300, 77)]]
    torch.set_num_threads(2)
    expected = [(ss.softmax(x, -1), ss.log_softmax(x, 0)) for x in inputs]
    errors: list[str] = []

    def worker(k: int) -> None:
        for i in range(6):
            x = inputs[(k + i) % len(inputs)]
            got = (ss.softmax(x, -1), ss.log_softmax(x, 0))
            want = expected[(k + i) % len(inputs)]
            if not all(torch.equal(g, w) for g, w in zip(got, want)):
                errors.append(f"thread {k}, input {(k + i) % len(inputs)}")

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


_RSS_CHILD = textwrap.dedent(
    """
    import gc, os, sys, torch
    import stablesoftmax as ss
    torch.set_num_threads(2)
    page = os.sysconf("SC_PAGE_SIZE")
    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * page
    with ss.use_backend("cpp"):
        ss.softmax(torch.randn(4, 1000).half(), -1)
        before = rss()
        for shape in [(4, 1 << 23), (1, 1 << 23)]:
            x = torch.randn(shape).half()
            for dtype in (None, torch.float32):
                y = ss.softmax(x, -1, dtype=dtype)
                del y
            y = ss.log_softmax(x, -1)
            del x, y
        gc.collect()
        grown = rss() - before
    print(grown)
    sys.exit(0 if grown < (40 << 20) else 1)
    """
)


def test_scratch_memory_is_bounded():
    """Rows of 2^23 float16 need 32 MiB of float32 stage each: after the calls, what the threads keep
    must stay under the per-thread cap (16 MiB) times the threads, not grow to the largest row."""
    require_backend("cpp")
    env = {k: v for k, v in os.environ.items() if k != "STABLESOFTMAX_BACKEND"}
    proc = subprocess.run([sys.executable, "-c", _RSS_CHILD], env=env, timeout=300, capture_output=True, text=True)
    assert proc.returncode == 0, f"resident memory grew by {proc.stdout.strip()} bytes; {proc.stderr[-1000:]}"


@pytest.mark.slow
@pytest.mark.parametrize("isa", CPP_ISAS or [None])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_staged_and_recomputed_exponentials_agree(cpp, dtype, isa):
    """A row of 2^21 + 512 entries: one thread stages its exponentials (8 MiB), two threads split it and
    recompute them (the shared stage would pass 8 MiB): bitwise the same output."""
    x = (torch.randn(1, (1 << 21) + 512, generator=torch.Generator().manual_seed(9)) * 6).to(dtype)
    with cpp_isa(isa):
        torch.set_num_threads(1)
        want = ss.softmax(x, -1)
        torch.set_num_threads(2)
        assert torch.equal(ss.softmax(x, -1), want), isa

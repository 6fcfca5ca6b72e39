"""The C++ backend's threads and memory: the work runs on torch's own OpenMP threads (its own pool in a forked
child, or when asked), both runtimes give the same bits, the pool follows the thread count, concurrent callers get
the serial results, per-thread scratch stays bounded, and staged and recomputed exponentials agree.
Bitwise invariance to batch size, position, thread count and split: tests/test_invariance.py."""

from __future__ import annotations

import contextlib
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


@contextlib.contextmanager
def thread_runtime(name: str):
    """Run the block on the extension's thread runtime ``name`` ("openmp" or "pool"); restores "auto"."""
    from stablesoftmax import _C

    try:
        _C.set_thread_runtime(name)
    except ValueError as exc:  # torch without an OpenMP runtime (not so on CI's Linux wheels)
        if os.environ.get("CI"):
            raise
        pytest.skip(str(exc))
    try:
        yield
    finally:
        _C.set_thread_runtime("auto")


RUNTIMES = ["openmp", "pool"]


def _runtime_env(**extra: str) -> dict[str, str]:
    drop = ("STABLESOFTMAX_BACKEND", "STABLESOFTMAX_POOL_SPIN_US", "STABLESOFTMAX_CPU_THREADS")
    return {**{k: v for k, v in os.environ.items() if k not in drop}, **extra}


def _run(code: str, env: dict[str, str], timeout: int = 300, args: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], env=env, timeout=timeout,
                          capture_output=True, text=True)  # fmt: skip


_CENSUS_CHILD = """
    import os, sys, torch, stablesoftmax as ss
    from stablesoftmax import _C
    torch.set_num_threads(4)
    a = torch.randn(512, 512)
    x = torch.randn(1, 152_064).half()
    def threads():
        return len(os.listdir("/proc/self/task"))
    (a @ a).exp()  # torch's OpenMP team now exists
    before = threads()
    with ss.use_backend("cpp"):
        for _ in range(3):
            ss.softmax(x, -1); ss.log_softmax(a, 0); ss.sample_from_logits(x, 2, top_k=40, top_p=0.9, seed=1)
            (a @ a).exp()
    print(_C.thread_runtime()[0], threads() - before, _C.pool_workers())
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads in /proc")
@pytest.mark.parametrize(("asked", "runtime", "new_threads"), [(None, "openmp", 0), ("pool", "pool", 3)])
def test_work_runs_on_torchs_openmp_threads(asked, runtime, new_threads):
    """By default the kernels run on the OpenMP team torch's own ops use: no thread of ours exists, so none
    competes with torch's for the cores. The pool (asked for here) adds its threads-1 workers, which shows the
    census counts them."""
    require_backend("cpp")
    env = _runtime_env(**({"STABLESOFTMAX_CPU_THREADS": asked} if asked else {}))
    proc = _run(_CENSUS_CHILD, env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got_runtime, grown, workers = proc.stdout.split()
    assert (got_runtime, int(grown), int(workers)) == (runtime, new_threads, new_threads)


@pytest.mark.parametrize(("value", "runtime"), [("openmp", "openmp"), ("auto", "openmp"), ("bogus", "openmp")])
def test_thread_runtime_follows_the_environment(value, runtime):
    """STABLESOFTMAX_CPU_THREADS=auto|openmp|pool (an unknown value is auto); "pool": see the census test."""
    require_backend("cpp")
    proc = _run("import torch; from stablesoftmax import _C; print(*_C.thread_runtime(), sep='|')",
                _runtime_env(STABLESOFTMAX_CPU_THREADS=value))  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    name, why = proc.stdout.strip().split("|")
    assert name == runtime and "GOMP_parallel" in why, why


def test_unknown_thread_runtime_is_refused(cpp):
    with pytest.raises(ValueError, match="'auto', 'openmp' or 'pool'"):
        cpp.set_thread_runtime("tbb")
    assert cpp.thread_runtime()[0] in RUNTIMES


_FORK_CHILD = """
    import os, torch, stablesoftmax as ss
    from stablesoftmax import _C
    torch.set_num_threads(2)
    x = torch.randn(3, 152_064).half()
    with ss.use_backend("cpp"):
        want = [ss.softmax(x[:1], -1), ss.log_softmax(x, -1), ss.sample_from_logits(x, 3, top_p=0.9, seed=2)]
        assert _C.thread_runtime()[0] == "openmp"
        pid = os.fork()
        if pid == 0:
            got = [ss.softmax(x[:1], -1), ss.log_softmax(x, -1), ss.sample_from_logits(x, 3, top_p=0.9, seed=2)]
            name, why = _C.thread_runtime()
            # bytes compared without torch ops: a parallel torch op hangs in this child (torch's own OpenMP)
            same = all(a.numpy().tobytes() == b.numpy().tobytes() for a, b in zip(got, want))
            ok = name == "pool" and "fork" in why and same
            os._exit(0 if ok else 3)
        _, status = os.waitpid(pid, 0)
        print("child", os.waitstatus_to_exitcode(status), _C.thread_runtime()[0])
"""


def test_forked_child_leaves_openmp_for_the_pool():
    """After fork() torch's OpenMP team does not exist in the child (its own parallel ops hang there): the child's
    calls run on a fresh pool of ours, split across threads, with the parent's bits; the parent keeps OpenMP."""
    require_backend("cpp")
    try:
        proc = _run(_FORK_CHILD, _runtime_env(), timeout=120)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError("the forked child hung") from exc
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["child", "0", "openmp"], proc.stdout + proc.stderr[-2000:]


_FORK_BEFORE_ANY_CALL_CHILD = """
    import os, sys, torch, stablesoftmax as ss
    torch.set_num_threads(2)
    x = torch.randn(1, 152_064)
    x.exp()  # torch's OpenMP team now exists in the parent
    if sys.argv[1] == "small":
        ss.softmax(torch.randn(2, 8), -1)  # the extension imported, no parallel call yet
    assert ("stablesoftmax._C" in sys.modules) == (sys.argv[1] == "small")
    want = x.numpy().copy()  # the answer, computed in the child without torch ops: float64 numpy
    pid = os.fork()
    if pid == 0:
        with ss.use_backend("cpp"):
            got = ss.softmax(x, -1)  # split across both threads
        from stablesoftmax import _C
        import numpy as np
        e = np.exp(want.astype(np.float64) - want.max())
        ok = _C.thread_runtime()[0] == "pool" and np.abs(got.numpy() - e / e.sum()).max() < 1e-9
        os._exit(0 if ok else 3)
    _, status = os.waitpid(pid, 0)
    print("child", os.waitstatus_to_exitcode(status))
"""


@pytest.mark.parametrize("parent", ["none", "small"])
def test_child_forked_before_any_parallel_call_leaves_openmp(parent):
    """The parent ran torch's OpenMP team, then forked before any parallel stablesoftmax call: without importing
    the extension at all ("none": the package's os.register_at_fork hook tells it in the child) or after a call too
    small to use threads ("small": the extension's own fork handler, registered at its import). The child must not
    enter OpenMP."""
    require_backend("cpp")
    try:
        proc = _run(_FORK_BEFORE_ANY_CALL_CHILD, _runtime_env(), timeout=120, args=(parent,))
    except subprocess.TimeoutExpired as exc:
        raise AssertionError("the forked child hung") from exc
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["child", "0"], proc.stdout + proc.stderr[-2000:]


@pytest.mark.parametrize("threads", [2, 4])
def test_runtimes_give_the_same_bits(cpp, threads):
    """Softmax, log_softmax along both dims, backward and every sampling path: OpenMP and the pool agree bitwise."""
    gen = torch.Generator().manual_seed(21)
    x = (torch.randn(3, 100_003, generator=gen) * 5).half()
    cols = torch.randn(4000, 40, generator=gen)
    grad = torch.randn(3, 100_003, generator=gen)
    torch.set_num_threads(threads)

    def run() -> list[torch.Tensor]:
        leaf = x.float().requires_grad_()
        y = ss.softmax(leaf, -1)
        (dx,) = torch.autograd.grad(y, leaf, grad)
        probs = torch.softmax(x.float(), -1)
        return [y.detach(), dx, ss.log_softmax(x, -1), ss.log_softmax(cols, 0),
                ss.softmax(cols, 0, dtype=torch.float16),
                ss.sample_from_logits(x, 5, temperature=0.8, seed=3),
                ss.sample_from_logits(x, 2, top_k=40, top_p=0.95, seed=4),
                ss.multinomial(probs, 4, generator=torch.Generator().manual_seed(5))]  # fmt: skip

    results = {}
    for name in RUNTIMES:
        with thread_runtime(name):
            results[name] = run()
    for a, b in zip(results["openmp"], results["pool"]):
        assert torch.equal(a, b)


def test_pool_follows_the_thread_count(cpp):
    with thread_runtime("pool"):
        _pool_follows_the_thread_count(cpp)


def _pool_follows_the_thread_count(cpp):
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
    proc = _run(_SPIN_CHILD, _runtime_env(**({"STABLESOFTMAX_POOL_SPIN_US": value} if value is not None else {})))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert int(proc.stdout.split()[-1]) == spin


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_concurrent_callers_get_the_serial_results(cpp, runtime):
    with thread_runtime(runtime):
        _concurrent_callers_get_the_serial_results()


def _concurrent_callers_get_the_serial_results():
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
    proc = _run(_RSS_CHILD, _runtime_env())
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

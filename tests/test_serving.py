"""The package as a long-lived server uses it: many Python threads at once, forks, a long loop of mixed calls.

Results must not depend on what ran before or beside: concurrent calls give bitwise the serial
results, a forked child (a DataLoader worker) computes without hanging, and memory returns to a
bounded level after large calls.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading

import pytest
import torch
from conftest import DEVICE

import stablesoftmax as ss

pytestmark = pytest.mark.skipif(DEVICE.type != "cpu", reason="host-process behaviour of the CPU backends")


def _workload(seed: int) -> list[torch.Tensor]:
    """A mixed batch of calls, deterministic in ``seed``: softmax along two dims, sampling with filters, multinomial."""
    gen = torch.Generator().manual_seed(seed)
    x16 = (torch.randn(5, 9_000, generator=gen) * 4).half()
    x32 = torch.randn(300, 17, generator=gen) * 3
    probs = torch.rand(3, 2_000, generator=gen)
    seeds = torch.arange(5, dtype=torch.int64) + seed
    return [
        ss.softmax(x16, -1),
        ss.log_softmax(x16, -1, dtype=torch.float32),
        ss.softmax(x32, 0),
        ss.sample_from_logits(x16, 4, temperature=0.8, top_k=40, top_p=0.9, seed=seeds, offset=3),
        ss.sample_from_logits(x16, 3, replacement=False, seed=seed),
        *ss.sample_from_logits(x16, 2, temperature=0.5, min_p=0.1, seed=seed, return_logprobs=True),
        ss.multinomial(probs, 5, replacement=True, generator=torch.Generator().manual_seed(seed)),
    ]


@pytest.mark.parametrize("backend_name", ["cpp", "torch"])
def test_concurrent_threads_give_the_serial_results(backend_name):
    """8 Python threads (more than the cores), each with its own work, against one serial run."""
    with ss.use_backend(backend_name):
        serial = {s: _workload(s) for s in range(8)}
        results: dict[int, list[list[torch.Tensor]]] = {s: [] for s in range(8)}
        errors: list[BaseException] = []

        def worker(s: int) -> None:
            try:
                with ss.use_backend(backend_name):  # the choice is per thread
                    for _ in range(4):
                        results[s].append(_workload(s))
            except BaseException as e:  # pragma: no cover - reported below
                errors.append(e)

        threads = [threading.Thread(target=worker, args=(s,)) for s in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
    assert not errors, errors
    for s, runs in results.items():
        assert len(runs) == 4
        for run in runs:
            for got, want in zip(run, serial[s]):
                assert torch.equal(got, want)


def _run_child(code: str, timeout: int = 120) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-c", textwrap.dedent(code)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


def test_forked_child_computes_after_the_parent_used_everything():
    """A DataLoader-style fork after the parent ran torch's thread pool and every package op.

    After such a fork torch's own OpenMP pool hangs in the child (any parallel torch op), so the
    child may run only the package's ops: they must not reach a parallel torch op (no transposed
    copies), and the package's own pool must work in the child. Results are compared with numpy.
    """
    code = """
        import os, numpy as np, torch, stablesoftmax as ss
        torch.set_num_threads(2)
        x = torch.randn(256, 3000, requires_grad=True)
        (x @ x.T).sum().backward()                     # torch's OpenMP pool is now live
        ss.softmax(x, 0).sum().backward(); ss.softmax(x, -1); ss.log_softmax(x.detach().half(), 0)
        ss.sample_from_logits(x.detach(), 2, top_k=5, seed=1); ss.multinomial(torch.rand(4, 100), 2)
        y = torch.randn(256, 3000, requires_grad=True)  # the child's inputs and answers, made here
        g, y16 = torch.randn(256, 3000), y.detach().half()  # (a float16 copy in the child would hang in torch)
        want = [ss.softmax(y.detach(), 0), ss.log_softmax(y16, 0), ss.softmax(y.detach(), -1),
                ss.sample_from_logits(y.detach(), 3, top_p=0.9, seed=2)]
        want_grad = torch.autograd.grad(ss.softmax(y, 0), y, g)[0]
        pid = os.fork()
        if pid == 0:
            got = [ss.softmax(y.detach(), 0), ss.log_softmax(y16, 0), ss.softmax(y.detach(), -1),
                   ss.sample_from_logits(y.detach(), 3, top_p=0.9, seed=2)]
            got_grad = torch.autograd.grad(ss.softmax(y, 0), y, g)[0]
            same = all(np.array_equal(a.view(torch.int16 if a.dtype == torch.float16 else a.dtype).numpy(),
                                      b.view(torch.int16 if b.dtype == torch.float16 else b.dtype).numpy())
                       for a, b in zip([*got, got_grad], [*want, want_grad]))
            os._exit(0 if same else 3)
        _, status = os.waitpid(pid, 0)
        print("child", os.waitstatus_to_exitcode(status))
    """
    try:
        done = _run_child(code, timeout=60)
    except subprocess.TimeoutExpired as e:
        raise AssertionError("the forked child hung") from e
    assert done.returncode == 0, done.stderr
    assert "child 0" in done.stdout, done.stdout + done.stderr


def test_long_loop_of_mixed_calls_keeps_memory_bounded():
    """Resident memory after many mixed-size calls, large ones included, returns near where it started."""
    code = """
        import ctypes, ctypes.util, gc, os, torch, stablesoftmax as ss
        page = os.sysconf("SC_PAGE_SIZE")
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        def rss_mib():
            # freed memory the allocator keeps is handed back first (glibc's malloc_trim): what is left
            # resident is memory still in use, which is what a leak keeps
            gc.collect()
            if hasattr(libc, "malloc_trim"):
                libc.malloc_trim(0)
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * page / 2**20
        def step(i):
            g = torch.Generator().manual_seed(i)
            cols = [7, 1000, 32000, 152064, 1 << 21][i % 5]
            rows = max(1, 4_000_000 // cols) if i % 5 == 4 else 1 + i % 9
            x = (torch.randn(rows, cols, generator=g) * 3).to([torch.float16, torch.float32, torch.bfloat16][i % 3])
            ss.softmax(x, -1); ss.log_softmax(x, -1, dtype=torch.float32)
            ss.sample_from_logits(x, 1 + i % 3, top_k=[0, 50, 5000][i % 3], top_p=0.9, seed=i)
            ss.sample_from_logits(x, 2, replacement=False, seed=i)
        for i in range(20):
            step(i)
        gc.collect(); base = rss_mib()
        for i in range(20, 220):
            step(i)
        gc.collect(); mid = rss_mib()
        for i in range(220, 420):
            step(i)
        gc.collect(); end = rss_mib()
        print(f"rss {base:.0f} -> {mid:.0f} -> {end:.0f} MiB")
        # A leak grows with the calls: the second 200 add (almost) nothing. Per-thread arenas and the
        # threads' capped scratch buffers appear over the first ones, which the looser bound allows.
        assert end - mid < 24, (base, mid, end)
        assert end - base < 96, (base, mid, end)
    """
    done = _run_child(code, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr

"""stablesoftmax.distributed against the single-device calls on the gathered logits.

Real multi-process groups (gloo on CPU, a ``file://`` rendezvous, nothing beyond this host):
each world size is launched once, as subprocesses running this file, and every case runs
inside it, with the C++ shard kernels and (at one world size) with the torch ones. Every rank
builds the full logits from the case's seed, keeps its (uneven) vocabulary shard, and compares
the distributed answer with the single-device torch backend on the full logits: tokens must be
equal (no tie allowance: the cases have none), log-probs close. Error cases must raise the
single-device message on every rank; a rank that did not would wait in the next collective,
and the hard timeout turns that into a failure.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import traceback

import pytest
import torch
from conftest import require_backend

import stablesoftmax as ss

TIMEOUT_S = 240


def _sizes(vocab: int, world: int) -> list[int]:
    """Uneven shard sizes: rank r gets a share proportional to r + 2."""
    weights = [r + 2 for r in range(world)]
    sizes = [vocab * w // sum(weights) for w in weights]
    sizes[-1] += vocab - sum(sizes)
    return sizes


def _logits(seed: int, shape: tuple[int, ...], dtype=torch.float32, scale: float = 3.0, levels: int | None = None):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64) * scale
    if levels is not None:  # few distinct values: ties everywhere
        x = torch.round(x * levels / scale) / levels
    return x.to(dtype)


def _with_specials(x: torch.Tensor, seed: int, pos: int = 0, neg: int = 0, masked_rows=(), nan_rows=()):
    g = torch.Generator().manual_seed(seed + 1)
    x = x.clone()
    rows, vocab = x.shape[0], x.shape[-1]
    for r in range(rows):
        if neg:
            x[r, torch.randperm(vocab, generator=g)[:neg]] = -math.inf
        if pos and r % 2 == 0:
            x[r, torch.randperm(vocab, generator=g)[:pos]] = math.inf
    for r in masked_rows:
        x[r] = -math.inf
    for r in nan_rows:
        x[r, vocab // 2] = math.nan
    return x


def _shard(full: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    sizes = _sizes(full.shape[-1], world)
    start = sum(sizes[:rank])
    return full[..., start : start + sizes[rank]].clone()


def _same(a: torch.Tensor, b: torch.Tensor, what: str, atol: float = 2e-6, rtol: float = 2e-6) -> None:
    if a.shape != b.shape or a.dtype != b.dtype:
        raise AssertionError(f"{what}: {a.shape} {a.dtype} vs {b.shape} {b.dtype}")
    if a.dtype in (torch.int64, torch.int32):
        if not torch.equal(a, b):
            bad = (a != b).nonzero()[:5].tolist()
            raise AssertionError(f"{what}: differ at {bad}: {a.flatten()[:20].tolist()} vs {b.flatten()[:20].tolist()}")
        return
    torch.testing.assert_close(a, b, atol=atol, rtol=rtol, equal_nan=True, msg=lambda m: f"{what}: {m}")


def _sampling_cases():
    """(name, full logits, kwargs) of the sampling comparisons."""
    rows, vocab = 7, 1531
    base = _logits(1, (rows, vocab))
    specials = _with_specials(base, 2, pos=3, neg=200)
    padded = _logits(3, (rows, vocab))
    padded[:, -37:] = -math.inf  # padding columns of the last shard
    ties = _logits(4, (rows, vocab), levels=2)
    fp16_ties = _logits(5, (rows, vocab), torch.float16, levels=4)
    few = _with_specials(_logits(6, (rows, vocab)), 7, neg=vocab - 5)  # 5 candidates per row
    tiny = _logits(8, (rows, 9))  # shards of 1, 1, 2 and 5 columns over 4 ranks
    row_t = torch.tensor([1.0, 0.0, 0.5, 2.0, 0.0, 0.7, 1.3])
    row_k = torch.tensor([0, 1, 5, 40, vocab, vocab + 9, 3])
    row_p = torch.tensor([1.0, 0.9, 0.5, 0.99, 0.05, 0.7, 0.3])
    row_minp = torch.tensor([0.0, 0.1, 0.5, 1.0, 0.01, 0.3, 0.05])
    row_seed = torch.tensor([5, -7, 2**62, 11, 0, 3, 99])
    row_offset = torch.tensor([0, 1, 2, 3, 2**40, 5, 6])
    cases = []
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        x = base.to(dtype)
        cases += [
            (f"plain {dtype}", x, dict(num_samples=3, seed=11, return_logprobs=True)),
            (f"temperature {dtype}", x, dict(num_samples=2, temperature=0.6, seed=12, offset=row_offset)),
            (f"top-k {dtype}", x, dict(num_samples=4, top_k=20, seed=13, return_logprobs=True)),
            (f"top-p {dtype}", x, dict(num_samples=4, top_p=0.8, seed=14, return_logprobs=True)),
            (f"race {dtype}", x, dict(num_samples=5, replacement=False, seed=15, return_logprobs=True)),
        ]
    cases += [
        ("greedy with ties", ties, dict(num_samples=2, temperature=0.0, seed=1, return_logprobs=True)),
        ("per-row temperature", base, dict(num_samples=3, temperature=row_t, seed=2, return_logprobs=True)),
        ("per-row seed and offset", base, dict(num_samples=3, seed=row_seed, offset=row_offset)),
        ("+inf and -inf", specials, dict(num_samples=4, seed=3, return_logprobs=True)),
        ("+inf and -inf greedy", specials, dict(temperature=0.0, seed=3)),
        ("padding columns", padded, dict(num_samples=4, seed=4, top_p=0.9, return_logprobs=True)),
        ("3-D batch", base.reshape(7, 1, vocab).expand(7, 2, vocab), dict(num_samples=2, seed=5)),
        ("top-k 1", base, dict(top_k=1, seed=6)),
        ("top-k >= V", base, dict(num_samples=2, top_k=vocab, seed=7)),
        ("per-row top-k", base, dict(num_samples=3, top_k=row_k, seed=8, return_logprobs=True)),
        ("per-row top-k with ties", ties, dict(num_samples=3, top_k=row_k, seed=8, temperature=0.8)),
        ("int top-k with ties", ties, dict(num_samples=3, top_k=50, seed=9)),
        ("min-p", base, dict(num_samples=3, min_p=0.05, seed=9, return_logprobs=True)),
        ("per-row min-p", base, dict(num_samples=3, min_p=row_minp, seed=10)),
        ("top-k and min-p", specials, dict(num_samples=3, top_k=30, min_p=0.2, seed=11)),
        ("race with top-k", base, dict(num_samples=6, replacement=False, top_k=8, seed=12)),
        ("race with +inf", specials, dict(num_samples=3, replacement=False, seed=13, return_logprobs=True)),
        ("race, more samples than a shard", few, dict(num_samples=5, replacement=False, seed=14)),
        ("race, per-row seeds", base, dict(num_samples=4, replacement=False, seed=row_seed, temperature=row_t)),
        ("one sample without replacement", base, dict(replacement=False, seed=15, top_k=row_k)),
        ("per-row top-p", base, dict(num_samples=3, top_p=row_p, seed=16, return_logprobs=True)),
        ("top-p with ties", fp16_ties, dict(num_samples=3, top_p=0.6, seed=17)),
        ("top-p with per-row top-k", base, dict(num_samples=3, top_p=row_p, top_k=row_k, seed=18)),
        ("top-p with int top-k", specials, dict(num_samples=3, top_p=0.5, top_k=25, seed=19)),
        ("top-p, top-k, min-p, race", base,
         dict(num_samples=3, replacement=False, top_p=0.95, top_k=60, min_p=0.02, seed=20, temperature=row_t)),
        ("top-p float64", base.double(), dict(num_samples=3, top_p=row_p, seed=21)),
        ("top-p tiny", base, dict(num_samples=2, top_p=1e-6, seed=22)),
        ("race, shards < num_samples", tiny, dict(num_samples=4, replacement=False, seed=26, return_logprobs=True)),
        ("top-k larger than a shard", tiny, dict(num_samples=3, top_k=4, seed=27, top_p=0.9, return_logprobs=True)),
        ("unvalidated bad rows", _with_specials(base, 8, masked_rows=(1,), nan_rows=(4,)),
         dict(num_samples=2, seed=23, validate=False, return_logprobs=True)),
        ("unvalidated race", few, dict(num_samples=7, replacement=False, seed=24, validate=False)),
        ("unvalidated bad temperature", base,
         dict(num_samples=2, seed=25, validate=False, temperature=torch.tensor([1.0, -1, 1, math.nan, 1, 0, 1]))),
    ]  # fmt: skip
    return cases


def _error_cases(rank: int, world: int):
    rows, vocab = 7, 1531
    base = _logits(31, (rows, vocab))
    few = _with_specials(_logits(32, (rows, vocab)), 33, neg=vocab - 2)
    bad_t = torch.ones(rows)
    if rank == world - 1:
        bad_t[3] = -1.0  # only the last rank passes a bad per-row temperature
    return [
        ("NaN row", _with_specials(base, 34, nan_rows=(2, 5)), dict(seed=1), False),
        ("masked row", _with_specials(base, 35, masked_rows=(0,)), dict(seed=1), False),
        ("too few without replacement", few, dict(num_samples=3, replacement=False, seed=1), False),
        ("too few after top-k", base, dict(num_samples=3, replacement=False, top_k=2, seed=1), False),
        ("negative temperature", base, dict(temperature=-1.0, seed=1), False),
        ("top_p 0", base, dict(top_p=0.0, seed=1), False),
        ("num_samples > V", base, dict(num_samples=vocab + 1, replacement=False, seed=1), False),
        ("bad temperature on one rank", base, dict(temperature=bad_t, seed=1), True),
    ]


def _run_cases(rank: int, world: int) -> list[str]:
    import stablesoftmax.distributed as sd

    failures: list[str] = []

    def check(name, fn):
        try:
            fn()
        except (Exception, pytest.fail.Exception):
            failures.append(f"{name}: {traceback.format_exc(limit=3)}")

    def reference(index: int, fn):
        """``fn()`` computed on one rank (they take turns: the single-device calls are the slow part), sent to all."""
        import torch.distributed as dist

        owner = index % world
        box = [None]
        if rank == owner:
            try:
                box = [("ok", fn())]
            except Exception:
                box = [("failed", traceback.format_exc(limit=3))]
        dist.broadcast_object_list(box, src=owner)
        status, value = box[0]
        if status != "ok":
            raise AssertionError(f"the single-device reference failed on rank {owner}: {value}")
        return value

    def single_device(full, kw):
        with ss.use_backend("torch"):
            return ss.sample_from_logits(full, **kw)

    def single_device_error(full, kw):
        with ss.use_backend("torch"), pytest.raises(ss.StableSoftmaxError) as info:
            ss.sample_from_logits(full, **kw)
        return str(info.value)

    for index, (name, full, kw) in enumerate(_sampling_cases()):

        def case(full=full, kw=kw, index=index):
            want = reference(index, lambda: single_device(full, kw))
            got = sd.sample_from_logits(_shard(full, rank, world), **kw)
            if isinstance(want, tuple):
                _same(got[0], want[0], "tokens")
                _same(got[1], want[1], "logprobs", atol=1e-5, rtol=1e-5)
            else:
                _same(got, want, "tokens")

        check(name, case)

    def default_generator():
        full = _logits(41, (5, 999))
        for replacement in (True, False):
            torch.manual_seed(1234 + rank * (not replacement))  # the race: only rank 0's generator counts
            with ss.use_backend("torch"):
                torch.manual_seed(1234)
                want = ss.sample_from_logits(full, 3, replacement=replacement)
            torch.manual_seed(1234 + rank * (not replacement))
            got = sd.sample_from_logits(_shard(full, rank, world), 3, replacement=replacement)
            _same(got, want, f"tokens, replacement={replacement}")

    check("seed from rank 0's default generator", default_generator)

    for index, (name, full, kw, rank_dependent) in enumerate(_error_cases(rank, world)):

        def error_case(full=full, kw=kw, rank_dependent=rank_dependent, index=index):
            want = None if rank_dependent else reference(index, lambda: single_device_error(full, kw))
            with pytest.raises(ss.StableSoftmaxError) as info:
                sd.sample_from_logits(_shard(full, rank, world), **kw)
            if want is not None and str(info.value) != want:
                raise AssertionError(f"message differs:\n{info.value}\n{want}")
            if rank_dependent and world > 1 and "temperature must lie in" not in str(info.value):
                raise AssertionError(f"unexpected message {info.value}")

        check(f"error: {name}", error_case)

    def batch_mismatch():
        full = _logits(61, (7, 999))
        local = _shard(full, rank, world)
        if rank == world - 1:
            local = torch.cat([local, local[:1]])  # one row more on the last rank
        with pytest.raises(ss.StableSoftmaxError, match="same batch size"):
            sd.sample_from_logits(local, seed=1)

    if world > 1:
        check("error: batch size differs between ranks", batch_mismatch)

    def softmax_cases():
        for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
            full = _with_specials(_logits(51, (6, 1201), dtype), 52, pos=2, neg=100, masked_rows=(1,), nan_rows=(3,))
            want = ss.log_softmax(full, dim=-1)
            got = sd.log_softmax(_shard(full, rank, world))
            local_want = _shard(want, rank, world)
            tol = dict(atol=1e-5, rtol=1e-5) if dtype in (torch.float32, torch.float64) else dict(atol=1e-2, rtol=1e-2)
            _same(got, local_want, f"log_softmax {dtype}", **tol)
            tokens = torch.randint(0, 1201, (6, 4), generator=torch.Generator().manual_seed(53))
            got = sd.logprobs_of(_shard(full, rank, world), tokens)
            _same(got, want.gather(-1, tokens), f"logprobs_of {dtype}", **tol)
        full3 = _logits(54, (2, 3, 777))
        got = sd.log_softmax(_shard(full3, rank, world))
        _same(got, _shard(ss.log_softmax(full3, dim=-1), rank, world), "log_softmax 3-D", atol=1e-5, rtol=1e-5)
        with pytest.raises(ss.StableSoftmaxError, match="token ids must lie"):
            sd.logprobs_of(_shard(full3, rank, world), torch.full((2, 3, 1), 777))

    check("log_softmax and logprobs_of", softmax_cases)

    def bytes_independent_of_vocab():
        configs = [
            dict(temperature=0.7), dict(temperature=0.0), dict(top_k=50), dict(top_p=0.9), dict(min_p=0.05),
            dict(top_k=torch.tensor([3, 0, 9, 40]), top_p=0.8), dict(num_samples=4, replacement=False),
            dict(num_samples=3, return_logprobs=True),
        ]  # fmt: skip
        for kw in configs:
            sent = []
            for vocab in (600, 60_000):
                local = _shard(_logits(71, (4, vocab)), rank, world)
                sd.reset_comm_stats()
                sd.sample_from_logits(local, seed=5, **kw)
                sent.append(sd.comm_stats()["bytes_sent"])
            if sent[0] != sent[1]:
                raise AssertionError(f"{kw}: bytes sent {sent} at V = 600 and 60,000")

    check("communication independent of V", bytes_independent_of_vocab)
    return failures


def _worker(rank: int, world: int, init_file: str, out_dir: str, backend: str) -> None:
    import torch.distributed as dist

    import stablesoftmax.distributed as sd

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        with ss.use_backend(backend):
            kernels = sd._shard_kernels(torch.zeros(1, 1)).__name__.rsplit(".", 1)[-1]
            failures = [] if kernels == f"{backend}_shard" else [f"shard kernels {kernels}, not {backend}'s"]
            failures += _run_cases(rank, world)
        dist.barrier()
    finally:
        dist.destroy_process_group()
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(failures, f)


# The local passes run on the C++ shard kernels (CPU tensors) at every world size, and on the torch ones
# (what other devices and float64 use) at one uneven world size.
@pytest.mark.parametrize(("world", "backend"), [(1, "cpp"), (2, "cpp"), (3, "cpp"), (4, "cpp"), (3, "torch")])
def test_distributed_matches_single_device(world: int, backend: str) -> None:
    require_backend(backend)
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "rendezvous")
        env = dict(os.environ, OMP_NUM_THREADS="1")
        procs = [
            subprocess.Popen(
                [sys.executable, __file__, str(rank), str(world), init_file, tmp, backend],
                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            )
            for rank in range(world)
        ]  # fmt: skip
        outputs = []
        try:
            for p in procs:
                outputs.append(p.communicate(timeout=TIMEOUT_S)[0])
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            for p in procs:
                p.communicate()
            pytest.fail(f"world {world}: a rank hung for over {TIMEOUT_S} s")
        for rank, (p, out) in enumerate(zip(procs, outputs)):
            assert p.returncode == 0, f"rank {rank} exited {p.returncode}:\n{out[-4000:]}"
        for rank in range(world):
            with open(os.path.join(tmp, f"rank{rank}.json")) as f:
                failures = json.load(f)
            assert not failures, f"rank {rank} of {world}:\n" + "\n".join(failures)


if __name__ == "__main__":
    _worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5])

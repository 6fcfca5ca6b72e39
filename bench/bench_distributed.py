"""Vocab-parallel sampling against gathering the logits first: per-step time and bytes communicated.

Usage: ``python bench/bench_distributed.py [--world 4] [--rows 64] [--vocab 152064] [--steps 10] [--dtype float16]``.
Spawns ``--world`` CPU processes (gloo, ``file://`` rendezvous, one torch thread each); every rank holds a
``(rows, vocab / world)`` shard. Compared, per step (median over ``--steps`` after two warm-up steps):

* ``distributed``: :func:`stablesoftmax.distributed.sample_from_logits` on the shard;
* ``gather+ss``: ``all_gather`` of the shards, then :func:`stablesoftmax.sample_from_logits` on the full logits
  (automatic backend: the C++ kernels on CPU), and ``gather+ss torch``: the same with the torch backend forced,
  the algorithm ``distributed`` runs on its shard, so the difference is the split and the collectives;
* ``gather+torch``: ``all_gather``, then ``torch.multinomial(torch.softmax(x.float() / T, -1), 1)`` (with top-k:
  ``torch.topk`` then the same on the k kept).

Bytes: what one rank puts into collectives per step (``comm_stats()['bytes_sent']``; an all-gather's result is
``world`` times that) for ``distributed``; the shard's size for the gathering pipelines. Rank 0 prints the table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch
import torch.distributed as dist

CONFIGS = [
    ("T=0.7", dict(temperature=0.7)),
    ("T=0 (greedy)", dict(temperature=0.0)),
    ("top-k 50", dict(temperature=0.7, top_k=50)),
    ("top-p 0.9", dict(temperature=0.7, top_p=0.9)),
    ("top-k 50 + top-p 0.9", dict(temperature=0.7, top_k=50, top_p=0.9)),
    ("min-p 0.05", dict(temperature=0.7, min_p=0.05)),
    ("4 without replacement", dict(temperature=0.7, num_samples=4, replacement=False)),
]


def _time(fn, steps: int) -> float:
    for _ in range(2):
        fn()
    times = []
    for _ in range(steps):
        dist.barrier()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    # the step is as slow as its slowest rank
    t = torch.tensor([statistics.median(times)], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t)


def _torch_pipeline(full: torch.Tensor, kw: dict) -> torch.Tensor:
    x = full.float()
    temperature = kw.get("temperature", 1.0)
    if temperature == 0:
        return x.argmax(dim=-1, keepdim=True)
    x = x / temperature
    n = kw.get("num_samples", 1)
    replacement = kw.get("replacement", True)
    if kw.get("top_k"):
        values, idx = torch.topk(x, kw["top_k"], dim=-1)
        return idx.gather(-1, torch.multinomial(torch.softmax(values, -1), n, replacement))
    if kw.get("top_p"):  # the usual sort / cumsum / mask pipeline
        values, idx = torch.sort(x, dim=-1, descending=True)
        p = torch.softmax(values, -1)
        drop = (p.cumsum(-1) - p) >= kw["top_p"]
        p = torch.softmax(values.masked_fill(drop, -float("inf")), -1)
        return idx.gather(-1, torch.multinomial(p, n, replacement))
    p = torch.softmax(x, -1)
    if kw.get("min_p"):
        p = p.masked_fill(p < kw["min_p"] * p.amax(-1, keepdim=True), 0)
    return torch.multinomial(p, n, replacement)


def _worker(rank: int, world: int, init_file: str, args: argparse.Namespace) -> None:
    import stablesoftmax as ss
    import stablesoftmax.distributed as sd

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    dtype = getattr(torch, args.dtype)
    cols = args.vocab // world
    g = torch.Generator().manual_seed(rank)
    local = (torch.randn(args.rows, cols, generator=g) * 4).to(dtype)
    parts = [torch.empty_like(local) for _ in range(world)]

    def gathered() -> torch.Tensor:
        dist.all_gather(parts, local)
        return torch.cat(parts, dim=-1)

    shard_bytes = local.numel() * local.element_size()
    lines = []
    for name, kw in CONFIGS:
        kw = dict(kw)
        n = kw.pop("num_samples", 1)
        t_dist = _time(lambda n=n, kw=kw: sd.sample_from_logits(local, n, seed=7, **kw), args.steps)
        sd.reset_comm_stats()
        sd.sample_from_logits(local, n, seed=7, **kw)
        stats = sd.comm_stats()
        t_ss = _time(lambda n=n, kw=kw: ss.sample_from_logits(gathered(), n, seed=7, **kw), args.steps)
        with ss.use_backend("torch"):
            t_ss_torch = _time(lambda n=n, kw=kw: ss.sample_from_logits(gathered(), n, seed=7, **kw), args.steps)
        t_torch = _time(lambda n=n, kw=kw: _torch_pipeline(gathered(), dict(kw, num_samples=n)), args.steps)
        lines.append(
            f"| {name} | {t_dist * 1e3:.1f} | {stats['bytes_sent']:,} ({stats['collectives']}) | "
            f"{t_ss * 1e3:.1f} | {t_ss_torch * 1e3:.1f} | {t_torch * 1e3:.1f} | {shard_bytes:,} |"
        )
    if rank == 0:
        print(f"{world} ranks x ({args.rows}, {cols}) {args.dtype}, gloo on CPU, 1 thread per rank; median ms per step")
        print("| config | distributed ms | bytes sent per rank (collectives) | gather+ss ms | gather+ss torch ms | "
              "gather+torch ms | bytes sent per rank, gathering |")  # fmt: skip
        print("|---|---|---|---|---|---|---|")
        print("\n".join(lines))
    dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", type=int, default=4)
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--vocab", type=int, default=152064)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory() as tmp:
        rendezvous = os.path.join(tmp, "rendezvous")
        torch.multiprocessing.spawn(_worker, args=(args.world, rendezvous, args), nprocs=args.world)


if __name__ == "__main__":
    sys.exit(main())

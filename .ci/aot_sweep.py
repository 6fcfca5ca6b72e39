#!/usr/bin/env python
# ruff: noqa: B007, E501, RUF005, RUF100  (the shared tool's own style, kept to ease comparing the two)
"""AOT compile sweep of stablesoftmax's Triton kernels for NVIDIA targets, without a GPU.

The project's copy of the team's ../shared/tools/aot_sweep.py, kept in step with the kernels: it records
the top-k / top-p radix-select kernels of triton_sampling (_select_init, _count, _count_select,
_mass_select) and triton_shard's _mass_round_kernel (top-p's mass rounds), in place of the bisection kernel
the shared tool still names, and the vocabulary-parallel shard kernels of triton_shard (kept mass, search,
histogram, top values, race) at shards of Qwen's vocabulary over 2 and 8 ranks (shard_launches).

Drives the project's own launch wrappers (softmax_forward / softmax_backward / sample_rows /
sample_probs) with meta tensors, with every @triton.jit kernel replaced by a recorder, so
the planners (_plan, _Plan) pick BLOCK / ROWS / SPLIT_P2 / num_warps exactly as they would
on CUDA (SM count patched per target, sampling planner's GPU constants forced). Each
recorded launch is specialised by Triton's own binder (int % 16 -> tt.divisibility, ints
equal to 1 -> constexpr, i32 vs i64) and compiled with triton.compile for every target.

Per compile it reports: ok / error, registers, spill stores / loads, stack, shared memory
(Triton's dynamic smem), global load / store widths (in the innermost loop when the kernel
has loops, else all), approximate-math instructions, and checks the launch grids against
CUDA's limits (x < 2^31, y and z <= 65535).

    python ../shared/tools/aot_sweep.py --repo .            # default sweep
    python ../shared/tools/aot_sweep.py --repo . --quick    # a few representative configs
    python ../shared/tools/aot_sweep.py --repo . --wide     # 11 sampling shapes, 3 logits dtypes
    python ../shared/tools/aot_sweep.py --repo . --full     # every dtype pair, unaligned variants too (hours)
Options: --archs 80,90,100  --jobs N  --csv PATH  --repo PATH  --only softmax|sampling  --sass-archs 90
         --dry-run (count the distinct compiles only)  --summary-only (skip the per-compile table)
Measured on a 2-vCPU box (triton 3.9.0): --quick 575 compiles in 1.4 min; default 4083 compiles in 30 min;
--wide 6840 compiles in 61 min; --full ~29400 compiles (not run; hours). Compiles run in --jobs processes.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed

HERE = os.path.dirname(os.path.abspath(__file__))
os.environ["TRITON_ALWAYS_COMPILE"] = "1"  # ptxas must run every time: its -v log is what we parse
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9's default, without the warning
os.environ.pop("TRITON_INTERPRET", None)

ARCH_SMS = {80: 108, 86: 84, 89: 128, 90: 132, 100: 148, 120: 188}  # A100, A10-ish, L40S-ish, H100/H200, B200
DT = None  # filled after torch import
SHARD_KERNELS = ("_mass_kernel", "_search_kernel", "_hist_kernel", "_top_kernel", "_race_kernel")
_JOB_CTX = {}


# ----------------------------------------------------------------------------- recording launches


class Recorder:
    def __init__(self, name, log):
        self.name, self.log = name, log

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.log.append((self.name, tuple(grid), args, kwargs))

        return launch


def _argdesc(a):
    import torch

    if isinstance(a, torch.Tensor):
        return ("T", str(a.dtype).replace("torch.", ""))
    return a


@contextlib.contextmanager
def recording(mod, names, log):
    saved = {n: getattr(mod, n) for n in names}
    try:
        for n in names:
            setattr(mod, n, Recorder(n, log))
        yield saved
    finally:
        for n, f in saved.items():
            setattr(mod, n, f)


def softmax_launches(repo, arch, full, quick):
    """Distinct softmax launches the planner produces for rows 1..4096, cols 8..262144."""
    import torch
    import triton

    from stablesoftmax.backends import triton_softmax as S

    sms = ARCH_SMS[arch]
    S._sm_count = lambda t, i, s=sms: s  # the planner's view of the target's SM count
    dev = torch.device("cuda")
    colset = sorted(
        {2**k for k in range(3, 19)}
        | {2**k + 16 for k in range(4, 18)}
        | {3 * 2**k for k in range(3, 17)}
        | {1000, 32000, 128256, 152064, 256000}
    )
    colset = [c for c in colset if 8 <= c <= 262144]
    rowset = range(1, 4097) if not quick else (1, 2, 64, 1024, 4096)
    examples = {}
    for f64 in (False, True):
        for rows in rowset:
            for cols in colset:
                p = S._plan(rows, cols, dev, acc_f64=f64)
                key = (f64, p.path, p.block, p.rows_per_program, triton.next_power_of_2(p.split), p.num_warps)
                # prefer an example whose cols is a multiple of 16 (what real vocabularies are)
                if key not in examples or (examples[key][1] % 16 and cols % 16 == 0):
                    examples[key] = (rows, cols)
    if quick:
        keep = {("fused", 4096), ("fused", 16384), ("looped", 4096), ("looped", 2048), ("split", 4096), ("split", 2048),
                ("fused", 1024), ("fused", 128)}
        examples = {k: v for k, v in examples.items() if (k[1], k[2]) in keep}

    fp = ["float16", "bfloat16", "float32", "float64"]
    if full:
        pairs = [(a, b) for a in fp for b in fp]
    elif quick:
        pairs = [("float16", "float16"), ("float32", "float32"), ("float64", "float64")]
    else:
        pairs = [("float16", "float16"), ("bfloat16", "bfloat16"), ("float32", "float32"), ("float64", "float64"),
                 ("float16", "float32"), ("bfloat16", "float32")]
    unaligned_pairs = pairs if full else [("float16", "float16")]
    out = []
    log = []
    names = ["_fwd_fused_kernel", "_fwd_looped_kernel", "_fwd_split_stats_kernel", "_fwd_split_write_kernel",
             "_bwd_fused_kernel", "_bwd_looped_kernel"]
    with recording(S, names, log):
        for key, (rows, cols) in sorted(examples.items(), key=str):
            f64 = key[0]
            for din, dout in pairs:
                if (din == "float64" or dout == "float64") != f64:
                    continue
                variants = [("A", cols)]
                if (din, dout) in unaligned_pairs and key[2] >= 16:
                    # an odd row length (GPT-2's 50257 is one): no 16-divisibility on cols / strides
                    variants.append(("U", cols - 1 if cols % 2 == 0 else cols))
                for spec, c in variants:
                    if S._plan(rows, c, dev, acc_f64=f64)[:3] != S._plan(rows, cols, dev, acc_f64=f64)[:3]:
                        continue
                    for lg in (False, True):
                        x = torch.empty(rows, c, dtype=getattr(torch, din), device="meta")
                        o = torch.empty(rows, c, dtype=getattr(torch, dout), device="meta")
                        n0 = len(log)
                        S.softmax_forward(x, o, lg)
                        # backward: y and grad in the forward output dtype, the gradient in the input dtype
                        S.softmax_backward(o, torch.empty_like(o), torch.empty_like(x), lg)
                        for name, grid, args, kw in log[n0:]:
                            out.append(dict(kernel=name, grid=grid, args=tuple(map(_argdesc, args)), kwargs=kw,
                                            shape=(rows, c), dtypes=f"{din}->{dout}", spec=spec))
    return out


def sampling_launches(repo, full, quick, wide=False):
    import torch

    from stablesoftmax.backends import triton_sampling as T

    # the planner's CUDA constants (it keys them on device.type == "cuda"; meta tensors are not)
    T._BLOCK_INTERP, T._TILE_INTERP = T._BLOCK_GPU, T._TILE_GPU
    for _n in ("COUNT_BLOCK", "COUNT_CHUNK", "MASS_BLOCK", "MASS_CHUNK"):
        setattr(T, f"_{_n}_INTERP", getattr(T, f"_{_n}_GPU"))
    if quick:
        shapes, nset = [(1, 152064), (64, 152064), (1, 2**20)], (1, 4)  # 2^20: top-p's select steps as kernels
    elif full:
        rowset = (1, 2, 3, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
        colset = (8, 16, 100, 1000, 4096, 32000, 32001, 50257, 128256, 152064, 262144)
        shapes, nset = [(r, c) for r in rowset for c in colset], (1, 4, 64, 256, 1024)
    elif wide:  # decode batches of common vocabularies, an odd (GPT-2) vocabulary, tiny and huge rows
        shapes = [(1, 152064), (2, 152064), (64, 152064), (4096, 152064), (1, 32000), (64, 128256), (256, 50257),
                  (1, 262144), (4096, 1000), (1, 8), (4096, 8)]
        nset = (1, 4, 256)
    else:  # decode batch 1 and 64 of Qwen's vocabulary, GPT-2's odd one, short rows in bulk
        shapes = [(1, 152064), (64, 152064), (256, 50257), (4096, 1000), (1, 2**20), (1, 2**24)]
        nset = (1, 4, 256)
    ldtypes = ("float16", "bfloat16", "float32") if (full or wide) else ("float16", "float32") if not quick \
        else ("float16",)
    pdtypes = ("float16", "bfloat16", "float32", "float64") if full else ("float16", "float32", "float64") if wide \
        else ("float16", "float64") if not quick else ("float32",)
    filters = [(False, False, False), (True, False, False), (False, True, False), (True, True, False),
               (False, False, True), (True, True, True)]
    if quick:
        filters = [(False, False, False), (True, True, True)]
    names = ["_stats_kernel", "_select_init_kernel", "_count_kernel", "_count_select_kernel", "_mass_select_kernel",
             "_block_kernel", "_draw_kernel"]
    from stablesoftmax.backends import triton_shard as H
    log, out = [], []
    i64 = dict(dtype=torch.int64, device="meta")
    f32 = dict(dtype=torch.float32, device="meta")
    with recording(T, names, log), recording(H, ["_mass_round_kernel"], log):
        for rows, cols in shapes:
            if True:
                seed, rid, off = (torch.empty(rows, **i64) for _ in range(3))
                for n in nset:
                    for repl in (True, False):
                        if not repl and (n == 1 or n > cols):
                            continue  # _sampling turns one draw into a draw with replacement
                        tokens = torch.empty(rows, n, **i64)
                        for dt in ldtypes:
                            x = torch.empty(rows, cols, dtype=getattr(torch, dt), device="meta")
                            for fk, fp, fm in filters:
                                for want_lp in (False, True):
                                    lp = torch.empty(rows, n, **f32) if want_lp else None
                                    n0 = len(log)
                                    T.sample_rows(
                                        x, torch.empty(rows, **f32), torch.empty(rows, **i64) if fk else None,
                                        torch.empty(rows, **f32) if fp else None, torch.empty(rows, **f32) if fm else None,
                                        seed, rid, off, n, repl, tokens, lp,
                                    )  # fmt: skip
                                    for name, grid, args, kw in log[n0:]:
                                        out.append(dict(kernel=name, grid=grid, args=tuple(map(_argdesc, args)),
                                                        kwargs=kw, shape=(rows, cols, n), dtypes=dt,
                                                        spec="A" if cols % 16 == 0 else "U"))
                        for dt in pdtypes:
                            p = torch.empty(rows, cols, dtype=getattr(torch, dt), device="meta")
                            n0 = len(log)
                            T.sample_probs(p, seed, rid, off, n, repl, tokens)
                            for name, grid, args, kw in log[n0:]:
                                out.append(dict(kernel=name, grid=grid, args=tuple(map(_argdesc, args)), kwargs=kw,
                                                shape=(rows, cols, n), dtypes="probs:" + dt,
                                                spec="A" if cols % 16 == 0 else "U"))
    return out


def shard_launches(quick):
    """The vocabulary-parallel shard kernels (triton_shard) at shards of Qwen's vocabulary over 2 and 8 ranks
    and an odd one: kept mass, search, histogram rounds, top values and the race, with and without filters."""
    import torch

    from stablesoftmax.backends import triton_shard as H

    for _n in ("BLOCK", "HIST_BLOCK", "HIST_CHUNK"):
        setattr(H, f"_{_n}_INTERP", getattr(H, f"_{_n}_GPU"))
    shapes = [(64, 19008)] if quick else [(1, 76032), (64, 19008), (4096, 19008), (64, 25129)]
    nset = (16,) if quick else (2, 16, 256)
    log, out = [], []
    i64 = dict(dtype=torch.int64, device="meta")
    f32 = dict(dtype=torch.float32, device="meta")
    f64 = dict(dtype=torch.float64, device="meta")
    with recording(H, SHARD_KERNELS, log):
        for rows, cols in shapes:
            m, t, cut, minp = (torch.empty(rows, 1, **f32) for _ in range(4))
            seed = torch.empty(rows, **i64)
            col0 = torch.empty((), **i64)
            for dt in ("float16", "float32") if not quick else ("float16",):
                x = torch.empty(rows, cols, dtype=getattr(torch, dt), device="meta")
                n0 = len(log)
                for c, p in ((None, None), (cut, minp)):
                    H.kept_mass(x, m, t, c, p)
                    H.search(x, m, t, c, p, torch.empty(rows, **f64), torch.empty(rows, 4, **f64))
                    for n in nset:
                        H.race(x, m, t, c, p, seed, seed, seed, col0, n)
                    for counts in (False, True):
                        for shift in (24, 0):
                            H.histogram(x, m, t, c, counts, torch.empty(rows, 1, **i64), shift)
                for k in (1, 50, 1024):
                    H.top_values(x, m, t, k)
                for name, grid, args, kw in log[n0:]:
                    out.append(dict(kernel=name, grid=grid, args=tuple(map(_argdesc, args)), kwargs=kw,
                                    shape=(rows, cols, 0), dtypes="shard:" + dt, spec="A" if cols % 16 == 0 else "U"))
    return out


def grid_probe(arch):
    """Launch grids (recorded only, nothing compiled) for extreme shapes, against CUDA's limits."""
    import torch

    from stablesoftmax.backends import triton_sampling as T
    from stablesoftmax.backends import triton_softmax as S

    S._sm_count = lambda t, i, s=ARCH_SMS[arch]: s
    T._BLOCK_INTERP, T._TILE_INTERP = T._BLOCK_GPU, T._TILE_GPU
    for _n in ("COUNT_BLOCK", "COUNT_CHUNK", "MASS_BLOCK", "MASS_CHUNK"):
        setattr(T, f"_{_n}_INTERP", getattr(T, f"_{_n}_GPU"))
    log, found = [], []
    names_s = ["_fwd_fused_kernel", "_fwd_looped_kernel", "_fwd_split_stats_kernel", "_fwd_split_write_kernel",
               "_bwd_fused_kernel", "_bwd_looped_kernel"]
    names_t = ["_stats_kernel", "_select_init_kernel", "_count_kernel", "_count_select_kernel", "_mass_select_kernel",
               "_block_kernel", "_draw_kernel"]
    from stablesoftmax.backends import triton_shard as H
    i64 = dict(dtype=torch.int64, device="meta")
    f32 = dict(dtype=torch.float32, device="meta")
    with recording(S, names_s, log), recording(T, names_t, log), recording(H, ["_mass_round_kernel"], log):
        for rows in (1, 2**16, 2**20, 2**24):
            for cols in (8, 4096, 152064, 2**20, 2**24):
                x = torch.empty(rows, cols, dtype=torch.float16, device="meta")
                S.softmax_forward(x, x, False)
                S.softmax_backward(x, x, x, False)
                for sp in (2, 1024, 4096):
                    if rows <= 2**16:
                        S.softmax_forward(x, x, False, split=sp)
        for rows in (1, 64, 2**20):
            for cols in (8, 1000, 152064, 2**24, 2**26):
                seed = torch.empty(rows, **i64)
                for n in (1, 4, 2**16, 2**19 + 2**18, 2**20, 2**24):
                    if rows * n > 2**36:
                        continue
                    tok = torch.empty(rows, n, **i64)
                    x = torch.empty(rows, cols, dtype=torch.float16, device="meta")
                    T.sample_rows(x, torch.empty(rows, **f32), torch.empty(rows, **i64), torch.empty(rows, **f32), None,
                                  seed, seed, seed, n, True, tok, None)
                    T.sample_probs(x, seed, seed, seed, n, True, tok)
                    if n <= cols and n <= 2**16:
                        T.sample_probs(x, seed, seed, seed, n, False, tok)
                    for name, grid, args, kw in log:
                        bad = check_grid(grid)
                        if bad:
                            found.append((name, f"rows={rows}", f"cols={cols}", f"n={n}", "grid=" + "x".join(map(str, grid)), bad))
                    log.clear()
        for name, grid, args, kw in log:
            bad = check_grid(grid)
            if bad:
                found.append((name, "grid=" + "x".join(map(str, grid)), bad))
    return found


# ----------------------------------------------------------------------------- specialisation


def specialise(fn, args, kwargs, arch):
    """What JITFunction.run would hand to triton.compile for these arguments on this target."""
    import torch
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import MockTensor, create_function_from_signature

    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    binder = _JOB_CTX.setdefault(("binder", fn.__name__, arch),
                                 create_function_from_signature(fn.signature, fn.params, backend))
    real = [MockTensor(getattr(torch, a[1])) if isinstance(a, tuple) and a and a[0] == "T" else a for a in args]
    kw = dict(kwargs)
    kw["debug"] = kw.get("debug", fn.debug) or knobs.runtime.debug
    kw["instrumentation_mode"] = knobs.compilation.instrumentation_mode
    kw["fpsan_homomorphic_casts"] = knobs.compilation.fpsan_homomorphic_casts
    bound, spec, opts = binder(*real, **kw)
    options, sig, cx, attrs = fn._pack_args(backend, kw, bound, spec, opts)
    return sig, cx, attrs, options.__dict__


def _freeze(o):
    if isinstance(o, dict):
        return tuple(sorted((str(k), _freeze(v)) for k, v in o.items()))
    if isinstance(o, (list, tuple)):
        return tuple(_freeze(v) for v in o)
    return repr(o)


# ----------------------------------------------------------------------------- PTX analysis

_MEM = re.compile(r"^\s*(?:@!?%p\d+\s+)?(ld|st)\.global((?:\.[\w:]+)*)\s")
_BRA = re.compile(r"\bbra(?:\.uni)?\s+(\$L__\w+);")
_LABEL = re.compile(r"^(\$L__\w+):")
_F64 = re.compile(r"^\s*(?:@!?%p\d+\s+)?(?:add|sub|mul|fma|cvt)\.(?:rn\.)?f64\b")  # float64 arithmetic / widening
_BITS = {"b8": 8, "u8": 8, "s8": 8, "b16": 16, "u16": 16, "s16": 16, "f16": 16, "b32": 32, "u32": 32, "s32": 32,
         "f32": 32, "b64": 64, "u64": 64, "s64": 64, "f64": 64, "b128": 128}


def ptx_memory(ptx):
    lines = ptx.splitlines()
    labels = {}
    for i, ln in enumerate(lines):
        m = _LABEL.match(ln.strip())
        if m:
            labels[m.group(1)] = i
    loops = []
    for i, ln in enumerate(lines):
        m = _BRA.search(ln)
        if m and m.group(1) in labels and labels[m.group(1)] < i:
            loops.append((labels[m.group(1)], i))
    acc = []
    for i, ln in enumerate(lines):
        m = _MEM.match(ln)
        if not m:
            continue
        mods = m.group(2).split(".")[1:]
        vec = 1
        bits = 0
        for md in mods:
            if md in ("v2", "v4", "v8"):
                vec = int(md[1])
            elif md in _BITS:
                bits = _BITS[md]
        depth = sum(1 for a, b in loops if a <= i <= b)
        hint = "evict" if "L2::cache_hint" in m.group(2) or "evict" in m.group(2) else ""
        acc.append((m.group(1), vec * bits, depth, hint))
    maxd = max((d for _, _, d, _ in acc), default=0)
    hot = [a for a in acc if a[2] == maxd]
    # float64 instructions inside loops, a loop being a header label with every back edge to it (the body of an
    # `if` inside a loop is often laid out after the loop's first back edge, with a second back edge of its own)
    spans = {}
    for a, b in loops:
        spans[a] = max(b, spans.get(a, b))
    f64_hot = sum(1 for i, ln in enumerate(lines) if _F64.match(ln) and any(a <= i <= b for a, b in spans.items()))
    def hist(kind, items):
        c = collections.Counter(b for k, b, _, _ in items if k == kind)
        return " ".join(f"{b}x{n}" for b, n in sorted(c.items(), reverse=True)) or "-"
    return dict(loops=len(loops), hot_depth=maxd, ld_hot=hist("ld", hot), st_hot=hist("st", hot),
                ld_all=hist("ld", acc), st_all=hist("st", acc), hints=sum(1 for a in acc if a[3]), f64_hot=f64_hot)


def ptx_math(ptx):
    c = collections.Counter(re.findall(r"\b(ex2\.approx[\w.]*|lg2\.approx[\w.]*|div\.full\.f32|div\.rn\.f(?:32|64)|"
                                       r"rcp\.approx[\w.]*|rcp\.rn[\w.]*|sqrt\.approx[\w.]*|mul\.hi\.[us]32|"
                                       r"shr\.[usb]32|fma\.rn\.f64|add\.f64|cvt\.f64\.f32)", ptx))
    return " ".join(f"{k}:{v}" for k, v in sorted(c.items()))


def compile_job(job):
    """Runs in a worker: compile one specialisation, parse ptxas -v and the PTX."""
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    knobs.nvidia.dump_ptxas_log = True
    name, modname, sig, cx, attrs, options, arch, want_sass = job
    mod = __import__(modname, fromlist=["x"])
    fn = getattr(mod, name)
    fn = getattr(fn, "_ss_orig", fn)
    target = GPUTarget("cuda", arch, 32)
    buf = io.StringIO()
    t0 = time.time()
    res = dict(ok=False)
    try:
        with contextlib.redirect_stdout(buf):
            k = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=cx, attrs=attrs), target=target,
                               options=options)
    except Exception as exc:  # a compile failure is a result
        msg = f"{type(exc).__name__}: {exc}"
        res.update(error=re.sub(r"\s+", " ", msg)[:400])
        res["secs"] = time.time() - t0
        return res
    res["secs"] = time.time() - t0
    log = buf.getvalue()
    g = lambda pat: (int(m.group(1)) if (m := re.search(pat, log)) else None)  # noqa: E731
    res.update(
        ok=True,
        regs=g(r"Used (\d+) registers"),
        spill_st=g(r"(\d+) bytes spill stores"),
        spill_ld=g(r"(\d+) bytes spill loads"),
        stack=g(r"(\d+) bytes stack frame"),
        smem=k.metadata.shared,
        num_warps=k.metadata.num_warps,
    )
    ptx = k.asm["ptx"]
    res.update(ptx_memory(ptx))
    res["math"] = ptx_math(ptx)
    # cuobjdump's view of the cubin (static shared includes nothing of Triton's dynamic smem), and its SASS
    cuobj = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(k.asm["cubin"])
        f.flush()
        try:
            r = subprocess.run([cuobj, "--dump-resource-usage", f.name], capture_output=True, text=True, timeout=60)
            m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", r.stdout)
            if m:
                res.update(cu_reg=int(m.group(1)), cu_shared=int(m.group(3)), cu_local=int(m.group(4)))
            if want_sass:
                r = subprocess.run([cuobj, "-sass", f.name], capture_output=True, text=True, timeout=120)
                res.update(sass_counts(r.stdout))
                if hasattr(mod, "_RARE_CASES"):
                    res.update({f"usual_{k}": v for k, v in usual_sass(mod, fn, sig, cx, attrs, target, options,
                                                                       cuobj).items()})
        except Exception as exc:
            res["cu_err"] = str(exc)
    return res


def usual_sass(mod, fn, sig, cx, attrs, target, options, cuobj):
    """:func:`sass_counts` of the kernel compiled without its rare rows' branches (the module's
    ``_RARE_CASES`` constexpr off: the softmax kernels' +inf rows), which a static count of the kernel or of a
    loop would otherwise count as if every element took them: the SASS of the usual path."""
    import triton
    import triton.language as tl
    from triton.compiler import ASTSource

    saved = mod._RARE_CASES
    mod._RARE_CASES = tl.constexpr(False)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            k = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=cx, attrs=attrs), target=target,
                               options=options)
    finally:
        mod._RARE_CASES = saved
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(k.asm["cubin"])
        f.flush()
        r = subprocess.run([cuobj, "-sass", f.name], capture_output=True, text=True, timeout=120)
    return sass_counts(r.stdout)


def sass_counts(sass):
    """Total SASS instructions; those reachable from the kernel's entry (``sass_reach``: not the subroutines of
    the slow paths, e.g. a division's, which ptxas places past the EXIT and calls only for rare operands, nor
    the padding); of each innermost loop (a backward BRA's span), in address order (``sass_loops``), and of the
    longest one (``sass_loop``)."""
    ins = []
    for ln in sass.splitlines():
        m = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*?);", ln)
        if m:
            ins.append((int(m.group(1), 16), m.group(2).strip()))
    at = {a: i for i, (a, _) in enumerate(ins)}
    spans = []
    for a, t in ins:
        m = re.search(r"\bBRA\b.*?(0x[0-9a-f]+)", t)
        if m and int(m.group(1), 16) < a:
            spans.append((int(m.group(1), 16), a))
    inner = sorted(sp for sp in spans if not any(o != sp and sp[0] <= o[0] and o[1] <= sp[1] for o in spans))
    loops = [sum(1 for x, _ in ins if lo <= x <= hi) for lo, hi in inner]
    seen, todo = set(), [0] if ins else []
    while todo:  # a call returns to the next instruction; a predicated EXIT or BRA goes on for the other threads
        i = todo.pop()
        if i in seen or i >= len(ins):
            continue
        seen.add(i)
        text = ins[i][1]
        pred = text.startswith("@")
        op = text.split()[1] if pred and len(text.split()) > 1 else text.split()[0]
        if op.startswith(("EXIT", "RET", "BRA")):
            if op.startswith("BRA") and (m := re.search(r"(0x[0-9a-f]+)", text)) and int(m.group(1), 16) in at:
                todo.append(at[int(m.group(1), 16)])
            if pred:
                todo.append(i + 1)
        else:
            todo.append(i + 1)
    return dict(sass_total=len(ins), sass_loop=max(loops, default=0), sass_loops=loops, sass_reach=len(seen))


# ----------------------------------------------------------------------------- occupancy


def occupancy(regs, warps, smem, arch):
    """Resident CTAs and warps per SM from registers (allocation granularity 256 per warp) and smem."""
    if not regs:
        return None, None
    max_warps = 64 if arch in (80, 90, 100) else 48
    max_smem = {80: 164 * 1024, 90: 228 * 1024, 100: 228 * 1024}.get(arch, 100 * 1024)
    regs_per_warp = ((regs * 32 + 255) // 256) * 256
    by_regs = 65536 // (regs_per_warp * warps)
    by_warps = max_warps // warps
    by_smem = max_smem // (smem + 1024) if smem else 32
    ctas = min(by_regs, by_warps, by_smem, 32)
    return ctas, ctas * warps


def check_grid(grid):
    g = list(grid) + [1] * (3 - len(grid))
    bad = []
    if g[0] > 2**31 - 1:
        bad.append("x>2^31-1")
    if g[1] > 65535:
        bad.append("y>65535")
    if g[2] > 65535:
        bad.append("z>65535")
    return ",".join(bad)


# ----------------------------------------------------------------------------- main


def cfg_string(kernel, kwargs, cx_sig):
    ks = {k: v for k, v in kwargs.items() if k != "num_warps"}
    s = ",".join(f"{k}={int(v) if isinstance(v, bool) else v}" for k, v in ks.items())
    w = kwargs.get("num_warps", 4)
    return f"{s},w={w}" + (f",{cx_sig}" if cx_sig else "")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--archs", default="80,90,100")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--csv", default=os.path.join(HERE, "aot_results.csv"))
    ap.add_argument("--repo", default=".")
    ap.add_argument("--only", choices=["softmax", "sampling"], default=None)
    ap.add_argument("--full", action="store_true")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--wide", action="store_true", help="more sampling shapes and dtypes than the default")
    ap.add_argument("--summary-only", action="store_true", help="print the condensed table only")
    ap.add_argument("--sass-archs", default="90", help="targets whose SASS is disassembled for the SASS/elt column "
                    "(cuobjdump -sass doubles a compile's cost); '' for none, 'all' for every target")
    ap.add_argument("--dry-run", action="store_true", help="count the distinct compiles, compile nothing")
    ap.add_argument("--kernels", default="", help="comma-separated kernel names: compile only these (default: all)")
    a = ap.parse_args()
    sys.path.insert(0, a.repo)
    # a throw-away Triton cache (every compile is forced, and a default sweep writes ~1.3 GB there)
    own_cache = "TRITON_CACHE_DIR" not in os.environ
    if own_cache:
        os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="aot_check_triton_cache_")
    t_start = time.time()
    import torch  # noqa: F401
    import triton

    from stablesoftmax.backends import triton_sampling as T
    from stablesoftmax.backends import triton_softmax as S

    archs = [int(x) for x in a.archs.split(",")]
    nv_bin = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    print(f"triton {triton.__version__}, torch {torch.__version__}, repo {a.repo}")
    for tool in ("ptxas", "ptxas-blackwell"):
        v = subprocess.run([os.path.join(nv_bin, tool), "--version"], capture_output=True, text=True).stdout
        print(f"  {tool}: {v.strip().splitlines()[-1] if v else 'missing'}")

    # 1. record launches
    launches = []  # (module, rec, arch)
    for arch in archs:
        if a.only != "sampling":
            for r in softmax_launches(a.repo, arch, a.full, a.quick):
                launches.append((S, r, arch))
        if a.only != "softmax":
            if arch == archs[0]:
                samp = sampling_launches(a.repo, a.full, a.quick, a.wide) + shard_launches(a.quick)
            from stablesoftmax.backends import triton_shard as H
            for r in samp:
                launches.append((H if r["kernel"] in SHARD_KERNELS + ("_mass_round_kernel",) else T, r, arch))
    if a.kernels:
        keep = set(a.kernels.split(","))
        launches = [x for x in launches if x[1]["kernel"] in keep]
    print(f"recorded {len(launches)} launches in {time.time() - t_start:.1f}s")
    probe = grid_probe(archs[0])
    print(f"grid probe (rows up to 2^24, cols up to 2^26, num_samples up to 2^24, sm_{archs[0]} SM count): "
          f"{len(probe)} launch(es) past CUDA grid limits")
    seen = set()
    for pr in probe:
        k = (pr[0], pr[-1], pr[2] if len(pr) > 3 else "")
        if k in seen:
            continue
        seen.add(k)
        print("   ", " ".join(pr))

    # 2. specialise and de-duplicate
    jobs = {}
    rows_of = collections.defaultdict(list)
    grid_problems = []
    for mod, r, arch in launches:
        fn = getattr(mod, r["kernel"])
        sig, cx, attrs, options = specialise(fn, r["args"], r["kwargs"], arch)
        g = check_grid(r["grid"])
        if g:
            grid_problems.append((r["kernel"], r["shape"], r["dtypes"], r["grid"], g))
        key = (r["kernel"], _freeze(sig), _freeze(cx), _freeze(attrs), _freeze(options), arch)
        if key not in jobs:
            ones = [n for (i,), v in cx.items() if (n := fn.arg_names[i]) not in r["kwargs"]]
            cx_sig = ("const1:" + "+".join(ones)) if ones else ""
            jobs[key] = (r["kernel"], mod.__name__, sig, cx, attrs, options, arch)
            rows_of[key] = dict(kernel=r["kernel"], cfg=cfg_string(r["kernel"], r["kwargs"], cx_sig),
                                sig=",".join(v for v in sig.values() if v != "constexpr"),
                                div16=sum(1 for v in attrs.values() if v), dtypes=r["dtypes"], spec=r["spec"],
                                shape=r["shape"], grid=r["grid"], arch=arch, warps=r["kwargs"].get("num_warps", 4),
                                kwargs=r["kwargs"])
    print(f"{len(jobs)} distinct compiles over {len(archs)} target(s); {len(grid_problems)} launches past grid limits")
    by_kernel = collections.Counter((rows_of[k]["kernel"], rows_of[k]["arch"]) for k in jobs)
    for (kern, arch), n in sorted(by_kernel.items()):
        print(f"   sm_{arch} {kern}: {n}")
    if a.dry_run:
        return
    sass_archs = archs if a.sass_archs == "all" else [int(x) for x in a.sass_archs.split(",") if x]
    jobs = {k: j + (j[-1] in sass_archs,) for k, j in jobs.items()}

    # 3. compile
    results = {}
    t_c = time.time()
    with ProcessPoolExecutor(max_workers=a.jobs) as ex:
        futs = {ex.submit(compile_job, j): k for k, j in jobs.items()}
        for i, f in enumerate(as_completed(futs), 1):
            results[futs[f]] = f.result()
            if i % 200 == 0:
                print(f"  {i}/{len(jobs)} compiled ({time.time() - t_c:.0f}s)", flush=True)
    print(f"compiled in {time.time() - t_c:.1f}s")

    # 4. tables
    hdr = ["arch", "kernel", "config", "dtypes", "spec", "ok", "regs", "spill st/ld", "stack", "smem", "CTA/SM",
           "warps/SM", "hot ld bits", "hot st bits", "vec", "loops", "math", "example shape", "grid", "elts/thr",
           "SASS/elt", "SASS total", "compile s", "hot f64", "SASS/elt loops"]
    table = []
    for key in sorted(jobs, key=lambda k: (rows_of[k]["arch"], rows_of[k]["kernel"], rows_of[k]["cfg"],
                                           rows_of[k]["dtypes"], rows_of[k]["spec"])):
        info, res = rows_of[key], results[key]
        if res.get("ok"):
            ctas, wps = occupancy(res["regs"], info["warps"], res["smem"], info["arch"])
            elem_bits = {"float16": 16, "bfloat16": 16, "float32": 32, "float64": 64}
            ld = res["ld_hot"]
            widest = max((int(t.split("x")[0]) for t in ld.split() if "x" in t), default=0)
            din = info["dtypes"].split("->")[0].replace("probs:", "")
            eb = elem_bits.get(din, 32)
            kw = info["kwargs"]
            tile = (kw.get("BLOCK", 1) * kw.get("ROWS", 1) if "BLOCK" in kw else
                    kw.get("R", 1) * kw.get("FB", kw.get("B", 1)) if "R" in kw else kw.get("SB", 1) * kw.get("B", 1))
            ept = tile / (32 * info["warps"])
            vec = "y" if widest >= max(64, 2 * eb) else ("n" if widest else "-")
            if vec == "n" and ept * eb <= widest:
                vec = "n(tile)"
            # the usual path's (softmax: compiled without the +inf rows' branches) where there is one
            pre = "usual_" if "usual_sass_reach" in res else ""
            n_sass = res.get(pre + "sass_loop") or res.get(pre + "sass_reach") or res.get("sass_total") or 0
            spe = f"{n_sass / ept:.1f}" if ept >= 1 and n_sass else "-"
            spe_loops = "/".join(f"{n / ept:.1f}" for n in res.get(pre + "sass_loops", [])) if ept >= 1 else ""
            table.append([f"sm_{info['arch']}", info["kernel"], info["cfg"], info["dtypes"], info["spec"], "ok",
                          res["regs"], f"{res['spill_st']}/{res['spill_ld']}", res["stack"], res["smem"], ctas, wps,
                          ld, res["st_hot"], vec, res["loops"], res["math"], "x".join(map(str, info["shape"])),
                          "x".join(map(str, info["grid"])), f"{ept:g}", spe, res.get("sass_total"),
                          f"{res['secs']:.2f}", res["f64_hot"], spe_loops])
        else:
            table.append([f"sm_{info['arch']}", info["kernel"], info["cfg"], info["dtypes"], info["spec"], "FAIL",
                          "", "", "", "", "", "", "", "", "", "", res.get("error", ""),
                          "x".join(map(str, info["shape"])), "x".join(map(str, info["grid"])), "", "", "",
                          f"{res.get('secs', 0):.2f}", "", ""])

    import csv

    with open(a.csv, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(hdr)
        w.writerows(table)

    def show(rows, cols):
        idx = [hdr.index(c) for c in cols]
        widths = [max(len(str(cols[j])), *(len(str(r[i])) for r in rows)) for j, i in enumerate(idx)] if rows else []
        print("  ".join(str(c).ljust(wd) for c, wd in zip(cols, widths)))
        for r in rows:
            print("  ".join(str(r[i]).ljust(wd) for i, wd in zip(idx, widths)))

    if not a.summary_only:
        print("\n=== every compile ===")
        show(table, ["arch", "kernel", "config", "dtypes", "spec", "ok", "regs", "spill st/ld", "smem", "CTA/SM",
                     "warps/SM", "hot ld bits", "hot st bits", "vec", "elts/thr", "SASS/elt"])

    # condensed: per (arch, kernel, config) the worst over dtypes / variants
    print("\n=== summary: per arch / kernel / config, max over dtype pairs (aligned 'A' rows; 'U' = odd cols) ===")
    groups = collections.OrderedDict()
    for r in table:
        groups.setdefault((r[0], r[1], r[2], r[4]), []).append(r)
    summ = []
    for (arch, kern, cfg, spec), rs in groups.items():
        oks = [r for r in rs if r[5] == "ok"]
        fails = [r for r in rs if r[5] != "ok"]
        regs = [r[6] for r in oks if r[6] is not None]
        spills = sorted({r[7] for r in oks})
        vecs = "".join(sorted({r[14] for r in oks}))
        spe = [float(r[20]) for r in oks if r[20] not in ("-", "")]
        summ.append([arch, kern, cfg, spec, f"{len(oks)}/{len(rs)}", f"{min(regs)}-{max(regs)}" if regs else "-",
                     ",".join(spills) or "-", max((r[9] for r in oks), default="-"),
                     min((r[11] for r in oks if r[11]), default="-"), vecs or "-",
                     f"{min(spe):.0f}-{max(spe):.0f}" if spe else "-", ";".join(sorted({r[3] for r in fails}))])
    shdr = ["arch", "kernel", "config", "spec", "ok", "regs", "spill st/ld", "smem", "min warps/SM", "vec", "SASS/elt",
            "failed dtypes"]
    widths = [max(len(h), *(len(str(r[i])) for r in summ)) for i, h in enumerate(shdr)] if summ else []
    print("  ".join(h.ljust(w) for h, w in zip(shdr, widths)))
    for r in summ:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))

    print("\n=== compact: per kernel and planner config (LOG and dtype pairs merged), targets side by side ===")
    def planner_cfg(cfg):
        return re.sub(r"(^|,)(LOG|HAS_TOPK|HAS_TOPP|HAS_THR|HAS_MINP|WANT_LP)=\d", "", cfg).replace(",const1:", " 1:")
    piv = collections.OrderedDict()
    for r in sorted(table, key=lambda r: (r[1], planner_cfg(r[2]), r[4])):
        piv.setdefault((r[1], planner_cfg(r[2]), r[4]), []).append(r)
    chdr = ["kernel", "config", "spec"] + [f"regs sm_{x}" for x in archs] + ["spills", "smem", "min warps/SM", "vec",
                                                                          "SASS/elt", "fails"]
    crows = []
    for (kern, cfg, spec), rs in piv.items():
        oks = [r for r in rs if r[5] == "ok"]
        per_arch = []
        for x in archs:
            rg = [r[6] for r in oks if r[0] == f"sm_{x}" and r[6] is not None]
            per_arch.append(f"{min(rg)}-{max(rg)}" if rg and min(rg) != max(rg) else (str(rg[0]) if rg else "-"))
        spe = [float(r[20]) for r in oks if r[20] not in ("-", "")]
        crows.append([kern, cfg, spec, *per_arch, ",".join(sorted({r[7] for r in oks})) or "-",
                      max((r[9] for r in oks), default="-"), min((r[11] for r in oks if r[11]), default="-"),
                      "".join(sorted({r[14] for r in oks})) or "-",
                      (f"{min(spe):.0f}-{max(spe):.0f}" if min(spe) != max(spe) else f"{spe[0]:.0f}") if spe else "-",
                      len(rs) - len(oks)])
    cw = [max(len(h), *(len(str(r[i])) for r in crows)) for i, h in enumerate(chdr)] if crows else []
    print("  ".join(h.ljust(w) for h, w in zip(chdr, cw)))
    for r in crows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, cw)))

    fails = [r for r in table if r[5] != "ok"]
    print(f"\n{len(table)} compiles, {len(fails)} failed, "
          f"{sum(1 for r in table if r[5] == 'ok' and r[7] != '0/0')} with spills")
    for r in fails[:40]:
        print("  FAIL", r[0], r[1], r[2], r[3], r[4], r[16][:300])
    if grid_problems:
        print("\nlaunches past CUDA grid limits (x < 2^31, y/z <= 65535):")
        for gp in grid_problems[:20]:
            print("  ", gp)
    if own_cache:
        import shutil

        shutil.rmtree(os.environ["TRITON_CACHE_DIR"], ignore_errors=True)
    print(f"\nCSV: {a.csv}\ntotal wall time {time.time() - t_start:.1f}s")


if __name__ == "__main__":
    main()

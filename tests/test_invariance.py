"""SPEC "Bitwise invariance": for one backend and CPU ISA, a row's softmax / log_softmax output, its
gradient and its sampled tokens (and their log-probabilities) are bitwise the same whatever the batch
size (1, 2, 7, 64), the row's position in the batch (first, middle, last), ``torch.get_num_threads()``
(1, 2, 4) and whether the row was split across threads.

Which calls split a row (csrc/, as built today): softmax and its backward split rows into block-aligned
chunks when there are fewer than twice as many rows as threads in use (calls of 16,384 entries or more;
at least 8,192 per thread), so with 2 or 4 threads a lone 65,536 row and a pair are split (2 or 4 chunks),
a batch of 7 on 4 threads too, a batch of 64 never. Sampling with replacement splits rows of 32,768 entries
or more when there are fewer rows than threads (a lone row on 2 or 4 threads, a pair on 4). Every C++
test runs once per ISA the build runs here (``conftest.CPP_ISAS``, "scalar" included). Each row of a batch
holds its own random data.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from conftest import CPP_ISAS, DEVICE, cpp_isa, require_backend

import stablesoftmax as ss

pytestmark = pytest.mark.skipif(DEVICE.type != "cpu", reason="thread counts and ISAs are the CPU backends'")

THREADS = (1, 2, 4)
# (batch size, positions of the row under test): first, middle and last; a batch of two once per position.
LAYOUTS = [(1, (0,)), (2, (0,)), (2, (1,)), (7, (0, 3, 6)), (64, (0, 32, 63))]
DTYPES = [torch.float16, torch.bfloat16, torch.float32]


@contextlib.contextmanager
def num_threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(params=CPP_ISAS or [None], ids=lambda isa: f"cpp-{isa}")
def isa(request):
    """The C++ backend forced, on one of its ISAs (restored to "auto" and the old thread count after)."""
    require_backend("cpp")
    with cpp_isa(request.param), ss.use_backend("cpp"), num_threads(torch.get_num_threads()):
        yield request.param


def _pool(rows: int, cols: int, dtype: torch.dtype, seed: int, scale: float = 4.0) -> torch.Tensor:
    """Fresh normal data, different in every row (row 0 is the row under test)."""
    return (torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed)) * scale).to(dtype)


def _differ(got: torch.Tensor, want: torch.Tensor) -> int:
    """Entries of ``got`` that differ from ``want`` over their common length along the last dim (draws)."""
    m = min(got.shape[-1], want.shape[-1])
    return int((got[..., :m] != want[..., :m]).sum())


def _check_everywhere(row, others, call, what: str, layouts=LAYOUTS) -> int:
    """``call(x, positions)`` returns per-row tensors (a tuple); the row ``row`` placed at ``positions`` of a
    batch whose other rows come from ``others`` must get bitwise what it gets alone on one thread (over
    the common number of draws, for tokens). Returns the number of comparisons made."""
    with num_threads(1):
        want = call(row[None].clone(), (0,))
    checked = 0
    for threads in THREADS:
        with num_threads(threads):
            for batch, positions in layouts:
                x = others[:batch].clone()
                x[list(positions)] = row
                got = call(x, positions)
                for pos in positions:
                    for k, (g, w) in enumerate(zip(got, want)):
                        differ = _differ(g[pos], w[0])
                        assert differ == 0, (
                            f"{what}: output {k} of the row at position {pos} in a batch of {batch} with "
                            f"{threads} threads: {differ} of {w[0].numel()} entries differ from the row alone "
                            "on 1 thread"
                        )
                        checked += 1
    return checked


# --------------------------------------------------------------------------- softmax / log_softmax

# (row length, input dtype, op, output dtype). 37: less than one 512-entry block; 1000: whole rows on one
# thread; 65,536 and 152,064 (a Qwen vocabulary): split on 2 and 4 threads when alone or in a pair;
# 100,003: split, with a partial last block. Every cheap combination, a spread of long ones.
_CHEAP = [
    (cols, dtype, op, out)
    for cols in (37, 1000)
    for dtype in DTYPES
    for op in ("softmax", "log_softmax")
    for out in ((None, torch.float32) if dtype != torch.float32 else (None,))
]
_LONG = [
    (65_536, torch.float16, "softmax", None),
    (65_536, torch.float16, "log_softmax", torch.float32),
    (65_536, torch.bfloat16, "softmax", torch.float32),
    (65_536, torch.bfloat16, "log_softmax", None),
    (65_536, torch.float32, "softmax", None),
    (65_536, torch.float32, "log_softmax", None),
    (100_003, torch.bfloat16, "softmax", torch.float32),
    (100_003, torch.float32, "log_softmax", None),
    (152_064, torch.float16, "softmax", None),
    (152_064, torch.float16, "log_softmax", torch.float32),
]
FORWARD_CASES = [
    pytest.param(cols, dtype, op, out, id=f"{cols}-{str(dtype)[6:]}-{op}-{str(out)[6:] if out else 'same'}")
    for cols, dtype, op, out in _CHEAP + _LONG
]


@pytest.mark.parametrize(("cols", "dtype", "op", "out_dtype"), FORWARD_CASES)
def test_softmax_and_log_softmax(isa, cols, dtype, op, out_dtype):
    fn = getattr(ss, op)
    pool = _pool(65, cols, dtype, seed=cols + DTYPES.index(dtype))
    n = _check_everywhere(pool[0], pool[1:], lambda x, _: (fn(x, -1, dtype=out_dtype),), f"{op} -> {out_dtype}")
    assert n == len(THREADS) * sum(len(p) for _, p in LAYOUTS)


BACKWARD_CASES = [
    (1000, torch.float16, "softmax"),
    (1000, torch.float32, "log_softmax"),
    (65_536, torch.float16, "softmax"),
    (65_536, torch.bfloat16, "log_softmax"),
    (100_003, torch.float32, "softmax"),
    (100_003, torch.float16, "log_softmax"),
]


@pytest.mark.parametrize(
    ("cols", "dtype", "op"), [pytest.param(*c, id=f"{c[0]}-{str(c[1])[6:]}-{c[2]}") for c in BACKWARD_CASES]
)
def test_backward(isa, cols, dtype, op):
    """The forward output and the input gradient, through autograd, for an upstream gradient per row."""
    fn = getattr(ss, op)
    pool = _pool(65, cols, dtype, seed=cols + 1)
    grads = _pool(65, cols, dtype, seed=cols + 2, scale=1.0)
    both = torch.stack([pool, grads], 1)  # (rows, 2, cols): a row and its upstream gradient travel together

    def call(x, _positions):
        inp = x[:, 0].clone().requires_grad_(True)
        y = fn(inp, -1)
        (gx,) = torch.autograd.grad(y, inp, x[:, 1])
        return y.detach(), gx

    _check_everywhere(both[0], both[1:], call, f"{op} backward")


def test_torch_backend_softmax_batch_and_position():
    """The torch backend (the SPEC promises invariance for each backend): on one thread, batch size and
    position (also across its row chunks: 6 rows of 65,536 float32 per chunk) do not change a row."""
    require_backend("torch")
    with ss.use_backend("torch"), num_threads(1):
        for cols, dtype in [(1000, torch.float16), (65_536, torch.float32), (152_064, torch.bfloat16)]:
            pool = _pool(65, cols, dtype, seed=cols + 3)
            row = pool[0]
            for op in (ss.softmax, ss.log_softmax):
                for out_dtype in (None, torch.float32):
                    want = op(row[None], -1, dtype=out_dtype)[0]
                    for batch, positions in LAYOUTS:
                        x = pool[1 : batch + 1].clone()
                        x[list(positions)] = row
                        got = op(x, -1, dtype=out_dtype)
                        for pos in positions:
                            assert torch.equal(got[pos], want), (cols, dtype, op.__name__, out_dtype, batch, pos)


def test_torch_backend_softmax_threads():
    """The same row alone on 1, 2 and 4 threads (the SPEC's "thread count") on the torch backend: four
    float32 rows of 65,536, each alone (whether the two sums round alike depends on the data)."""
    require_backend("torch")
    pool = _pool(4, 65_536, torch.float32, seed=11)
    differ = []
    with ss.use_backend("torch"):
        for r in range(pool.shape[0]):
            for op in (ss.softmax, ss.log_softmax):
                with num_threads(1):
                    want = op(pool[r : r + 1], -1)
                for threads in (2, 4):
                    with num_threads(threads):
                        got = op(pool[r : r + 1], -1)
                    if not torch.equal(got, want):
                        differ.append((r, op.__name__, threads, int((got != want).sum())))
    assert not differ, f"(row, op, threads, entries that differ from 1 thread): {differ}"


# --------------------------------------------------------------------------- sampling

# Each sampling path the kernels have; per-row seeds key each row by its own seed alone (SPEC "Randomness").
SAMPLING_PATHS = {
    "temperature": {"temperature": 0.8},
    "num_samples": {"temperature": 1.1, "num_samples": 64},
    "without-replacement": {"num_samples": 16, "replacement": False},
    "top_k": {"top_k": 50},
    "top_p": {"top_p": 0.9},
    "min_p": {"min_p": 0.05},
    "top_k+top_p": {"temperature": 1.2, "top_k": 200, "top_p": 0.95},
    "all-filters": {"temperature": 0.7, "top_k": 1000, "top_p": 0.8, "min_p": 0.01},
    "per-row-parameters": {"per_row": True},
    "greedy": {"temperature": 0.0, "num_samples": 4},
    "greedy-without-replacement": {"temperature": 0.0, "num_samples": 8, "replacement": False},
}
MANY = 20_000  # draws for the lone row and the batch of two (the cases split across threads)
FEW = 200  # draws per row in the batches of 7 and 64 (compared with the lone row's first FEW)


def _sampler(params: dict, many: int):
    """A ``call(x, positions)``: tokens (and log-probs) with seed 1234, offset 7 and the path's parameters at
    ``positions``; the other rows get seeds, offsets (and per-row parameters) of their own."""
    params = dict(params)
    per_row = params.pop("per_row", False)
    logprobs = params.pop("return_logprobs", True)
    fixed_n = params.pop("num_samples", None)

    def call(x, positions):
        rows = x.shape[0]
        at = torch.zeros(rows, dtype=torch.bool)
        at[list(positions)] = True
        g = torch.Generator().manual_seed(rows)
        kwargs = dict(params)
        kwargs["seed"] = torch.randint(0, 2**62, (rows,), generator=g).masked_fill(at, 1234)
        kwargs["offset"] = torch.randint(0, 1000, (rows,), generator=g).masked_fill(at, 7)
        if per_row:
            kwargs["temperature"] = (0.5 + torch.rand(rows, generator=g)).masked_fill(at, 0.9)
            kwargs["top_k"] = torch.randint(0, 3000, (rows,), generator=g).masked_fill(at, 400)
            kwargs["top_p"] = (0.5 + torch.rand(rows, generator=g) / 2).masked_fill(at, 0.85)
            kwargs["min_p"] = (torch.rand(rows, generator=g) / 10).masked_fill(at, 0.02)
        n = fixed_n or (many if rows <= 2 else FEW)
        out = ss.sample_from_logits(x, n, return_logprobs=logprobs, **kwargs)
        tokens = out[0] if logprobs else out
        assert (tokens[at] >= 0).all()
        return out if logprobs else (out,)

    return call


@pytest.mark.parametrize("path", list(SAMPLING_PATHS))
def test_sampling_paths(isa, path):
    """Every sampling path on a float16 row of 65,536 (split across threads when alone or in a pair)."""
    pool = _pool(65, 65_536, torch.float16, seed=list(SAMPLING_PATHS).index(path) + 20, scale=3.0)
    _check_everywhere(pool[0], pool[1:], _sampler(SAMPLING_PATHS[path], MANY), path)


def test_two_hundred_thousand_draws(isa):
    """The issue's case: 200,000 draws of a float16 row of 65,536 alone and second in a batch of two (the lone
    row is split on 2 and 4 threads, the pair on 4 only): 25 of them used to differ when a split row's block
    maxima and sums depended on where the split fell."""
    pool = _pool(2, 65_536, torch.float16, seed=65_536 + 5, scale=3.0)
    call = _sampler({"return_logprobs": False}, 200_000)  # the tokens-only kernel (log-probs: test_sampling_paths)
    with num_threads(1):
        want = call(pool[:1].clone(), (0,))
    for threads, batch in [(2, 1), (4, 1), (2, 2), (4, 2)]:
        with num_threads(threads):
            x = pool[:batch].flip(0).clone()  # the row under test last
            got = call(x, (batch - 1,))
        for k, (g, w) in enumerate(zip(got, want)):
            differ = _differ(g[batch - 1], w[0])
            assert differ == 0, f"output {k}: {differ} of 200,000 draws differ (batch {batch}, {threads} threads)"


@pytest.mark.parametrize("replacement", [True, False], ids=["replacement", "no_replacement"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=str)
def test_multinomial(isa, dtype, replacement):
    """``multinomial`` keys a row by the generator's call seed and the row's index, so here a row keeps its
    index: rows placed at indices 0, 1, 3, 6, 32 and 63 get the same draws in every batch that has that index
    (1, 2, 7, 64) and on any thread count (with replacement a lone row and a pair are split across threads)."""
    targets = torch.softmax(_pool(64, 65_536, torch.float32, seed=40, scale=3.0), -1).to(dtype)
    others = torch.softmax(_pool(64, 65_536, torch.float32, seed=41, scale=3.0), -1).to(dtype)
    want: dict[int, torch.Tensor] = {}
    for threads in THREADS:
        with num_threads(threads):
            for batch in (1, 2, 7, 64):
                at = [i for i in (0, 1, 3, 6, 32, 63) if i < batch]
                x = others[:batch].clone()
                x[at] = targets[at]
                n = (MANY if batch <= 2 else FEW) if replacement else 16
                got = ss.multinomial(x, n, replacement, generator=torch.Generator().manual_seed(5))
                for i in at:
                    if i not in want:
                        want[i] = got[i]
                        continue
                    differ = _differ(got[i], want[i])
                    assert differ == 0, f"row {i} of a batch of {batch} on {threads} threads: {differ} draws differ"
    assert sorted(want) == [0, 1, 3, 6, 32, 63]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("out_dtype", [None, torch.float32], ids=["same", "to_f32"])
@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
@pytest.mark.parametrize("cols", [1, 17, 64, 200, 512])
def test_short_rows_take_the_general_paths_bits(isa, dtype, out_dtype, log, cols):
    """Rows of at most one block (512) of a contiguous batch run through the short-row kernel; the same rows
    through a view the kernels cannot collapse to one batch dimension (half the rows of each matrix) run
    row by row on the general path. Bitwise the same, rows with NaN, +inf, only -inf and -inf entries included
    (the short-row kernel hands those rows back one by one)."""
    full = _pool(2, 66 * cols, torch.float32, seed=cols).view(2, 66, cols)
    full[0, 5, cols // 2] = float("nan")
    full[0, 9, 0] = float("inf")
    full[1, 3, :] = float("-inf")
    full[1, 7, : cols // 2] = float("-inf")
    full = full.to(dtype)
    view = full[:, :33]  # (2, 33, cols), batch strides (66 cols, cols): not one dimension
    dense = view.contiguous()
    op = ss.log_softmax if log else ss.softmax
    for threads in (1, 2):
        with num_threads(threads):
            got, want = op(dense, -1, dtype=out_dtype), op(view, -1, dtype=out_dtype)
        assert torch.equal(got.isnan(), want.isnan())
        assert torch.equal(torch.nan_to_num(got), torch.nan_to_num(want)), (isa, threads)

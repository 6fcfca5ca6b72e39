"""Every public op under ``torch.compile(fullgraph=True)`` on CPU: same answers as eager, same tokens, same errors.

The compiled graphs call the package's custom ops (``stablesoftmax._compiled``), whose real
implementations run the eager kernels: compiled output must equal eager output exactly, and both
must lie within the per-dtype tolerance of a float64 reference. Most tests compile with
``backend="aot_eager"`` (fake-tensor tracing, AOTAutograd, functionalisation: everything but code
generation); softmax, log_softmax, the backward pass and sample_from_logits also go through the
default inductor backend, which checks the fake implementations' strides at run time.
"""

from __future__ import annotations

import inspect
import math

import pytest
import torch
from _reference import reference
from torch._dynamo.testing import CompileCounter

import stablesoftmax as ss

# Inductor imports torch.utils.mkldnn, whose torch.jit.script_method decorator warns on import (torch >= 2.10).
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")

CPU = torch.device("cpu")
INF, NAN = math.inf, math.nan
DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
# Against the float64 reference (values of the output dtype): (rtol, atol), as in torch.testing.assert_close.
# float16 / bfloat16: about one ulp of the correctly rounded value; float32 / float64: the SPEC's relative bounds.
TOL = {
    torch.float16: (2.0**-9, 2.0**-24),
    torch.bfloat16: (2.0**-6, 1e-38),
    torch.float32: (1e-5, 1e-9),
    torch.float64: (1e-10, 1e-14),
}
LOG_TOL = {  # log_softmax: float32 within 1e-5 * (1 + |ref|)
    torch.float16: (2.0**-9, 2.0**-10),
    torch.bfloat16: (2.0**-6, 2.0**-7),
    torch.float32: (1e-5, 1e-5),
    torch.float64: (1e-10, 1e-10),
}


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """Each test compiles from scratch (no cache hits, no recompile limit carried over)."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _compile(fn, backend: str = "aot_eager"):
    return torch.compile(fn, fullgraph=True, backend=backend)


def _op(log: bool):
    return ss.log_softmax if log else ss.softmax


def _random(shape, dtype, gen, scale=4.0):
    return (torch.randn(shape, generator=gen, dtype=torch.float64) * scale).to(dtype)


def _with_nonfinite_rows(x: torch.Tensor) -> torch.Tensor:
    """Random rows plus the SPEC's non-finite cases (last dim >= 5)."""
    x = x.clone()
    x[0, 3] = -INF  # some -inf
    x[1] = -INF  # a masked row
    x[2, 1], x[2, 4] = INF, INF  # k = 2 entries +inf: 1/2 each
    x[3, :] = INF  # all +inf: 1/V each
    return x


def _assert_matches_reference(out: torch.Tensor, x: torch.Tensor, dim: int, log: bool) -> None:
    rtol, atol = (LOG_TOL if log else TOL)[out.dtype]
    expected = reference(x, dim, log).to(out.dtype)
    torch.testing.assert_close(out.double(), expected.double(), rtol=rtol, atol=atol, equal_nan=True)


# --------------------------------------------------------------------------- softmax / log_softmax


@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_softmax_inductor_matches_eager_and_reference(dtype, log, gen):
    op = _op(log)
    x = _with_nonfinite_rows(_random((6, 300), dtype, gen))
    compiled = _compile(lambda t: op(t, -1), backend="inductor")
    out, eager = compiled(x), op(x, -1)
    assert out.dtype == dtype and out.shape == x.shape
    assert torch.equal(out, eager)  # the same kernels run inside the custom op
    _assert_matches_reference(out, x, -1, log)
    if not log:
        assert out[2].double().tolist() == [0.0, 0.5, 0.0, 0.0, 0.5] + [0.0] * 295
        assert (out[3] == out[3, 0]).all()  # all +inf: uniform, 1/V within the tolerance above
        assert (out[1] == 0).all()


@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
def test_other_dims_strides_and_dtype_argument(log, gen):
    """dim other than -1, non-contiguous input and dtype=; inductor checks the fake output strides."""
    op = _op(log)
    cube = _random((3, 4, 50), torch.float16, gen)
    wide = _random((6, 90), torch.float32, gen)
    cases = [
        (cube, 1, None),
        (cube, 0, torch.float32),
        (cube.permute(2, 0, 1), 0, None),
        (wide.t(), 1, torch.float64),
        (wide[::2, 10:], -1, torch.bfloat16),
        (wide[::2, 10:], 0, None),  # not dense: contiguous output
        (wide, -2, None),
    ]
    compiled = _compile(lambda t, dim, dtype: op(t, dim, dtype=dtype), backend="inductor")
    for x, dim, dtype in cases:
        out, eager = compiled(x, dim, dtype), op(x, dim, dtype=dtype)
        assert out.dtype == (dtype or x.dtype) and out.shape == x.shape and out.stride() == eager.stride()
        assert torch.equal(out, eager)
        _assert_matches_reference(out, x, dim, log)


def test_nan_row_stays_nan_and_scalar_input(gen):
    x = _random((3, 20), torch.float32, gen)
    x[1, 7] = NAN
    out = _compile(lambda t: ss.softmax(t, -1))(x)
    assert torch.isnan(out[1]).all() and not torch.isnan(out[0]).any()
    scalar = torch.tensor(2.5)
    assert _compile(lambda t: ss.log_softmax(t, 0))(scalar).item() == 0.0


def test_errors_about_arguments_surface_at_run_time():
    """Bad dtype or dim: the package's error, raised by the op's real implementation."""
    with pytest.raises(ss.StableSoftmaxError, match=r"dtype torch\.int32 is not supported"):
        _compile(lambda t: ss.softmax(t, -1))(torch.ones(3, dtype=torch.int32))
    with pytest.raises(IndexError, match="dim 5 is out of range"):
        _compile(lambda t: ss.log_softmax(t, 5))(torch.ones(3, 4))
    out = _compile(lambda t: ss.softmax(t, -1, dtype=torch.float32))(torch.arange(4))  # int input, dtype given
    assert torch.equal(out, ss.softmax(torch.arange(4), -1, dtype=torch.float32))


@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_backward_under_compile(dtype, log, gen):
    """Gradients of a compiled loss equal the eager ones, in the input's dtype."""
    op = _op(log)
    x = _random((4, 33), dtype, gen)
    weights = _random((4, 33), torch.float32, gen)

    def loss(t, w):
        return (op(t, 0, dtype=torch.float32) * w).sum()

    backend = "inductor" if dtype in (torch.float16, torch.float32) else "aot_eager"
    grads = []
    for fn in (_compile(loss, backend=backend), loss):
        leaf = x.clone().requires_grad_(True)
        fn(leaf, weights).backward()
        grads.append(leaf.grad)
    assert grads[0].dtype == dtype
    assert torch.equal(grads[0], grads[1])
    # and against float64 autograd of torch's own op (finite inputs: the same function)
    leaf = x.double().requires_grad_(True)
    ((torch.log_softmax if log else torch.softmax)(leaf, 0) * weights.double()).sum().backward()
    rtol, atol = LOG_TOL[dtype] if log else TOL[dtype]
    torch.testing.assert_close(grads[0].double(), leaf.grad.to(dtype).double(), rtol=4 * rtol, atol=4 * atol + 1e-6)


def test_backward_non_finite_rows():
    x = torch.tensor([[1.0, INF, -INF, INF], [-INF, 2.0, 3.0, -INF]], requires_grad=True)
    w = torch.tensor([[1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0]])
    grads = []
    for fn in (_compile(lambda t: (ss.softmax(t, -1) * w).sum()), lambda t: (ss.softmax(t, -1) * w).sum()):
        fn(x).backward()
        grads.append(x.grad)
        x.grad = None
    assert torch.equal(grads[0], grads[1])


# --------------------------------------------------------------------------- sample_from_logits


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
def test_sample_int_seed_inductor_matches_eager(dtype, gen):
    x = _random((5, 1000), dtype, gen, scale=2.0)
    params = {"temperature": 0.8, "top_k": 50, "top_p": 0.9, "min_p": 0.01}
    compiled = _compile(lambda t: ss.sample_from_logits(t, 4, seed=1234, offset=3, **params), backend="inductor")
    tokens = compiled(x)
    assert tokens.shape == (5, 4) and tokens.dtype == torch.int64
    assert torch.equal(tokens, ss.sample_from_logits(x, 4, seed=1234, offset=3, **params))


def test_sample_per_row_seed_and_parameters(gen):
    x = _random((2, 3, 200), torch.float32, gen, scale=2.0)
    seeds = torch.tensor([[11, 12, 13], [14, 15, 2**63 - 1]])
    offsets = torch.arange(6).reshape(2, 3)
    params = {
        "temperature": torch.tensor([[0.5, 1.0, 0.0], [2.0, 0.7, 1.3]]),
        "top_k": torch.tensor([[0, 5, 10], [200, 1, 20]]),
        "top_p": torch.tensor([[1.0, 0.5, 0.9], [0.8, 1.0, 0.95]]),
        "min_p": torch.tensor([[0.0, 0.1, 0.0], [0.05, 0.0, 0.2]]),
    }

    def draw(t, s, o, p):
        return ss.sample_from_logits(t, 3, seed=s, offset=o, **p)

    tokens = _compile(draw)(x, seeds, offsets, params)
    assert torch.equal(tokens, draw(x, seeds, offsets, params))
    # batch invariance survives compilation: a row alone gives the same tokens
    alone = _compile(draw)(x[1, 2:], seeds[1, 2:], offsets[1, 2:], {k: v[1, 2:] for k, v in params.items()})
    assert torch.equal(alone[0], tokens[1, 2])


def test_sample_return_logprobs_matches_eager_and_reference(gen):
    x = _random((4, 64), torch.float16, gen, scale=2.0)
    compiled = _compile(lambda t: ss.sample_from_logits(t, 5, seed=9, return_logprobs=True), backend="inductor")
    tokens, logprobs = compiled(x)
    eager_tokens, eager_logprobs = ss.sample_from_logits(x, 5, seed=9, return_logprobs=True)
    assert torch.equal(tokens, eager_tokens) and torch.equal(logprobs, eager_logprobs)
    assert logprobs.dtype == torch.float32 and logprobs.shape == (4, 5)
    expected = torch.log_softmax(x.double(), -1).gather(1, tokens)
    torch.testing.assert_close(logprobs.double(), expected, rtol=1e-5, atol=1e-5)


def test_sample_varying_int_seed_and_offset_recompile_once(gen):
    """Int seeds and offsets become dynamic after one recompile (uint64-range seeds included)."""
    x = _random((3, 100), torch.float32, gen)
    counter = CompileCounter()
    compiled = torch.compile(
        lambda t, s, o: ss.sample_from_logits(t, 2, seed=s, offset=o), fullgraph=True, backend=counter
    )
    for step, seed in enumerate([1, 2, 3, 2**64 - 1, -5]):
        assert torch.equal(compiled(x, seed, step), ss.sample_from_logits(x, 2, seed=seed, offset=step))
    assert counter.frame_count <= 2


def test_sample_default_generator_follows_manual_seed(gen):
    """Without seed or generator the seed is drawn at run time from the default generator, as eagerly."""
    x = _random((4, 500), torch.float32, gen)
    compiled = _compile(lambda t: ss.sample_from_logits(t, 3, top_k=20), backend="inductor")
    torch.manual_seed(123)
    first, second = compiled(x), compiled(x)
    torch.manual_seed(123)
    assert torch.equal(first, ss.sample_from_logits(x, 3, top_k=20))
    assert torch.equal(second, ss.sample_from_logits(x, 3, top_k=20))
    assert not torch.equal(first, second)


def test_sample_non_finite_rows(gen):
    x = _random((3, 40), torch.float16, gen)
    x[0, [3, 17]] = INF  # +inf entries share the row
    x[1, :30] = -INF  # -inf never chosen
    tokens = _compile(lambda t: ss.sample_from_logits(t, 50, seed=0))(x)
    assert set(tokens[0].tolist()) == {3, 17}
    assert (tokens[1] >= 30).all()
    assert torch.equal(tokens, ss.sample_from_logits(x, 50, seed=0))


def test_sample_nan_row_raises_under_compile(gen):
    x = _random((4, 30), torch.float16, gen)
    x[2, 5] = NAN
    compiled = _compile(lambda t: ss.sample_from_logits(t, seed=3))
    with pytest.raises(ss.StableSoftmaxError, match=r"1 of 4 rows hold NaN logits \(rows? 2\)"):
        compiled(x)
    with pytest.raises(ss.StableSoftmaxError, match="temperature must lie in"):
        _compile(lambda t: ss.sample_from_logits(t, seed=3, temperature=-1.0))(x)
    # validate=False: no check, such rows give -1
    tokens = _compile(lambda t: ss.sample_from_logits(t, 2, seed=3, validate=False))(x)
    assert (tokens[2] == -1).all() and (tokens[[0, 1, 3]] >= 0).all()


def test_generator_needs_seed_under_fullgraph(gen):
    x = _random((2, 30), torch.float32, gen)
    g = torch.Generator().manual_seed(5)
    says_why = "pass seed=" if "reason" in inspect.signature(torch.compiler.disable).parameters else None  # torch>=2.7
    with pytest.raises(torch._dynamo.exc.Unsupported, match=says_why):
        _compile(lambda t, g: ss.sample_from_logits(t, 2, generator=g))(x, g)
    with pytest.raises(torch._dynamo.exc.Unsupported, match=says_why):
        _compile(lambda t, g: ss.multinomial(t.softmax(-1), 2, generator=g))(x, g)
    # without fullgraph the call runs eagerly (a graph break) and draws from the generator as eagerly
    torch._dynamo.reset()
    tokens = torch.compile(lambda t, g: ss.sample_from_logits(t * 1, 2, generator=g), backend="aot_eager")(x, g)
    g.manual_seed(5)
    assert torch.equal(tokens, ss.sample_from_logits(x, 2, generator=g))


# --------------------------------------------------------------------------- multinomial


@pytest.mark.parametrize("replacement", [False, True])
def test_multinomial_follows_manual_seed(replacement, gen):
    probs = torch.rand(4, 300, generator=gen).half()
    probs[1, :100] = 0
    vector = torch.rand(50, generator=gen, dtype=torch.float64)
    compiled = _compile(lambda p, v: (ss.multinomial(p, 6, replacement), ss.multinomial(v, 3, replacement)))
    torch.manual_seed(77)
    tokens, tokens_1d = compiled(probs, vector)
    torch.manual_seed(77)
    assert torch.equal(tokens, ss.multinomial(probs, 6, replacement))
    assert torch.equal(tokens_1d, ss.multinomial(vector, 3, replacement))
    assert tokens.shape == (4, 6) and tokens_1d.shape == (3,)
    assert (tokens[1] >= 100).all()


def test_multinomial_calls_are_not_merged():
    """Two identical random calls in one graph stay two draws (the op is tagged nondeterministic_seeded)."""
    probs = torch.ones(8, 10_000)
    first, second = _compile(lambda p: (ss.multinomial(p, 2), ss.multinomial(p, 2)), backend="inductor")(probs)
    assert not torch.equal(first, second)


def test_multinomial_bad_rows_raise_under_compile():
    compiled = _compile(lambda p: ss.multinomial(p, 1))
    for bad, what in ((NAN, "NaN"), (INF, "inf"), (-1.0, "negative")):
        probs = torch.tensor([[0.2, 0.8], [0.5, bad]])
        with pytest.raises(ss.StableSoftmaxError, match=f"contains {what} entries"):
            compiled(probs)
    with pytest.raises(ss.StableSoftmaxError, match="sum to zero"):
        compiled(torch.tensor([[0.0, 0.0], [0.5, 0.5]]))


# --------------------------------------------------------------------------- the custom ops themselves


def test_opcheck_schemas_fakes_and_autograd(gen):
    """torch.library.opcheck: schema, fake implementation, autograd registration, AOT dispatch."""
    from stablesoftmax import _compiled  # registers the ops

    ops = torch.ops.stablesoftmax
    cube = _random((3, 4, 5), torch.float32, gen)
    half_t = _random((3, 7), torch.float16, gen).t()
    for args in [
        (cube, 1, None, False),
        (cube.clone().requires_grad_(True), -1, torch.float64, True),
        (half_t, 0, None, False),
        (half_t.float().requires_grad_(True), 1, None, True),
        (torch.empty(0, 3), -1, None, False),
        (torch.tensor(1.5), 0, None, True),
    ]:
        torch.library.opcheck(ops.softmax.default, args)
    y = _compiled.softmax(cube, -1)
    torch.library.opcheck(ops.softmax_backward.default, (y, torch.randn_like(y), 2, torch.float32, False))
    logits = _random((2, 3, 40), torch.float32, gen)
    scalars = (logits, 3, None, 0.7, None, 5, None, 0.9, None, None, True, None, 7, None, 2, True, True)
    per_row = (
        logits, 2, torch.rand(2, 3, generator=gen) + 0.5, 1.0, torch.tensor([[2, 2, 3], [0, 4, 5]]), None,
        None, None, None, 0.1, True, torch.arange(6).reshape(2, 3), None, torch.ones(2, 3, dtype=torch.int64), 0,
        False, True,
    )  # fmt: skip
    for args in (scalars, per_row):
        torch.library.opcheck(ops.sample_from_logits.default, args)
    # unseeded: two runs differ, so no output comparison (test_aot_dispatch_dynamic)
    probs = torch.rand(3, 20, generator=gen)
    torch.library.opcheck(ops.multinomial.default, (probs, 4, False), test_utils=("test_schema", "test_faketensor"))


# --------------------------------------------------------------------------- patch() under torch.compile

_PATCHED_SOFTMAX_FORMS = {
    "torch.softmax": lambda t: torch.softmax(t, -1),
    "F.softmax": lambda t: torch.nn.functional.softmax(t, dim=-1),
    "Tensor.softmax": lambda t: t.softmax(-1),
    "Tensor.softmax of an intermediate": lambda t: (t * 2).softmax(-1, torch.float32),
    "nn.Softmax": torch.nn.Softmax(-1),
    "torch.log_softmax": lambda t: torch.log_softmax(t, 1),
    "F.log_softmax": lambda t: torch.nn.functional.log_softmax(t, 1, dtype=torch.float32),
    "Tensor.log_softmax": lambda t: t.log_softmax(-1),
    "nn.LogSoftmax": torch.nn.LogSoftmax(1),
}


class _Wrap(torch.nn.Module):
    """A small module that calls one entry point on a linear layer's output."""

    def __init__(self, call):
        super().__init__()
        self.call = call

    def forward(self, t):
        return self.call(t + 0.0)


@pytest.fixture
def _unpatched_after():
    yield
    ss.unpatch()
    from stablesoftmax import _patch

    _patch._state["depth"] = 0


@pytest.mark.usefixtures("_unpatched_after")
@pytest.mark.parametrize("fullgraph", [True, False], ids=["fullgraph", "graph-breaks-allowed"])
@pytest.mark.parametrize("form", list(_PATCHED_SOFTMAX_FORMS))
def test_patched_softmax_forms_compile_to_the_package(form, fullgraph, gen):
    """Compiled under patch(): bit-equal to eager under patch(), +inf rows included (torch gives NaN)."""
    x = _with_nonfinite_rows(_random((5, 40), torch.float16, gen))
    module = _Wrap(_PATCHED_SOFTMAX_FORMS[form])
    assert torch.isnan(module(x)[2]).all()  # unpatched torch: inf - inf
    ss.patch()
    eager = module(x)
    compiled = torch.compile(module, fullgraph=fullgraph, backend="aot_eager")(x)
    assert not torch.isnan(compiled[2]).any()
    assert compiled.dtype == eager.dtype and compiled.stride() == eager.stride()
    assert torch.equal(compiled, eager)


_PATCHED_MULTINOMIAL_FORMS = {
    "torch.multinomial": lambda p: torch.multinomial(p, 3),
    "Tensor.multinomial": lambda p: p.multinomial(5, True),
}


@pytest.mark.usefixtures("_unpatched_after")
@pytest.mark.parametrize("fullgraph", [True, False], ids=["fullgraph", "graph-breaks-allowed"])
@pytest.mark.parametrize("form", list(_PATCHED_MULTINOMIAL_FORMS))
def test_patched_multinomial_forms_compile_to_the_package(form, fullgraph, gen):
    """Same tokens as eager under patch(), and the package's error (not torch's) for a NaN row."""
    module = _Wrap(_PATCHED_MULTINOMIAL_FORMS[form])
    probs = torch.rand(4, 300, generator=gen)
    probs[1, :150] = 0
    bad = probs.clone()
    bad[2, 7] = NAN
    ss.patch()
    compiled = torch.compile(module, fullgraph=fullgraph, backend="aot_eager")
    torch.manual_seed(5)
    tokens = compiled(probs)
    torch.manual_seed(5)
    assert torch.equal(tokens, module(probs))
    assert (tokens[1] >= 150).all()
    with pytest.raises(ss.StableSoftmaxError, match=r"contains NaN entries in 1 of 4 rows \(rows? 2\)"):
        compiled(bad)


@pytest.mark.usefixtures("_unpatched_after")
def test_patched_module_under_inductor_and_after_unpatch(gen):
    """A model with several entry points under inductor; after unpatch() torch's answers come back compiled."""
    x = _with_nonfinite_rows(_random((6, 64), torch.float32, gen))

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.sm = torch.nn.Softmax(-1)

        def forward(self, t):
            return self.sm(t), torch.log_softmax(t, -1), torch.nn.functional.softmax(t * 1.5, -1, torch.float64)

    model = Model()
    with ss.patched():
        eager = model(x)
        compiled = torch.compile(model, fullgraph=True, backend="inductor")(x)
    for got, want in zip(compiled, eager):
        assert torch.equal(got, want) and not torch.isnan(got).any()
    torch._dynamo.reset()
    plain = torch.compile(model, fullgraph=True, backend="inductor")(x)  # the originals, compiled by torch
    for got, want in zip(plain, model(x)):
        assert torch.isnan(got[2]).all() and torch.isnan(got[3]).all()
        torch.testing.assert_close(got[[0, 4, 5]], want[[0, 4, 5]])


_ORDER_SCRIPT = """
import math, torch, stablesoftmax as ss
x = torch.tensor([[1.0, math.inf, 2.0, math.inf]])
def package_op():
    return torch.compile(lambda t: ss.softmax(t, -1), fullgraph=True, backend="aot_eager")(x)
def patched_torch():
    with ss.patched():
        return torch.compile(lambda t: torch.softmax(t, -1), fullgraph=True, backend="aot_eager")(x)
def plain_torch():
    return torch.compile(lambda t: torch.softmax(t * 1, -1), fullgraph=True, backend="aot_eager")(x)
def transforms():  # torch.func inside compiled code: deferred to torch, as eagerly
    with ss.patched():
        for f in (lambda t: torch.vmap(lambda r: torch.softmax(r, 0))(t),
                  lambda t: torch.func.grad(lambda r: torch.log_softmax(r, 0)[2])(t[0])):
            torch._dynamo.reset()
            assert torch.allclose(torch.compile(f, backend="aot_eager")(y), f(y))
    return None
y = torch.randn(3, 5)
limit = [0.0, 0.5, 0.0, 0.5]
for step in {steps}:
    out = globals()[step]()
    if step == "plain_torch":
        assert torch.isnan(out).all(), (step, out)
    elif step != "transforms":
        assert out.tolist() == [limit], (step, out)
print("ok")
"""


@pytest.mark.parametrize(
    "steps",
    [
        ["package_op", "transforms", "patched_torch", "plain_torch"],  # dynamo's tables built unpatched
        ["patched_torch", "transforms", "plain_torch", "package_op", "patched_torch"],  # built while patched
    ],
    ids=["package-op-first", "patched-call-first"],
)
def test_patched_fullgraph_in_either_order(steps):
    """In a fresh process: whatever was compiled first, patched and plain calls compile (fullgraph) and answer right."""
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", _ORDER_SCRIPT.format(steps=steps)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]

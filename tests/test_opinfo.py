"""Conformance with torch's own OpInfo samples (``common_methods_invocations.op_db``) through the patched entry points.

For ``softmax`` / ``log_softmax`` (plain and ``with_dtype``) every sample, contiguous and made
non-contiguous, goes through ``torch.X``, ``F.X`` and ``Tensor.X`` under :func:`stablesoftmax.patch`
and must match torch's op: values within a per-dtype tolerance, identical dtype, shape and strides,
``gradcheck`` and ``gradgradcheck`` on the float64 samples. ``_softmax_backward_data`` samples go
through the package's backward op. ``multinomial`` samples are random: shapes, dtypes, validity and
the error behaviour of OpInfo's error inputs are compared, not values. A subset runs again under
``torch.compile(fullgraph=True)``. Deliberate differences from torch (the SPEC's non-finite rules)
are listed in ``test_nonfinite_rows_differ_from_torch_only_where_the_spec_says``.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from _reference import reference

import stablesoftmax as ss
from stablesoftmax import _compiled  # noqa: F401  (registers the custom ops)

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")

INF, NAN = math.inf, math.nan


def _load_op_db() -> dict[tuple[str, str], object]:
    """torch's OpInfo database, without the process-wide side effects of importing torch's test utilities."""
    frozen = torch.backends.flags_frozen()
    calls = torch._C.ScriptFunction.__call__, torch._C.ScriptMethod.__call__
    try:
        from torch.testing._internal.common_methods_invocations import op_db
    finally:
        if not frozen:  # common_utils calls torch.backends.disable_global_flags() on import
            setattr(torch.backends, "__allow_nonbracketed_mutation_flag", True)
        torch._C.ScriptFunction.__call__, torch._C.ScriptMethod.__call__ = calls
    return {(op.name, op.variant_test_name): op for op in op_db}


OPINFOS = _load_op_db()
SOFTMAX_KEYS = [("softmax", ""), ("softmax", "with_dtype"), ("log_softmax", ""), ("log_softmax", "with_dtype")]
KEY_IDS = ["softmax", "softmax-with_dtype", "log_softmax", "log_softmax-with_dtype"]
DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
# Against torch's own output, per output dtype: (rtol, atol). float16 / bfloat16: both sides are
# rounded from float32 math, so one ulp apart at most; float32 / float64: accumulation order.
TOL = {
    torch.float16: (2.0**-10, 2.0**-24),
    torch.bfloat16: (2.0**-7, 1e-38),
    torch.float32: (2e-6, 1e-7),
    torch.float64: (1e-12, 1e-14),
}
LOG_TOL = {  # log_softmax near 0: absolute terms
    torch.float16: (2.0**-10, 2.0**-11),
    torch.bfloat16: (2.0**-7, 2.0**-8),
    torch.float32: (2e-6, 2e-6),
    torch.float64: (1e-12, 1e-12),
}


def _forms(name: str) -> dict[str, object]:
    """The three patched entry points for ``name``, each called as OpInfo calls the op: ``(input, *args, **kwargs)``."""
    return {
        f"torch.{name}": lambda x, *a, **k: getattr(torch, name)(x, *a, **k),
        f"F.{name}": lambda x, *a, **k: getattr(F, name)(x, *a, **k),
        f"Tensor.{name}": lambda x, *a, **k: getattr(x, name)(*a, **k),
    }


FORMS = ["torch", "F", "Tensor"]


def _form(name: str, which: str):
    return _forms(name)[f"{which}.{name}"]


def _samples(opinfo, dtype: torch.dtype, requires_grad: bool = False):
    """OpInfo's samples, each also made non-contiguous (OpInfo's own transform)."""
    for sample in opinfo.sample_inputs("cpu", dtype, requires_grad=requires_grad):
        yield "contiguous", sample
        yield "non-contiguous", sample.noncontiguous()


def _empty_and_not_dense(sample) -> bool:
    """Known stride difference, owned by ``_forward`` (the layout work): an empty input with strides
    other than the contiguous ones keeps them in the output; torch returns contiguous strides."""
    x = sample.input
    return x.numel() == 0 and x.stride() != torch.empty(x.shape).stride()


def _assert_like_torch(got: torch.Tensor, expected: torch.Tensor, log: bool, where: str) -> None:
    assert got.dtype == expected.dtype, where
    assert got.shape == expected.shape, where
    assert got.stride() == expected.stride(), f"{where}: strides {got.stride()} != torch's {expected.stride()}"
    rtol, atol = (LOG_TOL if log else TOL)[got.dtype]
    torch.testing.assert_close(got, expected, rtol=rtol, atol=atol, equal_nan=True, msg=lambda m: f"{where}: {m}")


@pytest.fixture(autouse=True)
def _unpatched():
    yield
    ss.unpatch()


# --------------------------------------------------------------------------- softmax / log_softmax


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("key", SOFTMAX_KEYS, ids=KEY_IDS)
def test_softmax_samples_match_torch(key, dtype, form):
    opinfo = OPINFOS[key]
    call = _form(key[0], form)
    count = 0
    for layout, sample in _samples(opinfo, dtype):
        expected = opinfo.op(sample.input, *sample.args, **sample.kwargs)
        with ss.patched():
            got = call(sample.input, *sample.args, **sample.kwargs)
        where = f"{form}.{key[0]} {layout} {tuple(sample.input.shape)} {sample.args} {sample.kwargs}"
        _assert_like_torch(got, expected, key[0] == "log_softmax", where)
        count += 1
    assert count >= 14


@pytest.mark.parametrize("key", SOFTMAX_KEYS, ids=KEY_IDS)
def test_empty_non_contiguous_samples_get_torchs_strides(key):
    opinfo = OPINFOS[key]
    cases = [s for _, s in _samples(opinfo, torch.float32) if _empty_and_not_dense(s)]
    assert cases
    for sample in cases:
        expected = opinfo.op(sample.input, *sample.args, **sample.kwargs)
        with ss.patched():
            got = _form(key[0], "torch")(sample.input, *sample.args, **sample.kwargs)
        assert got.stride() == expected.stride(), f"{tuple(sample.input.shape)}: {got.stride()} != {expected.stride()}"


@pytest.mark.parametrize("key", SOFTMAX_KEYS, ids=KEY_IDS)
def test_softmax_samples_gradcheck_and_gradgradcheck(key):
    opinfo = OPINFOS[key]
    assert opinfo.supports_gradgrad
    with ss.patched():
        for i, (_, sample) in enumerate(_samples(opinfo, torch.float64, requires_grad=True)):
            call = _form(key[0], FORMS[i % len(FORMS)])  # each sample through one form, every form used
            x = sample.input

            def fn(t, sample=sample, call=call):
                return call(t, *sample.args, **sample.kwargs)

            out = fn(x)
            if out.numel():
                assert type(out.grad_fn).__name__ == "_SoftmaxFunctionBackward"  # routed, not torch's
            assert torch.autograd.gradcheck(fn, (x,))
            assert torch.autograd.gradgradcheck(fn, (x,))


def _backward_data(opinfo, sample):
    """torch's answer and the package's backward op for one ``_softmax_backward_data`` sample."""
    grad = sample.input
    output, dim, input_dtype = sample.args
    return (
        opinfo.op(grad, output, dim, input_dtype),
        torch.ops.stablesoftmax.softmax_backward(output, grad, dim, input_dtype, False),
    )


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_softmax_backward_data_samples_match_torch(dtype):
    opinfo = OPINFOS[("_softmax_backward_data", "")]
    count = 0
    for layout, sample in _samples(opinfo, dtype):
        expected, got = _backward_data(opinfo, sample)
        where = f"{layout} {tuple(sample.input.shape)} dim={sample.args[1]}"
        rtol, atol = TOL[dtype]
        # the gradient's magnitude is set by the upstream gradient, not by 1: absolute terms scale with it
        scale = max(sample.input.abs().max().item(), 1.0)
        assert got.dtype == expected.dtype and got.shape == expected.shape, where
        assert got.stride() == expected.stride(), f"{where}: strides {got.stride()} != torch's {expected.stride()}"
        torch.testing.assert_close(got, expected, rtol=2 * rtol, atol=2 * rtol * scale + atol, msg=where)
        count += 1
    assert count == 6


def test_softmax_backward_data_gradcheck_and_gradgradcheck():
    opinfo = OPINFOS[("_softmax_backward_data", "")]
    for _, sample in _samples(opinfo, torch.float64):
        output, dim, input_dtype = sample.args
        grad = sample.input.detach().requires_grad_(True)
        output = output.detach().requires_grad_(True)

        def fn(y, g, dim=dim, input_dtype=input_dtype):
            return torch.ops.stablesoftmax.softmax_backward(y, g, dim, input_dtype, False)

        assert torch.autograd.gradcheck(fn, (output, grad))
        assert torch.autograd.gradgradcheck(fn, (output, grad))


# --------------------------------------------------------------------------- multinomial


def _assert_valid_draws(draws: torch.Tensor, probs: torch.Tensor, num_samples: int, replacement: bool) -> None:
    assert draws.dtype == torch.int64
    assert draws.shape == (*probs.shape[:-1], num_samples)
    rows = draws.reshape(-1, num_samples)
    weights = probs.reshape(-1, probs.shape[-1])
    assert ((rows >= 0) & (rows < probs.shape[-1])).all()
    assert (weights.gather(1, rows) > 0).all()  # zero-probability categories never drawn
    if not replacement:
        assert all(len(set(row)) == num_samples for row in rows.tolist())


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_multinomial_samples_are_valid_draws(dtype):
    opinfo = OPINFOS[("multinomial", "")]
    count = 0
    for _, sample in _samples(opinfo, dtype):
        num_samples = sample.args[0]
        replacement = sample.kwargs.get("replacement", False)
        expected = torch.multinomial(sample.input, *sample.args, **sample.kwargs)
        with ss.patched():
            for got in (
                torch.multinomial(sample.input, *sample.args, **sample.kwargs),
                sample.input.multinomial(*sample.args, **sample.kwargs),
            ):
                assert got.shape == expected.shape and got.dtype == expected.dtype
                assert got.stride() == expected.stride()
                _assert_valid_draws(got, sample.input, num_samples, replacement)
        count += 1
    assert count == 14


def test_multinomial_error_inputs():
    """torch's error inputs: argument errors are torch's own; data errors are the package's (still RuntimeError).

    Deliberate difference (SPEC: no limit on the number of categories): 2^24 + 1 categories are sampled.
    """
    opinfo = OPINFOS[("multinomial", "")]
    data_errors = ("probability tensor contains", "invalid multinomial distribution")
    seen = {"torch": 0, "package": 0, "no limit": 0}
    for error in opinfo.error_inputs("cpu"):
        sample = error.sample_input
        with ss.patched():
            if "number of categories cannot exceed" in error.error_regex:
                probs = torch.rand(sample.input.shape, generator=torch.Generator().manual_seed(0)) + 0.1
                draws = torch.multinomial(probs, *sample.args, **sample.kwargs)
                _assert_valid_draws(draws, probs, sample.args[0], False)
                seen["no limit"] += 1
                continue
            with pytest.raises(error.error_type) as raised:
                torch.multinomial(sample.input, *sample.args, **sample.kwargs)
        if any(text in error.error_regex for text in data_errors):
            assert isinstance(raised.value, ss.StableSoftmaxError), str(raised.value)
            seen["package"] += 1
        else:
            assert not isinstance(raised.value, ss.StableSoftmaxError)
            assert raised.match(error.error_regex)
            seen["torch"] += 1
    assert seen == {"torch": 6, "package": 14, "no limit": 1}


# --------------------------------------------------------------------------- the SPEC's non-finite rows


@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_nonfinite_rows_differ_from_torch_only_where_the_spec_says(log, dtype):
    """The deliberate differences: rows holding +inf (torch NaN; SPEC 1/k, -log k) and rows of only
    -inf (torch NaN; SPEC 0, -inf). Rows with some -inf, or with NaN, are answered as torch does."""
    opinfo = OPINFOS[("log_softmax" if log else "softmax", "")]
    sample = next(s for s in opinfo.sample_inputs("cpu", dtype) if tuple(s.input.shape) == (5, 5))
    x = sample.input.clone()
    x[0, 2] = -INF  # some -inf: same as torch
    x[1] = -INF  # only -inf: differs
    x[2, [0, 3]] = INF  # two +inf: differs
    x[3, 4] = NAN  # NaN: same as torch (NaN row)
    expected = opinfo.op(x, 1)
    with ss.patched():
        got = torch.log_softmax(x, 1) if log else torch.softmax(x, 1)
    torch.testing.assert_close(got[[0, 3, 4]], expected[[0, 3, 4]], equal_nan=True, **dict(
        zip(("rtol", "atol"), (LOG_TOL if log else TOL)[dtype])))  # fmt: skip
    assert torch.isnan(expected[[1, 2]]).all() and not torch.isnan(got[[1, 2]]).any()
    spec = reference(x, 1, log).to(dtype)
    assert torch.equal(got[[1, 2]], spec[[1, 2]])
    assert got[2, 0].item() == pytest.approx(-math.log(2) if log else 0.5, rel=1e-2)


# --------------------------------------------------------------------------- under torch.compile(fullgraph=True)

COMPILED_DTYPES = [torch.float16, torch.float32]


@pytest.mark.slow
@pytest.mark.parametrize("key", SOFTMAX_KEYS, ids=KEY_IDS)
def test_compiled_softmax_samples(key):
    """Compiled patched calls: as eager patched calls bit for bit, torch's dtype / shape / strides;
    gradcheck through AOTAutograd, gradgradcheck through dynamo's trace of the custom ops."""
    opinfo = OPINFOS[key]
    which = {"softmax": "torch", "log_softmax": "Tensor"}[key[0]]
    call = _form(key[0], which)
    ss.patch()
    for dtype in [*COMPILED_DTYPES, torch.float64]:
        for layout, sample in _samples(opinfo, dtype, requires_grad=dtype == torch.float64):
            if layout == "non-contiguous" and tuple(sample.input.shape) != (5, 10, 5):
                continue  # one non-contiguous sample per dtype keeps the compile count small

            def fn(t, sample=sample):
                return call(t, *sample.args, **sample.kwargs)

            torch._dynamo.reset()
            compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
            got, eager = compiled(sample.input), fn(sample.input)
            expected = opinfo.op(sample.input.detach(), *sample.args, **sample.kwargs)
            where = f"compiled {layout} {dtype} {tuple(sample.input.shape)} {sample.args} {sample.kwargs}"
            assert torch.equal(got, eager), where
            _assert_like_torch(got.detach(), expected, key[0] == "log_softmax", where)
            if dtype == torch.float64:
                assert torch.autograd.gradcheck(compiled, (sample.input,))
                torch._dynamo.reset()
                traced = torch.compile(fn, fullgraph=True, backend="eager")
                assert torch.autograd.gradgradcheck(traced, (sample.input,))
    # and the SPEC's rows, where torch would answer NaN: the compiled answer is the eager one
    x = next(s.input for s in opinfo.sample_inputs("cpu", torch.float32) if tuple(s.input.shape) == (5, 5)).clone()
    x[1], x[2, [0, 3]] = -INF, INF
    torch._dynamo.reset()
    got = torch.compile(lambda t: call(t, 1), fullgraph=True, backend="aot_eager")(x)
    assert torch.equal(got, call(x, 1)) and not torch.isnan(got).any()
    torch._dynamo.reset()


@pytest.mark.slow
def test_compiled_softmax_backward_data_and_multinomial():
    backward = OPINFOS[("_softmax_backward_data", "")]
    multinomial = OPINFOS[("multinomial", "")]
    for sample in backward.sample_inputs("cpu", torch.float32):
        torch._dynamo.reset()
        expected, eager = _backward_data(backward, sample)
        compiled = torch.compile(
            lambda g, y, s=sample: torch.ops.stablesoftmax.softmax_backward(y, g, s.args[1], s.args[2], False),
            fullgraph=True, backend="aot_eager",
        )  # fmt: skip
        got = compiled(sample.input, sample.args[0])
        assert torch.equal(got, eager) and got.stride() == expected.stride()
    ss.patch()
    for sample in multinomial.sample_inputs("cpu", torch.float16):
        torch._dynamo.reset()
        compiled = torch.compile(lambda p, s=sample: torch.multinomial(p, *s.args, **s.kwargs), fullgraph=True,
                                 backend="aot_eager")  # fmt: skip
        torch.manual_seed(3)
        got = compiled(sample.input)
        torch.manual_seed(3)
        assert torch.equal(got, torch.multinomial(sample.input, *sample.args, **sample.kwargs))
        _assert_valid_draws(got, sample.input, sample.args[0], sample.kwargs.get("replacement", False))
    torch._dynamo.reset()

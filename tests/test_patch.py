"""patch / unpatch / patched: the eight torch entry points routed through the package, and nothing else.

Routing is shown by answers torch cannot give: a float16 row holding ``+inf`` gets ``1/k`` from
the package and NaN from torch; a NaN probability row raises ``StableSoftmaxError`` (still a
``RuntimeError``) from the package and torch's generic error without it. Deferral is shown by
the patched call doing exactly what the original does (same result, or same error).
"""

from __future__ import annotations

import inspect
import math
import threading
import warnings
from typing import Any, Callable

import pytest
import torch
import torch.nn.functional as F
from _reference import assert_close_to_reference, reference

import stablesoftmax as ss
from stablesoftmax import _patch

INF = math.inf
TARGETS = [
    (torch, "softmax"),
    (F, "softmax"),
    (torch.Tensor, "softmax"),
    (torch, "log_softmax"),
    (F, "log_softmax"),
    (torch.Tensor, "log_softmax"),
    (torch, "multinomial"),
    (torch.Tensor, "multinomial"),
]
ORIGINALS = {(owner, name): getattr(owner, name) for owner, name in TARGETS}
TORCH_SOFTMAX, TORCH_LOG_SOFTMAX, TORCH_MULTINOMIAL = torch.softmax, torch.log_softmax, torch.multinomial


def _current() -> dict[tuple[Any, str], Any]:
    return {(owner, name): getattr(owner, name) for owner, name in TARGETS}


def _assert_original() -> None:
    for key, original in ORIGINALS.items():
        assert _current()[key] is original, f"{key[1]} of {key[0]!r} not restored"
    for name in ("softmax", "log_softmax", "multinomial"):
        assert name not in vars(torch.Tensor), f"torch.Tensor.{name} override left behind"


def _assert_patched() -> None:
    for key, original in ORIGINALS.items():
        assert _current()[key] is not original, f"{key[1]} of {key[0]!r} not patched"


@pytest.fixture(autouse=True)
def _always_unpatched():
    """Every test starts and ends with torch untouched, even if it failed half-way."""
    _assert_original()
    yield
    ss.unpatch()
    _patch._state["depth"] = 0
    _assert_original()


def _inf_rows(gen: torch.Generator, dtype: torch.dtype, rows: int = 4, cols: int = 37) -> torch.Tensor:
    """Fresh random rows; row 1 holds three +inf, row 2 one -inf, the rest finite."""
    x = torch.randn(rows, cols, generator=gen, dtype=torch.float64) * 3
    x[1, [3, 10, 30]] = INF
    x[2, 5] = -INF
    return x.to(dtype)


# ---------------------------------------------------------------------------------------------
# patch / unpatch / patched
# ---------------------------------------------------------------------------------------------


def test_unpatch_restores_the_very_same_objects():
    ss.patch()
    _assert_patched()
    ss.unpatch()
    _assert_original()
    ss.unpatch()  # idempotent
    _assert_original()


def test_patch_is_idempotent():
    ss.patch()
    first = _current()
    ss.patch()
    assert _current() == first  # the same replacements, nothing wrapped twice
    ss.unpatch()  # one unpatch undoes both
    _assert_original()


def test_context_manager_restores_also_when_the_body_raises():
    with ss.patched():
        _assert_patched()
    _assert_original()
    with pytest.raises(KeyError), ss.patched():
        _assert_patched()
        raise KeyError("boom")
    _assert_original()


def test_nesting_only_the_outermost_exit_restores():
    with ss.patched():
        with ss.patched():
            _assert_patched()
        _assert_patched()
        with ss.patched():
            _assert_patched()
        _assert_patched()
    _assert_original()


def test_explicit_patch_outlives_a_block_and_unpatch_wins_inside_one():
    ss.patch()
    with ss.patched():
        _assert_patched()
    _assert_patched()  # patch() stays until unpatch()
    ss.unpatch()
    with ss.patched():
        ss.unpatch()  # restores now, whatever the nesting
        _assert_original()
    _assert_original()


def test_concurrent_blocks_in_threads(gen):
    x = _inf_rows(gen, torch.float16)
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def work() -> None:
        try:
            barrier.wait()
            for _ in range(25):
                with ss.patched():  # while this thread is inside, the patch must hold
                    assert torch.softmax(x, -1)[1, 3].item() == pytest.approx(1 / 3, rel=1e-3)
        except BaseException as exc:  # reported on the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    _assert_original()


def test_replacements_look_like_the_originals():
    with ss.patched():
        for (owner, name), original in ORIGINALS.items():
            replacement = getattr(owner, name)
            assert replacement.__name__ == name
            assert replacement.__wrapped__ is original
            assert (original.__doc__ or "") in replacement.__doc__
            assert "stablesoftmax" in replacement.__doc__
        signature = inspect.signature(F.softmax, follow_wrapped=False)
        assert list(signature.parameters) == list(inspect.signature(ORIGINALS[(F, "softmax")]).parameters)
        assert list(inspect.signature(torch.softmax, follow_wrapped=False).parameters) == [
            "input", "dim", "dtype", "out"
        ]  # fmt: skip
        assert list(inspect.signature(torch.multinomial, follow_wrapped=False).parameters) == [
            "input", "num_samples", "replacement", "generator", "out"
        ]  # fmt: skip
        assert list(inspect.signature(torch.Tensor.multinomial, follow_wrapped=False).parameters) == [
            "self", "num_samples", "replacement", "generator"
        ]  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Every entry point routed, in every call form
# ---------------------------------------------------------------------------------------------

def _call_forms(op: str, module_class: type[torch.nn.Module]) -> dict[str, Callable[..., torch.Tensor]]:
    """Every way of calling ``op`` ("softmax" or "log_softmax"), as ``call(x, dim, dtype)``.

    Each form looks its function up when called, so it reaches the patched object under the patch.
    """
    return {
        f"torch.{op}(x, d)": lambda x, d, dt: getattr(torch, op)(x, d) if dt is None else getattr(torch, op)(x, d, dt),
        f"torch.{op}(input=, dim=, dtype=)": lambda x, d, dt: getattr(torch, op)(input=x, dim=d, dtype=dt),
        f"torch.{op}(x, d, out=)": lambda x, d, dt: getattr(torch, op)(
            x, d, dtype=dt, out=torch.empty(0, dtype=dt or x.dtype)
        ),
        f"F.{op}(x, d)": lambda x, d, dt: getattr(F, op)(x, d) if dt is None else getattr(F, op)(x, d, 3, dt),
        f"F.{op}(input=, dim=, _stacklevel=, dtype=)": lambda x, d, dt: getattr(F, op)(
            input=x, dim=d, _stacklevel=5, dtype=dt
        ),
        f"nn.{module_class.__name__}(d)": lambda x, d, dt: module_class(d)(x if dt is None else x.to(dt)),
        f"x.{op}(d)": lambda x, d, dt: getattr(x, op)(d) if dt is None else getattr(x, op)(d, dt),
        f"x.{op}(dim=, dtype=)": lambda x, d, dt: getattr(x, op)(dim=d, dtype=dt),
        f"Tensor.{op}(x, d)": lambda x, d, dt: getattr(torch.Tensor, op)(x, d, dt),
    }


SOFTMAX_FORMS = _call_forms("softmax", torch.nn.Softmax)
LOG_SOFTMAX_FORMS = _call_forms("log_softmax", torch.nn.LogSoftmax)
ALL_FORMS = [(name, fn, False) for name, fn in SOFTMAX_FORMS.items()] + [
    (name, fn, True) for name, fn in LOG_SOFTMAX_FORMS.items()
]


@pytest.mark.parametrize(("form", "call", "log"), ALL_FORMS, ids=[f[0] for f in ALL_FORMS])
@pytest.mark.parametrize("out_dtype", [None, torch.float32], ids=["same-dtype", "dtype=float32"])
def test_every_softmax_form_is_routed(form, call, log, out_dtype, gen):
    x = _inf_rows(gen, torch.float16)
    without = call(x, -1, out_dtype)
    assert torch.isnan(without[1]).all()  # torch: inf - inf
    with ss.patched():
        got = call(x, -1, out_dtype)
    _assert_original()
    assert got.dtype == (out_dtype or torch.float16)
    ref = reference(x if out_dtype is None else x.to(out_dtype), -1, log)
    assert_close_to_reference(got, ref, log)
    expected = -math.log(3) if log else 1 / 3
    assert got[1, [3, 10, 30]].double().tolist() == pytest.approx([expected] * 3, rel=1e-3)
    assert (got[1, [0, 1, 2]] == (-INF if log else 0)).all()


@pytest.mark.parametrize("log", [False, True])
def test_other_dims_and_float64(log, gen):
    x = torch.randn(3, 40, 5, generator=gen, dtype=torch.float64)
    x[2, [4, 7], 1] = INF
    with ss.patched():
        got = torch.log_softmax(x, 1) if log else torch.softmax(x, 1)
        got_neg = x.log_softmax(-2) if log else x.softmax(-2)
    assert_close_to_reference(got, reference(x, 1, log), log)
    assert torch.equal(got, got_neg)


@pytest.mark.parametrize("autocast_dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_autocast_gives_torchs_output_dtype(autocast_dtype, dtype, gen):
    x = _inf_rows(gen, dtype)
    calls = [*SOFTMAX_FORMS.values(), *LOG_SOFTMAX_FORMS.values()]
    with torch.autocast("cpu", dtype=autocast_dtype):
        expected = [call(x, -1, None).dtype for call in calls]
        with ss.patched():
            got = [call(x, -1, None) for call in calls]
    assert [g.dtype for g in got] == expected
    assert all(not torch.isnan(g[1]).any() for g in got)  # still routed


def test_out_is_filled_resized_and_returned(gen):
    x = _inf_rows(gen, torch.float32)
    ref = reference(x, -1, False)
    with ss.patched():
        same = torch.empty_like(x)
        assert torch.softmax(x, -1, out=same) is same
        empty = torch.empty(0)
        assert torch.softmax(x, -1, out=empty) is empty
        wrong_shape = torch.empty(5, 5)
        with pytest.warns(UserWarning, match="was resized") as record:
            assert torch.log_softmax(x, 1, out=wrong_shape) is wrong_shape
        assert record[0].filename == __file__  # points at the caller, as torch's own warning does
    for out in (same, empty):
        assert_close_to_reference(out, ref, False)
    assert_close_to_reference(wrong_shape, reference(x, 1, True), True)


# ---------------------------------------------------------------------------------------------
# multinomial
# ---------------------------------------------------------------------------------------------

MULTINOMIAL_FORMS: dict[str, Callable[..., torch.Tensor]] = {
    "torch.multinomial(p, n)": lambda p, n, g: torch.multinomial(p, n),
    "torch.multinomial(p, n, True)": lambda p, n, g: torch.multinomial(p, n, True),
    "torch.multinomial(input=, ..., generator=)": lambda p, n, g: torch.multinomial(
        input=p, num_samples=n, replacement=True, generator=g
    ),
    "torch.multinomial(..., out=)": lambda p, n, g: torch.multinomial(
        p, n, True, generator=g, out=torch.empty(0, dtype=torch.int64)
    ),
    "p.multinomial(n)": lambda p, n, g: p.multinomial(n),
    "p.multinomial(n, True, generator=)": lambda p, n, g: p.multinomial(n, True, generator=g),
    "p.multinomial(num_samples=, replacement=)": lambda p, n, g: p.multinomial(num_samples=n, replacement=False),
    "Tensor.multinomial(p, n)": lambda p, n, g: torch.Tensor.multinomial(p, n, generator=g),
}


def _probs_with_zeros(gen: torch.Generator, rows: int = 3, cols: int = 300) -> torch.Tensor:
    """float16 weights, unnormalised, with an exact zero in every third column."""
    p = torch.rand(rows, cols, generator=gen, dtype=torch.float64) + 0.01
    p[:, ::3] = 0
    return p.to(torch.float16)


@pytest.mark.parametrize("form", list(MULTINOMIAL_FORMS))
def test_every_multinomial_form_is_routed(form, gen):
    call = MULTINOMIAL_FORMS[form]
    p = _probs_with_zeros(gen)
    bad = p.clone()
    bad[0, 7] = math.nan
    with pytest.raises(RuntimeError, match=r"probability tensor contains|invalid multinomial distribution") as plain:
        call(bad, 4, torch.Generator().manual_seed(1))
    assert not isinstance(plain.value, ss.StableSoftmaxError)
    with ss.patched():
        draws = call(p, 50, torch.Generator().manual_seed(2))
        with pytest.raises(ss.StableSoftmaxError, match=r"row 0\b"):
            call(bad, 4, torch.Generator().manual_seed(1))
    assert draws.shape == (3, 50) and draws.dtype == torch.int64
    assert (draws % 3 != 0).all()  # zero-probability columns are never drawn
    assert (draws >= 0).all() and (draws < 300).all()


def test_float16_zero_probability_is_never_sampled(gen):
    p = torch.rand(4096, generator=gen, dtype=torch.float64).to(torch.float16)
    p[::2] = 0  # half the categories exactly zero, the rest tiny float16 weights
    p[1::2] *= 1e-3
    with ss.patched():
        draws = torch.multinomial(p, 20000, replacement=True, generator=torch.Generator().manual_seed(3))
    assert (draws % 2 == 1).all()
    # and the draws follow the weights: the top half by weight gets most of the draws
    weights = p.double()[draws]
    assert weights.mean() > p.double()[p > 0].mean()


def test_nan_row_raises_stablesoftmaxerror_that_is_a_runtimeerror(gen):
    p = torch.rand(2, 1000, generator=gen).to(torch.float16)
    p[1, [3, 9, 27, 81, 243]] = math.nan
    with ss.patched(), pytest.raises(RuntimeError) as info:
        torch.multinomial(p, 1)
    assert isinstance(info.value, ss.StableSoftmaxError)
    message = str(info.value)
    assert "row 1" in message and "5 NaN" in message
    assert "float16 overflow" in message and "bfloat16" in message


def test_generator_reproducibility(gen):
    p = torch.rand(5, 200, generator=gen, dtype=torch.float64).to(torch.float32)
    with ss.patched():
        a = torch.multinomial(p, 30, True, generator=torch.Generator().manual_seed(11))
        b = p.multinomial(30, True, generator=torch.Generator().manual_seed(11))
        c = torch.multinomial(p, 30, True, generator=torch.Generator().manual_seed(12))
        torch.manual_seed(13)
        d = torch.multinomial(p, 30, False)
        torch.manual_seed(13)
        e = torch.multinomial(p, 30, False)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert torch.equal(d, e)
    assert all(len(set(row)) == 30 for row in d.tolist())  # without replacement: distinct


def test_multinomial_out(gen):
    p = torch.rand(3, 50, generator=gen)
    with ss.patched():
        same = torch.empty(3, 4, dtype=torch.int64)
        assert torch.multinomial(p, 4, out=same, generator=torch.Generator().manual_seed(5)) is same
        with pytest.raises(RuntimeError, match="Long tensor out"):  # deferred: torch's own error
            torch.multinomial(p, 4, out=torch.empty(3, 4, dtype=torch.int32))
    expected = ss.multinomial(p, 4, generator=torch.Generator().manual_seed(5))
    assert torch.equal(same, expected)


# ---------------------------------------------------------------------------------------------
# Deferral: what the package does not cover behaves exactly as the original
# ---------------------------------------------------------------------------------------------


def _outcome(call: Callable[[], Any]) -> tuple[str, Any]:
    try:
        return "ok", call()
    except Exception as exc:
        return "raised", (type(exc), str(exc))


def _nested() -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "The PyTorch API of nested tensors", UserWarning)
        return torch.nested.nested_tensor([torch.ones(2, 3), torch.ones(4, 3)])


def _describe(t: torch.Tensor) -> tuple[Any, ...]:
    return t.dtype, t.device, t.layout, t.is_nested, None if t.is_nested else t.shape


def _dense(t: torch.Tensor) -> torch.Tensor:
    if t.is_nested:
        return torch.cat([part.flatten() for part in t.unbind()])
    return t.to_dense() if t.layout != torch.strided else t


def _assert_same_as_original(call: Callable[[], Any]) -> Any:
    """The call gives the same result, or raises the same error, with and without the patch."""
    torch.manual_seed(0)
    before = _outcome(call)
    with ss.patched():
        torch.manual_seed(0)
        after = _outcome(call)
    assert before[0] == after[0], (before, after)
    if before[0] == "raised":
        assert before[1] == after[1]
        return None
    a, b = before[1], after[1]
    assert type(a) is type(b)
    if isinstance(a, torch.Tensor):
        assert _describe(a) == _describe(b)
        if a.device.type != "meta":
            assert torch.equal(_dense(a), _dense(b))
    return b


DEFERRED: dict[str, Callable[[], Any]] = {
    "int input, dtype=float32": lambda: torch.softmax(torch.arange(6), 0, dtype=torch.float32),
    "int input, Tensor.log_softmax dtype": lambda: torch.arange(6).log_softmax(0, torch.float64),
    "bool input, F.softmax dtype": lambda: F.softmax(torch.tensor([True, False]), 0, dtype=torch.float32),
    "int input, no dtype": lambda: torch.softmax(torch.arange(6), 0),
    "complex input": lambda: torch.softmax(torch.ones(3, dtype=torch.complex64), 0),
    "integer dtype argument": lambda: torch.softmax(torch.ones(3), 0, dtype=torch.int64),
    "dim out of range": lambda: torch.softmax(torch.ones(2, 3), 2),
    "dim a string": lambda: torch.softmax(torch.ones(2, 3), "x"),
    "dim a float": lambda: torch.ones(2, 3).softmax(1.0),
    "dim a bool": lambda: torch.softmax(torch.ones(2, 3), True),
    "sparse COO": lambda: torch.softmax(torch.eye(3).to_sparse(), 1),
    "sparse COO method": lambda: torch.eye(3).to_sparse().log_softmax(1),
    "meta tensor": lambda: torch.softmax(torch.empty(2, 3, device="meta"), 1),
    "meta tensor, F.log_softmax": lambda: F.log_softmax(torch.empty(2, 3, device="meta", dtype=torch.float16), 0),
    "meta tensor, multinomial": lambda: torch.multinomial(torch.empty(2, 3, device="meta"), 2),
    "nested tensor": lambda: _nested().softmax(-1),
    "out of the wrong dtype": lambda: torch.softmax(torch.ones(3), 0, out=torch.empty(3, dtype=torch.float64)),
    "multinomial num_samples=0": lambda: torch.multinomial(torch.ones(2, 3), 0),
    "multinomial num_samples float": lambda: torch.multinomial(torch.ones(2, 3), 2.0),
    "multinomial replacement int": lambda: torch.multinomial(torch.ones(2, 3), 2, 1),
    "multinomial 3-D": lambda: torch.ones(2, 2, 3).multinomial(1),
    "multinomial 0-D": lambda: torch.multinomial(torch.tensor(1.0), 1),
    "multinomial no categories": lambda: torch.multinomial(torch.ones(2, 0), 1, True),
    "multinomial no rows": lambda: torch.multinomial(torch.ones(0, 3), 2),
    "multinomial too many without replacement": lambda: torch.multinomial(torch.ones(2, 3), 4),
    "multinomial integer input": lambda: torch.multinomial(torch.ones(2, 3, dtype=torch.int64), 1),
    "multinomial generator not a Generator": lambda: torch.multinomial(torch.ones(3), 1, generator=3),
}


@pytest.mark.parametrize("case", list(DEFERRED))
def test_deferred_calls_behave_as_the_original(case):
    _assert_same_as_original(DEFERRED[case])


def test_implicit_dim_keeps_torchs_warning_and_choice(gen):
    """F.softmax(x) with dim=None goes to torch, which warns and picks the dim, then calls the
    (patched) Tensor.softmax: torch's warning and dim choice, the package's numbers."""
    x = _inf_rows(gen, torch.float32)
    with pytest.warns(UserWarning, match="Implicit dimension choice") as plain:
        expected = F.softmax(x)
    with ss.patched(), pytest.warns(UserWarning, match="Implicit dimension choice") as record:
        got = F.softmax(x)
        got_log = F.log_softmax(x, _stacklevel=3)
    assert torch.isnan(expected[1]).all()
    assert torch.equal(got, ss.softmax(x, 1))  # torch's implicit choice for 2-D input: dim 1
    assert torch.equal(got_log, ss.log_softmax(x, 1))
    assert torch.equal(got[0], expected[0]) or torch.allclose(got[0], expected[0], rtol=1e-6)
    assert record[0].filename == plain[0].filename == __file__  # still blames the caller's line
    assert len(record) == 2


class _Logged(torch.Tensor):
    """A tensor subclass that records which function reached its __torch_function__."""

    seen: list[Any] = []  # noqa: RUF012

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        cls.seen.append(func)
        return super().__torch_function__(func, types, args, kwargs or {})


def test_tensor_subclasses_reach_the_original_function(gen):
    x = torch.randn(2, 4, generator=gen).as_subclass(_Logged)
    _Logged.seen.clear()
    with ss.patched():
        y = torch.softmax(x, -1)
        z = x.log_softmax(-1)
        p = torch.multinomial(x.exp(), 1)
    assert TORCH_SOFTMAX in _Logged.seen and TORCH_MULTINOMIAL in _Logged.seen
    assert type(y) is _Logged and type(z) is _Logged and type(p) is _Logged
    plain = x.as_subclass(torch.Tensor)
    assert torch.equal(y.as_subclass(torch.Tensor), torch.softmax(plain, -1))


def test_functorch_transforms_are_deferred(gen):
    x = torch.randn(3, 6, generator=gen, dtype=torch.float64)
    _assert_same_as_original(lambda: torch.vmap(lambda r: torch.softmax(r, 0))(x))
    _assert_same_as_original(lambda: torch.func.grad(lambda r: F.log_softmax(r, 0)[2])(x[0]))
    _assert_same_as_original(lambda: torch.func.jacrev(lambda r: r.softmax(0))(x[1]))


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")  # torch's jvp decomps
def test_forward_mode_dual_tensors_are_deferred(gen):
    fwad = torch.autograd.forward_ad
    x = torch.randn(3, 6, generator=gen, dtype=torch.float64)
    tangent = torch.randn(3, 6, generator=gen, dtype=torch.float64)

    def jvp() -> tuple[torch.Tensor, torch.Tensor]:
        with fwad.dual_level():
            out = fwad.unpack_dual(torch.log_softmax(fwad.make_dual(x, tangent), 1))
            return out.primal.clone(), out.tangent.clone()

    expected = jvp()
    with ss.patched():
        got = jvp()
        assert torch.isfinite(torch.softmax(x, 1)).all()  # plain tensors inside a dual level still work
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


# ---------------------------------------------------------------------------------------------
# Autograd
# ---------------------------------------------------------------------------------------------

GRAD_FORMS = {
    "torch.softmax": (lambda x: torch.softmax(x, 1), False),
    "F.softmax": (lambda x: F.softmax(x, dim=1), False),
    "Tensor.softmax": (lambda x: x.softmax(1), False),
    "torch.log_softmax": (lambda x: torch.log_softmax(x, 1), True),
    "F.log_softmax": (lambda x: F.log_softmax(x, dim=1), True),
    "Tensor.log_softmax": (lambda x: x.log_softmax(1), True),
}


@pytest.mark.parametrize("form", list(GRAD_FORMS))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_autograd_matches_torch(form, dtype, gen):
    fn, log = GRAD_FORMS[form]
    x64 = torch.randn(4, 33, 3, generator=gen, dtype=torch.float64) * 2
    upstream = torch.randn(4, 33, 3, generator=gen, dtype=torch.float64)
    ref_in = x64.clone().requires_grad_()
    ref_out = (torch.log_softmax if log else torch.softmax)(ref_in, 1)  # unpatched float64 reference
    (ref_grad,) = torch.autograd.grad(ref_out, ref_in, upstream)
    x = x64.to(dtype).requires_grad_()
    with ss.patched():
        out = fn(x)
        assert out.grad_fn is not None
        assert type(out.grad_fn).__name__ not in ("SoftmaxBackward0", "LogSoftmaxBackward0")  # the package's
        (grad,) = torch.autograd.grad(out, x, upstream.to(dtype))
    assert grad.dtype == dtype
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    torch.testing.assert_close(out.double(), ref_out.detach(), rtol=tol, atol=tol)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=tol * 10, atol=tol * 10)


# ---------------------------------------------------------------------------------------------
# TorchScript: scripting code that calls a patched function still compiles (to torch's op)
# ---------------------------------------------------------------------------------------------


def _scriptable(x: torch.Tensor) -> torch.Tensor:
    return torch.softmax(x, -1) + F.softmax(x, dim=-1) + x.softmax(-1) + torch.log_softmax(x, 0) + F.log_softmax(x, 1)


def _scriptable_sampling(p: torch.Tensor) -> torch.Tensor:
    return torch.multinomial(p, 2, True)


def test_torchscript_compiles_calls_to_replacements(gen):
    x = torch.randn(3, 4, generator=gen)
    with ss.patched(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.script is deprecated
        scripted = torch.jit.script(_scriptable)
        sampler = torch.jit.script(_scriptable_sampling)
        torch.testing.assert_close(scripted(x), _scriptable(x))
        assert sampler(x.exp()).shape == (3, 2)

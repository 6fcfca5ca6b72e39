"""Argument edges: the package raises what torch raises for the same call (type for type; the messages are ours),
accepts what torch accepts, and wraps seeds and offsets modulo 2**64 as the SPEC says."""

from __future__ import annotations

import math
import re
from typing import Any, Callable

import pytest
import torch
from conftest import DEVICE, import_or_skip_off_ci

import stablesoftmax as ss

np = import_or_skip_off_ci("numpy", "a test extra")


def _outcome(call: Callable[[], Any]) -> tuple[str, Any]:
    try:
        result = call()
    except Exception as exc:
        return "raised", exc
    return "returned", result


def assert_as_torch(ours: Callable[[], Any], theirs: Callable[[], Any]) -> Any:
    """Both return a tensor of the same shape and dtype, or both raise and ours is an instance of torch's type."""
    got, want = _outcome(ours), _outcome(theirs)
    assert got[0] == want[0], (got, want)
    if want[0] == "raised":
        assert isinstance(got[1], type(want[1])), (got[1], want[1])
        return got[1]
    assert got[1].shape == want[1].shape and got[1].dtype == want[1].dtype, (got[1], want[1])
    assert got[1].device == want[1].device
    return got[1]


def _probs(*shape: int) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(7)).add_(0.01).to(DEVICE)


# (input shape, num_samples, replacement): what torch returns or raises for each, ours must match
MULTINOMIAL_SHAPES = [
    ((0, 10), 2, False),
    ((0, 10), 20, True),
    ((0, 10), 20, False),  # torch: too many without replacement, even with no rows
    ((0, 0), 1, True),
    ((0, 0), 1, False),
    ((3, 0), 1, True),
    ((3, 0), 1, False),
    ((0,), 1, True),
    ((5,), 3, False),
    ((5,), 5, False),
    ((5,), 6, False),
    ((5,), 6, True),
    ((4, 7), 7, False),
    ((4, 7), 8, False),
    ((4, 7), 8, True),
    ((), 1, True),
    ((2, 2, 3), 1, True),
]


@pytest.mark.parametrize(("shape", "num_samples", "replacement"), MULTINOMIAL_SHAPES, ids=str)
def test_multinomial_shapes_as_torch(backend, shape, num_samples, replacement):
    p = _probs(*shape) if shape else torch.tensor(0.5, device=DEVICE)
    assert_as_torch(
        lambda: ss.multinomial(p, num_samples, replacement),
        lambda: torch.multinomial(p, num_samples, replacement),
    )


def test_multinomial_no_rows_is_empty_on_every_backend_and_under_patch(backend):
    for replacement in (False, True):
        out = ss.multinomial(torch.rand(0, 10, device=DEVICE), 2, replacement)
        assert out.shape == (0, 2) and out.dtype == torch.int64 and out.device.type == DEVICE.type
    with ss.patched():
        assert torch.multinomial(torch.rand(0, 10, device=DEVICE), 2).shape == (0, 2)
        assert torch.rand(0, 10, device=DEVICE).multinomial(3, True).shape == (0, 3)


def test_multinomial_on_meta_gives_torchs_shape():
    p = torch.empty(3, 4, device="meta")
    out = assert_as_torch(lambda: ss.multinomial(p, 2), lambda: torch.multinomial(p, 2))
    assert out.device.type == "meta"


NUM_SAMPLES = {
    "zero": 0,
    "negative": -1,
    "float": 2.0,
    "bool": True,
    "str": "2",
    "numpy int64": np.int64(2),
    "numpy int32": np.int32(3),
    "0-dim int tensor": torch.tensor(2),
}


@pytest.mark.parametrize("case", list(NUM_SAMPLES))
def test_multinomial_num_samples_as_torch(case):
    p = _probs(3, 4)
    n = NUM_SAMPLES[case]
    assert_as_torch(lambda: ss.multinomial(p, n, True), lambda: torch.multinomial(p, n, True))


@pytest.mark.parametrize("case", list(NUM_SAMPLES))
def test_sample_from_logits_num_samples_as_multinomial(case):
    x = torch.randn(3, 4, device=DEVICE)
    n = NUM_SAMPLES[case]
    assert_as_torch(lambda: ss.sample_from_logits(x, n, seed=0), lambda: torch.multinomial(x.softmax(-1), n, True))


def test_integral_numpy_values_give_the_same_draws():
    x = torch.randn(3, 50, device=DEVICE)
    want = ss.sample_from_logits(x, 4, seed=11, top_k=5, offset=2)
    got = ss.sample_from_logits(x, np.int64(4), seed=np.uint64(11), top_k=np.int32(5), offset=np.int16(2))
    assert torch.equal(got, want)
    cooled = ss.sample_from_logits(x, seed=1, temperature=np.float32(0.5), top_p=np.float64(0.9))
    assert torch.equal(cooled, ss.sample_from_logits(x, seed=1, temperature=0.5, top_p=0.9))


BAD_TYPES: dict[str, Callable[[Callable[..., Any], torch.Tensor], Any]] = {
    "replacement None": lambda mn, p: mn(p, 2, None),
    "replacement str": lambda mn, p: mn(p, 2, "no"),
    "replacement int": lambda mn, p: mn(p, 2, 1),
    "replacement numpy bool": lambda mn, p: mn(p, 2, np.bool_(True)),
    "generator int": lambda mn, p: mn(p, 2, generator=123),
    "generator str": lambda mn, p: mn(p, 2, True, generator="cpu"),
    "input a list": lambda mn, p: mn(p.tolist(), 1),
    "input int64": lambda mn, p: mn(torch.ones(3, dtype=torch.int64), 1),
}


@pytest.mark.parametrize("case", list(BAD_TYPES))
def test_multinomial_argument_errors_as_torch(case):
    call = BAD_TYPES[case]
    p = _probs(3, 4)
    assert_as_torch(lambda: call(ss.multinomial, p), lambda: call(torch.multinomial, p))


def test_nested_and_sparse_inputs_raise_a_clear_error():
    nested = torch.nested.nested_tensor([torch.rand(3), torch.rand(4)], layout=torch.jagged)
    for call in (lambda: ss.multinomial(nested, 1), lambda: ss.sample_from_logits(nested)):
        with pytest.raises(NotImplementedError, match="nested tensor; only dense"):
            call()
    with pytest.raises(NotImplementedError):
        torch.multinomial(nested, 1)  # torch's type for the same call
    for op in (ss.softmax, ss.log_softmax):
        with pytest.raises(NotImplementedError, match="nested tensor; only dense"):
            op(nested, -1)
        with pytest.raises(NotImplementedError, match="sparse"):
            op(torch.eye(3).to_sparse(), 1)
    with pytest.raises(NotImplementedError, match="sparse"):
        ss.multinomial(torch.eye(3).to_sparse(), 1)


# --- softmax arguments -------------------------------------------------------------------------------------------

DIMS = {
    "str": "a",
    "float": 1.0,
    "bool": True,
    "numpy bool": np.bool_(True),
    "numpy float": np.float64(1),
    "numpy int": np.int64(1),
    "0-dim tensor": torch.tensor(1),
    "out of range": 2,
    "negative in range": -2,
}


@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
@pytest.mark.parametrize("case", list(DIMS))
def test_softmax_dim_as_torch(backend, op, case):
    x = torch.randn(3, 4, device=DEVICE)
    dim = DIMS[case]
    got = assert_as_torch(lambda: getattr(ss, op)(x, dim), lambda: getattr(torch, op)(x, dim))
    if isinstance(got, torch.Tensor):
        assert torch.allclose(got, getattr(torch, op)(x, dim))


def test_softmax_dtype_as_torch():
    x = torch.randn(3, 4, device=DEVICE)
    for dtype in ("float32", 3, torch.Tensor):
        with pytest.raises(TypeError, match=r"dtype must be a torch\.dtype"):
            ss.softmax(x, -1, dtype=dtype)
        with pytest.raises(TypeError):
            torch.softmax(x, -1, dtype=dtype)
    got = assert_as_torch(lambda: ss.softmax(x, -1, dtype=float), lambda: torch.softmax(x, -1, dtype=float))
    assert got.dtype == torch.float64
    assert_as_torch(lambda: ss.log_softmax(x, -1, dtype=int), lambda: torch.log_softmax(x, -1, dtype=int))


def test_dtype_messages_say_which_dtype_is_wrong():
    """The README quotes these; integer input without dtype= is about the input, not the output."""
    with pytest.raises(
        ss.StableSoftmaxError, match=r"input dtype torch\.int64 is not supported; pass dtype=torch\.float32"
    ):
        ss.softmax(torch.arange(6, device=DEVICE).view(2, 3), -1)
    with pytest.raises(ss.StableSoftmaxError, match=r"output dtype torch\.int32 is not supported"):
        ss.log_softmax(torch.randn(2, 3, device=DEVICE), -1, dtype=torch.int32)
    with pytest.raises(ss.StableSoftmaxError, match="complex input"):
        ss.softmax(torch.ones(2, 3, dtype=torch.complex64, device=DEVICE), -1)


# --- multinomial messages ----------------------------------------------------------------------------------------


def test_negative_probabilities_are_not_blamed_on_float16_overflow():
    p = torch.rand(3, 8, device=DEVICE)
    p[1, 2] = -0.1
    with pytest.raises(ss.StableSoftmaxError) as info:
        ss.multinomial(p, 1)
    message = str(info.value)
    assert "float16 overflow" not in message and "not probabilities" in message and "[1, 2]" in message
    logits_by_mistake = torch.randn(2, 8, device=DEVICE)
    logits_by_mistake[1] = logits_by_mistake[1].abs()  # row 1: negative only where masked
    logits_by_mistake[:, 0] = -math.inf  # a masked logit fed to multinomial: -inf counts as negative
    with pytest.raises(ss.StableSoftmaxError) as info:
        ss.multinomial(logits_by_mistake, 1)
    assert "float16 overflow" not in str(info.value) and "logits" in str(info.value)


def test_nan_and_inf_probabilities_keep_the_overflow_hint():
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        for value in (math.nan, math.inf):
            p = torch.rand(3, 8, device=DEVICE).to(dtype)
            p[2, 5] = value
            with pytest.raises(ss.StableSoftmaxError, match=r"float16 overflow.*bfloat16") as info:
                ss.multinomial(p, 1)
            assert "not probabilities" not in str(info.value)
    both = torch.rand(3, 8, device=DEVICE)
    both[0, 1], both[2, 3] = math.nan, -1.0
    with pytest.raises(ss.StableSoftmaxError, match=r"NaN and negative.*float16 overflow.*not probabilities"):
        ss.multinomial(both, 1)


def test_row_or_rows_in_messages():
    p = torch.rand(4, 10, device=DEVICE)
    one = p.clone()
    one[1, 2:] = 0
    with pytest.raises(ss.StableSoftmaxError, match=r"\): row 1 has fewer non-zero entries \(row 1: 2\)"):
        ss.multinomial(one, 3)
    two = one.clone()
    two[3, 1:] = 0
    with pytest.raises(ss.StableSoftmaxError, match=r"\): rows 1, 3 have fewer non-zero entries"):
        ss.multinomial(two, 3)
    nan = p.clone()
    nan[2, 0] = math.nan
    with pytest.raises(ss.StableSoftmaxError, match=r"in 1 of 4 rows \(row 2\)\. row 2: "):
        ss.multinomial(nan, 1)
    nan[3, 0] = math.nan
    with pytest.raises(ss.StableSoftmaxError, match=r"in 2 of 4 rows \(rows 2, 3\)\. row 2: "):
        ss.multinomial(nan, 1)
    masked = torch.randn(3, 5, device=DEVICE)
    masked[1] = -math.inf
    with pytest.raises(ss.StableSoftmaxError, match=r"1 of 3 rows have every logit -inf \(row 1\)"):
        ss.sample_from_logits(masked)


# --- sample_from_logits arguments --------------------------------------------------------------------------------


def test_offsets_and_seeds_wrap_modulo_2_64():
    x = torch.randn(3, 100, device=DEVICE)

    def draw(**kwargs: Any) -> torch.Tensor:
        return ss.sample_from_logits(x, 4, **kwargs)

    for offset, same in [(2**63, -(2**63)), (2**64 + 3, 3), (2**64 - 1, -1), (-(2**64) + 5, 5), (3 * 2**64, 0)]:
        assert torch.equal(draw(seed=9, offset=offset), draw(seed=9, offset=same))
        wrapped = (same + 2**63) % 2**64 - 2**63
        per_row = torch.full((3,), wrapped, dtype=torch.int64, device=DEVICE)
        assert torch.equal(draw(seed=9, offset=offset), draw(seed=9, offset=per_row))
    for seed, same in [(2**64 + 3, 3), (2**63, -(2**63)), (-1, 2**64 - 1)]:
        assert torch.equal(draw(seed=seed, offset=2**64 + 1), draw(seed=same, offset=1))
    assert not torch.equal(draw(seed=9, offset=2**63), draw(seed=9, offset=0)) or not torch.equal(
        draw(seed=9, offset=2**63 + 1), draw(seed=9, offset=1)
    )  # the wrap keeps the high bit: 2**63 is not 0


SAMPLING_TYPE_ERRORS = {
    "offset float": {"offset": 1.5},
    "offset str": {"offset": "3"},
    "offset bool": {"offset": True},
    "seed float": {"seed": 2.0},
    "seed str": {"seed": "x"},
    "replacement None": {"replacement": None},
    "replacement str": {"replacement": "no"},
    "replacement int": {"replacement": 0},
    "return_logprobs str": {"return_logprobs": "yes"},
    "validate None": {"validate": None},
    "generator int": {"generator": 123},
    "temperature complex": {"temperature": 1 + 1j},
    "temperature str": {"temperature": "hot"},
    "top_p str": {"top_p": "0.9"},
    "min_p list": {"min_p": [0.1]},
    "top_k float": {"top_k": 2.5},
    "top_k bool": {"top_k": True},
}


@pytest.mark.parametrize("case", list(SAMPLING_TYPE_ERRORS))
def test_sample_from_logits_type_errors(case):
    x = torch.randn(2, 10, device=DEVICE)
    kwargs = SAMPLING_TYPE_ERRORS[case]
    name = next(iter(kwargs))
    with pytest.raises(TypeError, match=re.escape(name)):
        ss.sample_from_logits(x, **kwargs)


SAMPLING_TENSOR_ERRORS = {
    "float top_k tensor": ({"top_k": torch.tensor([2.7, 1.2])}, r"top_k must be an integer tensor.*float32"),
    "bool top_k tensor": ({"top_k": torch.tensor([True, False])}, r"top_k must be an integer tensor.*bool"),
    "float offset tensor": ({"seed": 1, "offset": torch.tensor([1.5, 2.5])}, r"offset must be an integer tensor"),
    "complex temperature": ({"temperature": torch.tensor([1 + 1j, 2 + 0j])}, r"temperature must be a real"),
    "complex top_p": ({"top_p": torch.tensor([0.5 + 0.1j, 0.9])}, r"top_p must be a real"),
    "meta seed": ({"seed": torch.tensor([1, 2], device="meta")}, r"seed is on the meta device"),
    "meta temperature": ({"temperature": torch.ones(2, device="meta")}, r"temperature is on the meta device"),
    "seed of the wrong shape": ({"seed": torch.tensor([1, 2, 3])}, r"seed of shape \(3,\) does not match"),
}


@pytest.mark.parametrize("case", list(SAMPLING_TENSOR_ERRORS))
def test_sample_from_logits_tensor_parameter_errors(case):
    kwargs, pattern = SAMPLING_TENSOR_ERRORS[case]
    x = torch.randn(2, 10, device=DEVICE)
    if DEVICE.type == "meta":  # pragma: no cover
        pytest.skip("logits on meta")
    with pytest.raises(ss.StableSoftmaxError, match=pattern):
        ss.sample_from_logits(x, **kwargs)


def test_integer_top_k_tensors_of_any_integer_dtype():
    x = torch.randn(2, 40, device=DEVICE)
    want = ss.sample_from_logits(x, 3, seed=5, top_k=torch.tensor([2, 7]))
    for dtype in (torch.int32, torch.int16, torch.uint8):
        assert torch.equal(ss.sample_from_logits(x, 3, seed=5, top_k=torch.tensor([2, 7], dtype=dtype)), want)


def test_sample_from_logits_on_meta_gives_the_shape():
    x = torch.empty(2, 3, 10, device="meta")
    tokens, logprobs = ss.sample_from_logits(x, 4, seed=1, return_logprobs=True)
    assert tokens.shape == logprobs.shape == (2, 3, 4) and tokens.device.type == "meta"
    assert tokens.dtype == torch.int64 and logprobs.dtype == torch.float32


def test_compiled_offsets_wrap_and_replacement_is_checked():
    x = torch.randn(3, 50, device=DEVICE)

    def compiled(fn: Callable[..., Any]) -> Callable[..., Any]:
        torch._dynamo.reset()
        return torch.compile(fn, fullgraph=True, backend="aot_eager")

    for offset, same in [(2**63, -(2**63)), (2**64 + 3, 3)]:
        got = compiled(lambda t, offset=offset: ss.sample_from_logits(t, 2, seed=5, offset=offset))(x)
        assert torch.equal(got, ss.sample_from_logits(x, 2, seed=5, offset=same))
    with pytest.raises(Exception, match="replacement must be a bool"):
        compiled(lambda t: ss.sample_from_logits(t, 2, seed=5, replacement=None))(x)

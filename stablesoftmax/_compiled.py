"""torch.compile support: the public ops as custom ops that the compiler treats as opaque.

Each public function starts with ``if torch.compiler.is_compiling(): return _compiled.<op>(...)``,
so eager calls pay one flag check and nothing else. Under ``torch.compile`` (``fullgraph=True``
included) the wrappers below are traced by dynamo: they turn the flexible public arguments
(Python scalars or per-row tensors, ``None``) into the fixed types of a custom-op schema and call
one op. The ops' real implementations run the same eager code (the policy layer, the dispatch,
the same kernels and the same :class:`~stablesoftmax.StableSoftmaxError` for bad data); their fake
implementations give the compiler shapes, dtypes, devices and strides.

Schemas::

    stablesoftmax::softmax(Tensor input, SymInt? dim, ScalarType? dtype, bool log) -> Tensor
    stablesoftmax::softmax_backward(Tensor output, Tensor grad, SymInt dim, ScalarType grad_dtype,
                                    bool log) -> Tensor
    stablesoftmax::sample_from_logits(Tensor logits, SymInt num_samples, Tensor? temperature,
        float temperature_value, Tensor? top_k, SymInt? top_k_value, Tensor? top_p, float? top_p_value,
        Tensor? min_p, float? min_p_value, bool replacement, Tensor? seed, SymInt? seed_value,
        Tensor? offset, SymInt offset_value, bool return_logprobs, bool validate) -> (Tensor, Tensor)
    stablesoftmax::multinomial(Tensor input, SymInt num_samples, bool replacement) -> Tensor

Autograd: ``softmax`` has a registered autograd that calls ``softmax_backward``, whose own
registered autograd is the double backward in differentiable torch ops (the eager math of
:func:`stablesoftmax._softmax._double_backward`), so derivatives of any order are exact wherever
the ops' autograd runs (eagerly, and under dynamo with ``backend="eager"``). AOTAutograd, behind
the default backends, refuses double backward through a compiled graph with its own error.

Randomness under compile:

- ``seed=`` (an int, or an int64 tensor with one seed per row) and ``offset=`` pass through the
  op unchanged: compiled calls return exactly the eager tokens.
- With neither ``seed`` nor ``generator``, the call's seed is drawn *inside* the op from the
  device's default generator, as eagerly, so ``torch.manual_seed(s)`` reproduces compiled runs and
  gives the same tokens as eager calls. The sampling ops carry ``torch.Tag.nondeterministic_seeded``
  (torch >= 2.7), so the compiler does not merge two identical calls into one draw.
- ``generator=`` cannot be traced (dynamo does not trace a ``torch.Generator`` argument). Such a
  call runs eagerly behind :func:`torch.compiler.disable`: it works under ``torch.compile`` without
  ``fullgraph`` (a graph break), and under ``fullgraph=True`` it fails with a message that says
  to pass ``seed=`` instead.

Recompiles: a Python float ``temperature`` / ``top_p`` / ``min_p`` is a constant of the compiled
graph (custom-op float arguments are specialised: each new value recompiles); pass a tensor for
values that change from call to call. Python int ``seed`` / ``offset`` / ``top_k`` become dynamic
after one recompile, as dynamo does for ints.

Errors about the data (NaN rows, out-of-range ``temperature`` / ``top_p``, ...) and softmax's
dtype / dim errors are raised by the real implementations at run time, as eagerly. Errors about the
Python types of sampling arguments (``top_k=2.5``, ``seed="x"``) are raised while tracing; under
``fullgraph=True`` dynamo reports them as an ``Unsupported`` error ("Observed exception") that quotes
the package's message.
"""

import inspect
from typing import Any, Callable, Optional, Union

import torch

from . import _sampling, _softmax
from ._errors import StableSoftmaxError

__all__ = ["log_softmax", "multinomial", "sample_from_logits", "softmax"]

RowParam = Union[float, int, torch.Tensor]

# Random ops: never merged, dropped or reordered as pure by the compiler (custom_op has no tags before torch 2.7).
_HAS_TAGS = "tags" in inspect.signature(torch.library.custom_op).parameters
_SEEDED: dict[str, Any] = {"tags": (torch.Tag.nondeterministic_seeded,)} if _HAS_TAGS else {}

_GENERATOR_REASON = (
    "stablesoftmax: generator= cannot be traced by torch.compile, so this call runs eagerly "
    "(a graph break, an error under fullgraph=True). Under torch.compile pass seed= (an int, or an "
    "int64 tensor with one seed per row) and offset=, or neither to draw from the default generator "
    "(torch.manual_seed)."
)


def _compiler_disable(fn: Callable[..., Any]) -> Callable[..., Any]:
    if "reason" in inspect.signature(torch.compiler.disable).parameters:
        return torch.compiler.disable(fn, reason=_GENERATOR_REASON)
    return torch.compiler.disable(fn)  # torch < 2.7: no reason argument


# --------------------------------------------------------------------------- softmax / log_softmax


@torch.library.custom_op("stablesoftmax::softmax", mutates_args=())
def _softmax_op(input: torch.Tensor, dim: Optional[int], dtype: Optional[torch.dtype], log: bool) -> torch.Tensor:
    """Real implementation: the eager policy layer and dispatch (autograd is the op's, not eager's)."""
    with torch.no_grad():
        return _softmax._apply(input, dim, dtype, log)


@_softmax_op.register_fake
def _(input: torch.Tensor, dim: Optional[int], dtype: Optional[torch.dtype], log: bool) -> torch.Tensor:
    # Mirrors _softmax._forward's allocation (shape, dtype and strides). Bad arguments only need
    # some answer here: the real implementation raises the package's error for them at run time.
    out_dtype = input.dtype if dtype is None else dtype
    return torch.empty(input.shape, dtype=out_dtype, device=input.device)  # contiguous, as torch's


@torch.library.custom_op("stablesoftmax::softmax_backward", mutates_args=())
def _softmax_backward_op(
    output: torch.Tensor, grad: torch.Tensor, dim: int, grad_dtype: torch.dtype, log: bool
) -> torch.Tensor:
    """Gradient of softmax / log_softmax from its output, in float32 (float64), returned in ``grad_dtype``."""
    return _softmax._gradient(output, grad, dim, grad_dtype, log)


@_softmax_backward_op.register_fake
def _(output: torch.Tensor, grad: torch.Tensor, dim: int, grad_dtype: torch.dtype, log: bool) -> torch.Tensor:
    return torch.empty(output.shape, dtype=grad_dtype, device=output.device)


def _softmax_setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
    input, dim, _, log = inputs
    ctx.save_for_backward(output)
    ctx.dim = -1 if dim is None else dim % max(input.ndim, 1)  # None: forward raised already
    ctx.log, ctx.input_dtype = log, input.dtype


def _softmax_grad(ctx: Any, grad: torch.Tensor) -> tuple[Optional[torch.Tensor], None, None, None]:
    (output,) = ctx.saved_tensors
    return _softmax_backward_op(output, grad, ctx.dim, ctx.input_dtype, ctx.log), None, None, None


_softmax_op.register_autograd(_softmax_grad, setup_context=_softmax_setup_context)


def _softmax_backward_setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
    output_, grad, dim, _, log = inputs
    ctx.save_for_backward(output_, grad)
    ctx.dim, ctx.log = dim, log


def _softmax_backward_grad(ctx: Any, v: torch.Tensor) -> tuple[Optional[torch.Tensor], ...]:
    """Double backward, in differentiable torch ops (the same math as eager): correct to any order."""
    output, grad = ctx.saved_tensors
    d_output, d_grad = _softmax._double_backward(output, grad, v, ctx.dim, ctx.log, ctx.needs_input_grad[:2])
    return d_output, d_grad, None, None, None


_softmax_backward_op.register_autograd(_softmax_backward_grad, setup_context=_softmax_backward_setup_context)


def softmax(input: torch.Tensor, dim: Optional[int] = -1, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """:func:`stablesoftmax.softmax` as one custom op, for torch.compile."""
    return _softmax_op(input, dim, dtype, False)


def log_softmax(input: torch.Tensor, dim: Optional[int] = -1, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """:func:`stablesoftmax.log_softmax` as one custom op, for torch.compile."""
    return _softmax_op(input, dim, dtype, True)


# --------------------------------------------------------------------------- sampling


@torch.library.custom_op("stablesoftmax::sample_from_logits", mutates_args=(), **_SEEDED)
def _sample_op(
    logits: torch.Tensor,
    num_samples: int,
    temperature: Optional[torch.Tensor],
    temperature_value: float,
    top_k: Optional[torch.Tensor],
    top_k_value: Optional[int],
    top_p: Optional[torch.Tensor],
    top_p_value: Optional[float],
    min_p: Optional[torch.Tensor],
    min_p_value: Optional[float],
    replacement: bool,
    seed: Optional[torch.Tensor],
    seed_value: Optional[int],
    offset: Optional[torch.Tensor],
    offset_value: int,
    return_logprobs: bool,
    validate: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Real implementation: the eager :func:`~stablesoftmax.sample_from_logits`; always two outputs."""
    out = _sampling.sample_from_logits(
        logits,
        num_samples,
        temperature=temperature_value if temperature is None else temperature,
        top_k=top_k_value if top_k is None else top_k,
        top_p=top_p_value if top_p is None else top_p,
        min_p=min_p_value if min_p is None else min_p,
        replacement=replacement,
        seed=seed_value if seed is None else seed,
        offset=offset_value if offset is None else offset,
        return_logprobs=return_logprobs,
        validate=validate,
    )
    if return_logprobs:
        return out
    return out, torch.empty(0, dtype=torch.float32, device=logits.device)


@_sample_op.register_fake
def _(
    logits: torch.Tensor,
    num_samples: int,
    temperature: Optional[torch.Tensor],
    temperature_value: float,
    top_k: Optional[torch.Tensor],
    top_k_value: Optional[int],
    top_p: Optional[torch.Tensor],
    top_p_value: Optional[float],
    min_p: Optional[torch.Tensor],
    min_p_value: Optional[float],
    replacement: bool,
    seed: Optional[torch.Tensor],
    seed_value: Optional[int],
    offset: Optional[torch.Tensor],
    offset_value: int,
    return_logprobs: bool,
    validate: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (*logits.shape[:-1], num_samples)
    tokens = logits.new_empty(shape, dtype=torch.int64)
    logprobs = logits.new_empty(shape if return_logprobs else (0,), dtype=torch.float32)
    return tokens, logprobs


def _split(value: Optional[RowParam]) -> tuple[Optional[torch.Tensor], Optional[RowParam]]:
    """A per-row parameter as (tensor, None) or (None, scalar)."""
    return (value, None) if isinstance(value, torch.Tensor) else (None, value)


def _check_int(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise StableSoftmaxError(f"{name} must be an int or an int64 tensor, not {type(value).__name__}")


def _as_float(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise StableSoftmaxError(f"{name} must be a float or a float tensor, not {type(value).__name__}")
    return float(value)


def _sample_eager(*args: Any, **kwargs: Any) -> Any:
    return _sampling.sample_from_logits(*args, **kwargs)


def _multinomial_eager(*args: Any, **kwargs: Any) -> Any:
    return _sampling.multinomial(*args, **kwargs)


_sample_with_generator = _compiler_disable(_sample_eager)
_multinomial_with_generator = _compiler_disable(_multinomial_eager)


def sample_from_logits(
    logits: torch.Tensor,
    num_samples: int = 1,
    *,
    temperature: RowParam = 1.0,
    top_k: Optional[RowParam] = None,
    top_p: Optional[RowParam] = None,
    min_p: Optional[RowParam] = None,
    replacement: bool = True,
    generator: Optional[torch.Generator] = None,
    seed: Optional[RowParam] = None,
    offset: RowParam = 0,
    return_logprobs: bool = False,
    validate: bool = True,
) -> Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """:func:`stablesoftmax.sample_from_logits` as one custom op, for torch.compile.

    ``generator=`` cannot be traced: such a call runs eagerly (see the module docstring).
    """
    if generator is not None:
        return _sample_with_generator(
            logits, num_samples, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
            replacement=replacement, generator=generator, seed=seed, offset=offset,
            return_logprobs=return_logprobs, validate=validate,
        )  # fmt: skip
    op = "sample_from_logits"
    _sampling._check_tensor(logits, op, "logits")
    _sampling._check_num_samples(num_samples, op)
    _sampling._check_bool(replacement, f"{op}(): replacement")
    temperature_t, temperature_v = _split(temperature)
    top_k_t, top_k_v = _split(top_k)
    top_p_t, top_p_v = _split(top_p)
    min_p_t, min_p_v = _split(min_p)
    seed_t, seed_v = _split(seed)
    offset_t, offset_v = _split(offset)
    temperature_v = 1.0 if temperature_t is not None else _as_float(temperature_v, "temperature")  # 1.0: unused
    if top_k_v is not None and (isinstance(top_k_v, bool) or not isinstance(top_k_v, int)):
        raise StableSoftmaxError(f"top_k must be a non-negative int or an int tensor, got {top_k_v!r}")
    top_p_v = None if top_p_v is None else _as_float(top_p_v, "top_p")
    min_p_v = None if min_p_v is None else _as_float(min_p_v, "min_p")
    if seed_v is not None:
        _check_int(seed_v, "seed")
        seed_v = _sampling.wrap_int64(seed_v)  # as eager
    if offset_t is None:
        _check_int(offset_v, "offset")
        offset_v = _sampling.wrap_int64(offset_v)  # as eager: modulo 2**64
    else:
        offset_v = 0  # unused: the tensor is passed
    tokens, logprobs = _sample_op(
        logits, num_samples, temperature_t, temperature_v, top_k_t, top_k_v, top_p_t, top_p_v, min_p_t, min_p_v,
        replacement, seed_t, seed_v, offset_t, offset_v, return_logprobs, validate,
    )  # fmt: skip
    return (tokens, logprobs) if return_logprobs else tokens


@torch.library.custom_op("stablesoftmax::multinomial", mutates_args=(), **_SEEDED)
def _multinomial_op(input: torch.Tensor, num_samples: int, replacement: bool) -> torch.Tensor:
    """Real implementation: the eager :func:`~stablesoftmax.multinomial` (default generator)."""
    return _sampling.multinomial(input, num_samples, replacement)


@_multinomial_op.register_fake
def _(input: torch.Tensor, num_samples: int, replacement: bool) -> torch.Tensor:
    shape = (input.shape[0], num_samples) if input.ndim == 2 else (num_samples,)
    return input.new_empty(shape, dtype=torch.int64)


def multinomial(
    input: torch.Tensor, num_samples: int, replacement: bool = False, *, generator: Optional[torch.Generator] = None
) -> torch.Tensor:
    """:func:`stablesoftmax.multinomial` as one custom op, for torch.compile.

    ``generator=`` cannot be traced: such a call runs eagerly (see the module docstring).
    """
    if generator is not None:
        return _multinomial_with_generator(input, num_samples, replacement, generator=generator)
    _sampling._check_tensor(input, "multinomial", "input")
    _sampling._check_num_samples(num_samples, "multinomial")
    _sampling._check_bool(replacement, "multinomial(): replacement")
    return _multinomial_op(input, num_samples, replacement)

"""patch / unpatch / patched: route torch's softmax, log_softmax and multinomial through the package.

Eight entry points are replaced: ``torch.softmax``, ``torch.nn.functional.softmax``,
``torch.Tensor.softmax``, the same three for ``log_softmax``, ``torch.multinomial`` and
``torch.Tensor.multinomial``. Each replacement keeps the signature of the function it replaces,
so every call that bound before still binds, and hands the call back to the original torch
function, with the caller's arguments, whenever the package has nothing better to offer:

* inputs that are not plain dense floating-point tensors (integer, bool, complex, sparse,
  nested, meta or quantized tensors; tensor subclasses such as ``FakeTensor``; tensors wrapped by
  ``torch.func`` transforms; forward-mode AD dual tensors);
* arguments outside the package's contract that torch answers in its own way (``dim=None`` in
  ``F.softmax``, a non-int ``dim``, an out-of-range ``dim``, a non-floating ``dtype``; for
  ``multinomial`` ``num_samples < 1``, input that is not 1-D or 2-D or is empty, more samples
  than categories without replacement, a non-bool ``replacement``);
* ``out=`` tensors torch would reject (wrong dtype or device) or that autograd is recording.

Under autocast the output dtype is the one torch's op would give (CUDA autocast: float32 for
float16 / bfloat16 input when no ``dtype`` is passed).

Everything else gets the package's answers: the limits of softmax for non-finite rows instead
of NaN, and :class:`~stablesoftmax.StableSoftmaxError` (a :class:`RuntimeError`, so existing
``except RuntimeError`` handlers keep working) naming the bad rows of a multinomial input
instead of torch's generic message. Patching is process-wide (every thread sees it); the state
changes are serialised by a lock.
"""

from __future__ import annotations

import contextlib
import operator
import sys
import threading
import warnings
from collections.abc import Iterator
from typing import Any, Callable

import torch
import torch.nn.functional as F

from ._sampling import multinomial as _ss_multinomial
from ._softmax import log_softmax as _ss_log_softmax
from ._softmax import softmax as _ss_softmax

__all__ = ["patch", "patched", "unpatch"]

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_PLAIN_TYPES = (torch.Tensor, torch.nn.Parameter)
_is_functorch_wrapped: Callable[[torch.Tensor], bool] | None = getattr(
    getattr(torch._C, "_functorch", None), "is_functorch_wrapped_tensor", None
)
# While torch.compile traces a call (dynamo's fake-tensor propagation, AOTAutograd's functionalisation),
# the replacements see torch's own tracing tensors: those stand for plain tensors and are routed too.
_TRACING_TYPES: tuple[type, ...] = tuple(
    t
    for t in (
        getattr(getattr(torch._subclasses, "fake_tensor", None), "FakeTensor", None),
        getattr(getattr(torch._subclasses, "functional_tensor", None), "FunctionalTensor", None),
    )
    if t is not None
)
_MARK = "__stablesoftmax_patch__"  # set on every replacement, so a replacement is never saved as an original

# (owner, attribute) of each entry point, keyed by a short name.
_TARGETS: dict[str, tuple[Any, str]] = {
    "torch.softmax": (torch, "softmax"),
    "torch.log_softmax": (torch, "log_softmax"),
    "torch.multinomial": (torch, "multinomial"),
    "F.softmax": (F, "softmax"),
    "F.log_softmax": (F, "log_softmax"),
    "Tensor.softmax": (torch.Tensor, "softmax"),
    "Tensor.log_softmax": (torch.Tensor, "log_softmax"),
    "Tensor.multinomial": (torch.Tensor, "multinomial"),
}
# What each attribute held before patch(): the object, and whether it was the owner's own attribute
# (Tensor methods are inherited from torch._C.TensorBase: unpatch deletes the override instead).
# Filled at import and refreshed by each patch(), so a replacement someone kept a reference to
# keeps working after unpatch().
_originals: dict[str, tuple[Any, bool]] = {
    key: (getattr(owner, attr), attr in vars(owner)) for key, (owner, attr) in _TARGETS.items()
}
_lock = threading.RLock()
_state = {"explicit": False, "depth": 0, "installed": False}


def _orig(key: str) -> Any:
    return _originals[key][0]


# ---------------------------------------------------------------------------------------------
# When to route a call through the package
# ---------------------------------------------------------------------------------------------


def _is_dual(x: torch.Tensor) -> bool:
    """True for a forward-mode AD dual tensor (checked only while a dual level is active)."""
    fwad = torch.autograd.forward_ad
    if getattr(fwad, "_current_level", -1) < 0:
        return False
    return fwad.unpack_dual(x).tangent is not None


_dynamo_tracing: Callable[[], bool] = getattr(torch.compiler, "is_dynamo_compiling", lambda: False)
_functorch_level: Callable[[], int | None] = getattr(
    getattr(torch._C, "_functorch", None), "maybe_current_level", lambda: None
)


def _in_functorch_transform(x: torch.Tensor) -> bool:
    """``x`` is wrapped by a ``torch.func`` transform (those calls go to torch).

    Inside dynamo's trace the tensor query cannot be traced, but the transform level can (dynamo
    evaluates it while tracing a transform's body); outside it, e.g. in AOTAutograd, ask the tensor.
    """
    if _dynamo_tracing():
        return _functorch_level() is not None
    return _is_functorch_wrapped is not None and _is_functorch_wrapped(x)


def _routable(x: Any) -> bool:
    """A plain, dense, strided, floating-point tensor that the package handles like torch would.

    Under ``torch.compile`` the same call must take the same route as eagerly, traced: dynamo
    inlines the replacements (it cannot trace the functorch query: inside its trace a
    ``torch.func`` transform is its own higher-order op), and dynamo's fake-tensor propagation and
    AOTAutograd run them on their tracing tensors, where the functorch query still applies.
    """
    if torch.compiler.is_compiling():
        return (
            (type(x) in _PLAIN_TYPES or type(x) in _TRACING_TYPES)
            and x.dtype in _FLOAT_DTYPES
            and x.layout == torch.strided
            and not x.is_nested
            and not x.is_meta
            and not x.is_quantized
            and not _in_functorch_transform(x)
            and not _is_dual(x)
        )
    return (
        type(x) in _PLAIN_TYPES
        and x.dtype in _FLOAT_DTYPES
        and x.layout == torch.strided
        and not x.is_nested
        and not x.is_meta
        and not x.is_quantized
        and not (_is_functorch_wrapped is not None and _is_functorch_wrapped(x))
        and not _is_dual(x)
    )


def _int_arg(value: Any) -> int | None:
    """``value`` as an int (Python int, NumPy integer, integer 0-d tensor), None for anything else."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def _softmax_dim(dim: Any, ndim: int) -> int | None:
    d = _int_arg(dim)
    rank = max(ndim, 1)
    return d if d is not None and -rank <= d < rank else None


def _out_ok(out: Any, input: torch.Tensor, dtype: torch.dtype) -> bool:
    """An ``out=`` tensor torch would accept and that autograd is not recording."""
    return (
        type(out) in _PLAIN_TYPES
        and out.dtype == dtype
        and out.device == input.device
        and out.layout == torch.strided
        and not (torch.is_grad_enabled() and (input.requires_grad or out.requires_grad))
    )


def _write_out(result: torch.Tensor, out: torch.Tensor, stacklevel: int) -> torch.Tensor:
    """torch's ``out=`` semantics: resize (warning if a non-empty ``out`` changes shape), then copy."""
    if out.shape != result.shape:
        if out.numel() != 0:
            warnings.warn(
                f"An output with one or more elements was resized since it had shape {list(out.shape)}, which does "
                f"not match the required output shape {list(result.shape)}. This behavior is deprecated, and in a "
                "future PyTorch release outputs will not be resized unless they have zero elements. You can "
                "explicitly reuse an out tensor t by resizing it, inplace, to zero elements with t.resize_(0).",
                UserWarning,
                stacklevel=stacklevel + 1,
            )
        out.resize_(result.shape)
    out.copy_(result)
    return out


_autocast_dtypes: dict[tuple[Any, ...], torch.dtype] = {}


def _autocast_dtype(input: torch.Tensor, log: bool) -> torch.dtype | None:
    """The output dtype torch's op gives a float16 / bfloat16 ``input`` under active autocast, else None.

    CUDA autocast runs softmax and log_softmax in float32 (its ``fp32_set_opt_dtype`` policy: a
    float32 result unless ``dtype`` is given); CPU autocast leaves them alone; other devices have
    their own lists. Rather than copy those lists, ask the original op once per device type and
    dtype, on a one-element tensor.
    """
    if input.dtype not in (torch.float16, torch.bfloat16):
        return None
    device_type = input.device.type
    try:
        if not torch.is_autocast_enabled(device_type):
            return None
        key = (device_type, input.dtype, torch.get_autocast_dtype(device_type), log)
    except (TypeError, RuntimeError):  # a device type autocast does not know
        return None
    if key not in _autocast_dtypes:
        probe = torch.zeros(1, dtype=input.dtype, device=input.device)
        _autocast_dtypes[key] = _orig("torch.log_softmax" if log else "torch.softmax")(probe, 0).dtype
    return _autocast_dtypes[key]


def _route_softmax(input: Any, dim: Any, dtype: Any, log: bool) -> torch.Tensor | None:
    """The package's (log-)softmax of ``input``, or None when the call belongs to torch."""
    if not _routable(input) or (dtype is not None and dtype not in _FLOAT_DTYPES):
        return None
    d = _softmax_dim(dim, input.ndim)
    if d is None:
        return None
    if dtype is None:  # under autocast, the dtype torch would have given (float32 on CUDA)
        dtype = _autocast_dtype(input, log)
    return (_ss_log_softmax if log else _ss_softmax)(input, d, dtype)


def _softmax_with_out(key: str, log: bool, input: Any, dim: Any, dtype: Any, out: Any) -> torch.Tensor:
    if out is None:
        result = _route_softmax(input, dim, dtype, log)
        return _orig(key)(input, dim, dtype=dtype) if result is None else result
    if _routable(input) and _out_ok(out, input, input.dtype if dtype is None else dtype):
        result = _route_softmax(input, dim, dtype, log)
        if result is not None:
            return _write_out(result, out, stacklevel=3)
    return _orig(key)(input, dim, dtype=dtype, out=out)


def _route_multinomial(input: Any, num_samples: Any, replacement: Any, generator: Any) -> torch.Tensor | None:
    """The package's draws, or None when torch should answer (arguments torch rejects or treats its own way)."""
    if not _routable(input) or not isinstance(replacement, bool):
        return None
    if generator is not None and not isinstance(generator, torch.Generator):
        return None
    n = _int_arg(num_samples)
    if n is None or n < 1 or input.ndim not in (1, 2) or input.numel() == 0:
        return None
    if not replacement and n > input.shape[-1]:
        return None
    return _ss_multinomial(input, n, replacement, generator=generator)


# ---------------------------------------------------------------------------------------------
# The replacements (signatures as torch's)
# ---------------------------------------------------------------------------------------------

_NOTE = """

    .. note:: Patched by :func:`stablesoftmax.patch`: floating-point inputs are computed by
       ``stablesoftmax`` ({what}); everything else goes to the original, available as
       ``__wrapped__``.{extra}
"""
_AUTOGRAD = " Routed calls support autograd to any order (double backward included), as torch's op."
_SOFTMAX_NOTE = "+inf entries share the mass, -inf rows give 0 / -inf instead of NaN"
_MULTINOMIAL_NOTE = "NaN, inf or negative entries raise StableSoftmaxError naming the rows"


def _dress(key: str, what: str, extra: str = "") -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Copy name and docstring of the original onto a replacement and mark it as ours."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        original = _orig(key)
        fn.__name__ = getattr(original, "__name__", fn.__name__)
        fn.__qualname__ = getattr(original, "__qualname__", fn.__qualname__)
        fn.__doc__ = (getattr(original, "__doc__", None) or "") + _NOTE.format(what=what, extra=extra)
        module = getattr(original, "__module__", None)
        if module is not None:
            fn.__module__ = module
        fn.__wrapped__ = original  # type: ignore[attr-defined]
        setattr(fn, _MARK, key)
        return fn

    return decorate


@_dress("torch.softmax", _SOFTMAX_NOTE, _AUTOGRAD)
def _torch_softmax(
    input: torch.Tensor, dim: int, dtype: torch.dtype | None = None, *, out: torch.Tensor | None = None
) -> torch.Tensor:
    return _softmax_with_out("torch.softmax", False, input, dim, dtype, out)


@_dress("torch.log_softmax", _SOFTMAX_NOTE, _AUTOGRAD)
def _torch_log_softmax(
    input: torch.Tensor, dim: int, dtype: torch.dtype | None = None, *, out: torch.Tensor | None = None
) -> torch.Tensor:
    return _softmax_with_out("torch.log_softmax", True, input, dim, dtype, out)


@_dress("F.softmax", _SOFTMAX_NOTE, _AUTOGRAD)
def _functional_softmax(
    input: torch.Tensor, dim: int | None = None, _stacklevel: int = 3, dtype: torch.dtype | None = None
) -> torch.Tensor:
    result = _route_softmax(input, dim, dtype, log=False)
    if result is None:  # one frame deeper than the original: keep torch's dim=None warning on the caller's line
        return _orig("F.softmax")(input, dim, _stacklevel + 1, dtype)
    return result


@_dress("F.log_softmax", _SOFTMAX_NOTE, _AUTOGRAD)
def _functional_log_softmax(
    input: torch.Tensor, dim: int | None = None, _stacklevel: int = 3, dtype: torch.dtype | None = None
) -> torch.Tensor:
    result = _route_softmax(input, dim, dtype, log=True)
    if result is None:
        return _orig("F.log_softmax")(input, dim, _stacklevel + 1, dtype)
    return result


@_dress("Tensor.softmax", _SOFTMAX_NOTE, _AUTOGRAD)
def _tensor_softmax(self: torch.Tensor, dim: int, dtype: torch.dtype | None = None) -> torch.Tensor:
    result = _route_softmax(self, dim, dtype, log=False)
    return _orig("Tensor.softmax")(self, dim, dtype=dtype) if result is None else result


@_dress("Tensor.log_softmax", _SOFTMAX_NOTE, _AUTOGRAD)
def _tensor_log_softmax(self: torch.Tensor, dim: int, dtype: torch.dtype | None = None) -> torch.Tensor:
    result = _route_softmax(self, dim, dtype, log=True)
    return _orig("Tensor.log_softmax")(self, dim, dtype=dtype) if result is None else result


@_dress("torch.multinomial", _MULTINOMIAL_NOTE)
def _torch_multinomial(
    input: torch.Tensor,
    num_samples: int,
    replacement: bool = False,
    *,
    generator: torch.Generator | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    original = _orig("torch.multinomial")
    if out is None:
        result = _route_multinomial(input, num_samples, replacement, generator)
        return original(input, num_samples, replacement, generator=generator) if result is None else result
    if _routable(input) and _out_ok(out, input, torch.int64):
        result = _route_multinomial(input, num_samples, replacement, generator)
        if result is not None:
            return _write_out(result, out, stacklevel=2)
    return original(input, num_samples, replacement, generator=generator, out=out)


@_dress("Tensor.multinomial", _MULTINOMIAL_NOTE)
def _tensor_multinomial(
    self: torch.Tensor, num_samples: int, replacement: bool = False, *, generator: torch.Generator | None = None
) -> torch.Tensor:
    result = _route_multinomial(self, num_samples, replacement, generator)
    if result is None:
        return _orig("Tensor.multinomial")(self, num_samples, replacement, generator=generator)
    return result


_REPLACEMENTS: dict[str, Callable[..., Any]] = {
    "torch.softmax": _torch_softmax,
    "torch.log_softmax": _torch_log_softmax,
    "torch.multinomial": _torch_multinomial,
    "F.softmax": _functional_softmax,
    "F.log_softmax": _functional_log_softmax,
    "Tensor.softmax": _tensor_softmax,
    "Tensor.log_softmax": _tensor_log_softmax,
    "Tensor.multinomial": _tensor_multinomial,
}
_torchscript_taught = False


def _teach_torchscript() -> None:
    """Let TorchScript compile code that calls a replacement as it compiled the original.

    ``torch.jit.script`` resolves ``torch.softmax`` through a table of builtins keyed by the
    function object, and compiles ``F.softmax`` from its Python source; the replacements are
    neither. Map each to what the original resolves to. Best effort, once per process: a torch
    without these internals only loses scripting of patched calls.
    """
    global _torchscript_taught
    if _torchscript_taught:
        return
    _torchscript_taught = True
    with contextlib.suppress(Exception):
        from torch.jit._builtins import _find_builtin, _register_builtin
        from torch.jit._state import _set_jit_function_cache

        for key, replacement in _REPLACEMENTS.items():
            if key.startswith("Tensor."):
                continue  # methods are resolved on the Tensor type, never through these attributes
            original = _orig(key)
            aten = _find_builtin(original)
            if aten is not None:
                _register_builtin(replacement, aten)
            else:
                with warnings.catch_warnings():  # torch.jit.script is deprecated; say nothing about it
                    warnings.simplefilter("ignore")
                    scripted = torch.jit.script(original)
                _set_jit_function_cache(replacement, scripted)


def _teach_dynamo() -> None:
    """Keep dynamo's table of torch's own in-graph functions keyed by the originals, never the replacements.

    Dynamo builds that table once per process (``trace_rules.get_torch_obj_rule_map``, cached) by
    looking up ``torch.softmax`` and the others by name. Built while patched, it lists the
    replacements as torch builtins: dynamo then puts them into the graph unread (AOTAutograd traces
    them with its own tensors, where they used to defer to torch: NaN for ``+inf`` rows) and, after
    :func:`unpatch`, no longer knows the originals (``torch.softmax`` "marked as skipped" under
    ``fullgraph=True``). Built unpatched, it is right: dynamo inlines the replacements, which route
    to the package's custom ops. Called at every patch and unpatch; a table not built yet is left to
    be built, and a torch without this internal only keeps its own behaviour.
    """
    trace_rules = sys.modules.get("torch._dynamo.trace_rules")
    get_rules = getattr(trace_rules, "get_torch_obj_rule_map", None)
    cache_info = getattr(get_rules, "cache_info", None)
    if cache_info is None or cache_info().currsize == 0:
        return
    with contextlib.suppress(Exception):
        rules = get_rules()
        for key, replacement in _REPLACEMENTS.items():
            rule = rules.pop(replacement, None)
            if rule is not None:
                rules.setdefault(_orig(key), rule)


def _install() -> None:
    if _state["installed"]:
        return
    _teach_torchscript()
    for key, (owner, attr) in _TARGETS.items():
        current = getattr(owner, attr)
        if getattr(current, _MARK, None) is None:  # never save a replacement as the original
            _originals[key] = (current, attr in vars(owner))
    _teach_dynamo()
    for key, (owner, attr) in _TARGETS.items():
        setattr(owner, attr, _REPLACEMENTS[key])
    _state["installed"] = True


def _restore() -> None:
    if not _state["installed"]:
        return
    for key, (owner, attr) in _TARGETS.items():
        original, own_attribute = _originals[key]
        if own_attribute:
            setattr(owner, attr, original)
        elif attr in vars(owner):
            delattr(owner, attr)  # the inherited method shows through again, the very same object
    _teach_dynamo()
    _state["installed"] = False


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------


def patch() -> None:
    """Route torch's softmax, log_softmax and multinomial entry points through stablesoftmax.

    Replaces ``torch.softmax``, ``torch.nn.functional.softmax``, ``torch.Tensor.softmax``,
    ``torch.log_softmax``, ``torch.nn.functional.log_softmax``, ``torch.Tensor.log_softmax``,
    ``torch.multinomial`` and ``torch.Tensor.multinomial`` (so also ``nn.Softmax``,
    ``nn.LogSoftmax`` and library code such as ``transformers``' ``generate()``). Each
    replacement accepts exactly the arguments the original accepts. Plain dense float16 /
    bfloat16 / float32 / float64 tensors are computed by the package: rows holding ``+inf``
    get the limit of softmax instead of NaN, and sampling from NaN / inf / negative
    probabilities raises :class:`~stablesoftmax.StableSoftmaxError` (a :class:`RuntimeError`)
    naming the rows, the likely cause and the fix. Everything else (integer, complex, sparse,
    nested, meta tensors, tensor subclasses, ``torch.func`` transforms, ``dim=None`` and other
    arguments torch treats its own way) is handed to the original function unchanged.

    Idempotent: a second call changes nothing. The patch is process-wide.

    Notes
    -----
    Routed softmax / log_softmax calls are differentiable to any order (``create_graph=True``,
    ``gradgradcheck``), as torch's own ops are. Under ``torch.compile`` routed calls compile to the
    package's custom ops, so compiled code gets the same answers as eager code. Dynamo does not
    guard on ``Tensor.softmax`` / ``Tensor.log_softmax`` / ``Tensor.multinomial`` (it compiles
    method calls without looking the method up), so a function compiled before :func:`patch` keeps
    torch's answers for those method calls, and one compiled while patched keeps the package's,
    until it recompiles (``torch._dynamo.reset()``); the function forms recompile by themselves.

    See Also
    --------
    unpatch : restore the originals.
    patched : the same as a context manager.
    """
    with _lock:
        _state["explicit"] = True
        _install()


def unpatch() -> None:
    """Restore the original torch functions and methods (the very same objects).

    Undoes :func:`patch` at once, also inside a :func:`patched` block (whose exit then changes
    nothing). Idempotent: calling it when nothing is patched does nothing.
    """
    with _lock:
        _state["explicit"] = False
        _restore()


@contextlib.contextmanager
def patched() -> Iterator[None]:
    """Context manager: :func:`patch` on entry; on exit, restore torch unless still wanted.

    Nesting-safe and re-entrant: only the exit of the outermost active block restores the
    originals, and not if :func:`patch` was called explicitly (that patch stays until
    :func:`unpatch`). The originals come back also when the body raises. The patch is
    process-wide: other threads see it while any block is active.

    Yields
    ------
    None

    Examples
    --------
    >>> import torch, stablesoftmax
    >>> x = torch.tensor([1.0, float("inf"), float("inf")], dtype=torch.float16)
    >>> with stablesoftmax.patched():
    ...     torch.softmax(x, -1)
    tensor([0.0000, 0.5000, 0.5000], dtype=torch.float16)
    """
    with _lock:
        _state["depth"] += 1
        _install()
    try:
        yield
    finally:
        with _lock:
            _state["depth"] -= 1
            if _state["depth"] == 0 and not _state["explicit"]:
                _restore()

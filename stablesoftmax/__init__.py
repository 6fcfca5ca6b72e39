"""stablesoftmax: numerically stable softmax, log-softmax and sampling for PyTorch.

Float32 accumulation after max subtraction for float16 / bfloat16 / float32 input, a defined
answer for every non-finite input, and errors that say which rows went wrong and what to do.
Three backends behind one dispatch layer: Triton (GPUs), a C++ extension (CPUs) and pure torch.
"""

from __future__ import annotations

import sys as _sys

if "torch" not in _sys.modules:  # first import of torch: without NumPy, torch warns about it; the package needs none
    import warnings as _warnings

    with _warnings.catch_warnings():
        _warnings.filterwarnings("ignore", message="Failed to initialize NumPy", category=UserWarning)
        import torch as _torch  # noqa: F401

from . import _extension

EXTENSION_NOTE = _extension.use_installed_extension(__path__)
_extension.register_fork_hook()

from ._diagnose import Diagnosis, diagnose  # noqa: E402
from ._dispatch import BackendStatus, available_backends, backend_for, use_backend  # noqa: E402
from ._errors import StableSoftmaxError, UnsupportedError  # noqa: E402
from ._patch import patch, patched, unpatch  # noqa: E402
from ._sampling import multinomial, sample_from_logits  # noqa: E402
from ._softmax import log_softmax, softmax  # noqa: E402
from ._warmup import warmup  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "BackendStatus",
    "Diagnosis",
    "StableSoftmaxError",
    "UnsupportedError",
    "__version__",
    "available_backends",
    "backend_for",
    "diagnose",
    "log_softmax",
    "multinomial",
    "patch",
    "patched",
    "sample_from_logits",
    "softmax",
    "unpatch",
    "use_backend",
    "warmup",
]

"""stablesoftmax: numerically stable softmax, log-softmax and sampling for PyTorch.

Float32 accumulation after max subtraction for float16 / bfloat16 / float32 input, a defined
answer for every non-finite input, and errors that say which rows went wrong and what to do.
Three backends behind one dispatch layer: Triton (GPUs), a C++ extension (CPUs) and pure torch.
"""

from __future__ import annotations

from ._diagnose import Diagnosis, diagnose
from ._dispatch import BackendStatus, available_backends, backend_for, use_backend
from ._errors import StableSoftmaxError, UnsupportedError
from ._patch import patch, patched, unpatch
from ._sampling import multinomial, sample_from_logits
from ._softmax import log_softmax, softmax

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
]

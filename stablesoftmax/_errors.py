"""The package's error type."""

from __future__ import annotations

__all__ = ["StableSoftmaxError"]


class StableSoftmaxError(RuntimeError):
    """An error about the data or the configuration of a stablesoftmax call.

    A subclass of :class:`RuntimeError`, so code that caught the errors torch raises for
    the same calls keeps working.
    """

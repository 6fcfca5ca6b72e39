"""The package's error types."""

from __future__ import annotations

__all__ = ["StableSoftmaxError", "UnsupportedError"]


class StableSoftmaxError(RuntimeError):
    """An error about the data or the configuration of a stablesoftmax call.

    A subclass of :class:`RuntimeError`, so code that caught the errors torch raises for
    the same calls keeps working.
    """


class UnsupportedError(StableSoftmaxError, NotImplementedError):
    """A dtype or layout the package does not handle (integer, complex, nested, sparse, ...).

    Also a :class:`NotImplementedError`, the type torch raises for the same calls.
    """

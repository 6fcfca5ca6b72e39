"""Pure-torch kernels: float32 (float64) math in row and column chunks that bound extra memory.

This is what Intel XPU, Apple MPS, CUDA without Triton and CPU without the extension run.
Every chunk applies the same shift rule as the Triton and C++ kernels:

* ``m`` = row maximum (NaN-propagating);
* ``s_i = x_i - m`` where ``m`` is finite, ``x_i - 0`` where ``m = -inf``, and
  ``0 if x_i == +inf else -inf`` where ``m = +inf``;
* ``e_i = exp(s_i)``, ``S = sum e_i`` (``1`` where it is ``0``, a fully masked row);
* softmax ``e_i / S``; log_softmax ``s_i - log S``.

``log S`` is formed as ``log k + log1p(T / k)``, where ``k`` counts the terms with
``e_i == 1`` (the maxima) and ``T`` sums the others: ``log`` of a float32 ``S`` near 1 would
lose the low bits of ``T``, and with them the relative accuracy of log_softmax near 0.
"""

from __future__ import annotations

import os

import torch

__all__ = ["CHUNK_BYTES", "CPU_CHUNK_BYTES", "chunks", "softmax_backward", "softmax_forward"]

#: Extra memory one call may allocate for float32 temporaries on an accelerator (bytes);
#: override with ``STABLESOFTMAX_TORCH_CHUNK_BYTES``.
CHUNK_BYTES = int(os.environ.get("STABLESOFTMAX_TORCH_CHUNK_BYTES", 256 << 20))
#: On the CPU, chunks stay cache-sized: temporaries are reused by the allocator instead of
#: being fresh pages (a page fault per 4 KiB costs more than the arithmetic).
CPU_CHUNK_BYTES = min(CHUNK_BYTES, 8 << 20)
# Live temporaries per element of a chunk, in units of the accumulation dtype.
_TEMPORARIES = 5


def chunk_bytes(device: torch.device) -> int:
    """The temporary-memory budget for one chunk on ``device``."""
    return CPU_CHUNK_BYTES if device.type == "cpu" else CHUNK_BYTES


def _accumulation_dtype(*tensors: torch.Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def chunks(rows: int, cols: int, itemsize: int, device: torch.device) -> tuple[int, int]:
    """Rows and columns per chunk so that the temporaries stay within the device's budget."""
    elements = max(chunk_bytes(device) // (itemsize * _TEMPORARIES), 1)
    if cols <= elements:
        return max(min(rows, elements // cols), 1), cols
    return 1, elements


def _row_max(x: torch.Tensor, col_chunk: int, acc: torch.dtype) -> torch.Tensor:
    m = None
    for c0 in range(0, x.shape[1], col_chunk):
        part = x[:, c0 : c0 + col_chunk].amax(dim=1, keepdim=True).to(acc)
        m = part if m is None else torch.maximum(m, part)  # maximum propagates NaN
    assert m is not None
    return m


def _shifted(x: torch.Tensor, m: torch.Tensor, acc: torch.dtype) -> torch.Tensor:
    """``s = x - m`` under the shift rule of the module docstring, in dtype ``acc``."""
    shifted = torch.sub(x, torch.where(torch.isfinite(m), m, 0.0).to(acc))  # promotes x to acc: one pass
    if shifted.dtype != acc:  # x wider than acc cannot happen; narrower promotes above
        shifted = shifted.to(acc)
    # rows whose max is +inf: 0 on their +inf entries (there s = x - 0 = +inf), -inf elsewhere
    inf_row = m == float("inf")
    return torch.where(inf_row, torch.where(shifted == float("inf"), 0.0, -float("inf")), shifted)


_SUM_BLOCK = 512


def _row_sum(t: torch.Tensor) -> torch.Tensor:
    """Per-row sums (keepdim) in a fixed order: 512-entry blocks, then the blocks in order. A plain
    ``t.sum(dim=1)`` of a lone long row is split across torch's threads, so its last bits would depend on
    ``torch.get_num_threads()``; a block is always summed by one thread and the block sums are few."""
    rows, cols = t.shape
    full = cols // _SUM_BLOCK * _SUM_BLOCK
    if full == 0:
        return t.sum(dim=1, keepdim=True)
    blocks = t[:, :full].reshape(rows, full // _SUM_BLOCK, _SUM_BLOCK).sum(dim=2)
    total = blocks.sum(dim=1, keepdim=True)
    return total + t[:, full:].sum(dim=1, keepdim=True) if full < cols else total


def _ones_and_rest(e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: how many ``e_i`` are exactly 1, and the sum of the others (NaN lands there). ``e = exp(s)``
    with ``s <= 0``, so ``floor(e)`` is 1 exactly there and 0 elsewhere; ``e`` is consumed (the others' terms
    are formed in place)."""
    at_max = torch.floor(e)
    return _row_sum(at_max), _row_sum(e.sub_(at_max))


def _total(ones: torch.Tensor, rest: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``S`` (1 for a fully masked row) and ``log S = log k + log1p(T / k)`` (0 there)."""
    total = ones + rest  # NaN for a NaN row
    masked = total == 0  # a row of only -inf
    k = torch.where(ones == 0, 1.0, ones)
    return torch.where(masked, 1.0, total), torch.where(masked, 0.0, k.log() + torch.log1p(rest / k))


def _finish(s: torch.Tensor, total: tuple[torch.Tensor, torch.Tensor], out: torch.Tensor, log: bool) -> None:
    if log:
        out.copy_(s.sub_(total[1]))
    else:
        out.copy_(s.exp_().div_(total[0]))


_SIXTEEN_BIT = (torch.float16, torch.bfloat16)


def _torch_softmax_buffer(x: torch.Tensor, out: torch.Tensor, log: bool) -> bool:
    """Whether torch's own softmax may do the work, in a float32 buffer (``_softmax_rows_fast``).

    Only for a 16-bit input and output, whose rounding hides torch's float32 errors (its fast exp and
    sequential sum: a few 1e-5 relative on long rows, beyond the SPEC's float32 bound); the buffer's largest
    finite value stands in for ``+inf`` there and lies far beyond every 16-bit input. log_softmax never:
    torch's ``x - m - log S`` loses ``S - 1`` below the working precision (a bfloat16 ``[0, -60]`` row would
    get an exact 0, where the SPEC's answer is ``-8.8e-27``).
    """
    return not log and out.dtype in _SIXTEEN_BIT and x.dtype in _SIXTEEN_BIT


def _softmax_rows_fast(x: torch.Tensor, out: torch.Tensor, buf: torch.Tensor) -> None:
    """Softmax of whole rows: torch's own max-subtracted softmax in ``buf``'s dtype, with the SPEC's answers
    for non-finite rows made by elementwise steps that need no host sync.

    The input is clamped to ``[-B, B]``, ``B`` the buffer dtype's largest finite value, which lies far
    beyond every finite input (``_torch_softmax_buffer``). Then torch's softmax gives:

    * a row whose max is ``+inf``: ``exp(B - B) = 1`` on each former ``+inf`` entry and ``exp(x - B) = 0``
      elsewhere, so ``1 / k`` and 0;
    * ``-inf`` entries of other rows: ``exp(-B - m) = 0``;
    * a NaN row: NaN (clamp and torch's max propagate NaN);
    * a row of only ``-inf``: ``-B`` everywhere, a uniform answer then scaled by 0, per row, from a row max
      taken on the device.

    torch's CPU kernel handles each row on one thread in a fixed order, so a row's result does not depend
    on the batch, its position or the thread count.
    """
    big = torch.finfo(buf.dtype).max
    buf.copy_(x)
    masked = buf.amax(dim=1, keepdim=True) == -float("inf")  # NaN-propagating: a NaN row is not masked
    buf.clamp_(-big, big)
    # in place on the CPU, whose kernel reads each entry before it writes it; no aliasing is assumed of other
    # devices' kernels, whose caching allocators make a fresh result cheap
    result = torch.softmax(buf, 1, out=buf) if buf.device.type == "cpu" else torch.softmax(buf, 1)
    out.copy_(result.mul_(torch.logical_not(masked).to(buf.dtype)))


def _shift_into(x: torch.Tensor, m: torch.Tensor, buf: torch.Tensor) -> None:
    """``buf = s``, the shift rule's ``x - m``, in two elementwise passes (``_shifted`` takes four), for every
    row whose max ``m`` is not NaN (a NaN row's ``buf`` is left meaningless: its caller makes it NaN).

    A +inf row is shifted by ``+inf``: ``inf - inf`` is NaN on its +inf entries and ``-inf`` elsewhere, and
    ``nan_to_num`` turns those NaN into 0 and keeps the infinities; every other row has no NaN to turn.
    (``fmin(s, 0)`` does the same but is not vectorised on the CPU: 6x the time.)
    """
    inf = float("inf")
    shift = torch.where(m == inf, inf, torch.where(torch.isfinite(m), m, 0.0))
    torch.sub(x, shift, out=buf)
    torch.nan_to_num(buf, nan=0.0, posinf=inf, neginf=-inf, out=buf)


def _rows_direct(x: torch.Tensor, out: torch.Tensor, log: bool, bufs: list[torch.Tensor]) -> None:
    """Softmax / log_softmax of whole rows in float32 (float64) math of our own: ``bufs`` are two reused
    buffers the shape of ``x`` (``bufs[1]`` only for log_softmax). Sums are ``_row_sum``'s fixed-order block
    sums; log_softmax's ``log S`` is ``_total``'s ``log k + log1p(T / k)``. NaN rows get NaN through the
    per-row factor (``_shift_into`` leaves their ``s`` meaningless)."""
    acc = bufs[0].dtype
    m = x.amax(dim=1, keepdim=True).to(acc)  # NaN-propagating
    nan_row = torch.isnan(m)
    s = bufs[0]
    _shift_into(x, m, s)
    if not log:
        e = s.exp_()
        total = _row_sum(e)
        total = torch.where(nan_row, float("nan"), torch.where(total == 0, 1.0, total))
        if out.dtype == acc:
            torch.div(e, total, out=out)
        else:
            out.copy_(e.div_(total))
        return
    log_s = torch.where(nan_row, float("nan"), _total(*_ones_and_rest(torch.exp(s, out=bufs[1])))[1])
    if out.dtype == acc:
        torch.sub(s, log_s, out=out)
    else:
        out.copy_(s.sub_(log_s))


def softmax_forward(x: torch.Tensor, out: torch.Tensor, log: bool) -> None:
    """Softmax (or log_softmax) of each row of 2-D ``x`` into ``out``, chunked."""
    acc = _accumulation_dtype(x, out)
    rows, cols = x.shape
    # one set of buffers for every chunk of whole rows: on the CPU a reused, cache-sized buffer costs no page faults
    if _torch_softmax_buffer(x, out, log):
        fast_rows = min(chunk_bytes(x.device) // (cols * 4), rows)
        if fast_rows >= 1:
            buf = torch.empty((fast_rows, cols), dtype=torch.float32, device=x.device)
            for r0 in range(0, rows, fast_rows):
                xr = x[r0 : r0 + fast_rows]
                _softmax_rows_fast(xr, out[r0 : r0 + fast_rows], buf[: xr.shape[0]])
            return
    row_chunk, col_chunk = chunks(rows, cols, acc.itemsize, x.device)
    if col_chunk == cols:  # whole rows fit a chunk: as many as the budget holds in the direct path's buffers
        n_bufs = 2 if log else 1
        row_chunk = min(max(chunk_bytes(x.device) // (cols * acc.itemsize * n_bufs), 1), rows)
        bufs = [torch.empty((row_chunk, cols), dtype=acc, device=x.device) for _ in range(n_bufs)]
        for r0 in range(0, rows, row_chunk):
            xr = x[r0 : r0 + row_chunk]
            _rows_direct(xr, out[r0 : r0 + row_chunk], log, [b[: xr.shape[0]] for b in bufs])
        return
    for r0 in range(0, rows, row_chunk):
        xr, outr = x[r0 : r0 + row_chunk], out[r0 : r0 + row_chunk]
        m = _row_max(xr, col_chunk, acc)
        ones, rest = torch.zeros_like(m), torch.zeros_like(m)
        for c0 in range(0, cols, col_chunk):
            chunk_ones, chunk_rest = _ones_and_rest(_shifted(xr[:, c0 : c0 + col_chunk], m, acc).exp_())
            ones += chunk_ones
            rest += chunk_rest
        total = _total(ones, rest)
        for c0 in range(0, cols, col_chunk):
            _finish(_shifted(xr[:, c0 : c0 + col_chunk], m, acc), total, outr[:, c0 : c0 + col_chunk], log)


def softmax_backward(y: torch.Tensor, grad: torch.Tensor, out: torch.Tensor, log: bool) -> None:
    """Gradient wrt the input from the forward output ``y`` and upstream ``grad``, chunked by rows.

    softmax: ``y * (g - sum(g * y))``; log_softmax: ``g - exp(y) * sum(g)``.
    """
    acc = _accumulation_dtype(y, grad, out)
    rows, cols = y.shape
    row_chunk = chunks(rows, cols, acc.itemsize, y.device)[0]
    for r0 in range(0, rows, row_chunk):
        yf = y[r0 : r0 + row_chunk].to(acc)
        gf = grad[r0 : r0 + row_chunk].to(acc)
        result = gf - yf.exp() * _row_sum(gf) if log else yf * (gf - _row_sum(gf * yf))
        out[r0 : r0 + row_chunk].copy_(result)

"""Per-row report of the non-finite values and float16 headroom of a tensor: what softmax and sampling will meet."""

from __future__ import annotations

import math
import operator
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ._errors import StableSoftmaxError

__all__ = ["FLOAT16_MAX", "Diagnosis", "diagnose"]

FLOAT16_MAX = 65504.0  # the largest finite float16
_NEAR_LIMIT = 2.0  # rows whose largest |finite value| lies within this factor of FLOAT16_MAX are flagged
_SHOWN_ROWS = 20  # rows printed in the table; the rest are counted
_WIDTH = 110  # advice lines are wrapped to this width
_CHUNK_BYTES = 64 << 20  # input bytes reduced at once: bounds the extra memory for huge tensors


@dataclass(frozen=True, eq=False)
class Diagnosis:
    """What :func:`diagnose` found, row by row.

    Rows are taken as softmax takes them: dimension ``dim`` is the row, every other dimension
    is flattened into the row index (in the order of ``tensor.movedim(dim, -1)``). Per-row fields
    are 1-D CPU tensors with one entry per row.

    Attributes
    ----------
    shape : tuple of int
        Shape of the diagnosed tensor.
    dtype : torch.dtype
        Its dtype.
    device : str
        Its device.
    dim : int
        The row dimension, normalised to be non-negative (0 for a 0-dim tensor).
    row_length : int
        Entries per row (``shape[dim]``, 1 for a 0-dim tensor).
    nan, pos_inf, neg_inf : torch.Tensor
        int64 counts of NaN, ``+inf`` and ``-inf`` entries per row.
    fully_masked : torch.Tensor
        bool, True where every entry of a (non-empty) row is ``-inf``.
    max_abs : torch.Tensor
        float64, the largest ``|x|`` over the finite entries of each row (0 when there are none).
    """

    shape: tuple[int, ...]
    dtype: torch.dtype
    device: str
    dim: int
    row_length: int
    nan: torch.Tensor
    pos_inf: torch.Tensor
    neg_inf: torch.Tensor
    fully_masked: torch.Tensor
    max_abs: torch.Tensor

    @property
    def rows(self) -> int:
        """Number of rows."""
        return self.nan.numel()

    @property
    def batch_shape(self) -> tuple[int, ...]:
        """Shape of the row index: ``shape`` without ``dim``."""
        return tuple(s for i, s in enumerate(self.shape) if i != self.dim)

    @property
    def headroom(self) -> torch.Tensor:
        """float64 per row: ``65504 / max_abs``, how far the finite values are from float16 overflow (inf if 0)."""
        return torch.where(
            self.max_abs > 0, FLOAT16_MAX / self.max_abs.clamp_min(1e-300), torch.full_like(self.max_abs, math.inf)
        )

    @property
    def near_limit(self) -> torch.Tensor:
        """bool per row: the largest finite ``|x|`` is within a factor 2 of float16's max (a warning, not an error)."""
        return self.max_abs * _NEAR_LIMIT >= FLOAT16_MAX

    @property
    def bad(self) -> torch.Tensor:
        """bool per row: the row holds NaN or ``+inf``, or is fully masked (what ``torch.multinomial`` dies on)."""
        return (self.nan > 0) | (self.pos_inf > 0) | self.fully_masked

    @property
    def bad_rows(self) -> list[int]:
        """Indices of the rows with NaN, with ``+inf``, or fully masked."""
        return self.bad.nonzero().flatten().tolist()

    @property
    def flagged_rows(self) -> list[int]:
        """Indices of the bad rows and of the rows near the float16 limit (the rows :meth:`__str__` tabulates)."""
        return (self.bad | self.near_limit).nonzero().flatten().tolist()

    @property
    def ok(self) -> bool:
        """True when no row holds NaN or ``+inf`` and none is fully masked."""
        return not bool(self.bad.any())

    @property
    def overall_max_abs(self) -> float:
        """The largest finite ``|x|`` of the whole tensor (0.0 when there is none)."""
        return float(self.max_abs.max()) if self.rows else 0.0

    def row_index(self, row: int) -> tuple[int, ...]:
        """The index into ``batch_shape`` of flat row ``row``."""
        index = []
        for size in reversed(self.batch_shape):
            row, i = divmod(row, size)
            index.append(i)
        return tuple(reversed(index))

    def _summary(self) -> str:
        dims = "x".join(str(s) for s in self.shape) or "scalar"
        head = f"tensor {dims} {str(self.dtype).replace('torch.', '')} on {self.device}"
        if self.rows == 0 or self.row_length == 0:
            what = "no rows" if self.rows == 0 else f"{self.rows} rows of length 0"
            return f"{head}, dim {self.dim}: {what}, nothing to check"
        counts = ", ".join(
            f"{name} {int(mask.sum())}"
            for name, mask in (
                ("NaN", self.nan > 0),
                ("+inf", self.pos_inf > 0),
                ("-inf", self.neg_inf > 0),
                ("fully masked", self.fully_masked),
            )
        )
        peak = self.overall_max_abs
        room = _fmt_headroom(FLOAT16_MAX / peak if peak > 0 else math.inf)
        rows = f"{self.rows} row{'s' if self.rows != 1 else ''} of {self.row_length}"
        return f"{head}, dim {self.dim}: {rows}; rows with {counts}; max |x| {peak:.5g} (float16 headroom {room})"

    def _advice(self) -> list[str]:
        lines = []
        if bool((self.nan > 0).any()):
            lines.append(
                "NaN rows: softmax / log_softmax return NaN for the whole row (as torch); sample_from_logits and "
                "multinomial raise StableSoftmaxError. Likely float16 overflow upstream (inf - inf = NaN): load the "
                "model in bfloat16 or float32."
            )
        if bool((self.pos_inf > 0).any()):
            overflow = (
                " In a float16 tensor +inf almost always means an activation overflowed 65504: load the model in "
                "bfloat16 or float32."
                if self.dtype == torch.float16
                else ""
            )
            lines.append(
                "+inf rows: stablesoftmax.softmax gives 1/k to each of the k +inf entries and sampling picks among "
                f"them uniformly; torch answers NaN and torch.multinomial fails.{overflow}"
            )
        if bool(self.fully_masked.any()):
            lines.append(
                "Fully masked rows: softmax gives all 0 (log_softmax all -inf); sample_from_logits raises "
                "StableSoftmaxError. Check the attention / padding masks, or loosen top_k / top_p / min_p and the "
                "logits processors."
            )
        if bool(self.near_limit.any()):
            lines.append(
                "Rows near float16's max 65504: one more scaling or a temperature below 1 overflows in float16; "
                "the package computes in float32, but keep model activations in bfloat16 or float32."
            )
        if not lines:
            lines.append("No problems: every row is finite with a finite entry; softmax and sampling agree with torch.")
        return lines

    def __str__(self) -> str:
        lines = [self._summary()]
        flagged = self.flagged_rows if self.row_length else []
        if flagged:
            multi = len(self.batch_shape) > 1
            header = ("row", "index", "NaN", "+inf", "-inf", "max |x|", "headroom", "problem")
            table = []
            for r in flagged[:_SHOWN_ROWS]:
                nan, pos, neg = int(self.nan[r]), int(self.pos_inf[r]), int(self.neg_inf[r])
                problems = []
                if nan:
                    problems.append("NaN")
                if pos:
                    problems.append("+inf")
                if bool(self.fully_masked[r]):
                    problems.append("fully masked")
                if bool(self.near_limit[r]):
                    problems.append("near float16 limit")
                max_abs = float(self.max_abs[r])
                table.append((
                    str(r),
                    str(self.row_index(r)) if multi else "",
                    str(nan),
                    str(pos),
                    str(neg),
                    f"{max_abs:.5g}" if not bool(self.fully_masked[r]) else "-",
                    _fmt_headroom(float(self.headroom[r])),
                    ", ".join(problems),
                ))  # fmt: skip
            columns = [i for i in range(len(header)) if i != 1 or multi]
            widths = {i: max(len(header[i]), *(len(t[i]) for t in table)) for i in columns}
            last = len(header) - 1  # the problem column is left-aligned, the numbers right-aligned
            for cells in (header, *table):
                lines.append("  " + "  ".join(cells[i] if i == last else cells[i].rjust(widths[i]) for i in columns))
            if len(flagged) > _SHOWN_ROWS:
                lines.append(f"  ... {len(flagged) - _SHOWN_ROWS} more")
        if self.rows and self.row_length:
            lines.extend(textwrap.fill(a, width=_WIDTH, subsequent_indent="  ") for a in self._advice())
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (
            f"Diagnosis(shape={self.shape}, dtype={self.dtype}, dim={self.dim}, rows={self.rows}, "
            f"bad_rows={len(self.bad_rows)}, ok={self.ok})"
        )


def _fmt_headroom(h: float) -> str:
    if math.isinf(h):
        return "inf"
    return f"{h:.3g}x"


def _row_blocks(x: torch.Tensor, budget: int) -> Iterator[torch.Tensor]:
    """Yield ``x`` (rows along the last dimension) as 2-D ``(rows, n)`` blocks in row order, each of about
    ``budget`` elements or one row, copying at most one block at a time."""
    n = x.shape[-1]
    if x.ndim == 1:
        yield x.unsqueeze(0)
        return
    try:
        flat = x.view(-1, n)
    except RuntimeError:  # not viewable as rows: split along the first dimension and copy pieces
        per = x[0].numel()
        step = budget // max(per, 1)
        if step >= 1:
            for i in range(0, x.shape[0], step):
                yield x[i : i + step].reshape(-1, n)
        else:
            for i in range(x.shape[0]):
                yield from _row_blocks(x[i], budget)
        return
    step = max(1, budget // max(n, 1))
    for i in range(0, flat.shape[0], step):
        yield flat[i : i + step]


def _reduce_block(block: torch.Tensor, budget: int) -> tuple[torch.Tensor, ...]:
    """(nan, +inf, -inf, max |finite|) per row of a 2-D block, in column pieces of about ``budget`` elements."""
    rows, n = block.shape
    floating = block.dtype.is_floating_point
    nan = torch.zeros(rows, dtype=torch.int64, device=block.device)
    pos, neg = torch.zeros_like(nan), torch.zeros_like(nan)
    peak = torch.zeros(rows, dtype=torch.float64, device=block.device)
    step = max(1, budget // max(rows, 1))
    for j in range(0, n, step):
        piece = block[:, j : j + step]
        if floating:
            # Fast path: amax propagates NaN and keeps inf, so a finite row maximum of |x| means a finite row.
            row_max = piece.abs().amax(1)
            finite_max = torch.isfinite(row_max)
            peak = torch.maximum(peak, torch.where(finite_max, row_max, 0).double())
            odd = (~finite_max).nonzero().flatten()  # count only in the rows with something non-finite
            if odd.numel():
                sub = piece.index_select(0, odd)
                sub_abs = sub.abs().masked_fill_(~torch.isfinite(sub), 0).amax(1).double()
                peak.index_copy_(0, odd, torch.maximum(peak.index_select(0, odd), sub_abs))
                nan.index_add_(0, odd, torch.isnan(sub).sum(1))
                pos.index_add_(0, odd, (sub == math.inf).sum(1))
                neg.index_add_(0, odd, (sub == -math.inf).sum(1))
        else:  # integers and bool: all finite; float64 keeps |int64 min| from wrapping
            peak = torch.maximum(peak, piece.double().abs().amax(1))
    return nan, pos, neg, peak


def diagnose(tensor: torch.Tensor, dim: int = -1) -> Diagnosis:
    """Count the NaN, ``+inf`` and ``-inf`` entries of each row and measure its float16 headroom.

    Run it on logits or attention scores that make ``torch.multinomial`` fail with *probability
    tensor contains either inf, nan or element < 0*: it says which rows are broken, how, and what
    :func:`stablesoftmax.softmax` and :func:`stablesoftmax.sample_from_logits` do with them.

    Parameters
    ----------
    tensor : torch.Tensor
        Any real dtype (floating, integer or bool), any device, any rank. A 0-dim tensor is one row
        of one entry; an empty tensor has no rows to check.
    dim : int, default -1
        The row dimension, as for softmax: every other dimension is flattened into the row index.

    Returns
    -------
    Diagnosis
        Per-row counts (``nan``, ``pos_inf``, ``neg_inf``), ``fully_masked``, ``max_abs`` and the
        derived ``headroom``, ``bad_rows`` and ``ok``; ``str()`` gives a readable report.

    Raises
    ------
    TypeError
        If ``tensor`` is not a :class:`torch.Tensor`.
    StableSoftmaxError
        If ``tensor`` is complex.
    IndexError
        If ``dim`` is out of range.

    Notes
    -----
    The reductions are torch ops on the tensor's own device, over blocks of about 64 MiB of input,
    so the extra memory stays bounded for huge tensors. Results are copied to the CPU.

    Examples
    --------
    >>> import torch, stablesoftmax as ss
    >>> x = torch.tensor([[1.0, float("inf")], [float("-inf"), float("-inf")]], dtype=torch.float16)
    >>> d = ss.diagnose(x)
    >>> d.bad_rows, d.ok
    ([0, 1], False)
    """
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"diagnose(): expected a torch.Tensor, got {type(tensor).__name__}")
    if tensor.is_complex():
        raise StableSoftmaxError(f"diagnose(): complex tensors have no softmax; got {tensor.dtype}")
    dim = operator.index(dim)
    rank = max(tensor.ndim, 1)
    if not -rank <= dim < rank:
        raise IndexError(f"diagnose(): dim {dim} is out of range for a tensor of {tensor.ndim} dimensions")
    dim %= rank
    x = tensor.detach().reshape(1) if tensor.ndim == 0 else tensor.detach().movedim(dim, -1)
    n = x.shape[-1]
    rows = math.prod(x.shape[:-1])
    parts: list[list[torch.Tensor]] = [[], [], [], []]
    if rows and n:
        # integer blocks are reduced in float64 (8 bytes an entry), floating ones in their own dtype
        width = tensor.element_size() if tensor.dtype.is_floating_point else 8
        budget = max(1, _CHUNK_BYTES // width)
        for block in _row_blocks(x, budget):
            for acc, result in zip(parts, _reduce_block(block, budget)):
                acc.append(result.cpu())
    if parts[0]:
        nan, pos, neg, peak = (torch.cat(p) for p in parts)
    else:
        nan = torch.zeros(rows, dtype=torch.int64)
        pos, neg = torch.zeros_like(nan), torch.zeros_like(nan)
        peak = torch.zeros(rows, dtype=torch.float64)
    return Diagnosis(
        shape=tuple(tensor.shape),
        dtype=tensor.dtype,
        device=str(tensor.device),
        dim=dim,
        row_length=n,
        nan=nan,
        pos_inf=pos,
        neg_inf=neg,
        fully_masked=(neg == n) & (n > 0),
        max_abs=peak,
    )

"""The torch backend's 16-bit softmax fast path (torch's own softmax, then a device-side fix-up), its direct
path for whole rows (float32 softmax, every log_softmax) and its column-chunked path for rows past the chunk
budget: the SPEC's non-finite table row by row in mixed batches, and accuracy against the float64 reference,
at every dtype and for both ops.

Each batch mixes finite rows, rows with k ``+inf`` entries (with ``-inf`` and finite neighbours, and finite
values at the dtype's largest), NaN rows (NaN alone or beside ``+inf``), rows of only ``-inf``, and rows
with some ``-inf``, in a fresh random order, so that a fix-up aimed at one row that leaked into another fails.
"""

from __future__ import annotations

import pytest
import torch
from _reference import INF, assert_close_to_reference, reference
from conftest import require_backend

import stablesoftmax as ss
from stablesoftmax.backends import torch_softmax

NAN = float("nan")
DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
OUT_DTYPES = [None, torch.float32, torch.float16]


def _mixed_batch(cols: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Rows of every kind in the non-finite table, shuffled; row values are fresh normal data."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(12, cols, generator=g, dtype=torch.float64) * 4
    big = torch.finfo(dtype).max
    cols_at = torch.randperm(cols, generator=g)
    x = base.clone()
    x[1, cols_at[:3]] = INF  # k = 3 +inf among finite values
    x[2, cols_at[:1]] = INF  # one +inf, some -inf
    x[2, cols_at[1 : cols // 2]] = -INF
    x[3, cols_at[:2]] = INF  # +inf beside the dtype's largest finite values (they must not tie)
    x[3, cols_at[2:5]] = big
    x[3, cols_at[5:7]] = -big
    x[4, cols_at[:1]] = NAN  # a NaN row
    x[5, cols_at[:1]] = NAN  # NaN beside +inf: NaN wins
    x[5, cols_at[1:3]] = INF
    x[6] = -INF  # fully masked
    x[7, cols_at[: cols - 1]] = -INF  # one survivor
    x[8, cols_at[: cols // 3]] = -INF  # some -inf
    x[9, cols_at[:2]] = big  # finite values at the dtype's largest beside -inf (not beside -big: x - m overflows)
    x[9, cols_at[2:4]] = -INF
    x[10] = INF  # every entry +inf
    x[11, cols_at[:1]] = INF  # +inf beside NaN-free -inf only
    x[11, cols_at[1:]] = -INF
    return x[torch.randperm(x.shape[0], generator=g)].to(dtype)


@pytest.fixture
def torch_backend():
    require_backend("torch")
    with ss.use_backend("torch"):
        yield


@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
@pytest.mark.parametrize("out_dtype", OUT_DTYPES, ids=lambda d: str(d)[6:] if d else "same")
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("cols", [7, 1000, 5003])
def test_mixed_batch_matches_float64_reference(torch_backend, cols, dtype, out_dtype, op):
    x = _mixed_batch(cols, dtype, seed=cols + DTYPES.index(dtype))
    got = getattr(ss, op)(x, -1, dtype=out_dtype)
    assert got.dtype == (out_dtype or dtype)
    # rounded to the output dtype: a float64 -1.8e308 - 7 is -inf in float32
    ref = reference(x, -1, log=op == "log_softmax").to(got.dtype)
    assert_close_to_reference(got, ref, log=op == "log_softmax")


@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=lambda d: str(d)[6:])
def test_special_rows_exact(torch_backend, dtype, op):
    """The table's answers exactly: 1/k (``-log k``) on +inf entries, 0 (``-inf``) elsewhere, NaN rows NaN."""
    log = op == "log_softmax"
    x = _mixed_batch(300, dtype, seed=3)
    got = getattr(ss, op)(x, -1).double()
    for row, out in zip(x.double(), got):
        if row.isnan().any():
            assert out.isnan().all()
        elif (row == INF).any():
            k = int((row == INF).sum())
            at = torch.tensor(-torch.log(torch.tensor(float(k))).item() if log else 1.0 / k, dtype=torch.float64)
            assert torch.equal(out[row == INF], at.to(dtype).double().expand(k))
            assert (out[row != INF] == (-INF if log else 0.0)).all()
        elif (row == -INF).all():
            assert (out == (-INF if log else 0.0)).all()
        else:
            assert (out[row == -INF] == (-INF if log else 0.0)).all()
            assert out[row != -INF].isfinite().all()


@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
@pytest.mark.parametrize(
    ("dtype", "out_dtype"),
    [(torch.float16, None), (torch.bfloat16, None), (torch.float16, torch.float32), (torch.float32, None)],
    ids=str,
)
def test_long_rows_accuracy(torch_backend, dtype, out_dtype, op):
    """Rows long enough that torch's float32 sum and fast exp would miss the SPEC's float32 bound."""
    g = torch.Generator().manual_seed(7)
    x = (torch.randn(3, 152_064, generator=g, dtype=torch.float64) * 4).to(dtype)
    x[1, :5] = INF
    got = getattr(ss, op)(x, -1, dtype=out_dtype)
    assert_close_to_reference(got, reference(x, -1, log=op == "log_softmax"), log=op == "log_softmax")


@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
def test_row_chunks_and_buffer_reuse(torch_backend, monkeypatch, op):
    """Many chunks through one reused buffer (the last one partial): each row as it is alone."""
    monkeypatch.setattr(torch_softmax, "CPU_CHUNK_BYTES", 3 * 1000 * 4)
    monkeypatch.setattr(torch_softmax, "CHUNK_BYTES", 3 * 1000 * 4)
    x = torch.cat([_mixed_batch(1000, torch.float16, seed=s) for s in range(2)])[:23]
    got = getattr(ss, op)(x, -1)
    assert_close_to_reference(got, reference(x, -1, log=op == "log_softmax"), log=op == "log_softmax")
    for r in (0, 11, 22):
        alone = getattr(ss, op)(x[r : r + 1], -1)
        assert torch.equal(got[r].nan_to_num(7.0), alone[0].nan_to_num(7.0))

"""Bitwise batch invariance of the Triton softmax: a row's output is the same bits alone or in a batch.

The planner takes the split path for few rows and the looped path for many (and packs short rows
into fused tiles); the paths must cut a row into the same chunks and combine the partials in the
same order, so that which path the batch size selects does not change a bit. In the interpreter
with a device of one multiprocessor: a lone row and a pair take the split path, a batch of 7 the
looped one (asserted below).
"""

from __future__ import annotations

import math

import pytest
import torch

from .conftest import DEVICE, import_or_skip_off_ci

triton = import_or_skip_off_ci("triton", "the Triton kernels")

from stablesoftmax.backends import triton_softmax as S  # noqa: E402

# 20,000 columns: past the fused limit, five chunks of 4,096 with a partial last one. 20,001: the same, and each
# row starts at another offset from a 16-byte boundary (the write pass's head, 128-bit groups and tail differ by row).
LONG = 20_000
ODD = 20_001
SHORT = 1_000  # fused, several rows packed per program


@pytest.fixture
def one_sm(monkeypatch):
    """A device of one multiprocessor: fewer than 4 rows split, 4 and more loop."""
    monkeypatch.setattr(S, "_sm_count", lambda device_type, index: 1)


def _rows(gen, cols, dtype):
    # standard normal rows: the old planner (three chunks alone, one in the batch of 7) changed the float32
    # bits of most entries of rows 0 and 6 here
    x = torch.randn(7, cols, generator=gen, dtype=torch.float64)
    x[2, cols // 3] = -math.inf
    x[4, 5] = math.inf  # a row whose answer the +inf entry decides
    return x.to(dtype).to(DEVICE)


def _fwd(x, log):
    out = torch.empty_like(x)
    S.softmax_forward(x, out, log)
    return out


def _bits(t):
    return t.view(torch.int16 if t.element_size() == 2 else torch.int32).cpu()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("log", [False, True])
@pytest.mark.parametrize("cols", [LONG, ODD, SHORT])
def test_row_alone_or_in_a_batch_is_bitwise_the_same(one_sm, gen, dtype, log, cols):
    x = _rows(gen, cols, dtype)
    if cols != SHORT:
        assert S._plan(1, cols, x.device).path == "split"
        assert S._plan(2, cols, x.device).path == "split"
        assert S._plan(7, cols, x.device).path == "looped"
        assert S._plan(1, cols, x.device)[1:] == S._plan(7, cols, x.device)[1:]  # same blocks and chunks
    else:
        assert S._plan(1, cols, x.device) == S._plan(7, cols, x.device)  # the same fused tile
    batch7 = _bits(_fwd(x, log))
    for i in (0, 3, 6):  # first, middle, last position of the batch of 7
        alone = _bits(_fwd(x[i : i + 1].clone(), log))
        assert torch.equal(alone[0], batch7[i]), (i, (alone[0] != batch7[i]).sum())
    pair = _bits(_fwd(x[5:7].clone(), log))  # the pair: the last row of 7 as its second
    assert torch.equal(pair[1], batch7[6]) and torch.equal(pair[0], batch7[5])
    first_pair = _bits(_fwd(x[0:2].clone(), log))
    assert torch.equal(first_pair[0], batch7[0])


def test_the_rows_tell_a_different_chunking(gen):
    """The data above is sensitive to the order of the sums: one chunk per row instead of five (what the
    looped path did before) changes float32 bits, so the invariance test can fail."""
    x = _rows(gen, LONG, torch.float32)
    plan = S._plan(7, LONG, x.device)
    assert plan.split == 5
    a, c = torch.empty_like(x), torch.empty_like(x)
    S.softmax_forward(x, a, False)
    S.softmax_forward(x, c, False, split=1, block_size=plan.block)  # one chunk of the whole row
    assert not torch.equal(_bits(a), _bits(c))


@pytest.mark.parametrize(
    ("dtypes", "log"),
    [((torch.float16, torch.float16), False), ((torch.float16, torch.float32), True),
     ((torch.float32, torch.bfloat16), False), ((torch.bfloat16, torch.float32), True)],
)  # fmt: skip
@pytest.mark.parametrize("split", [1, 3])
def test_unaligned_rows_write_the_same_bits_in_128_bit_groups(monkeypatch, gen, dtypes, log, split):
    """Rows of odd length: the write pass's head / 128-bit groups / tail (every row at another offset from
    a 16-byte boundary) gives exactly what one access per element gives, on the looped and the split path,
    for rows with -inf entries, a row of -inf and a row with +inf."""
    cols = 4099
    x = _rows(gen, cols, dtypes[0])
    x[3] = -math.inf
    got = torch.empty(x.shape, dtype=dtypes[1], device=x.device)
    want = torch.empty_like(got)
    assert S._phase_vector(cols, x, got) == 16 // min(t.element_size() for t in (x, got))
    S.softmax_forward(x, got, log, block_size=1024, split=split)
    monkeypatch.setattr(S, "_phase_vector", lambda *tensors: 1)
    S.softmax_forward(x, want, log, block_size=1024, split=split)
    assert torch.equal(_bits(got), _bits(want))
    ref = (torch.log_softmax if log else torch.softmax)(x.double(), dim=-1)
    finite = torch.isfinite(ref)
    assert torch.allclose(got.double()[finite], ref[finite], rtol=2e-2, atol=1e-6)


def test_write_groups_only_where_they_help():
    """The grouped write runs only where Triton's specialisation cannot vectorise and both tensors can."""
    aligned = torch.empty(4, 4096, dtype=torch.float16, device=DEVICE)
    odd = torch.empty(4, 4099, dtype=torch.float16, device=DEVICE)
    padded = torch.empty(4, 4104, dtype=torch.float16, device=DEVICE)[:, :4099]  # stride 4104 = 0 mod 8
    assert S._phase_vector(4096, aligned, torch.empty_like(aligned)) == 1  # already 128-bit
    assert S._phase_vector(4099, odd, torch.empty_like(odd)) == 8
    assert S._phase_vector(4099, padded, torch.empty(4, 4099, dtype=torch.float16, device=DEVICE)) == 1  # 4104 vs 4099
    assert S._phase_vector(4099, padded, torch.empty(4, 4104, dtype=torch.float32, device=DEVICE)[:, :4099]) == 8
    assert S._phase_vector(4099, odd[:, 1:], torch.empty(4, 4098, dtype=torch.float16, device=DEVICE)) == 1  # base

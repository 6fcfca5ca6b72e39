"""Float64 reference for the SPEC's softmax / log_softmax, and its tolerance checks."""

from __future__ import annotations

import math

import torch

INF = float("inf")


def reference(x: torch.Tensor, dim: int, log: bool) -> torch.Tensor:
    """The SPEC's answer in float64, row by row: the limit of softmax for +inf, 0 for -inf, NaN for NaN."""
    x64 = x.double().movedim(dim, -1)
    rows = x64.reshape(-1, x64.shape[-1]) if x64.ndim else x64.reshape(1, 1)
    if log:  # log S = log c + log1p(T / c): torch's float64 log(1 + 1e-28) would be exactly 0
        m = rows.amax(-1, keepdim=True)
        shifted = rows - m
        e = shifted.exp()
        at_max = (shifted == 0).sum(-1, keepdim=True).double().clamp_min(1)
        below = torch.where(shifted == 0, 0.0, e).sum(-1, keepdim=True)
        out = shifted - (at_max.log() + torch.log1p(below / at_max))
    else:
        out = torch.softmax(rows, -1)
    special = torch.isnan(rows).any(-1) | (rows == INF).any(-1) | (rows == -INF).all(-1)
    for i in special.nonzero().flatten().tolist():
        row = rows[i]
        if torch.isnan(row).any():
            out[i] = math.nan
        elif (row == INF).any():
            hit = row == INF
            k = int(hit.sum())
            out[i] = -INF if log else 0.0
            out[i, hit] = -math.log(k) if log else 1.0 / k
        else:
            out[i] = -INF if log else 0.0
    return out.reshape(x64.shape).movedim(-1, dim) if x.ndim else out.reshape(())


def ulp(values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The spacing of ``dtype`` at each (float64) value, subnormals included."""
    info = torch.finfo(dtype)
    mantissa_bits = {torch.float16: 10, torch.bfloat16: 7}[dtype]
    min_exp = int(math.log2(info.tiny))
    exponent = torch.floor(torch.log2(values.abs().clamp_min(info.tiny)))
    return torch.exp2(exponent.clamp_min(min_exp) - mantissa_bits)


def assert_close_to_reference(out: torch.Tensor, ref: torch.Tensor, log: bool) -> None:
    """The SPEC's accuracy bounds: float32 1e-5 relative, float16 / bfloat16 one ulp of the rounded reference."""
    assert out.shape == ref.shape
    o = out.double().cpu()
    r = ref.double().cpu()
    low_precision = out.dtype in (torch.float16, torch.bfloat16)
    if low_precision:  # compare with the correctly rounded reference (which may overflow to -inf)
        r = r.to(out.dtype).double()
    same_nonfinite = (torch.isnan(o) == torch.isnan(r)) & (torch.isinf(o) == torch.isinf(r))
    assert same_nonfinite.all(), f"non-finite pattern differs at {(~same_nonfinite).nonzero()[:5].tolist()}"
    assert (o[torch.isinf(r)] == r[torch.isinf(r)]).all(), "infinities of the wrong sign"
    finite = torch.isfinite(r)
    o, r = o[finite], r[finite]
    err = (o - r).abs()
    if low_precision:
        allowed = ulp(r, out.dtype)
    elif out.dtype == torch.float32:
        allowed = 1e-5 * (1 + r.abs()) if log else 1e-5 * r.abs() + 1e-9
    else:
        allowed = 1e-10 * (1 + r.abs()) if log else 1e-10 * r.abs() + 1e-14
    bad = err > allowed
    if bad.any():
        i = int(bad.nonzero()[0])
        raise AssertionError(
            f"{int(bad.sum())} of {bad.numel()} elements out of bounds ({out.dtype}); first: got {o[i].item()!r}, "
            f"reference {r[i].item()!r}, error {err[i].item():.3g} > {allowed[i].item():.3g}"
        )


def shard_case(dtype: torch.dtype, seed: int, rows: int, cols: int, device: torch.device | str = "cpu"):
    """A shard for the shard-kernel tests: ``(x, m, t, cut, min_p)`` (see backends/torch_shard.py).

    Fresh random logits (``rows >= 6``) with ``-inf`` entries (row 0), padding columns (row 1), ``+inf``
    entries (row 2), a masked row (3), a per-row temperature (``inf`` in row 5), the global maximum by the
    shift rule, a ``cut`` at about the 90th percentile of ``z`` and a per-row ``min_p``.
    """
    from stablesoftmax.backends import torch_shard

    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(rows, cols, generator=g, dtype=torch.float64) * 3).to(dtype)
    x[0, torch.randperm(cols, generator=g)[: cols // 5]] = -math.inf
    x[1, -77:] = -math.inf
    x[2, [5, cols // 2, cols - 1]] = math.inf
    x[3] = -math.inf
    xf = x.float()
    finite = torch.where(torch.isfinite(xf), xf, -math.inf)
    m = torch.where((xf == math.inf).any(1), math.inf, finite.amax(1))[:, None]
    m[3] = -math.inf
    t = torch.tensor([1.0, 0.7, 2.0, 1.0, 0.3, math.inf] + [1.0] * (rows - 6))[:, None]
    z = torch_shard.z_of(x, m, t)
    cut = torch.quantile(torch.where(torch.isfinite(z), z, -1e30).double(), 0.9, dim=1).float()[:, None]
    cut = torch.where(torch.isfinite(z).any(1, keepdim=True), z.masked_fill(z < cut, math.inf).amin(1, True), -math.inf)
    min_p = torch.tensor([0.0, 0.05, 0.5, 0.1, 1e-3, 0.2] + [0.0] * (rows - 6))[:, None]
    return tuple(v.to(device) for v in (x, m, t, cut, min_p))

"""Exact float64 sampling distributions (an implementation independent of the backends) and a chi-square test."""

from __future__ import annotations

import math

import torch


def filtered_distribution(
    x: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0
) -> torch.Tensor:
    """The SPEC's distribution for one row of logits, in float64, by the definitions, one entry at a time."""
    row = x.double().tolist()
    inf_hits = [i for i, v in enumerate(row) if v == math.inf]
    if inf_hits:  # +inf entries share the row
        p = torch.zeros(len(row), dtype=torch.float64)
        p[inf_hits] = 1.0 / len(inf_hits)
        return p
    m = max(row)
    z = [(v - m) / temperature if v > -math.inf else -math.inf for v in row]
    keep = [v > -math.inf for v in z]
    if 0 < top_k < len(row):
        kth = sorted(z, reverse=True)[top_k - 1]
        keep = [k and v >= kth for k, v in zip(keep, z)]
    e = [math.exp(v) if k else 0.0 for k, v in zip(keep, z)]
    if top_p < 1:
        total = sum(e)
        keep = [k and sum(ej for ej, zj in zip(e, z) if zj > zi) < top_p * total for k, zi in zip(keep, z)]
    if min_p > 0:
        keep = [k and ei >= min_p for k, ei in zip(keep, e)]
    w = torch.tensor([ei if k else 0.0 for k, ei in zip(keep, e)], dtype=torch.float64)
    return w / w.sum()


def chi_square_critical(df: int, z: float = 4.0) -> float:
    """Upper critical value of chi-square with ``df`` degrees of freedom (Wilson-Hilferty), ~3e-5 tail at z=4."""
    a = 2.0 / (9.0 * df)
    return df * (1 - a + z * math.sqrt(a)) ** 3


def assert_fits(counts: torch.Tensor, probs: torch.Tensor) -> None:
    """Chi-square goodness of fit of observed ``counts`` to ``probs``; zero-probability cells must be empty."""
    counts = counts.double().cpu()
    probs = probs.double().cpu()
    n = counts.sum()
    zero = probs == 0
    assert (counts[zero] == 0).all(), f"sampled zero-probability entries {(counts * zero).nonzero().tolist()}"
    expected = probs * n
    cells = expected > 0
    # pool cells with small expectation so the approximation holds
    small = cells & (expected < 5)
    obs = torch.cat([counts[cells & ~small], counts[small].sum().view(1)])
    exp = torch.cat([expected[cells & ~small], expected[small].sum().view(1)])
    obs, exp = obs[exp > 0], exp[exp > 0]
    df = max(int(exp.numel()) - 1, 1)
    stat = float(((obs - exp) ** 2 / exp).sum())
    assert stat < chi_square_critical(df), f"chi-square {stat:.1f} >= critical {chi_square_critical(df):.1f} (df {df})"

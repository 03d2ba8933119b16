"""MMD² between negatives and held-out data with a sum of Gaussian kernels (docs/evaluation.md)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


def median_distance(x: Tensor, max_points: int = 2000) -> float:
    """Median pairwise Euclidean distance of (at most ``max_points`` of) ``x``: the kernel scale."""
    x = x.flatten(1)[:max_points]
    d = torch.cdist(x, x)
    return float(d[torch.triu(torch.ones_like(d, dtype=torch.bool), diagonal=1)].median())


def mmd2(x: Tensor, y: Tensor, bandwidths: Sequence[float],
         x_weights: Tensor | None = None) -> float:
    """MMD² with ``k(a, b) = Σ_h exp(−|a − b|² / (2h²))`` over ``bandwidths``.

    Unweighted samples use the unbiased U-statistic (can be slightly negative); with
    ``x_weights`` (self-normalised weights of the negatives) the V-statistic is used for ``x``.
    """
    x, y = x.detach().flatten(1).float(), y.detach().flatten(1).float().to(x.device)

    def k(a: Tensor, b: Tensor) -> Tensor:
        d2 = torch.cdist(a, b).pow(2)
        return sum(torch.exp(-d2 / (2 * h * h)) for h in bandwidths)

    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    m, n = len(x), len(y)
    yy = (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
    if x_weights is None:
        xx = (kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
        xy = kxy.mean()
    else:
        w = x_weights.detach().to(x.device).float()
        xx = w @ kxx @ w
        xy = (w @ kxy).mean()
    return float(xx + yy - 2 * xy)

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

    Both within-sample terms are U-statistics (the estimate can be slightly negative). With
    ``x_weights`` (self-normalised weights ``w`` of the negatives, ``Σw = 1``) the negatives'
    term is the weighted U-statistic ``(wᵀKw − Σᵢwᵢ²kᵢᵢ) / (1 − Σᵢwᵢ²)``, which drops the
    diagonal exactly as the unweighted one does and equals it for uniform weights. (The
    V-statistic ``wᵀKw`` is biased upwards by about ``(k(x, x) − E k)/ESS``.) It is NaN when one
    particle carries all the weight (ESS = 1), where no U-statistic exists.
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
        w = x_weights.detach().to(x.device).double()
        w, kxx = w / w.sum(), kxx.double()
        sq = w.pow(2).sum()
        xx = (w @ kxx @ w - (w.pow(2) * kxx.diagonal()).sum()) / (1 - sq)
        xx = torch.where(sq < 1, xx, torch.full_like(xx, float("nan")))
        xy = (w @ kxy.double()).mean()
    return float(xx + yy - 2 * xy)

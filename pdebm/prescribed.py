"""Prescribed energy paths with exact samples and exact moments, for checking samplers.

Each path is a normalised 2D density ``p_t = exp(−E(x; t))`` (``log Z = 0`` at every ``t``) whose
only parameter is the time ``t`` (an ``nn.Parameter``, so :class:`~pdebm.energy.base.FrozenEnergy`
snapshots it like any network weight). ``advance(dt)`` moves it; ``sample_base(n)`` draws exact
samples at the current ``t``; ``moments()`` gives the exact ``E[x_j]`` and ``E[x_j²]`` in closed
form (``tests/test_consistency.py`` checks them against the grid's quadrature).

A sampler is driven along a path exactly as the trainer would drive it (``update(before,
after)`` after each move of ``t``); :func:`run_path` does that and returns the weighted estimates
with the sampler's own diagnostics. The families (``t`` from 0 to 1):

- ``gauss``: a diagonal Gaussian whose mean moves by (2, −1) while its scales go (1, 1) → (1.5, 0.6);
- ``mixture``: two fixed Gaussians (means (±1.5, 0), σ 0.5) whose weights go (0.5, 0.5) → (0.15, 0.85);
- ``banana``: ``x₁ ~ N(a, 1)``, ``x₂ | x₁ ~ N(b(x₁ − a)² + m, 0.5²)``: the curvature ``b`` grows
  0.25 → 1 while the centre moves (``a``: 0 → 1, ``m``: 0 → −1);
- ``banana_hard``: the same with ``σ₂ = 0.4`` and ``b``: 0.5 → 2, the issue's failing case: at the
  arms (``|x₁ − a| ≈ 3``) the ridge moves by more than its width at every one of 30 moves;
- ``spread``: ``E ∝ |x|⁴ / (4s⁴)``, a flat-topped density with light tails whose support spreads
  (``s``: 0.6 → 1.5), so the mass moves where no particle is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor, nn

from pdebm.energy.base import FrozenEnergy

LOG_2PI = math.log(2 * math.pi)


class PathEnergy(nn.Module):
    """A normalised 2D density along a path in ``t``; subclasses define ``forward``, ``sample_base``
    and ``moments`` for the current ``t``."""

    name = "path"

    def __init__(self, t0: float = 0.0) -> None:
        super().__init__()
        self.t = nn.Parameter(torch.tensor(float(t0), dtype=torch.float64))

    @property
    def device(self) -> torch.device:
        return self.t.device

    def advance(self, dt: float) -> None:
        with torch.no_grad():
            self.t.add_(dt)

    def frozen(self) -> FrozenEnergy:
        return FrozenEnergy(self)

    def base_log_prob(self, x: Tensor) -> Tensor:
        """The path's own log density (it is normalised): its draws are exact."""
        return -self.forward(x)

    def _t(self, x: Tensor) -> Tensor:
        return self.t.to(x.dtype)

    def moments(self) -> tuple[Tensor, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError


class GaussPath(PathEnergy):
    name = "gauss"

    def _params(self, t: Tensor) -> tuple[Tensor, Tensor]:
        mu = torch.stack([2 * t, -t])
        log_s = torch.stack([t * math.log(1.5), t * math.log(0.6)])
        return mu, log_s

    def forward(self, x: Tensor) -> Tensor:
        mu, log_s = self._params(self._t(x))
        z = (x - mu) * torch.exp(-log_s)
        return 0.5 * z.pow(2).sum(1) + log_s.sum() + LOG_2PI

    def sample_base(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        mu, log_s = self._params(self.t.detach().float())
        return mu + log_s.exp() * torch.randn(n, 2, generator=generator)

    def moments(self) -> tuple[Tensor, Tensor]:
        mu, log_s = self._params(self.t.detach())
        return mu, mu**2 + (2 * log_s).exp()


class MixturePath(PathEnergy):
    name = "mixture"
    means = ((1.5, 0.0), (-1.5, 0.0))
    scale = 0.5

    def _log_pi(self, t: Tensor) -> Tensor:
        p = 0.5 - 0.35 * t
        return torch.stack([p, 1 - p]).log()

    def forward(self, x: Tensor) -> Tensor:
        m = torch.tensor(self.means, dtype=x.dtype, device=x.device)
        s = self.scale
        log_comp = (-(x[:, None, :] - m).pow(2).sum(-1) / (2 * s * s) - 2 * math.log(s) - LOG_2PI
                    + self._log_pi(self._t(x)))
        return -torch.logsumexp(log_comp, 1)

    def sample_base(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        pi = self._log_pi(self.t.detach()).exp().float()
        k = torch.multinomial(pi, n, replacement=True, generator=generator)
        m = torch.tensor(self.means)
        return m[k] + self.scale * torch.randn(n, 2, generator=generator)

    def moments(self) -> tuple[Tensor, Tensor]:
        pi = self._log_pi(self.t.detach()).exp()[:, None]
        m = torch.tensor(self.means, dtype=torch.float64)
        return (pi * m).sum(0), (pi * (m**2 + self.scale**2)).sum(0)


class BananaPath(PathEnergy):
    name = "banana"
    s2, b0, b1 = 0.5, 0.25, 1.0

    def _params(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        # a (x₁ centre), b (curvature), m (x₂ offset)
        return t, self.b0 + (self.b1 - self.b0) * t, -t

    def forward(self, x: Tensor) -> Tensor:
        a, b, m = self._params(self._t(x))
        u = x[:, 0] - a
        r = (x[:, 1] - b * u * u - m) / self.s2
        return 0.5 * (u * u + r * r) + math.log(self.s2) + LOG_2PI

    def sample_base(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        a, b, m = (float(v) for v in self._params(self.t.detach()))
        u = torch.randn(n, generator=generator)
        x2 = b * u * u + m + self.s2 * torch.randn(n, generator=generator)
        return torch.stack([u + a, x2], 1)

    def moments(self) -> tuple[Tensor, Tensor]:
        a, b, m = self._params(self.t.detach())
        mean = torch.stack([a, b + m])                                  # E u² = 1
        # E x₂² = b² E u⁴ + 2bm E u² + m² + s₂² with E u⁴ = 3
        second = torch.stack([a * a + 1, 3 * b * b + 2 * b * m + m * m + self.s2**2])
        return mean, second


class HardBananaPath(BananaPath):
    name = "banana_hard"
    s2, b0, b1 = 0.4, 0.5, 2.0


class SpreadPath(PathEnergy):
    name = "spread"

    def _s(self, t: Tensor) -> Tensor:
        return 0.6 + 0.9 * t

    def forward(self, x: Tensor) -> Tensor:
        s = self._s(self._t(x))
        v = x.pow(2).sum(1)
        # Z = π^{3/2} s² (v = |x|², ∫ exp(−v²/4s⁴) π dv)
        return v * v / (4 * s**4) + 1.5 * math.log(math.pi) + 2 * torch.log(s)

    def sample_base(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        s = float(self._s(self.t.detach()))
        v = math.sqrt(2) * s * s * torch.randn(n, generator=generator).abs()   # |x|²
        angle = 2 * math.pi * torch.rand(n, generator=generator)
        r = v.sqrt()
        return torch.stack([r * angle.cos(), r * angle.sin()], 1)

    def moments(self) -> tuple[Tensor, Tensor]:
        s = self._s(self.t.detach())
        second = s * s / math.sqrt(math.pi)                                   # E|x|² = 2s²/√π
        return torch.zeros(2, dtype=torch.float64), torch.stack([second, second])


FAMILIES: dict[str, type[PathEnergy]] = {
    c.name: c for c in (GaussPath, MixturePath, BananaPath, HardBananaPath, SpreadPath)}


@dataclass
class PathResult:
    """The end of one run along a path: the weighted estimates of ``E[x_j]``, ``E[x_j²]``
    (``estimate``, shape (4,)), the exact values, the sampler's last stats (host floats) and the
    largest ``sampler/k_hat`` seen."""

    estimate: Tensor
    exact: Tensor
    ess: float
    log_mean_w: float
    stats: dict[str, float] = field(default_factory=dict)
    k_hat_max: float = float("nan")
    x: Tensor | None = None
    log_w: Tensor | None = None


def weighted_moments(x: Tensor, log_w: Tensor) -> Tensor:
    """``(E_w x₁, E_w x₂, E_w x₁², E_w x₂²)`` under the normalised weights."""
    w = torch.softmax(log_w.double(), 0)[:, None]
    x = x.double()
    return torch.cat([(w * x).sum(0), (w * x * x).sum(0)])


def run_path(family: str, make_sampler: Callable[[], Any], seed: int, n_moves: int = 30,
             keep: bool = False) -> PathResult:
    """Drive a fresh sampler from ``make_sampler()`` along ``family`` from ``t = 0`` to 1 in
    ``n_moves`` moves, the way the trainer drives it, and compare with the exact moments."""
    torch.manual_seed(seed)
    energy = FAMILIES[family]()
    sampler = make_sampler()
    sampler.negatives(energy)
    k_hat_max = float("-inf")
    for _ in range(n_moves):
        before = energy.frozen()
        energy.advance(1.0 / n_moves)
        sampler.update(before, energy)
        st = sampler.stats()
        if "k_hat" in st:
            k_hat_max = max(k_hat_max, float(st["k_hat"]))
    x, log_w = sampler.negatives(energy)
    x, log_w = x.detach(), log_w.detach()
    mean, second = energy.moments()
    stats = {k: float(v) for k, v in sampler.stats().items()}
    from pdebm.samplers.weights import effective_sample_size, logmeanexp
    return PathResult(weighted_moments(x, log_w), torch.cat([mean, second]).double(),
                      float(effective_sample_size(log_w)) / x.shape[0], float(logmeanexp(log_w)),
                      stats, k_hat_max if k_hat_max > float("-inf") else float("nan"),
                      x if keep else None, log_w if keep else None)


@dataclass
class Summary:
    """Over seeds: the mean estimate / exact per moment, the z-score of the mean over its
    standard error across seeds, and the mean diagnostics."""

    ratio: Tensor
    z: Tensor
    ess: float
    stats: dict[str, float]
    k_hat_max: float

    @property
    def worst_z(self) -> float:
        return float(self.z.abs().max())


def summarise(results: list[PathResult]) -> Summary:
    est = torch.stack([r.estimate for r in results])
    exact = results[0].exact
    se = est.std(0) / math.sqrt(len(results))
    z = (est.mean(0) - exact) / se.clamp_min(1e-12)
    keys = set.intersection(*(set(r.stats) for r in results))
    stats = {k: sum(r.stats[k] for r in results) / len(results) for k in sorted(keys)}
    return Summary(est.mean(0) / exact.where(exact.abs() > 1e-9, torch.ones_like(exact)), z,
                   sum(r.ess for r in results) / len(results), stats,
                   max(r.k_hat_max for r in results))

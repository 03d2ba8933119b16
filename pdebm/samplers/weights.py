"""Importance-weight arithmetic for weighted particles (docs/method.md, "Importance weights"),
written once and tested.

- effective sample size ``ESS = (Σw)² / Σw²`` and systematic resampling;
- ``log |det ∇T|`` of the transport ``T(x) = x − ∇φ(x)`` with ``φ = c·δE + bᵀx + a|x − x̄|²``,
  whose Jacobian is ``(1 − 2a)I − c∇²δE``: exactly from the per-particle Hessian in low dimension
  (:class:`ExactCurvature`), or from Hutchinson probes in high dimension
  (:class:`HutchinsonCurvature`, biased through Jensen's inequality: see there);
- the Jacobian guard that keeps the eigenvalues of ``∇T`` in ``[lo, hi]``.

Hessians are taken of a batched gradient ``g = ∇ₓδE(x)`` built with ``create_graph=True``; the
energies treat particles independently, so differentiating ``Σ_i g_i[j]`` with respect to the
batch gives row ``j`` of every particle's Hessian in one backward pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Union

import torch
from torch import Tensor


def effective_sample_size(log_w: Tensor) -> Tensor:
    """Effective sample size ``(Σw)² / Σw²`` of unnormalised log-weights (between 1 and N), as a
    float64 device scalar."""
    log_w = log_w.double()
    return torch.exp(2 * torch.logsumexp(log_w, 0) - torch.logsumexp(2 * log_w, 0))


def ess(log_w: Tensor) -> float:
    """:func:`effective_sample_size` as a Python float."""
    return float(effective_sample_size(log_w))


def logmeanexp(log_w: Tensor) -> Tensor:
    """``log mean exp(ℓ)``: the common log-weight after resampling, which keeps the weights'
    absolute scale (an estimate of the normalising constant)."""
    return torch.logsumexp(log_w, 0) - math.log(log_w.shape[0])


def systematic_resample(log_w: Tensor) -> Tensor:
    """Indices of a systematic resample of size N: one uniform ``U``, points ``(U + j)/N``.

    Particle ``i`` is copied ``⌊N w̄_i⌋`` or ``⌈N w̄_i⌉`` times, so weighted expectations are
    preserved without bias and with less noise than multinomial resampling.
    """
    n = log_w.shape[0]
    cdf = torch.softmax(log_w.double(), 0).cumsum(0)
    u = (torch.rand((), device=log_w.device, dtype=torch.float64)
         + torch.arange(n, device=log_w.device, dtype=torch.float64)) / n
    return torch.searchsorted(cdf, u).clamp_(max=n - 1)


def distinct_fraction(x: Tensor) -> Tensor:
    """The fraction of particles that are not exact copies of another (a random projection of
    each particle, sorted; copies project to the same value). A device scalar, no host sync."""
    flat = x.detach().flatten(1).double()
    gen = torch.Generator(device="cpu").manual_seed(12345)
    proj = flat @ torch.randn(flat.shape[1], 1, generator=gen, dtype=torch.float64).to(flat.device)
    v = proj[:, 0].sort().values
    distinct = 1 + (v[1:] != v[:-1]).sum()
    return distinct.double() / x.shape[0]


def symmetric_eigvals(h: Tensor) -> Tensor:
    """Ascending eigenvalues of symmetric ``(N, d, d)`` matrices. ``d ≤ 2`` in closed form
    (``m ∓ sqrt(((a − c)/2)² + b²)``, ``m = (a + c)/2``): ``torch.linalg.eigvalsh`` checks its
    solver's status on the host, a device sync per call on a GPU; above 2 dimensions it is
    used, sync included."""
    d = h.shape[-1]
    if d == 1:
        return h[..., 0, :]
    if d == 2:
        a, b, c = h[..., 0, 0], h[..., 0, 1], h[..., 1, 1]
        m, r = 0.5 * (a + c), torch.hypot(0.5 * (a - c), b)
        return torch.stack([m - r, m + r], -1)
    return torch.linalg.eigvalsh(h)


def _grad_or_zeros(output: Tensor, x: Tensor) -> Tensor:
    """``∂ output / ∂x`` keeping the graph; zeros where ``output`` does not depend on ``x``."""
    if not output.requires_grad:
        return torch.zeros_like(x)
    (g,) = torch.autograd.grad(output, x, retain_graph=True, allow_unused=True)
    return torch.zeros_like(x) if g is None else g


def hessian(grad: Tensor, x: Tensor) -> Tensor:
    """Per-particle Hessians ``(N, d, d)`` from a batched gradient ``grad = ∇ₓf(x)`` that was
    built with ``create_graph=True``: ``d`` backward passes."""
    flat = grad.flatten(1)
    rows = [_grad_or_zeros(flat[:, j].sum(), x).flatten(1) for j in range(flat.shape[1])]
    return torch.stack(rows, 1)


@dataclass
class ExactCurvature:
    """The eigenvalues ``λ`` of each particle's Hessian ``∇²δE``, shape ``(N, d)``.

    The transport of a potential ``φ = c·δE + bᵀx + a|x − x̄|²`` has
    ``∇T = (1 − 2a)I − c∇²δE``, so ``log det ∇T = Σ log(1 − 2a − cλ)``.
    """

    eigenvalues: Tensor

    @classmethod
    def of(cls, grad: Tensor, x: Tensor) -> "ExactCurvature":
        h = hessian(grad, x).double()
        return cls(symmetric_eigvals(0.5 * (h + h.mT)))

    def bounds(self) -> tuple[Tensor, Tensor]:
        """Per-particle smallest and largest eigenvalue of ``∇²δE``."""
        return self.eigenvalues[:, 0], self.eigenvalues[:, -1]

    def logdet(self, c: Tensor | float, a: Tensor | float = 0.0) -> Tensor:
        """``log|det((1 − 2a)I − c∇²δE)|`` per particle (the guard keeps the argument > 0)."""
        return torch.log((1 - 2 * a - c * self.eigenvalues).abs()).sum(1)


@dataclass
class HutchinsonCurvature:
    """Rademacher probes ``z`` of each particle's Hessian ``H = ∇²δE``: ``zᵀHz`` and
    ``|Hz|²``, shape ``(N, P)``, and a power-iteration estimate ``ρ`` of the spectral radius.

    ``zᵀHz`` and ``|Hz|²`` are unbiased estimates of ``tr H`` and ``tr H² = ‖H‖_F²``, which give
    ``log det(sI − cH) = d log s − (c/s) tr H − ½(c/s)² tr H² − O((c/s)³)`` to second order
    (both terms from the same Hessian-vector products).

    **Bias of the weights.** The log-determinant estimate is unbiased for these two series
    terms, but the weights use ``exp`` of it: by Jensen, ``E[exp(ℓ̂)] ≥ exp(E ℓ̂)`` (about
    ``exp(½ Var ℓ̂)`` for Gaussian noise), so particles whose probe happened to be large gain
    weight they should not have, and the series truncation adds an ``O(c³‖H‖³)`` error. Both
    shrink with more probes and smaller steps; neither is corrected. The weighted estimates are
    therefore consistent only as ``n_probes → ∞``; the exact Hessian (low dimension) has no
    such bias.

    **The guard's bound.** One probe's ``|Hz|`` is not a bound on ``|λ|_max`` (it estimates
    ``‖H‖_F`` with a large variance). ``ρ`` comes from ``power_iters`` power iterations
    ``v ← Hv/|Hv|`` started at the first probe: ``|Hv|`` for a unit ``v`` is a lower bound of
    the spectral radius that converges to it geometrically (at the ratio of the two largest
    ``|λ|``). The guard uses ``[−ρ, ρ]`` for the eigenvalues of ``H``.
    """

    quad: Tensor
    sq_norm: Tensor
    radius: Tensor | None = None
    dim: int = 0

    @classmethod
    def of(cls, grad: Tensor, x: Tensor, n_probes: int,
           power_iters: int = 0) -> "HutchinsonCurvature":
        quad, sq_norm, first = [], [], None
        for _ in range(n_probes):
            z = torch.randint(0, 2, x.shape, device=x.device).to(x.dtype) * 2 - 1
            hz = _grad_or_zeros((grad * z).sum(), x)
            quad.append((z * hz).flatten(1).sum(1))
            sq_norm.append(hz.pow(2).flatten(1).sum(1))
            first = (z, hz) if first is None else first
        radius = None
        if power_iters > 0:
            z, hv = first
            shape = (-1, *([1] * (x.dim() - 1)))
            # |Hz|/|z| is the first iterate's estimate; continue from v = Hz/|Hz|
            radius = hv.flatten(1).norm(dim=1) / z.flatten(1).norm(dim=1)
            for _ in range(power_iters):
                norm = hv.flatten(1).norm(dim=1)
                v = hv / norm.clamp_min(1e-30).view(shape)
                hv = _grad_or_zeros((grad * v).sum(), x)
                radius = torch.where(norm > 0, hv.flatten(1).norm(dim=1), torch.zeros_like(norm))
            radius = radius.detach().double()
        return cls(torch.stack(quad, 1).double(), torch.stack(sq_norm, 1).double(), radius,
                   x[0].numel())

    def bounds(self) -> tuple[Tensor, Tensor]:
        """``[−ρ, ρ]`` per particle (``ρ = ‖H‖_F`` estimate when no power iteration was run)."""
        rho = self.radius if self.radius is not None else self.sq_norm.mean(1).sqrt()
        return -rho, rho

    def logdet(self, c: Tensor | float, a: Tensor | float = 0.0) -> Tensor:
        """Second-order estimate of ``log det((1 − 2a)I − cH)`` per particle."""
        s = 1 - 2 * a
        k = c / s
        log_s = torch.log(torch.as_tensor(s, dtype=torch.float64).abs())
        return self.dim * log_s - k * self.quad.mean(1) - 0.5 * k**2 * self.sq_norm.mean(1)


Curvature = Union[ExactCurvature, HutchinsonCurvature]


def jacobian_guard(hess_low: Tensor, hess_high: Tensor, bounds: tuple[float, float]) -> Tensor:
    """The largest factor ``α ∈ [0, 1]`` such that every eigenvalue of ``I − α∇²φ`` lies in
    ``[lo, hi]`` at every particle, given per-particle bounds ``[hess_low, hess_high]`` on the
    eigenvalues of ``∇²φ``. A device scalar (no host synchronisation)."""
    lo, hi = bounds
    top, bottom = hess_high.max(), hess_low.min()
    tiny = torch.finfo(top.dtype).tiny
    one = torch.ones((), dtype=top.dtype, device=top.device)
    shrink = torch.where(top > 0, (1 - lo) / top.clamp_min(tiny), one)      # 1 − α·top ≥ lo
    stretch = torch.where(bottom < 0, (hi - 1) / (-bottom).clamp_min(tiny), one)  # 1 − α·bottom ≤ hi
    return torch.clamp(torch.minimum(shrink, stretch), max=1.0)


PARETO_K_WARN = 0.7
"""Pareto ``k̂`` above which importance weights are unreliable (Vehtari et al., PSIS): the
weights' tail is too heavy for the self-normalised estimate to converge at a usable rate."""


FLAT_TAIL_LOG_RATIO = math.log(1.5)
"""A tail whose largest weight is within this log-ratio of the threshold weight is reported as
flat (``k̂ = −1``): the fit is scale-free and would read a narrow bounded tail (say, two
mixture components weighted 1 : 1.05) as a heavy one, but such a tail cannot dominate."""
PARETO_K_MAX = 5.0
"""``pareto_k_hat`` is clipped here (a tail of exact copies of a few particles fits no GPD)."""


def pareto_k_hat(log_w: Tensor, tail: int | None = None) -> Tensor:
    """The shape ``k̂`` of a generalized Pareto fit to the largest weights (PSIS's diagnostic).

    The tail is the ``M = min(N/5, 3√N)`` largest weights; their excesses over the next largest
    weight are fitted by Zhang & Stephens' (2009) empirical-Bayes estimator with PSIS's weakly
    informative prior (``k̂ ← (M k̂ + 5)/(M + 10)``). ``k̂ < 0.5``: finite variance; ``0.5–0.7``:
    finite mean, slow convergence; ``> 0.7``: the weighted estimates cannot be trusted (ESS
    cannot see this: it is computed from the same few weights). Shapes are fixed by ``N``
    alone, so this is a device scalar (no host synchronisation); NaN when ``N < 25``, −1 when
    the tail is flat (its largest weight within 1.5 × the threshold weight, e.g. all equal right
    after a resampling; :data:`FLAT_TAIL_LOG_RATIO`), at most
    :data:`PARETO_K_MAX`.
    """
    n = log_w.shape[0]
    m = int(min(0.2 * n, 3 * math.sqrt(n))) if tail is None else min(int(tail), n - 1)
    if m < 5:
        return torch.full((), float("nan"), dtype=torch.float64, device=log_w.device)
    top = torch.topk(log_w.double(), m + 1).values.flip(0)            # ascending, m + 1 values
    w = torch.exp(top - top[-1])                                        # scaled, max 1
    x = (w[1:] - w[0]).clamp_min(0)                                     # excesses, ascending
    x = x + 1e-300                                                      # keep log1p(−b x) finite
    m_est = 30 + int(math.sqrt(m))
    j = torch.arange(1, m_est + 1, dtype=torch.float64, device=log_w.device)
    b = 1 - torch.sqrt(m_est / (j - 0.5))
    quartile = torch.maximum(x[int(m / 4 + 0.5) - 1], 1e-6 * x[-1])  # ties (copies) give 0
    b = b / (3 * quartile) + 1 / x[-1]
    k = torch.log1p(-b[:, None] * x[None, :]).mean(1)                  # (m_est,)
    profile = m * (torch.log(-b / k) - k - 1)
    weights = torch.softmax(profile, 0)
    b_post = (b * weights).sum()
    k_post = torch.log1p(-b_post * x).mean()
    k_hat = (m * k_post + 10 * 0.5) / (m + 10)
    flat = (top[-1] - top[0]) < FLAT_TAIL_LOG_RATIO
    return torch.where(flat | ~torch.isfinite(k_hat), torch.full_like(k_hat, -1.0),
                       k_hat.clamp(-1.0, PARETO_K_MAX))

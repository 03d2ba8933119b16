"""Importance-weight arithmetic for weighted particles (docs/method.md, "Importance weights"),
written once and tested.

- effective sample size ``ESS = (Σw)² / Σw²`` and systematic resampling;
- ``log |det ∇T|`` of the transport ``T(x) = x − c∇ₓδE(x)``, whose Jacobian is
  ``I − c∇²δE``: exactly from the per-particle Hessian in low dimension
  (:class:`ExactCurvature`), or from Hutchinson probes in high dimension
  (:class:`HutchinsonCurvature`).

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


def ess(log_w: Tensor) -> float:
    """Effective sample size ``(Σw)² / Σw²`` of unnormalised log-weights (between 1 and N)."""
    log_w = log_w.double()
    return float(torch.exp(2 * torch.logsumexp(log_w, 0) - torch.logsumexp(2 * log_w, 0)))


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

    ``log det(I − c∇²δE) = Σ log(1 − cλ)``; the transport is a local diffeomorphism while
    ``c · max λ < 1``, so :meth:`bound` is the largest eigenvalue.
    """

    eigenvalues: Tensor

    @classmethod
    def of(cls, grad: Tensor, x: Tensor) -> "ExactCurvature":
        h = hessian(grad, x).double()
        return cls(torch.linalg.eigvalsh(0.5 * (h + h.mT)))

    def bound(self) -> Tensor:
        return self.eigenvalues[:, -1]

    def logdet(self, c: float) -> Tensor:
        return torch.log1p(-c * self.eigenvalues).sum(1)


@dataclass
class HutchinsonCurvature:
    """Rademacher probes ``z`` of each particle's Hessian ``H = ∇²δE``: ``zᵀHz`` and
    ``|Hz|²``, shape ``(N, P)``.

    They are unbiased estimates of ``tr H`` and ``tr H² = ‖H‖_F²``, which give the series
    ``log det(I − cH) = −c tr H − (c²/2) tr H² − O(c³)`` to second order (both terms from the
    same Hessian-vector products). ``‖H‖_F`` bounds every eigenvalue and controls the neglected
    terms, so it is the :meth:`bound` used to keep ``c‖H‖ < 1``.
    """

    quad: Tensor
    sq_norm: Tensor

    @classmethod
    def of(cls, grad: Tensor, x: Tensor, n_probes: int) -> "HutchinsonCurvature":
        quad, sq_norm = [], []
        for _ in range(n_probes):
            z = torch.randint(0, 2, x.shape, device=x.device).to(x.dtype) * 2 - 1
            hz = _grad_or_zeros((grad * z).sum(), x)
            quad.append((z * hz).flatten(1).sum(1))
            sq_norm.append(hz.pow(2).flatten(1).sum(1))
        return cls(torch.stack(quad, 1).double(), torch.stack(sq_norm, 1).double())

    def bound(self) -> Tensor:
        return self.sq_norm.mean(1).sqrt()

    def logdet(self, c: float) -> Tensor:
        return -c * self.quad.mean(1) - 0.5 * c**2 * self.sq_norm.mean(1)


Curvature = Union[ExactCurvature, HutchinsonCurvature]


def safe_coefficient(bound: Tensor, floor: float) -> float:
    """The largest ``c`` with ``1 − c·bound_i ≥ floor`` at every particle (``inf`` when no
    particle's curvature limits it): every eigenvalue of ``∇T = I − c∇²δE`` stays ≥ ``floor``."""
    top = float(bound.max())
    return (1.0 - floor) / top if top > 0 else math.inf

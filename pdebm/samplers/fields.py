"""Transport fields (docs/method.md, "Transport"): the potential ``φ`` whose gradient moves the particles.

After a model step the particles follow ``x ← T(x) = x − ∇φ(x)``. Every field fits ``φ`` to the
particles by minimising the variational functional

    ``J[φ] = E_w[½|∇φ|² − g φ]``,   ``g = δE − E_w[δE]``,

over a family of potentials (``E_w``: expectation under the particles' normalised weights
``w̄``). Its minimiser over all functions solves the linearised continuity equation that carries
the particles' distribution from ``exp(−E_θk)`` to ``exp(−E_θk+1)``; over a finite family it is a
weighted least-squares fit, one small linear solve.

- ``gradient``: ``φ = δE`` (``c = 1``), the authors' released code; no fit.
- ``optimal``: ``φ = c·δE`` with ``c* = Var_w(δE) / E_w|∇ₓδE|²``, the minimiser of ``J`` over
  ``c``. One scalar cannot follow a location and a scale change at once: on a Gaussian path
  whose mean and σ both move it over- or under-shoots one of them at every step.
- ``basis``: ``φ = c₁·δE + c₂·x₁ + … + c_{d+1}·x_d + c_{d+2}·|x − x̄|²`` (``x̄ = E_w[x]``): the
  minimiser of ``J`` over these ``d + 2`` coefficients, a ``(d+2)×(d+2)`` solve in float64
  (Jacobi-scaled, with a relative ridge :data:`BASIS_RIDGE`, so collinear features, e.g. a
  Gaussian path whose ``δE`` is itself linear + quadratic, are harmless). The linear and
  quadratic terms represent a Gaussian's location and scale moves exactly; ``δE`` carries
  the rest. Above :data:`BASIS_LINEAR_MAX_DIM` dimensions (images) the ``d`` linear terms are
  dropped (``φ = c₁·δE + c₂·|x − x̄|²``): with a few hundred particles their ``d`` fitted
  coefficients would be mostly sampling noise, a random translation of every particle.
- ``none``: no transport (persistent Langevin).

Every fitted potential is clipped so that the root-mean-square displacement
``sqrt(E_w|∇φ|²)`` is at most ``max_displacement`` (``gradient`` is never clipped: it is the
authors' rule). The sampler further shrinks ``φ`` to keep the eigenvalues of
``∇T = I − ∇²φ`` inside ``jacobian_bounds`` (:mod:`pdebm.samplers.particle`).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

import torch
from torch import Tensor

from pdebm.errors import one_of, positive

BASIS_LINEAR_MAX_DIM = 10
"""``field: basis`` includes the ``d`` linear terms ``x_j`` up to this data dimension."""
BASIS_RIDGE = 1e-6
"""Ridge added to the Jacobi-scaled normal matrix of the basis fit (relative to its unit diagonal)."""


@dataclass
class Potential:
    """``φ(x) = c·δE(x) + bᵀx + a·|x − x̄|²``; all coefficients are float64 tensors.

    ``∇φ = c∇ₓδE + b + 2a(x − x̄)`` and ``∇²φ = c∇²δE + 2aI``, so the transport's Jacobian is
    ``∇T = (1 − 2a)I − c∇²δE``. ``b`` and ``center`` are ``None`` for potentials without the
    linear or quadratic part.
    """

    c: Tensor
    a: Tensor
    b: Tensor | None = None
    center: Tensor | None = None

    def grad(self, x: Tensor, grad_delta_e: Tensor) -> Tensor:
        """``∇φ`` at the particles ``x`` given ``∇ₓδE`` there (same shape as ``x``)."""
        out = self.c.to(x.dtype) * grad_delta_e
        if self.b is not None:
            out = out + self.b.to(x.dtype).reshape(x.shape[1:])
        if self.center is not None:
            out = out + 2 * self.a.to(x.dtype) * (x - self.center.to(x.dtype).reshape(x.shape[1:]))
        return out

    def scaled(self, s: Tensor | float) -> "Potential":
        """``s·φ`` (same centre)."""
        return Potential(self.c * s, self.a * s, None if self.b is None else self.b * s,
                         self.center)

    def hessian_range(self, low: Tensor, high: Tensor) -> tuple[Tensor, Tensor]:
        """Per-particle bounds on the eigenvalues of ``∇²φ`` from bounds ``[low, high]`` on
        those of ``∇²δE``."""
        lo, hi = self.c * low, self.c * high
        return torch.minimum(lo, hi) + 2 * self.a, torch.maximum(lo, hi) + 2 * self.a


class TransportField(abc.ABC):
    """Fits the potential ``φ`` of the transport from the particles."""

    @abc.abstractmethod
    def potential(self, delta_e: Tensor, grad_delta_e: Tensor, x: Tensor,
                  w_bar: Tensor) -> Potential:
        """``φ`` given ``δE`` (N,), ``∇ₓδE`` (N, *shape), the particles ``x`` (N, *shape) and
        their normalised weights ``w̄`` (N,)."""


def _zero(ref: Tensor) -> Tensor:
    return torch.zeros((), dtype=torch.float64, device=ref.device)


class GradientField(TransportField):
    """``c = 1``: the choice in the authors' released code."""

    def potential(self, delta_e: Tensor, grad_delta_e: Tensor, x: Tensor,
                  w_bar: Tensor) -> Potential:
        return Potential(_zero(delta_e) + 1.0, _zero(delta_e))


class OptimalField(TransportField):
    """``c* = Var_w(δE) / E_w[|∇ₓδE|²]``, the minimiser of ``J[c·δE]`` (exact for a Gaussian
    location family or a Gaussian scale family, not for both moving at once), clipped so that
    the root-mean-square displacement ``c·sqrt(E_w|∇ₓδE|²)`` is at most ``max_displacement``."""

    def __init__(self, max_displacement: float) -> None:
        self.max_displacement = max_displacement

    def potential(self, delta_e: Tensor, grad_delta_e: Tensor, x: Tensor,
                  w_bar: Tensor) -> Potential:
        w, d = w_bar.detach().double(), delta_e.detach().double()
        var = (w * (d - (w * d).sum()).pow(2)).sum()
        sq = (w * grad_delta_e.detach().double().pow(2).flatten(1).sum(1)).sum()
        tiny = torch.finfo(torch.float64).tiny
        c = torch.minimum(var / sq.clamp_min(tiny), self.max_displacement / sq.sqrt().clamp_min(tiny))
        return Potential(torch.where(sq > 0, c, torch.zeros_like(c)), _zero(delta_e))


class BasisField(TransportField):
    """The minimiser of ``J`` over ``φ = c₁δE + Σ_j b_j x_j + a|x − x̄|²`` (module docstring).

    With features ``ψ_k`` the normal equations are ``A c = r``, ``A_kl = E_w[∇ψ_k·∇ψ_l]``,
    ``r_k = E_w[g ψ_k]``; they are solved after Jacobi scaling with a small ridge, then the
    whole potential is clipped to a root-mean-square displacement of ``max_displacement``.
    """

    def __init__(self, max_displacement: float, linear_max_dim: int = BASIS_LINEAR_MAX_DIM,
                 ridge: float = BASIS_RIDGE) -> None:
        self.max_displacement, self.linear_max_dim, self.ridge = max_displacement, linear_max_dim, ridge

    def potential(self, delta_e: Tensor, grad_delta_e: Tensor, x: Tensor,
                  w_bar: Tensor) -> Potential:
        w = w_bar.detach().double()
        w = w / w.sum()
        d = delta_e.detach().double()
        gd = grad_delta_e.detach().double().flatten(1)              # ∇δE, (N, D)
        xf = x.detach().double().flatten(1)
        center = w @ xf                                              # x̄ = E_w[x]
        r = xf - center
        g = d - (w * d).sum()
        q = r.pow(2).sum(1)                                          # |x − x̄|²
        linear = xf.shape[1] <= self.linear_max_dim
        # gradients of the features: ∇δE, e_j (linear), 2(x − x̄)
        a00 = (w * gd.pow(2).sum(1)).sum()
        a0q = 2 * (w * (gd * r).sum(1)).sum()
        aqq = 4 * (w * q).sum()
        if linear:
            a0l = w @ gd                                             # (D,)
            alq = 2 * (w @ r)                                        # (D,) ≈ 0
            eye = torch.eye(xf.shape[1], dtype=torch.float64, device=xf.device)
            top = torch.cat([a00[None], a0l, a0q[None]])
            mid = torch.cat([a0l[:, None], eye, alq[:, None]], 1)
            bot = torch.cat([a0q[None], alq, aqq[None]])
            A = torch.cat([top[None], mid, bot[None]], 0)
            rhs = torch.cat([(w * g * d).sum()[None], (w * g) @ xf, (w * g * q).sum()[None]])
        else:
            A = torch.stack([torch.stack([a00, a0q]), torch.stack([a0q, aqq])])
            rhs = torch.stack([(w * g * d).sum(), (w * g * q).sum()])
        tiny = torch.finfo(torch.float64).tiny
        scale = A.diagonal().clamp_min(tiny).rsqrt()
        eye_k = torch.eye(A.shape[0], dtype=torch.float64, device=A.device)
        # solve_ex without the status check: linalg.solve reads it on the host (a GPU sync); the
        # ridge keeps the Jacobi-scaled matrix positive definite, so the solve cannot fail
        y, _ = torch.linalg.solve_ex(scale[:, None] * A * scale[None, :] + self.ridge * eye_k,
                                     scale * rhs, check_errors=False)
        coef = scale * y
        # features whose gradient vanishes everywhere (e.g. ∇δE ≡ 0) get no coefficient
        coef = torch.where(A.diagonal() > 0, coef, torch.zeros_like(coef))
        rms = (coef @ A @ coef).clamp_min(0).sqrt()                 # sqrt(E_w|∇φ|²)
        shrink = torch.clamp(self.max_displacement / rms.clamp_min(tiny), max=1.0)
        coef = coef * shrink
        if linear:
            return Potential(coef[0], coef[-1], coef[1:-1], center)
        return Potential(coef[0], coef[1], None, center)


FIELDS = ("gradient", "optimal", "basis", "none")


def make_field(name: str, max_displacement: float) -> TransportField | None:
    """The field called ``name`` (``None`` for ``none``: no transport)."""
    one_of("sampler.field", name, FIELDS)
    positive("sampler.max_displacement", max_displacement)
    if name == "gradient":
        return GradientField()
    if name == "optimal":
        return OptimalField(max_displacement)
    if name == "basis":
        return BasisField(max_displacement)
    return None

"""The Langevin kernel shared by every sampler: unadjusted (ULA) and Metropolis-adjusted (MALA).

One step moves ``x' = x − (ε/2)·∇E(x) + σ·ξ`` with ``ξ ~ N(0, I)``. With ``σ = √ε`` (the
default) this is the Euler discretisation of Langevin dynamics targeting ``exp(−E)``; EBM papers
often decouple ``σ`` from ``ε`` ("noise scale"), which is allowed for ULA only. MALA accepts
``x'`` with probability ``min(1, exp(−E(x') + E(x)) q(x|x') / q(x'|x))`` and leaves ``exp(−E)``
exactly invariant.

Weighted particles (docs/method.md, "Importance weights"): MALA keeps importance weights valid as they are; after a ULA
move the weight must gain ``−E(x') + E(x) + log q(x|x') − log q(x'|x)``, which this kernel adds
when ``log_weights`` is given.

**Curvature-scaled step** (``LangevinConfig.curvature = κ``, set by a sampler's
``curvature_step``; off by default): a Metropolis-adjusted move whose step is scaled by the local
curvature, per particle and per direction,

    ``x' = x − ½M(x)∇E(x) + M(x)^{1/2}ξ``,   ``M = V diag(ε_j) Vᵀ``,   ``ε_j = min(max_step, κ/|λ_j|)``

over the eigenpairs ``(λ_j, v_j)`` of the exact Hessian ``∇²E(x)`` (low dimension only). Stiff
directions get small steps, flat ones large steps (up to ``max_step``). ``M`` is a deterministic
function of the point a move starts from, so the reverse proposal (with ``M(x')``) is a known
density and the Metropolis–Hastings ratio, normalisers ``det M^{−1/2}`` included, makes the move
exact: ``exp(−E)`` is invariant and importance weights stay as they are. Always MH-adjusted:
the same step without the adjustment targets the wrong density (it lacks the divergence term
of a position-dependent diffusion) and was worse on the curved prescribed paths
(docs/method.md). Cost: the Hessian (``d`` double-backward passes) at every proposal.
"""

from __future__ import annotations

import contextlib
import math
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value

from pdebm.energy.base import Energy, FrozenEnergy
from pdebm.errors import check, positive
from pdebm.samplers.weights import hessian


def energy_and_grad(energy: Energy, x: Tensor) -> tuple[Tensor, Tensor]:
    """``(E(x), ∇ₓE(x))`` for a batch, with one forward and one backward pass.

    ``x`` is detached first, so no graph is kept to the energy's parameters' users; parameter
    gradients are not accumulated (``autograd.grad`` only asks for ``∂/∂x``).
    """
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        e = energy(x)
        (g,) = torch.autograd.grad(e.sum(), x)
    return e.detach(), g.detach()


@contextlib.contextmanager
def frozen_parameters(energy: Any) -> Iterator[None]:
    """Parameters of ``energy`` (if it is a module) with ``requires_grad`` off for the block,
    restored after: the sampling passes then record no autograd nodes for the parameters
    (``∇ₓE`` is the same; only the bookkeeping of ``∂/∂θ`` is skipped)."""
    params = [p for p in energy.parameters() if p.requires_grad] if isinstance(energy, nn.Module) else []
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


GradFn = Callable[[Energy, Tensor], tuple[Tensor, Tensor]]
_COMPILED: "weakref.WeakKeyDictionary[nn.Module, Callable]" = weakref.WeakKeyDictionary()


def compiled_energy_and_grad(energy: Energy) -> GradFn | None:
    """A drop-in for :func:`energy_and_grad` that runs ``torch.compile`` of
    ``torch.func.grad_and_value`` over ``functional_call(module, θ, x)``: the forward pass and
    ``∇ₓ`` in one compiled graph (fused kernels, fewer launches), with the parameters ``θ``
    passed in as inputs, so an optimizer step needs no recompilation. ``None`` for an energy
    that is not a module (a closure such as AIS's tempered energy): the caller runs eagerly.

    One compiled function per module (cached weakly); a :class:`FrozenEnergy` shares its live
    module's function and passes its snapshot as ``θ``. Compilation happens on the first call
    and again for each new batch shape (``dynamic=False``)."""
    if isinstance(energy, FrozenEnergy):
        module = energy.model
    elif isinstance(energy, nn.Module):
        module = energy
    else:
        return None
    compiled = _COMPILED.get(module)
    if compiled is None:
        def total(params: dict[str, Tensor], x: Tensor) -> tuple[Tensor, Tensor]:
            e = functional_call(module, params, (x,))
            return e.sum(), e
        compiled = torch.compile(grad_and_value(total, argnums=1, has_aux=True), dynamic=False)
        _COMPILED[module] = compiled

    def run(energy: Energy, x: Tensor) -> tuple[Tensor, Tensor]:
        if isinstance(energy, FrozenEnergy):
            params = {**energy.params, **energy.buffers_}
        else:
            params = {k: v.detach() for k, v in
                      [*module.named_parameters(), *module.named_buffers()]}
        g, (_, e) = compiled(params, x.detach())
        return e.detach(), g.detach()
    return run


KERNEL_KEYS = ("step_size", "noise_scale", "mala", "grad_clip", "compile")
"""The kernel settings shared by every sampler: the ``langevin:`` node of ``conf/train.yaml``,
which each sampler's YAML hands over as ``kernel: ${langevin}`` (``n_steps`` stays per sampler)."""


@dataclass
class LangevinConfig:
    """Settings of the kernel (``n_steps`` per sampler, the rest from the ``langevin:`` node).

    Attributes:
        n_steps: number of Langevin steps ``K``.
        step_size: ``ε``; the drift is ``−(ε/2)∇E``. A 0-d tensor is accepted too (AIS keeps
            its adapted step size on the device, so that adapting it costs no host sync).
        noise_scale: standard deviation ``σ`` of the injected noise; ``None`` means ``√ε``.
        mala: Metropolis-adjust every step (exact; requires ``σ = √ε``).
        grad_clip: clip each sample's gradient to this Euclidean norm (``None``: no clip).
        compile: evaluate ``(E, ∇ₓE)`` with a ``torch.compile``-d functional pass
            (:func:`compiled_energy_and_grad`) instead of eager autograd; same random draws,
            same results within floating-point tolerance. Applies to energies that are
            :class:`~torch.nn.Module` s; anything else runs eagerly.
    """

    n_steps: int = 10
    step_size: float = 1e-2
    noise_scale: float | None = None
    mala: bool = False
    grad_clip: float | None = None
    compile: bool = False
    curvature: float | None = None
    """``κ`` of the curvature-scaled step (module docstring; not a ``langevin:`` key: samplers set
    it, ``sampler.curvature_step``); ``None``: every particle moves with ``ε``."""
    max_step: float = 200.0
    """The curvature-scaled step's largest ``ε_j`` (flat or nearly flat directions)."""

    @classmethod
    def from_settings(cls, n_steps: int, kernel: Mapping[str, Any] | None,
                      allow_zero_steps: bool = True) -> "LangevinConfig":
        """The kernel of a sampler: its ``n_steps`` and the ``langevin:`` settings ``kernel``
        (a mapping with keys among :data:`KERNEL_KEYS`; missing keys take the defaults),
        validated with the names a user types (``sampler.n_steps``, ``langevin.step_size``)."""
        settings = dict(kernel or {})
        unknown = sorted(set(settings) - set(KERNEL_KEYS))
        check(not unknown, f"langevin: unknown key(s) {unknown} (allowed: {list(KERNEL_KEYS)})")
        cfg = cls(n_steps=n_steps, **settings)
        positive("sampler.n_steps", cfg.n_steps, allow_zero=allow_zero_steps)
        cfg.validate("langevin", allow_zero_steps=True)
        return cfg

    def validate(self, prefix: str = "sampler", allow_zero_steps: bool = True) -> None:
        positive(f"{prefix}.n_steps", self.n_steps, allow_zero=allow_zero_steps)
        positive(f"{prefix}.step_size", self.step_size)
        if self.noise_scale is not None:
            positive(f"{prefix}.noise_scale", self.noise_scale, allow_zero=True)
            check(not self.mala or math.isclose(self.noise_scale, math.sqrt(self.step_size)),
                  f"{prefix}.mala=true needs noise_scale=null (σ = √ε), got {self.noise_scale}")
        if self.grad_clip is not None:
            positive(f"{prefix}.grad_clip", self.grad_clip)
        check(isinstance(self.compile, bool),
              f"{prefix}.compile must be true or false, got {self.compile!r}")

    @property
    def sigma(self) -> float | Tensor:
        if self.noise_scale is not None:
            return float(self.noise_scale)
        if torch.is_tensor(self.step_size):  # a device scalar (AIS's adapted step): no host sync
            return self.step_size.sqrt()
        return math.sqrt(self.step_size)


@dataclass
class LangevinResult:
    x: Tensor
    log_weights: Tensor | None
    accept_rate: Tensor | None  # MALA only: a 0-d tensor on the samples' device (no host sync)
    grad_evals: int             # per-sample gradient evaluations spent
    mh_rate: Tensor | None = None  # mean Metropolis–Hastings acceptance probability min(1, r) of
    # the proposals (MALA and weighted ULA, where r is computed anyway; a 0-d device tensor): a
    # step-size signal for ULA too (a caller may adapt ε to it; the kernel itself never does)
    mh_low: Tensor | None = None   # fraction of those proposals with min(1, r) < MH_LOW: moves
    # the step size cannot make (a weighted ULA particle loses ≥ 100× its weight in one step)


MH_LOW = 0.01
"""A proposal whose Metropolis–Hastings acceptance probability is below this counts in
``mh_low``: where ``ε`` is too large for the local curvature (ULA diverging, MALA stuck)."""


def _drift(g: Tensor, cfg: LangevinConfig) -> Tensor:
    if cfg.grad_clip is not None:
        norm = g.flatten(1).norm(dim=1).clamp_min(1e-12)
        scale = (cfg.grad_clip / norm).clamp(max=1.0)
        g = g * scale.view(-1, *([1] * (g.dim() - 1)))
    return -0.5 * cfg.step_size * g


def energy_grad_and_metric(energy: Energy, x: Tensor, cfg: LangevinConfig
                           ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``E(x)``, ``∇ₓE(x)`` and the curvature-scaled step of each particle (module docstring):
    ``M(x) = V diag(ε_j) Vᵀ`` with ``ε_j = min(max_step, κ/|λ_j|)`` over the eigenpairs
    ``(λ_j, v_j)`` of the exact Hessian ``∇²E(x)`` (``d`` double-backward passes), as
    ``(V, ε)``: float64, ``(N, d, d)`` and ``(N, d)``."""
    with torch.enable_grad():
        xs = x.detach().requires_grad_(True)
        e = energy(xs)
        (g,) = torch.autograd.grad(e.sum(), xs, create_graph=True)
        h = hessian(g, xs).double()
    lam, vec = torch.linalg.eigh(0.5 * (h + h.mT))
    tiny = torch.finfo(torch.float64).tiny
    eps = torch.clamp(cfg.curvature / lam.abs().clamp_min(tiny), max=cfg.max_step)
    return e.detach(), g.detach(), vec, eps


def _apply(vec: Tensor, scale: Tensor, v: Tensor) -> Tensor:
    """``V diag(scale) Vᵀ v`` per particle (``v``: (N, *shape); float64 in, ``v``'s shape out)."""
    flat = v.double().flatten(1)
    out = torch.einsum("nij,nj,nkj,nk->ni", vec, scale, vec, flat)
    return out.reshape(v.shape)


def _log_q_metric(x_to: Tensor, x_from: Tensor, g_from: Tensor, vec: Tensor, eps: Tensor
                  ) -> Tensor:
    """``log N(x_to; x_from − ½M∇E(x_from), M)``, ``M = V diag(ε) Vᵀ`` of ``x_from``, up to
    ``−(d/2) log 2π`` (the normaliser ``−½ log det M`` differs between the two directions)."""
    r = (x_to.double() - x_from.double() + 0.5 * _apply(vec, eps, g_from)).flatten(1)
    proj = torch.einsum("nij,ni->nj", vec, r)                         # Vᵀ r
    return -0.5 * (proj.pow(2) / eps).sum(1) - 0.5 * eps.log().sum(1)


def _log_q(x_to: Tensor, x_from: Tensor, drift_from: Tensor, sigma: float) -> Tensor:
    """``log N(x_to; x_from + drift_from, σ² I)`` up to the constant shared by both directions."""
    return -(x_to - x_from - drift_from).pow(2).flatten(1).sum(1) / (2 * sigma**2)


def langevin(energy: Energy, x: Tensor, cfg: LangevinConfig,
             log_weights: Tensor | None = None, clamp: tuple[float, float] | None = None
             ) -> LangevinResult:
    """Run ``cfg.n_steps`` Langevin steps from ``x`` targeting ``exp(−energy)``.

    Args:
        energy: the target energy.
        x: starting points, shape ``(N, *shape)``.
        cfg: kernel settings.
        log_weights: if given, the importance log-weights carried by ``x``; the ULA correction
            is added (MALA leaves them unchanged). Returned in the result.
        clamp: optional box the samples are clipped to after each step (images in [0, 1]).
            Clipping breaks exactness; it is off unless asked for.
    """
    x = x.detach()
    if cfg.n_steps == 0:
        return LangevinResult(x, log_weights, None, 0)
    with frozen_parameters(energy):
        if cfg.curvature is not None:
            return _langevin_scaled(energy, x, cfg, log_weights, clamp)
        return _langevin(energy, x, cfg, log_weights, clamp)


def _langevin(energy: Energy, x: Tensor, cfg: LangevinConfig, log_weights: Tensor | None,
              clamp: tuple[float, float] | None) -> LangevinResult:
    n = x.shape[0]
    sigma = cfg.sigma
    # MALA and weighted ULA need E and ∇E at both ends of every move; plain ULA only ∇E(x).
    need_pair = cfg.mala or log_weights is not None
    evals = 0
    grad_fn = compiled_energy_and_grad(energy) if cfg.compile else None
    grad_fn = grad_fn or energy_and_grad
    e, g = grad_fn(energy, x)
    evals += 1
    accepted = torch.zeros((), device=x.device)
    mh = torch.zeros((), device=x.device)
    low = torch.zeros((), device=x.device)
    for _ in range(cfg.n_steps):
        drift = _drift(g, cfg)
        x_new = x + drift + sigma * torch.randn_like(x)
        if clamp is not None:
            x_new = x_new.clamp(*clamp)
        last = _ == cfg.n_steps - 1
        if not need_pair:
            x = x_new
            if not last:
                e, g = grad_fn(energy, x)
                evals += 1
            continue
        e_new, g_new = grad_fn(energy, x_new)
        evals += 1
        log_ratio = (-e_new + e + _log_q(x, x_new, _drift(g_new, cfg), sigma)
                     - _log_q(x_new, x, drift, sigma))
        mh = mh + torch.exp(log_ratio.clamp(max=0)).mean()
        low = low + (log_ratio < math.log(MH_LOW)).float().mean()
        if cfg.mala:
            accept = torch.rand(n, device=x.device).log() < log_ratio
            accepted = accepted + accept.float().mean()
            mask = accept.view(-1, *([1] * (x.dim() - 1)))
            x = torch.where(mask, x_new, x)
            e = torch.where(accept, e_new, e)
            g = torch.where(mask, g_new, g)
        else:
            log_weights = log_weights + log_ratio
            x, e, g = x_new, e_new, g_new
    rate = accepted / cfg.n_steps if cfg.mala else None
    return LangevinResult(x.detach(), log_weights, rate, evals * n,
                          mh / cfg.n_steps if need_pair else None,
                          low / cfg.n_steps if need_pair else None)


def _langevin_scaled(energy: Energy, x: Tensor, cfg: LangevinConfig, log_weights: Tensor | None,
                     clamp: tuple[float, float] | None) -> LangevinResult:
    """Metropolis-adjusted Langevin with the curvature-scaled step (module docstring):
    ``x' = x − ½M(x)∇E(x) + M(x)^{1/2}ξ``, accepted with the ratio that uses ``M(x')`` for the
    reverse move. Always Metropolis-adjusted (importance weights unchanged). Every evaluation
    takes the Hessian: ``1 + 2d`` counted gradient passes per particle."""
    n, d = x.shape[0], x[0].numel()
    per_eval = 1 + 2 * d
    e, g, vec, eps = energy_grad_and_metric(energy, x, cfg)
    evals = 1
    accepted = torch.zeros((), device=x.device)
    mh = torch.zeros((), device=x.device)
    low = torch.zeros((), device=x.device)
    shape = (-1, *([1] * (x.dim() - 1)))
    for _ in range(cfg.n_steps):
        noise = torch.randn_like(x)
        step = -0.5 * _apply(vec, eps, g) + _apply(vec, eps.sqrt(), noise)
        x_new = x + step.to(x.dtype)
        if clamp is not None:
            x_new = x_new.clamp(*clamp)
        e_new, g_new, vec_new, eps_new = energy_grad_and_metric(energy, x_new, cfg)
        evals += 1
        log_ratio = (-e_new.double() + e.double()
                     + _log_q_metric(x, x_new, g_new, vec_new, eps_new)
                     - _log_q_metric(x_new, x, g, vec, eps))
        log_ratio = torch.nan_to_num(log_ratio, nan=-math.inf)
        mh = mh + torch.exp(log_ratio.clamp(max=0)).mean()
        low = low + (log_ratio < math.log(MH_LOW)).float().mean()
        accept = torch.rand(n, device=x.device, dtype=torch.float64).log() < log_ratio
        accepted = accepted + accept.float().mean()
        mask = accept.view(shape)
        x = torch.where(mask, x_new, x)
        e = torch.where(accept, e_new, e)
        g = torch.where(mask, g_new, g)
        vec = torch.where(accept.view(-1, 1, 1), vec_new, vec)
        eps = torch.where(accept.view(-1, 1), eps_new, eps)
    return LangevinResult(x.detach(), log_weights, accepted / cfg.n_steps, evals * n * per_eval,
                          (mh / cfg.n_steps).float(), low / cfg.n_steps)

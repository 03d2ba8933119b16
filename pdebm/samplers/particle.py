"""Particle dynamics (docs/method.md): negatives that move *with* the model.

After every optimizer step ``θ_k → θ_{k+1}`` (``update(before, after)``) the particles are

1. **transported**, ``x ← T(x) = x − ∇φ(x)``, with ``δE = E_{θ_{k+1}} − E_{θ_k}``
   (``delta: exact``) or ``∇_θE_{θ_{k+1}}·(θ_{k+1} − θ_k)`` (``delta: first_order``, the
   authors' code) and the potential ``φ`` fitted by the field (:mod:`pdebm.samplers.fields`:
   ``φ = c·δE``, or ``c₁δE + bᵀx + a|x − x̄|²`` for ``basis``), optionally as ``substeps``
   moves of ``φ/S`` that re-evaluate ``∇ₓδE`` where the particles have got to, and with
   ``max_substeps`` as many more guarded substeps as the Jacobian guard needs to make the
   whole move (adaptive substeps);
2. **reweighted** (``weights: true``), ``ℓ ← ℓ − E_{θ_{k+1}}(T(x)) + E_{θ_k}(x) + log|det ∇T(x)|``,
   checked (Pareto ``k̂`` of the weights, :func:`~pdebm.samplers.weights.pareto_k_hat`) and
   resampled (systematic) when ``ESS/N < ess_threshold``;
3. **corrected** by ``K`` Langevin steps aimed at ``θ_{k+1}`` (the shared kernel, which adds
   the ULA weight increment; after a resampling these moves are the diversification; with
   ``adapt_accept`` MALA's ``ε`` follows a target acceptance; with ``curvature_step`` they are
   Metropolis-adjusted moves scaled per particle and direction by the Hessian of ``E``,
   :mod:`pdebm.samplers.langevin`, which ``curvature_fallback`` switches to for the rest of the
   run when a host check finds the plain kernel's proposals failing);
4. partly **refreshed** with draws from the energy's (current) base distribution.

Weights. The log-weights keep their absolute scale, ``w = exp(−E)/q`` for the particles'
proposal ``q``: they start at ``log Z_0`` (zero when the model is its normalised base),
resampling resets them to ``log mean w`` and refreshed particles get ``−E − log base``, so
particles from different proposals can share one population. The map ``T`` must stay a
diffeomorphism for the formula to hold, and must not squeeze or stretch the cloud so much
that the weights alone have to undo it: every substep's ``φ`` is shrunk so that the
eigenvalues of ``∇T = (1 − 2a)I − c∇²δE`` stay in ``jacobian_bounds = [lo, hi]`` at every
particle (from the exact Hessian's eigenvalues in low dimension; from a power-iteration
estimate of its spectral radius with Hutchinson). Unweighted, no Hessian is computed and only
the quadratic term's ``1 − 2a`` is kept in the bounds.

Cost (``grad_evals``, per-particle gradient passes through one copy of the network): ``∇ₓδE``
counts ``2N`` (two networks, or the first-order double backward); every Hessian row, Hutchinson
probe or power iteration ``2N``; Langevin as the kernel reports it.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import replace
from typing import Any, Mapping

import torch
from torch import Tensor

from pdebm.energy.base import Energy, EnergyModel, FrozenEnergy
from pdebm.errors import check, one_of, positive
from pdebm.samplers.base import Sampler
from pdebm.samplers.fields import make_field
from pdebm.samplers.langevin import MH_LOW, LangevinConfig, langevin
from pdebm.samplers.weights import (PARETO_K_WARN, Curvature, ExactCurvature,
                                    HutchinsonCurvature, distinct_fraction,
                                    effective_sample_size, jacobian_guard, logmeanexp,
                                    pareto_k_hat, systematic_resample)

DELTAS = ("exact", "first_order")
LOGDETS = ("auto", "exact", "hutchinson")
PARTICLE_INITS = ("auto", "exact", "burn_in")
ADAPT_GAIN = 1.0
"""Gain of the step-size adaptation: ``log ε`` moves by this times (acceptance − target) per update."""
MOVE_TOL = 1e-6
"""Adaptive substeps stop (on a planning update) once less than this fraction of the move is left."""
MH_LOW_WARN = 1e-3
"""Warn when more than this fraction of the plain kernel's correction proposals (mean over a check
window) had an acceptance probability below ``MH_LOW`` (and the fallback cannot act): on the
prescribed paths 0 on the families the plain kernel passes, 0.25–1.9 % over the hard banana's
last third (docs/method.md)."""
FALLBACK_KAPPA = 1.0
"""``κ`` of the curvature-scaled corrections that ``curvature_fallback`` switches to."""
EXACT_LOGDET_MAX_DIM = 10
"""``logdet: auto`` takes the full Hessian up to this data dimension and Hutchinson probes above."""


def exact_delta(before: Energy, after: Energy, x: Tensor,
                create_graph: bool = False) -> tuple[Tensor, Tensor]:
    """``δE = E_after(x) − E_before(x)`` (N,) and ``∇ₓδE``; ``x`` is a leaf with ``requires_grad``.
    With ``create_graph`` the gradient keeps its graph, for Hessians."""
    d = after(x) - before(x)
    (g,) = torch.autograd.grad(d.sum(), x, create_graph=create_graph)
    return d.detach(), g


def first_order_delta(before: FrozenEnergy, after: EnergyModel, x: Tensor,
                      create_graph: bool = False) -> tuple[Tensor, Tensor]:
    """``δE ≈ ∇_θE_{θ_{k+1}}(x)·(θ_{k+1} − θ_k)`` per particle and its ``∇ₓ``.

    Double-backward trick: with ``v = 1 ∈ R^N``,
    ``s(v, x) = ∇_θ(Σ_i v_i E(x_i))·Δθ = Σ_i v_i δE_i``, so one backward pass of ``s`` gives
    ``∂s/∂v = δE`` and ``∂s/∂x = ∇ₓδE``.
    """
    named = [(n, p) for n, p in after.named_parameters() if p.requires_grad]
    e = after(x)
    v = torch.ones_like(e, requires_grad=True)
    grads = torch.autograd.grad(e, [p for _, p in named], grad_outputs=v, create_graph=True,
                                allow_unused=True)
    s = sum((g * (p.detach() - before.params[n])).sum()
            for (n, p), g in zip(named, grads) if g is not None)
    if not torch.is_tensor(s) or not s.requires_grad:  # the parameters did not move
        return torch.zeros_like(e).detach(), torch.zeros_like(x)
    g_x, d = torch.autograd.grad(s, [x, v], create_graph=create_graph, allow_unused=True)
    if g_x is None:  # δE does not depend on x (only an additive constant moved)
        g_x = torch.zeros_like(x)
    return d.detach(), g_x


class ParticleSampler(Sampler):
    """Particles transported with the model, optionally weighted (see the module docstring).

    Args:
        n_samples: number of particles ``N`` (the negatives of every step).
        field: ``gradient`` (``c = 1``), ``optimal`` (``c*``), ``basis`` (``c₁δE`` + linear +
            ``|x − x̄|²`` terms fitted together) or ``none`` (no transport).
        delta: ``δE`` as ``exact`` (``E_{θ_{k+1}} − E_{θ_k}``) or ``first_order``.
        max_displacement: clip of the optimal and basis fields: root-mean-square displacement
            per step.
        n_steps: Langevin correction steps ``K`` after the transport (``K = 0`` allowed).
        kernel: the Langevin kernel's settings (the ``langevin:`` node).
        refresh: fraction ``ρ`` of the particles re-drawn from the base after each step.
        refresh_steps, refresh_step_size, refresh_noise_scale: the authors' refresh: the
            re-drawn particles first take this many (cold: small noise) Langevin steps of the
            model (authors: 10 steps, ``ε = 1``, ``σ = 0.005``; 0: plain base draws).
        init: ``exact`` (base draws are samples of the initial model), ``burn_in`` (always run
            ``burn_in`` Langevin steps first) or ``auto`` (burn in unless the network's output
            is identically zero at the drawn particles, i.e. the model is its base).
        burn_in: Langevin steps ``M`` of the burn-in.
        weights: carry importance weights (docs/method.md, "Importance weights").
        logdet: ``log|det ∇T|`` ``exact`` (Hessian), ``hutchinson`` (probes) or ``auto``
            (exact up to :data:`EXACT_LOGDET_MAX_DIM` dimensions).
        n_probes: Rademacher probes per particle for Hutchinson.
        ess_threshold: resample when ``ESS/N`` falls below this (0: never).
        substeps: split the transport into at least this many moves of ``c/S``.
        max_substeps: adaptive substeps: where the Jacobian guard would shrink a move, the rest
            of it is made by further guarded substeps, up to this many in all (``≤ substeps``:
            no adaptation; the guard shrinks the move).
        check_every: every this many updates (the first included) one update reads the
            device diagnostics on the host: the Pareto ``k̂`` warning, and with adaptive
            substeps the remaining move after each substep, which sets the substep count the
            updates in between run (they read nothing on the host).
        adapt_accept: adapt the MALA correction's ``ε`` after every update so that the mean
            Metropolis–Hastings acceptance probability of its proposals approaches this target
            (``None``: fixed ``ε``). MALA only (``langevin.mala: true``).
        step_bounds: ``[lo, hi]`` for the adapted ``ε``.
        curvature_step: ``κ`` of the curvature-scaled correction (``None``: the plain kernel):
            Metropolis-adjusted moves with the per-direction step ``min(curvature_max_step,
            κ/|λ_j(∇²E)|)`` (:mod:`pdebm.samplers.langevin`); exact Hessians, so at most
            :data:`EXACT_LOGDET_MAX_DIM` dimensions. ``sampler=particle_curved``.
        curvature_max_step: the largest per-direction step of the curvature-scaled correction.
        curvature_fallback: on a host check (``check_every``), if more than this fraction of the
            plain kernel's correction proposals since the last check had an acceptance
            probability below ``MH_LOW`` (the step is too large for the curvature where some
            particles are), switch the corrections to the curvature-scaled kernel
            (``κ =`` :data:`FALLBACK_KAPPA`) for the rest of the run, with a one-line warning.
            Data of at most :data:`EXACT_LOGDET_MAX_DIM` dimensions only (above, the warning
            alone); ``None``: never (the plain kernel throughout). Moot with
            ``curvature_step`` or ``adapt_accept``.
        jacobian_bounds: ``[lo, hi]``, the range allowed for the eigenvalues of ``∇T`` (shrinks
            ``φ``; weighted: all eigenvalues, unweighted: the quadratic term's).
        power_iters: power iterations for the spectral-radius bound of ``∇²δE`` with Hutchinson.
    """

    needs_previous_energy = True  # update() transports by δE = E_{θ_{k+1}} − E_{θ_k}

    def __init__(self, n_samples: int = 1000, field: str = "optimal", delta: str = "exact",
                 max_displacement: float = 1.0, n_steps: int = 10,
                 kernel: Mapping[str, Any] | None = None, refresh: float = 0.0, init: str = "auto",
                 burn_in: int = 1000, weights: bool = False, logdet: str = "auto",
                 n_probes: int = 1, ess_threshold: float = 0.5, substeps: int = 1,
                 max_substeps: int = 1, check_every: int = 10,
                 adapt_accept: float | None = None,
                 step_bounds: tuple[float, float] = (1e-4, 1.0),
                 jacobian_bounds: tuple[float, float] = (0.8, 1.25), power_iters: int = 5,
                 refresh_steps: int = 0,
                 refresh_step_size: float = 1.0, refresh_noise_scale: float | None = 0.005,
                 curvature_step: float | None = None, curvature_max_step: float = 200.0,
                 curvature_fallback: float | None = 1e-4) -> None:
        super().__init__()
        positive("sampler.n_samples", n_samples)
        one_of("sampler.delta", delta, DELTAS)
        one_of("sampler.logdet", logdet, LOGDETS)
        one_of("sampler.init", init, PARTICLE_INITS)
        check(0 <= refresh < 1, f"sampler.refresh must be in [0, 1), got {refresh}")
        positive("sampler.burn_in", burn_in, allow_zero=True)
        positive("sampler.n_probes", n_probes)
        check(0 <= ess_threshold <= 1,
              f"sampler.ess_threshold must be in [0, 1], got {ess_threshold}")
        positive("sampler.substeps", substeps)
        positive("sampler.check_every", check_every)
        positive("sampler.max_substeps", max_substeps)
        bounds = tuple(float(b) for b in jacobian_bounds)
        check(len(bounds) == 2 and 0 < bounds[0] < 1 < bounds[1],
              f"sampler.jacobian_bounds must be [lo, hi] with 0 < lo < 1 < hi, got "
              f"{list(jacobian_bounds)}")
        positive("sampler.power_iters", power_iters, allow_zero=True)
        self.field = make_field(field, max_displacement)
        self.kernel = LangevinConfig.from_settings(n_steps, kernel)
        if curvature_step is not None:
            positive("sampler.curvature_step", curvature_step)
            check(self.kernel.noise_scale is None,
                  "sampler.curvature_step needs langevin.noise_scale=null (σ = √ε(x))")
            check(self.kernel.grad_clip is None and adapt_accept is None,
                  "sampler.curvature_step sets its own steps: it takes neither langevin.grad_clip "
                  "nor sampler.adapt_accept")
            self.kernel = replace(self.kernel, curvature=float(curvature_step),
                                  max_step=float(curvature_max_step))
            self.requires_2d = True  # exact Hessians at every move (build refuses image data)
        if curvature_fallback is not None:
            check(0 <= curvature_fallback < 1,
                  f"sampler.curvature_fallback must be in [0, 1) or null, got {curvature_fallback}")
        if curvature_step is not None or curvature_fallback is not None:
            positive("sampler.curvature_max_step", curvature_max_step)
        # the fallback only replaces the plain kernel at a fixed ε
        self.curvature_fallback = (None if curvature_step is not None or adapt_accept is not None
                                   else curvature_fallback)
        self.curvature_max_step = float(curvature_max_step)
        self.n_samples, self.delta, self.refresh = int(n_samples), delta, float(refresh)
        self.init, self.burn_in, self.weighted = init, int(burn_in), bool(weights)
        self.logdet, self.n_probes, self.ess_threshold = logdet, int(n_probes), ess_threshold
        self.substeps, self.jacobian_bounds = int(substeps), bounds
        # below substeps it is substeps: no adaptation
        self.max_substeps = max(int(max_substeps), self.substeps)
        self.check_every = int(check_every)
        self._planned = self.substeps     # substeps the last planning update needed
        if adapt_accept is not None:
            check(0 < adapt_accept < 1, f"sampler.adapt_accept must be in (0, 1), got {adapt_accept}")
            check(self.kernel.mala,
                  "sampler.adapt_accept needs langevin.mala=true (adapting ULA's ε to its "
                  "would-be acceptance blew the particles up on stiff targets: docs/method.md)")
        sb = tuple(float(b) for b in step_bounds)
        check(len(sb) == 2 and 0 < sb[0] <= sb[1],
              f"sampler.step_bounds must be [lo, hi] with 0 < lo <= hi, got {list(step_bounds)}")
        self.adapt_accept, self.step_bounds = adapt_accept, sb
        self._log_step: Tensor | None = None  # log ε of the adapted correction (device scalar)
        self._step0 = float(self.kernel.step_size)
        self._k_hat_sum: Tensor | None = None  # sum of k̂ since the last host check
        self._k_hat_count = 0
        self._warned_k_hat = False
        self._mh_low_sum: Tensor | None = None  # sum of mh_low since the last host check
        self._mh_low_count = 0
        self._warned_mh_low = False
        if self.weighted and self.kernel.n_steps == 0 and ess_threshold > 0:
            warnings.warn("sampler: n_steps=0 with resampling (ess_threshold > 0): a resampling "
                          "only duplicates particles and nothing moves the copies apart")
        self._move: tuple[Tensor, Tensor] | None = None  # (substeps run, fraction of the move made)
        self.power_iters = int(power_iters)
        self._updates = 0                 # updates done (host checks on 0, check_every, …)
        positive("sampler.refresh_steps", refresh_steps, allow_zero=True)
        positive("sampler.refresh_step_size", refresh_step_size)
        if refresh_noise_scale is not None:
            positive("sampler.refresh_noise_scale", refresh_noise_scale, allow_zero=True)
        self.refresh_kernel = LangevinConfig(refresh_steps, refresh_step_size, refresh_noise_scale)
        check(not (self.weighted and refresh_steps > 0),
              "sampler.refresh_steps > 0 needs weights=false: a refreshed particle's proposal "
              "density after cold Langevin steps is unknown")
        self.x: Tensor | None = None      # particles (N, *shape)
        self.log_w: Tensor | None = None  # log-weights ℓ (N,); zeros when unweighted
        self._stats: dict[str, Tensor] = {}
        self._eig: tuple[Tensor, Tensor] | None = None
        self._resamplings: Tensor | int = 0    # resampling events so far (weight_history)
        self._log_z_var: Tensor | float = 0.0  # variance of log mean w they froze in

    # ----------------------------------------------------------------------------- interface
    def negatives(self, energy: EnergyModel) -> tuple[Tensor, Tensor]:
        """The particles (detached) and their log-weights."""
        if self.x is None:
            self._initialise(energy)
        self.x, self.log_w = self.x.to(energy.device), self.log_w.to(energy.device)
        return self.x, self.log_w

    def update(self, energy_before: Energy, energy_after: EnergyModel) -> None:
        """Transport, reweight, resample, correct and refresh the particles for ``θ_{k+1}``."""
        if self.x is None:  # nothing handed out yet, nothing to move
            return
        n = self.n_samples
        with torch.enable_grad():
            x, log_det, c = self._transport(energy_before, energy_after)
        eig = self._eig
        stats = {"c": c, "displacement": (x - self.x).flatten(1).norm(dim=1).mean()}
        if self._move is not None:
            stats["substeps"], stats["move_fraction"] = self._move
        if eig is not None:
            stats["eig_min"], stats["eig_max"] = eig
        log_w = self.log_w
        if self.weighted:
            with torch.no_grad():
                log_w = (log_w - energy_after(x) + energy_before(self.x)
                         + log_det.to(log_w.dtype))
            stats["ess"] = effective_sample_size(log_w) / n
            stats["k_hat"] = pareto_k_hat(log_w)
            # resample (systematic) when ESS/N < threshold, chosen on the device
            resample = stats["ess"] < self.ess_threshold
            idx = torch.where(resample, systematic_resample(log_w),
                              torch.arange(n, device=log_w.device))
            x = x[idx]
            log_w = torch.where(resample, logmeanexp(log_w).expand(n), log_w)
            stats["resampled"] = resample.double()
            # the history behind log_mean_weight (device tensors, no sync): resampling events,
            # and the delta-method variance 1/ESS − 1/N of log mean w each one froze in
            self._resamplings = self._resamplings + resample.long()
            self._log_z_var = self._log_z_var + torch.where(
                resample, (1.0 / stats["ess"] - 1.0) / n, torch.zeros_like(stats["ess"]))
        out = langevin(energy_after, x, self.kernel,
                       log_weights=log_w if self.weighted else None)
        self.grad_evals += out.grad_evals
        if self.adapt_accept is not None and out.mh_rate is not None:
            self._adapt_step(out.mh_rate)
            stats["step_size"] = self._log_step.exp()
        if out.mh_rate is not None:
            stats["mh_rate"] = out.mh_rate
        if out.mh_low is not None:
            stats["mh_low"] = out.mh_low
            if self.kernel.curvature is None:  # its large flat-direction proposals are meant to fail often
                self._mh_low_sum = (out.mh_low if self._mh_low_sum is None
                                    else self._mh_low_sum + out.mh_low)
                self._mh_low_count += 1
        if self.curvature_fallback is not None:
            stats["curved"] = torch.full((), float(self.fell_back), dtype=torch.float64,
                                         device=x.device)
        if out.accept_rate is not None:
            stats["accept_rate"] = torch.as_tensor(out.accept_rate)
        x, log_w = self._refresh(energy_after, out.x, out.log_weights if self.weighted else log_w)
        if self.weighted:
            stats["ess_out"] = effective_sample_size(log_w) / n
            self._watch_k_hat(stats["k_hat"])
        stats["unique_frac"] = distinct_fraction(x)
        if self._updates % self.check_every == 0:
            self._watch_mh_low(x[0].numel())
        self._updates += 1
        self.x, self.log_w = x.detach(), log_w.detach()
        self._stats = {k: v.detach() for k, v in stats.items()}

    def stats(self) -> dict[str, float]:
        """Logged as ``sampler/<key>``:

        - ``c``: coefficient of ``δE`` in the potential actually applied (sum over substeps);
        - ``displacement``: mean ``|T(x) − x|``;
        - ``substeps``: transport substeps run; ``move_fraction``: the fraction of the fitted
          move they made (1 unless the guard held it back within ``max_substeps``);
        - ``eig_min``, ``eig_max`` (weighted): the extreme eigenvalues of ``∇T`` over all
          particles and substeps, after the guard (inside ``jacobian_bounds``; with
          Hutchinson, bounds from the spectral-radius estimate, not eigenvalues);
        - ``ess`` (weighted): ESS/N of the reweighted particles *before* resampling;
        - ``resampled`` (weighted): 1 if this step resampled, else 0;
        - ``ess_out`` (weighted): ESS/N of the negatives handed out next (after resampling,
          Langevin and refresh);
        - ``accept_rate``: MALA's acceptance rate;
        - ``mh_rate`` (weighted or MALA): mean Metropolis–Hastings acceptance probability of the
          correction's proposals; ``step_size``: the adapted ``ε`` (``adapt_accept``);
        - ``mh_low`` (weighted or MALA): the fraction of those proposals whose acceptance
          probability was below ``MH_LOW`` (1 %): the step is too large for ``E``'s curvature
          there (warned about, for the plain kernel, above :data:`MH_LOW_WARN`);
        - ``k_hat`` (weighted): Pareto ``k̂`` of the reweighted particles' weights (before
          resampling); above 0.7 the weighted estimates are unreliable whatever ESS says;
        - ``unique_frac``: fraction of the negatives handed out that are not exact copies of
          another (resampled copies that no move has separated).

        Values may be 0-d device tensors: the trainer brings them to the host in one transfer on
        logging steps only.
        """
        return dict(self._stats)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), **self._adaptive_state(), "x": self.x, "log_w": self.log_w,
                "updates": self._updates, "resamplings": self._resamplings,
                "log_z_var": self._log_z_var, "fell_back": self.fell_back,
                "mh_low_window": (self._mh_low_sum, self._mh_low_count)}

    def _adaptive_state(self) -> dict[str, Any]:
        """The adaptive substeps' plan and the adapted ``log ε``, for checkpoints."""
        return {"planned_substeps": self._planned, "log_step": self._log_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.x, self.log_w = state["x"], state["log_w"]
        # checkpoints written before these keys existed: the next update is a host check
        self._updates = int(state.get("updates", 0))
        self._planned = int(state.get("planned_substeps", self.substeps))
        self._log_step = state.get("log_step")
        if self._log_step is not None:
            self.kernel = replace(self.kernel, step_size=self._log_step.exp())
        self._resamplings = state.get("resamplings", 0)
        self._log_z_var = state.get("log_z_var", 0.0)
        if "fell_back" not in state:  # written before curvature_fallback existed: keep its kernel
            self.curvature_fallback = None
        elif state["fell_back"] and not self.fell_back:
            self._fall_back()
        self._mh_low_sum, self._mh_low_count = state.get("mh_low_window", (None, 0))

    def log_mean_weight(self) -> Tensor | None:
        """``log mean w`` of the weighted population: ``log Ẑ`` of the current model (the
        weights keep their absolute scale, module docstring); ``None`` when unweighted."""
        if not self.weighted or self.log_w is None:
            return None
        return logmeanexp(self.log_w.detach())

    def weight_history(self) -> dict[str, Tensor | float] | None:
        if not self.weighted:
            return None
        return {"resamplings": self._resamplings, "log_z_var": self._log_z_var}

    # ------------------------------------------------------------------------------- pieces
    def _adapt_step(self, rate: Tensor) -> None:
        """``log ε ← log ε + ADAPT_GAIN·(rate − target)``, clipped to ``step_bounds`` (device);
        the correction's kernel then runs at that ``ε`` (a device scalar)."""
        if self._log_step is None:
            self._log_step = torch.tensor(math.log(self._step0), dtype=torch.float64,
                                          device=rate.device)
        lo, hi = self.step_bounds
        rate = torch.nan_to_num(rate.double(), nan=0.0)  # a blown-up move counts as rejected
        self._log_step = (self._log_step + ADAPT_GAIN * (rate - self.adapt_accept)
                          ).clamp(math.log(lo), math.log(hi))
        self.kernel = replace(self.kernel, step_size=self._log_step.exp())

    def _watch_k_hat(self, k_hat: Tensor) -> None:
        """Sum ``k̂`` on the device; every ``check_every``-th update read the mean over the
        updates since the last check (one update's ``k̂`` is noisy: on healthy paths single
        updates pass 0.7 a few percent of the time) and warn once, in one line, when it is above
        :data:`PARETO_K_WARN`."""
        k = k_hat.detach()
        self._k_hat_sum = k if self._k_hat_sum is None else self._k_hat_sum + k
        self._k_hat_count += 1
        if self._updates % self.check_every == 0:
            mean = float(self._k_hat_sum) / self._k_hat_count
            if mean > PARETO_K_WARN and not self._warned_k_hat:
                warnings.warn(f"sampler: Pareto k̂ of the importance weights averaged {mean:.2f} "
                              f"over the last {self._k_hat_count} update(s) (> {PARETO_K_WARN}): "
                              "the weighted negatives may miss mass that ESS/N cannot see "
                              "(docs/method.md, \"What the sampler guarantees\")")
                self._warned_k_hat = True
            self._k_hat_sum, self._k_hat_count = None, 0

    def _watch_mh_low(self, dim: int) -> None:
        """On a host check, with the mean ``mh_low`` of the plain kernel over the window (the
        step is too large for the curvature where some particles are: weighted ULA throws them
        off and their weights collapse, MALA leaves them stuck): above ``curvature_fallback``
        in at most :data:`EXACT_LOGDET_MAX_DIM` dimensions, switch to the curvature-scaled
        corrections; else above :data:`MH_LOW_WARN`, warn. Each once, in one line."""
        if self._mh_low_sum is None:
            return
        count = self._mh_low_count
        mean = float(self._mh_low_sum) / count
        self._mh_low_sum, self._mh_low_count = None, 0
        if (self.curvature_fallback is not None and mean > self.curvature_fallback
                and dim <= EXACT_LOGDET_MAX_DIM):
            self._fall_back()
            warnings.warn(f"sampler: {100 * mean:.3f} % of the Langevin corrections' proposals "
                          f"had an acceptance probability below {MH_LOW} over the last {count} "
                          f"update(s), more than sampler.curvature_fallback = "
                          f"{self.curvature_fallback:g}: the corrections are curvature-scaled "
                          f"Metropolis-adjusted moves (κ = {FALLBACK_KAPPA:g}) from the next "
                          "update on, at about 3.5× the gradient passes (docs/method.md)")
            return
        if mean > MH_LOW_WARN and not self._warned_mh_low:
            warnings.warn(f"sampler: {100 * mean:.2f} % of the Langevin corrections' proposals had "
                          f"an acceptance probability below {MH_LOW} over the last "
                          f"{count} update(s): langevin.step_size is too large for "
                          "the model's curvature where some particles are, and the weighted "
                          "negatives miss that mass whatever ESS/N and k̂ say (smaller "
                          "step_size, or sampler=particle_curved on 2D data; docs/method.md)")
            self._warned_mh_low = True

    @property
    def fell_back(self) -> bool:
        """Whether the corrections switched to the curvature-scaled kernel (``curvature_fallback``
        is set only when the kernel started plain, so a curvature-scaled kernel means it did)."""
        return self.curvature_fallback is not None and self.kernel.curvature is not None

    def _fall_back(self) -> None:
        """The corrections from now on: the curvature-scaled kernel (``curvature_fallback``),
        which sets its own per-direction steps (no ``noise_scale``, no ``grad_clip``)."""
        self.kernel = replace(self.kernel, curvature=FALLBACK_KAPPA, max_step=self.curvature_max_step,
                              noise_scale=None, grad_clip=None)

    def _initialise(self, energy: EnergyModel) -> None:
        """Draw the particles from the base and burn them in unless the model *is* the base.

        ``r = −E − log base`` is zero at every draw exactly when the network outputs zero; its
        log-mean-exp estimates ``log Z_0``, the weights' starting value.
        """
        x = energy.sample_base(self.n_samples).detach()
        check(self.kernel.curvature is None or x[0].numel() <= EXACT_LOGDET_MAX_DIM,
              f"sampler.curvature_step needs data of at most {EXACT_LOGDET_MAX_DIM} dimensions "
              f"(it takes the exact Hessian at every Langevin step), got {x[0].numel()}")
        log_z = torch.zeros((), device=x.device)
        if self.init != "exact":
            with torch.no_grad():
                r = -energy(x) - energy.base_log_prob(x)
            log_z = logmeanexp(r)
            if self.init == "burn_in" or bool(r.abs().max() > 0):
                out = langevin(energy, x, replace(self.kernel, n_steps=self.burn_in))
                x = out.x
                self.grad_evals += out.grad_evals
        self.x = x
        self.log_w = (log_z.expand(self.n_samples).clone() if self.weighted
                      else torch.zeros(self.n_samples, device=x.device))

    def _transport(self, before: Energy, after: EnergyModel) -> tuple[Tensor, Tensor, Tensor]:
        """``T(x)``, ``log|det ∇T(x)|`` (computed when weighted) and the total coefficient ``c``
        of ``δE`` used; when weighted, ``self._eig`` receives the extreme eigenvalues of ``∇T``
        (over particles and substeps), else ``None``."""
        self._eig = None
        x0 = self.x
        log_det = torch.zeros(x0.shape[0], dtype=torch.float64, device=x0.device)
        c_total = torch.zeros((), dtype=torch.float64, device=x0.device)
        self._move = None
        if self.field is None:
            return x0, log_det, c_total
        w_bar = torch.softmax(self.log_w, 0)
        x, potential, eig = x0, None, None
        # adaptive substeps: each substep asks for min(remaining, 1/substeps) of the move and the
        # guard grants a fraction of that; see _substep_count for how many substeps run
        remaining = torch.ones((), dtype=torch.float64, device=x0.device)
        n_sub, reads = self._substep_count()
        used = 0
        for step in range(n_sub):
            if reads and step > 0 and float(remaining) <= MOVE_TOL:  # a planning update only
                break
            used += 1
            xs = x.detach().requires_grad_(True)
            delta_e, grad = self._delta(before, after, xs)
            if step == 0:
                potential = self.field.potential(delta_e, grad, x0, w_bar)
            if self.weighted:
                curvature = self._curvature(grad, xs)
                h_low, h_high = curvature.bounds()
            else:  # no Hessian: only the quadratic term's (1 − 2a) is known
                curvature, h_low = None, torch.zeros_like(log_det)
                h_high = h_low
            want = remaining.clamp(max=1.0 / self.substeps)
            asked = potential.scaled(want)
            low, high = asked.hessian_range(h_low, h_high)
            granted = jacobian_guard(low, high, self.jacobian_bounds)
            step_pot = asked.scaled(granted)
            remaining = (remaining - want * granted).clamp_min(0)
            if curvature is not None:
                log_det = log_det + curvature.logdet(step_pot.c, step_pot.a)
                low, high = step_pot.hessian_range(h_low, h_high)
                e_min, e_max = 1 - high.max(), 1 - low.min()
                eig = (e_min, e_max) if eig is None else (torch.minimum(eig[0], e_min),
                                                          torch.maximum(eig[1], e_max))
            x = (xs - step_pot.grad(xs, grad)).detach()
            c_total = c_total + step_pot.c
        if reads:
            self._planned = used
        self._move = (torch.full((), float(used), dtype=torch.float64, device=x0.device),
                      1 - remaining)
        self._eig = eig
        return x, log_det, c_total

    def _substep_count(self) -> tuple[int, bool]:
        """How many substeps this update runs, and whether it may read the remaining move on
        the host to stop early. Without adaptation (``max_substeps == substeps``) always
        ``substeps``. Else every ``check_every``-th update (the first included) is a planning
        update: it runs substeps until the whole move is made (or ``max_substeps``), reading the
        remaining fraction on the host after each, and the updates in between run that many
        (no host read; a harder step then makes less than the whole move, which
        ``move_fraction`` reports)."""
        if self.max_substeps == self.substeps:
            return self.substeps, False
        if self._updates % self.check_every == 0:
            return self.max_substeps, True
        return max(self.substeps, self._planned), False

    def _delta(self, before: Energy, after: EnergyModel, xs: Tensor) -> tuple[Tensor, Tensor]:
        """``δE`` and ``∇ₓδE`` at the leaf ``xs``, keeping the graph when weighted (Hessians)."""
        fn = exact_delta if self.delta == "exact" else first_order_delta
        self.grad_evals += 2 * xs.shape[0]
        return fn(before, after, xs, create_graph=self.weighted)

    def _curvature(self, grad: Tensor, xs: Tensor) -> Curvature:
        dim = grad[0].numel()
        exact = self.logdet == "exact" or (self.logdet == "auto" and dim <= EXACT_LOGDET_MAX_DIM)
        self.grad_evals += 2 * xs.shape[0] * (dim if exact else self.n_probes)
        if exact:
            return ExactCurvature.of(grad, xs)
        self.grad_evals += 2 * xs.shape[0] * self.power_iters
        return HutchinsonCurvature.of(grad, xs, self.n_probes, self.power_iters)

    def _refresh(self, energy: EnergyModel, x: Tensor, log_w: Tensor) -> tuple[Tensor, Tensor]:
        """Replace a fraction ``ρ`` of the particles by base draws; when weighted they carry
        their own proposal's weight ``exp(−E)/base`` on the population's absolute scale."""
        k = round(self.refresh * self.n_samples)
        if k == 0:
            return x, log_w
        idx = torch.randperm(self.n_samples, device=x.device)[:k]
        fresh = energy.sample_base(k).detach()
        if self.refresh_kernel.n_steps > 0:
            out = langevin(energy, fresh, self.refresh_kernel)
            fresh = out.x
            self.grad_evals += out.grad_evals
        x = x.clone()
        x[idx] = fresh
        if self.weighted:
            log_w = log_w.clone()
            with torch.no_grad():
                log_w[idx] = -energy(fresh) - energy.base_log_prob(fresh)
        return x, log_w

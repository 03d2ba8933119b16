"""Annealed importance sampling (AIS, Neal 2001) of ``log Z`` of an energy model, and the test
log-likelihood in nats and bits/dim built on it (docs/evaluation.md, "Images").

Path: from a normalised Gaussian ``p₀`` (``start``: by default the model's own base; for image
models ``pdebm eval`` passes a Gaussian fitted to the training data, :func:`fit_gaussian`, which
also serves base-less energies) to the model, ``p_β ∝ p₀(x)^(1−β)·exp(−E(x))^β``, i.e.
intermediate energies ``E_β(x) = −(1−β)·log p₀(x) + β·E(x) = β·g(x) − log p₀(x)`` with
``g(x) = E(x) + log p₀(x)`` (the network when ``p₀`` is the base). ``Z₀ = 1``, so
``log Z = log E[w]``.

One chain: ``x₀ ~ p₀``; for ``β₁ < … < β_T = 1``: ``log w += −(β_t − β_{t−1})·g(x)``, then
``n_steps`` Langevin steps of the shared kernel (:func:`pdebm.samplers.langevin.langevin`)
targeting ``p_{β_t}``. With MALA every transition leaves its ``p_β`` invariant and the weights are
the classic AIS weights; with ULA the kernel's weight correction ``−E_β(x') + E_β(x) +
log q(x|x') − log q(x'|x)`` is added to ``log w`` (the reversed proposal as backward kernel), so
the estimator stays unbiased in ``Z`` either way — it only gets noisier when the step is large.

Preconditioning (default on): the chains run in whitened coordinates ``x = μ + Lz`` of ``p₀``
(``L = diag σ`` for a diagonal ``p₀``, its Cholesky factor for a full one). This is exact (the same path, pushed forward; the weights are unchanged), and it makes
the step size scale-free: the base is ``N(0, I)`` in ``z``, whatever the pixel scale, so one
step size works for ``[0, 1]`` pixels, logits and 2D data alike.

Randomness: the kernel draws from PyTorch's global generator. Pass ``seed`` to make a run
reproducible: the global state is forked, seeded, and restored afterwards (the caller's random
stream, e.g. training's, is left exactly as it was). ``seed=None`` draws from the global stream.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch import Tensor
from tqdm.auto import tqdm

from pdebm.energy.base import EnergyModel, GaussianBase, energy_in_chunks, eval_mode
from pdebm.errors import check, positive
from pdebm.samplers.langevin import LangevinConfig, frozen_parameters, langevin

SCHEDULES = ("geometric", "linear")
COVARIANCES = ("full", "diag")
ESS_WARNING = 0.1
"""Below this ESS/N the AIS weights are dominated by a few chains and log Z is not trustworthy."""


def fit_gaussian(x: Tensor, covariance: str = "full", shrinkage: float = 1e-4,
                 prefix: str = "ais") -> GaussianBase:
    """The maximum-likelihood Gaussian of the points ``x`` (N, *shape), fixed (not learnable):
    ``N(mean, Σ + s·I)`` with the full sample covariance ``Σ``, or its diagonal; ``s`` =
    ``shrinkage`` keeps near-constant coordinates (dequantised border pixels) non-singular."""
    check(covariance in COVARIANCES,
          f"{prefix}.covariance={covariance!r} is not one of {list(COVARIANCES)}")
    positive(f"{prefix}.shrinkage", shrinkage, allow_zero=True)
    shape = x.shape[1:]
    flat = x.flatten(1)
    mean = flat.double().mean(0)
    c = flat - mean.to(flat.dtype)
    if covariance == "diag":
        var = c.double().pow(2).mean(0) + shrinkage
        return GaussianBase(mean.float().reshape(shape), var.sqrt().float().reshape(shape),
                            learnable=False, min_std=0.0)
    cov = (c.T @ c).double() / len(flat)
    cov = cov + shrinkage * torch.eye(cov.shape[0], dtype=cov.dtype, device=cov.device)
    tril = torch.linalg.cholesky(cov)
    return GaussianBase(mean.float().reshape(shape), torch.ones(shape), learnable=False,
                        scale_tril=tril.float())


@dataclass
class AISResult:
    """Outcome of :func:`ais_log_z`."""

    log_z: float              # log-mean-exp of the chains' log-weights (Z₀ = 1)
    log_z_se: float           # its standard error by the delta method: sd(w)/(√n·mean(w))
    log_weights: Tensor       # (n_chains,) float64, final AIS log-weights
    samples: Tensor           # (n_chains, *shape) final states (weighted samples of the model)
    ess: float                # effective sample size (Σw)²/Σw² of the final weights
    accept_rate: float | None  # mean MALA acceptance over all temperatures (None for ULA)
    step_size: float          # the final (possibly adapted) step size, in kernel coordinates
    grad_evals: int           # total per-chain energy-gradient evaluations
    betas: Tensor             # (n_temps,) the schedule, ending at 1


@dataclass
class AISLikelihood:
    """Outcome of :func:`ais_log_likelihood`; per-example means over the test points."""

    log_likelihood: float     # nats per example, density of the pixels u ∈ [0, 1]^D
    log_likelihood_se: float  # standard error (test-set sampling and log Z combined)
    log_likelihood_model: float  # nats per example in model space (before the Jacobian)
    bits_per_dim: float       # −(log p(u) − D·log L)/(D·ln 2): discrete L-level images' code length
    bits_per_dim_se: float
    n_dims: int               # D
    ais: AISResult            # log Z, its SE, weights and the final samples

    @property
    def samples(self) -> Tensor:
        return self.ais.samples

    @property
    def ess_fraction(self) -> float:
        return self.ais.ess / len(self.ais.log_weights)

    @property
    def trustworthy(self) -> bool:
        """ESS/N at least :data:`ESS_WARNING` (else a few chains carry the estimate)."""
        return self.ess_fraction >= ESS_WARNING

    def scalars(self) -> dict[str, float]:
        """Flat numbers to log (e.g. as ``ais/<key>``)."""
        s = {"log_likelihood": self.log_likelihood, "log_likelihood_se": self.log_likelihood_se,
             "log_likelihood_model": self.log_likelihood_model,
             "bits_per_dim": self.bits_per_dim, "bits_per_dim_se": self.bits_per_dim_se,
             "log_z": self.ais.log_z, "log_z_se": self.ais.log_z_se,
             "ess_fraction": self.ess_fraction,
             "grad_evals": float(self.ais.grad_evals)}
        if self.ais.accept_rate is not None:
            s["accept_rate"] = self.ais.accept_rate
        return s


def beta_schedule(n_temps: int, schedule: str = "geometric", beta_min: float = 1e-4,
                  prefix: str = "ais") -> Tensor:
    """``n_temps`` increasing inverse temperatures ending at 1 (float64).

    ``linear``: ``t/T``; ``geometric``: ``beta_min … 1`` evenly spaced in log (small steps near
    the base, where the distributions change fastest per unit of β for a sharp model).
    """
    positive(f"{prefix}.n_temps", n_temps)
    check(schedule in SCHEDULES, f"{prefix}.beta_schedule={schedule!r} is not one of {list(SCHEDULES)}")
    if schedule == "linear":
        return torch.arange(1, n_temps + 1, dtype=torch.float64) / n_temps
    check(0.0 < beta_min < 1.0, f"{prefix}.beta_min must be in (0, 1), got {beta_min}")
    if n_temps == 1:
        return torch.ones(1, dtype=torch.float64)
    return torch.logspace(math.log10(beta_min), 0.0, n_temps, dtype=torch.float64)


@torch.no_grad()
def ais_log_z(energy: EnergyModel, n_chains: int = 100, n_temps: int = 1000,
              schedule: str = "geometric", beta_min: float = 1e-4,
              kernel: LangevinConfig | None = None, adapt_step_size: bool = True,
              target_accept: float = 0.574, precondition: bool = True, seed: int | None = None,
              progress: bool = False, prefix: str = "ais",
              start: GaussianBase | None = None) -> AISResult:
    """Estimate ``log Z = log ∫ exp(−E(x)) dx`` of ``energy`` by AIS from a Gaussian ``p₀``.

    Args:
        energy: the model; evaluated in ``eval()`` mode.
        n_chains: independent AIS chains (one batch).
        n_temps: number of inverse temperatures ``β₁ … β_T = 1`` (annealing steps).
        schedule, beta_min: see :func:`beta_schedule`.
        kernel: the Langevin transition at each temperature (``n_steps``, ``step_size``, ``mala``;
            ``noise_scale`` must be ``None`` and ``grad_clip`` is not allowed: both break the
            weights). Default: one MALA step of size 0.1 (in whitened units when preconditioned).
        adapt_step_size: MALA only: after each temperature multiply the step size by
            ``exp(acceptance − target_accept)`` (uses past temperatures only, so every
            transition is still an exact MALA kernel for its ``p_β``).
        target_accept: the acceptance rate the adaptation aims for (0.574 is MALA's optimum).
        precondition: run the chains in the base's whitened coordinates (module docstring).
        seed: seed for a forked global RNG (module docstring); ``None``: the global stream.
        progress: show a tqdm bar over temperatures.
        prefix: config prefix used in error messages (e.g. ``eval.ais``).
        start: the annealing start ``p₀`` (e.g. :func:`fit_gaussian` of the training data, or a
            :class:`~pdebm.energy.base.MixtureBase`, whose chains run unpreconditioned in model
            coordinates); ``None``: the energy's own base (required for a base-less energy).
    """
    positive(f"{prefix}.n_chains", n_chains)
    start = start if start is not None else energy.base
    check(start is not None, f"{prefix}: the energy has no Gaussian base (energy.base=none); "
          "AIS needs a start distribution, e.g. fit_gaussian(training images)")
    kernel = kernel if kernel is not None else LangevinConfig(n_steps=1, step_size=0.1, mala=True)
    kernel.validate(prefix, allow_zero_steps=True)
    check(kernel.noise_scale is None, f"{prefix}.noise_scale must be null for AIS (σ = √ε)")
    check(kernel.grad_clip is None, f"{prefix}.grad_clip must be null for AIS")
    check(0.0 < target_accept < 1.0,
          f"{prefix}.target_accept must be in (0, 1), got {target_accept}")
    betas = beta_schedule(n_temps, schedule, beta_min, prefix)
    device = energy.device
    p0 = start.to(device)
    mu = p0.mu.detach()
    precondition = precondition and isinstance(p0, GaussianBase)  # a mixture: model coordinates

    def to_x(z: Tensor) -> Tensor:
        """Chain coordinates → model space: ``μ + Lz`` (preconditioned) or ``μ + z``."""
        return p0.unwhiten(z) if precondition else mu + z

    def network(z: Tensor) -> Tensor:
        """``g(x) = E(x) + log p₀(x)`` at ``x = to_x(z)``, float64."""
        x = to_x(z)
        return energy(x).double() + p0.log_prob(x).double()

    def tempered(beta: float) -> Callable[[Tensor], Tensor]:
        def e_beta(z: Tensor) -> Tensor:  # E_β(x(z)) up to the constant log |det L|
            x = to_x(z)
            return beta * energy(x) - (1.0 - beta) * p0.log_prob(x)
        return e_beta

    with eval_mode(energy), _seeded(seed, device), frozen_parameters(energy):  # ∇ₓ only
        # x₀ ~ p₀ in either coordinate system (z = x₀ − μ unpreconditioned)
        if precondition:
            z = torch.randn((n_chains, *mu.shape), device=device)
        else:  # the same draws as randn → unwhiten for a Gaussian p₀
            z = p0.sample(n_chains) - mu
        log_w = torch.zeros(n_chains, dtype=torch.float64, device=device)
        # The adapted step size and the acceptance stay on the device (no host sync per
        # temperature): ``step`` is a float64 0-d tensor once adaptation starts.
        step: float | Tensor = kernel.step_size
        rates: list[Tensor] = []
        evals, beta_prev = 0, 0.0
        for beta in tqdm(betas.tolist(), desc="AIS", disable=not progress, leave=False):
            log_w += -(beta - beta_prev) * network(z)
            cfg = dataclasses.replace(kernel, step_size=step)
            res = langevin(tempered(beta), z, cfg, None if kernel.mala else log_w)
            z, evals, beta_prev = res.x, evals + res.grad_evals, beta
            if kernel.mala and res.accept_rate is not None:
                rate = res.accept_rate.double()
                rates.append(rate)
                if adapt_step_size:
                    step = (step * torch.exp(rate - target_accept)).clamp(1e-8, 1e2)
            else:
                log_w = res.log_weights if res.log_weights is not None else log_w
    accept_rate = float(torch.stack(rates).mean()) if rates else None
    log_z, se, ess = _log_mean_exp_stats(log_w)
    check(math.isfinite(log_z), "AIS log-weights are not finite: the energy is NaN/inf on some "
          "chains (try a smaller step size or more temperatures)")
    return AISResult(log_z=log_z, log_z_se=se, log_weights=log_w.cpu(),
                     samples=to_x(z).detach(), ess=ess,
                     accept_rate=accept_rate, step_size=float(step), grad_evals=evals,
                     betas=betas)


@torch.no_grad()
def ais_log_likelihood(energy: EnergyModel, x_test: Tensor, dataset: Any = None,
                       batch_size: int = 1024, **ais_kwargs: Any) -> AISLikelihood:
    """Mean test log-likelihood ``log p(x) = −E(x) − log Z`` with ``log Z`` from AIS.

    With an image ``dataset`` (anything with ``log_det_jacobian(x)`` and ``levels``, e.g.
    :class:`pdebm.data.images.ImageDataset`), the likelihood is converted from model space to
    the pixel space ``[0, 1]^D`` and bits/dim counts the code length of the discrete ``L``-level
    images, ``(−log p(u) + D·log L)/(D·ln 2)`` — the number flow and EBM papers report for
    dequantised images (for MNIST, L = 256: ``8 − log p(u)/(D·ln 2)``). Without a dataset both
    are in model space (no Jacobian, no discretisation term).

    Args:
        energy: the model.
        x_test: model-space test points ``(N, *shape)``, e.g. ``dataset.test``.
        dataset: supplies ``log_det_jacobian`` and ``levels`` (optional).
        batch_size: test points per energy evaluation.
        ais_kwargs: passed to :func:`ais_log_z` (``n_chains``, ``n_temps``, ``kernel``, ``seed``…).
    """
    positive("ais.batch_size", batch_size)
    if dataset is not None and getattr(dataset, "dequantize", True) is False:
        warnings.warn("AIS likelihood of non-dequantised images is not a meaningful density "
                      "(set dataset.dequantize=true)", stacklevel=2)
    result = ais_log_z(energy, **ais_kwargs)
    device = energy.device
    with eval_mode(energy):
        e = energy_in_chunks(energy, x_test, batch_size, device).double().cpu()
    ll_model = -e - result.log_z
    ll = ll_model.clone()
    if dataset is not None and hasattr(dataset, "log_det_jacobian"):
        ll = ll + dataset.log_det_jacobian(x_test.cpu()).double()
    n_dims = math.prod(x_test.shape[1:])
    levels = getattr(dataset, "levels", None) if dataset is not None else None
    discrete = n_dims * math.log(levels) if levels else 0.0
    n = len(ll)
    ll_sd = float(ll.std()) if n > 1 else 0.0
    se = math.sqrt(ll_sd**2 / n + result.log_z_se**2)
    mean_ll = float(ll.mean())
    return AISLikelihood(log_likelihood=mean_ll, log_likelihood_se=se,
                         log_likelihood_model=float(ll_model.mean()),
                         bits_per_dim=(-mean_ll + discrete) / (n_dims * math.log(2)),
                         bits_per_dim_se=se / (n_dims * math.log(2)), n_dims=n_dims, ais=result)


def _log_mean_exp_stats(log_w: Tensor) -> tuple[float, float, float]:
    """``log mean exp(log w)``, its delta-method standard error and the ESS."""
    n = len(log_w)
    m = log_w.max()
    w = torch.exp(log_w - m)
    mean = w.mean()
    log_z = float(m + mean.log())
    se = float(w.std() / (mean * math.sqrt(n))) if n > 1 else float("inf")
    ess = float(w.sum() ** 2 / w.pow(2).sum())
    return log_z, se, ess


@contextlib.contextmanager
def _seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Seed the global generators for the block and restore them afterwards (``None``: no-op)."""
    if seed is None:
        yield
        return
    cuda = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.default_generator.manual_seed(int(seed))
        if cuda:
            with torch.cuda.device(device):
                torch.cuda.manual_seed(int(seed))
        yield

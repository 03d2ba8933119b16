"""The particle sampler (docs/method.md) on prescribed energy paths where the truth is known.

No learning happens here: the tests move the energy's parameters by hand, take the frozen
snapshot before each move and call ``update(before, after)`` as the trainer would. Tolerances
come from the sample size (or from the weighted sample's own standard error).
"""

from __future__ import annotations

import copy
import inspect
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tests.conftest import finite_difference_logdet
from omegaconf import OmegaConf
from torch import Tensor, nn

from pdebm.energy.base import EnergyModel, FrozenEnergy
from pdebm.energy.mlp import MLPEnergy
from pdebm.errors import ConfigError
from pdebm.samplers.particle import ParticleSampler, exact_delta, first_order_delta
from pdebm.step import train_step
from pdebm.samplers.weights import (ExactCurvature, HutchinsonCurvature, ess, hessian,
                                    systematic_resample)

CONF = Path(__file__).resolve().parents[1] / "conf" / "sampler" / "particle.yaml"


# --------------------------------------------------------------------------- energy paths
class ZeroNet(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.new_zeros(x.shape[0])


class GaussianEnergy(EnergyModel):
    """``E = −log N(x; μ, σ²I)``: only the base, so base draws are exact samples."""

    def __init__(self, dim: int = 2) -> None:
        super().__init__((dim,), torch.zeros(dim), torch.ones(dim))
        self.net = ZeroNet()

    def move(self, d_mu: Tensor, scale: float) -> None:
        with torch.no_grad():
            self.base.mu.add_(d_mu)
            self.base.log_sigma.add_(math.log(scale))


class MixtureEnergy(nn.Module):
    """``E = −log Σ_k π_k N(x; m_k, s_k² I)`` in 2D: normalised, exactly sampled, with known
    moments; the means rotate and the scales change along the path."""

    def __init__(self) -> None:
        super().__init__()
        self.means = nn.Parameter(torch.tensor([[1.5, 0.0], [-1.0, 0.5]]))
        self.log_scales = nn.Parameter(torch.tensor([0.5, 0.8]).log())
        self.register_buffer("log_pi", torch.tensor([0.3, 0.7]).log())

    @property
    def device(self) -> torch.device:
        return self.means.device

    def forward(self, x: Tensor) -> Tensor:
        s2 = (2 * self.log_scales).exp()
        log_comp = (-(x[:, None, :] - self.means).pow(2).sum(-1) / (2 * s2)
                    - 2 * self.log_scales - math.log(2 * math.pi) + self.log_pi)
        return -torch.logsumexp(log_comp, 1)

    def sample_base(self, n: int) -> Tensor:
        k = torch.multinomial(self.log_pi.exp(), n, replacement=True)
        return (self.means[k] + self.log_scales.exp()[k, None] * torch.randn(n, 2)).detach()

    def frozen(self) -> FrozenEnergy:
        return FrozenEnergy(self)

    def step(self, n_steps: int) -> None:
        """One of ``n_steps`` steps: rotate the means by 0.6 rad in all, scales ×1.3 and ×0.8."""
        a = 0.6 / n_steps
        rot = torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
        with torch.no_grad():
            self.means.copy_(self.means @ rot.T)
            self.log_scales.add_(torch.tensor([math.log(1.3), math.log(0.8)]) / n_steps)

    def moments(self) -> tuple[Tensor, Tensor]:
        """Exact ``E[x]`` and ``E[x²]`` per coordinate."""
        pi, s2, m = self.log_pi.exp()[:, None], (2 * self.log_scales).exp()[:, None], self.means
        return (pi * m).sum(0).detach(), (pi * (m**2 + s2)).sum(0).detach()


def mlp_energy(dim: int = 2, dtype: torch.dtype = torch.float32) -> MLPEnergy:
    """A small MLP energy whose network is not zero (so it differs from its base)."""
    return MLPEnergy((dim,), torch.zeros(dim), torch.ones(dim), hidden=16, depth=2,
                     zero_init_last=False).to(dtype)


def perturb_(energy: nn.Module, scale: float) -> None:
    """Move every parameter by ``scale`` times a random direction."""
    with torch.no_grad():
        for p in energy.parameters():
            p.add_(scale * torch.randn_like(p))


def delta_gradient_of_a_step(dim: int, n: int, scale: float, seed: int) -> tuple[Tensor, Tensor]:
    """``(∇ₓδE with its graph, x)`` for a float64 MLP energy moved by a random step of size
    ``scale``, at ``n`` standard-normal points: the input of the curvature estimators."""
    torch.manual_seed(seed)
    energy = mlp_energy(dim, torch.float64)
    before = energy.frozen()
    perturb_(energy, scale)
    x = torch.randn(n, dim, dtype=torch.float64, requires_grad=True)
    _, g = exact_delta(before, energy, x, create_graph=True)
    return g, x


def trainer_step(energy: nn.Module, opt: torch.optim.Optimizer, sampler: ParticleSampler,
                 data: Tensor, alpha: float) -> None:
    """One training step: the trainer's own :func:`pdebm.step.train_step` (the sampler contract)."""
    parts = SimpleNamespace(energy=energy, sampler=sampler, optimizer=opt, scheduler=None)
    train_step(parts, data, alpha=alpha)


# ------------------------------------------------------------------ transport on Gaussians
@pytest.mark.parametrize("field", ["optimal", "none"])
def test_optimal_transport_tracks_a_gaussian_path_without_langevin(field: str) -> None:
    """Location and scale steps alternate (c* is exact for each family, not for their sum).
    Over 100 steps μ goes from 0 to (3, −2) and σ from 1 to 1.5; with K = 0 only the
    transport can move the particles."""
    torch.manual_seed(0)
    n, n_moves = 50000, 50
    energy = GaussianEnergy()
    sampler = ParticleSampler(n_samples=n, field=field, n_steps=0)
    sampler.negatives(energy)
    d_mu, scale = torch.tensor([3.0, -2.0]) / n_moves, 1.5 ** (1 / n_moves)
    for k in range(2 * n_moves):
        before = energy.frozen()
        if k % 2 == 0:
            energy.move(d_mu, 1.0)
        else:
            energy.move(torch.zeros(2), scale)
        sampler.update(before, energy)
        if k % 10 != 9:
            continue
        x = sampler.negatives(energy)[0].detach()
        mu, log_sigma = energy.base.mu.detach(), float(energy.base.log_sigma[0].detach())
        var = math.exp(2 * log_sigma)
        # The transport is affine, so the initial draw's sampling error is carried along: the
        # mean's σ/√N and the covariance's σ²√(2/N). c* is estimated from the particles: for
        # the location steps from their variance (relative error √(2/N)), times the distance
        # moved; for the scale steps from the spread of |x − μ|² (relative error √(8/N)), the
        # same at every step, so it adds up to 2 log σ √(8/N) in the variance. Each ×5, plus
        # 1 % for the first-order accuracy of the scale steps.
        tol_mean = 5 * (math.sqrt(var / n) + float(mu.norm()) * math.sqrt(2 / n))
        tol_cov = var * (5 * (math.sqrt(2 / n) + 2 * log_sigma * math.sqrt(8 / n)) + 0.01)
        mean_err = float((x.mean(0) - mu).norm())
        cov_err = float((torch.cov(x.T) - var * torch.eye(2)).abs().max())
        if field == "optimal":
            assert mean_err < tol_mean and cov_err < tol_cov, (k, mean_err, cov_err)
    if field == "none":
        assert mean_err > 10 * tol_mean and cov_err > 5 * tol_cov
    # ∇δE: 2N per step
    assert sampler.grad_evals == (100 * 2 * n if field == "optimal" else 0)


# ---------------------------------------------------------------- weights on mixture paths
@pytest.mark.parametrize("settings", [
    {"field": "none"},
    {"field": "optimal"},
    {"field": "optimal", "logdet": "hutchinson"},
    {"field": "optimal", "ess_threshold": 0.9, "n_steps": 5,
     "kernel": {"mala": True, "step_size": 0.05}},
], ids=["reweight-only", "optimal-exact-logdet", "optimal-hutchinson", "optimal-resample-mala"])
def test_weighted_estimates_follow_a_gaussian_mixture_path(settings: dict) -> None:
    torch.manual_seed(0)
    n, n_steps = 20000, 20
    energy = MixtureEnergy()
    sampler = ParticleSampler(**{"n_samples": n, "weights": True, "init": "exact",
                                 "n_steps": 0, "ess_threshold": 0.0, **settings})
    sampler.negatives(energy)
    for _ in range(n_steps):
        before = energy.frozen()
        energy.step(n_steps)
        sampler.update(before, energy)
    x, log_w = sampler.negatives(energy)
    x, w = x.detach(), torch.softmax(log_w, 0)
    if "ess_threshold" in settings:
        assert sampler.stats()["resampled"] in (0.0, 1.0)
        assert sampler.stats()["accept_rate"] > 0.5
    for f, exact in zip((x, x**2), energy.moments()):
        est = (w[:, None] * f).sum(0)
        se = (w[:, None].pow(2) * (f - est).pow(2)).sum(0).sqrt()  # self-normalised IS error
        assert torch.all((est - exact).abs() < 5 * se), (est, exact, se)
    if settings["field"] == "none":  # the particles alone are far off: the weights do the work
        unweighted_err = (x.mean(0) - energy.moments()[0]).abs()
        assert torch.any(unweighted_err > 10 * x.std(0) / math.sqrt(n))


# ---------------------------------------------------------------------- the log-determinant
def test_transport_logdet_matches_finite_difference_jacobian() -> None:
    """``log|det ∇T|`` of two substeps of ``c/2`` (the map the sampler applies) against the
    central-difference Jacobian of that same map, in float64."""
    torch.manual_seed(1)
    energy = mlp_energy(3, torch.float64)
    before = energy.frozen()
    perturb_(energy, 0.05)
    sampler = ParticleSampler(n_samples=16, field="gradient", weights=True, logdet="exact",
                              substeps=2, n_steps=0, init="exact")
    sampler.x = torch.randn(16, 3, dtype=torch.float64)
    sampler.log_w = torch.zeros(16, dtype=torch.float64)
    with torch.enable_grad():
        moved, log_det, c = sampler._transport(before, energy)
    assert c == 1.0  # the diffeomorphism guard did not shrink c, so T is the map below

    def transport(x: Tensor) -> Tensor:
        for _ in range(2):
            x = x - 0.5 * exact_delta(before, energy, x.detach().requires_grad_(True))[1]
        return x

    sign, fd_log_det = finite_difference_logdet(transport, sampler.x)
    assert torch.allclose(moved, transport(sampler.x), atol=1e-12)
    assert torch.all(sign > 0)
    assert torch.allclose(log_det, fd_log_det, atol=1e-7), (log_det, fd_log_det)
    assert float(log_det.abs().mean()) > 1e-3  # a non-trivial map


def test_hutchinson_traces_are_unbiased() -> None:
    """Mean over probes of ``zᵀHz`` and ``|Hz|²`` against ``tr H`` and ``tr H²`` from the full
    Hessian, within 5 standard errors (the Rademacher variance of ``zᵀHz`` is
    ``2Σ_{i≠j}H_ij²``); hence the estimated log-det is unbiased for its two series terms."""
    g, x = delta_gradient_of_a_step(dim=5, n=4, scale=0.1, seed=2)
    h = hessian(g, x)
    n_probes = 400
    probes = HutchinsonCurvature.of(g, x, n_probes)
    trace, trace_sq = h.diagonal(dim1=1, dim2=2).sum(1), (h @ h).diagonal(dim1=1, dim2=2).sum(1)
    off = h - torch.diag_embed(h.diagonal(dim1=1, dim2=2))
    se_trace = (2 * off.pow(2).sum((1, 2)) / n_probes).sqrt()
    se_sq = probes.sq_norm.std(1) / math.sqrt(n_probes)
    assert torch.all((probes.quad.mean(1) - trace).abs() < 5 * se_trace)
    assert torch.all((probes.sq_norm.mean(1) - trace_sq).abs() < 5 * se_sq)
    assert float(se_trace.min()) > 0  # the probes are genuinely random
    c = 0.1
    exact = ExactCurvature.of(g, x).logdet(c)
    estimate = -c * probes.quad.mean(1) - c**2 / 2 * probes.sq_norm.mean(1)
    assert torch.allclose(probes.logdet(c), estimate)
    series = -c * trace - c**2 / 2 * trace_sq
    assert torch.all((series - exact).abs() < 2 * c**3 * trace_sq.sqrt() ** 3)  # O(c³) remainder


# ------------------------------------------------------------------------ first-order δE
def test_first_order_delta_approaches_exact_as_the_step_shrinks() -> None:
    """The same energy moved along the same direction by shrinking steps, in float64: the
    first-order δE and ∇ₓδE have relative error O(step)."""
    errors = []
    for step in (1e-2, 1e-3, 1e-4):
        torch.manual_seed(3)
        energy = mlp_energy(2, torch.float64)
        before = energy.frozen()
        perturb_(energy, step)
        x = torch.randn(64, 2, dtype=torch.float64, requires_grad=True)
        d_exact, g_exact = exact_delta(before, energy, x)
        d_first, g_first = first_order_delta(before, energy, x)
        errors.append((float((d_first - d_exact).abs().max() / d_exact.abs().max()),
                       float((g_first - g_exact).abs().max() / g_exact.abs().max())))
    for (e_big, g_big), (e_small, g_small) in zip(errors, errors[1:]):
        assert e_small < 0.2 * e_big and g_small < 0.2 * g_big, errors
    assert errors[-1][0] < 1e-3 and errors[-1][1] < 1e-3, errors


# ------------------------------------------------------------------------------- resampling
def test_systematic_resampling_preserves_weighted_expectations() -> None:
    torch.manual_seed(5)
    n = 1000
    log_w = 2 * torch.randn(n)
    f = torch.randn(n) + 3
    w_bar = torch.softmax(log_w, 0)
    weighted = float((w_bar * f).sum())
    counts = torch.bincount(systematic_resample(log_w), minlength=n).double()
    assert torch.all((counts - n * w_bar.double()).abs() < 1)  # ⌊Nw̄⌋ or ⌈Nw̄⌉ copies each
    reps = torch.stack([f[systematic_resample(log_w)].mean() for _ in range(300)])
    assert abs(float(reps.mean()) - weighted) < 5 * float(reps.std()) / math.sqrt(300) + 1e-6
    assert abs(ess(log_w) - 1 / float(w_bar.pow(2).sum())) < 1e-6 * n


# -------------------------------------------------------------------------------- resume
@pytest.mark.parametrize("settings", [
    {},
    {"weights": True, "ess_threshold": 0.99, "refresh": 0.2, "substeps": 2},
    {"delta": "first_order", "weights": True, "kernel": {"mala": True}, "logdet": "hutchinson"},
], ids=["unweighted", "weighted-resample-refresh", "first-order-hutchinson-mala"])
def test_state_dict_round_trip_reproduces_the_next_update(settings: dict) -> None:
    torch.manual_seed(10)
    data = torch.randn(64, 2) * 0.5 + 1
    energy = mlp_energy()
    opt = torch.optim.Adam(energy.parameters(), lr=1e-2)
    make = lambda: ParticleSampler(n_samples=64, n_steps=2, burn_in=5, **settings)  # noqa: E731
    sampler = make()
    for _ in range(3):
        trainer_step(energy, opt, sampler, data, alpha=0.1)
    saved = copy.deepcopy((sampler.state_dict(), energy.state_dict(), opt.state_dict(),
                           torch.get_rng_state()))
    trainer_step(energy, opt, sampler, data, alpha=0.1)
    expected = (sampler.x.clone(), sampler.log_w.clone(), sampler.grad_evals)

    resumed, energy2 = make(), mlp_energy()
    opt2 = torch.optim.Adam(energy2.parameters(), lr=1e-2)
    resumed.load_state_dict(saved[0])
    energy2.load_state_dict(saved[1])
    opt2.load_state_dict(saved[2])
    torch.set_rng_state(saved[3])
    trainer_step(energy2, opt2, resumed, data, alpha=0.1)
    assert torch.equal(resumed.x, expected[0]) and torch.equal(resumed.log_w, expected[1])
    assert resumed.grad_evals == expected[2]
    assert not torch.equal(expected[0], saved[0]["x"])  # the update did move the particles


@pytest.mark.parametrize("settings", [
    {},
    {"weights": True, "delta": "first_order", "ess_threshold": 0.99, "refresh": 0.25},
], ids=["unweighted", "weighted-hutchinson"])
def test_image_shaped_particles(settings: dict) -> None:
    """(N, C, H, W) particles; 16 dimensions > 10, so ``logdet: auto`` uses one probe."""
    torch.manual_seed(12)
    n, shape = 32, (1, 4, 4)
    energy = MLPEnergy(shape, torch.zeros(shape), torch.ones(shape), hidden=16, depth=1)
    opt = torch.optim.Adam(energy.parameters(), lr=1e-2)
    sampler = ParticleSampler(n_samples=n, n_steps=2, **settings)
    data = torch.rand(n, *shape)
    for _ in range(3):
        trainer_step(energy, opt, sampler, data, alpha=0.1)
    x, log_w = sampler.negatives(energy)
    assert x.shape == (n, *shape) and log_w.shape == (n,)
    assert torch.isfinite(x).all() and torch.isfinite(log_w).all() and sampler.stats()["c"] > 0
    # per update: ∇δE 2N, then one probe 2N, 5 power iterations 10N, Langevin 3N (weighted
    # ULA) — or Langevin's 2N (plain ULA)
    per_update = 17 * n if sampler.weighted else 4 * n
    assert sampler.grad_evals == 3 * per_update


# ----------------------------------------------------------------- initialisation and config
def test_init_auto_burns_in_only_when_the_model_is_not_its_base() -> None:
    torch.manual_seed(11)
    zero_net = MLPEnergy((2,), torch.zeros(2), torch.ones(2), hidden=8, depth=1)
    exact = ParticleSampler(n_samples=32, burn_in=7, weights=True)
    exact.negatives(zero_net)
    assert exact.grad_evals == 0 and torch.all(exact.log_w == 0)
    burned = ParticleSampler(n_samples=32, burn_in=7)
    burned.negatives(mlp_energy())
    assert burned.grad_evals == 7 * 32


def test_yaml_lists_every_constructor_argument_and_bad_values_name_their_key() -> None:
    keys = set(OmegaConf.load(CONF)) - {"_target_"}
    assert keys == set(inspect.signature(ParticleSampler).parameters)
    with pytest.raises(ConfigError, match="sampler.field"):
        ParticleSampler(field="learned")
    with pytest.raises(ConfigError, match="sampler.ess_threshold"):
        ParticleSampler(ess_threshold=1.5)

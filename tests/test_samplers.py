"""The Langevin kernel and the MCMC samplers draw from a fixed 2D Gaussian energy."""

import math

import pytest
import torch

from pdebm.energy.mlp import MLPEnergy
from pdebm.errors import ConfigError
from pdebm.samplers.langevin import LangevinConfig, langevin
from pdebm.samplers.pcd import PCD
from pdebm.samplers.sgld import SGLD

MU = torch.tensor([1.0, -0.5])
STD = torch.tensor([0.8, 0.5])
COV = torch.diag(STD**2)


def gaussian_energy():
    """A zero-initialised MLP energy is exactly its Gaussian base N(MU, diag STD²)."""
    e = MLPEnergy((2,), MU, STD, hidden=8, depth=1, zero_init_last=True)
    for p in e.parameters():
        p.requires_grad_(False)
    return e


def check_moments(x, n_eff, bias=0.0):
    """Mean within 4 standard errors, covariance entries within 4 s.e. (+ a known bias bound)."""
    se_mean = STD / math.sqrt(n_eff)
    assert torch.all((x.mean(0) - MU).abs() < 4 * se_mean + bias), x.mean(0)
    cov = torch.cov(x.T)
    se_cov = torch.sqrt((COV.diag()[:, None] * COV.diag()[None, :] + COV**2) / n_eff)
    assert torch.all((cov - COV).abs() < 4 * se_cov + bias), cov


def start_far(n):
    return torch.rand(n, 2) * 8 - 4  # uniform on [−4, 4]², far from the target


def test_mala_samples_gaussian():
    torch.manual_seed(0)
    out = langevin(gaussian_energy(), start_far(4000), LangevinConfig(n_steps=300, step_size=0.1, mala=True))
    assert 0.5 < out.accept_rate <= 1.0
    assert out.grad_evals == 301 * 4000
    check_moments(out.x, 4000)


def test_ula_samples_gaussian_up_to_discretisation_bias():
    torch.manual_seed(1)
    out = langevin(gaussian_energy(), start_far(4000), LangevinConfig(n_steps=400, step_size=0.01))
    assert out.grad_evals == 400 * 4000
    # ULA's stationary variance for a Gaussian is σ²/(1 − ε/(4σ²)): ≤ 1.3 % too wide here.
    check_moments(out.x, 4000, bias=0.01)


def test_ula_weights_correct_for_discretisation():
    """Weighted ULA moves with a large step: the weights undo the bias on E[x]."""
    torch.manual_seed(2)
    x0 = MU + STD * torch.randn(20000, 2)
    out = langevin(gaussian_energy(), x0, LangevinConfig(n_steps=1, step_size=0.5),
                   log_weights=torch.zeros(20000))
    w = torch.softmax(out.log_weights, 0)
    var_w = (w[:, None] * (out.x - (w[:, None] * out.x).sum(0)) ** 2).sum(0)
    var_u = out.x.var(0)
    assert torch.all((var_w - STD**2).abs() < (var_u - STD**2).abs())


def test_sgld_from_uniform_noise_samples_gaussian():
    torch.manual_seed(3)
    s = SGLD(n_samples=4000, n_steps=300, kernel={"step_size": 0.05, "mala": True}, init="uniform", uniform_box=(-4, 4))
    x, log_w = s.negatives(gaussian_energy())
    assert torch.all(log_w == 0) and s.grad_evals == 301 * 4000
    check_moments(x, 4000)


def test_pcd_chains_converge_to_gaussian():
    torch.manual_seed(4)
    s = PCD(n_samples=2000, buffer_size=2000, reinit_prob=0.0, n_steps=20,
            kernel={"step_size": 0.05, "mala": True}, init="uniform", uniform_box=(-4, 4))
    e = gaussian_energy()
    for _ in range(15):  # 300 persistent steps in total
        x, _ = s.negatives(e)
    check_moments(x, 2000)
    state = s.state_dict()
    assert state["buffer"].shape == (2000, 2)


def test_pcd_replay_buffer_reinitialises():
    torch.manual_seed(5)
    s = PCD(n_samples=1000, buffer_size=5000, reinit_prob=0.5, n_steps=1)
    s.negatives(gaussian_energy())
    assert abs(s.stats()["reinit_frac"] - 0.5) < 0.08


@pytest.mark.parametrize("kwargs,match", [
    ({"n_steps": 0}, "sampler.n_steps must be > 0"),
    ({"kernel": {"step_size": -1.0}}, "langevin.step_size must be > 0"),
    ({"kernel": {"step": 0.1}}, "langevin: unknown key"),
    ({"n_samples": 0}, "sampler.n_samples must be > 0"),
    ({"init": "zeros"}, "sampler.init='zeros'"),
    ({"kernel": {"mala": True, "noise_scale": 0.5}}, "mala=true needs noise_scale=null"),
])
def test_bad_sampler_settings(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        SGLD(**kwargs)


def test_pcd_buffer_smaller_than_batch():
    with pytest.raises(ConfigError, match="buffer_size"):
        PCD(n_samples=100, buffer_size=10)

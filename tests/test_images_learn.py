"""Issue 10: Fashion-MNIST offline, base-less energies and the authors' network, AIS from a
fitted Gaussian (its start distribution, the precondition=False start, ESS and T/4T reporting),
the ZCA model space and the exact Gaussian references."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import pdebm.eval as evaluate_mod
from pdebm.config import compose_config
from pdebm.data import images
from pdebm.data.images import Digits, FashionMNIST
from pdebm.energy.base import EnergyModel, GaussianBase
from pdebm.energy.conv import ConvEnergy, MNISTSmallConvEnergy
from pdebm.errors import ConfigError
from pdebm.metrics.ais import ais_log_likelihood, ais_log_z, fit_gaussian
from pdebm.samplers.particle import ParticleSampler
from pdebm.train import train

FASHION_DIR = Path(images.FASHION_MNIST_SYSTEM_DIR)
needs_fashion = pytest.mark.skipif(
    not (FASHION_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason=f"Fashion-MNIST files not installed in {FASHION_DIR} "
           "(apt-get install dataset-fashion-mnist)")


class Quadratic(EnergyModel):
    """``E(x) = ½‖(x − m)/s‖² + c``, ``log Z = D·log(s√(2π)) − c``, with base ``base``
    (``gaussian``: mean 0.2, std 2, so the network is ``E + log base``; ``none``: no base)."""

    def __init__(self, base: str, shape=(1, 3, 3), m=1.0, s=0.5, c=3.0) -> None:
        super().__init__(shape, torch.full(shape, 0.2), torch.full(shape, 2.0), base=base)
        self.m, self.s, self.c = m, s, c

    def forward(self, x):
        return 0.5 * ((x - self.m) / self.s).pow(2).flatten(1).sum(1) + self.c

    def log_z(self) -> float:
        return math.prod(self.data_shape) * math.log(self.s * math.sqrt(2 * math.pi)) - self.c


def test_ais_without_preconditioning_starts_from_the_base():
    """The bug: precondition=False started the chains from N(μ, I), not the base N(μ, 4I)."""
    e = Quadratic("gaussian")
    r = ais_log_z(e, n_chains=512, n_temps=200, beta_min=1e-3, precondition=False, seed=0)
    assert abs(r.log_z - e.log_z()) < 4 * r.log_z_se + 0.05, (r.log_z, e.log_z())
    # with few temperatures the weights are dominated by the start: a wrong start shows
    short = ais_log_z(e, n_chains=4096, n_temps=1, precondition=False, seed=0)
    assert abs(short.log_z - e.log_z()) < 4 * short.log_z_se + 0.1, (short.log_z, e.log_z())


@pytest.mark.parametrize("covariance", ["full", "diag"])
def test_ais_from_a_fitted_gaussian_and_base_less_energies(covariance):
    e = Quadratic("none")
    with pytest.raises(ConfigError, match="no Gaussian base"):
        ais_log_z(e, n_chains=4, n_temps=2)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2000, 1, 3, 3, generator=g) * torch.linspace(0.3, 1.5, 9).view(1, 1, 3, 3)
    start = fit_gaussian(x, covariance, 1e-4)
    assert start.full == (covariance == "full")
    r = ais_log_z(e, n_chains=256, n_temps=200, beta_min=1e-3, seed=0, start=start)
    assert abs(r.log_z - e.log_z()) < 4 * r.log_z_se + 0.05, (r.log_z, e.log_z())
    assert 1.0 <= r.ess <= 256.0


def test_full_covariance_gaussian_base_matches_torch():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(6, 6, generator=g)
    cov = a @ a.T + 0.1 * torch.eye(6)
    mean = torch.randn(1, 2, 3, generator=g)
    base = GaussianBase(mean, torch.ones(1, 2, 3), learnable=False,
                        scale_tril=torch.linalg.cholesky(cov))
    x = torch.randn(5, 1, 2, 3, generator=g)
    ref = torch.distributions.MultivariateNormal(mean.flatten(), cov).log_prob(x.flatten(1))
    assert torch.allclose(base.log_prob(x), ref, atol=1e-4)
    assert torch.allclose(base.unwhiten(base.whiten(x)), x, atol=1e-5)
    s = base.sample(20000, torch.Generator().manual_seed(2)).flatten(1)
    assert torch.allclose(torch.cov(s.T), cov, atol=0.15 * float(cov.abs().max()))


def test_base_less_energies_and_the_authors_network():
    e = ConvEnergy((1, 8, 8), torch.zeros(1, 8, 8), torch.ones(1, 8, 8), channels=[4],
                   base="none")
    x = torch.rand(3, 1, 8, 8)
    assert e.base is None and torch.equal(e(x), torch.zeros(3))  # zero-init net, no base term
    assert e.sample_base(4).shape == (4, 1, 8, 8)
    with pytest.raises(ConfigError, match="energy.base='flat'"):
        ConvEnergy((1, 8, 8), torch.zeros(1, 8, 8), torch.ones(1, 8, 8), base="flat")
    torch.manual_seed(0)
    net = MNISTSmallConvEnergy((1, 28, 28), torch.zeros(1, 28, 28), torch.ones(1, 28, 28))
    convs = [m for m in net.net if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64] * 5 and net.base is None
    assert [c.kernel_size[0] for c in convs] == [3, 4, 4, 4, 3]
    out = net(torch.rand(2, 1, 28, 28))
    assert out.shape == (2,) and torch.isfinite(out).all() and out.abs().sum() > 0
    with pytest.raises(ConfigError, match="28×28"):
        MNISTSmallConvEnergy((1, 8, 8), torch.zeros(1, 8, 8), torch.ones(1, 8, 8))


def test_authors_refresh_runs_cold_langevin_and_refuses_weights():
    e = ConvEnergy((1, 8, 8), torch.zeros(1, 8, 8), torch.ones(1, 8, 8), channels=[4],
                   base="none", zero_init_last=False)
    s = ParticleSampler(n_samples=20, field="gradient", delta="first_order", weights=False,
                        n_steps=1, kernel={"step_size": 1.0}, refresh=0.5, refresh_steps=3, init="burn_in",
                        burn_in=2)
    x, _ = s.negatives(e)
    assert s.grad_evals == 2 * 20  # burn-in: ULA evaluates ∇E once per step
    before = e.frozen()
    s.update(before, e)
    # transport (first-order: 2N) + 1 correction step (N) + 3 refresh steps on 10 particles
    assert s.grad_evals == 40 + 40 + 20 + 3 * 10
    with pytest.raises(ConfigError, match="refresh_steps > 0 needs weights=false"):
        ParticleSampler(weights=True, refresh_steps=10)


def test_zca_model_space_initial_model_is_the_full_gaussian():
    """AIS of the untrained model reproduces its base's exact likelihood, which in the ZCA space
    is the fitted full-covariance Gaussian's (the reference of the results tables)."""
    d = Digits(transform="zca")
    u = torch.rand(4, 1, 8, 8, dtype=torch.float64)
    assert torch.allclose(d.to_images(d.to_model(u)), u, atol=1e-9)
    model = ConvEnergy(d.shape, d.mean, d.std, channels=[4], learn_base=False)
    res = ais_log_likelihood(model, d.test, dataset=d, n_chains=16, n_temps=5, seed=0)
    g = fit_gaussian(Digits().statistics_images().double(), "full", 1e-4).double()
    exact = float(g.log_prob(Digits().test.double()).mean())
    assert abs(res.ais.log_z) < 1e-9 and abs(res.log_likelihood - exact) < 1e-3, exact
    assert 49.0 < exact < 51.0  # the reference (50.01 with its own fit)


def test_fashion_missing_directory_names_the_package(tmp_path, monkeypatch):
    monkeypatch.setattr(FashionMNIST, "SYSTEM_DIRS", (str(tmp_path / "system"),))
    monkeypatch.setenv("PDEBM_DATA", str(tmp_path / "nowhere"))  # the default root, then the system's
    with pytest.raises(ConfigError) as err:
        FashionMNIST()
    msg = str(err.value)
    assert "\n" not in msg and "apt-get install dataset-fashion-mnist" in msg
    assert str(tmp_path / "system") in msg


@needs_fashion
def test_fashion_mnist_trains_from_the_system_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("PDEBM_DATA", str(tmp_path / "none"))  # the default root holds nothing
    cfg = compose_config(["experiment=fashion_quick",
                          "steps=2", "batch_size=16", "dataset.n_train=64", "dataset.n_test=32",
                          "dataset.n_stats=64", "eval_every=1", "ckpt_every=0", "progress=false",
                          "num_threads=1", "eval.mmd_points=16", "sampler.n_steps=1",
                          "sampler.burn_in=1"], run_dir=tmp_path / "run")
    final = train(cfg)
    assert math.isfinite(final["mmd2"]) and (tmp_path / "run" / "checkpoints").is_dir()


@needs_fashion
def test_paper_fashion_preset_composes_and_runs(tmp_path):
    cfg = compose_config(["experiment=paper_fashion", "steps=2", "batch_size=8",
                          "dataset.n_train=32", "dataset.n_test=16", "dataset.n_stats=32",
                          "eval_every=1", "ckpt_every=0", "progress=false", "num_threads=1",
                          "eval.mmd_points=8", "sampler.n_steps=1", "sampler.burn_in=1",
                          "sampler.refresh_steps=1", "energy.nc=8"], run_dir=tmp_path / "run")
    assert cfg.energy.base == "none" and cfg.sampler.refresh_noise_scale == 0.005
    assert cfg.langevin.step_size == 1.0 and cfg.sampler.kernel.step_size == 1.0
    assert cfg.lr == 1e-4 and cfg.batch_size == 8
    final = train(cfg)
    assert math.isfinite(final["mmd2"])


def test_eval_reports_convergence_start_and_ess_warning(tmp_path, monkeypatch):
    cfg = compose_config(["experiment=digits_conv", "steps=2", "batch_size=16", "eval_every=1",
                          "ckpt_every=0", "progress=false", "num_threads=1",
                          "energy.channels=[4]", "sampler.n_steps=1"], run_dir=tmp_path / "run")
    train(cfg)
    monkeypatch.setattr(evaluate_mod, "ESS_WARNING", 1.01)  # every estimate is now "untrusted"
    ev = compose_config([f"run={tmp_path / 'run'}", "n_chains=8", "n_temps=3",
                         "n_samples_grid=0", "progress=false"], config_name="eval")
    report = evaluate_mod.evaluate(ev)
    assert [c["n_temps"] for c in report["convergence"]] == [3, 12]
    assert report["n_temps"] == 12 and "log_likelihood_change" in report
    assert 0 < report["ess_fraction"] <= 1 and 49 < report["start_log_likelihood"] < 51
    assert any("ESS/N" in w for w in report["warnings"])
    saved = json.loads((tmp_path / "run" / "ais.json").read_text())
    assert saved["warnings"] == report["warnings"]

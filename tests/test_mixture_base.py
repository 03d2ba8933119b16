"""The fitted Gaussian-mixture base (energy.base=mixture): density, sampling, AIS from it, and the
build/eval plumbing (fitted at build, restored from the state at eval)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pdebm.config import compose_config as compose
from pdebm.data.images import Digits
from pdebm.energy.base import MixtureBase
from pdebm.energy.conv import ConvEnergy
from pdebm.errors import ConfigError
from pdebm.metrics.ais import ais_log_likelihood
from tests.conftest import SCRIPTS_DIR, load_script


@pytest.fixture(scope="module")
def digits():
    return Digits(transform="zca")


def test_mixture_log_prob_matches_sklearn_and_samples_match_moments(digits):
    from sklearn.mixture import GaussianMixture

    x = digits.statistics_images()
    base = MixtureBase(digits.shape, 3, 0.03).fit(x)
    ref = GaussianMixture(3, covariance_type="full", reg_covar=0.03, random_state=0,
                          max_iter=200).fit(x.flatten(1).double().numpy())
    ours = base.log_prob(digits.test[:50]).double().numpy()
    assert np.allclose(ours, ref.score_samples(digits.test[:50].flatten(1).double().numpy()),
                       atol=1e-2)
    g = torch.Generator().manual_seed(0)
    s = base.sample(4000, generator=g)
    assert s.shape == (4000, *digits.shape)
    # the mixture's mean and total variance are reproduced by its draws
    assert torch.allclose(s.mean(0), base.mu, atol=0.1)
    cov = torch.as_tensor(ref.covariances_).float()
    pi = torch.as_tensor(ref.weights_).float()
    mean = torch.as_tensor(ref.means_).float()
    total_var = (pi[:, None] * (cov.diagonal(dim1=1, dim2=2) + mean**2)).sum(0) - base.mu.flatten()**2
    assert torch.allclose(s.flatten(1).var(0), total_var, rtol=0.15, atol=0.05)


def test_untrained_mixture_energy_is_its_base_and_ais_from_it_is_exact(digits):
    torch.manual_seed(0)
    e = ConvEnergy(digits.shape, digits.mean, digits.std, channels=[8], base="mixture",
                   base_components=3, base_reg=0.03)
    assert e.needs_base_fit
    e.fit_base(digits.statistics_images())
    x = digits.test[:20]
    assert torch.allclose(e(x), -e.base.log_prob(x), atol=1e-4)
    ll = ais_log_likelihood(e, digits.test, dataset=digits, n_chains=8, n_temps=5, seed=0)
    exact = float((e.base.log_prob(digits.test) + digits.log_det_jacobian(digits.test)).mean())
    assert abs(ll.ais.log_z) < 1e-3  # Z of a normalised base is 1, whatever the chains did
    assert ll.log_likelihood == pytest.approx(exact, abs=1e-2)


def test_mixture_base_options_are_checked(digits):
    with pytest.raises(ConfigError, match="base_components"):
        ConvEnergy(digits.shape, digits.mean, digits.std, base="mixture", base_components=0)
    with pytest.raises(ConfigError, match="base_reg"):
        ConvEnergy(digits.shape, digits.mean, digits.std, base="mixture", base_reg=-1.0)
    with pytest.raises(ConfigError, match="energy.base="):
        ConvEnergy(digits.shape, digits.mean, digits.std, base="mixtures")


def test_build_fits_the_mixture_and_rejects_2d_data():
    from pdebm.build import build_data_and_energy

    cfg = compose(["dataset=digits", "dataset.transform=zca", "energy=conv",
                   "energy.base=mixture", "energy.base_components=2", "energy.base_reg=0.03"])
    ds, e = build_data_and_energy(cfg)
    assert math.isfinite(float(e(ds.test[:4]).sum()))
    assert float(e.base.log_pi.exp().sum()) == pytest.approx(1.0, abs=1e-5)
    _, unfitted = build_data_and_energy(cfg, fit_base=False)
    unfitted.load_state_dict(e.state_dict())
    assert torch.equal(unfitted(ds.test[:4]), e(ds.test[:4]))
    with pytest.raises(ConfigError, match="image data"):
        build_data_and_energy(compose(["dataset=moons", "energy.base=mixture"]))


# digits 2, 3, 6 at 4:2:1 on a base of one full-covariance Gaussian per class
CLASS_MIXTURE = ["dataset=digits", "dataset.transform=zca", "dataset.classes=[2,3,6]",
                 "dataset.class_weights=[4,2,1]", "energy=conv", "energy.base=mixture",
                 "energy.base_components=3", "energy.base_fit=classes", "energy.base_reg=0.03"]


def test_class_fitted_mixture_has_one_gaussian_per_class_and_uniform_weights_when_asked():
    from pdebm.build import build_data_and_energy

    ds, fitted = build_data_and_energy(compose(CLASS_MIXTURE))
    x = ds.statistics_images().flatten(1).double()
    y = ds.train_labels[:len(x)]
    for k, c in enumerate([2, 3, 6]):  # components in the order of the sorted class labels
        xc = x[y == c]
        assert torch.allclose(fitted.base.means[k].double(), xc.mean(0), atol=1e-5)
        cov = fitted.base.scale_tril[k].double() @ fitted.base.scale_tril[k].double().T
        assert torch.allclose(cov, torch.cov(xc.T) + 0.03 * torch.eye(x.shape[1],
                                                                       dtype=torch.float64),
                              atol=1e-4)
        assert float(fitted.base.log_pi[k].exp()) == pytest.approx(len(xc) / len(x), abs=1e-6)
    # the precision factors U (Σ⁻¹ = U Uᵀ) agree with the covariance factors L (Σ = L Lᵀ)
    eye = torch.eye(x.shape[1])
    for k in range(3):
        U, L = fitted.base.prec_chol[k], fitted.base.scale_tril[k]
        assert torch.allclose(U.T @ L, eye, atol=1e-3)
    _, uniform = build_data_and_energy(compose([*CLASS_MIXTURE, "energy.base_weights=uniform"]))
    assert torch.allclose(uniform.base.log_pi.exp(), torch.full((3,), 1 / 3), atol=1e-6)
    assert torch.equal(uniform.base.means, fitted.base.means)
    # equal weights move exactly log(1/3) − log π_k into each component's log-density
    t = ds.test[:5]
    d = uniform.base.component_log_prob(t) - fitted.base.component_log_prob(t)
    assert torch.allclose(d, (-math.log(3) - fitted.base.log_pi).expand_as(d), atol=1e-4)


def test_class_fitted_mixture_is_checked():
    from pdebm.build import build_data_and_energy

    with pytest.raises(ConfigError, match="one component per class: energy.base_components=2, "
                                          "but the training images hold 3 classes"):
        build_data_and_energy(compose(["dataset=digits", "dataset.transform=zca",
                                       "dataset.classes=[2,3,6]", "energy=conv",
                                       "energy.base=mixture", "energy.base_components=2",
                                       "energy.base_fit=classes"]))
    with pytest.raises(ConfigError, match="energy.base_fit="):
        MixtureBase((1, 8, 8), 3, fit="kmeans")
    with pytest.raises(ConfigError, match="energy.base_weights="):
        MixtureBase((1, 8, 8), 3, weights="equal")
    with pytest.raises(ConfigError, match="needs labelled"):
        MixtureBase((1, 8, 8), 3, fit="classes").fit(torch.randn(10, 1, 8, 8))


def test_class_base_reg_script_fits_the_presets_base_and_refuses_a_bad_reg():
    """scripts/class_base_reg.py chooses experiment=digits_modes_mixture's base_reg: the preset's
    base components and the script's held-out number must both match class Gaussians computed
    here independently, and a reg ≤ 0 is one error line, exit 2."""
    import subprocess
    import sys

    from pdebm.build import build_data_and_energy

    def class_gaussians(x, y, reg):  # the oracle: one MultivariateNormal per class, float64
        eye = torch.eye(x.shape[1], dtype=x.dtype)
        return [torch.distributions.MultivariateNormal(x[y == c].mean(0), torch.cov(x[y == c].T) + reg * eye)
                for c in y.unique()]

    script = SCRIPTS_DIR / "class_base_reg.py"
    mod = load_script("class_base_reg")
    ds, energy = build_data_and_energy(compose(["experiment=digits_modes_mixture"]))
    x = ds.statistics_images().flatten(1).double()
    y = torch.as_tensor(ds.train_labels[:len(x)])
    t = ds.test[:6].flatten(1).double()
    ours = torch.stack([g.log_prob(t) for g in class_gaussians(x, y, 0.5)], 1) - math.log(3)
    assert torch.allclose(ours, energy.base.component_log_prob(ds.test[:6]).double(), atol=1e-3)
    held = torch.zeros(len(x), dtype=torch.bool)  # the script's split: the last fifth of each class
    for c in y.unique():
        idx = (y == c).nonzero().flatten()
        held[idx[len(idx) - len(idx) // 5:]] = True
    lp = torch.stack([g.log_prob(x[held]) for g in class_gaussians(x[~held], y[~held], 0.5)], 1)
    [(reg, ll)] = mod.table("digits_modes_mixture", [0.5])
    assert reg == 0.5 and abs(ll - float((lp - math.log(3)).logsumexp(1).mean())) < 1e-3
    res = subprocess.run([sys.executable, str(script), "--regs", "0.5", "0"],
                         capture_output=True, text=True)
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.strip() == "pdebm: error: --regs must all be > 0"


def test_mode_weights_right_weights_reference_is_the_class_gaussians_at_the_class_frequencies():
    """scripts/mode_weights.py's right-weights reference row: one Gaussian per target class
    (its training images' mean and covariance + reg·I) weighted by the class frequencies of the
    4:2:1 subset; a --class-reg ≤ 0 is one error line, exit 2, before anything is fitted."""
    import subprocess
    import sys

    script = SCRIPTS_DIR / "mode_weights.py"
    mod = load_script("mode_weights")
    cfg = compose(["experiment=digits_modes"])
    from pdebm.build import build_data_and_energy
    ds, plain = build_data_and_energy(cfg)
    assert not isinstance(plain.base, MixtureBase)  # the preset itself keeps its Gaussian
    base = mod.class_mixture_reference(ds, 3, 0.2)
    x = ds.statistics_images().flatten(1).double()
    y = torch.as_tensor(ds.train_labels[:len(x)])
    freq = torch.stack([(y == c).double().mean() for c in (2, 3, 6)])
    assert torch.allclose(base.log_pi.exp().double(), freq, atol=1e-6)
    assert torch.allclose(freq, torch.tensor([4 / 7, 2 / 7, 1 / 7], dtype=torch.float64), atol=0.01)
    for k, c in enumerate((2, 3, 6)):
        want = torch.distributions.MultivariateNormal(
            x[y == c].mean(0), torch.cov(x[y == c].T) + 0.2 * torch.eye(x.shape[1], dtype=x.dtype))
        got = base.component_log_prob(ds.test[:4]).double()[:, k] - base.log_pi[k]
        assert torch.allclose(got, want.log_prob(ds.test[:4].flatten(1).double()), atol=1e-3)
    res = subprocess.run([sys.executable, str(script), "--references-only", "--class-reg", "0"],
                         capture_output=True, text=True)
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.strip() == "pdebm: error: --class-reg must be > 0 (got 0.0)"

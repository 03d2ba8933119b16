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

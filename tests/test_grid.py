"""The 2D grid normaliser: quadrature NLL, exact sampling, lag KL and its noise floor."""

import math

import torch

from pdebm.grid import Grid2D
from pdebm.samplers.exact import ExactSampler

MU = torch.tensor([0.5, -0.3])
SIGMA = torch.tensor([0.7, 1.1])


def gauss_energy(x):
    return (((x - MU) / SIGMA) ** 2).sum(1) / 2


def gauss_log_z():
    return math.log(2 * math.pi) + float(SIGMA.log().sum())


def test_grid_nll_matches_analytic_gaussian():
    grid = Grid2D(-5, 5, 200)
    x = MU + SIGMA * torch.randn(2000, 2, generator=torch.Generator().manual_seed(0))
    analytic = float(gauss_energy(x).double().mean()) + gauss_log_z()
    assert abs(grid.nll(gauss_energy, x) - analytic) < 1e-3
    assert abs(grid.normalise(gauss_energy).log_z - gauss_log_z()) < 1e-3


def test_exact_samples_have_analytic_mean_and_covariance():
    model = Grid2D(-6, 6, 240).normalise(gauss_energy)
    n = 40000
    x = model.sample(n, torch.Generator().manual_seed(1))
    se_mean = SIGMA / math.sqrt(n)
    assert torch.all((x.mean(0) - MU).abs() < 4 * se_mean)
    # variance: sampling s.e. ≈ σ²·√(2/n); the uniform jitter in a cell adds h²/12 (exact for the grid)
    var = x.var(0)
    assert torch.all((var - SIGMA**2).abs() < 4 * SIGMA**2 * math.sqrt(2 / n) + 0.01)
    assert abs(float(torch.corrcoef(x.T)[0, 1])) < 4 / math.sqrt(n)


def test_exact_sampler_mode_proportions():
    # mixture 0.3·N((−2, 0), 0.5²) + 0.7·N((2, 0), 0.5²)
    def mix(x):
        a = -((x - torch.tensor([-2.0, 0])) ** 2).sum(1) / (2 * 0.25) + math.log(0.3)
        b = -((x - torch.tensor([2.0, 0])) ** 2).sum(1) / (2 * 0.25) + math.log(0.7)
        return -torch.logaddexp(a, b)

    class Mix(torch.nn.Module):
        data_shape = (2,)
        device = torch.device("cpu")

        def forward(self, x):
            return mix(x)

    torch.manual_seed(0)
    sampler = ExactSampler(n_samples=20000, resolution=200)
    x, log_w = sampler.negatives(Mix())
    p = float((x[:, 0] > 0).float().mean())
    assert abs(p - 0.7) < 4 * math.sqrt(0.21 / 20000)
    assert torch.all(log_w == 0)


def test_lag_kl_of_exact_sample_is_at_the_floor_and_floor_shrinks():
    model = Grid2D().normalise(gauss_energy)
    gen = torch.Generator().manual_seed(2)
    floors = {n: sum(model.lag_floor(n, 30, gen) for _ in range(5)) / 5 for n in (500, 5000)}
    assert floors[5000] < floors[500] / 4          # ≈ (bins occupied)/(2n): shrinks like 1/n
    exact = sum(model.lag_kl(model.sample(5000, gen), None, 30) for _ in range(5)) / 5
    assert abs(exact - floors[5000]) < 0.5 * floors[5000]
    # a shifted sample sits far above the floor
    shifted = model.sample(5000, gen) + torch.tensor([1.0, 0.0])
    assert model.lag_kl(shifted, None, 30) > 10 * floors[5000]


def test_weighted_histogram_uses_weights():
    model = Grid2D().normalise(gauss_energy)
    gen = torch.Generator().manual_seed(3)
    x = torch.cat([model.sample(5000, gen), model.sample(5000, gen) + 3.0])
    log_w = torch.cat([torch.zeros(5000), torch.full((5000,), -1e4)])  # second half weightless
    assert model.lag_kl(x, log_w, 30) < 0.1 < model.lag_kl(x, None, 30)

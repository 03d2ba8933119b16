"""Exact negatives for 2D energies: ideal maximum-likelihood training (the oracle).

The current energy is normalised on the evaluation grid and sampled exactly (cells by their
probability, then a uniform point inside the cell) at every step, using the same
:class:`~pdebm.grid.Grid2D` as the test NLL. Its NLL curve is the best any sampler can
do with the same model, optimizer and data. It costs one grid evaluation (no gradients) per step.
"""

from __future__ import annotations

from torch import Tensor

from pdebm.energy.base import EnergyModel
from pdebm.errors import check, positive
from pdebm.grid import Grid2D
from pdebm.samplers.base import Sampler, uniform_log_weights


class ExactSampler(Sampler):
    """Exact samples of the gridded current model (2D only).

    Args:
        n_samples: negatives per training step.
        low, high, resolution: the grid; the config takes them from ``eval`` so the sampler and
            the NLL quadrature normalise the same gridded model.
    """

    requires_2d = True
    gradient_free = True  # one grid evaluation of E per step, no gradients
    oracle = True         # exact samples of the (gridded) current model

    def __init__(self, n_samples: int = 1000, low: float = -5.0, high: float = 5.0,
                 resolution: int = 200) -> None:
        super().__init__()
        positive("sampler.n_samples", n_samples)
        self.n_samples = n_samples
        self.grid = Grid2D(low, high, resolution, prefix="sampler")

    def negatives(self, energy: EnergyModel) -> tuple[Tensor, Tensor]:
        check(tuple(energy.data_shape) == (2,),
              f"sampler=exact needs 2D data, got data of shape {tuple(energy.data_shape)}")
        x = self.grid.sample(energy, self.n_samples, energy.device)  # the global (seeded) stream
        return x, uniform_log_weights(x)

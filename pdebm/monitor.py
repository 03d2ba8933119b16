"""The in-training monitor: every ``eval_every`` steps (and at the end) the ``eval/*`` metrics of
a run (docs/evaluation.md): the exact 2D quantities by grid quadrature (``test_nll``, ``log_z``,
``lag_kl``), MMD², the energies, and the pictures. Configured by the ``eval:`` node of
``conf/train.yaml``. (``pdebm eval``, the AIS command for finished image runs, is
:mod:`pdebm.eval`.)"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from pdebm.data.base import Dataset
from pdebm.energy.base import EnergyModel, energy_in_chunks
from pdebm.errors import positive
from pdebm.figures import Figure, density_figure, image_grid
from pdebm.grid import Grid2D, GriddedModel
from pdebm.metrics.mmd import median_distance, mmd2

TEST_CHUNK = 4096  # test points per energy evaluation


@dataclass
class MonitorResult:
    scalars: dict[str, float]     # logged as eval/<key>
    figure: Figure | None         # 2D: density / negatives / data
    images: dict[str, Tensor]     # images: grids of negatives and data


class Monitor:
    """Computes the ``eval/*`` metrics of one step from the current energy and negatives.

    Args:
        dataset: provides the fixed held-out set.
        low, high, resolution: the 2D quadrature grid.
        lag_bins: coarse bins per side for the sampler-lag KL and its noise floor.
        mmd_points: held-out points used for MMD².
        mmd_bandwidths: kernel bandwidths as multiples of the held-out data's median distance.
        n_plot: negatives shown in figures and grids.
        seed: seeds the evaluation's own generator (exact floor sample), never the training one.
    """

    def __init__(self, dataset: Dataset, low: float = -5.0, high: float = 5.0,
                 resolution: int = 200, lag_bins: int = 50, mmd_points: int = 1000,
                 mmd_bandwidths: tuple[float, ...] = (0.1, 0.2, 0.5, 1.0, 2.0),
                 n_plot: int = 1000, seed: int = 0) -> None:
        positive("eval.lag_bins", lag_bins)
        positive("eval.mmd_points", mmd_points)
        positive("eval.n_plot", n_plot)
        self.dataset, self.lag_bins, self.n_plot, self.seed = dataset, lag_bins, n_plot, seed
        self.grid = Grid2D(low, high, resolution) if dataset.is_2d else None
        self.mmd_data = dataset.test[:mmd_points]
        scale = median_distance(self.mmd_data)
        self.bandwidths = [b * scale for b in mmd_bandwidths]

    @torch.no_grad()
    def __call__(self, energy: EnergyModel, x: Tensor, log_w: Tensor, step: int,
                 weighted: bool) -> MonitorResult:
        dev = energy.device
        w = torch.softmax(log_w.detach(), 0) if weighted else None
        test = self.dataset.test.to(dev)
        e_test = energy_in_chunks(energy, test, TEST_CHUNK)
        e_neg = energy(x.detach())
        e_neg_mean = float(e_neg.mean()) if w is None else float((w * e_neg).sum())
        s: dict[str, Any] = {
            "energy_data": float(e_test.mean()),
            "energy_neg": e_neg_mean,
            "energy_gap": float(e_test.mean()) - e_neg_mean,
            "mmd2": mmd2(x.detach(), self.mmd_data.to(dev), self.bandwidths, w),
        }
        figure, images = None, {}
        if self.grid is not None:
            model: GriddedModel = self.grid.normalise(energy, dev)
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
            s["test_nll"] = model.nll(e_test)
            s["log_z"] = model.log_z
            neg_log_w = log_w if weighted else None
            s["lag_kl"] = model.lag_kl(x, neg_log_w, self.lag_bins)  # negatives inside the box
            s["lag_kl_floor"], s["lag_kl_floor_ess"] = model.lag_floors(x, neg_log_w,
                                                                        self.lag_bins, gen)
            s["frac_outside"] = self.grid.fraction_outside(x, neg_log_w)
            s["mass_outside"] = self.grid.mass_outside(energy, dev)
            if getattr(self.dataset, "entropy", None) is not None:
                s["nll_minus_entropy"] = s["test_nll"] - self.dataset.entropy
            figure = density_figure(model, x[: self.n_plot], self.dataset.test[: self.n_plot],
                                    None if w is None else log_w[: self.n_plot],
                                    title=f"step {step}")
        elif self.dataset.is_image:
            k = min(self.n_plot, 64)
            images["negatives"] = image_grid(self.dataset.to_images(x[:k].cpu()))
            images["data"] = image_grid(self.dataset.to_images(self.dataset.test[:k]))
        return MonitorResult(s, figure, images)



"""The in-training monitor: every ``eval_every`` steps (and at the end) the ``eval/*`` metrics of
a run (docs/evaluation.md): the exact 2D quantities by grid quadrature (``test_nll``, ``log_z``,
``lag_kl``), MMD², the energies, and the pictures; for images FID and KID of the negatives
against the held-out images (:mod:`pdebm.metrics.fid`); for samplers whose weights keep their
absolute scale (``sampler.log_mean_weight()``), the particles' own estimate of ``log Z`` and the
test log-likelihood it gives. Configured by the ``eval:`` node of ``conf/train.yaml``.
(``pdebm eval``, the AIS command for finished image runs, is :mod:`pdebm.eval`.)"""

from __future__ import annotations

import math
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
from pdebm.samplers.weights import effective_sample_size

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
        fid: images: FID and KID of the negatives against the held-out images, in the features
            of the data set's classifier (trained once per machine and cached).
        fid_reference: held-out images used as FID/KID's reference set.
        kid_subsets, kid_subset_size: KID's random subsets (size capped by the sample sizes).
    """

    def __init__(self, dataset: Dataset, low: float = -5.0, high: float = 5.0,
                 resolution: int = 200, lag_bins: int = 50, mmd_points: int = 1000,
                 mmd_bandwidths: tuple[float, ...] = (0.1, 0.2, 0.5, 1.0, 2.0),
                 n_plot: int = 1000, seed: int = 0, fid: bool = True, fid_reference: int = 1000,
                 kid_subsets: int = 50, kid_subset_size: int = 100) -> None:
        positive("eval.lag_bins", lag_bins)
        positive("eval.mmd_points", mmd_points)
        positive("eval.n_plot", n_plot)
        self.dataset, self.lag_bins, self.n_plot, self.seed = dataset, lag_bins, n_plot, seed
        self.grid = Grid2D(low, high, resolution) if dataset.is_2d else None
        self.mmd_data = dataset.test[:mmd_points]
        scale = median_distance(self.mmd_data)
        self.bandwidths = [b * scale for b in mmd_bandwidths]
        self.score, self.classifier_accuracy, self._make_score = None, None, None
        if fid and dataset.is_image:
            from pdebm.metrics.classifier import classifier_for, require_labels
            from pdebm.metrics.fid import ImageScore

            positive("eval.fid_reference", fid_reference)
            positive("eval.kid_subsets", kid_subsets)
            positive("eval.kid_subset_size", kid_subset_size)
            require_labels(dataset)

            def score() -> ImageScore:  # built at the first evaluation, not when the run is
                trained = classifier_for(dataset)  # built (training it takes a while once)
                self.classifier_accuracy = trained.test_accuracy
                return ImageScore(trained.net, dataset.to_images(dataset.test[:fid_reference]),
                                  kid_subsets=int(kid_subsets),
                                  kid_subset_size=int(kid_subset_size), seed=seed)

            self._make_score = score

    @torch.no_grad()
    def __call__(self, energy: EnergyModel, x: Tensor, log_w: Tensor, step: int,
                 weighted: bool, sampler: Any = None) -> MonitorResult:
        """The ``eval/*`` scalars and pictures of one step. ``sampler`` (optional) is asked only
        through its interface's accessors (``log_mean_weight``, ``resampling_count``)."""
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
        log_z_hat = self._particle_log_z(sampler, log_w, s)
        figure, images = None, {}
        if self.grid is not None:
            model: GriddedModel = self.grid.normalise(energy, dev)
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
            s["test_nll"] = model.nll(e_test)
            s["log_z"] = model.log_z
            if log_z_hat is not None:
                s["log_z_particles"] = log_z_hat
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
            if log_z_hat is not None:  # −mean E(test) − log Ẑ, in the pixel space like AIS
                ds = self.dataset
                ll = (-e_test.double().cpu() - log_z_hat
                      + ds.log_det_jacobian(ds.test).double()).mean()
                s["test_ll_particles"] = float(ll)
                s["test_ll_particles_se"] = s.pop("log_z_particles_se")
                s["test_bpd_particles"] = (-float(ll) + ds.n_dims * math.log(ds.levels)) / (
                    ds.n_dims * math.log(2))
            if self.score is None and self._make_score is not None:
                self.score = self._make_score()
            if self.score is not None:  # weighted negatives: scored as the distribution they stand for
                from pdebm.metrics.fid import weighted_pick

                gen = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
                pick = weighted_pick(log_w if weighted else None, len(x), gen)
                xs = x.detach() if pick is None else x.detach()[pick.to(x.device)]
                r = self.score(self.dataset.to_images(xs.cpu()), salt=step)
                s.update(fid=r["fid"], kid=r["kid"], kid_std=r["kid_std"], confident=r["confident"],
                         fid_classifier_accuracy=self.classifier_accuracy)
            k = min(self.n_plot, 64)
            images["negatives"] = image_grid(self.dataset.to_images(x[:k].cpu()))
            images["data"] = image_grid(self.dataset.to_images(self.dataset.test[:k]))
        return MonitorResult(s, figure, images)


    @staticmethod
    def _particle_log_z(sampler: Any, log_w: Tensor, s: dict[str, Any]) -> float | None:
        """``log Ẑ = log mean w`` from a sampler whose weights keep their absolute scale, with
        its reliability: ``particles_ess`` (ESS/N), ``particles_resamplings`` (resampling events
        in the population's history) and ``log_z_particles_se``: the delta method's
        ``√(1/ESS − 1/N)`` for the current weights plus, in quadrature, the same term frozen in
        at every past resampling (an SMC-style estimate that treats the particles as
        independent; ancestors shared after resampling make it optimistic). ``None`` for every
        other sampler."""
        log_z = None if sampler is None else sampler.log_mean_weight()
        if log_z is None:
            return None
        n = log_w.shape[0]
        ess = float(effective_sample_size(log_w.detach()))
        s["particles_ess"] = ess / n
        history = sampler.weight_history() or {}
        if "resamplings" in history:
            s["particles_resamplings"] = float(history["resamplings"])
        var = max(1.0 / ess - 1.0 / n, 0.0) + float(history.get("log_z_var", 0.0))
        s["log_z_particles_se"] = math.sqrt(var)
        return float(log_z)


"""The 2D grid normaliser: one piece of code that normalises, samples and bins a 2D energy.

A 2D energy is evaluated on a regular grid of cells over a box; ``log Z ≈ logsumexp(−E) +
log(cell area)`` (docs/evaluation.md). It sits on the ground floor, below the samplers (the
exact sampler draws from it) and the monitor (test NLL, lag KL). The same gridded model gives

* the **test NLL** by quadrature,
* **exact samples** (draw cells by their probability, then a uniform point inside the cell),
* the **sampler lag**: KL between the (weighted) histogram of negatives and the model, both
  binned on one coarse grid, and its **noise floor** (the same KL for an exact sample of the
  same size, or of the weighted sample's effective size).

The box is where the model is normalised, so everything here is *conditional on the box*: the
NLL is the box NLL (optimistic by about the model's mass outside the box, which
:meth:`Grid2D.mass_outside` measures on a wider coarse grid), and the lag and its floors use
only the negatives inside the box (their fraction outside is reported separately); the floor's
exact samples are inside by construction, so lag and floor treat the outside alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from pdebm.energy.base import Energy, energy_in_chunks
from pdebm.errors import check, positive


@dataclass
class GriddedModel:
    """The model's energy on the grid, normalised: ``log_prob`` per cell, shape ``(R, R)``."""

    grid: "Grid2D"
    log_prob: Tensor   # log of the probability mass of each cell (sums to 1 in exp)
    log_z: float       # log partition function over the box

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` exact samples of the gridded model (cells by mass, uniform within a cell)."""
        r = self.grid.resolution
        probs = self.log_prob.flatten().exp().cpu()
        idx = torch.multinomial(probs, n, replacement=True, generator=generator)
        ij = torch.stack([idx // r, idx % r], dim=1).to(torch.float32)  # (row=x index, col=y)
        u = torch.rand(n, 2, generator=generator)
        return self.grid.low + (ij + u) * self.grid.cell

    def binned(self, bins: int) -> Tensor:
        """The model's mass on a coarse ``bins × bins`` grid over the same box."""
        return self.grid.histogram(self.grid.centres().reshape(-1, 2),
                                   self.log_prob.flatten().exp().cpu(), bins)

    def lag_kl(self, x: Tensor, log_weights: Tensor | None, bins: int) -> float:
        """KL(histogram of the (weighted) samples inside the box ‖ model), both binned on
        ``bins × bins``; NaN when no sample (or no weight) is inside.

        Samples outside the box are left out (weights renormalised over the rest), exactly as
        the floor's exact samples, which are all inside; :meth:`Grid2D.fraction_outside`
        reports how many were left out.
        """
        x = x.detach().cpu()
        inside = self.grid.inside(x)
        w = (torch.ones(len(x), dtype=torch.float64) if log_weights is None
             else torch.softmax(log_weights.detach().cpu().double(), 0))
        w = w[inside]
        if len(w) == 0 or float(w.sum()) <= 0:
            return float("nan")
        q = self.grid.histogram(x[inside], w, bins)
        p = self.binned(bins)
        mask = q > 0
        return float((q[mask] * (q[mask].log() - p[mask].clamp_min(1e-30).log())).sum())

    def nll(self, e_x: Tensor) -> float:
        """Mean negative log-likelihood (nats) of points whose energies are ``e_x``:
        ``mean E(x) + log Z`` (the one NLL formula; used by the monitor and :meth:`Grid2D.nll`)."""
        return float(e_x.double().mean()) + self.log_z

    def lag_floor(self, n: int, bins: int, generator: torch.Generator | None = None) -> float:
        """The lag KL of an exact sample of size ``n``: the finite-sample noise floor."""
        return self.lag_kl(self.sample(max(int(n), 1), generator), None, bins)

    def lag_floors(self, x: Tensor, log_weights: Tensor | None, bins: int,
                   generator: torch.Generator | None = None) -> tuple[float, float]:
        """The floors for the negatives ``x`` as :meth:`lag_kl` sees them (inside the box): an
        exact sample of as many points, and one of their effective sample size
        ``ESS = (Σw)²/Σw²`` (the same for unweighted negatives). A weighted histogram is about
        as noisy as an unweighted one of ``ESS`` points, so the second is the floor a weighted
        sampler's lag should be compared with."""
        inside = self.grid.inside(x.detach().cpu())
        n_in = int(inside.sum())
        if log_weights is None:
            floor = self.lag_floor(n_in, bins, generator)
            return floor, floor
        w = torch.softmax(log_weights.detach().cpu().double(), 0)[inside]
        ess = float(w.sum() ** 2 / w.pow(2).sum()) if n_in > 0 else 0.0
        return self.lag_floor(n_in, bins, generator), self.lag_floor(round(ess), bins, generator)


class Grid2D:
    """Regular grid over the box ``[low, high]²`` with ``resolution × resolution`` cells.

    Args:
        low, high: the box (default [−5, 5]², as in the authors' protocol).
        resolution: cells per side (default 200).
        chunk: points per energy evaluation (bounds memory on large grids).
        prefix: the config node that set the grid, for error messages (``eval``, ``sampler``).
    """

    def __init__(self, low: float = -5.0, high: float = 5.0, resolution: int = 200,
                 chunk: int = 20000, prefix: str = "eval") -> None:
        check(high > low, f"{prefix}.low must be < {prefix}.high, got [{low}, {high}]")
        positive(f"{prefix}.resolution", resolution)
        self.low, self.high, self.resolution, self.chunk = float(low), float(high), int(resolution), chunk
        self.cell = (self.high - self.low) / self.resolution

    @property
    def log_cell_area(self) -> float:
        return 2 * math.log(self.cell)

    def centres(self) -> Tensor:
        """Cell centres, shape ``(R, R, 2)``; index ``[i, j]`` is (x₁ cell i, x₂ cell j)."""
        c = self.low + (torch.arange(self.resolution, dtype=torch.float32) + 0.5) * self.cell
        return torch.stack(torch.meshgrid(c, c, indexing="ij"), dim=-1)

    @torch.no_grad()
    def normalise(self, energy: Energy, device: torch.device | str = "cpu") -> GriddedModel:
        """Evaluate and normalise ``energy`` on the grid."""
        pts = self.centres().reshape(-1, 2).to(device)
        e = energy_in_chunks(energy, pts, self.chunk)
        neg = (-e).double().cpu()
        log_z_cells = torch.logsumexp(neg, 0)
        log_prob = (neg - log_z_cells).float().reshape(self.resolution, self.resolution)
        return GriddedModel(self, log_prob, float(log_z_cells) + self.log_cell_area)

    def inside(self, x: Tensor) -> Tensor:
        """Boolean mask of the points of ``x`` (N, 2) inside the box."""
        return ((x >= self.low) & (x <= self.high)).all(1)

    def fraction_outside(self, x: Tensor, log_weights: Tensor | None) -> float:
        """(Weighted) fraction of the points of ``x`` outside the box."""
        out = (~self.inside(x.detach().cpu())).double()
        if log_weights is None:
            return float(out.mean())
        return float((torch.softmax(log_weights.detach().cpu().double(), 0) * out).sum())

    @torch.no_grad()
    def mass_outside(self, energy: Energy, device: torch.device | str = "cpu",
                     factor: int = 3, resolution: int = 150) -> float:
        """The model's probability mass outside the box, from a coarse grid ``factor`` times as
        wide (same centre, ``resolution`` cells per side, aligned so that the box's edges are
        cell edges). The box NLL is optimistic by about ``−log(1 − mass_outside)``; mass beyond
        the wide grid is not seen."""
        check(factor > 1 and (factor - 1) * resolution % (2 * factor) == 0,
              f"mass_outside: resolution {resolution} does not align the box on a {factor}× grid")
        mid, half = (self.low + self.high) / 2, (self.high - self.low) / 2
        wide = Grid2D(mid - factor * half, mid + factor * half, resolution, self.chunk)
        log_prob = wide.normalise(energy, device).log_prob
        c = wide.centres()
        outside = ~self.inside(c.reshape(-1, 2)).reshape(resolution, resolution)
        return float(log_prob.double().exp()[outside].sum())

    @torch.no_grad()
    def sample(self, energy: Energy, n: int, device: torch.device | str = "cpu") -> Tensor:
        """``n`` exact samples of the gridded ``energy``, drawn on ``device`` without a host
        sync (cells by ``softmax(−E)``, then uniform in the cell; no ``log Z`` needed). The
        same model as :meth:`GriddedModel.sample`, with the draws from ``device``'s stream."""
        pts = self.centres().reshape(-1, 2).to(device)
        e = energy_in_chunks(energy, pts, self.chunk)
        idx = torch.multinomial(torch.softmax(-e.double(), 0), n, replacement=True)
        r = self.resolution
        ij = torch.stack([idx // r, idx % r], dim=1).to(torch.float32)  # (row=x index, col=y)
        return self.low + (ij + torch.rand(n, 2, device=ij.device)) * self.cell

    @torch.no_grad()
    def nll(self, energy: Energy, x: Tensor, model: GriddedModel | None = None) -> float:
        """Mean negative log-likelihood of ``x`` (nats): ``mean E(x) + log Z``."""
        model = model or self.normalise(energy, x.device)
        return model.nll(energy(x))

    def histogram(self, x: Tensor, weights: Tensor | None, bins: int) -> Tensor:
        """Normalised (weighted) 2D histogram on ``bins × bins`` over the box; points outside
        the box fall in the edge bins (callers that mean the box leave them out first)."""
        positive("eval.lag_bins", bins)
        idx = ((x - self.low) / (self.high - self.low) * bins).floor().long().clamp(0, bins - 1)
        flat = idx[:, 0] * bins + idx[:, 1]
        w = torch.ones(len(x)) if weights is None else weights.to(torch.float64 if weights.dtype == torch.float64 else torch.float32)
        h = torch.zeros(bins * bins, dtype=w.dtype).index_add_(0, flat, w)
        return (h / h.sum()).reshape(bins, bins).float()

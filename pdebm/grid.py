"""The 2D grid normaliser: one piece of code that normalises, samples and bins a 2D energy.

A 2D energy is evaluated on a regular grid of cells over a box; ``log Z ≈ logsumexp(−E) +
log(cell area)`` (docs/evaluation.md). It sits on the ground floor, below the samplers (the
exact sampler draws from it) and the monitor (test NLL, lag KL). The same gridded model gives

* the **test NLL** by quadrature,
* **exact samples** (draw cells by their probability, then a uniform point inside the cell),
* the **sampler lag**: KL between the (weighted) histogram of negatives and the model, both
  binned on one coarse grid, and its **noise floor** (the same KL for an exact sample).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from pdebm.energy.base import Energy
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
        """KL(histogram of the (weighted) samples ‖ model), both binned on ``bins × bins``.

        Samples outside the box are counted in the nearest edge bin, where the model has
        almost no mass, so they raise the KL as they should.
        """
        w = None if log_weights is None else torch.softmax(log_weights.detach().cpu(), 0)
        q = self.grid.histogram(x.detach().cpu(), w, bins)
        p = self.binned(bins)
        mask = q > 0
        return float((q[mask] * (q[mask].log() - p[mask].clamp_min(1e-30).log())).sum())

    def nll(self, e_x: Tensor) -> float:
        """Mean negative log-likelihood (nats) of points whose energies are ``e_x``:
        ``mean E(x) + log Z`` (the one NLL formula; used by the monitor and :meth:`Grid2D.nll`)."""
        return float(e_x.double().mean()) + self.log_z

    def lag_floor(self, n: int, bins: int, generator: torch.Generator | None = None) -> float:
        """The lag KL of an exact sample of size ``n``: the finite-sample noise floor."""
        return self.lag_kl(self.sample(n, generator), None, bins)


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
        e = torch.cat([energy(pts[i:i + self.chunk]) for i in range(0, len(pts), self.chunk)])
        neg = (-e).double().cpu()
        log_z_cells = torch.logsumexp(neg, 0)
        log_prob = (neg - log_z_cells).float().reshape(self.resolution, self.resolution)
        return GriddedModel(self, log_prob, float(log_z_cells) + self.log_cell_area)

    @torch.no_grad()
    def nll(self, energy: Energy, x: Tensor, model: GriddedModel | None = None) -> float:
        """Mean negative log-likelihood of ``x`` (nats): ``mean E(x) + log Z``."""
        model = model or self.normalise(energy, x.device)
        return model.nll(energy(x))

    def histogram(self, x: Tensor, weights: Tensor | None, bins: int) -> Tensor:
        """Normalised (weighted) 2D histogram on ``bins × bins`` over the box; points outside
        the box fall in the edge bins."""
        positive("eval.lag_bins", bins)
        idx = ((x - self.low) / (self.high - self.low) * bins).floor().long().clamp(0, bins - 1)
        flat = idx[:, 0] * bins + idx[:, 1]
        w = torch.ones(len(x)) if weights is None else weights.to(torch.float64 if weights.dtype == torch.float64 else torch.float32)
        h = torch.zeros(bins * bins, dtype=w.dtype).index_add_(0, flat, w)
        return (h / h.sum()).reshape(bins, bins).float()

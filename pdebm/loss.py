"""The contrastive loss of maximum-likelihood EBM training, in one place.

The gradient of the negative log-likelihood is ``E_data[∇_θE] − E_model[∇_θE]``; with negatives
``x_i`` carrying self-normalised weights ``w̄ = softmax(log_w)`` the surrogate whose gradient
estimates it is (docs/method.md, "The loss")::

    L = mean_j E(data_j) − Σ_i w̄_i E(x_i) + α (mean_j E(data_j)² + Σ_i w̄_i E(x_i)²)

``α`` (``energy_reg``) keeps energies near zero. The weights are treated as constants.
"""

from __future__ import annotations

from typing import Iterator, Mapping

import torch
from torch import Tensor

from pdebm.energy.base import Energy


def contrastive_loss(e_data: Tensor, e_neg: Tensor, w_bar: Tensor, alpha: float) -> Tensor:
    """``L`` from the energies of the data batch and of the negatives, whose self-normalised
    weights are ``w_bar = softmax(log_w)`` (module docstring)."""
    loss = e_data.mean() - (w_bar * e_neg).sum()
    if alpha > 0:
        loss = loss + alpha * (e_data.pow(2).mean() + (w_bar * e_neg.pow(2)).sum())
    return loss


class LossParts(Mapping[str, Tensor]):
    """The logged parts of one step's loss (``train/<key>``: ``loss``, ``energy_data``,
    ``energy_neg``, ``energy_gap``), as detached 0-d tensors on the loss's device. They are
    computed when first read, so steps that do not log spend no device work on them."""

    KEYS = ("loss", "energy_data", "energy_neg", "energy_gap")

    def __init__(self, loss: Tensor, e_data: Tensor, e_neg: Tensor, w_bar: Tensor) -> None:
        self._inputs: tuple[Tensor, ...] | None = (loss.detach(), e_data.detach(),
                                                   e_neg.detach(), w_bar)
        self._parts: dict[str, Tensor] = {}

    def _compute(self) -> dict[str, Tensor]:
        if self._inputs is not None:
            loss, e_data, e_neg, w_bar = self._inputs
            e_d, e_n = e_data.mean(), (w_bar * e_neg).sum()
            self._parts = {"loss": loss, "energy_data": e_d, "energy_neg": e_n,
                           "energy_gap": e_d - e_n}
            self._inputs = None
        return self._parts

    def __getitem__(self, key: str) -> Tensor:
        return self._compute()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.KEYS)

    def __len__(self) -> int:
        return len(self.KEYS)


def loss_fn(energy: Energy, x_data: Tensor, x_neg: Tensor, log_w: Tensor,
            alpha: float) -> tuple[Tensor, LossParts]:
    """The loss of one step and its logged parts (:class:`LossParts`: detached 0-d tensors on
    the loss's device, no host sync; the trainer fetches them when it logs)."""
    e_data, e_neg = energy(x_data), energy(x_neg)
    w_bar = torch.softmax(log_w.detach(), 0)
    loss = contrastive_loss(e_data, e_neg, w_bar, alpha)
    return loss, LossParts(loss, e_data, e_neg, w_bar)

"""The contrastive loss of maximum-likelihood EBM training, in one place.

The gradient of the negative log-likelihood is ``E_data[∇_θE] − E_model[∇_θE]``; with negatives
``x_i`` carrying self-normalised weights ``w̄ = softmax(log_w)`` the surrogate whose gradient
estimates it is (docs/method.md, "The loss")::

    L = mean_j E(data_j) − Σ_i w̄_i E(x_i) + α (mean_j E(data_j)² + Σ_i w̄_i E(x_i)²)

``α`` (``energy_reg``) keeps energies near zero. The weights are treated as constants.

The particle sampler reads ``∇ₓE(x_i)`` off the gradient the trainer's backward leaves in its
negatives: ``x.grad_i = (∂L/∂E(x_i)) ∇ₓE(x_i)``. :func:`negatives_grad_factor` gives that
factor by differentiating :func:`contrastive_loss` itself, so a change to the loss carries the
shortcut along. The rule that comes with it: the trainer never detaches the negatives, and calls
``backward`` before ``sampler.update``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from pdebm.energy.base import Energy


def contrastive_loss(e_data: Tensor, e_neg: Tensor, log_w: Tensor, alpha: float) -> Tensor:
    """``L`` from the energies of the data batch and of the negatives (module docstring)."""
    w_bar = torch.softmax(log_w.detach(), 0)
    loss = e_data.mean() - (w_bar * e_neg).sum()
    if alpha > 0:
        loss = loss + alpha * (e_data.pow(2).mean() + (w_bar * e_neg.pow(2)).sum())
    return loss


def loss_fn(energy: Energy, x_data: Tensor, x_neg: Tensor, log_w: Tensor,
            alpha: float) -> tuple[Tensor, dict[str, float]]:
    """The loss of one step and its logged parts (``train/<key>``)."""
    e_data, e_neg = energy(x_data), energy(x_neg)
    loss = contrastive_loss(e_data, e_neg, log_w, alpha)
    w_bar = torch.softmax(log_w.detach(), 0)
    e_d, e_n = float(e_data.detach().mean()), float((w_bar * e_neg.detach()).sum())
    return loss, {"loss": float(loss.detach()), "energy_data": e_d, "energy_neg": e_n,
                  "energy_gap": e_d - e_n}


def negatives_grad_factor(e_neg: Tensor, log_w: Tensor, alpha: float) -> Tensor:
    """``∂L/∂E(x_i)`` per negative, by autograd of :func:`contrastive_loss` (the loss is a sum of
    a data term and a negatives term, so the data energies do not enter this derivative)."""
    with torch.enable_grad():
        e = e_neg.detach().clone().requires_grad_(True)
        loss = contrastive_loss(e.new_zeros(1), e, log_w, alpha)
        (factor,) = torch.autograd.grad(loss, e)
    return factor

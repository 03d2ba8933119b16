"""The one interface every sampler implements (docs/architecture.md, "Samplers"). The trainer
calls only these methods and knows nothing else about a sampler.

Per training step the trainer (:mod:`pdebm.train`, then :func:`pdebm.step.train_step`) does::

    x, log_w = sampler.negatives(energy)          # samples of the current model (the monitor's too)
    loss = pdebm.loss.loss_fn(energy, data, x, log_w, α)   # x used as returned (never detached)
    loss.backward(); before = θ_k snapshot (only if needs_previous_energy); optimizer.step()
    sampler.update(before, energy)                # particle dynamics lives here

No host syncs: ``negatives``, ``update`` and ``stats`` keep their numbers on the device
(tensors); the trainer moves ``stats()`` to the host in one transfer, only on logging steps.

Randomness comes from torch's global generator, seeded once by the trainer and saved in
checkpoints, so a sampler needs no generator of its own.
"""

from __future__ import annotations

import abc
from typing import Any

import torch
from torch import Tensor

from pdebm.energy.base import Energy, EnergyModel


class Sampler(abc.ABC):
    """Produces negatives (samples of the current model) with log-weights.

    Attributes:
        grad_evals: cumulative number of per-particle energy-gradient evaluations spent by
            the sampler (the cost axis of every comparison; docs/evaluation.md, "Cost").
        weighted: whether ``negatives`` may return non-uniform log-weights.
        requires_2d: the sampler only works for 2D data (the exact grid sampler).
        needs_previous_energy: ``update`` reads ``energy_before`` (the parameters before the
            optimizer step). Only then does the trainer take the snapshot; otherwise
            ``update`` receives ``None``.
        gradient_free: the sampler spends no energy gradients (``grad_evals`` stays 0), so a
            ``budget=`` of gradient evaluations never stops it; the benchmark runs it for
            ``--steps`` and draws it as a line (the exact sampler, a noise-only sampler).
        oracle: the sampler draws exact samples of the current model (the exact grid sampler):
            the reference the benchmark's "gap to exact" column is measured against.
    """

    weighted: bool = False
    requires_2d: bool = False
    needs_previous_energy: bool = False
    gradient_free: bool = False
    oracle: bool = False

    def __init__(self) -> None:
        self.grad_evals = 0

    @abc.abstractmethod
    def negatives(self, energy: EnergyModel) -> tuple[Tensor, Tensor]:
        """Return ``(x, log_weights)``: samples of ``energy``'s model, shape ``(N, *shape)``,
        and log-weights of shape ``(N,)`` (zeros for unweighted samplers)."""

    def update(self, energy_before: Energy | None, energy_after: EnergyModel) -> None:
        """Called after every optimizer step with the energy as it was (a frozen functional
        view, :class:`~pdebm.energy.base.FrozenEnergy`; ``None`` unless
        ``needs_previous_energy``) and as it is now."""

    def stats(self) -> dict[str, Tensor | float]:
        """Scalars about the sampler's last step, logged as ``sampler/<key>``: 0-d tensors
        (left on the device; the trainer fetches them in one transfer) or floats."""
        return {}

    def log_mean_weight(self) -> Tensor | None:
        """``log mean w`` of the population ``negatives`` hands out, for samplers whose weights
        keep their absolute scale ``w = exp(−E)/q`` (docs/method.md, "Weights"): an estimate of
        the current model's ``log Z``. ``None`` (the default) for every other sampler. Read by
        the monitor at evaluations only (a 0-d device tensor; reading it may sync)."""
        return None

    def weight_history(self) -> dict[str, Tensor | float] | None:
        """The history of the population behind :meth:`log_mean_weight`: ``resamplings`` (how
        many times it was resampled) and ``log_z_var`` (the variance of ``log mean w`` frozen in
        at those resamplings, each ``1/ESS − 1/N`` just before it); ``None`` without such a
        population."""
        return None

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly (particles, weights, buffers, counters)."""
        return {"grad_evals": self.grad_evals}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.grad_evals = int(state["grad_evals"])


NOISE_INITS = ("base", "uniform")
"""Where fresh chains start (``sampler.init`` of sgld and pcd)."""


def initial_noise(energy: EnergyModel, n: int, init: str, uniform_box: tuple[float, float]) -> Tensor:
    """Starting points of fresh chains: draws of the energy's Gaussian base, or uniform noise."""
    if init == "base":
        return energy.sample_base(n)
    low, high = uniform_box
    return low + (high - low) * torch.rand((n, *energy.data_shape), device=energy.device)


def uniform_log_weights(x: Tensor) -> Tensor:
    """Zero log-weights for an unweighted batch ``x``."""
    return torch.zeros(x.shape[0], device=x.device)

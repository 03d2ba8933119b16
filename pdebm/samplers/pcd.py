"""Persistent contrastive divergence with a replay buffer.

A buffer of ``buffer_size`` persistent chains; each training step takes ``n_samples`` of them
(re-initialising each with probability ``reinit_prob`` from noise), runs ``K`` Langevin steps
aimed at the current model and writes them back. ``buffer_size = n_samples`` with
``reinit_prob = 0`` is plain PCD (Tieleman 2008); ``buffer_size = 10⁴`` with 5–10 %
re-initialisation is the replay buffer of Du & Mordatch (2019).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor

from pdebm.energy.base import EnergyModel
from pdebm.errors import check, one_of, positive
from pdebm.samplers.base import NOISE_INITS, Sampler, initial_noise, uniform_log_weights
from pdebm.samplers.langevin import LangevinConfig, langevin


class PCD(Sampler):
    """Persistent chains in a replay buffer.

    Args:
        n_samples: negatives per training step (chains advanced per step).
        buffer_size: number of persistent chains kept (≥ ``n_samples``).
        reinit_prob: probability that a drawn chain restarts from noise.
        n_steps: Langevin steps ``K`` per training step.
        kernel: the Langevin kernel's settings (the ``langevin:`` node).
        init, uniform_box: the noise chains start from (see :class:`~pdebm.samplers.sgld.SGLD`);
            ``initial_base`` restarts from the base as it was at the first call (the authors'
            ``baseline_toy.py``), not from the learnt base.
    """

    def __init__(self, n_samples: int = 1000, buffer_size: int = 10000, reinit_prob: float = 0.05,
                 n_steps: int = 20, kernel: Mapping[str, Any] | None = None, init: str = "base",
                 uniform_box: tuple[float, float] = (-5.0, 5.0)) -> None:
        super().__init__()
        positive("sampler.n_samples", n_samples)
        positive("sampler.buffer_size", buffer_size)
        check(buffer_size >= n_samples,
              f"sampler.buffer_size ({buffer_size}) must be >= sampler.n_samples ({n_samples})")
        check(0 <= reinit_prob <= 1, f"sampler.reinit_prob must be in [0, 1], got {reinit_prob}")
        one_of("sampler.init", init, (*NOISE_INITS, "initial_base"))
        self.kernel = LangevinConfig.from_settings(n_steps, kernel, allow_zero_steps=False)
        self.n_samples, self.buffer_size, self.reinit_prob = n_samples, buffer_size, reinit_prob
        self.init, self.uniform_box = init, tuple(uniform_box)
        self.buffer: Tensor | None = None
        self.base0: tuple[Tensor, Tensor] | None = None  # (μ, log σ) at the first call
        self._accept: Tensor | None = None          # device scalars (no host sync per step)
        self._reinit_frac: Tensor | float = 0.0

    def negatives(self, energy: EnergyModel) -> tuple[Tensor, Tensor]:
        if self.buffer is None:
            self.buffer = self._noise(energy, self.buffer_size)
        idx = torch.randperm(self.buffer_size, device=self.buffer.device)[: self.n_samples]
        x0 = self.buffer[idx]
        fresh = torch.rand(self.n_samples, device=x0.device) < self.reinit_prob
        if self.reinit_prob > 0:  # a full noise draw and a device-side choice: no host sync
            noise = self._noise(energy, self.n_samples)
            x0 = torch.where(fresh.view(-1, *([1] * (x0.dim() - 1))), noise, x0)
        out = langevin(energy, x0, self.kernel)
        self.buffer[idx] = out.x
        self.grad_evals += out.grad_evals
        self._accept, self._reinit_frac = out.accept_rate, fresh.float().mean()
        return out.x, uniform_log_weights(out.x)

    def _noise(self, energy: EnergyModel, n: int) -> Tensor:
        if self.init != "initial_base":
            return initial_noise(energy, n, self.init, self.uniform_box)
        if self.base0 is None:
            self.base0 = (energy.base.mu.detach().clone(), energy.base.log_sigma.detach().clone())
        mu, log_sigma = self.base0
        return mu + log_sigma.exp() * torch.randn((n, *mu.shape), device=mu.device)

    def stats(self) -> dict[str, Tensor | float]:
        s: dict[str, Tensor | float] = {"reinit_frac": self._reinit_frac}
        if self._accept is not None:
            s["accept_rate"] = self._accept
        return s

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "buffer": self.buffer, "base0": self.base0}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.buffer, self.base0 = state["buffer"], state.get("base0")

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
        init, uniform_box: the noise chains start from (see :class:`~pdebm.samplers.sgld.SGLD`).
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
        one_of("sampler.init", init, NOISE_INITS)
        self.kernel = LangevinConfig.from_settings(n_steps, kernel, allow_zero_steps=False)
        self.n_samples, self.buffer_size, self.reinit_prob = n_samples, buffer_size, reinit_prob
        self.init, self.uniform_box = init, tuple(uniform_box)
        self.buffer: Tensor | None = None
        self._accept: float | None = None
        self._reinit_frac = 0.0

    def negatives(self, energy: EnergyModel) -> tuple[Tensor, Tensor]:
        if self.buffer is None:
            self.buffer = initial_noise(energy, self.buffer_size, self.init, self.uniform_box)
        idx = torch.randperm(self.buffer_size, device=self.buffer.device)[: self.n_samples]
        x0 = self.buffer[idx]
        fresh = torch.rand(self.n_samples, device=x0.device) < self.reinit_prob
        if fresh.any():
            noise = initial_noise(energy, int(fresh.sum()), self.init, self.uniform_box)
            x0 = x0.clone()
            x0[fresh] = noise
        out = langevin(energy, x0, self.kernel)
        self.buffer[idx] = out.x
        self.grad_evals += out.grad_evals
        self._accept, self._reinit_frac = out.accept_rate, float(fresh.float().mean())
        return out.x, uniform_log_weights(out.x)

    def stats(self) -> dict[str, float]:
        s = {"reinit_frac": self._reinit_frac}
        if self._accept is not None:
            s["accept_rate"] = self._accept
        return s

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "buffer": self.buffer}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.buffer = state["buffer"]

"""Short-run SGLD: fresh chains from noise, ``K`` Langevin steps, every training step.

The negatives are the end points of ``K`` steps of the shared Langevin kernel started from the
energy's Gaussian base (or uniform noise over a box). This is the "short-run MCMC" baseline of
Nijkamp et al.; the chains never see the previous model, so nothing happens in ``update``.
"""

from __future__ import annotations

from typing import Any, Mapping

from torch import Tensor

from pdebm.energy.base import EnergyModel
from pdebm.errors import one_of, positive
from pdebm.samplers.base import NOISE_INITS, Sampler, initial_noise, uniform_log_weights
from pdebm.samplers.langevin import LangevinConfig, langevin


class SGLD(Sampler):
    """Short-run Langevin from noise.

    Args:
        n_samples: negatives per training step.
        n_steps: Langevin steps ``K`` per training step.
        kernel: the Langevin kernel's settings (the ``langevin:`` node; see
            :meth:`~pdebm.samplers.langevin.LangevinConfig.from_settings`).
        init: ``base`` (the energy's Gaussian base) or ``uniform`` (noise over ``uniform_box``).
        uniform_box: ``[low, high]`` per coordinate for ``init=uniform``.
    """

    def __init__(self, n_samples: int = 1000, n_steps: int = 20,
                 kernel: Mapping[str, Any] | None = None, init: str = "base",
                 uniform_box: tuple[float, float] = (-5.0, 5.0)) -> None:
        super().__init__()
        positive("sampler.n_samples", n_samples)
        one_of("sampler.init", init, NOISE_INITS)
        self.kernel = LangevinConfig.from_settings(n_steps, kernel, allow_zero_steps=False)
        self.n_samples, self.init, self.uniform_box = n_samples, init, tuple(uniform_box)
        self._accept: float | None = None

    def negatives(self, energy: EnergyModel) -> tuple[Tensor, Tensor]:
        x0 = initial_noise(energy, self.n_samples, self.init, self.uniform_box)
        out = langevin(energy, x0, self.kernel)
        self.grad_evals += out.grad_evals
        self._accept = out.accept_rate
        return out.x, uniform_log_weights(out.x)

    def stats(self) -> dict[str, float]:
        return {} if self._accept is None else {"accept_rate": self._accept}

"""Short-run SGLD: fresh chains from noise, ``K`` Langevin steps, every training step.

The negatives are the end points of ``K`` steps of the shared Langevin kernel started from the
energy's Gaussian base (or uniform noise over a box). This is the "short-run MCMC" baseline of
Nijkamp et al.; the chains never see the previous model, so nothing happens in ``update``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from pdebm.energy.base import EnergyModel
from pdebm.errors import check, positive
from pdebm.samplers.base import Sampler, uniform_log_weights
from pdebm.samplers.langevin import LangevinConfig, langevin

INITS = ("base", "uniform")


def initial_noise(energy: EnergyModel, n: int, init: str, uniform_box: tuple[float, float]) -> Tensor:
    """Starting points of fresh chains: draws of the energy's Gaussian base, or uniform noise."""
    if init == "base":
        return energy.sample_base(n)
    low, high = uniform_box
    return low + (high - low) * torch.rand((n, *energy.data_shape), device=energy.device)


class SGLD(Sampler):
    """Short-run Langevin from noise.

    Args:
        n_samples: negatives per training step.
        n_steps, step_size, noise_scale, mala, grad_clip: the Langevin kernel
            (:class:`~pdebm.samplers.langevin.LangevinConfig`).
        init: ``base`` (the energy's Gaussian base) or ``uniform`` (noise over ``uniform_box``).
        uniform_box: ``[low, high]`` per coordinate for ``init=uniform``.
    """

    def __init__(self, n_samples: int = 1000, n_steps: int = 20, step_size: float = 1e-2,
                 noise_scale: float | None = None, mala: bool = False,
                 grad_clip: float | None = None, init: str = "base",
                 uniform_box: tuple[float, float] = (-5.0, 5.0)) -> None:
        super().__init__()
        positive("sampler.n_samples", n_samples)
        check(init in INITS, f"sampler.init={init!r} is not one of {list(INITS)}")
        self.kernel = LangevinConfig(n_steps, step_size, noise_scale, mala, grad_clip)
        self.kernel.validate(allow_zero_steps=False)
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

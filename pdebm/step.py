"""One training step, used by the trainer, ``scripts/gpu_check.py`` and the tests.

    negatives → (monitor) → loss → backward → clip → frozen θ_k → optimizer step → schedule
    → sampler.update(θ_k, θ_{k+1})

The sampler contract (:mod:`pdebm.samplers.base`) is kept here: the negatives are used as
returned (never detached), and ``backward`` runs before ``update``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import torch
from torch import Tensor

from pdebm.errors import TrainingDiverged
from pdebm.loss import loss_fn


class Trainable(Protocol):
    """What a step needs: :class:`pdebm.build.Run` has it; tests build it from parts."""

    energy: Any
    sampler: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any  # a torch LR scheduler, or None


@dataclass
class StepOutput:
    parts: dict[str, float]     # the loss and its parts (train/<key>)
    grad_norm: float | None     # parameter-gradient norm before clipping (when clipping)
    seconds: float              # wall-clock of the step, the monitor excluded


def train_step(run: Trainable, x_data: Tensor, alpha: float = 0.0,
               grad_clip: float | None = None, step: int = 0,
               monitor: Callable[[Tensor, Tensor], None] | None = None) -> StepOutput:
    """One optimizer step on the data batch ``x_data``. ``monitor(x_neg, log_w)`` (if given)
    sees the step's negatives before the update; ``step`` only names a divergence."""
    t0 = time.perf_counter()
    x_neg, log_w = run.sampler.negatives(run.energy)
    seconds = time.perf_counter() - t0
    if monitor is not None:
        monitor(x_neg, log_w)
    t0 = time.perf_counter()
    loss, parts = loss_fn(run.energy, x_data, x_neg, log_w, alpha)
    if not math.isfinite(parts["loss"]):
        raise TrainingDiverged(f"loss is {parts['loss']} at step {step}: training "
                               "diverged (try a smaller lr or step size, or energy_reg > 0)")
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = (float(torch.nn.utils.clip_grad_norm_(run.energy.parameters(), grad_clip))
                 if grad_clip else None)
    before = run.energy.frozen()
    run.optimizer.step()
    if run.scheduler is not None:
        run.scheduler.step()
    run.sampler.update(before, run.energy)
    return StepOutput(parts, grad_norm, seconds + time.perf_counter() - t0)

"""The trainer's two divergence watchers, side by side: they catch a run that blows up before it
writes a blown-up checkpoint.

:class:`DivergenceWatch` works on the device and costs no host sync per step. It keeps each
step's loss (a detached 0-d tensor) and checks the ones kept so far when the step's numbers next
travel to the host (:meth:`pdebm.step.StepOutput.host`, on logging and checkpoint steps) or at
:meth:`DivergenceWatch.check`. A non-finite loss raises
:class:`~pdebm.errors.TrainingDiverged`, naming the first bad step.

:class:`Watchdog` works on the host, on the numbers the trainer already has there (no extra
device work): the loss and the mean energies of data and negatives of each transferred step, and
the test NLL of every evaluation. It reports a divergence when

- the loss or an energy is not finite (non-finite negatives give a non-finite ``energy_neg``);
- the energy scale ``max(|E(data)|, |E(neg)|)`` exceeds ``divergence.energy_factor`` times its
  median over the last :data:`WINDOW` checked steps (floored at 1, so a model near E = 0 is not
  flagged for growing from 0.01 to 10);
- the test NLL is not finite, or exceeds its best so far by more than ``divergence.nll_margin``.

The trainer then stops with one line, and keeps ``checkpoints/last_good.pt``: the last
checkpoint written while the watchdog had seen nothing wrong (never a diverged state).
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from typing import Mapping

import torch
from torch import Tensor

from pdebm.errors import TrainingDiverged

WINDOW = 50      # steps of energy history the scale is compared with
MIN_HISTORY = 5  # steps seen before the energy-growth test applies


class DivergenceWatch:
    """Non-finite losses, found without a host sync per step: :meth:`observe` only remembers
    the step's loss; :meth:`pending` turns the losses since the last transfer into two device
    scalars (the index of the first non-finite one, ``-1`` if none, and its value) that travel
    with the step's one transfer."""

    def __init__(self) -> None:
        self._steps: list[int] = []
        self._losses: list[Tensor] = []

    def observe(self, loss: Tensor, step: int) -> None:
        self._steps.append(step)
        self._losses.append(loss.detach())

    def pending(self) -> tuple[list[int], Tensor, Tensor] | None:
        """``(the steps observed since the last call, index of the first non-finite loss among
        them or -1, that loss)``, the last two as device tensors; ``None`` if no step was
        observed."""
        if not self._losses:
            return None
        losses = torch.stack(self._losses)
        bad = ~torch.isfinite(losses)
        first = torch.argmax(bad.to(torch.int8))  # the first True (0 when there is none)
        steps, self._steps, self._losses = self._steps, [], []
        return steps, torch.where(bad.any(), first, -1), losses[first]

    def check(self) -> None:
        """The losses observed since the last transfer, checked in a transfer of their own (none
        if there are none): raises :class:`TrainingDiverged` for a non-finite one."""
        pending = self.pending()
        if pending is not None:
            steps, first, loss = pending
            first, loss = torch.stack([first.to(torch.float64), loss.to(torch.float64)]).tolist()
            self.raise_if_bad(steps[int(first)] if first >= 0 else None, loss)

    @staticmethod
    def raise_if_bad(step: int | None, loss: float | None) -> None:
        """Raise :class:`TrainingDiverged` naming ``step`` unless it is ``None``."""
        if step is not None:
            raise TrainingDiverged(f"loss is {loss} at step {step}: training "
                                   "diverged (try a smaller lr or step size, or energy_reg > 0)")


class Watchdog:
    """Divergence in the numbers already on the host (the module docstring says which)."""

    def __init__(self, energy_factor: float | None, nll_margin: float | None) -> None:
        self.energy_factor, self.nll_margin = energy_factor, nll_margin
        self.scales: deque[float] = deque(maxlen=WINDOW)
        self.best: tuple[float, int] | None = None   # (best test NLL, its step)
        self.reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.reason is None

    def after_step(self, step: int, parts: Mapping[str, float]) -> None:
        """Check the step's loss parts (``loss``, ``energy_data``, ``energy_neg``)."""
        bad = [k for k in ("loss", "energy_data", "energy_neg")
               if k in parts and not math.isfinite(parts[k])]
        if bad:
            self.flag(f"{bad[0]} is {parts[bad[0]]} at step {step}")
            return
        scale = max(abs(parts.get("energy_data", 0.0)), abs(parts.get("energy_neg", 0.0)))
        if self.energy_factor is not None and len(self.scales) >= MIN_HISTORY:
            ref = max(statistics.median(self.scales), 1.0)
            if scale > self.energy_factor * ref:
                self.flag(f"|E| = {scale:.3g} at step {step}, over {self.energy_factor:g}× its "
                           f"recent median {ref:.3g}")
                return
        self.scales.append(scale)

    def after_eval(self, step: int, scalars: Mapping[str, float]) -> None:
        """Check an evaluation's test NLL against the best one so far."""
        nll = scalars.get("test_nll")
        if nll is None:
            return
        if not math.isfinite(nll):
            self.flag(f"test_nll is {nll} at step {step}")
        elif (self.best is not None and self.nll_margin is not None
              and nll > self.best[0] + self.nll_margin):
            self.flag(f"test_nll = {nll:.4g} at step {step}, more than {self.nll_margin:g} above "
                       f"its best {self.best[0]:.4g} (step {self.best[1]})")
        elif self.best is None or nll < self.best[0]:
            self.best = (nll, step)

    def flag(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason

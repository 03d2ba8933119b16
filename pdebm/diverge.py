"""Catching a run that blows up, before it writes a blown-up checkpoint.

A :class:`Watchdog` looks at what the trainer already has as numbers (no extra device work):
the loss and the mean energies of data and negatives after every step, and the test NLL at
every evaluation. It reports a divergence when

- the loss or an energy is not finite (non-finite negatives give a non-finite ``energy_neg``);
- the energy scale ``max(|E(data)|, |E(neg)|)`` exceeds ``divergence.energy_factor`` times its
  median over the last :data:`WINDOW` steps (floored at 1, so a model near E = 0 is not flagged
  for growing from 0.01 to 10);
- the test NLL is not finite, or exceeds its best so far by more than ``divergence.nll_margin``.

The trainer then stops with one line, and keeps ``checkpoints/last_good.pt``: the last
checkpoint written while the watchdog had seen nothing wrong (never a diverged state).
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from typing import Mapping

WINDOW = 50      # steps of energy history the scale is compared with
MIN_HISTORY = 5  # steps seen before the energy-growth test applies


class Watchdog:
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

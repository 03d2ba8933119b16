"""Learning-rate schedules as step → factor callables, wrapped in ``torch.optim.lr_scheduler.LambdaLR``.

Each is a small class (not a lambda) so its settings travel in the scheduler's ``state_dict``.
``total_steps`` is filled in by the trainer from ``steps``.
"""

from __future__ import annotations

import math

from pdebm.errors import check, positive


class Constant:
    """The learning rate stays at ``lr``."""

    def __init__(self, total_steps: int) -> None:
        self.total_steps = total_steps

    def __call__(self, step: int) -> float:
        return 1.0


class Warmup:
    """Linear warm-up from ``start_factor·lr`` to ``lr`` over ``warmup_steps``, then constant."""

    def __init__(self, total_steps: int, warmup_steps: int = 100, start_factor: float = 0.0) -> None:
        positive("schedule.warmup_steps", warmup_steps)
        check(0 <= start_factor <= 1, f"schedule.start_factor must be in [0, 1], got {start_factor}")
        self.total_steps, self.warmup_steps, self.start_factor = total_steps, warmup_steps, start_factor

    def __call__(self, step: int) -> float:
        if step >= self.warmup_steps:
            return 1.0
        return self.start_factor + (1 - self.start_factor) * step / self.warmup_steps


class Cosine:
    """Optional linear warm-up, then cosine decay from ``lr`` to ``min_factor·lr`` at the last step.

    ``decay_from`` (a fraction of ``total_steps``) holds ``lr`` constant until that point and
    decays over the rest of the run only (``final_decay``: the run learns at full rate, and its
    last steps, at a small rate, no longer jitter)."""

    def __init__(self, total_steps: int, warmup_steps: int = 0, min_factor: float = 0.0,
                 decay_from: float = 0.0) -> None:
        positive("schedule.warmup_steps", warmup_steps, allow_zero=True)
        check(0 <= min_factor <= 1, f"schedule.min_factor must be in [0, 1], got {min_factor}")
        check(0 <= decay_from < 1, f"schedule.decay_from must be in [0, 1), got {decay_from}")
        self.total_steps, self.warmup_steps, self.min_factor = total_steps, warmup_steps, min_factor
        self.decay_from = decay_from

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        start = max(self.warmup_steps, int(round(self.decay_from * self.total_steps)))
        span = max(1, self.total_steps - start)
        t = min(1.0, max(0.0, (step - start) / span))
        return self.min_factor + (1 - self.min_factor) * 0.5 * (1 + math.cos(math.pi * t))

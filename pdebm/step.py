"""One training step, used by the trainer, ``scripts/gpu_check.py`` and the tests.

    negatives → (monitor) → loss → backward → clip → [θ_k snapshot] → optimizer step → schedule
    → sampler.update(θ_k or None, θ_{k+1})

The sampler contract (:mod:`pdebm.samplers.base`) is kept here: the negatives are used as
returned (never detached), and ``backward`` runs before ``update``. The θ_k snapshot is taken
only for samplers with ``needs_previous_energy`` (the particle sampler), into buffers allocated
once per run (:meth:`~pdebm.energy.base.FrozenEnergy.refresh`).

No host sync: a step reads no device value. The loss parts, the gradient norm and the sampler's
``stats()`` stay 0-d tensors on the device; :meth:`StepOutput.host` brings all of them to the
host in one transfer, which the trainer calls only on logging and checkpoint steps. A
non-finite loss costs nothing per step either: :class:`DivergenceWatch` keeps the step's loss
tensor, checks the ones kept in that transfer and raises
:class:`~pdebm.errors.TrainingDiverged`, naming the first bad step.
"""

from __future__ import annotations

import time
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol

import torch
from torch import Tensor

from pdebm.energy.base import FrozenEnergy
from pdebm.errors import TrainingDiverged
from pdebm.loss import loss_fn


class Trainable(Protocol):
    """What a step needs: :class:`pdebm.build.Run` has it; tests build it from parts."""

    energy: Any
    sampler: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any  # a torch LR scheduler, or None


def to_host(values: Mapping[str, Tensor | float | int | None]) -> dict[str, float]:
    """Scalars (0-d tensors, on any device, or Python numbers) as floats, with **one** device
    transfer for all the tensors (stacked, then one ``tolist``). ``None`` values are dropped."""
    tensors = {k: v for k, v in values.items() if torch.is_tensor(v)}
    out = {k: float(v) for k, v in values.items() if v is not None and not torch.is_tensor(v)}
    if tensors:
        stacked = torch.stack([v.detach().reshape(()).to(torch.float64) for v in tensors.values()])
        out.update(zip(tensors, stacked.tolist()))
    return {k: out[k] for k in values if k in out}  # the caller's order


class DivergenceWatch:
    """Non-finite losses, found without a host sync per step: each step's loss (a detached 0-d
    tensor) is only remembered, at no device cost; :meth:`pending` turns the losses since the
    last transfer into two device scalars (the index of the first non-finite one, ``-1`` if
    none, and its value) that travel with the step's one transfer."""

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

    @staticmethod
    def raise_if_bad(step: int | None, loss: float | None) -> None:
        """Raise :class:`TrainingDiverged` naming ``step`` unless it is ``None``."""
        if step is not None:
            raise TrainingDiverged(f"loss is {loss} at step {step}: training "
                                   "diverged (try a smaller lr or step size, or energy_reg > 0)")


@dataclass
class StepOutput:
    """What one step leaves: device tensors until :meth:`host` is called."""

    parts: Mapping[str, Tensor]  # the loss and its parts (train/<key>): LossParts, read lazily
    grad_norm: Tensor | None     # parameter-gradient norm before clipping (when clipping)
    seconds: float               # wall-clock of the step (host side; the monitor excluded)
    sampler: Any = None          # its stats() (of its last step) are read in host(), not before
    watch: DivergenceWatch | None = None

    def host(self) -> dict[str, float]:
        """Everything as floats in one transfer: ``train/<part>``, ``train/grad_norm`` and
        ``sampler/<stat>`` keys. Raises :class:`TrainingDiverged` if any step since the watch
        started had a non-finite loss."""
        values: dict[str, Any] = {f"train/{k}": v for k, v in self.parts.items()}
        values["train/grad_norm"] = self.grad_norm
        if self.sampler is not None:
            values.update({f"sampler/{k}": v for k, v in self.sampler.stats().items()})
        pending = self.watch.pending() if self.watch is not None else None
        if pending is not None:
            steps, values["_first_bad"], values["_bad_loss"] = pending
        host = to_host(values)
        if pending is not None:
            first, loss = int(host.pop("_first_bad")), host.pop("_bad_loss")
            DivergenceWatch.raise_if_bad(steps[first] if first >= 0 else None, loss)
        return host


_SNAPSHOTS: "weakref.WeakKeyDictionary[torch.nn.Module, FrozenEnergy]" = weakref.WeakKeyDictionary()


def snapshot(energy: Any) -> FrozenEnergy:
    """θ_k of ``energy`` in the run's one preallocated :class:`FrozenEnergy` (valid until the
    next call for the same energy)."""
    frozen = _SNAPSHOTS.get(energy)
    if frozen is None:
        frozen = _SNAPSHOTS[energy] = energy.frozen()
        return frozen
    return frozen.refresh()


def train_step(run: Trainable, x_data: Tensor, alpha: float = 0.0,
               grad_clip: float | None = None, step: int = 0,
               monitor: Callable[[Tensor, Tensor], None] | None = None,
               watch: DivergenceWatch | None = None) -> StepOutput:
    """One optimizer step on the data batch ``x_data``. ``monitor(x_neg, log_w)`` (if given)
    sees the step's negatives before the update; ``step`` names a divergence.

    Without ``watch`` a non-finite loss is checked at once (one host sync, for callers that
    take single steps); the trainer passes its :class:`DivergenceWatch` and checks it when it
    fetches the numbers (:meth:`StepOutput.host`)."""
    t0 = time.perf_counter()
    x_neg, log_w = run.sampler.negatives(run.energy)
    seconds = time.perf_counter() - t0
    if monitor is not None:
        monitor(x_neg, log_w)
    t0 = time.perf_counter()
    loss, parts = loss_fn(run.energy, x_data, x_neg, log_w, alpha)
    if watch is None:
        DivergenceWatch.raise_if_bad(None if torch.isfinite(loss).item() else step,
                                      float(loss.detach()))
    else:
        watch.observe(loss, step)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = (torch.nn.utils.clip_grad_norm_(run.energy.parameters(), grad_clip).detach()
                 if grad_clip else None)
    needs = getattr(run.sampler, "needs_previous_energy", True)
    before = snapshot(run.energy) if needs else None
    run.optimizer.step()
    if run.scheduler is not None:
        run.scheduler.step()
    run.sampler.update(before, run.energy)
    return StepOutput(parts, grad_norm, seconds + time.perf_counter() - t0, run.sampler, watch)

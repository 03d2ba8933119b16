"""One training step, used by the trainer, ``scripts/gpu_check.py`` and the tests.

    [negatives] → loss → backward → clip → [θ_k snapshot] → optimizer step → schedule
    → sampler.update(θ_k or None, θ_{k+1})

The trainer draws the step's negatives itself, so that the monitor sees them before the update,
and hands them in; other callers leave them out and the step draws them. The sampler contract
(:mod:`pdebm.samplers.base`) is kept here: the negatives are used as returned (never detached),
and ``backward`` runs before ``update``. The θ_k snapshot is taken only for samplers with
``needs_previous_energy`` (the particle sampler), into buffers allocated once per run
(:meth:`~pdebm.energy.base.FrozenEnergy.refresh`).

No host sync: a step reads no device value. The loss parts, the gradient norm and the sampler's
``stats()`` stay 0-d tensors on the device; :meth:`StepOutput.host` brings all of them to the
host in one transfer, which the trainer calls only on logging and checkpoint steps. A
non-finite loss costs nothing per step either: the trainer's
:class:`~pdebm.diverge.DivergenceWatch` keeps each step's loss tensor, and that same transfer
checks the ones kept.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, Mapping, Protocol

import torch
from torch import Tensor

from pdebm.diverge import DivergenceWatch
from pdebm.energy.base import FrozenEnergy
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


@dataclass
class StepOutput:
    """What one step leaves: device tensors until :meth:`host` is called."""

    parts: Mapping[str, Tensor]  # the loss and its parts (train/<key>): LossParts, read lazily
    grad_norm: Tensor | None     # parameter-gradient norm before clipping (when clipping)
    sampler: Any = None          # its stats() (of its last step) are read in host(), not before
    watch: DivergenceWatch | None = None

    def host(self) -> dict[str, float]:
        """Everything as floats in one transfer: ``train/<part>``, ``train/grad_norm`` and
        ``sampler/<stat>`` keys. Raises :class:`~pdebm.errors.TrainingDiverged` if a step the
        watch observed since its last transfer had a non-finite loss."""
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


def train_step(run: Trainable, x_data: Tensor, negatives: tuple[Tensor, Tensor] | None = None,
               *, alpha: float = 0.0, grad_clip: float | None = None, step: int = 0,
               watch: DivergenceWatch | None = None) -> StepOutput:
    """One optimizer step on the data batch ``x_data`` and the negatives ``(x_neg, log_w)`` of
    ``run.sampler.negatives(run.energy)``, drawn here when not given; ``step`` names a
    divergence.

    Without ``watch`` a non-finite loss is checked at once (one host sync, for callers that
    take single steps); the trainer passes its :class:`~pdebm.diverge.DivergenceWatch` and
    checks it when it fetches the numbers (:meth:`StepOutput.host`)."""
    x_neg, log_w = run.sampler.negatives(run.energy) if negatives is None else negatives
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
    return StepOutput(parts, grad_norm, run.sampler, watch)

"""Checkpoints, written atomically (:func:`pdebm.io.atomic_write`): an interrupted write never
leaves a half-written checkpoint behind."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from pdebm.errors import ConfigError
from pdebm.io import atomic_write, remove_stale_tmp

LAST = "last.pt"
REQUIRED_KEYS = ("step", "energy", "optimizer", "scheduler", "sampler", "dataset", "rng")


def save(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically."""
    atomic_write(path, lambda f: torch.save(state, f))


def resolve(path: str | os.PathLike) -> Path:
    """A checkpoint file, or a run directory whose ``checkpoints/last.pt`` is used."""
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / "checkpoints" / LAST
    if not p.is_file():
        raise ConfigError(f"checkpoint not found: {p}")
    return p


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint; a missing, truncated or foreign file is a one-line :class:`ConfigError`."""
    p = resolve(path)
    try:
        state = torch.load(p, map_location=map_location, weights_only=False)
    except Exception as e:  # truncated zip, pickle garbage, ...
        raise ConfigError(f"cannot read checkpoint {p}: corrupted or not a pdebm checkpoint "
                          f"({type(e).__name__})") from None
    missing = [k for k in REQUIRED_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise ConfigError(f"cannot read checkpoint {p}: not a pdebm checkpoint (missing {missing})")
    _drop_retired_keys(state)
    return state


RETIRED_SAMPLER_KEYS = ("loss_energy_reg", "reuse_loss_grad", "shortcut_check_every")
"""Keys of ParticleSampler's removed ``x.grad`` shortcut (it gave the same ``∇ₓE`` as a direct
pass). Checkpoints written before its removal still carry them; they are dropped on reading, so
such runs can be evaluated, sampled and resumed (a resumed unweighted run then takes the direct
pass, which rounds differently: it continues the same model, not bit for bit the old trajectory)."""


def _drop_retired_keys(state: dict[str, Any]) -> None:
    config = state.get("config")
    sampler = config.get("sampler") if isinstance(config, dict) else None
    if isinstance(sampler, dict):
        for key in RETIRED_SAMPLER_KEYS:
            sampler.pop(key, None)


GOOD = "last_good.pt"


class Checkpoints:
    """``last.pt`` (what a resume continues) and ``last_good.pt``: the last checkpoint that a later
    evaluation found sound (:mod:`pdebm.diverge`); a diverged state never overwrites it."""

    def __init__(self, folder: Path, start_step: int | None = None) -> None:
        self.last, self.good = folder / LAST, folder / GOOD
        self.good_step: int | None = None
        self.pending: int | None = None   # step of last.pt, until an evaluation confirms it
        self.saved_step: int | None = start_step if self.last.is_file() else None  # a resume's
        remove_stale_tmp(folder)          # an interrupted write's leftovers (SIGKILL mid-save)

    def save(self, state: dict[str, Any]) -> None:
        save(self.last, state)
        self.pending = self.saved_step = int(state["step"])

    def intact(self) -> str:
        """The last intact checkpoint, for a message after a failed write."""
        if self.last.is_file():
            if self.saved_step is None:
                try:
                    self.saved_step = int(torch.load(self.last, weights_only=False)["step"])
                except Exception:
                    pass
            step = f" (step {self.saved_step})" if self.saved_step is not None else ""
            return f"the last intact checkpoint is {self.last}{step}"
        return "no checkpoint had been written yet"

    def confirm(self, step: int) -> None:
        """An evaluation at ``step`` passed the watchdog: a ``last.pt`` written at or before it
        becomes ``last_good.pt``."""
        if self.pending is not None and self.pending <= step:
            data = self.last.read_bytes()
            atomic_write(self.good, lambda f: f.write(data))
            self.good_step, self.pending = self.pending, None

    def diverged(self, reason: str) -> str:
        """The one-line divergence message, naming the checkpoint kept."""
        if self.good.is_file():
            kept = f"last good checkpoint: {self.good}" + (
                f" (step {self.good_step})" if self.good_step is not None else "")
        else:
            kept = "no checkpoint had been confirmed by an evaluation yet"
        reason = reason.split(": training diverged", 1)[0]  # the step's own note repeats the advice
        return (f"training diverged: {reason}; {kept}; try a smaller lr or langevin.step_size, "
                "or energy_reg > 0")


def write_error(e: OSError, ckpts: "Checkpoints | None", continue_with: str = "") -> str:
    """One line for a failed write (a full disk, a directory made read-only): the path, the
    reason, and the last intact checkpoint (every file is written atomically, so it is whole)."""
    path = e.filename or "a run file"
    reason = e.strerror or type(e).__name__
    kept = ckpts.intact() if ckpts is not None else "no checkpoint had been written yet"
    more = f"; once fixed, continue with: {continue_with}" if continue_with and ckpts is not None \
        and ckpts.last.is_file() else ""
    return f"cannot write {path}: {reason}; {kept}{more}"

"""Checkpoints, written atomically (:func:`pdebm.io.atomic_write`): an interrupted write never
leaves a half-written checkpoint behind."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from pdebm.errors import ConfigError
from pdebm.io import atomic_write

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
    return state

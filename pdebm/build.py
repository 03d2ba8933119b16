"""Building a run from its config: the objects, their validation, seeding and state dicts.

Shared by ``pdebm train`` (:mod:`pdebm.train`), ``pdebm eval`` (:mod:`pdebm.eval`) and the
scripts. Everything a user can get wrong is checked by :func:`build` before any training work
starts, and reported as one :class:`~pdebm.errors.ConfigError` line.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from pdebm import checkpoint, validate
from pdebm.checkpoint_diff import mismatch_message
from pdebm.config import instantiate, job_config  # noqa: F401  (job_config: also imported from here)
from pdebm.data.base import Dataset
from pdebm.energy.base import EnergyModel
from pdebm.errors import ConfigError, check, positive
from pdebm.monitor import Monitor
from pdebm.resume import refusal
from pdebm.samplers.base import Sampler


@dataclass
class Run:
    """The objects of one training run, built and validated from the config."""

    cfg: DictConfig
    device: torch.device
    dataset: Dataset
    energy: EnergyModel
    sampler: Sampler
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    monitor: Monitor
    step: int = 0
    wall_clock: float = 0.0                      # training seconds (monitoring excluded)
    history: list[dict[str, Any]] = field(default_factory=list)


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available; otherwise the named device (``cpu``, ``cuda:1``)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device={name!r} is not a torch device (use auto, cpu or cuda)") from None
    check(dev.type != "cuda" or torch.cuda.is_available(),
          f"device={name} requested but CUDA is not available (use device=auto or cpu)")
    return dev


def set_threads(num_threads: int | None) -> None:
    """``num_threads`` torch CPU threads (``None``: torch's default)."""
    if num_threads is not None:
        positive("num_threads", num_threads)
        torch.set_num_threads(int(num_threads))


def seed_everything(seed: int) -> None:
    """Seed the global generators once; all training randomness flows from here."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_data_and_energy(cfg: DictConfig,
                          fit_base: bool = True) -> tuple[Dataset, EnergyModel]:
    """The dataset (seeded by the run) and the energy, with the values known only at run time
    (data shape and statistics) filled in; shared by training and ``pdebm eval``. A base fitted
    to data (``energy.base=mixture``) is fitted to the dataset's statistics images unless
    ``fit_base`` is false (a checkpoint's state is loaded into it instead)."""
    dataset: Dataset = instantiate(cfg.dataset, seed=cfg.seed)
    energy: EnergyModel = instantiate(cfg.energy, data_shape=dataset.shape,
                                      data_mean=dataset.mean, data_std=dataset.std)
    if energy.needs_base_fit:
        check(hasattr(dataset, "statistics_images"),
              f"energy.base=mixture is fitted to image data; dataset {type(dataset).__name__} "
              "is not an image data set (use energy.base=gaussian)")
        labels = getattr(dataset, "train_labels", None)
        check(not energy.base_needs_labels or labels is not None,
              f"energy.base_fit=classes fits one component per class of the labelled training "
              f"images, but dataset {dataset.name} has no labels (use energy.base_fit=em)")
        if fit_base:
            x = dataset.statistics_images()
            energy.fit_base(x, labels[:len(x)] if energy.base_needs_labels else None)
    return dataset, energy


def build(cfg: DictConfig) -> Run:
    """Instantiate and validate everything; restore a checkpoint when ``resume`` is set."""
    validate.coerce_integers(cfg)  # configs composed outside the CLI (tests, scripts)
    validate.validate(cfg)
    state = checkpoint.load(cfg.resume) if cfg.resume else None
    if state is not None:  # only safe keys (more steps, logging periods) may differ
        why = refusal(state.get("config"), job_config(cfg))
        check(why is None, why or "")
    device = resolve_device(cfg.device)
    set_threads(cfg.num_threads)
    seed_everything(cfg.seed)
    dataset, energy = build_data_and_energy(cfg)
    energy = energy.to(device)
    sampler: Sampler = instantiate(cfg.sampler)
    check(not sampler.requires_2d or dataset.is_2d,
          f"sampler={choice(cfg, 'sampler')} needs 2D data, but dataset="
          f"{choice(cfg, 'dataset')} has shape {tuple(dataset.shape)}")
    optimizer = torch.optim.Adam(energy.parameters(), lr=cfg.lr, betas=tuple(cfg.betas),
                                 weight_decay=cfg.weight_decay)
    factor = instantiate(cfg.schedule, total_steps=cfg.steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    monitor = instantiate(cfg.eval, dataset=dataset, seed=cfg.seed)
    run = Run(cfg, device, dataset, energy, sampler, optimizer, scheduler, monitor)
    if state is not None:
        restore(run, state)
        check(run.step <= cfg.steps,
              f"checkpoint is at step {run.step}, beyond steps={cfg.steps}")
    return run


def state_dict(run: Run) -> dict[str, Any]:
    """Everything needed to continue the run bit-for-bit."""
    return {
        "step": run.step,
        "wall_clock": run.wall_clock,
        "history": run.history,
        "config": job_config(run.cfg),
        "energy": run.energy.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "sampler": run.sampler.state_dict(),
        "dataset": run.dataset.state_dict(),
        "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                "python": random.getstate(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
    }


def restore(run: Run, state: dict[str, Any]) -> None:
    try:
        run.energy.load_state_dict(state["energy"])
        run.optimizer.load_state_dict(state["optimizer"])
        run.scheduler.load_state_dict(state["scheduler"])
        run.sampler.load_state_dict(_to(state["sampler"], run.device))
        run.dataset.load_state_dict(state["dataset"])
    except (RuntimeError, KeyError, ValueError, TypeError) as e:
        current = {"energy": run.energy.state_dict(), "optimizer": run.optimizer.state_dict(),
                   "sampler": run.sampler.state_dict(), "dataset": run.dataset.state_dict()}
        raise ConfigError(mismatch_message(state.get("config"), job_config(run.cfg), state,
                                           current, e)) from None
    run.step, run.wall_clock = int(state["step"]), float(state["wall_clock"])
    run.history = list(state.get("history", []))
    rng = state["rng"]
    torch.set_rng_state(rng["torch"])
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])
    if rng.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def _to(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    return obj


def choice(cfg: DictConfig, group: str) -> str:
    """The option chosen for a config group (``particle``, ``8gaussians``), for names and logs."""
    if HydraConfig.initialized():
        choice = HydraConfig.get().runtime.choices.get(group)
        if choice:
            return str(choice)
    target = str(cfg[group].get("_target_", group))
    return cfg[group].get("name", target.rsplit(".", 1)[-1])


def run_dir(cfg: DictConfig) -> Path:
    """Hydra's output directory for this job (never the working directory)."""
    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path(cfg.get("run_dir") or "outputs/train/untracked")

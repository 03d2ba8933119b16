"""`pdebm train`: build the run's objects from the config, then train.

``main`` is the thin ``@hydra.main`` entry; ``train(cfg)`` is a plain function that tests call
in-process. Everything a user can get wrong is checked by :func:`build` before any training
work starts, and reported as one :class:`~pdebm.errors.ConfigError` line.
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from pdebm import checkpoint
from pdebm.config import CONFIG_DIR, instantiate, register_resolvers
from pdebm.data.base import Dataset
from pdebm.energy.base import EnergyModel
from pdebm.errors import ConfigError, TrainingDiverged, check, positive
from pdebm.evaluation import Evaluator
from pdebm.samplers.base import Sampler
from pdebm.stop import STOP, StopRequest, signal_name
from pdebm.io import atomic_write_text

register_resolvers()


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
    evaluator: Evaluator
    step: int = 0
    wall_clock: float = 0.0                      # training seconds (evaluation excluded)
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


def seed_everything(seed: int) -> None:
    """Seed the global generators once; all training randomness flows from here."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def validate(cfg: DictConfig) -> None:
    """Top-level settings; the groups' own values are checked by their constructors."""
    positive("steps", cfg.steps)
    if cfg.budget is not None:
        positive("budget", cfg.budget)
    positive("batch_size", cfg.batch_size)
    positive("lr", cfg.lr)
    positive("log_every", cfg.log_every)
    positive("eval_every", cfg.eval_every)
    positive("ckpt_every", cfg.ckpt_every, allow_zero=True)
    positive("energy_reg", cfg.energy_reg, allow_zero=True)
    if cfg.grad_clip is not None:
        positive("grad_clip", cfg.grad_clip)
    check(len(cfg.betas) == 2 and all(0 <= b < 1 for b in cfg.betas),
          f"betas must be two numbers in [0, 1), got {list(cfg.betas)}")


def build_data_and_energy(cfg: DictConfig) -> tuple[Dataset, EnergyModel]:
    """The dataset (seeded by the run) and the energy, with the values known only at run time
    (data shape and statistics) filled in; shared by training and ``pdebm eval``."""
    dataset: Dataset = instantiate(cfg.dataset, seed=cfg.seed)
    energy: EnergyModel = instantiate(cfg.energy, data_shape=dataset.shape,
                                      data_mean=dataset.mean, data_std=dataset.std)
    return dataset, energy


def build(cfg: DictConfig) -> Run:
    """Instantiate and validate everything; restore a checkpoint when ``resume`` is set."""
    validate(cfg)
    state = checkpoint.load(cfg.resume) if cfg.resume else None
    device = resolve_device(cfg.device)
    if cfg.num_threads is not None:
        positive("num_threads", cfg.num_threads)
        torch.set_num_threads(int(cfg.num_threads))
    seed_everything(cfg.seed)
    dataset, energy = build_data_and_energy(cfg)
    energy = energy.to(device)
    sampler: Sampler = instantiate(cfg.sampler)
    check(not sampler.requires_2d or dataset.is_2d,
          f"sampler={_choice(cfg, 'sampler')} needs 2D data, but dataset="
          f"{_choice(cfg, 'dataset')} has shape {tuple(dataset.shape)}")
    optimizer = torch.optim.Adam(energy.parameters(), lr=cfg.lr, betas=tuple(cfg.betas),
                                 weight_decay=cfg.weight_decay)
    factor = instantiate(cfg.schedule, total_steps=cfg.steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    evaluator = instantiate(cfg.eval, dataset=dataset, seed=cfg.seed)
    run = Run(cfg, device, dataset, energy, sampler, optimizer, scheduler, evaluator)
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


def job_config(cfg: DictConfig) -> dict[str, Any]:
    """The run's own settings as plain data (without the ``hydra`` node tests may carry)."""
    return OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]),
                                  resolve=True)


def restore(run: Run, state: dict[str, Any]) -> None:
    try:
        run.energy.load_state_dict(state["energy"])
        run.optimizer.load_state_dict(state["optimizer"])
        run.scheduler.load_state_dict(state["scheduler"])
        run.sampler.load_state_dict(_to(state["sampler"], run.device))
        run.dataset.load_state_dict(state["dataset"])
    except (RuntimeError, KeyError, ValueError, TypeError) as e:
        raise ConfigError(f"checkpoint does not match this config: {str(e).splitlines()[0]}") from None
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


def _choice(cfg: DictConfig, group: str) -> str:
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


def loss_fn(energy: EnergyModel, x_data: torch.Tensor, x_neg: torch.Tensor,
            log_w: torch.Tensor, alpha: float) -> tuple[torch.Tensor, dict[str, float]]:
    """Surrogate of the NLL (design §1): ``mean E(data) − Σ w̄ E(neg) + α(E(data)² + E(neg)²)``."""
    w_bar = torch.softmax(log_w.detach(), 0)
    e_data, e_neg = energy(x_data), energy(x_neg)
    loss = e_data.mean() - (w_bar * e_neg).sum()
    if alpha > 0:
        loss = loss + alpha * (e_data.pow(2).mean() + (w_bar * e_neg.pow(2)).sum())
    e_d, e_n = float(e_data.detach().mean()), float((w_bar * e_neg.detach()).sum())
    return loss, {"loss": float(loss.detach()), "energy_data": e_d, "energy_neg": e_n, "energy_gap": e_d - e_n}


def hparams(cfg: DictConfig) -> dict[str, Any]:
    """The run's settings as a flat dict of scalars for TensorBoard's HParams view."""
    flat: dict[str, Any] = {g: _choice(cfg, g) for g in ("dataset", "energy", "sampler", "schedule")}
    cont = job_config(cfg)

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if k != "_target_":
                    walk(f"{prefix}{k}" if not prefix else f"{prefix}.{k}", v)
        elif isinstance(node, (bool, int, float, str)):
            flat[prefix] = node
        elif node is not None:
            flat[prefix] = str(node)

    for key in ("seed", "steps", "batch_size", "lr", "energy_reg", "sampler", "energy"):
        walk(key, cont[key])
    return flat


def over_budget(run: Run) -> bool:
    """Equal-cost comparisons: stop once the sampler has spent ``budget`` gradient evaluations."""
    return run.cfg.budget is not None and run.sampler.grad_evals >= run.cfg.budget


def train(cfg: DictConfig) -> dict[str, float]:
    """Train one EBM as configured; returns the final evaluation metrics.

    SIGINT/SIGTERM are deferred from the very start (:mod:`pdebm.stop`): a signal before or
    during a step ends the run at the next step boundary with a checkpoint; one during the final
    evaluation lets the run complete. Either way the process then exits with 128 + signal."""
    with STOP.deferred() as stop:
        final = _train(cfg, stop)
        if stop.signal is not None:
            stop.exit(f"pdebm: {signal_name(stop.signal)} arrived as the run finished; the run is "
                      f"complete in {run_dir(cfg)}")
        return final


def _train(cfg: DictConfig, stop: StopRequest) -> dict[str, float]:
    stop.wait_at("start")
    run = build(cfg)
    out = run_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, out / "config.yaml")  # the composed config, also for runs made outside Hydra
    ckpt_dir = out / "checkpoints"
    writer = SummaryWriter(log_dir=str(out))
    metrics_path = out / "metrics.jsonl"
    fig_dir = out / "figures"
    start = run.step
    final: dict[str, float] = {}

    def evaluate(x: torch.Tensor, log_w: torch.Tensor) -> dict[str, float]:
        res = run.evaluator(run.energy, x, log_w, run.step, run.sampler.weighted)
        for k, v in res.scalars.items():
            writer.add_scalar(f"eval/{k}", v, run.step)
        if res.figure is not None:
            writer.add_figure("samples/density", res.figure, run.step, close=False)
            fig_dir.mkdir(exist_ok=True)
            res.figure.savefig(fig_dir / f"step_{run.step:07d}.png", dpi=80)
            import matplotlib.pyplot as plt
            plt.close(res.figure)
        for k, img in res.images.items():
            writer.add_image(f"samples/{k}", img, run.step)
        row = {"step": run.step, "sampler_grad_evals": run.sampler.grad_evals,
               "wall_clock_s": run.wall_clock, **res.scalars}
        run.history.append(row)
        with open(metrics_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        return res.scalars

    def save(name: str) -> None:
        checkpoint.save(ckpt_dir / name, state_dict(run))

    bar = tqdm(total=cfg.steps, initial=start, desc=f"train {_choice(cfg, 'sampler')}",
               disable=not cfg.progress, dynamic_ncols=True, file=sys.stderr)
    alpha = float(cfg.energy_reg)
    latest: dict[str, float] = {}
    while run.step < cfg.steps and not over_budget(run) and stop.signal is None:
        t0 = time.perf_counter()
        x_data = run.dataset.train_batch(cfg.batch_size).to(run.device)
        x_neg, log_w = run.sampler.negatives(run.energy)
        t_sample = time.perf_counter() - t0
        if run.step % cfg.eval_every == 0:
            latest = evaluate(x_neg, log_w)
        t0 = time.perf_counter()
        loss, parts = loss_fn(run.energy, x_data, x_neg, log_w, alpha)
        if not math.isfinite(parts["loss"]):
            raise TrainingDiverged(f"loss is {parts['loss']} at step {run.step}: training "
                                   "diverged (try a smaller lr or step size, or energy_reg > 0)")
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = (torch.nn.utils.clip_grad_norm_(run.energy.parameters(), cfg.grad_clip)
                     if cfg.grad_clip else None)
        before = run.energy.frozen()
        run.optimizer.step()
        run.scheduler.step()
        run.sampler.update(before, run.energy)
        run.step += 1
        run.wall_clock += t_sample + time.perf_counter() - t0
        if run.step % cfg.log_every == 0 or run.step == cfg.steps:
            for k, v in parts.items():
                writer.add_scalar(f"train/{k}", v, run.step)
            writer.add_scalar("train/lr", run.scheduler.get_last_lr()[0], run.step)
            if grad_norm is not None:
                writer.add_scalar("train/grad_norm", float(grad_norm), run.step)
            for k, v in run.sampler.stats().items():
                writer.add_scalar(f"sampler/{k}", v, run.step)
            writer.add_scalar("cost/sampler_grad_evals", run.sampler.grad_evals, run.step)
            writer.add_scalar("cost/wall_clock_s", run.wall_clock, run.step)
        if cfg.ckpt_every and run.step % cfg.ckpt_every == 0 and run.step < cfg.steps:
            save(checkpoint.LAST)
        bar.update(1)
        bar.set_postfix(loss=f"{parts['loss']:.3f}",
                        **({"nll": f"{latest['test_nll']:.3f}"} if "test_nll" in latest else {}))
        stop.at_step(run.step)
    bar.close()
    # The last checkpoint first (so that continuing it equals never having stopped), then the
    # final evaluation on fresh negatives of the final model, then the HParams entry.
    save(checkpoint.LAST)
    if stop.signal is not None:
        writer.close()
        stop.exit(f"pdebm: stopped by {signal_name(stop.signal)} at step {run.step}; checkpoint "
                  f"written to {ckpt_dir / checkpoint.LAST} (continue with "
                  f"resume={ckpt_dir / checkpoint.LAST})")
    stop.wait_at("final")
    x_neg, log_w = run.sampler.negatives(run.energy)
    final = evaluate(x_neg, log_w)
    final = {**final, "sampler_grad_evals": float(run.sampler.grad_evals),
             "wall_clock_s": run.wall_clock}
    writer.add_hparams(hparams(cfg), {f"hparam/{k}": v for k, v in final.items()}, run_name=".")
    writer.close()
    atomic_write_text(out / "final_metrics.json", json.dumps(final, indent=2))
    return final


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def hydra_main(cfg: DictConfig) -> None:
    """Hydra entry point of ``pdebm train``; a ConfigError becomes one line on stderr."""
    try:
        final = train(cfg)
    except (ConfigError, TrainingDiverged) as e:
        print(f"pdebm: error: {e}", file=sys.stderr)
        raise SystemExit(2 if isinstance(e, ConfigError) else 1) from None
    summary = ", ".join(f"{k}={final[k]:.4g}" for k in ("test_nll", "lag_kl", "mmd2",
                                                        "wall_clock_s") if k in final)
    print(f"pdebm: done in {run_dir(cfg)}: {summary}", flush=True)
    STOP.wait_at("teardown")


def main() -> None:
    """``pdebm train``: signals stay deferred through Hydra's start-up and teardown, so that a
    signal at any moment ends in one line and exit status 128 + signal."""
    with STOP.deferred():
        hydra_main()
    if STOP.signal is not None:
        STOP.exit(f"pdebm: {signal_name(STOP.signal)} arrived as the run finished; the run is "
                  "complete")

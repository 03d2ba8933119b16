"""What a training run writes besides checkpoints: TensorBoard scalars, figures and images,
``metrics.jsonl`` (one row per monitor call), the HParams entry and ``final_metrics.json``.

Tags: ``train/*`` (loss parts, lr, grad_norm), ``sampler/*`` (the sampler's ``stats()``),
``cost/*`` (gradient evaluations, wall-clock), ``eval/*`` (:class:`~pdebm.monitor.Monitor`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch.utils.tensorboard import SummaryWriter

from pdebm.build import Run, choice, job_config
from pdebm.figures import close_figure
from pdebm.io import atomic_write_text
from pdebm.monitor import MonitorResult
from pdebm.step import StepOutput

FINAL = "final_metrics.json"


class RunLog:
    """The sinks of one run directory ``out`` (created, with the composed ``config.yaml``)."""

    def __init__(self, out: Path, cfg: DictConfig) -> None:
        out.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, out / "config.yaml")  # the composed config, also for runs outside Hydra
        self.out, self.cfg = out, cfg
        self.writer = SummaryWriter(log_dir=str(out))
        self.metrics_path = out / "metrics.jsonl"
        self.fig_dir = out / "figures"

    def train_scalars(self, run: Run, step: StepOutput) -> None:
        w, k = self.writer, run.step
        for key, v in step.parts.items():
            w.add_scalar(f"train/{key}", v, k)
        w.add_scalar("train/lr", run.scheduler.get_last_lr()[0], k)
        if step.grad_norm is not None:
            w.add_scalar("train/grad_norm", step.grad_norm, k)
        for key, v in run.sampler.stats().items():
            w.add_scalar(f"sampler/{key}", v, k)
        w.add_scalar("cost/sampler_grad_evals", run.sampler.grad_evals, k)
        w.add_scalar("cost/wall_clock_s", run.wall_clock, k)

    def monitor(self, run: Run, res: MonitorResult) -> dict[str, float]:
        """Log one monitor result at ``run.step`` (eval/* tags, pictures, a metrics.jsonl row)."""
        for k, v in res.scalars.items():
            self.writer.add_scalar(f"eval/{k}", v, run.step)
        if res.figure is not None:
            self.writer.add_figure("samples/density", res.figure, run.step, close=False)
            self.fig_dir.mkdir(exist_ok=True)
            res.figure.savefig(self.fig_dir / f"step_{run.step:07d}.png", dpi=80)
            close_figure(res.figure)
        for k, img in res.images.items():
            self.writer.add_image(f"samples/{k}", img, run.step)
        row = {"step": run.step, "sampler_grad_evals": run.sampler.grad_evals,
               "wall_clock_s": run.wall_clock, **res.scalars}
        run.history.append(row)
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        return res.scalars

    def finish(self, final: dict[str, float]) -> None:
        """The HParams entry, then ``final_metrics.json`` (atomically: whole or absent)."""
        self.writer.add_hparams(hparams(self.cfg), {f"hparam/{k}": v for k, v in final.items()},
                                run_name=".")
        self.writer.close()
        atomic_write_text(self.out / FINAL, json.dumps(final, indent=2))

    def close(self) -> None:
        self.writer.close()


def hparams(cfg: DictConfig) -> dict[str, Any]:
    """The run's settings as a flat dict of scalars for TensorBoard's HParams view."""
    flat: dict[str, Any] = {g: choice(cfg, g) for g in ("dataset", "energy", "sampler", "schedule")}
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

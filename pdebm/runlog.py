"""What a training run writes besides checkpoints: TensorBoard scalars, figures and images,
``metrics.jsonl`` (one row per monitor call), the HParams entry and ``final_metrics.json``.

Tags: ``train/*`` (loss parts, lr, grad_norm), ``sampler/*`` (the sampler's ``stats()``),
``cost/*`` (gradient evaluations, wall-clock), ``eval/*`` (:class:`~pdebm.monitor.Monitor`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch.utils.tensorboard import SummaryWriter

from pdebm.build import Run, choice, job_config
from pdebm.figures import close_figure, render, save_rgba
from pdebm.io import atomic_write_text, remove_stale_tmp
from pdebm.monitor import MonitorResult
from pdebm.resume import purge_metrics

FINAL = "final_metrics.json"


class RunLog:
    """The sinks of one run directory ``out`` (created, with the composed ``config.yaml``)."""

    def __init__(self, out: Path, cfg: DictConfig, start_step: int = 0) -> None:
        out.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, out / "config.yaml")  # the composed config, also for runs outside Hydra
        self.out, self.cfg = out, cfg
        # A resumed run appends to its own directory: TensorBoard drops the events written after
        # the checkpoint (purge_step), metrics.jsonl its rows from that step on.
        self.writer = SummaryWriter(log_dir=str(out), purge_step=start_step or None)
        self.metrics_path = out / "metrics.jsonl"
        damage = purge_metrics(self.metrics_path, start_step)
        if damage:  # the CLI printed it before the run started; the run's own record keeps it
            logging.getLogger("pdebm.train").info("warning: %s", damage)
        remove_stale_tmp(out)  # an interrupted atomic write's leftovers
        self._hparams_start()
        self.fig_dir = out / "figures"

    def train_scalars(self, run: Run, host: dict[str, float]) -> None:
        """One step's scalars, already on the host (:meth:`pdebm.step.StepOutput.host`:
        ``train/*`` and ``sampler/*`` keys), plus the learning rate and the cost counters."""
        w, k = self.writer, run.step
        for tag, v in host.items():
            w.add_scalar(tag, v, k)
        w.add_scalar("train/lr", run.scheduler.get_last_lr()[0], k)
        w.add_scalar("cost/sampler_grad_evals", run.sampler.grad_evals, k)
        w.add_scalar("cost/wall_clock_s", run.wall_clock, k)

    def monitor(self, run: Run, res: MonitorResult) -> dict[str, float]:
        """Log one monitor result at ``run.step`` (eval/* tags, pictures, a metrics.jsonl row)."""
        for k, v in res.scalars.items():
            self.writer.add_scalar(f"eval/{k}", v, run.step)
        if res.figure is not None:
            rgba = render(res.figure)  # drawn once for TensorBoard and the PNG
            close_figure(res.figure)
            self.writer.add_image("samples/density", rgba[..., :3], run.step, dataformats="HWC")
            self.fig_dir.mkdir(exist_ok=True)
            save_rgba(rgba, self.fig_dir / f"step_{run.step:07d}.png")
        for k, img in res.images.items():
            self.writer.add_image(f"samples/{k}", img, run.step)
        row = {"step": run.step, "sampler_grad_evals": run.sampler.grad_evals,
               "wall_clock_s": run.wall_clock, **res.scalars}
        run.history.append(row)
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        return res.scalars

    def _hparams_start(self) -> None:
        """This run's HParams session (its settings). No experiment summary is written, so that
        TensorBoard builds it from all runs: the keys that vary are marked ``differs`` and shown
        first, and the metrics are the run's own scalar tags (``eval/test_nll`` ...), so no
        ``hparam/*`` scalars are written."""
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        _, self._session_start, self._session_end = hparams_summary(hparams(self.cfg), {})
        self.writer._get_file_writer().add_summary(self._session_start)

    def finish(self, final: dict[str, float]) -> None:
        """The HParams session's end, then ``final_metrics.json`` (atomically: whole or absent)."""
        self.writer._get_file_writer().add_summary(self._session_end)
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

    cont["sampler"].pop("kernel", None)  # the shared kernel: logged once, as langevin.*
    for key in ("seed", "steps", "budget", "batch_size", "lr", "weight_decay", "energy_reg",
                "grad_clip", "dataset", "energy", "sampler", "langevin", "schedule"):
        if key in cont:
            walk(key, cont[key])
    return flat

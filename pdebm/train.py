"""`pdebm train`: the training loop (build → steps → final evaluation), and its Hydra entry.

``train(cfg)`` is a plain function that tests call in-process; ``main`` is the command. The
pieces live beside it: :mod:`pdebm.build` (the run's objects), :mod:`pdebm.step` (one step),
:mod:`pdebm.runlog` (what is written), :mod:`pdebm.stop` (signals).
"""

from __future__ import annotations

import sys
import time

import hydra
from omegaconf import DictConfig
from tqdm import tqdm

from pdebm import checkpoint
from pdebm.build import Run, build, choice, run_dir, state_dict
from pdebm.config import CONFIG_DIR
from pdebm.errors import ConfigError, TrainingDiverged
from pdebm.runlog import RunLog
from pdebm.step import train_step
from pdebm.stop import STOP, StopRequest, signal_name


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
    log = RunLog(run_dir(cfg), cfg)
    last = log.out / "checkpoints" / checkpoint.LAST
    bar = tqdm(total=cfg.steps, initial=run.step, desc=f"train {choice(cfg, 'sampler')}",
               disable=not cfg.progress, dynamic_ncols=True, file=sys.stderr)
    latest: dict[str, float] = {}

    def record_eval(x_neg, log_w) -> None:  # the monitor sees the step's own negatives
        latest.update(log.monitor(run, run.monitor(run.energy, x_neg, log_w, run.step,
                                                   run.sampler.weighted)))

    while run.step < cfg.steps and not over_budget(run) and stop.signal is None:
        t0 = time.perf_counter()
        x_data = run.dataset.train_batch(cfg.batch_size).to(run.device)
        t_batch = time.perf_counter() - t0
        out = train_step(run, x_data, alpha=float(cfg.energy_reg), grad_clip=cfg.grad_clip,
                         step=run.step,
                         monitor=record_eval if run.step % cfg.eval_every == 0 else None)
        run.step += 1
        run.wall_clock += t_batch + out.seconds
        if run.step % cfg.log_every == 0 or run.step == cfg.steps:
            log.train_scalars(run, out)
        if cfg.ckpt_every and run.step % cfg.ckpt_every == 0 and run.step < cfg.steps:
            checkpoint.save(last, state_dict(run))
        bar.update(1)
        bar.set_postfix(loss=f"{out.parts['loss']:.3f}",
                        **({"nll": f"{latest['test_nll']:.3f}"} if "test_nll" in latest else {}))
        stop.at_step(run.step)
    bar.close()
    # The last checkpoint first (so that continuing it equals never having stopped), then the
    # final evaluation on fresh negatives of the final model, then the HParams entry.
    checkpoint.save(last, state_dict(run))
    if stop.signal is not None:
        log.close()
        stop.exit(f"pdebm: stopped by {signal_name(stop.signal)} at step {run.step}; checkpoint "
                  f"written to {last} (continue with resume={last})")
    stop.wait_at("final")
    x_neg, log_w = run.sampler.negatives(run.energy)
    final = log.monitor(run, run.monitor(run.energy, x_neg, log_w, run.step, run.sampler.weighted))
    final = {**final, "sampler_grad_evals": float(run.sampler.grad_evals),
             "wall_clock_s": run.wall_clock}
    log.finish(final)
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

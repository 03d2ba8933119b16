"""`pdebm train`: the training loop (build → steps → final evaluation), and its Hydra entry.

A step, in the order its data flows: a data batch and the sampler's negatives; on evaluation
steps the monitor, on those same negatives; :func:`~pdebm.step.train_step` (loss, backward,
optimizer step, ``sampler.update``); on logging and checkpoint steps the step's numbers in one
transfer to the host, for the log and the divergence watchers; then a checkpoint if one is due.
After the last step come a checkpoint and the final evaluation on fresh negatives.

``train(cfg)`` is a plain function that tests call in-process; ``main`` is the command. The
pieces live beside it: :mod:`pdebm.build` (the run's objects), :mod:`pdebm.step` (one step),
:mod:`pdebm.diverge` (the two divergence watchers), :mod:`pdebm.runlog` (what is written),
:mod:`pdebm.stop` (signals), :mod:`pdebm.command` (the entry point and its one-line errors).
"""

from __future__ import annotations

import logging
import sys
import time

from omegaconf import DictConfig

from pdebm.build import Run, build, choice, run_dir, state_dict
from pdebm.checkpoint import Checkpoints, write_error
from pdebm.command import hydra_command
from pdebm.diverge import DivergenceWatch, Watchdog
from pdebm.errors import TrainingDiverged, WriteFailed
from pdebm.progress import Progress
from pdebm.resume import auto, continue_command, done_command
from pdebm.runlog import RunLog
from pdebm.step import train_step
from pdebm.stop import STOP, StopRequest, signal_name


logger = logging.getLogger("pdebm.train")  # records go to <run dir>/train.log


def over_budget(run: Run) -> bool:
    """Equal-cost comparisons: stop once the sampler has spent ``budget`` gradient evaluations."""
    return run.cfg.budget is not None and run.sampler.grad_evals >= run.cfg.budget


def train(cfg: DictConfig) -> dict[str, float]:
    """Train one EBM as configured; returns the final evaluation metrics.

    SIGINT/SIGTERM are deferred from the very start (:mod:`pdebm.stop`): a signal before or
    during a step ends the run at the next step boundary with a checkpoint; one during the final
    evaluation lets the run complete. Either way the process then exits with 128 + signal."""
    with STOP.deferred() as stop:
        finished = auto(cfg, run_dir(cfg))  # resume=auto: a finished job is kept as it is
        if finished is not None:
            logger.info("already finished in %s (resume=auto): nothing to do", run_dir(cfg))
            return finished
        try:
            final = _train(cfg, stop)
        except OSError as e:  # every file is written atomically: what is on disk is whole
            out = run_dir(cfg)
            message = write_error(e, Checkpoints(out / "checkpoints"), continue_command(out))
            logger.info(message)
            raise WriteFailed(message) from None
        if stop.signal is not None:
            stop.exit(f"pdebm: {signal_name(stop.signal)} arrived as the run finished; the run is "
                      f"complete in {run_dir(cfg)}")
        return final


def _train(cfg: DictConfig, stop: StopRequest) -> dict[str, float]:
    stop.wait_at("start")
    run = build(cfg)
    out = run_dir(cfg)
    log = RunLog(out, cfg, start_step=run.step)
    ckpts = Checkpoints(out / "checkpoints", start_step=run.step)
    source = getattr(run.dataset, "source", None)
    if source is not None:  # which data directory was read (console and train.log)
        logger.info("data read from %s", source)
        print(f"pdebm: data read from {source}", file=sys.stderr, flush=True)
    # the two divergence watchers (pdebm/diverge.py): the host's numbers, the device's losses
    watch = Watchdog(cfg.divergence.energy_factor, cfg.divergence.nll_margin)
    nonfinite = DivergenceWatch()
    bar = Progress(cfg.steps, run.step, f"train {choice(cfg, 'sampler')}", cfg.progress)
    logger.info("start in %s: dataset=%s sampler=%s steps=%d%s", out, choice(cfg, "dataset"),
                choice(cfg, "sampler"), cfg.steps, f" (resumed at step {run.step})" if run.step else "")

    def evaluate(x_neg, log_w) -> dict[str, float]:
        """The monitor on negatives of the current model; a sound evaluation confirms the
        checkpoint written before it (last_good.pt)."""
        scalars = log.monitor(run, run.monitor(run.energy, x_neg, log_w, run.step,
                                               run.sampler.weighted, sampler=run.sampler))
        bar.evaluated(run.step, scalars)
        watch.after_eval(run.step, scalars)
        if watch.ok:
            ckpts.confirm(run.step)
        return scalars

    try:
        while run.step < cfg.steps and not over_budget(run) and stop.signal is None and watch.ok:
            t0 = time.perf_counter()
            x_data = run.dataset.train_batch(cfg.batch_size).to(run.device)
            x_neg, log_w = run.sampler.negatives(run.energy)
            seconds = time.perf_counter() - t0
            if run.step % cfg.eval_every == 0:  # the monitor sees the step's own negatives
                logger.info("step %d: %s", run.step, summary(evaluate(x_neg, log_w), every=True))
            t0 = time.perf_counter()
            out_step = train_step(run, x_data, (x_neg, log_w), alpha=float(cfg.energy_reg),
                                  grad_clip=cfg.grad_clip, step=run.step, watch=nonfinite)
            run.step += 1
            run.wall_clock += seconds + time.perf_counter() - t0  # the monitor's time excluded
            log_now = run.step % cfg.log_every == 0 or run.step == cfg.steps
            saving = cfg.ckpt_every and run.step % cfg.ckpt_every == 0 and run.step < cfg.steps
            if log_now or saving:  # the step's numbers come to the host here only, in one transfer
                t0 = time.perf_counter()
                host = out_step.host()  # raises TrainingDiverged on a non-finite loss since the last one
                run.wall_clock += time.perf_counter() - t0  # waiting for the device is training time
                watch.after_step(run.step, {k[6:]: v for k, v in host.items() if k.startswith("train/")})
                if log_now:
                    log.train_scalars(run, host)
                    bar.loss_is(host["train/loss"])
            if watch.ok and saving:
                ckpts.save(state_dict(run))
            bar.step()
            stop.at_step(run.step)
        nonfinite.check()  # a divergence since the last transfer ends the run before its checkpoint
    except TrainingDiverged as e:  # a non-finite loss, found at a transfer
        watch.flag(str(e))
    if watch.ok:  # the last checkpoint first, so that continuing it equals never having stopped
        ckpts.save(state_dict(run))
    stopped = watch.ok and stop.signal is not None
    if watch.ok and not stopped:  # the final evaluation, on fresh negatives of the final model
        logger.info("training ended at step %d (%s)", run.step,
                    "budget reached" if over_budget(run) else f"steps={cfg.steps} reached")
        stop.wait_at("final")
        final = evaluate(*run.sampler.negatives(run.energy))
    bar.close()
    if not watch.ok:  # in training or at the final evaluation
        log.close()
        raise diverged(ckpts.diverged(watch.reason))
    if stopped:
        log.close()
        message = (f"stopped by {signal_name(stop.signal)} at step {run.step}; checkpoint written "
                   f"to {ckpts.last} (continue with: {continue_command(out)})")
        logger.info(message)
        stop.exit(f"pdebm: {message}")
    final = {**final, "sampler_grad_evals": float(run.sampler.grad_evals),
             "wall_clock_s": run.wall_clock}
    log.finish(final)
    logger.info("done in %s: %s (next: %s)", out, summary(final, every=True), done_command(cfg, out))
    return final


def diverged(message: str) -> TrainingDiverged:
    logger.info(message)  # the record in train.log; the CLI prints the same line
    return TrainingDiverged(message)


def summary(metrics: dict[str, float], every: bool = False) -> str:
    keys = metrics if every else [k for k in ("test_nll", "lag_kl", "mmd2", "wall_clock_s")
                                  if k in metrics]
    return ", ".join(f"{k}={metrics[k]:.4g}" for k in keys)


def print_done(cfg: DictConfig, final: dict[str, float]) -> None:
    """What ``pdebm train`` prints when the run is complete; then the ``teardown`` test hook
    (:mod:`pdebm.stop`)."""
    print(f"pdebm: done in {run_dir(cfg)}: {summary(final)} (next: "
          f"{done_command(cfg, run_dir(cfg))})", flush=True)
    STOP.wait_at("teardown")


# Hydra's entry point of `pdebm train`: bad input (ConfigError) exits 2, a run that diverged or
# could not write exits 1, each with one line.
hydra_main = hydra_command("train", train, print_done, failures=(TrainingDiverged, WriteFailed))


def main() -> None:
    """``pdebm train``: signals stay deferred through Hydra's start-up and teardown, so that a
    signal at any moment ends in one line and exit status 128 + signal."""
    with STOP.deferred():
        hydra_main()
    if STOP.signal is not None:
        STOP.exit(f"pdebm: {signal_name(STOP.signal)} arrived as the run finished; the run is "
                  "complete")

"""The ``pdebm`` command: a dispatcher that pops the sub-command, runs the pre-run checks
(:mod:`pdebm.preflight`) and hands the rest to Hydra.

    pdebm train [overrides]         one training run     (pdebm/train.py)
    pdebm train -m a=1,2 b=x,y      a sweep (multirun)
    pdebm train resume=<dir>        continue a run or a sweep (pdebm/resume.py)
    pdebm train --cfg job           print the composed config
    pdebm train --help              config groups and their options
    pdebm eval  <run dir> [...]     AIS log-likelihood of a finished run (images)
    pdebm sample <run dir> [...]    long-run chains of a trained image model

A new sub-command is one entry in :data:`COMMANDS`: its module (with a ``main()`` that Hydra
runs) and its config name. Bad input is one line, exit status 2, before any job starts
(:func:`pdebm.preflight.preflight`); the run directory is claimed by :mod:`pdebm.rundir`.
"""

from __future__ import annotations

import sys

from pdebm.preflight import preflight
from pdebm.rundir import Plan, remove_stub

USAGE = """usage: pdebm <command> [hydra overrides]

commands:
  train   train an energy-based model (pdebm train --help lists config groups and options)
  eval    evaluate a finished run: AIS log-likelihood and long-run samples (images)
  sample  long Langevin chains from a trained image model: grids, samples, diagnostics

examples:
  pdebm train sampler=particle dataset=8gaussians
  pdebm train -m sampler=particle,sgld,pcd seed=0,1,2
  tensorboard --logdir outputs
"""

COMMANDS = {"train": ("pdebm.train", "train"), "eval": ("pdebm.eval", "eval"),
            "sample": ("pdebm.sample", "sample")}


def main(argv: list[str] | None = None) -> None:
    from pdebm.errors import ConfigError
    from pdebm.stop import STOP

    STOP.install()  # from here on a signal ends in one line, never a traceback (pdebm/stop.py)
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        raise SystemExit(0 if argv else 2)
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"pdebm: error: unknown command {command!r} (choose from {', '.join(COMMANDS)})",
              file=sys.stderr)
        raise SystemExit(2)
    module_name, config_name = COMMANDS[command]
    try:
        plan = preflight(config_name, rest)
    except ConfigError as e:
        print(f"pdebm: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    for w in plan.warnings:
        print(f"pdebm: warning: {w}", file=sys.stderr)
    import importlib

    module = importlib.import_module(module_name)
    # Hydra reads sys.argv; keep argv[0] so that hydra.job.name stays the command's module name.
    sys.argv = [sys.argv[0]] + plan.args
    ok = False
    try:
        module.main()
        ok = True
    except SystemExit as e:
        ok = e.code in (None, 0)
        if not ok and plan.jobs:
            print(sweep_summary(plan, e.code), file=sys.stderr, flush=True)
        raise
    finally:
        if not ok:
            remove_stub(plan)


def sweep_summary(plan: Plan, code) -> str:
    """The last line of a sweep that ended early: how many jobs finished, how many stopped with a
    checkpoint, how many never started, and the command that continues it."""
    import signal

    from pdebm.resume import continue_command

    root = plan.run_dir
    finished = stopped = 0
    if root is not None and root.is_dir():
        for job in root.iterdir():
            if not job.is_dir() or job.name.startswith("."):
                continue
            if (job / "final_metrics.json").is_file():
                finished += 1
            elif (job / "checkpoints" / "last.pt").is_file():
                stopped += 1
    rest = max(0, plan.jobs - finished - stopped)
    why = (f"stopped by {signal.Signals(code - 128).name}" if isinstance(code, int) and code > 128
           and code - 128 in {s.value for s in signal.Signals} else f"ended early (exit {code})")
    return (f"pdebm: sweep {why}: {finished} of {plan.jobs} jobs finished, {stopped} stopped "
            f"with a checkpoint, {rest} never started; continue with: {continue_command(root)}")


if __name__ == "__main__":
    main()


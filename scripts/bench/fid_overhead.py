"""What periodic FID/KID adds to a training run: CPU seconds of the monitor's FID part per
evaluation, against the CPU seconds of the run's training steps (process time, so that a loaded
machine does not distort the ratio).

    python scripts/bench/fid_overhead.py                              # digits_quick, particle
    python scripts/bench/fid_overhead.py --overrides sampler=pcd --steps 20

Prints the per-step and per-evaluation costs and the overhead of a whole preset run:
``evaluations × FID seconds / (steps × step seconds)``, with the preset's own ``steps`` and
``eval_every`` (one evaluation every ``eval_every`` steps, plus the final one).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from pdebm.build import build
from pdebm.config import compose_config
from pdebm.step import train_step


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="digits_quick")
    parser.add_argument("--overrides", nargs="*", default=[])
    parser.add_argument("--steps", type=int, default=20, help="training steps timed")
    parser.add_argument("--evals", type=int, default=10, help="monitor calls timed (each way)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_config([f"experiment={args.experiment}", "num_threads=1", "progress=false",
                              *args.overrides], tmp)
        run = build(cfg)
        x_data = run.dataset.train_batch(cfg.batch_size)
        train_step(run, x_data, step=0)  # warm-up (particle initialisation, allocations)
        t0 = time.process_time()
        for k in range(args.steps):
            train_step(run, run.dataset.train_batch(cfg.batch_size), step=k + 1)
        per_step = (time.process_time() - t0) / args.steps
        x, log_w = run.sampler.negatives(run.energy)

        def monitor_seconds() -> float:
            t = time.process_time()
            for k in range(args.evals):
                run.monitor(run.energy, x, log_w, k, run.sampler.weighted, sampler=run.sampler)
            return (time.process_time() - t) / args.evals

        with_fid = monitor_seconds()
        score, run.monitor.score = run.monitor.score, None
        without = monitor_seconds()
        run.monitor.score = score
    fid = with_fid - without
    n_evals = -(-int(cfg.steps) // int(cfg.eval_every)) + 1
    train_total = int(cfg.steps) * per_step
    print(f"| preset | training step (CPU s) | monitor without / with FID (CPU s) | FID per "
          f"evaluation | evaluations | FID / training time |")
    print("|---|---|---|---|---|---|")
    print(f"| {args.experiment} {' '.join(args.overrides)} | {per_step:.3f} | {without:.3f} / "
          f"{with_fid:.3f} | {fid:.3f} s | {n_evals} | {100 * n_evals * fid / train_total:.2f} % |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

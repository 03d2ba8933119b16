#!/usr/bin/env python
"""Time one training step per sampler and one AIS chain batch on CUDA against the CPU.

Each timing is the median of ``--repeats`` runs after one warm-up (CUDA synchronised), on a run
built from the same config as ``pdebm train`` (default: the digits_quick preset). The training
step is the trainer's own sequence: data batch, negatives, loss, backward, Adam step, sampler
update. The AIS row is one temperature of ``pdebm eval``'s default AIS (``--chains`` chains, one
MALA step); multiply by ``n_temps`` for a whole estimate.

On a machine without a CUDA GPU it says so, times the CPU only, and exits 0.

Examples:
  python scripts/gpu_check.py
  python scripts/gpu_check.py --samplers particle --overrides experiment=paper_mnist dataset.n_train=1000
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from pdebm.config import compose_config  # noqa: E402
from pdebm.metrics.ais import ais_log_z  # noqa: E402
from pdebm.samplers.langevin import LangevinConfig  # noqa: E402
from pdebm.step import train_step  # noqa: E402
from pdebm.build import Run, build  # noqa: E402


def timed(fn: Callable[[], None], device: torch.device, repeats: int) -> float:
    """Median seconds of ``fn`` over ``repeats`` calls after one warm-up call."""
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def one_step(run: Run) -> None:
    """One optimizer step exactly as the trainer takes it (:func:`pdebm.step.train_step`)."""
    x_data = run.dataset.train_batch(run.cfg.batch_size).to(run.device)
    train_step(run, x_data, alpha=float(run.cfg.energy_reg), grad_clip=run.cfg.grad_clip)


def measure(overrides: list[str], device: str, args: argparse.Namespace) -> dict[str, float]:
    """Seconds per training step (one row per sampler) and per AIS temperature on ``device``."""
    out: dict[str, float] = {}
    run = None
    for sampler in args.samplers:
        cfg = compose_config([*overrides, f"sampler={sampler}", f"device={device}",
                              "progress=false"])
        run = build(cfg)
        out[f"train step, sampler={sampler} (batch {cfg.batch_size})"] = timed(
            lambda: one_step(run), run.device, args.repeats)
    kernel = LangevinConfig(n_steps=1, step_size=0.1, mala=True)
    out[f"AIS, {args.chains} chains × 1 temperature (MALA)"] = timed(
        lambda: ais_log_z(run.energy, n_chains=args.chains, n_temps=1, kernel=kernel, seed=0),
        run.device, args.repeats)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--overrides", nargs="*", default=["experiment=digits_quick"],
                        help="config overrides of the run to time (as for pdebm train)")
    parser.add_argument("--samplers", nargs="+", default=["particle", "pcd", "sgld"])
    parser.add_argument("--chains", type=int, default=100, help="AIS chains in one batch")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per row (median)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    has_cuda = torch.cuda.is_available()
    if has_cuda:
        print(f"CUDA: {torch.cuda.get_device_name(0)} (torch {torch.__version__})")
    else:
        why = "torch built without CUDA" if torch.version.cuda is None else "no GPU visible"
        print(f"CUDA: NO GPU PRESENT ({why}; torch {torch.__version__}) — timing the CPU only")
    print(f"config: {' '.join(args.overrides)}; CPU threads: {args.threads}; "
          f"median of {args.repeats} after one warm-up\n")
    cpu = measure(args.overrides, "cpu", args)
    gpu = measure(args.overrides, "cuda", args) if has_cuda else {}
    print("| what | CPU (ms) | CUDA (ms) | speed-up |")
    print("|---|---:|---:|---:|")
    for what, t in cpu.items():
        g = gpu.get(what)
        cuda_ms = f"{1e3 * g:.1f}" if g is not None else "no GPU"
        speed = f"{t / g:.1f}×" if g is not None else "–"
        print(f"| {what} | {1e3 * t:.1f} | {cuda_ms} | {speed} |")


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Time one training step per sampler and one AIS chain batch on CUDA against the CPU.

Each timing is the median of ``--repeats`` runs after one warm-up (CUDA synchronised), on a run
built from the same config as ``pdebm train`` (default: the digits_quick preset). The training
step is the trainer's own sequence: data batch, negatives, loss, backward, Adam step, sampler
update. The AIS row is one temperature of ``pdebm eval``'s default AIS (``--chains`` chains, one
MALA step); multiply by ``n_temps`` for a whole estimate.

On a machine without a CUDA GPU it says so, times the CPU only, and exits 0.

``--profile`` prints, per training step and sampler, eager and compiled (``langevin.compile``)
side by side: wall time (median), host syncs (host reads of tensor values, counted by
:mod:`pdebm.hostsync`), aten ops (``torch.profiler`` events named ``aten::*``, nested ones
included), and on CUDA kernel launches (``cudaLaunchKernel*``/``cuLaunchKernel``/
``cudaGraphLaunch`` calls), ``cudaStreamSynchronize`` calls and the GPU kernel time.

Examples:
  python scripts/gpu_check.py
  python scripts/gpu_check.py --profile --overrides experiment=paper_2d
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
from pdebm.diverge import DivergenceWatch  # noqa: E402
from pdebm.step import train_step  # noqa: E402
from pdebm.build import Run, build  # noqa: E402
from pdebm.hostsync import count_host_reads  # noqa: E402

LAUNCHES = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx",
            "cudaGraphLaunch")
SYNCS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize")


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


def profile_step(overrides: list[str], device: str, sampler: str, compiled: bool,
                 args: argparse.Namespace) -> dict[str, float | None]:
    """Per-step figures of one sampler on ``device``, eager or compiled (module docstring)."""
    cfg = compose_config([*overrides, f"sampler={sampler}", f"device={device}", "progress=false",
                          f"langevin.compile={str(compiled).lower()}"])
    run = build(cfg)
    watch = DivergenceWatch()
    cuda = run.device.type == "cuda"

    def step() -> None:  # the trainer's step with logging off (no host transfer)
        x_data = run.dataset.train_batch(run.cfg.batch_size).to(run.device)
        train_step(run, x_data, alpha=float(run.cfg.energy_reg), grad_clip=run.cfg.grad_clip,
                   watch=watch)

    for _ in range(args.warmup):  # includes the compilation
        step()
    wall = timed(step, run.device, args.repeats)
    with count_host_reads() as reads:
        for _ in range(args.profile_steps):
            step()
    acts = [torch.profiler.ProfilerActivity.CPU]
    if cuda:
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=acts) as prof:
        for _ in range(args.profile_steps):
            step()
        if cuda:
            torch.cuda.synchronize(run.device)
    events = prof.events()
    n = args.profile_steps
    row: dict[str, float | None] = {
        "ms": 1e3 * wall,
        "syncs": sum(reads.values()) / n,
        "aten": sum(e.name.startswith("aten::") for e in events) / n,
        "launches": None, "stream_syncs": None, "gpu_ms": None}
    if cuda:
        row["launches"] = sum(e.name in LAUNCHES for e in events) / n
        row["stream_syncs"] = sum(e.name in SYNCS for e in events) / n
        kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
        row["gpu_ms"] = sum(getattr(e, "device_time", 0.0) or 0.0 for e in kernels) / n / 1e3
    return row


def print_profile(args: argparse.Namespace, devices: list[str]) -> None:
    def fmt(v: float | None, digits: int = 1) -> str:
        return "–" if v is None else f"{v:.{digits}f}"

    cols = ("ms", "syncs", "aten", "launches", "stream_syncs", "gpu_ms")
    names = {"ms": "wall ms", "syncs": "host syncs", "aten": "aten ops", "launches": "launches",
             "stream_syncs": "stream syncs", "gpu_ms": "GPU kernel ms"}
    print("| device | sampler | " + " | ".join(f"{names[c]} eager / compiled" for c in cols) + " |")
    print("|---|---|" + "---:|" * len(cols))
    for device in devices:
        for sampler in args.samplers:
            eager = profile_step(args.overrides, device, sampler, False, args)
            comp = (dict.fromkeys(cols) if args.eager_only
                    else profile_step(args.overrides, device, sampler, True, args))
            cells = [f"{fmt(eager[c], 2 if c.endswith('ms') else 1)} / "
                     f"{fmt(comp[c], 2 if c.endswith('ms') else 1)}" for c in cols]
            print(f"| {device} | {sampler} | " + " | ".join(cells) + " |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--overrides", nargs="*", default=["experiment=digits_quick"],
                        help="config overrides of the run to time (as for pdebm train)")
    parser.add_argument("--samplers", nargs="+", default=["particle", "pcd", "sgld"])
    parser.add_argument("--chains", type=int, default=100, help="AIS chains in one batch")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per row (median)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--profile", action="store_true",
                        help="per-step wall time, host syncs, aten ops, launches and GPU kernel "
                             "time, eager vs compiled (instead of the CPU/CUDA timing table)")
    parser.add_argument("--warmup", type=int, default=3,
                        help="--profile: untimed steps first (the compilation happens here)")
    parser.add_argument("--profile-steps", type=int, default=3,
                        help="--profile: steps counted for syncs and profiled (averaged)")
    parser.add_argument("--cpu-only", action="store_true", help="--profile: skip CUDA")
    parser.add_argument("--eager-only", action="store_true",
                        help="--profile: skip the compiled column (compiling takes minutes on a CPU)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    has_cuda = torch.cuda.is_available()
    if has_cuda:
        print(f"CUDA: {torch.cuda.get_device_name(0)} (torch {torch.__version__})")
    else:
        why = "torch built without CUDA" if torch.version.cuda is None else "no GPU visible"
        print(f"CUDA: NO GPU PRESENT ({why}; torch {torch.__version__}) — timing the CPU only")
    if args.profile:
        print(f"config: {' '.join(args.overrides)}; CPU threads: {args.threads}; wall: median "
              f"of {args.repeats} after {args.warmup} warm-up steps; counts: mean of "
              f"{args.profile_steps} steps; logging off\n")
        print_profile(args, ["cpu"] + (["cuda"] if has_cuda and not args.cpu_only else []))
        return
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

"""`pdebm sample`: long Langevin chains from a trained image model (is it a density whose own
long-run samples still look like data?).

Short-run EBMs can give good negatives while their long-run chains saturate or blur (Nijkamp
et al. 2019/2020). This command runs ``n`` chains of ``steps`` MALA or ULA steps with the run's
own Langevin kernel (``langevin.*`` of the checkpoint's config, unless overridden) from
``init``: ``base`` (the energy's base or its N(0, I) noise), ``data`` (training images) or
``negatives`` (the trained sampler's own negatives, asked through its interface). Every
``every`` steps it records diagnostics: the mean energy of the chain states minus that of the
held-out images, the mean ``|∇ₓE|``, the acceptance rate (MALA's own; for ULA chains the mean
Metropolis acceptance probability of one probe step from the current states, a measure of the
discretisation error) and FID/KID of the chain states against the held-out images.

Everything is written into a new directory ``<run>/sample/<init>-<steps>-seed<seed>`` (a ``-2``,
``-3`` ... suffix if taken; nothing existing is overwritten): ``grid_<step>.png`` at the chain
lengths ``grid_at``, ``samples.pt`` (final states in model space and as images),
``diagnostics.json`` (rewritten atomically at every record) and TensorBoard events with the
scalars ``sample/<key>`` and the images ``sample/grid``.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor
from tqdm import tqdm

from pdebm import checkpoint
from pdebm.build import build_data_and_energy, resolve_device, set_threads
from pdebm.command import hydra_command
from pdebm.config import instantiate
from pdebm.errors import ConfigError, check, one_of, positive
from pdebm.figures import image_grid, save_png
from pdebm.io import atomic_write, atomic_write_text
from pdebm.samplers.langevin import KERNEL_KEYS, LangevinConfig, energy_and_grad, langevin

INITS = ("base", "data", "negatives")
RESULTS = "diagnostics.json"
CHUNK = 50  # Langevin steps per kernel call (the progress bar's granularity)


def run_directory(ckpt: Path) -> Path:
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent


def _int(cfg: DictConfig, key: str, minimum: int) -> int:
    v = cfg[key]
    check(isinstance(v, int) and not isinstance(v, bool) and v >= minimum,
          f"{key} must be an integer >= {minimum}, got {v!r}")
    return int(v)


def validate(cfg: DictConfig) -> dict[str, Any]:
    """The command's own settings, checked before anything is read or written."""
    check(not OmegaConf.is_missing(cfg, "run"),
          "run=<run directory or checkpoint> is required (e.g. pdebm sample run=outputs/train/...)")
    s = {"n": _int(cfg, "n", 2), "steps": _int(cfg, "steps", 1), "every": _int(cfg, "every", 1),
         "seed": _int(cfg, "seed", 0), "n_grid": _int(cfg, "n_grid", 1)}
    one_of("init", cfg.init, INITS)
    check(cfg.mala is None or isinstance(cfg.mala, bool),
          f"mala must be true, false or null (the run's own), got {cfg.mala!r}")
    if cfg.step_size is not None:
        check(isinstance(cfg.step_size, (int, float)) and not isinstance(cfg.step_size, bool)
              and cfg.step_size > 0, f"step_size must be > 0 or null, got {cfg.step_size!r}")
    grid_at = cfg.grid_at
    check(grid_at is None or (OmegaConf.is_list(grid_at) and all(
        isinstance(k, int) and not isinstance(k, bool) and k >= 0 for k in grid_at)),
        f"grid_at must be a list of chain lengths >= 0, got {grid_at!r}")
    check(isinstance(cfg.fid, bool), f"fid must be true or false, got {cfg.fid!r}")
    check(isinstance(cfg.progress, bool), f"progress must be true or false, got {cfg.progress!r}")
    if cfg.num_threads is not None:
        positive("num_threads", cfg.num_threads)
    lengths = sorted({0, s["steps"]} if grid_at is None else {int(k) for k in grid_at})
    late = [k for k in lengths if k > s["steps"]]
    check(not late, f"grid_at={late} exceeds steps={s['steps']}")
    s["grid_at"] = lengths
    return s


def kernel_of(job: DictConfig, cfg: DictConfig) -> LangevinConfig:
    """The run's Langevin kernel (``langevin:`` of its config), with this command's overrides."""
    settings = {k: v for k, v in OmegaConf.to_container(job.get("langevin") or {}).items()
                if k in KERNEL_KEYS}
    kernel = LangevinConfig.from_settings(CHUNK, settings)
    if cfg.step_size is not None:
        kernel = replace(kernel, step_size=float(cfg.step_size))
    if cfg.mala is not None:
        kernel = replace(kernel, mala=bool(cfg.mala))
    kernel = replace(kernel, compile=False)
    try:
        kernel.validate("langevin")
    except ConfigError as e:
        raise ConfigError(f"{e} (this run's kernel with mala={cfg.mala}, step_size="
                          f"{cfg.step_size})") from None
    return kernel


def rebuild(state: dict[str, Any], device: torch.device):
    job = state.get("config")
    check(isinstance(job, dict) and "dataset" in job and "energy" in job,
          "checkpoint has no stored run config (written by an older pdebm?)")
    job = OmegaConf.create(job)
    dataset, energy = build_data_and_energy(job)
    check(dataset.is_image, f"pdebm sample draws image grids; this run was trained on "
          f"{tuple(dataset.shape)} data (its density and negatives are in its figures/)")
    try:
        energy.load_state_dict(state["energy"])
    except (RuntimeError, KeyError) as e:
        raise ConfigError(f"checkpoint's energy does not match its stored config: "
                          f"{str(e).splitlines()[0]}") from None
    return job, dataset, energy.to(device)


def start(init: str, n: int, job: DictConfig, state: dict[str, Any], dataset, energy,
          gen: torch.Generator) -> tuple[Tensor, dict[str, Any]]:
    """The chains' starting points and what to record about them."""
    info: dict[str, Any] = {}
    if init == "base":
        return energy.sample_base(n).detach(), info
    if init == "data":
        pool = dataset.statistics_images()
        idx = torch.randint(len(pool), (n,), generator=gen) if n > len(pool) else \
            torch.randperm(len(pool), generator=gen)[:n]
        return pool[idx].to(energy.device), info
    check("sampler" in state and "sampler" in job,
          "init=negatives: the checkpoint holds no sampler state")
    sampler = instantiate(job.sampler)
    try:
        sampler.load_state_dict(state["sampler"])
    except (RuntimeError, KeyError, ValueError, TypeError) as e:
        raise ConfigError(f"init=negatives: cannot restore the run's sampler ({e})") from None
    x, log_w = sampler.negatives(energy)
    x = x.detach()
    info["negatives_available"] = len(x)
    p = torch.softmax(log_w.detach().double().cpu(), 0) if sampler.weighted else \
        torch.full((len(x),), 1.0 / len(x), dtype=torch.float64)
    if n <= len(x) and not sampler.weighted:
        idx = torch.randperm(len(x), generator=gen)[:n]
    else:  # weighted, or more chains than negatives: draws with the weights' probabilities
        idx = torch.multinomial(p, n, replacement=True, generator=gen)
    return x[idx.to(x.device)].clone(), info


def probe_accept(energy, x: Tensor, kernel: LangevinConfig) -> float:
    """Mean Metropolis acceptance probability ``min(1, r)`` of one Langevin proposal from ``x``
    (not taken): what MALA would accept here; 1 means ULA's discretisation error is small."""
    probe = replace(kernel, n_steps=1, mala=True, noise_scale=None)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(12345)
        e, g = energy_and_grad(energy, x)
        sigma = probe.sigma
        drift = -0.5 * probe.step_size * g
        y = x + drift + sigma * torch.randn_like(x)
        e_y, g_y = energy_and_grad(energy, y)
        drift_y = -0.5 * probe.step_size * g_y
        log_q_back = -(x - y - drift_y).pow(2).flatten(1).sum(1) / (2 * sigma ** 2)
        log_q_fwd = -(y - x - drift).pow(2).flatten(1).sum(1) / (2 * sigma ** 2)
        log_r = (-e_y + e + log_q_back - log_q_fwd).clamp(max=0.0)
    return float(log_r.exp().mean())


def claim_dir(base: Path) -> Path:
    """Create ``base`` exclusively, or ``base-2``, ``base-3`` ... if taken."""
    base.parent.mkdir(parents=True, exist_ok=True)
    for k in range(1, 10_000):
        candidate = base if k == 1 else base.with_name(f"{base.name}-{k}")
        try:
            os.mkdir(candidate)
            return candidate
        except FileExistsError:
            continue
    raise ConfigError(f"cannot create a new directory next to {base}")


def sample(cfg: DictConfig) -> dict[str, Any]:
    """Run the chains and write the results (module docstring); returns the diagnostics."""
    s = validate(cfg)
    device = resolve_device(cfg.device)
    set_threads(cfg.num_threads)
    ckpt = checkpoint.resolve(cfg.run)
    state = checkpoint.load(ckpt)
    torch.manual_seed(s["seed"])
    job, dataset, energy = rebuild(state, device)
    kernel = kernel_of(job, cfg)
    score = None
    if cfg.fid:
        from pdebm.metrics.fid import image_score_for

        score = image_score_for(dataset, n_reference=int(cfg.fid_reference), seed=s["seed"])
    gen = torch.Generator().manual_seed(s["seed"])
    x, info = start(cfg.init, s["n"], job, state, dataset, energy, gen)
    # every check has passed: from here on results are written
    run = run_directory(ckpt)
    out = claim_dir(run / "sample" / f"{cfg.init}-{s['steps']}-seed{s['seed']}")
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(out))
    with torch.no_grad():
        e_test = torch.cat([energy(c.to(device)) for c in dataset.test.split(1024)])
    e_data = float(e_test.mean())
    report: dict[str, Any] = {
        "checkpoint": str(ckpt.resolve()), "step": int(state["step"]), "n": s["n"],
        "steps": s["steps"], "init": cfg.init, "seed": s["seed"],
        "kernel": {"step_size": float(kernel.step_size), "noise_scale": kernel.noise_scale,
                   "mala": kernel.mala, "grad_clip": kernel.grad_clip},
        "energy_heldout": e_data, **info, "records": [], "grids": []}
    records_at = sorted({*range(0, s["steps"] + 1, s["every"]), s["steps"]})
    stops = sorted({*records_at, *s["grid_at"]})
    accepted, moved = 0.0, 0
    t0 = time.perf_counter()
    bar = tqdm(total=s["steps"], desc=f"sample {cfg.init}", disable=not cfg.progress,
               dynamic_ncols=True, file=sys.stderr)
    done = 0
    for stop in stops:
        while done < stop:
            k = min(CHUNK, stop - done)
            res = langevin(energy, x, replace(kernel, n_steps=k))
            x = res.x
            if res.accept_rate is not None:
                accepted += float(res.accept_rate) * k
                moved += k
            done += k
            bar.update(k)
        if stop in s["grid_at"]:
            grid = image_grid(dataset.to_images(x[: s["n_grid"]].cpu()))
            save_png(grid, out / f"grid_{stop:07d}.png")
            writer.add_image("sample/grid", grid, stop)
            report["grids"].append(f"grid_{stop:07d}.png")
        if stop in records_at:
            rec = record(energy, x, kernel, e_data, score, dataset, stop,
                         accepted / moved if moved else None)
            accepted, moved = 0.0, 0
            rec["wall_clock_s"] = time.perf_counter() - t0
            report["records"].append(rec)
            for key, v in rec.items():
                if key != "step" and isinstance(v, float) and math.isfinite(v):
                    writer.add_scalar(f"sample/{key}", v, stop)
            bar.set_postfix(gap=f"{rec['energy_gap']:.3g}", fid=rec.get("fid", "-"))
            atomic_write_text(out / RESULTS, json.dumps(report, indent=2))
    bar.close()
    writer.close()
    images = dataset.to_images(x.cpu())
    atomic_write(out / "samples.pt", lambda f: torch.save({"x": x.cpu(), "images": images}, f))
    report["out"] = str(out)
    report["wall_clock_s"] = time.perf_counter() - t0
    atomic_write_text(out / RESULTS, json.dumps(report, indent=2))
    return report


def record(energy, x: Tensor, kernel: LangevinConfig, e_data: float, score, dataset, step: int,
           accept: float | None) -> dict[str, Any]:
    """The diagnostics of the chain states at one chain length."""
    e, g = energy_and_grad(energy, x)
    rec: dict[str, Any] = {
        "step": step,
        "energy_chains": float(e.mean()),
        "energy_gap": float(e.mean()) - e_data,  # chains minus held-out images
        "grad_norm": float(g.flatten(1).norm(dim=1).mean()),
    }
    if kernel.mala:
        rec["accept_rate"] = accept  # None at step 0 (no move yet)
    else:
        rec["accept_rate_probe"] = probe_accept(energy, x, kernel)
    if score is not None:
        r = score(dataset.to_images(x.cpu()), salt=step)
        rec.update(fid=r["fid"], kid=r["kid"], kid_std=r["kid_std"], confident=r["confident"])
    return rec


def print_done(cfg: DictConfig, report: dict[str, Any]) -> None:
    """What ``pdebm sample`` prints when it has finished."""
    last = report["records"][-1]
    fid = f", FID {last['fid']:.3g}, confident {last['confident']:.2f}" if "fid" in last else ""
    print(f"pdebm: {report['n']} chains × {report['steps']} steps in "
          f"{report['wall_clock_s']:.0f} s: energy gap {last['energy_gap']:.3g}{fid}; wrote "
          f"{report['out']}")


main = hydra_command("sample", sample, print_done)  # Hydra's entry; bad input: one line, exit 2

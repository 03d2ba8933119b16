"""`pdebm eval`: AIS log-likelihood of a finished image run, and a grid of long-run samples.

``main`` is the Hydra entry (:func:`pdebm.command.hydra_command`); ``evaluate(cfg)`` is a plain
function that tests call in-process. It stands beside :mod:`pdebm.train` on :mod:`pdebm.build`
and never imports the trainer. (The periodic ``eval/*`` metrics during training are
:mod:`pdebm.monitor`.) The dataset and energy are rebuilt from the checkpoint's own stored
config (so the evaluation never depends on today's defaults) and the trained weights are loaded
into them.

Everything is written into the evaluated run's directory, next to its training summaries:
``ais.json`` (the numbers and the settings that produced them, with FID/KID of the AIS chains'
final states against the held-out images), ``samples_ais.png``, and a new
TensorBoard event file with the scalars ``ais/<key>`` and the image ``samples/ais`` at the
checkpoint's step. Nothing is overwritten: a second evaluation of the same run (other settings,
say) writes ``ais-2.json`` and ``samples_ais-2.png``, a third ``-3``, and so on; the path
written is printed and kept in the report (``results``). The grid shows the AIS chains' final states: each has gone through every
temperature's transitions from the base, so they are long-run (annealed) samples of the model.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.tensorboard import SummaryWriter

from pdebm import checkpoint
from pdebm.command import hydra_command
from pdebm.errors import ConfigError, check, one_of, positive
from pdebm.figures import image_grid, save_png
from pdebm.io import atomic_write_text
from pdebm.metrics.ais import ESS_WARNING, ais_log_likelihood, fit_gaussian
from pdebm.samplers.langevin import LangevinConfig
from pdebm.build import build_data_and_energy, resolve_device, set_threads

TRANSITIONS = ("mala", "ula")
STARTS = ("fitted_full", "fitted_diag", "base")
RESULTS = "ais.json"
GRID_PNG = "samples_ais.png"


def fresh_outputs(out: Path) -> tuple[Path, Path]:
    """``ais.json`` and ``samples_ais.png`` in ``out``, or the first ``ais-K.json`` /
    ``samples_ais-K.png`` pair (K = 2, 3, ...) of which neither exists: an evaluation never
    overwrites an earlier one's results."""
    for k in range(1, 10_000):
        suffix = "" if k == 1 else f"-{k}"
        pair = tuple(out / f"{Path(name).stem}{suffix}{Path(name).suffix}"
                     for name in (RESULTS, GRID_PNG))
        if not any(p.exists() for p in pair):
            return pair
    raise ConfigError(f"{out}: no free ais-K.json name left")


def run_directory(ckpt: Path) -> Path:
    """The run a checkpoint belongs to: ``<run>/checkpoints/x.pt`` → ``<run>``; a checkpoint
    file elsewhere → its own directory."""
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent


def rebuild(state: dict[str, Any], device: torch.device):
    """The run's dataset and trained energy, from the checkpoint's stored job config."""
    job = state.get("config")
    check(isinstance(job, dict) and "dataset" in job and "energy" in job,
          "checkpoint has no stored run config (written by an older pdebm?)")
    job = OmegaConf.create(job)
    dataset, energy = build_data_and_energy(job, fit_base=False)  # the fit is in the state
    check(dataset.is_image, f"pdebm eval estimates likelihoods of image runs by AIS; this run was "
          f"trained on {tuple(dataset.shape)} data (dataset {job.dataset.get('name', '?')}), whose "
          "exact test NLL by grid quadrature is eval/test_nll in its final_metrics.json")
    try:
        energy.load_state_dict(state["energy"])
    except (RuntimeError, KeyError) as e:
        raise ConfigError(f"checkpoint's energy does not match its stored config: "
                          f"{str(e).splitlines()[0]}") from None
    return dataset, energy.to(device)


def validate(cfg: DictConfig) -> None:
    """The evaluation's own settings (the AIS routine checks the rest with ``eval.`` names)."""
    check(not OmegaConf.is_missing(cfg, "run"),
          "run=<run directory or checkpoint> is required (e.g. pdebm eval run=outputs/train/...)")
    one_of("transition", cfg.transition, TRANSITIONS)
    if cfg.n_test is not None:
        positive("n_test", cfg.n_test)
    check(cfg.n_chains is not None and cfg.n_chains >= 2,
          f"n_chains must be >= 2 (the standard error of log Z needs two chains), got {cfg.n_chains}")
    positive("n_samples_grid", cfg.n_samples_grid, allow_zero=True)
    one_of("start", cfg.start, STARTS)
    positive("shrinkage", cfg.shrinkage, allow_zero=True)
    check(cfg.convergence_factor is None or int(cfg.convergence_factor) >= 2,
          f"convergence_factor must be >= 2 or null, got {cfg.convergence_factor}")
    check(isinstance(cfg.fid, bool), f"fid must be true or false, got {cfg.fid!r}")
    positive("fid_reference", cfg.fid_reference)


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Run AIS on the test split of ``cfg.run`` and write the results into its directory;
    returns what ``ais.json`` holds."""
    validate(cfg)
    device = resolve_device(cfg.device)
    set_threads(cfg.num_threads)
    ckpt = checkpoint.resolve(cfg.run)
    state = checkpoint.load(ckpt)
    out = run_directory(ckpt)
    torch.manual_seed(int(cfg.seed))  # construction draws (spectral-norm buffers), then overwritten
    dataset, energy = rebuild(state, device)
    x_test = dataset.test
    if cfg.n_test is not None:
        check(cfg.n_test <= len(x_test),
              f"n_test={cfg.n_test} exceeds the run's {len(x_test)} test images")
        x_test = x_test[: cfg.n_test]
    kernel = LangevinConfig(n_steps=int(cfg.n_steps), step_size=float(cfg.step_size),
                            mala=cfg.transition == "mala")
    t0 = time.perf_counter()
    if cfg.start == "base":
        check(energy.base is not None, "start=base: this run's energy has no Gaussian base "
              "(energy.base=none); use start=fitted_full or start=fitted_diag")
        start = energy.base
    else:  # a Gaussian fitted to the training images, in model space (not part of the model)
        start = fit_gaussian(dataset.statistics_images().to(device),
                             "full" if cfg.start == "fitted_full" else "diag",
                             float(cfg.shrinkage), prefix="eval")
    temps = [int(cfg.n_temps)]
    if cfg.convergence_factor is not None:
        temps.append(int(cfg.n_temps) * int(cfg.convergence_factor))
    results = [ais_log_likelihood(
        energy, x_test, dataset=dataset, batch_size=int(cfg.batch_size),
        n_chains=int(cfg.n_chains), n_temps=t, schedule=cfg.beta_schedule,
        beta_min=float(cfg.beta_min), kernel=kernel, adapt_step_size=bool(cfg.adapt_step_size),
        seed=int(cfg.seed), progress=bool(cfg.progress), prefix="eval", start=start)
        for t in temps]
    result = results[-1]  # the longest schedule is the estimate; the shorter one checks it
    scalars = {**result.scalars(), "wall_clock_s": time.perf_counter() - t0}
    step = int(state["step"])
    settings = {k: cfg[k] for k in ("n_chains", "n_temps", "beta_schedule", "beta_min", "transition",
                                    "step_size", "n_steps", "adapt_step_size", "seed", "start",
                                    "shrinkage", "convergence_factor")}
    convergence = [{"n_temps": t, "log_likelihood": r.log_likelihood,
                    "log_likelihood_se": r.log_likelihood_se, "bits_per_dim": r.bits_per_dim,
                    "log_z": r.ais.log_z, "ess_fraction": r.ess_fraction}
                   for t, r in zip(temps, results)]
    warnings_ = []
    if result.ess_fraction < ESS_WARNING:
        warnings_.append(f"AIS ESS/N = {result.ess_fraction:.3f} < {ESS_WARNING}: the estimate "
                         "rests on a few chains and is not trustworthy (more n_temps, or "
                         "beta_schedule=linear: on Fashion-MNIST it converged where the "
                         "geometric default did not; docs/evaluation.md)")
    if len(results) > 1:
        scalars["log_likelihood_change"] = results[-1].log_likelihood - results[0].log_likelihood
    if cfg.fid:  # sample quality of the model's own long-run (annealed) samples
        from pdebm.metrics.fid import image_score_for

        r = image_score_for(dataset, n_reference=int(cfg.fid_reference),
                            seed=int(cfg.seed))(dataset.to_images(result.samples.cpu()))
        scalars.update(fid=r["fid"], kid=r["kid"], kid_std=r["kid_std"], confident=r["confident"])
    report = {"checkpoint": str(ckpt.resolve()), "step": step, "n_test": len(x_test),
              "n_dims": result.n_dims, "n_temps": temps[-1],
              "final_step_size": result.ais.step_size,
              "start_log_likelihood": _start_log_likelihood(start, x_test, dataset, device),
              "settings": settings, **scalars, "convergence": convergence,
              "warnings": warnings_}
    check(all(math.isfinite(v) for v in scalars.values()),
          f"AIS gave non-finite numbers ({scalars}); try a smaller step_size or more n_temps")

    k = min(int(cfg.n_samples_grid), int(cfg.n_chains))
    results_json, grid_png = fresh_outputs(out)
    report["results"] = str(results_json)
    writer = SummaryWriter(log_dir=str(out))
    for key, value in scalars.items():
        writer.add_scalar(f"ais/{key}", value, step)
    if k > 0:
        grid = image_grid(dataset.to_images(result.samples[:k].cpu()))
        writer.add_image("samples/ais", grid, step)
        save_png(grid, grid_png)
    writer.close()
    atomic_write_text(results_json, json.dumps(report, indent=2))
    return report


@torch.no_grad()
def _start_log_likelihood(start, x_test: torch.Tensor, dataset, device: torch.device) -> float:
    """Exact mean test log-likelihood (nats, pixel space) of AIS's start Gaussian itself: the
    reference the model should beat."""
    x = x_test.to(device)
    ll = start.log_prob(x).double().cpu() + dataset.log_det_jacobian(x_test).double()
    return float(ll.mean())


def print_done(cfg: DictConfig, report: dict[str, Any]) -> None:
    """What ``pdebm eval`` prints when it has finished."""
    out = run_directory(Path(report["checkpoint"]))
    steps = ", ".join(f"T={c['n_temps']}: {c['log_likelihood']:.2f}"
                      for c in report["convergence"])
    print(f"pdebm: AIS of {out} at step {report['step']}: log-likelihood "
          f"{report['log_likelihood']:.2f} ± {report['log_likelihood_se']:.2f} nats, "
          f"{report['bits_per_dim']:.4f} bits/dim (log Z {report['log_z']:.2f} ± "
          f"{report['log_z_se']:.2f}; ESS/N {report['ess_fraction']:.3f}; {steps}; start "
          f"{'base' if report['settings'].get('start') == 'base' else 'Gaussian'} "
          f"{report['start_log_likelihood']:.2f}"
          + (f"; samples FID {report['fid']:.3g}, confident {report['confident']:.2f}"
             if "fid" in report else "")
          + f"); wrote {report['results']}")
    for w in report["warnings"]:
        print(f"pdebm: warning: {w}", file=sys.stderr)


main = hydra_command("eval", evaluate, print_done)  # Hydra's entry; bad input: one line, exit 2

#!/usr/bin/env python
"""Benchmark: train with each sampler side by side and print a markdown table per dataset.

Every job is a normal ``train(cfg)`` run (the same trainer as ``pdebm train``) with its own run
directory under ``--out``; this script only composes configs, runs them (``--jobs`` at a time,
one torch thread each) and summarises their ``metrics.jsonl``. Runs land in
``<out>/<preset>-<mode>-<steps>/<dataset>/<sampler>/seed=<seed>``; a finished run is reused only
if its ``overrides.json`` equals this job's overrides, otherwise it is retrained from scratch.

Two modes:
  steps   every sampler trains for the same number of optimizer steps;
  budget  every gradient-based sampler stops after the same number of per-particle energy-gradient
          evaluations (``budget=``; default: what PCD spends in ``--steps`` steps). A sampler
          that spends no gradients (``Sampler.gradient_free``: the exact oracle) runs ``--steps``.

Rows are told apart by what their sampler classes declare, never by name: the "gap to exact"
column is measured against the rows whose sampler is an ``oracle`` (exact samples of the model).

Examples:
  python scripts/compare_samplers.py --preset fast_2d --datasets 8gaussians --seeds 0 1 2
  python scripts/compare_samplers.py --preset paper_2d --datasets 8gaussians checkerboard \\
      --samplers particle_paper particle pcd sgld exact --seeds 0 1 2 --mode steps
  python scripts/compare_samplers.py --preset fast_2d --datasets all --seeds 0   # all eight
  python scripts/compare_samplers.py --preset paper_2d --mode budget --steps 2000
  python scripts/compare_samplers.py --samplers particle "particle:field=basis" \
      "particle:field=basis,weights=false" pcd      # variants: OPTION:key=value,... (sampler keys)
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DATASETS_2D = ["8gaussians", "checkerboard", "2spirals", "rings", "pinwheel", "swissroll",
               "circles", "moons"]


def sampler_overrides(spec: str) -> list[str]:
    """``particle:field=basis,weights=false`` -> ``sampler=particle sampler.field=basis
    sampler.weights=false``: a sampler option with some of its own keys changed (a table row)."""
    name, _, keys = spec.partition(":")
    return [f"sampler={name}"] + [f"sampler.{kv}" for kv in keys.split(",") if kv]


def split_rows(words: list[str]) -> tuple[list[str], list[str]]:
    """``--samplers particle pcd lr=3e-4``: argparse hands trailing ``key=value`` words to
    ``--samplers``; they are overrides for every run, not table rows (a row's own keys come after
    its colon). Returns (rows, overrides)."""
    rows = [w for w in words if "=" not in w.partition(":")[0]]
    return rows, [w for w in words if "=" in w.partition(":")[0]]


def run_job(job: dict) -> dict:
    """One training run in a fresh process; returns its history and final metrics."""
    import torch

    from pdebm.config import compose_config
    from pdebm.errors import TrainingDiverged
    from pdebm.train import train

    torch.set_num_threads(1)
    run_dir = Path(job["run_dir"])
    done = run_dir / "final_metrics.json"
    stopped = run_dir / "diverged.txt"  # a run the divergence watchdog stopped: its message
    recorded = run_dir / "overrides.json"  # the overrides a finished run was trained with
    same = recorded.is_file() and json.loads(recorded.read_text()) == job["overrides"]
    if not ((done.is_file() or stopped.is_file()) and same and not job["force"]):  # else reuse it
        shutil.rmtree(run_dir, ignore_errors=True)  # a stale or different run: start clean
        try:
            train(compose_config(job["overrides"], run_dir))  # writes final_metrics.json
        except TrainingDiverged as e:  # a baseline that blows up is a result, not a crash
            stopped.write_text(str(e))
        recorded.write_text(json.dumps(job["overrides"]))
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    if stopped.is_file():  # its numbers are those of its last evaluation (the one that stopped it)
        final = {**[row for row in history if "test_nll" in row][-1], "diverged": stopped.read_text()}
    else:
        final = json.loads(done.read_text())
    return {**job, "final": final, "history": history}


def fmt(values: list[float], digits: int = 3) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def nll_history(result: dict) -> list[dict]:
    """The evaluations of a run that carry a test NLL, in order."""
    return [row for row in result["history"] if "test_nll" in row]


def evals_to_reach(history: list[dict], target: float) -> float | None:
    """Sampler gradient evaluations at the first evaluation whose test NLL ≤ target."""
    for row in history:
        if row.get("test_nll", math.inf) <= target:
            return row["sampler_grad_evals"]
    return None


def sampler_kind(cfg) -> dict:
    """What a row's sampler class declares (:class:`pdebm.samplers.base.Sampler`): whether it
    is an oracle (exact samples: the reference of the gap column) and whether it spends no
    gradients (it runs ``--steps`` in budget mode and is drawn as a line)."""
    from hydra.utils import get_class

    cls = get_class(cfg.sampler._target_)
    return {"oracle": bool(cls.oracle), "gradient_free": bool(cls.gradient_free)}


def table(dataset: str, results: list[dict], samplers: list[str]) -> str:
    rows = [f"### {dataset}", "",
            "| sampler | test NLL (nats) | gap to exact | lag KL | lag floor | lag floor (ESS) | MMD² | sampler ∇E evals | wall-clock (s) | steps |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    by = {s: [r for r in results if r["dataset"] == dataset and r["sampler"] == s] for s in samplers}
    oracle = [r for rs in by.values() for r in rs if r.get("oracle")]
    exact_nll = [r["final"]["test_nll"] for r in oracle]
    for s in samplers:
        rs = by[s]
        if not rs:
            continue
        f = [r["final"] for r in rs]
        nll = [x["test_nll"] for x in f]
        gap = (fmt([a - statistics.mean(exact_nll) for a in nll])
               if exact_nll and not all(r.get("oracle") for r in rs) else "–")
        steps = sorted({r["history"][-1]["step"] for r in rs})
        n_div = sum("diverged" in x for x in f)
        s_name = s if not n_div else f"{s} (**diverged**: {n_div}/{len(f)} stopped by the watchdog)"
        rows.append(f"| {s_name} | {fmt(nll)} | {gap} | {fmt([x['lag_kl'] for x in f])} | "
                    f"{fmt([x['lag_kl_floor'] for x in f])} | "
                    f"{fmt([x.get('lag_kl_floor_ess', x['lag_kl_floor']) for x in f])} | "
                    f"{fmt([x['mmd2'] for x in f], 4)} | "
                    f"{statistics.median([x['sampler_grad_evals'] for x in f]):.3g} | "
                    f"{statistics.median([x['wall_clock_s'] for x in f]):.1f} | "
                    f"{'/'.join(str(s_) for s_ in steps)} |")
    for s in samplers:
        for r in by[s]:
            if "diverged" in r["final"]:
                rows.append(f"\n{s} seed={r['seed']}: {r['final']['diverged']} (its row shows that "
                            "evaluation; the run did not go on)")
    # cost for each other gradient-spending row to reach PCD's NLL: its final one (against PCD's
    # whole cost) and its best one over the run (mean of each seed's minimum, against what PCD
    # spent to get there)
    pcd = by.get("pcd") or []
    pcd_hist = [h for h in map(nll_history, pcd) if h]
    first = [h[0]["test_nll"] for h in pcd_hist if h[0]["step"] == 0]
    start = statistics.mean(first) if first else math.inf  # the model before any training
    targets = []  # (which, NLL to reach, PCD's evaluations for it, how PCD spent them)
    if pcd:
        targets.append(("final", statistics.mean(r["final"]["test_nll"] for r in pcd),
                        statistics.median(r["final"]["sampler_grad_evals"] for r in pcd), "in all"))
    if pcd_hist:
        best = [min(h, key=lambda row: row["test_nll"]) for h in pcd_hist]
        targets.append(("best", statistics.mean(b["test_nll"] for b in best),
                        statistics.median(b["sampler_grad_evals"] for b in best), "to reach it"))
    for s in [s for s in samplers if s != "pcd" and by.get(s)
              and not any(r.get("gradient_free") for r in by[s])]:
        for which, target, pcd_cost, spent in targets:
            if target >= start:  # PCD never beat the initial model: reaching it costs nothing
                rows.append(f"\n{s}: no cost comparison with PCD's {which} NLL ({target:.3f}), no better "
                            f"than the initial model's ({start:.3f})")
                continue
            reach = [evals_to_reach(r["history"], target) for r in by[s]]
            got = [x for x in reach if x is not None]
            if got:
                rows.append(f"\n{s} reaches PCD's {which} NLL ({target:.3f}) after {statistics.median(got):.3g} "
                            f"sampler ∇E evals (median of {len(got)}/{len(reach)} seeds that reach it) = "
                            f"{statistics.median(got) / pcd_cost:.2f} × the {pcd_cost:.3g} PCD spent {spent}")
            else:
                rows.append(f"\n{s} does not reach PCD's {which} NLL ({target:.3f}) in any seed")
    return "\n".join(rows)


def plot(results: list[dict], datasets: list[str], samplers: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ncols = min(4, len(datasets))
    nrows = -(-len(datasets) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5 * ncols, 4 * nrows), squeeze=False)
    for ax in axes.flat[len(datasets):]:
        ax.set_visible(False)
    for ax, d in zip(axes.flat, datasets):
        for s in samplers:
            for i, r in enumerate(r for r in results if r["dataset"] == d and r["sampler"] == s):
                h = nll_history(r)
                if r.get("gradient_free"):  # no gradient cost (x = 0): its final NLL as a line
                    color = "k" if r.get("oracle") else f"C{samplers.index(s)}"
                    ax.axhline(h[-1]["test_nll"], color=color, ls="--", lw=1,
                               label=f"{s} (final)" if i == 0 else None)
                    continue
                x = [row["sampler_grad_evals"] for row in h]
                ax.plot(x, [row["test_nll"] for row in h], color=f"C{samplers.index(s)}", alpha=0.8,
                        label=s if i == 0 else None)
        ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 0))  # linear: cost adds up
        ax.set_xlabel("sampler ∇E evaluations")
        ax.set_ylabel("test NLL (nats)")
        ax.set_title(d)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="fast_2d", help="experiment preset (fast_2d, paper_2d)")
    ap.add_argument("--datasets", nargs="+", default=["8gaussians"], help=f"any of {DATASETS_2D} or 'all'")
    ap.add_argument("--samplers", nargs="+", default=["particle", "pcd", "sgld", "exact"],
                    help="table rows: sampler options, or OPTION:key=value,... for a variant")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--mode", choices=["steps", "budget"], default="steps")
    ap.add_argument("--steps", type=int, default=None, help="override the preset's steps")
    ap.add_argument("--budget", type=float, default=None, help="budget mode: ∇E evaluations per run")
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time (one torch thread each)")
    ap.add_argument("--out", default="outputs/benchmark", help="directory for the runs, table and plot")
    ap.add_argument("--force", action="store_true", help="rerun jobs that already finished")
    ap.add_argument("overrides", nargs="*", help="extra config overrides for every run (key=value)")
    args = ap.parse_args()
    args.samplers, extra = split_rows(args.samplers)
    args.overrides += extra
    if not args.samplers:
        ap.error("--samplers names no sampler option")
    datasets = DATASETS_2D if args.datasets == ["all"] else args.datasets

    from pdebm.preflight import compose_and_check
    from pdebm.errors import ConfigError

    def check(overrides: list[str], what: str = ""):
        """One run's config, composed and checked as `pdebm train` does; bad input is one line
        and exit status 2, before any run starts."""
        try:
            return compose_and_check("train", [(overrides, [])], multirun=False)[0]
        except ConfigError as e:
            print(f"pdebm: error: {what}{e}", file=sys.stderr)
            raise SystemExit(2) from None

    base = check([f"experiment={args.preset}", *args.overrides])
    steps = args.steps or int(base.steps)
    budget = args.budget
    if args.mode == "budget" and budget is None:
        pcd = check([f"experiment={args.preset}", "sampler=pcd", *args.overrides])
        budget = steps * pcd.sampler.n_steps * pcd.sampler.n_samples
    out = Path(args.out) / f"{args.preset}-{args.mode}-{steps}"  # runs of other lengths never mix
    kinds = {s: sampler_kind(check([f"experiment={args.preset}", f"dataset={datasets[0]}",
                                    *sampler_overrides(s), *args.overrides], f"{datasets[0]} {s}: "))
             for s in args.samplers}
    jobs = []
    for d in datasets:
        for s in args.samplers:
            for seed in args.seeds:
                ov = [f"experiment={args.preset}", f"dataset={d}", *sampler_overrides(s), f"seed={seed}",
                      "progress=false", "num_threads=1", *args.overrides]
                if args.mode == "budget" and not kinds[s]["gradient_free"]:
                    ov += [f"steps={100 * steps}", f"budget={int(budget)}"]
                else:
                    ov.append(f"steps={steps}")
                jobs.append({"dataset": d, "sampler": s, "seed": seed, "overrides": ov, **kinds[s],
                             "run_dir": str(out / d / s / f"seed={seed}"), "force": args.force})
    for j in jobs:
        check(j["overrides"], f"{j['dataset']} {j['sampler']} seed={j['seed']}: ")
    t0 = time.time()
    print(f"{len(jobs)} runs, {args.jobs} at a time, into {out}", file=sys.stderr)
    with ProcessPoolExecutor(args.jobs) as pool:
        results = []
        for r in pool.map(run_job, jobs):
            f = r["final"]
            print(f"  {r['dataset']:>12} {r['sampler']:>8} seed={r['seed']}: NLL {f['test_nll']:.3f} "
                  f"lag {f['lag_kl']:.3f} evals {f['sampler_grad_evals']:.3g} "
                  f"{f['wall_clock_s']:.1f}s" + (" DIVERGED" if "diverged" in f else ""),
                  file=sys.stderr)
            results.append(r)
    header = (f"## preset={args.preset} mode={args.mode} steps={steps}"
              + (f" budget={budget:.3g}" if args.mode == "budget" else "")
              + f" seeds={args.seeds} {' '.join(args.overrides)}")
    text = "\n\n".join([header] + [table(d, results, args.samplers) for d in datasets])
    print(text)
    (out / "table.md").write_text(text + "\n")
    plot(results, datasets, args.samplers, out / "nll_vs_cost.png")
    print(f"\n(table: {out / 'table.md'}, curves: {out / 'nll_vs_cost.png'}, "
          f"{time.time() - t0:.0f} s in all)", file=sys.stderr)


if __name__ == "__main__":
    main()

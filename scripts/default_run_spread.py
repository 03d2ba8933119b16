#!/usr/bin/env python
"""Benchmark: the default run (`pdebm train`, nothing else) for several seeds and thread counts.

Each job is the real command, ``python -m pdebm.cli train seed=S num_threads=T progress=false``
(plus any ``key=value`` given after ``--``), run one at a time in its own directory under
``--out``; the script reads each run's ``final_metrics.json`` and prints one markdown table row
per run and a summary per thread count and over all runs: median and range (max - min) of the
final test NLL, and the median lag KL and MMD². A finished run is reused when its directory
already holds ``final_metrics.json`` (delete ``--out`` to measure again).

What it shows: with one machine and one thread count a seed gives the same numbers bit for bit;
the spread over seeds (and between thread counts, whose floating-point reduction order differs)
is the tolerance to expect for the final numbers on another CPU.

Examples:
  python scripts/default_run_spread.py --seeds 0 1 2 3 4 --threads 1 2
  python scripts/default_run_spread.py --seeds 0 1 --threads 1 -- schedule=constant   # another setting
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_one(out: Path, seed: int, threads: int, extra: list[str]) -> dict:
    """One default run (reused when already finished); its final metrics and the wall time."""
    final = out / "final_metrics.json"
    if not final.is_file():
        if out.exists():
            raise SystemExit(f"default_run_spread: {out} holds an unfinished run; remove it first")
        cmd = [sys.executable, "-m", "pdebm.cli", "train", f"seed={seed}",
               f"num_threads={threads}", "progress=false", *extra,
               f"hydra.run.dir={out}"]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads),
               "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        t0 = time.perf_counter()
        r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if r.returncode != 0:
            raise SystemExit(f"default_run_spread: seed={seed} num_threads={threads} failed "
                             f"(exit {r.returncode}): {r.stderr.strip().splitlines()[-1:]}")
        (out / "command_wall_s.txt").write_text(f"{wall:.1f}\n")
    metrics = json.loads(final.read_text())
    wall_file = out / "command_wall_s.txt"
    metrics["command_wall_s"] = float(wall_file.read_text()) if wall_file.is_file() else float("nan")
    return metrics


def summary(label: str, rows: list[dict]) -> str:
    nll = [r["test_nll"] for r in rows]
    return (f"| {label} | {len(rows)} | {statistics.median(nll):.3f} | {min(nll):.3f}–{max(nll):.3f} "
            f"| {max(nll) - min(nll):.3f} | {statistics.median(r['lag_kl'] for r in rows):.3f} "
            f"| {statistics.median(r['mmd2'] for r in rows):.4f} |")


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--out", type=Path, default=ROOT / "outputs" / "default_run_spread",
                   help="where the runs go (a finished run there is reused)")
    args = p.parse_args(argv)
    tag = ",".join(extra) if extra else "default"
    rows: dict[int, list[dict]] = {t: [] for t in args.threads}
    print(f"default run ({tag}): final metrics per seed and torch thread count\n")
    print("| threads | seed | final test NLL | lag KL | MMD² | training wall-clock | whole command |")
    print("|---|---|---|---|---|---|---|")
    for t in args.threads:
        for s in args.seeds:
            m = run_one(args.out / tag.replace("=", "-") / f"threads{t}" / f"seed{s}", s, t, extra)
            rows[t].append(m)
            print(f"| {t} | {s} | {m['test_nll']:.4f} | {m['lag_kl']:.3f} | {m['mmd2']:.4f} "
                  f"| {m['wall_clock_s']:.1f} s | {m['command_wall_s']:.1f} s |", flush=True)
    print("\n| threads | runs | median test NLL | range | max − min | median lag KL | median MMD² |")
    print("|---|---|---|---|---|---|---|")
    for t in args.threads:
        print(summary(str(t), rows[t]))
    if len(args.threads) > 1:
        print(summary("all", [r for t in args.threads for r in rows[t]]))
        gaps = [max(rows[t][i]["test_nll"] for t in args.threads)
                - min(rows[t][i]["test_nll"] for t in args.threads) for i in range(len(args.seeds))]
        print(f"\nlargest change of one seed's test NLL between thread counts: {max(gaps):.4f} nats")


if __name__ == "__main__":
    main()

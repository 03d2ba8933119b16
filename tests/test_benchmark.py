"""The benchmark script runs ``train()`` per sampler, writes a table and curve, and reuses a
finished run only when it was trained with exactly the same overrides."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import TINY_2D

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "compare_samplers.py"


def bench(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    # TINY_2D minus `steps=` (the script sets steps itself) plus the small-K sampler settings that
    # exist for both samplers used here.
    overrides = [o for o in TINY_2D if not o.startswith("steps=")] + ["sampler.n_steps=2"]
    cmd = [sys.executable, str(SCRIPT), "--preset", "fast_2d", "--datasets", "8gaussians",
           "--samplers", "particle", "pcd", "--seeds", "0", "--steps", "4", "--jobs", "1",
           "--out", str(tmp_path / "bench"), *extra, *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)


def test_benchmark_table_curve_and_reuse(tmp_path):
    r = bench(tmp_path)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "bench" / "fast_2d-steps-4"
    table = (out / "table.md").read_text()
    assert "| particle |" in table and "| pcd |" in table and "### 8gaussians" in table
    assert (out / "nll_vs_cost.png").stat().st_size > 0
    run = out / "8gaussians" / "pcd" / "seed=0"
    assert json.loads((run / "overrides.json").read_text())[0] == "experiment=fast_2d"
    n_rows = len((run / "metrics.jsonl").read_text().splitlines())

    # same command: the finished runs are reused, not retrained (metrics.jsonl does not grow)
    assert bench(tmp_path).returncode == 0
    assert len((run / "metrics.jsonl").read_text().splitlines()) == n_rows

    # different overrides: retrained from scratch into a clean directory (history not appended)
    r = bench(tmp_path, "lr=3e-4")
    assert r.returncode == 0, r.stderr
    assert "lr=3e-4" in json.loads((run / "overrides.json").read_text())
    assert len((run / "metrics.jsonl").read_text().splitlines()) == n_rows

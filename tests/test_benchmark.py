"""The benchmark script runs ``train()`` per sampler, writes a table and curve, and reuses a
finished run only when it was trained with exactly the same overrides."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import SCRIPTS_DIR, TINY_2D, load_script

SCRIPT = SCRIPTS_DIR / "compare_samplers.py"


def bench(tmp_path: Path, *extra: str, last: list[str] = ()) -> subprocess.CompletedProcess:
    # TINY_2D minus `steps=` (the script sets steps itself) plus the small-K sampler settings that
    # exist for both samplers used here; `last`: words after the --samplers list.
    overrides = [o for o in TINY_2D if not o.startswith("steps=")] + ["sampler.n_steps=2"]
    cmd = [sys.executable, str(SCRIPT), "--preset", "fast_2d", "--datasets", "8gaussians",
           "--seeds", "0", "--steps", "4", "--jobs", "1", "--out", str(tmp_path / "bench"),
           *extra, *overrides, "--samplers", "particle", "pcd", *last]
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

    # different overrides: retrained from scratch into a clean directory (history not appended);
    # written after the samplers, the override goes to every run, not to a row of its own
    r = bench(tmp_path, last=["lr=3e-4"])
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (out / "8gaussians").iterdir()) == ["particle", "pcd"]
    for row in ("particle", "pcd"):
        assert "lr=3e-4" in json.loads((out / "8gaussians" / row / "seed=0" / "overrides.json").read_text())
    assert len((run / "metrics.jsonl").read_text().splitlines()) == n_rows
    assert "| lr=3e-4 |" not in (out / "table.md").read_text()


def _load_script():
    return load_script("compare_samplers")


def _result(sampler: str, nlls: list[float], evals_per_step: float) -> dict:
    history = [{"step": 10 * i, "test_nll": v, "sampler_grad_evals": 10 * i * evals_per_step,
                "lag_kl": 0.5, "lag_kl_floor": 0.4, "mmd2": 0.0, "wall_clock_s": 1.0}
               for i, v in enumerate(nlls)]
    return {"dataset": "d", "sampler": sampler, "final": history[-1], "history": history}


def test_cost_lines_against_pcd_final_and_best():
    t = _load_script().table
    pcd = _result("pcd", [4.0, 3.5, 3.0, 3.2], 20)         # final 3.2 after 600 evals, best 3.0 after 400
    particle = _result("particle", [4.0, 3.1, 2.9, 2.8], 10)  # ≤ 3.2 and ≤ 3.0 after 100 and 200 evals
    out = t("d", [particle, pcd], ["particle", "pcd"])
    assert "reaches PCD's final NLL (3.200) after 100 " in out and "= 0.17 × the 600 PCD spent in all" in out
    assert "reaches PCD's best NLL (3.000) after 200 " in out and "= 0.50 × the 400 PCD spent to reach it" in out

    # PCD ends above where every run started: no cost figure against its final NLL
    pcd_bad = _result("pcd", [4.0, 3.5, 4.2, 4.1], 20)
    out = t("d", [particle, pcd_bad], ["particle", "pcd"])
    assert "no cost comparison with PCD's final NLL (4.100)" in out
    assert "reaches PCD's best NLL (3.500) after 100 " in out

    slow = _result("particle", [4.0, 3.9, 3.8, 3.7], 10)
    assert "does not reach PCD's final NLL" in t("d", [slow, pcd], ["particle", "pcd"])


def test_sampler_variant_spec_becomes_sampler_overrides():
    """`OPTION:key=value,...` rows run an option with some of its keys changed."""
    sampler_overrides = _load_script().sampler_overrides
    assert sampler_overrides("pcd") == ["sampler=pcd"]
    assert sampler_overrides("particle:field=basis,weights=false") == [
        "sampler=particle", "sampler.field=basis", "sampler.weights=false"]


def test_a_diverged_run_is_a_row_not_a_crash(tmp_path):
    """A baseline the divergence watchdog stops (here: lr 1 and a 0.001-nat NLL margin) is
    reported in the table with its last evaluation and the watchdog's message; the other
    samplers' runs still finish, and the stopped run is reused, not retrained, on a rerun."""
    r = bench(tmp_path, "lr=1.0", "divergence.nll_margin=0.001", "eval_every=2")
    assert r.returncode == 0, r.stderr
    out = tmp_path / "bench" / "fast_2d-steps-4"
    table = (out / "table.md").read_text()
    assert "diverged" in table and "training diverged" in table, table
    stopped = [p for p in out.glob("8gaussians/*/seed=0/diverged.txt")]
    assert stopped, table
    # the same job again (run_job, where the script decides to reuse a run): not retrained
    run = stopped[0].parent
    mtime, rows = stopped[0].stat().st_mtime, (run / "metrics.jsonl").read_text()
    job = {"run_dir": str(run), "force": False,
           "overrides": json.loads((run / "overrides.json").read_text())}
    again = _load_script().run_job(job)
    assert stopped[0].stat().st_mtime == mtime and (run / "metrics.jsonl").read_text() == rows
    assert "training diverged" in again["final"]["diverged"]


def test_overrides_after_samplers_are_not_rows():
    """End to end in test_benchmark_table_curve_and_reuse (its third run)."""
    assert _load_script().split_rows(["particle", "particle:field=basis,weights=false", "lr=3e-4"]) == (
        ["particle", "particle:field=basis,weights=false"], ["lr=3e-4"])


def test_bad_sampler_row_is_one_line_and_exit_2_before_any_run(tmp_path, monkeypatch, capsys):
    """In-process (the script's main(); its runs in a subprocess are the tests above)."""
    main = _load_script().main
    monkeypatch.chdir(tmp_path)
    for bad in (["nosuch"], ["particle", "particle:no_such_key=1"]):
        monkeypatch.setattr(sys, "argv", [str(SCRIPT), "--out", str(tmp_path / "bench"), "--samplers", *bad])
        with pytest.raises(SystemExit) as e:
            main()
        err = capsys.readouterr().err
        assert e.value.code == 2
        assert err.startswith("pdebm: error: 8gaussians ") and err.count("\n") == 1, err
        assert not (tmp_path / "bench").exists()

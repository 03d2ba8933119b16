"""SIGINT/SIGTERM at any moment: exit status 128 + signal, one line on stderr, no traceback, and a
run directory that is complete or resumable. Deterministic: the stop is raised at a chosen step by
a test hook (in-process), or a real signal is sent once the run prints that it has reached the
chosen point (subprocess; pdebm/stop.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pdebm.train import train
from tests.conftest import FAST_SAMPLER, TINY_2D

COMMON = [*TINY_2D, "steps=6", "ckpt_every=0", "eval_every=3", *FAST_SAMPLER["pcd"]]
COMPARED = ("test_nll", "lag_kl", "mmd2", "energy_gap", "sampler_grad_evals")
HOOK = "pdebm: test hook: waiting at"


def assert_same_final(a: dict, b: dict) -> None:
    for k in COMPARED:
        assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-6), k


def run_until_hook_then_signal(cwd: Path, args: list[str], point: str,
                               sig: int = signal.SIGTERM) -> tuple[int, list[str]]:
    """Start ``pdebm train``, wait for its hook line at ``point``, send ``sig``; return the exit
    status and the stderr lines printed after the hook line."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0", "PDEBM_WAIT_AT": point}
    proc = subprocess.Popen([sys.executable, "-m", "pdebm.cli", "train", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    before = []
    for line in proc.stderr:  # blocks until the run reaches the point (or ends)
        before.append(line)
        if line.startswith(HOOK):
            break
    else:
        proc.wait(timeout=60)
        pytest.fail(f"the run never reached {point} (rc {proc.returncode}): {''.join(before)}")
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    return proc.returncode, [ln for ln in err.splitlines() if ln.strip()]


@pytest.fixture(scope="module")
def full(tmp_path_factory) -> dict:
    """The uninterrupted run both resume tests compare against (trained once)."""
    from hydra.core.global_hydra import GlobalHydra

    from pdebm.config import compose_config

    try:
        return train(compose_config(COMMON, tmp_path_factory.mktemp("full")))
    finally:
        GlobalHydra.instance().clear()


def test_stop_at_step_resume_matches_uninterrupted(make_cfg, tmp_path, monkeypatch, full):
    """In-process: the stop raised after step 3 checkpoints there; resuming equals never stopping."""
    monkeypatch.setenv("PDEBM_STOP_AT_STEP", "3")
    with pytest.raises(SystemExit) as stopped:
        train(make_cfg(*COMMON, run_dir=tmp_path / "cut"))
    assert stopped.value.code == 128 + signal.SIGTERM
    assert not (tmp_path / "cut" / "final_metrics.json").exists()
    monkeypatch.delenv("PDEBM_STOP_AT_STEP")
    ckpt = tmp_path / "cut" / "checkpoints" / "last.pt"
    import torch
    assert torch.load(ckpt, weights_only=False)["step"] == 3
    resumed = train(make_cfg(*COMMON, f"resume={ckpt}", run_dir=tmp_path / "resumed"))
    assert_same_final(full, resumed)


def test_sigterm_writes_checkpoint_and_resume_matches(make_cfg, tmp_path, full):
    """A real SIGTERM at step 3 (sent once the run says it is there) writes a checkpoint at step
    3, exits 143 with one line; continuing it equals the uninterrupted run."""
    rc, lines = run_until_hook_then_signal(tmp_path, [*COMMON, "hydra.run.dir=cut"], "step:3")
    assert rc == 128 + signal.SIGTERM, lines
    assert len(lines) == 1 and "stopped by SIGTERM at step 3; checkpoint written" in lines[0], lines
    ckpt = tmp_path / "cut" / "checkpoints" / "last.pt"
    assert not (tmp_path / "cut" / "final_metrics.json").exists()
    resumed = train(make_cfg(*COMMON, f"resume={ckpt}", run_dir=tmp_path / "resumed"))
    assert_same_final(full, resumed)


@pytest.mark.parametrize("point,sig,complete", [
    ("start", signal.SIGINT, False),     # during start-up: a step-0 checkpoint, resumable
    ("final", signal.SIGTERM, True),     # before the final evaluation: the run completes first
    ("teardown", signal.SIGTERM, True),  # after train() returned, inside Hydra's teardown
])
def test_signal_at_any_moment_ends_cleanly(make_cfg, tmp_path, point, sig, complete):
    rc, lines = run_until_hook_then_signal(tmp_path, [*COMMON, "steps=2", "hydra.run.dir=cut"],
                                           point, sig)
    assert rc == 128 + sig, lines
    errs = [ln for ln in lines if not ln.startswith("pdebm: done in")]
    assert len(errs) == 1 and signal.Signals(sig).name in errs[0], lines
    assert not any("Traceback" in ln for ln in lines)
    run = tmp_path / "cut"
    assert not list(run.rglob("*.tmp"))
    if complete:
        final = json.loads((run / "final_metrics.json").read_text())
        assert final["sampler_grad_evals"] > 0
    else:
        assert not (run / "final_metrics.json").exists()
        resumed = train(make_cfg(*COMMON, "steps=2", f"resume={run}", run_dir=tmp_path / "resumed"))
        assert resumed["sampler_grad_evals"] > 0

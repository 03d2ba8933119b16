"""The real command line, in subprocesses: runs, sweeps, launchers and bad input."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import FAST_SAMPLER, TINY_2D, run_cli

DOCUMENTED_TAGS = {"train/loss", "train/energy_gap", "train/lr", "eval/test_nll", "eval/lag_kl",
                   "eval/lag_kl_floor", "eval/mmd2", "eval/energy_gap", "cost/sampler_grad_evals",
                   "cost/wall_clock_s"}


def only_run_dir(root: Path) -> Path:
    dirs = [p.parent for p in root.rglob("final_metrics.json")]
    assert len(dirs) == 1, dirs
    return dirs[0]


def scalar_tags(run_dir: Path) -> set[str]:
    tags = set()
    for ev in run_dir.glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(ev))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    return tags


def has_hparams(run_dir: Path) -> bool:
    for ev in run_dir.glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(ev))
        acc.Reload()
        if "_hparams_/session_start_info" in acc.summary_metadata or any(
                "hparams" in t for t in acc.Tags().get("tensors", [])):
            return True
    return False


def test_help_lists_commands(tmp_path):
    r = run_cli(["--help"], tmp_path)
    assert r.returncode == 0 and "train" in r.stdout and "eval" in r.stdout
    r = run_cli(["train", "--help"], tmp_path)
    assert r.returncode == 0 and "sampler: " in r.stdout and "dataset: " in r.stdout
    r = run_cli(["train", "--cfg", "job"], tmp_path)
    assert r.returncode == 0 and "batch_size:" in r.stdout


CORE_SAMPLERS = {"sgld", "pcd", "exact", "particle", "particle_unweighted", "particle_paper"}


@pytest.mark.parametrize("sampler", [  # the other options run with -m slow (same code paths)
    s if s in CORE_SAMPLERS else pytest.param(s, marks=pytest.mark.slow) for s in sorted(FAST_SAMPLER)])
def test_train_writes_events_figure_hparams_checkpoint(tmp_path, sampler):
    r = run_cli(["train", *TINY_2D, *FAST_SAMPLER[sampler]], tmp_path)
    assert r.returncode == 0, r.stderr
    run = only_run_dir(tmp_path / "outputs" / "train")
    assert DOCUMENTED_TAGS <= scalar_tags(run)
    assert has_hparams(run)
    assert list((run / "figures").glob("*.png"))
    assert (run / "checkpoints" / "last.pt").is_file()
    assert (run / "train.log").is_file() and (run / ".hydra" / "config.yaml").is_file()
    assert (run / "config.yaml").is_file()  # the composed config, written by train() itself
    final = json.loads((run / "final_metrics.json").read_text())
    assert final["test_nll"] > 0 and final["lag_kl_floor"] > 0
    if OmegaConf.load(run / "config.yaml").sampler.get("weights"):  # weighted: ESS, resampling
        assert {"sampler/ess", "sampler/resampled"} <= scalar_tags(run)
    assert not list(run.glob("checkpoints/*.tmp"))


def test_console_script_is_installed(tmp_path):
    exe = shutil.which("pdebm")
    assert exe, "the `pdebm` console script is not on PATH"
    r = subprocess.run([exe, "--help"], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0 and "pdebm train" in r.stdout


@pytest.mark.parametrize("launcher", [None, "parallel"])
def test_multirun_writes_separate_run_dirs(tmp_path, launcher):
    args = ["train", "-m", "seed=0,1", *TINY_2D, "steps=2", *FAST_SAMPLER["sgld"]]
    if launcher:
        args.append(f"hydra/launcher={launcher}")
    r = run_cli(args, tmp_path)
    assert r.returncode == 0, r.stderr
    finals = sorted(p.parent for p in (tmp_path / "outputs" / "train" / "multirun").rglob("final_metrics.json"))
    assert [p.name.split("seed=")[-1] for p in finals] == ["0", "1"]
    nll = [json.loads((p / "final_metrics.json").read_text())["test_nll"] for p in finals]
    assert nll[0] != nll[1]  # different seeds, different runs


def test_sweep_dir_named_after_overrides(tmp_path):
    r = run_cli(["train", "-m", "sampler=sgld,pcd", "seed=3", *TINY_2D, "steps=1",
                 "sampler.n_steps=2", "sampler.n_samples=64"], tmp_path)
    assert r.returncode == 0, r.stderr
    names = sorted(p.parent.name for p in (tmp_path / "outputs").rglob("final_metrics.json"))
    assert len(names) == 2 and all(n.endswith("seed=3") for n in names)
    assert any("sampler=pcd" in n for n in names) and any("sampler=sgld" in n for n in names)


@pytest.mark.parametrize("args,message", [
    (["stepz=3"], "unknown config key 'stepz'"),
    (["sampler=langevin"], "unknown option sampler=langevin: sampler must be one of"),
    (["-m", "sampler=sgld,nope"], "unknown option sampler=nope"),
    (["steps=-5"], "steps must be > 0, got -5"),
    (["sampler=sgld", "sampler.n_steps=0"], "sampler.n_steps must be > 0, got 0"),
    (["sampler.n_steps=-1"], "sampler.n_steps must be >= 0, got -1"),
    (["langevin.step_size=-0.1"], "langevin.step_size must be > 0"),
    (["batch_size=0"], "batch_size must be > 0"),
    (["resume=/nonexistent/ckpt.pt"], "checkpoint not found: /nonexistent/ckpt.pt"),
    (["sampler=exact", "dataset=digits", "energy=conv"], "sampler=exact needs 2D data"),
])
def test_bad_input_fails_fast_with_one_line(tmp_path, args, message):
    r = run_cli(["train", *args, "progress=false"], tmp_path)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and message in lines[0], r.stderr
    assert not list(tmp_path.rglob("*.pt")) and not list(tmp_path.rglob("events.out.*"))


def test_corrupted_checkpoint_fails_fast(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"PK\x03\x04 truncated")
    r = run_cli(["train", f"resume={bad}", "progress=false"], tmp_path)
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "cannot read checkpoint" in lines[0] and "corrupted" in lines[0]

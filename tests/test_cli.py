"""The real command line, in subprocesses: runs, sweeps, launchers and bad input."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from pdebm import cli
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


def test_help_lists_commands(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:  # the dispatcher's own help, in-process (no Hydra)
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and "train" in out and "eval" in out
    r = run_cli(["train", "--help"], tmp_path)
    assert r.returncode == 0 and "sampler: " in r.stdout and "dataset: " in r.stdout
    r = run_cli(["train", "--cfg", "job"], tmp_path)
    assert r.returncode == 0 and "batch_size:" in r.stdout


# One weighted option (the default: its sampler/ess tags) and one unweighted one through the real
# command; every option trains in-process in tests/test_resume.py and tests/test_no_sync.py, and
# all of them run through the command line with -m slow (the command's code is the same for all).
CORE_SAMPLERS = {"particle", "sgld"}


@pytest.mark.parametrize("sampler", [
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


# The basic launcher's sweep runs in test_sweep_dir_named_after_overrides (and, in-process, in
# tests/test_trust.py); here with -m slow.
@pytest.mark.parametrize("launcher", [pytest.param(None, marks=pytest.mark.slow), "parallel"])
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


# Bad input of every kind is checked in-process by tests/test_bad_input.py (the same entry point,
# milliseconds a case); here the subprocess form of one case that reads a file.
def test_corrupted_checkpoint_fails_fast(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"PK\x03\x04 truncated")
    r = run_cli(["train", f"resume={bad}", "progress=false"], tmp_path)
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "cannot read checkpoint" in lines[0] and "corrupted" in lines[0]

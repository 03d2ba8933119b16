"""Bad input fails in one line before any work (issue 12), sweeps are checked job by job up front,
and every run gets its own directory.

The bad inputs run the real ``pdebm`` entry point in-process (``cli.main``): the checks happen
before Hydra starts, so no training code is imported and each case takes milliseconds. A few
cases that need the trainer (a stub left by a build-time error, the warning of a run that goes
ahead, two launches at once) run the command in a subprocess with a tiny config.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pdebm import cli, preflight, rundir
from pdebm.checkpoint_diff import config_diff, mismatch_message, state_diff
from pdebm.config import run_name
from pdebm.errors import ConfigError
from tests.conftest import FAST_SAMPLER, TINY_2D, run_cli

READ_ONLY = "<read-only dir>"
UNDER_FILE = "<path under a file>"

# (overrides, a fragment of the one error line)
BAD = [
    (["steps=abc"], "steps must be an integer, got 'abc'"),
    (["lr=fast"], "lr must be a number, got 'fast'"),
    (["batch_size=1.5"], "batch_size must be an integer, got 1.5"),
    (["steps=2.5"], "steps must be an integer, got 2.5"),
    (["steps=true"], "steps must be an integer, got True"),
    (["seed=-1"], "seed must be >= 0, got -1"),
    (["steps=-5"], "steps must be > 0, got -5"),
    (["progress=maybe"], "progress must be true or false"),
    (["betas=[0.9]"], "betas must be two numbers in [0, 1)"),
    (["num_threads=0"], "num_threads must be > 0"),
    (["hydra.run.dir=/proc/foo"], "cannot write the run directory /proc/foo"),
    (["hydra.run.dir=/sys/pdebm_run"], "cannot write the run directory /sys/pdebm_run"),
    ([f"hydra.run.dir={UNDER_FILE}"], "cannot write the run directory"),
    ([f"hydra.run.dir={READ_ONLY}"], "cannot write the run directory"),
    (["lr=1e-3,1e-4"], "lr=1e-3,1e-4 gives several values: use -m to sweep"),
    (["steps"], "override 'steps' has no value: write steps=<value>"),
    (["eval.resolution=1"], "eval.resolution must be >= 32, got 1"),
    (["eval.resolution=100", "eval.lag_bins=30"],
     "eval.resolution=100 is too coarse for eval.lag_bins=30"),
    (["eval.resolution=40", "eval.lag_bins=50"], "too coarse for eval.lag_bins=50"),
    (["eval.lag_bins=1"], "eval.lag_bins must be >= 2, got 1"),
    (["stepz=3"], "unknown config key 'stepz'"),
    (["sampler=sgld", "sampler.step_size=0.1"], "'sampler.step_size' is now 'langevin.step_size'"),
    (["+sampler.foo=1"], "got an unexpected keyword argument 'foo'"),
    (["=3"], "pdebm: error: "),
    (["sampler=sgld", "sampler.n_steps=0"], "sampler.n_steps must be > 0, got 0"),
    (["sampler.n_steps=-1"], "sampler.n_steps must be >= 0, got -1"),
    (["langevin.step_size=-0.1"], "langevin.step_size must be > 0"),
    (["batch_size=0"], "batch_size must be > 0"),
    (["sampler=langevin"], "unknown option sampler=langevin: sampler must be one of"),
    (["-m", "sampler=sgld,nope"], "unknown option sampler=nope"),
    (["resume=/nonexistent/ckpt.pt"], "checkpoint not found: /nonexistent/ckpt.pt"),
    (["sampler=exact", "dataset=digits", "energy=conv"], "sampler=exact needs 2D data"),
    (["-m", "steps=50,-1"], "sweep job 1 of 2 (steps=-1): steps must be > 0, got -1"),
    (["-m", "steps=-1,50"], "sweep job 0 of 2 (steps=-1): steps must be > 0, got -1"),
    (["-m", "steps=50,-1", "hydra/launcher=parallel"], "sweep job 1 of 2 (steps=-1)"),
    # the full cartesian product, in Hydra's job order (keys in order of first appearance)
    (["-m", "seed=0,1", "lr=1e-3,-1"], "sweep job 1 of 4 (seed=0 lr=-1)"),
    (["-m", "sampler=sgld,pcd", "sampler.n_steps=3,0"], "sweep job 1 of 4 (sampler=sgld sampler.n_steps=0)"),
]


def _read_only_dir(path: Path, request) -> None:
    """A directory nobody may write into: mode 555, and for root (who ignores modes) the
    immutable attribute, removed again after the test; skips only where neither can be had."""
    path.mkdir()
    path.chmod(0o555)
    if os.geteuid() != 0:
        return
    r = subprocess.run(["chattr", "+i", str(path)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"running as root and `chattr +i` is unavailable here ({r.stderr.decode().strip()})")
    request.addfinalizer(lambda: subprocess.run(["chattr", "-i", str(path)]))


def _materialise(args: list[str], tmp_path: Path, request) -> list[str]:
    out = []
    for a in args:
        if a.endswith(READ_ONLY):
            ro = tmp_path / "ro"
            _read_only_dir(ro, request)
            a = f"hydra.run.dir={ro / 'run'}"
        elif a.endswith(UNDER_FILE):
            f = tmp_path / "a_file"
            f.write_text("")
            a = f"hydra.run.dir={f / 'run'}"
        out.append(a)
    return out


def _tree(root: Path) -> set[Path]:
    return set(root.rglob("*"))


@pytest.mark.parametrize("args,message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_one_line_exit_2_no_directory(args, message, tmp_path, monkeypatch, capsys,
                                                request):
    args = _materialise(args, tmp_path, request)
    monkeypatch.chdir(tmp_path)
    before = _tree(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", *args])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert exit_info.value.code == 2, err
    assert len(lines) == 1 and lines[0].startswith("pdebm: error: "), err
    assert message in lines[0], lines[0]
    assert _tree(tmp_path) == before  # no run directory, no sweep directory, no stub


def test_bad_input_in_a_real_process_imports_no_trainer(tmp_path):
    """The subprocess form of one case: exit 2, one line, and the trainer never loaded."""
    code = ("import sys; from pdebm import cli\n"
            "try:\n    cli.main(['train', '-m', 'steps=50,-1'])\n"
            "except SystemExit as e:\n    print('train' if 'pdebm.train' in sys.modules else 'clean', e.code)")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120)
    assert r.stdout.split() == ["clean", "2"], (r.stdout, r.stderr)
    assert r.stderr.strip().count("\n") == 0 and r.stderr.startswith("pdebm: error: sweep job 1")
    assert not list(tmp_path.iterdir())


def test_build_time_error_leaves_no_stub(tmp_path):
    """A check that only the trainer can make (a missing checkpoint) runs after Hydra made the
    run directory; the CLI removes the stub it leaves."""
    r = run_cli(["train", *TINY_2D, "resume=/nonexistent/ckpt.pt"], tmp_path)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert lines[0] == "pdebm: error: checkpoint not found: /nonexistent/ckpt.pt"
    assert not list(tmp_path.iterdir())


def test_integral_floats_become_integers(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    plan = preflight.preflight("train", ["steps=1e3", "batch_size=64.0", "lr=1e-3"])
    assert "steps=1000" in plan.args and "batch_size=64" in plan.args and "lr=1e-3" in plan.args
    assert "steps=1000" in plan.run_dir.name and "1e3" not in plan.run_dir.name
    plan = preflight.preflight("train", ["-m", "steps=1e3,20", "seed=0,1"])
    assert "steps=1000,20" in plan.args and plan.args[0] == "-m"


def test_appended_unread_key_warns(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    plan = preflight.preflight("train", ["+stepz=10"])
    assert plan.warnings == ["+stepz=10 adds a key that nothing reads (did you mean steps?)"]
    assert preflight.preflight("train", ["+hydra.job.env_set.X=1"]).warnings == []


def test_appended_key_warning_is_printed_once_and_the_command_runs(tmp_path, monkeypatch, capsys):
    """``cli.main`` with the trainer replaced by a stub: one warning line, then the command."""
    import types

    calls = []
    monkeypatch.setitem(sys.modules, "fake_train", types.SimpleNamespace(main=lambda: calls.append(sys.argv[1:])))
    monkeypatch.setitem(cli.COMMANDS, "train", ("fake_train", "train"))
    monkeypatch.setattr(sys, "argv", ["pdebm"])
    monkeypatch.chdir(tmp_path)
    cli.main(["train", "+stepz=10", "steps=1e3"])
    assert capsys.readouterr().err.splitlines() == [
        "pdebm: warning: +stepz=10 adds a key that nothing reads (did you mean steps?)"]
    assert len(calls) == 1 and "steps=1000" in calls[0] and "+stepz=10" in calls[0]


@pytest.mark.slow
def test_appended_key_warning_is_one_line_and_the_run_goes_ahead(tmp_path):
    r = run_cli(["train", *TINY_2D, "steps=1", *FAST_SAMPLER["sgld"], "+stepz=10"], tmp_path)
    assert r.returncode == 0, r.stderr
    warnings = [ln for ln in r.stderr.splitlines() if ln.startswith("pdebm: warning:")]
    assert warnings == ["pdebm: warning: +stepz=10 adds a key that nothing reads (did you mean steps?)"]


# --- run directories -------------------------------------------------------------------------

def test_run_name_has_dataset_sampler_overrides_and_seed():
    name = run_name("19-46-13.123456", "8gaussians", "pcd", "dataset=8gaussians,lr=0.01,sampler=pcd", 3)
    assert name == "19-46-13.123_8gaussians,pcd,lr=0.01,seed=3"
    assert run_name("19-46-13.123456", "moons", "particle", "", 0) == "19-46-13.123_moons,particle,seed=0"
    assert run_name("19-46-13.123456") == "19-46-13.123"  # a sweep's root
    long = run_name("19-46-13.123456", "moons", "sgld", ",".join(f"k{i}={i}" for i in range(60)), 0)
    other = run_name("19-46-13.123456", "moons", "sgld", ",".join(f"k{i}={i}" for i in range(61)), 0)
    assert len(long) <= 160 and long != other


def test_single_run_dir_named_after_choices_and_overrides(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    plan = preflight.preflight("train", ["sampler=pcd", "lr=0.01", "num_threads=1", "progress=false",
                                   "device=cpu", "seed=2"])
    name = plan.run_dir.name
    assert plan.run_dir.is_dir() and plan.run_dir.parent.parent == Path("outputs/train")
    assert name.endswith("_8gaussians,pcd,lr=0.01,seed=2"), name
    assert any(a.startswith("hydra.run.dir=") and name in a for a in plan.args)


def test_claim_is_exclusive(tmp_path):
    first, made = rundir.claim(tmp_path / "a" / "b" / "run")
    second, _ = rundir.claim(tmp_path / "a" / "b" / "run")
    third, _ = rundir.claim(tmp_path / "a" / "b" / "run")
    assert first.name == "run" and second.name == "run-2" and third.name == "run-3"
    assert made == [tmp_path / "a", tmp_path / "a" / "b", first]


def test_two_preflights_in_the_same_instant_get_two_directories(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    dirs = {preflight.preflight("train", ["steps=3"]).run_dir for _ in range(3)}
    assert len(dirs) == 3 and all(d.is_dir() for d in dirs)


@pytest.mark.slow
def test_two_launches_at_once_never_share_a_directory(tmp_path):
    args = [sys.executable, "-m", "pdebm.cli", "train", *TINY_2D, "steps=1", *FAST_SAMPLER["sgld"]]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([*args, f"seed={s}"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for s in (0, 1)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    runs = sorted(p.parent for p in (tmp_path / "outputs" / "train").rglob("final_metrics.json"))
    assert len(runs) == 2
    for run, seed in zip(sorted(runs, key=lambda r: r.name.split("seed=")[-1]), (0, 1)):
        assert f"seed={seed}" in (run / ".hydra" / "overrides.yaml").read_text()


# --- checkpoint mismatch messages --------------------------------------------------------------

def test_config_diff_names_the_key_and_both_values():
    saved = {"energy": {"hidden": 300, "_target_": "x"}, "steps": 100, "lr": 0.001}
    current = {"energy": {"hidden": 100, "_target_": "x"}, "steps": 500, "lr": 0.001}
    assert config_diff(saved, current) == ["energy.hidden: checkpoint 300, config 100"]
    assert config_diff(saved, current, ignore=()) == ["energy.hidden: checkpoint 300, config 100",
                                                      "steps: checkpoint 100, config 500"]


def test_state_diff_and_message():
    import torch

    a = torch.nn.Sequential(torch.nn.Linear(2, 300)).state_dict()
    b = torch.nn.Sequential(torch.nn.Linear(2, 100)).state_dict()
    diffs = state_diff("energy", a, b)
    assert diffs[0] == "energy.0.bias: checkpoint shape (300,), model shape (100,)"
    assert state_diff("sampler", {"x": torch.zeros(3)}, {"buffer": torch.zeros(3)}) == [
        "sampler.buffer: missing from the checkpoint", "sampler.x: in the checkpoint, not in this sampler"]
    msg = mismatch_message({"energy": {"hidden": 300}}, {"energy": {"hidden": 100}},
                           {"energy": a}, {"energy": b}, RuntimeError("Error(s) in loading:\n..."))
    assert msg == "checkpoint does not match this config: energy.hidden: checkpoint 300, config 100"
    msg = mismatch_message(None, {}, {"energy": a}, {"energy": b})
    assert msg.startswith("checkpoint does not match this config: energy.0.bias: checkpoint shape (300,)")
    assert "\n" not in msg


# --- the checks accept every shipped configuration ---------------------------------------------

def test_every_experiment_preset_passes_the_checks(make_cfg):
    from pdebm.config import CONFIG_DIR
    from pdebm.validate import validate

    for name in sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml")):
        validate(make_cfg(f"experiment={name}"))
    validate(make_cfg())
    with pytest.raises(ConfigError, match="lr must be > 0"):
        validate(make_cfg("lr=0"))

"""Images end to end: `pdebm train` on digits with each sampler writes image summaries and a
checkpoint, and `pdebm eval` turns that run into an AIS log-likelihood, in nats and bits/dim."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from pdebm.config import compose_config
from pdebm.errors import ConfigError
from pdebm.eval import evaluate
from pdebm.train import train
from tests.conftest import FAST_SAMPLER, TINY, TINY_2D, run_cli

TINY_AIS = ["n_chains=8", "n_temps=5", "n_samples_grid=8", "progress=false"]


def event_tags(run_dir: Path) -> dict[str, set[str]]:
    tags: dict[str, set[str]] = {"scalars": set(), "images": set()}
    for ev in run_dir.glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(ev))
        acc.Reload()
        for kind in tags:
            tags[kind] |= set(acc.Tags()[kind])
    return tags


def eval_cfg(*overrides: str):
    return compose_config(list(overrides), config_name="eval")


@pytest.fixture(scope="module")
def digit_runs(tmp_path_factory) -> dict[str, Path]:
    """One tiny digits + conv run per sampler: the default one trained by the real command line,
    the others in-process (the same ``train(cfg)``, without a second interpreter's start-up)."""
    root = tmp_path_factory.mktemp("digits")
    runs = {}
    for sampler in ("particle", "pcd", "sgld"):
        args = ["dataset=digits", "energy=conv", *FAST_SAMPLER[sampler], *TINY, "batch_size=32",
                "energy.channels=[8,16]"]
        if sampler == "particle":
            r = run_cli(["train", *args, f"hydra.run.dir={sampler}"], root)
            assert r.returncode == 0, r.stderr
        else:
            try:
                train(compose_config(args, root / sampler))
            finally:
                GlobalHydra.instance().clear()
        runs[sampler] = root / sampler
    return runs


@pytest.mark.parametrize("sampler", ["particle", "pcd", "sgld"])
def test_digits_run_then_ais(digit_runs, sampler):
    run = digit_runs[sampler]
    assert {"samples/negatives", "samples/data"} <= event_tags(run)["images"]
    assert (run / "checkpoints" / "last.pt").is_file()
    report = evaluate(eval_cfg(f"run={run}", *TINY_AIS))
    saved = json.loads((run / "ais.json").read_text())
    assert saved["step"] == 4 and saved["n_test"] == 200 and saved["n_dims"] == 64
    for key in ("log_likelihood", "bits_per_dim", "log_z", "log_likelihood_se"):
        assert math.isfinite(saved[key]) and saved[key] == pytest.approx(report[key])
    assert saved["settings"]["n_temps"] == 5 and saved["settings"]["transition"] == "mala"
    tags = event_tags(run)
    assert {"ais/log_likelihood", "ais/bits_per_dim"} <= tags["scalars"]
    assert "samples/ais" in tags["images"] and (run / "samples_ais.png").is_file()


def test_eval_command_leaves_the_cwd_alone(digit_runs, tmp_path):
    run = digit_runs["particle"]
    r = run_cli(["eval", f"run={run / 'checkpoints' / 'last.pt'}", *TINY_AIS, "transition=ula",
                 "step_size=0.01"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "bits/dim" in r.stdout
    written = Path(r.stdout.rsplit("wrote ", 1)[1].strip().rstrip(")"))
    assert written.parent == run and written.name.startswith("ais")
    assert json.loads(written.read_text())["settings"]["transition"] == "ula"
    assert not list(tmp_path.iterdir())  # no .hydra/, log file or outputs/ in the cwd
    assert not (run / ".hydra" / "overrides.yaml").read_text().count("n_chains")


def test_a_second_eval_overwrites_nothing_and_takes_the_beta_schedule(digit_runs):
    """Evaluating a run again (here with the linear β schedule, ``beta_schedule``: not
    ``schedule``, which is the training lr schedule's config group) keeps every earlier result
    and writes the next free ``ais-K.json`` / ``samples_ais-K.png``."""
    run = digit_runs["sgld"]
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    assert "ais.json" in before  # test_digits_run_then_ais evaluated it already
    report = evaluate(eval_cfg(f"run={run}", *TINY_AIS, "beta_schedule=linear"))
    assert report["settings"]["beta_schedule"] == "linear"
    new = Path(report["results"])
    assert new.name not in before and new.name.startswith("ais-") and new.is_file()
    assert (run / new.name.replace("ais-", "samples_ais-").replace(".json", ".png")).is_file()
    assert all((run / name).read_bytes() == data for name, data in before.items())


@pytest.mark.parametrize("args,message", [
    (["run=missing_run"], "checkpoint not found: missing_run"),
    ([], "run=<run directory or checkpoint> is required"),
    (["run=.", "transition=hmc"], "transition='hmc' is not one of"),
])
def test_eval_bad_input_is_one_line(tmp_path, monkeypatch, args, message):
    """In-process (``evaluate``, what the command's Hydra entry calls); the command itself in
    the next test."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as err:
        evaluate(eval_cfg(*args))
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not list(tmp_path.iterdir())


def test_eval_command_bad_input_is_one_line_exit_2(tmp_path):
    r = run_cli(["eval", "run=missing_run"], tmp_path)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0] == "pdebm: error: checkpoint not found: missing_run", r.stderr
    assert not list(tmp_path.iterdir())


def test_eval_of_a_2d_run_is_one_line(make_cfg, tmp_path):
    train(make_cfg(*TINY_2D, "steps=1", *FAST_SAMPLER["sgld"], run_dir=tmp_path / "toy"))
    with pytest.raises(ConfigError, match="image runs by AIS.*grid quadrature") as err:
        evaluate(eval_cfg(f"run={tmp_path / 'toy'}", *TINY_AIS))
    assert "\n" not in str(err.value)

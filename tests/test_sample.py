"""`pdebm sample`: long chains from a trained digits model, their files and diagnostics, and
bad input as one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pdebm.config import compose_config
from pdebm.errors import ConfigError
from pdebm.sample import sample
from pdebm.train import train
from tests.conftest import TINY, TINY_2D, run_cli


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sample")
    cfg = compose_config(["experiment=digits_conv", *TINY, "energy.channels=[8]",
                          "sampler.n_steps=2"], root / "run")
    train(cfg)
    return root / "run"


def sample_cfg(*overrides: str):
    return compose_config(list(overrides), config_name="sample")


@pytest.mark.parametrize("init", ["base", "data", "negatives"])
def test_sample_writes_grids_samples_and_diagnostics(run, init):
    report = sample(sample_cfg(f"run={run}", "n=16", "steps=20", "every=10", f"init={init}",
                               "grid_at=[0,10,20]", "progress=false", "num_threads=1"))
    out = Path(report["out"])
    assert out.parent == run / "sample" and out.name.startswith(f"{init}-20-seed0")
    assert sorted(p.name for p in out.glob("grid_*.png")) == [
        "grid_0000000.png", "grid_0000010.png", "grid_0000020.png"]
    saved = torch.load(out / "samples.pt")
    assert saved["x"].shape == (16, 1, 8, 8) and 0 <= saved["images"].min() <= saved["images"].max() <= 1
    diag = json.loads((out / "diagnostics.json").read_text())
    assert [r["step"] for r in diag["records"]] == [0, 10, 20]
    for r in diag["records"]:
        assert r["grad_norm"] > 0 and r["fid"] > 0 and 0 <= r["accept_rate_probe"] <= 1
        assert r["energy_gap"] == pytest.approx(r["energy_chains"] - diag["energy_heldout"])
    assert diag["kernel"]["step_size"] == 0.1 and diag["kernel"]["mala"] is False
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out)).Reload()
    assert {"sample/energy_gap", "sample/grad_norm", "sample/fid"} <= set(acc.Tags()["scalars"])
    assert "sample/grid" in acc.Tags()["images"]


def test_mala_chains_report_their_acceptance_and_never_overwrite(run):
    args = [f"run={run}", "n=8", "steps=10", "every=5", "mala=true", "fid=false",
            "progress=false", "init=data", "seed=7"]
    first = sample(sample_cfg(*args))
    second = sample(sample_cfg(*args))
    assert first["out"] != second["out"] and second["out"].endswith("-2")
    assert first["records"] == [{**r, "wall_clock_s": first["records"][i]["wall_clock_s"]}
                                for i, r in enumerate(second["records"])]  # same seed, same chains
    r = first["records"][-1]
    assert 0 < r["accept_rate"] <= 1 and "fid" not in r and first["records"][0]["accept_rate"] is None


BAD = [
    ([], "run=<run directory or checkpoint> is required"),
    (["run=/nonexistent/run"], "checkpoint not found"),
    (["run={run}", "n=1"], "n must be an integer >= 2"),
    (["run={run}", "steps=0"], "steps must be an integer >= 1"),
    (["run={run}", "init=prior"], "init='prior' is not one of"),
    (["run={run}", "every=0"], "every must be an integer >= 1"),
    (["run={run}", "steps=10", "grid_at=[0,20]"], "grid_at=[20] exceeds steps=10"),
    (["run={run}", "step_size=-1"], "step_size must be > 0"),
    (["run={run}", "mala=maybe"], "mala must be true, false or null"),
    (["run={run}", "fid=3"], "fid must be true or false"),
]


def listing(run: Path) -> list[Path]:
    return sorted((run / "sample").rglob("*")) if (run / "sample").exists() else []


@pytest.mark.parametrize("args, message", BAD)
def test_sample_bad_input_is_one_line(run, args, message):
    before = listing(run)
    with pytest.raises(ConfigError) as err:
        sample(sample_cfg(*[a.format(run=run) for a in args]))
    assert message in str(err.value) and "\n" not in str(err.value)
    assert listing(run) == before  # nothing written


# BAD[2] is also checked in-process above; through the command with -m slow
@pytest.mark.parametrize("args, message", [pytest.param(*BAD[2], marks=pytest.mark.slow),
                                           (["run={run}", "stepz=3"], "stepz")])
def test_sample_command_bad_input_exits_2(run, tmp_path, args, message):
    before = listing(run)
    r = run_cli(["sample", *[a.format(run=run) for a in args]], tmp_path)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, r.stderr
    assert len(lines) == 1 and lines[0].startswith("pdebm: error:") and message in lines[0], lines
    assert listing(run) == before and not list(tmp_path.iterdir())  # nothing written anywhere


def test_sample_of_a_2d_run_is_one_line(tmp_path):
    cfg = compose_config([*TINY_2D, "sampler=sgld", "sampler.n_steps=2"], tmp_path / "run2d")
    train(cfg)
    with pytest.raises(ConfigError, match="draws image grids") as err:
        sample(sample_cfg(f"run={tmp_path / 'run2d'}", "progress=false"))
    assert "\n" not in str(err.value) and not (tmp_path / "run2d" / "sample").exists()


def test_eval_scores_the_ais_samples(run):
    from pdebm.eval import evaluate

    report = evaluate(compose_config([f"run={run}", "n_chains=8", "n_temps=5", "n_samples_grid=8",
                                      "progress=false", "n_test=50"], config_name="eval"))
    assert report["fid"] > 0 and "kid" in report
    saved = json.loads((run / "ais.json").read_text())
    assert saved["fid"] == report["fid"]

"""A run continued from a mid-run checkpoint reproduces the uninterrupted run's numbers."""

import pytest

from pdebm.train import train
from tests.conftest import FAST_SAMPLER, TINY_2D


# Options that resume through the same code and state as another one, run with -m slow: the
# value is the option whose run covers them (a new option enrolls in the default run by itself).
SAME_STATE = {"replay_buffer": "pcd",                 # PCD with other numbers
              "particle_mnist": "particle_authors",   # refresh, as particle_authors has
              "particle_paper_exact": "particle_authors"}  # init=burn_in, as particle_authors has


@pytest.mark.parametrize("sampler", [
    pytest.param(s, marks=pytest.mark.slow) if s in SAME_STATE else s for s in sorted(FAST_SAMPLER)])
def test_resume_reproduces_uninterrupted_run(make_cfg, tmp_path, sampler, monkeypatch):
    common = [*TINY_2D, *FAST_SAMPLER[sampler]]
    full = train(make_cfg(*common, "steps=6", run_dir=tmp_path / "full"))
    monkeypatch.setenv("PDEBM_STOP_AT_STEP", "3")  # stopped mid-way at step 3, as by SIGTERM
    with pytest.raises(SystemExit):
        train(make_cfg(*common, "steps=6", run_dir=tmp_path / "first"))
    monkeypatch.delenv("PDEBM_STOP_AT_STEP")
    ckpt = tmp_path / "first" / "checkpoints" / "last.pt"
    resumed = train(make_cfg(*common, "steps=6", f"resume={ckpt}", run_dir=tmp_path / "second"))
    for k in ("test_nll", "lag_kl", "mmd2", "energy_gap", "sampler_grad_evals"):
        assert resumed[k] == pytest.approx(full[k], rel=1e-6, abs=1e-7), k


def test_options_run_slow_only_where_another_covers_them():
    assert set(SAME_STATE) <= set(FAST_SAMPLER) and not set(SAME_STATE.values()) & set(SAME_STATE)


def test_same_seed_same_numbers_different_seed_different(make_cfg, tmp_path):
    a = train(make_cfg(*TINY_2D, *FAST_SAMPLER["sgld"], run_dir=tmp_path / "a"))
    b = train(make_cfg(*TINY_2D, *FAST_SAMPLER["sgld"], run_dir=tmp_path / "b"))
    c = train(make_cfg(*TINY_2D, *FAST_SAMPLER["sgld"], "seed=1", run_dir=tmp_path / "c"))
    assert a["test_nll"] == b["test_nll"] and a["mmd2"] == b["mmd2"]
    assert a["test_nll"] != c["test_nll"]

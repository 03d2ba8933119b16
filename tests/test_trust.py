"""Issue 12 phase B: resume as printed in the run's own directory, divergence caught with a last
good checkpoint, train.log records, HParams sessions, the console."""

from __future__ import annotations

import json
import shlex

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

from pdebm import cli
from pdebm.diverge import Watchdog
from pdebm.errors import ConfigError, TrainingDiverged
from pdebm.progress import Progress
from pdebm.resume import continue_command, merged_overrides, purge_metrics, refusal
from pdebm.train import train
from tests.conftest import TINY_2D, run_cli

FAST = [*TINY_2D, "sampler.n_steps=2"]


def steps_of(path):
    return [json.loads(ln)["step"] for ln in path.read_text().splitlines()]


# ------------------------------------------------------------------ resume
@pytest.mark.parametrize("run", ["outputs/train/multirun/2026-01-01/10-00-00.000/lr=0.01,seed=1",
                                 "/tmp/a b/it's/x,y=1", "plain/run"])
def test_continue_command_pastes_back_to_the_path(run):
    cmd = continue_command(__import__("pathlib").Path(run))
    words = shlex.split(cmd)
    assert words[:2] == ["pdebm", "train"] and len(words) == 3
    (o,) = OverridesParser.create().parse_overrides([words[2]])
    assert o.get_key_element() == "resume" and o.value() == run


def test_refusal_names_the_differing_keys_and_allows_safe_ones():
    saved = {"lr": 0.001, "steps": 100, "energy": {"hidden": 32}, "eval_every": 10}
    assert refusal(saved, {**saved, "steps": 300, "eval_every": 50}) is None
    why = refusal(saved, {**saved, "lr": 0.01, "energy": {"hidden": 64}})
    assert "energy.hidden, lr differ" in why and "lr: checkpoint 0.001, config 0.01" in why
    assert merged_overrides(["sampler=pcd", "steps=100"], ["steps=300"]) == ["sampler=pcd", "steps=300"]


def test_purge_metrics_keeps_rows_before_the_checkpoint(tmp_path):
    p = tmp_path / "metrics.jsonl"
    p.write_text("".join(json.dumps({"step": s}) + "\n" for s in (0, 2, 4, 6)))
    purge_metrics(p, 4)
    assert steps_of(p) == [0, 2]


def test_resume_in_process_appends_to_the_same_directory(make_cfg, tmp_path, monkeypatch):
    run = tmp_path / "run"
    monkeypatch.setenv("PDEBM_STOP_AT_STEP", "3")
    with pytest.raises(SystemExit):
        train(make_cfg(*FAST, run_dir=run))
    monkeypatch.delenv("PDEBM_STOP_AT_STEP")
    train(make_cfg(*FAST, "steps=6", f"resume={run}", run_dir=run))
    assert steps_of(run / "metrics.jsonl") == [0, 2, 4, 6]  # no row twice, none lost
    # a different lr is refused, naming the key (in-process path: build)
    with pytest.raises(ConfigError, match=r"lr differ: lr: checkpoint 0.001, config 0.01"):
        train(make_cfg(*FAST, "steps=8", "lr=0.01", f"resume={run}", run_dir=tmp_path / "other"))


def test_preflight_resume_uses_the_runs_own_overrides_and_directory(make_cfg, tmp_path):
    run = tmp_path / "outputs" / "a=1,b"   # a sweep-like name: '=' and ','
    train(make_cfg(*FAST, "sampler=pcd", "sampler.n_steps=3", "sampler.buffer_size=128",
                   run_dir=run))
    (run / ".hydra").mkdir()
    (run / ".hydra" / "overrides.yaml").write_text(
        "".join(f"- {o}\n" for o in [*FAST, "sampler=pcd", "sampler.n_steps=3",
                                     "sampler.buffer_size=128"]))
    plan = cli.preflight("train", [shlex.split(continue_command(run))[2], "steps=8"])
    assert "sampler=pcd" in plan.args and "steps=8" in plan.args and "steps=4" not in plan.args
    assert f"hydra.run.dir={cli.quote(str(run))}" in plan.args and plan.created == []
    with pytest.raises(ConfigError, match="sampler.n_steps differ"):
        cli.preflight("train", [f"resume={cli.quote(str(run))}", "sampler.n_steps=5"])
    with pytest.raises(ConfigError, match="not a sweep"):
        cli.preflight("train", ["-m", f"resume={cli.quote(str(run))}", "seed=0,1"])


@pytest.mark.slow
def test_cli_stop_paste_resume_continues_in_place(tmp_path):
    """The whole story from the command line: stop, paste the printed command, same directory."""
    args = ["train", *FAST, "steps=6", "num_threads=1"]
    r = run_cli(args, tmp_path, env_extra={"PDEBM_STOP_AT_STEP": "3"})
    assert r.returncode == 143, r.stderr
    printed = r.stderr.strip().splitlines()[-1].split("continue with: ", 1)[1].rstrip(")")
    r2 = run_cli(["train", *shlex.split(printed)[2:]], tmp_path)
    assert r2.returncode == 0, r2.stderr
    (run,) = [p.parent for p in tmp_path.rglob("final_metrics.json")]
    assert steps_of(run / "metrics.jsonl") == [0, 2, 4, 6]
    log = (run / "train.log").read_text()
    for record in ("start in", "step 0: ", "stopped by SIGTERM at step 3", "resumed at step 3",
                   "training ended at step 6", "done in"):
        assert record in log, record


# ------------------------------------------------------------------ divergence
def test_watchdog_flags_blow_ups_and_not_normal_noise():
    w = Watchdog(energy_factor=1e3, nll_margin=10.0)
    for k in range(20):
        w.after_step(k, {"loss": 0.1, "energy_data": 2.0 + 0.1 * (k % 3), "energy_neg": 2.5})
    w.after_eval(0, {"test_nll": 4.2})
    w.after_eval(10, {"test_nll": 12.0})  # worse, within the margin
    assert w.ok
    w.after_step(21, {"loss": 1.0, "energy_data": 5e3, "energy_neg": 1.0})
    assert not w.ok and "|E| = 5e+03" in w.reason
    w = Watchdog(1e3, 10.0)
    w.after_eval(0, {"test_nll": 4.2})
    w.after_eval(5, {"test_nll": 2.7e8})
    assert "more than 10 above its best 4.2" in w.reason
    w = Watchdog(None, None)
    w.after_step(1, {"loss": float("nan"), "energy_data": 1.0, "energy_neg": 1.0})
    assert "loss is nan" in w.reason


@pytest.mark.parametrize("lr, expect_good", [(10.0, False), (0.1, True)])
def test_divergence_stops_and_keeps_the_last_good_checkpoint(make_cfg, tmp_path, lr, expect_good):
    import torch

    run = tmp_path / "run"
    with pytest.raises(TrainingDiverged) as e:
        train(make_cfg(*FAST, f"lr={lr}", "steps=60", "ckpt_every=2", run_dir=run))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("training diverged: ")
    assert not (run / "final_metrics.json").exists()
    good = run / "checkpoints" / "last_good.pt"
    assert good.is_file() == expect_good, msg
    if expect_good:
        state = torch.load(good, weights_only=False)
        assert f"(step {state['step']})" in msg
        # the kept state was evaluated sound: its step's test NLL is finite and near the best
        rows = {json.loads(ln)["step"]: json.loads(ln) for ln in
                (run / "metrics.jsonl").read_text().splitlines()}
        best = min(r["test_nll"] for r in rows.values())
        assert rows[state["step"]]["test_nll"] <= best + 10
        assert all(torch.isfinite(v).all() for v in state["energy"].values())


@pytest.mark.slow
def test_cli_divergence_error_is_the_last_line_after_the_bar(tmp_path):
    r = run_cli(["train", *FAST, "lr=10", "steps=20", "progress=true", "num_threads=1"], tmp_path)
    assert r.returncode == 1, r.stderr
    last = r.stderr.rstrip("\n").split("\n")[-1]
    assert last.startswith("pdebm: error: training diverged"), r.stderr[-500:]
    (log,) = tmp_path.rglob("train.log")
    assert "training diverged" in log.read_text()


# ------------------------------------------------------------------ console and TensorBoard
def test_progress_bar_shows_the_final_nll_and_parallel_jobs_print_lines(capsys, monkeypatch):
    p = Progress(total=4, initial=0, desc="t", enabled=True)
    p.evaluated(2, {"test_nll": 3.0})
    p.loss_is(0.5)
    p.step()
    p.evaluated(4, {"test_nll": 2.935})
    assert p.bar.postfix.endswith("nll=2.935")
    p.close()
    monkeypatch.setattr("pdebm.progress.parallel_job", lambda: "job 1 (seed=1)")
    q = Progress(total=4, initial=0, desc="t", enabled=True)
    assert q.bar.disable
    q.evaluated(2, {"test_nll": 3.0, "mmd2": 0.1})
    q.close()
    err = capsys.readouterr().err
    assert "pdebm: job 1 (seed=1) step 2/4 test_nll=3 mmd2=0.1\n" in err


def test_hparams_session_without_hparam_scalars(make_cfg, tmp_path):
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.plugins.hparams import plugin_data_pb2

    run = tmp_path / "run"
    train(make_cfg(*FAST, "sampler=sgld", "sampler.n_steps=3", "langevin.mala=true", run_dir=run))
    tags, sessions = set(), []
    for f in run.glob("events.out.tfevents.*"):
        for ev in EventFileLoader(str(f)).Load():
            for v in ev.summary.value:
                tags.add(v.tag)
                if v.tag == "_hparams_/session_start_info":
                    data = plugin_data_pb2.HParamsPluginData.FromString(v.metadata.plugin_data.content)
                    sessions.append(data.session_start_info.hparams)
    assert not any(t.startswith("hparam/") for t in tags)
    assert "_hparams_/experiment" not in tags  # TensorBoard builds it from all runs: `differs` is real
    assert "_hparams_/session_end_info" in tags
    (hp,) = sessions
    assert hp["sampler"].string_value == "sgld" and hp["seed"].number_value == 0
    assert hp["sampler.n_steps"].number_value == 3 and hp["langevin.mala"].number_value == 1  # bools as 0/1 (torch)
    assert "sampler/accept_rate" in tags  # sgld logs its MALA acceptance rate

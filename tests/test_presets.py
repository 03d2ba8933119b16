"""Every preset composes and builds with every sampler (presets set the shared `langevin:` node,
never keys only some samplers have); on 2D presets each pair also takes one training step."""

from __future__ import annotations

import pytest

from pdebm.build import build
from pdebm.config import CONFIG_DIR, instantiate
from pdebm.errors import ConfigError
from pdebm.samplers.base import Sampler
from pdebm.step import train_step

PRESETS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))
SAMPLERS = sorted(p.stem for p in (CONFIG_DIR / "sampler").glob("*.yaml"))
SMALL = ["batch_size=32", "sampler.n_samples=32", "eval.resolution=20", "eval.mmd_points=32",
         "progress=false", "num_threads=1"]
SMALL_2D = [*SMALL, "energy.hidden=16", "dataset.n_test=100", "dataset.n_stats=200"]
SMALL_IMAGES = [*SMALL, "dataset.n_train=64", "dataset.n_test=32", "dataset.n_stats=64"]


def test_the_grid_covers_every_option():
    assert {"paper_2d", "fast_2d", "digits_quick", "paper_mnist"} <= set(PRESETS)
    assert {"exact", "sgld", "pcd", "particle", "particle_paper"} <= set(SAMPLERS)


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("preset", PRESETS)
def test_preset_with_sampler_builds(make_cfg, preset, sampler):
    base = [f"experiment={preset}", f"sampler={sampler}"]
    cfg = make_cfg(*base)
    if "kernel" in cfg.sampler:
        assert cfg.sampler.kernel.step_size == cfg.langevin.step_size
    if preset == "paper_mnist":  # the MNIST files are not shipped: build the sampler alone
        assert isinstance(instantiate(cfg.sampler), Sampler)
        return
    is_2d = preset.endswith("_2d")
    cfg = make_cfg(*base, *(SMALL_2D if is_2d else SMALL_IMAGES), "sampler.n_samples=32")
    if sampler == "exact" and not is_2d:
        with pytest.raises(ConfigError, match="needs 2D data"):
            build(cfg)
        return
    run = build(cfg)
    if is_2d:
        if "burn_in" in cfg.sampler:
            run.sampler.burn_in = 5  # the burn-in is not what this test is about
        out = train_step(run, run.dataset.train_batch(cfg.batch_size), alpha=cfg.energy_reg)
        assert out.parts["loss"] == out.parts["loss"]  # finite, not NaN
        assert run.sampler.grad_evals > 0 or sampler == "exact"


def test_constructor_type_error_keeps_its_cause(make_cfg):
    """A key a sampler does not take is reported with the constructor's own message."""
    cfg = make_cfg("sampler=exact", "+sampler.step_size=0.01")
    with pytest.raises(ConfigError) as err:
        instantiate(cfg.sampler)
    msg = str(err.value)
    assert "\n" not in msg and "unexpected keyword argument 'step_size'" in msg, msg

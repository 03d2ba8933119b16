"""Every preset composes and builds with every sampler (presets set the shared `langevin:` node,
never keys only some samplers have); on 2D presets each pair also takes one training step."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from pdebm.build import build
from pdebm.config import instantiate
from pdebm.errors import ConfigError
from pdebm.samplers.base import Sampler
from pdebm.step import train_step
from tests.conftest import CONFIG_DIR, options

PRESETS = options("experiment")
SAMPLERS = options("sampler")
SMALL = ["batch_size=32", "sampler.n_samples=32", "eval.resolution=50", "eval.mmd_points=32",
         "progress=false", "num_threads=1"]
# Small sizes for the keys an option has (set only where the chosen option has them).
SIZES = {"dataset": {"n_train": 64, "n_test": 64, "n_stats": 200}, "energy": {"hidden": 16}}


def test_the_grid_covers_every_option():
    assert {"paper_2d", "fast_2d", "digits_quick", "paper_mnist"} <= set(PRESETS)
    assert {"exact", "sgld", "pcd", "particle", "particle_paper"} <= set(SAMPLERS)


def check_preset_with_sampler(make_cfg, preset: str, sampler: str, *extra: str) -> None:
    """The preset reaches the sampler's kernel, the pair builds, and on 2D data it takes one
    training step whose cost is counted as the sampler declares (``gradient_free``).
    ``extra``: overrides for every composition (a test's own config search path)."""
    base = [f"experiment={preset}", f"sampler={sampler}", *extra]
    cfg = make_cfg(*base)
    if "kernel" in cfg.sampler and OmegaConf.is_interpolation(cfg.sampler, "kernel"):
        assert cfg.sampler.kernel.step_size == cfg.langevin.step_size  # the preset reaches it
    # small sizes for the keys the chosen options have (as tests/conftest.py's small() picks
    # them, read off the config just composed rather than composing it once more)
    sizes = [f"{g}.{k}={v}" for g in SIZES for k, v in SIZES[g].items() if k in cfg[g]]
    cfg = make_cfg(*base, *sizes, *SMALL)
    # what the option is (an instance attribute where settings decide it: a curvature-scaled
    # particle sampler needs 2D data, the plain one does not)
    needs_2d = instantiate(cfg.sampler).requires_2d
    try:
        run = build(cfg)
    except ConfigError as e:
        msg = str(e)
        if needs_2d and "needs 2D data" in msg:
            return  # refused in one line, as it should be
        if "root" in cfg.dataset and any(w in msg for w in ("dataset.root", "not found", "missing")):
            # the data set's files are not on this machine: build the sampler alone
            assert isinstance(instantiate(cfg.sampler), Sampler)
            return
        raise
    assert not needs_2d or run.dataset.is_2d
    if run.dataset.is_2d:
        if "burn_in" in cfg.sampler:
            run.sampler.burn_in = 5  # the burn-in is not what this test is about
        out = train_step(run, run.dataset.train_batch(cfg.batch_size), alpha=cfg.energy_reg)
        assert out.parts["loss"] == out.parts["loss"]  # finite, not NaN
        assert (run.sampler.grad_evals == 0) == run.sampler.gradient_free, (
            f"sampler={sampler} spent {run.sampler.grad_evals} gradient evaluations, but "
            f"declares gradient_free={run.sampler.gradient_free}")


def parent_preset(preset: str) -> str | None:
    """The preset that a preset file only adds plain keys to (``defaults: [- digits, _self_]``,
    no sampler, kernel or override of its own), or None: such a preset reaches every sampler
    exactly as its parent does."""
    node = OmegaConf.load(CONFIG_DIR / "experiment" / f"{preset}.yaml")
    defaults = list(node.get("defaults") or [])
    if not defaults or not isinstance(defaults[0], str) or defaults[0] not in PRESETS:
        return None
    if any(not isinstance(d, str) for d in defaults) or "sampler" in node or "langevin" in node:
        return None  # it changes the sampler or the kernel (e.g. paper_2d_exact): the full grid
    return defaults[0]


# The full grid runs on every preset but those that only add plain keys to another (the derived
# Fashion-MNIST presets read the 60 000 IDX images at every build); those build with two samplers.
DERIVED = {p: parent for p in PRESETS if (parent := parent_preset(p))}
PAIRS = [(p, s) for p in PRESETS if p not in DERIVED for s in SAMPLERS] + \
        [(p, s) for p in DERIVED for s in ("particle", "pcd")]


def test_derived_presets_are_found():
    assert {"digits_quick", "fashion", "fashion_modes"} <= set(DERIVED)
    assert "paper_2d_exact" not in DERIVED  # it swaps the sampler: the full grid
    assert all(parent not in DERIVED or DERIVED[parent] != p for p, parent in DERIVED.items())


@pytest.mark.parametrize(("preset", "sampler"), PAIRS)
def test_preset_with_sampler_builds(make_cfg, preset, sampler):
    check_preset_with_sampler(make_cfg, preset, sampler)


def test_constructor_type_error_keeps_its_cause(make_cfg):
    """A key a sampler does not take is reported with the constructor's own message."""
    cfg = make_cfg("sampler=exact", "+sampler.step_size=0.01")
    with pytest.raises(ConfigError) as err:
        instantiate(cfg.sampler)
    msg = str(err.value)
    assert "\n" not in msg and "unexpected keyword argument 'step_size'" in msg, msg

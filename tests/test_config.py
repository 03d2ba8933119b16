"""Every option of every config group composes and instantiates. Options are enrolled by their
YAML files and told apart by what they are (their keys, their classes' attributes), never by
name, so a new option needs no edit here."""

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import get_class

from pdebm.build import build
from pdebm.config import CONFIG_DIR, instantiate
from pdebm.errors import ConfigError
from tests.conftest import FAST_SAMPLER, TINY_RUN, options, small

GROUPS = {g: options(g) for g in ("dataset", "energy", "sampler", "schedule", "experiment")}
IMAGE_SIZES = {"n_train": 256, "n_test": 64, "n_stats": 256}  # a data set read from files, small


def test_groups_have_the_documented_options():
    assert {"8gaussians", "checkerboard", "2spirals", "rings", "pinwheel", "swissroll", "circles",
            "moons"} <= set(GROUPS["dataset"])
    assert {"sgld", "pcd", "exact"} <= set(GROUPS["sampler"])
    assert {"constant", "cosine", "warmup"} <= set(GROUPS["schedule"])
    assert "mlp" in GROUPS["energy"]


def test_every_yaml_key_is_commented():
    for path in Path(CONFIG_DIR).rglob("*.yaml"):
        for i, line in enumerate(path.read_text().splitlines(), 1):
            s = line.strip()
            if not s or s.startswith("#") or s.startswith("- ") or s.endswith(":"):
                continue  # comments, list items, section headers
            assert "#" in line or s.startswith("_target_") or s.startswith("defaults"), \
                f"{path.relative_to(CONFIG_DIR)}:{i} has no comment: {s}"


def _build(make_cfg, *overrides):
    return build(make_cfg(*TINY_RUN, *small(*overrides, groups=("dataset", "energy"))))


@pytest.mark.parametrize("name", GROUPS["dataset"])
def test_dataset_options_instantiate(make_cfg, name, tmp_path, monkeypatch):
    node = make_cfg(f"dataset={name}").dataset
    if "root" in node:  # read from files: found in a system directory, or refused in one line
        system = any(Path(d).is_dir() for d in getattr(get_class(node._target_), "SYSTEM_DIRS", ()))
        sizes = [f"dataset.{k}={v}" for k, v in IMAGE_SIZES.items() if k in node]
        if not system:
            with pytest.raises(ConfigError, match="dataset.root|not found|missing") as err:
                _build(make_cfg, f"dataset={name}", f"dataset.root={tmp_path / 'none'}", *sizes)
            assert "\n" not in str(err.value)
            return
        # the default root holds nothing (an explicit root never falls back), so the files come
        # from the system directory
        monkeypatch.setenv("PDEBM_DATA", str(tmp_path / "none"))
        run = _build(make_cfg, f"dataset={name}", *sizes)
    else:
        run = _build(make_cfg, f"dataset={name}")
    assert run.dataset.train_batch(8).shape[1:] == tuple(run.dataset.shape)
    assert run.energy(run.dataset.train_batch(4)).shape == (4,)


@pytest.mark.parametrize("name", GROUPS["energy"])
def test_energy_options_instantiate(make_cfg, name):
    """Each energy on a data shape it declares it takes (``example_shape``): a finite energy per
    point, and a gradient with respect to the input."""
    node = make_cfg(f"energy={name}").energy
    shape = tuple(get_class(node._target_).example_shape)
    energy = instantiate(node, data_shape=shape, data_mean=torch.zeros(shape),
                         data_std=torch.ones(shape))
    x = torch.rand(4, *shape, requires_grad=True)
    e = energy(x)
    assert e.shape == (4,) and torch.isfinite(e).all()
    (grad,) = torch.autograd.grad(e.sum(), x)
    assert grad.shape == x.shape and torch.isfinite(grad).all()


@pytest.mark.parametrize("name", GROUPS["sampler"])
def test_sampler_options_instantiate(make_cfg, name):
    run = _build(make_cfg, *FAST_SAMPLER[name])
    x, log_w = run.sampler.negatives(run.energy)
    assert x.shape == (64, 2) and log_w.shape == (64,)


@pytest.mark.parametrize("name", GROUPS["schedule"])
def test_schedule_options_instantiate(make_cfg, name):
    run = _build(make_cfg, f"schedule={name}")
    assert run.scheduler.get_last_lr()[0] >= 0


@pytest.mark.parametrize("name", GROUPS["experiment"])
def test_experiment_presets_compose_and_build(make_cfg, name):
    cfg = make_cfg(f"experiment={name}")
    assert cfg.steps > 0
    try:
        build(cfg)
    except ConfigError as e:  # a data set read from files that are not on this machine
        assert "root" in cfg.dataset and "\n" not in str(e), e
        assert any(w in str(e) for w in ("dataset.root", "not found", "missing")), e


@pytest.mark.parametrize("launcher", ["parallel", "slurm"])
def test_launcher_presets_compose(launcher):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"hydra/launcher={launcher}"], return_hydra_config=True)
    GlobalHydra.instance().clear()
    target = cfg.hydra.launcher._target_
    assert ("Joblib" if launcher == "parallel" else "SlurmLauncher") in target

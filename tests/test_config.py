"""Every option of every config group composes and instantiates."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from pdebm.config import CONFIG_DIR
from pdebm.errors import ConfigError
from pdebm.train import build
from tests.conftest import FAST_SAMPLER, TINY, TINY_2D

GROUPS = {g: sorted(p.stem for p in (CONFIG_DIR / g).glob("*.yaml"))
          for g in ("dataset", "energy", "sampler", "schedule", "experiment")}
IMAGE_DATASETS = {"digits", "mnist", "fashion_mnist"}
NEEDS_FILES = {"mnist", "fashion_mnist"}  # IDX files on disk; offline they must fail in one line


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


FASHION_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist


def _build(make_cfg, *overrides):
    image = any(o in ("energy=conv", "dataset=digits") or o.startswith("dataset=fashion")
                for o in overrides)
    return build(make_cfg(*(TINY if image else TINY_2D), *overrides))


@pytest.mark.parametrize("name", GROUPS["dataset"])
def test_dataset_options_instantiate(make_cfg, name, tmp_path, monkeypatch):
    extra = ["energy=conv"] if name in IMAGE_DATASETS else []
    if name == "fashion_mnist" and FASHION_SYSTEM_DIR.is_dir():
        # the default root holds nothing, so the files come from the system directory
        monkeypatch.setenv("PDEBM_DATA", str(tmp_path / "none"))
        run = _build(make_cfg, f"dataset={name}", *extra,
                     "dataset.n_train=256", "dataset.n_test=64", "dataset.n_stats=256")
        assert run.dataset.train_batch(8).shape[1:] == (1, 28, 28)
        return
    if name in NEEDS_FILES:
        with pytest.raises(ConfigError, match="dataset.root|not found|missing"):
            _build(make_cfg, f"dataset={name}", *extra, f"dataset.root={tmp_path / 'none'}")
        return
    run = _build(make_cfg, f"dataset={name}", *extra)
    assert run.dataset.train_batch(8).shape[1:] == tuple(run.dataset.shape)


@pytest.mark.parametrize("name", GROUPS["energy"])
def test_energy_options_instantiate(make_cfg, name):
    if name == "mnist_small_conv":  # the authors' 28×28 network: built on MNIST-shaped data
        import torch

        from pdebm.config import instantiate
        energy = instantiate(make_cfg(f"energy={name}").energy, data_shape=(1, 28, 28),
                             data_mean=torch.zeros(1, 28, 28), data_std=torch.ones(1, 28, 28))
        assert energy(torch.rand(4, 1, 28, 28)).shape == (4,)
        return
    extra = ["dataset=digits"] if name == "conv" else []
    run = _build(make_cfg, f"energy={name}", *extra)
    x = run.dataset.train_batch(4)
    assert run.energy(x).shape == (4,)


@pytest.mark.parametrize("name", GROUPS["sampler"])
def test_sampler_options_instantiate(make_cfg, name):
    run = _build(make_cfg, f"sampler={name}", *FAST_SAMPLER.get(name, []))
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
    if cfg.hydra.runtime.choices.dataset not in NEEDS_FILES:
        build(cfg)


@pytest.mark.parametrize("launcher", ["parallel", "slurm"])
def test_launcher_presets_compose(launcher):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"hydra/launcher={launcher}"], return_hydra_config=True)
    GlobalHydra.instance().clear()
    target = cfg.hydra.launcher._target_
    assert ("Joblib" if launcher == "parallel" else "SlurmLauncher") in target

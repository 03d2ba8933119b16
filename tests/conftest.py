"""Shared fixtures: compose the real config tree in-process and call ``train(cfg)``."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from pdebm.config import CONFIG_DIR, compose_config

torch.set_num_threads(1)  # CI has 2 cores; keep tests from oversubscribing them

# Settings that make a training run take a second or two: trainer and `eval:` keys only, which
# every run has whatever its options.
TINY_RUN = ["steps=4", "batch_size=64", "eval_every=2", "log_every=1", "ckpt_every=2",
            "eval.resolution=40", "eval.lag_bins=10", "eval.mmd_points=64", "eval.n_plot=64",
            "progress=false"]
# Small values for keys that some options of a group have: `small()` sets each one only on an
# option that has the key, so a new option enrolls in the tests whatever keys it takes.
SMALL_KEYS = {"dataset": {"n_test": 200, "n_stats": 500},
              "energy": {"hidden": 32},
              "sampler": {"n_steps": 2, "buffer_size": 128, "burn_in": 5}}
TINY = [*TINY_RUN, "dataset.n_test=200", "dataset.n_stats=500"]  # the default data set, small
TINY_2D = [*TINY, "energy.hidden=32"]  # TINY plus a small MLP (the default energy)


SCRIPTS_DIR = Path(__file__).resolve().parent.parent / "scripts"


def load_script(name: str):
    """The module of ``scripts/<name>.py`` (scripts are files, not an importable package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, SCRIPTS_DIR / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def options(group: str) -> list[str]:
    """The options of a config group: one per YAML file in ``conf/<group>/``."""
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


@functools.lru_cache(maxsize=None)
def _group_keys(overrides: tuple[str, ...]) -> dict[str, frozenset[str]]:
    from hydra import compose, initialize_config_dir

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose(config_name="train", overrides=list(overrides))
    finally:
        GlobalHydra.instance().clear()
    return {g: frozenset(cfg[g]) for g in ("dataset", "energy", "sampler", "schedule")}


def small(*overrides: str, groups=tuple(SMALL_KEYS), sizes=None) -> list[str]:
    """``overrides`` with the small keys of ``groups`` (``sizes``, default :data:`SMALL_KEYS`)
    that the options they choose have: the choices first, then those keys, then the other
    overrides (which win over them)."""
    sizes = sizes or SMALL_KEYS
    choices = [o for o in overrides if "." not in o.split("=", 1)[0]]
    keys = _group_keys(tuple(o for o in overrides if o in choices or o.startswith("hydra.")))
    return [*choices,
            *(f"{g}.{k}={v}" for g in groups for k, v in sizes[g].items() if k in keys[g]),
            *(o for o in overrides if o not in choices)]


# Each sampler option with a small K, selected explicitly (the default sampler is `particle`);
# every option in conf/sampler/ is here (those without an entry of their own take small()).
FAST_SAMPLER = {
    "sgld": ["sampler=sgld", "sampler.n_steps=3"],
    "pcd": ["sampler=pcd", "sampler.n_steps=3", "sampler.buffer_size=128"],
    "exact": ["sampler=exact"],
    "particle": ["sampler=particle", "sampler.n_steps=2"],                       # weighted (default)
    "particle_unweighted": ["sampler=particle_unweighted", "sampler.n_steps=2"],
    "particle_paper": ["sampler=particle_paper", "sampler.n_steps=2"],
}
FAST_SAMPLER.update({name: small(f"sampler={name}", groups=("sampler",))
                     for name in options("sampler") if name not in FAST_SAMPLER})


@pytest.fixture
def make_cfg(tmp_path):
    def _make(*overrides: str, run_dir: Path | None = None) -> DictConfig:
        return compose_config(list(overrides), run_dir or tmp_path / "run")
    yield _make
    GlobalHydra.instance().clear()


def run_cli(args: list[str], cwd: Path, timeout: float = 300, env_extra: dict | None = None,
            ) -> subprocess.CompletedProcess:
    """Run the real ``pdebm`` command (via ``python -m pdebm.cli``) in a subprocess."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "pdebm.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def finite_difference_logdet(transport, x, h: float = 1e-5):
    """Sign and log|det| of the Jacobian of ``transport`` at every row of ``x`` (N, d), by
    central differences: the reference the transports' analytic log-determinants are checked
    against."""
    import torch

    eye = torch.eye(x.shape[1], dtype=x.dtype)
    jac = torch.stack([(transport(x + h * eye[j]) - transport(x - h * eye[j])) / (2 * h)
                       for j in range(x.shape[1])], 2)
    return torch.linalg.slogdet(jac)


@pytest.fixture(autouse=True, scope="session")
def _classifier_cache(tmp_path_factory):
    """FID classifiers are cached in a per-session directory, never in the user's cache."""
    os.environ["PDEBM_CACHE"] = str(tmp_path_factory.mktemp("pdebm_cache"))
    yield

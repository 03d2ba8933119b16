"""Shared fixtures: compose the real config tree in-process and call ``train(cfg)``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from pdebm.config import compose_config

torch.set_num_threads(1)  # CI has 2 cores; keep tests from oversubscribing them

# Settings that make a training run take a second or two.
TINY = ["steps=4", "batch_size=64", "eval_every=2", "log_every=1", "ckpt_every=2",
        "eval.resolution=40", "eval.lag_bins=10", "eval.mmd_points=64", "eval.n_plot=64",
        "progress=false", "dataset.n_test=200", "dataset.n_stats=500"]
TINY_2D = [*TINY, "energy.hidden=32"]  # TINY plus a small MLP (the conv energy has no `hidden`)
# Each sampler option with a small K, selected explicitly (the default sampler is `particle`).
FAST_SAMPLER = {
    "sgld": ["sampler=sgld", "sampler.n_steps=3"],
    "pcd": ["sampler=pcd", "sampler.n_steps=3", "sampler.buffer_size=128"],
    "exact": ["sampler=exact"],
    "particle": ["sampler=particle", "sampler.n_steps=2"],                       # weighted (default)
    "particle_unweighted": ["sampler=particle", "sampler.n_steps=2", "sampler.weights=false"],
    "particle_paper": ["sampler=particle_paper", "sampler.n_steps=2"],
}


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

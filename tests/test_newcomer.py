"""A newcomer's sampler is one ``.py`` file and one YAML, and nothing else changes.

The test writes a noise-only sampler (fresh draws of the energy's Gaussian base, no gradients)
into a throwaway package and a throwaway config directory (added to Hydra's search path), then
runs it through the preset test's code path and through the benchmark script. The benchmark
must give it a row of its own: it is gradient-free, so budget mode runs it for ``--steps``; it
is not an oracle, so the "gap to exact" column is measured against the exact sampler alone.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TINY_2D
from tests.test_presets import PRESETS, check_preset_with_sampler

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "compare_samplers.py"

NOISE_PY = '''"""Negatives drawn afresh from the energy's Gaussian base: no Markov chain, no gradients."""

from pdebm.samplers.base import Sampler, initial_noise, uniform_log_weights
from pdebm.schema import Positive


class NoiseSampler(Sampler):
    gradient_free = True  # grad_evals stays 0: budget= never stops it

    def __init__(self, n_samples: Positive[int] = 1000) -> None:
        super().__init__()
        self.n_samples = n_samples

    def negatives(self, energy):
        x = initial_noise(energy, self.n_samples, "base", (-5.0, 5.0))
        return x, uniform_log_weights(x)
'''

NOISE_YAML = """# Noise-only negatives: fresh draws of the energy's Gaussian base every step.
_target_: newcomer_samplers.noise.NoiseSampler
n_samples: ${batch_size}  # negatives per training step
"""


@pytest.fixture
def newcomer(tmp_path, monkeypatch) -> tuple[Path, str]:
    """The throwaway package's root (for the import path) and the search-path override."""
    pkg = tmp_path / "newcomer_samplers"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "noise.py").write_text(NOISE_PY)
    conf = tmp_path / "conf" / "sampler"
    conf.mkdir(parents=True)
    (conf / "noise.yaml").write_text(NOISE_YAML)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path, f"hydra.searchpath=[file://{tmp_path / 'conf'}]"


@pytest.mark.parametrize("preset", PRESETS)
def test_noise_sampler_passes_the_preset_test(make_cfg, newcomer, preset):
    _, searchpath = newcomer
    check_preset_with_sampler(make_cfg, preset, "noise", searchpath)


def _row(table: str, name: str) -> list[str]:
    line = next(ln for ln in table.splitlines() if ln.startswith(f"| {name} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_noise_sampler_gets_its_own_row_in_the_benchmark(newcomer):
    root, searchpath = newcomer
    out = root / "bench"
    overrides = [o for o in TINY_2D if not o.startswith("steps=")]
    # budget mode: 4 steps of sgld (2 Langevin steps × 64 chains) spend the budget of 512
    cmd = [sys.executable, str(SCRIPT), "--preset", "fast_2d", "--datasets", "8gaussians",
           "--mode", "budget", "--steps", "4", "--budget", "512", "--seeds", "0", "--jobs", "1",
           "--out", str(out), "--samplers", "noise", "sgld:n_steps=2", "exact", *overrides,
           searchpath]
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=root)
    assert r.returncode == 0, r.stderr
    table = (out / "fast_2d-budget-4" / "table.md").read_text()
    # columns: sampler, NLL, gap, lag KL, floor, floor (ESS), MMD², evals, wall-clock, steps
    noise, sgld, exact = (_row(table, s) for s in ("noise", "sgld:n_steps=2", "exact"))
    assert exact[2] == "–", table  # the oracle has no gap to itself
    for row in (noise, sgld):  # every other row is measured against the oracle alone
        assert float(row[2]) == pytest.approx(float(row[1]) - float(exact[1]), abs=2e-3), table
    assert float(noise[7]) == 0 and float(sgld[7]) > 0, table
    assert noise[9] == exact[9] == sgld[9] == "4", table  # gradient-free rows run --steps

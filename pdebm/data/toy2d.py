"""The eight standard 2D data sets of EBM and flow papers (docs/evaluation.md, "2D data sets").

Every generator takes an explicit ``numpy.random.Generator``, so a seed reproduces the data.
Training batches are drawn fresh at every step (infinite data, as in the authors' code) from a
stream of the run's seed. The test set and the points behind the data statistics are fixed
across seeds, as for the image data sets: they come from the streams of :data:`FIXED_SEED`, so
every run of a seed sweep is evaluated on exactly the same held-out points.
"""

from __future__ import annotations

from typing import Any, Callable, Literal

import numpy as np
from torch import Tensor

from pdebm.data.base import Dataset, to_tensor
from pdebm.errors import one_of, positive
from pdebm.schema import Positive

Generator = np.random.Generator


_ANGLES = np.arange(8) * np.pi / 4
_CENTRES = 4.0 * np.stack([np.cos(_ANGLES), np.sin(_ANGLES)], axis=1)


def eight_gaussians(n: int, rng: Generator) -> np.ndarray:
    """8 centres at multiples of 45° on the unit circle ×4; (centre + 0.5·N(0, I)) / 1.414."""
    idx = rng.integers(0, 8, size=n)
    return (_CENTRES[idx] + 0.5 * rng.standard_normal((n, 2))) / 1.414


def checkerboard(n: int, rng: Generator) -> np.ndarray:
    """x₁ ~ U[−2, 2); x₂ ~ U[0, 1) − 2·Bernoulli(½) + (⌊x₁⌋ mod 2); point = 2·(x₁, x₂)."""
    x1 = rng.random(n) * 4 - 2
    x2 = rng.random(n) - 2 * rng.integers(0, 2, size=n) + np.floor(x1) % 2
    return 2.0 * np.stack([x1, x2], axis=1)


def two_spirals(n: int, rng: Generator) -> np.ndarray:
    """Two interleaved spiral arms (d₁ and −d₁), divided by 3, plus N(0, 0.1²)."""
    half = n // 2
    t = np.sqrt(rng.random((half, 1))) * 540 * (2 * np.pi) / 360
    d1x = -np.cos(t) * t + rng.random((half, 1)) * 0.5
    d1y = np.sin(t) * t + rng.random((half, 1)) * 0.5
    arm = np.hstack([d1x, d1y])
    x = np.vstack([arm, -arm]) / 3
    x = x + 0.1 * rng.standard_normal(x.shape)
    return _fill(x, n, two_spirals, rng)


def rings(n: int, rng: Generator) -> np.ndarray:
    """Four concentric circles of radii 1, 0.75, 0.5, 0.25, scaled by 3, plus N(0, 0.08²)."""
    radii = np.array([1.0, 0.75, 0.5, 0.25])
    r = radii[rng.integers(0, 4, size=n)]
    theta = rng.random(n) * 2 * np.pi
    x = 3.0 * np.stack([r * np.cos(theta), r * np.sin(theta)], axis=1)
    return x + 0.08 * rng.standard_normal((n, 2))


def pinwheel(n: int, rng: Generator) -> np.ndarray:
    """5 arms: radial N(1, 0.3²), tangential N(0, 0.1²), rotated by 0.25·exp(radial) + arm
    angle; ×2."""
    num_arms, radial_std, tangential_std, rate = 5, 0.3, 0.1, 0.25
    arm_angles = np.linspace(0, 2 * np.pi, num_arms, endpoint=False)
    feats = rng.standard_normal((n, 2)) * np.array([radial_std, tangential_std])
    feats[:, 0] += 1.0
    labels = rng.integers(0, num_arms, size=n)
    angles = arm_angles[labels] + rate * np.exp(feats[:, 0])
    rot = np.stack([np.cos(angles), -np.sin(angles), np.sin(angles), np.cos(angles)], axis=1)
    rot = rot.reshape(n, 2, 2)
    return 2.0 * np.einsum("ti,tij->tj", feats, rot)


def swissroll(n: int, rng: Generator) -> np.ndarray:
    """scikit-learn's swiss roll with noise 1.0, coordinates (0, 2), divided by 5."""
    from sklearn.datasets import make_swiss_roll  # lazily: sklearn takes seconds to import

    x, _ = make_swiss_roll(n_samples=n, noise=1.0, random_state=_sk_seed(rng))
    return x[:, [0, 2]] / 5.0


def circles(n: int, rng: Generator) -> np.ndarray:
    """scikit-learn's ``make_circles(factor=0.5, noise=0.08)``, ×3."""
    from sklearn.datasets import make_circles  # lazily: sklearn takes seconds to import

    x, _ = make_circles(n_samples=n, factor=0.5, noise=0.08, random_state=_sk_seed(rng))
    return 3.0 * x


def moons(n: int, rng: Generator) -> np.ndarray:
    """scikit-learn's ``make_moons(noise=0.1)``, ×2, shifted by (−1, −0.2)."""
    from sklearn.datasets import make_moons  # lazily: sklearn takes seconds to import

    x, _ = make_moons(n_samples=n, noise=0.1, random_state=_sk_seed(rng))
    return 2.0 * x + np.array([-1.0, -0.2])


def _sk_seed(rng: Generator) -> int:
    """scikit-learn takes an integer seed: draw it from our stream so the seed still rules."""
    return int(rng.integers(0, 2**31 - 1))


def _fill(x: np.ndarray, n: int, fn: Callable, rng: Generator) -> np.ndarray:
    """Odd ``n``: generators that produce pairs add one more point, then shuffle."""
    if len(x) < n:
        x = np.vstack([x, fn(2, rng)[: n - len(x)]])
    return x[rng.permutation(len(x))]


GENERATORS: dict[str, Callable[[int, Generator], np.ndarray]] = {
    "8gaussians": eight_gaussians,
    "checkerboard": checkerboard,
    "2spirals": two_spirals,
    "rings": rings,
    "pinwheel": pinwheel,
    "swissroll": swissroll,
    "circles": circles,
    "moons": moons,
}

FIXED_SEED = 0
"""Seed of the test set and of the statistics' points, whatever the run's seed (seed 0's own
streams, so a seed-0 run draws exactly what it drew when these followed the run's seed)."""

# Differential entropy of the data density (nats): a lower bound on any model's expected NLL.
ENTROPY = {"8gaussians": 2.838, "checkerboard": 3.466}


def sample(name: str, n: int, rng: Generator) -> np.ndarray:
    """``n`` points of the named 2D data set, float64 array ``(n, 2)``."""
    one_of("dataset.name", name, sorted(GENERATORS))
    return GENERATORS[name](n, rng)


class Toy2D(Dataset):
    """A standard 2D data set with fresh training batches and a fixed test set.

    Args:
        name: one of :data:`GENERATORS`.
        seed: filled in by the trainer from the run's seed.
        n_test: size of the held-out set used for test NLL and MMD.
        n_stats: points used to estimate the data mean/std that initialise the Gaussian base.
    """

    shape = (2,)

    def __init__(self, name: Literal[tuple(GENERATORS)], seed: int = 0, n_test: Positive[int] = 5000,
                 n_stats: Positive[int] = 10000) -> None:
        one_of("dataset.name", name, sorted(GENERATORS))
        positive("dataset.n_test", n_test)
        positive("dataset.n_stats", n_stats)
        self.name = name
        train_seq = np.random.SeedSequence([seed, 2]).spawn(3)[0]
        _, test_seq, stats_seq = np.random.SeedSequence([FIXED_SEED, 2]).spawn(3)
        self.rng = np.random.default_rng(train_seq)
        self.test = to_tensor(sample(name, n_test, np.random.default_rng(test_seq)))
        ref = to_tensor(sample(name, n_stats, np.random.default_rng(stats_seq)))
        self.mean, self.std = ref.mean(0), ref.std(0)
        self.entropy = ENTROPY.get(name)

    def train_batch(self, n: int) -> Tensor:
        return to_tensor(GENERATORS[self.name](n, self.rng))  # the name was checked in __init__

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]

"""The 2D data generators: reproducible from a seed, with the documented support and scale."""

import numpy as np
import pytest
import torch

from pdebm.data import toy2d
from pdebm.data.toy2d import GENERATORS, Toy2D
from pdebm.errors import ConfigError

N = 4000


def draw(name, seed=0, n=N):
    return toy2d.sample(name, n, np.random.default_rng(seed))


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_reproducible_from_seed(name):
    a, b, c = draw(name, 1), draw(name, 1), draw(name, 2)
    assert a.shape == (N, 2)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_dataset_object_reproducible_and_resumable(name):
    d1, d2 = Toy2D(name, seed=3, n_test=100, n_stats=500), Toy2D(name, seed=3, n_test=100, n_stats=500)
    torch.testing.assert_close(d1.test, d2.test)
    first = d1.train_batch(50)
    state = d1.state_dict()
    nxt = d1.train_batch(50)
    d2.load_state_dict(state)
    torch.testing.assert_close(d2.train_batch(50), nxt)
    assert not torch.allclose(first, nxt)
    # the test set is a different stream from the training batches
    assert not torch.allclose(d1.test[:50], first)


# (max |coordinate|, expected radius statistics) from the definitions in docs/evaluation.md
def test_8gaussians_modes_and_scale():
    x = draw("8gaussians")
    centres = 4 * np.stack([np.cos(np.arange(8) * np.pi / 4), np.sin(np.arange(8) * np.pi / 4)], 1) / 1.414
    d = np.linalg.norm(x[:, None] - centres[None], axis=2)
    nearest = d.argmin(1)
    counts = np.bincount(nearest, minlength=8) / N
    assert np.all(np.abs(counts - 1 / 8) < 4 * np.sqrt(1 / 8 * 7 / 8 / N))
    resid = x - centres[nearest]
    assert abs(resid.std() - 0.5 / 1.414) < 0.02


def test_checkerboard_support():
    x = draw("checkerboard")
    assert np.all(np.abs(x) <= 4.0)
    cell = np.floor(x / 2).astype(int)  # unit squares ×2
    # occupied cells alternate like a checkerboard: (i + j) even
    assert np.all((cell[:, 0] + cell[:, 1]) % 2 == 0)
    assert len({tuple(c) for c in cell}) == 8


def test_rings_radii():
    r = np.linalg.norm(draw("rings"), axis=1)
    for radius in (0.75, 1.5, 2.25, 3.0):
        assert np.mean(np.abs(r - radius) < 0.3) > 0.2


@pytest.mark.parametrize("name,bound", [("2spirals", 4.5), ("pinwheel", 5.0), ("swissroll", 4.0),
                                        ("circles", 4.0), ("moons", 4.0)])
def test_scale_inside_evaluation_box(name, bound):
    x = draw(name)
    assert np.abs(x).max() < bound          # the data fit the default [−5, 5]² grid
    assert x.std() > 0.5                    # and are spread out, not collapsed


def test_circles_and_moons_shapes():
    r = np.linalg.norm(draw("circles"), axis=1)
    assert abs(np.median(r[r > 2.25]) - 3.0) < 0.1 and abs(np.median(r[r < 2.25]) - 1.5) < 0.1
    m = draw("moons")
    np.testing.assert_allclose(m.mean(0), [0.0, 0.3], atol=0.1)  # 2·(0.5, 0.25) + (−1, −0.2)


def test_unknown_dataset_is_config_error():
    with pytest.raises(ConfigError, match="dataset.name='spiral'"):
        Toy2D("spiral")


def test_test_set_is_fixed_across_seeds():
    """One policy for 2D and images: the held-out set does not depend on the run's seed."""
    a, b = (Toy2D("8gaussians", seed=s, n_test=100, n_stats=500) for s in (0, 1))
    assert torch.equal(a.test, b.test) and torch.equal(a.mean, b.mean)
    assert not torch.equal(a.train_batch(50), b.train_batch(50))  # training data still follows the seed

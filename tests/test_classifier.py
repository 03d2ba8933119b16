"""Image labels and the FID classifier: aligned labels, held-out accuracy, determinism, the
content-keyed cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pdebm.data.images import MNIST, Digits
from pdebm.errors import ConfigError
from pdebm.metrics.classifier import ClassifierConfig, classifier_for, content_key, train_classifier
from tests.test_images import write_idx

FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(scope="module")
def digits() -> Digits:
    return Digits(seed=0)


def test_digits_labels_are_aligned_with_the_images(digits):
    from sklearn.datasets import load_digits

    bunch = load_digits()
    assert digits.train_labels.shape == (1438,) and digits.test_labels.shape == (359,)
    assert digits.train_labels.dtype == torch.int64
    # every training image is found in scikit-learn's bundle with the same label
    flat = {bytes(im.astype(np.uint8).tobytes()): int(t) for im, t in zip(bunch.images, bunch.target)}
    for i in range(0, 1438, 97):
        assert flat[digits.train_grey_levels[i, 0].tobytes()] == int(digits.train_labels[i])
    assert set(digits.test_labels.tolist()) == set(range(10))
    assert len(Digits(n_train=100, n_test=50).train_labels) == 100


def test_idx_labels_beside_the_images(tmp_path):
    rng = np.random.default_rng(0)
    write_idx(tmp_path / "train-images-idx3-ubyte", rng.integers(0, 256, (30, 6, 6)))
    write_idx(tmp_path / "t10k-images-idx3-ubyte", rng.integers(0, 256, (7, 6, 6)))
    assert MNIST(root=tmp_path).train_labels is None  # images only: no labels, still a data set
    y = rng.integers(0, 10, 30)
    write_idx(tmp_path / "train-labels-idx1-ubyte", y)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", rng.integers(0, 10, 7), gz=True)
    d = MNIST(root=tmp_path, n_train=20)
    assert d.train_labels.tolist() == y[:20].tolist() and d.test_labels.shape == (7,)
    write_idx(tmp_path / "train-labels-idx1-ubyte", y[:5])
    with pytest.raises(ConfigError, match="expected 30 labels"):
        MNIST(root=tmp_path)


@pytest.mark.skipif(not FASHION.is_dir(), reason="Fashion-MNIST IDX files not installed")
def test_fashion_labels_from_the_idx_files():
    from pdebm.data.images import FashionMNIST

    f = FashionMNIST(n_stats=100)
    assert f.train_labels.shape == (60000,) and f.test_labels.shape == (10000,)
    assert f.train_labels.bincount().tolist() == [6000] * 10  # Fashion-MNIST is balanced


def test_classifier_is_deterministic_and_accurate(digits):
    # the session's cache (tests/conftest.py): the digits runs of later tests load this classifier
    # instead of training it again; trained here unless an earlier test cached it (same weights:
    # checked against the fresh training below)
    before = torch.get_rng_state()
    c = classifier_for(digits)
    assert torch.equal(torch.get_rng_state(), before)  # the run's generator is left alone
    assert c.test_accuracy > 0.95, c.test_accuracy
    assert c.path is not None and c.path.is_file() and c.key in c.path.name
    # trained twice from scratch: the very same weights (a short training, three epochs: the
    # same code as the full one, which classifier_for above runs once)
    short = ClassifierConfig(epochs=3)
    first = classifier_for(digits, short, cache=False).net
    again = train_classifier(digits.train_grey_levels, digits.train_labels.numpy(), digits.levels,
                             short)
    for a, b in zip(first.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    # the cache: loaded, not retrained (same key, same weights, same accuracy)
    cached = classifier_for(Digits(seed=3, transform="zca"))
    assert cached.key == c.key and cached.test_accuracy == pytest.approx(c.test_accuracy, abs=0.01)
    assert all(torch.equal(a, b) for a, b in zip(c.net.state_dict().values(),
                                                 cached.net.state_dict().values()))
    assert not any(p.requires_grad for p in cached.net.parameters())
    assert c.net.features(digits.to_images(digits.test[:5])).shape == (5, 64)


def test_content_key_follows_data_and_settings(digits):
    v, y = digits.train_grey_levels, digits.train_labels.numpy()
    key = content_key("digits", v, y, 17, ClassifierConfig())
    assert key == content_key("digits", v.copy(), y.copy(), 17, ClassifierConfig())
    y2 = y.copy()
    y2[0] = (y2[0] + 1) % 10
    assert key != content_key("digits", v, y2, 17, ClassifierConfig())
    assert key != content_key("digits", v, y, 17, ClassifierConfig(seed=1))
    assert key != content_key("digits", v[:-1], y[:-1], 17, ClassifierConfig())


def test_no_labels_is_one_line(tmp_path):
    rng = np.random.default_rng(0)
    write_idx(tmp_path / "train-images-idx3-ubyte", rng.integers(0, 256, (30, 6, 6)))
    write_idx(tmp_path / "t10k-images-idx3-ubyte", rng.integers(0, 256, (7, 6, 6)))
    with pytest.raises(ConfigError, match="no labels") as err:
        classifier_for(MNIST(root=tmp_path))
    assert "\n" not in str(err.value)

"""dataset.classes / dataset.class_weights: a labelled subset in given proportions."""

from __future__ import annotations

import numpy as np
import pytest

from pdebm.data.images import Digits, class_subset
from pdebm.errors import ConfigError


def test_digits_subset_has_the_classes_in_the_weights():
    ds = Digits(classes=[2, 3, 6], class_weights=[4, 2, 1])
    full = Digits()
    for labels, full_labels in ((ds.train_labels, full.train_labels),
                                (ds.test_labels, full.test_labels)):
        counts = np.bincount(labels.numpy(), minlength=10)
        assert set(np.flatnonzero(counts)) == {2, 3, 6}
        n2, n3, n6 = counts[2], counts[3], counts[6]
        # proportions 4:2:1 up to one image per class, as large as the rarest class allows
        total = n2 + n3 + n6
        assert abs(n2 / total - 4 / 7) < 2 / total and abs(n6 / total - 1 / 7) < 2 / total
        avail = np.bincount(full_labels.numpy(), minlength=10)
        assert all(counts[c] <= avail[c] for c in (2, 3, 6))
        assert any(counts[c] == avail[c] for c in (2, 3, 6))  # the limiting class keeps all
    assert ds.n_train == len(ds.train_labels) and len(ds.test) == len(ds.test_labels)
    # the kept images are the full data set's images of those classes (pixel values unchanged)
    kept = {img.tobytes() for img in ds.train_grey_levels}
    pool = {img.tobytes() for img, y in zip(full.train_grey_levels, full.train_labels.numpy())
            if y in (2, 3, 6)}
    assert kept <= pool
    # independent of the run's seed, and n_train keeps roughly the proportions
    again = Digits(seed=5, classes=[2, 3, 6], class_weights=[4, 2, 1])
    assert np.array_equal(again.train_grey_levels, ds.train_grey_levels)
    first = Digits(classes=[2, 3, 6], class_weights=[4, 2, 1], n_train=70)
    c = np.bincount(first.train_labels.numpy(), minlength=10)
    assert c[2] > c[3] > c[6] > 0


def test_classes_without_weights_keep_every_image_of_them():
    ds = Digits(classes=[0, 1])
    full = Digits()
    assert ds.n_train == int(np.isin(full.train_labels.numpy(), [0, 1]).sum())


@pytest.mark.parametrize("classes, weights, match", [
    ([2, 3], [1.0], "one weight per class"),
    ([2, 2], None, "distinct"),
    ([2, 11], None, "no training images of class"),
    ([2, 3], [1.0, 0.0], "positive"),
    (None, [1.0, 2.0], "needs dataset.classes"),
])
def test_bad_subset_options_are_one_line_errors(classes, weights, match):
    with pytest.raises(ConfigError, match=match):
        Digits(classes=classes, class_weights=weights)


def test_subset_needs_labels():
    with pytest.raises(ConfigError, match="no labels"):
        class_subset(np.zeros((3, 1, 2, 2), np.uint8), None, [0], None)

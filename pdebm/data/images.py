"""Image data sets: scikit-learn's 8×8 digits (bundled, offline), MNIST and Fashion-MNIST (IDX).

Every image set shares one preprocessing pipeline, from integer grey levels ``v ∈ {0, …, L−1}``
to the *model space* the energy sees:

1. scale to the pixel space ``u ∈ [0, 1]``: ``u = (v + U)/L`` with ``U ~ U[0, 1)`` per pixel when
   ``dequantize`` (uniform dequantisation: a continuous density on ``[0, 1)^D`` whose likelihood
   bounds the discrete one), otherwise ``u = v/(L − 1)``;
2. ``transform``: ``none`` (``x = u``), ``logit`` (``x = logit(λ + (1 − 2λ)u)``) or ``zca``
   (``x = (Σ + sI)^{−1/2}(u − m)``, ZCA whitening with the pixel mean ``m`` and covariance ``Σ``
   of the training images: in model space the fitted full-covariance Gaussian is ``N(0, I)``,
   the base starts as exactly that Gaussian, and one Langevin step size suits every direction).

``to_images`` inverts step 2 (for display), and ``log_det_jacobian`` gives ``log |∂x/∂u|`` so that
a model-space log-density converts to the pixel space: ``log p(u) = log p(x) + log |∂x/∂u|``
(what AIS needs to report nats and bits/dim comparable across transforms).

Randomness: the training order (reshuffled every epoch) and the training dequantisation noise
come from a numpy Generator seeded by the run's seed, saved in ``state_dict``. The test set (and
its dequantisation noise), the digits train/test split and the noise used for the data
statistics come from fixed seeds, independent of the run's seed, so every run of a sweep is
evaluated on exactly the same held-out tensor.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Annotated, Any, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from annotated_types import Interval
from torch import Tensor

from pdebm.data.base import Dataset
from pdebm.errors import check, one_of, positive
from pdebm.data.idx import download_idx, find_idx, read_idx
from pdebm.schema import NonNegative, Positive

TRANSFORMS = ("none", "logit", "zca")
LogitLambda = Annotated[float, Interval(gt=0, lt=0.5)]  # λ of the logit transform
SPLIT_SEED = 0        # digits train/test permutation (fixed: the split never depends on the run)
TEST_NOISE_SEED = 1   # dequantisation noise of the fixed test set
STATS_SEED = 2        # dequantisation noise used for the data mean/std (base initialisation)
_STATS_CHUNK = 8192   # images preprocessed at once when computing statistics
FASHION_MNIST_SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"
"""Where Debian's ``dataset-fashion-mnist`` installs the four IDX ``.gz`` files."""


class ImageDataset(Dataset):
    """Integer-valued images with the shared preprocessing, epoch-wise training batches and a
    fixed test set (module docstring).

    Args:
        train, test: ``uint8`` grey levels, shape ``(N, H, W)`` or ``(N, C, H, W)``.
        levels: number of grey levels ``L`` (256 for MNIST, 17 for the digits).
        seed: the run's seed (training order and training dequantisation noise).
        dequantize: uniform dequantisation ``(v + U)/L``; needed for meaningful likelihoods.
        transform: ``none`` or ``logit``.
        logit_lambda: ``λ`` of the logit transform, in (0, 0.5).
        n_train: keep only the first ``n_train`` training images (``None``: all).
        n_test: keep only the first ``n_test`` test images (``None``: all).
        n_stats: at most this many (first) training images estimate the per-pixel mean/std
            that initialise the Gaussian base (``None``: all).
        classes: keep only the images of these classes (needs labels; ``None``: all).
        class_weights: relative class frequencies of the kept images, one per class (``None``:
            as many as the data has); see :func:`class_subset`.
        train_labels, test_labels: class labels aligned with ``train`` and ``test`` (optional),
            kept as the int64 tensors :attr:`train_labels` / :attr:`test_labels` (``None`` when
            absent); the FID classifier (:mod:`pdebm.metrics.classifier`) is trained on them.
    """

    levels: int
    name: str = "images"

    def __init__(self, train: np.ndarray, test: np.ndarray, levels: int, seed: int = 0,
                 dequantize: bool = True, transform: Literal[TRANSFORMS] = "none",
                 logit_lambda: LogitLambda = 0.05, n_train: Positive[int] | None = None,
                 n_test: Positive[int] | None = None, n_stats: Positive[int] | None = None,
                 zca_shrinkage: Positive[float] = 1e-4,
                 train_labels: np.ndarray | None = None,
                 test_labels: np.ndarray | None = None,
                 classes: Sequence[int] | None = None,
                 class_weights: Sequence[float] | None = None) -> None:
        one_of("dataset.transform", transform, TRANSFORMS)
        if classes is not None or class_weights is not None:
            (train, train_labels), (test, test_labels) = (
                class_subset(images, labels, classes, class_weights, split)
                for images, labels, split in ((train, train_labels, "training"),
                                              (test, test_labels, "test")))
        self.classes = None if classes is None else [int(c) for c in classes]
        self.train_labels = _labels(train_labels, len(train), n_train)
        self.test_labels = _labels(test_labels, len(test), n_test)
        check(0.0 < float(logit_lambda) < 0.5,
              f"dataset.logit_lambda must be in (0, 0.5), got {logit_lambda}")
        train, test = _as_nchw(train), _as_nchw(test)
        self._train = _limit(train, n_train, "n_train", "training")
        test = _limit(test, n_test, "n_test", "test")
        self.levels = int(levels)
        self.dequantize = bool(dequantize)
        self.transform = transform
        self.logit_lambda = float(logit_lambda)
        self.shape = tuple(int(s) for s in self._train.shape[1:])
        self.n_train = len(self._train)
        if n_stats is not None:
            positive("dataset.n_stats", n_stats)
        self.n_stats = min(n_stats or self.n_train, self.n_train)
        positive("dataset.zca_shrinkage", zca_shrinkage)
        self.zca_shrinkage = float(zca_shrinkage)
        if transform == "zca":
            self._fit_zca()
        self.test = self._preprocess(test, np.random.default_rng(TEST_NOISE_SEED))
        self.mean, self.std = self._statistics(self.n_stats)
        if transform == "zca":  # the base starts as N(0, I): the fitted full-covariance Gaussian
            self.mean, self.std = torch.zeros_like(self.mean), torch.ones_like(self.std)
        self.rng = np.random.default_rng(np.random.SeedSequence([seed, 3]))
        self._order = self.rng.permutation(self.n_train)
        self._pos = 0

    # ---------------------------------------------------------------- preprocessing
    @property
    def train_grey_levels(self) -> np.ndarray:
        """The training images as stored: integer grey levels ``(N, C, H, W)`` uint8."""
        return self._train

    @property
    def n_dims(self) -> int:
        """Dimensions per image ``D = C·H·W`` (the denominator of bits/dim)."""
        return math.prod(self.shape)

    def _fit_zca(self) -> None:
        """ZCA whitening ``x = W(u − m)``, ``W = (Σ + sI)^{−1/2}`` (symmetric), from the pixel
        mean ``m`` and covariance ``Σ`` of the statistics images; ``s`` = ``zca_shrinkage``."""
        self.transform = "none"  # fit on pixels
        u = self.statistics_images().flatten(1)
        self.transform = "zca"
        m = u.double().mean(0)
        c = u - m.float()  # centred in float32 (fast); the products are accumulated in float64
        cov = (c.T @ c).double() / len(u) + self.zca_shrinkage * torch.eye(u.shape[1],
                                                                          dtype=torch.float64)
        lam, vec = torch.linalg.eigh(cov)
        self._zca_mean = m.float()
        self._zca_w = (vec * lam.rsqrt()) @ vec.T
        self._zca_w32 = self._zca_w.float()
        self._zca_w_inv = (vec * lam.sqrt()) @ vec.T
        self._zca_log_det = float(-0.5 * lam.log().sum())

    def statistics_images(self) -> Tensor:
        """The first ``n_stats`` training images in model space, dequantised with the fixed
        statistics noise: what the base's statistics, the whitening and the fitted Gaussians
        (AIS start, ``scripts/gaussian_baselines.py``) are computed from."""
        rng = np.random.default_rng(STATS_SEED)
        return torch.cat([self._preprocess(self._train[i:min(i + _STATS_CHUNK, self.n_stats)], rng)
                          for i in range(0, self.n_stats, _STATS_CHUNK)])

    def to_model(self, u: Tensor) -> Tensor:
        """Pixel space ``[0, 1]`` → model space (step 2 of the module docstring)."""
        if self.transform == "none":
            return u
        if self.transform == "zca":
            w = self._zca_w if u.dtype == torch.float64 else self._zca_w32
            return ((u.flatten(1) - self._zca_mean.to(u.dtype)) @ w.to(u.device)).reshape(u.shape)
        lam = self.logit_lambda
        s = lam + (1 - 2 * lam) * u
        return torch.log(s) - torch.log1p(-s)

    def to_images(self, x: Tensor) -> Tensor:
        """Model space → displayable images in ``[0, 1]``, shape ``(N, C, H, W)``."""
        x = x.detach().reshape(-1, *self.shape)
        if self.transform == "zca":
            u = x.flatten(1).double() @ self._zca_w_inv + self._zca_mean.double()
            x = u.to(x.dtype).reshape(x.shape)
        if self.transform == "logit":
            x = (torch.sigmoid(x) - self.logit_lambda) / (1 - 2 * self.logit_lambda)
        return x.clamp(0.0, 1.0)

    def log_det_jacobian(self, x: Tensor) -> Tensor:
        """``log |∂x/∂u|`` per image at model-space points ``x``, shape ``(N,)``.

        Add it to a model-space log-density to get the density of the pixels ``u ∈ [0, 1]^D``.
        For ``logit``: ``D·log(1 − 2λ) − Σ log s(1 − s)`` with ``s = sigmoid(x)``; 0 for ``none``.
        """
        x = x.reshape(len(x), -1)
        if self.transform == "none":
            return torch.zeros(len(x), dtype=x.dtype, device=x.device)
        if self.transform == "zca":
            return torch.full((len(x),), self._zca_log_det, dtype=x.dtype, device=x.device)
        per_pixel = F.softplus(x) + F.softplus(-x)  # −log s − log(1 − s)
        return per_pixel.sum(1) + x.shape[1] * math.log(1 - 2 * self.logit_lambda)

    def _preprocess(self, v: np.ndarray, rng: np.random.Generator) -> Tensor:
        """Grey levels ``(N, C, H, W)`` uint8 → model-space float32 tensor."""
        v = v.astype(np.float32)
        if self.dequantize:
            u = (v + rng.random(v.shape, dtype=np.float32)) / self.levels
        else:
            u = v / (self.levels - 1)
        return self.to_model(torch.from_numpy(u))

    def _statistics(self, n: int) -> tuple[Tensor, Tensor]:
        """Per-pixel mean and std of the first ``n`` preprocessed training images (fixed
        dequantisation noise)."""
        rng = np.random.default_rng(STATS_SEED)
        total = torch.zeros(self.shape, dtype=torch.float64)
        total_sq = torch.zeros(self.shape, dtype=torch.float64)
        for i in range(0, n, _STATS_CHUNK):
            x = self._preprocess(self._train[i:min(i + _STATS_CHUNK, n)], rng).double()
            total += x.sum(0)
            total_sq += x.pow(2).sum(0)
        mean = total / n
        var = (total_sq / n - mean.pow(2)).clamp_min(0.0)
        return mean.float(), var.sqrt().float()

    # ---------------------------------------------------------------- training batches
    def train_batch(self, n: int) -> Tensor:
        """The next ``n`` training images in a reshuffled-every-epoch order, freshly dequantised."""
        positive("batch_size", n)
        parts: list[np.ndarray] = []
        need = n
        while need > 0:
            if self._pos == self.n_train:
                self._order, self._pos = self.rng.permutation(self.n_train), 0
            take = self._order[self._pos:self._pos + need]
            self._pos += len(take)
            need -= len(take)
            parts.append(take)
        return self._preprocess(self._train[np.concatenate(parts)], self.rng)

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state, "order": torch.from_numpy(self._order.copy()),
                "pos": self._pos}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]
        self._order = np.asarray(state["order"], dtype=np.int64)
        self._pos = int(state["pos"])
        check(len(self._order) == self.n_train,
              f"checkpoint was saved with {len(self._order)} training images, this config has "
              f"{self.n_train} (dataset.n_train)")


class Digits(ImageDataset):
    """scikit-learn's bundled 8×8 handwritten digits (1797 images, grey levels 0–16), no download.

    The split is a permutation drawn from the fixed seed :data:`SPLIT_SEED` (independent of the
    run's seed): its last ``test_fraction`` (20%: 359 images) is the test set, the rest (1438)
    the training set. Shape ``(1, 8, 8)``, ``L = 17`` levels.
    """

    name = "digits"

    def __init__(self, seed: int = 0, dequantize: bool = True, transform: Literal[TRANSFORMS] = "none",
                 logit_lambda: LogitLambda = 0.05, n_train: Positive[int] | None = None,
                 n_test: Positive[int] | None = None, n_stats: Positive[int] | None = None,
                 test_fraction: Annotated[float, Interval(gt=0, lt=1)] = 0.2, zca_shrinkage: Positive[float] = 1e-4,
                 classes: Sequence[NonNegative[int]] | None = None,
                 class_weights: Sequence[Positive[float]] | None = None) -> None:
        from sklearn.datasets import load_digits

        check(0.0 < float(test_fraction) < 1.0,
              f"dataset.test_fraction must be in (0, 1), got {test_fraction}")
        bunch = load_digits()
        images = bunch.images.astype(np.uint8)  # (1797, 8, 8), values 0..16
        perm = np.random.default_rng(SPLIT_SEED).permutation(len(images))
        n_held = int(round(test_fraction * len(images)))
        train, test = images[perm[:-n_held]], images[perm[-n_held:]]
        super().__init__(train, test, levels=17, seed=seed, dequantize=dequantize,
                         transform=transform, logit_lambda=logit_lambda, n_train=n_train,
                         n_test=n_test, n_stats=n_stats, zca_shrinkage=zca_shrinkage,
                         train_labels=bunch.target[perm[:-n_held]],
                         test_labels=bunch.target[perm[-n_held:]], classes=classes,
                         class_weights=class_weights)


# ------------------------------------------------------------------------ MNIST-style IDX sets

class MNIST(ImageDataset):
    """MNIST digits (28×28, 256 grey levels) read from the standard IDX files in ``root``.

    ``root`` must hold ``train-images-idx3-ubyte`` and ``t10k-images-idx3-ubyte`` (or their
    ``.gz``), directly, under ``root/raw`` or under ``root/<Name>/raw`` (torchvision's layout).
    Labels come from ``train-labels-idx1-ubyte`` / ``t10k-labels-idx1-ubyte`` next to the image
    files when present (else :attr:`train_labels` is ``None``). With ``download=true`` the four standard files are fetched into ``root``
    as ``.gz`` when missing.

    Args:
        root: the data directory, used as given (``None``: ``$PDEBM_DATA/<default_subdir>``,
            else ``data/…``, then the :attr:`SYSTEM_DIRS`).
        download: fetch missing files from :attr:`MIRRORS` (needs network access).
        Other arguments: see :class:`ImageDataset`.
    """

    name = "mnist"
    title = "MNIST"
    torchvision_name = "MNIST"
    default_subdir = "mnist"
    FILES = {"train": "train-images-idx3-ubyte", "test": "t10k-images-idx3-ubyte"}
    LABEL_FILES = {"train": "train-labels-idx1-ubyte", "test": "t10k-labels-idx1-ubyte"}
    DOWNLOAD_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                      "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    MIRRORS: Sequence[str] = ("https://ossci-datasets.s3.amazonaws.com/mnist/",
                              "https://storage.googleapis.com/cvdf-datasets/mnist/",
                              "http://yann.lecun.com/exdb/mnist/")
    SYSTEM_DIRS: Sequence[str] = ()
    """Directories searched after ``root`` (a distribution package's install location)."""
    SYSTEM_HINT = ""
    """How to get the files system-wide, appended to the "not found" error."""

    def __init__(self, root: str | os.PathLike | None = None, seed: int = 0,
                 download: bool = False, dequantize: bool = True, transform: Literal[TRANSFORMS] = "none",
                 logit_lambda: LogitLambda = 0.05, n_train: Positive[int] | None = None,
                 n_test: Positive[int] | None = None, n_stats: Positive[int] | None = None,
                 zca_shrinkage: Positive[float] = 1e-4, classes: Sequence[NonNegative[int]] | None = None,
                 class_weights: Sequence[Positive[float]] | None = None) -> None:
        self.root, self.explicit_root = self.data_root(root)
        if download:
            self.download()
        train_path, test_path = self._find("train"), self._find("test")
        self.source = train_path.parent  # the directory read (the trainer says which)
        train, test = self._load(train_path), self._load(test_path)
        check(train.shape[1:] == test.shape[1:],
              f"dataset.root={self.root}: training images are {train.shape[1:]}, "
              f"test images {test.shape[1:]}")
        super().__init__(train, test, levels=256, seed=seed, dequantize=dequantize,
                         transform=transform, logit_lambda=logit_lambda, n_train=n_train,
                         n_test=n_test, n_stats=n_stats, zca_shrinkage=zca_shrinkage,
                         train_labels=self._load_labels(train_path, "train", len(train)),
                         test_labels=self._load_labels(test_path, "test", len(test)),
                         classes=classes, class_weights=class_weights)

    @classmethod
    def data_root(cls, root: str | os.PathLike | None) -> tuple[Path, bool]:
        """The data directory and whether the user named it: ``root`` as given (no fallback:
        a missing one is an error), else ``$PDEBM_DATA/<subdir>`` or ``data/<subdir>``, after
        which the :attr:`SYSTEM_DIRS` are searched."""
        if root is None or str(root).strip() == "":
            return Path(os.environ.get("PDEBM_DATA", "data")).expanduser().absolute() / \
                cls.default_subdir, False
        return Path(root).expanduser().absolute(), True

    def _dirs(self) -> list[Path]:
        return [self.root, self.root / "raw", self.root / self.torchvision_name / "raw"]

    def _find(self, split: str) -> Path:
        """The IDX file of a split, or a one-line ConfigError saying what to put where.

        ``root`` (and its ``raw`` layouts) first; the :attr:`SYSTEM_DIRS` only when ``root``
        holds neither split, so the two splits never come from different places."""
        system = () if self.explicit_root else self.SYSTEM_DIRS  # a named root: no fallback
        return find_idx(self.root, self._dirs(), self.FILES[split], self.title,
                        list(self.FILES.values()), system, self.SYSTEM_HINT)

    def _load(self, path: Path) -> np.ndarray:
        images = read_idx(path)
        check(images.ndim == 3 and images.dtype == np.uint8 and len(images) > 0,
              f"{path}: expected uint8 images of shape (N, H, W), got {images.dtype} "
              f"{images.shape}")
        return images

    def _load_labels(self, images: Path, split: str, n: int) -> np.ndarray | None:
        """The split's labels from the IDX label file beside its image file (``None`` if absent)."""
        name = self.LABEL_FILES[split]
        path = next((p for p in (images.parent / name, images.parent / f"{name}.gz")
                     if p.is_file()), None)
        if path is None:
            return None
        labels = read_idx(path)
        check(labels.shape == (n,), f"{path}: expected {n} labels for {images.name}, got shape "
              f"{labels.shape}")
        return labels

    def download(self) -> None:
        """Fetch the four standard ``.gz`` files into ``root`` (skipping files already there)."""
        download_idx(self.root, self.DOWNLOAD_FILES, self.MIRRORS)


class FashionMNIST(MNIST):
    """Fashion-MNIST (Zalando's 28×28 clothing images, 256 grey levels), same file layout as
    :class:`MNIST`. After ``root``, the files are looked for where Debian's package
    ``dataset-fashion-mnist`` installs them (:data:`FASHION_MNIST_SYSTEM_DIR`), so
    ``apt-get install dataset-fashion-mnist`` is enough to train offline."""

    name = "fashion_mnist"
    title = "Fashion-MNIST"
    torchvision_name = "FashionMNIST"
    default_subdir = "fashion_mnist"
    MIRRORS = ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",)
    SYSTEM_DIRS = (FASHION_MNIST_SYSTEM_DIR,)
    SYSTEM_HINT = '; or run "apt-get install dataset-fashion-mnist"'


def _as_nchw(images: np.ndarray) -> np.ndarray:
    """``(N, H, W)`` → ``(N, 1, H, W)``; ``(N, C, H, W)`` unchanged."""
    images = np.ascontiguousarray(images, dtype=np.uint8)
    return images[:, None] if images.ndim == 3 else images


def _labels(labels: np.ndarray | None, n_images: int, n: int | None) -> Tensor | None:
    """Labels as an int64 tensor aligned with the (first ``n``) images, or ``None``."""
    if labels is None:
        return None
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    check(len(labels) == n_images, f"{len(labels)} labels for {n_images} images")
    return torch.from_numpy(labels[:n] if n is not None else labels)


def class_subset(images: np.ndarray, labels: np.ndarray | None, classes: Sequence[int] | None,
                 weights: Sequence[float] | None, split: str = "training"
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The images of ``classes`` in the proportions ``weights`` (and their labels).

    Every class keeps ``floor(s·w_c)`` of its images with the largest ``s`` the rarest class
    (relative to its weight) allows, so the proportions are ``w_c/Σw`` up to one image per class;
    the images kept per class and their interleaved order come from the fixed seed
    :data:`SPLIT_SEED` (independent of the run's seed), so ``n_train``/``n_stats`` (first n)
    keep the proportions too. Without ``weights`` every image of the classes is kept."""
    check(classes is not None, "dataset.class_weights needs dataset.classes (one weight per class)")
    check(labels is not None, f"dataset.classes: this data set has no labels for its {split} "
          "images (MNIST-style sets need the *-labels-idx1-ubyte files beside the images)")
    classes = [int(c) for c in classes]
    check(len(classes) > 0 and len(set(classes)) == len(classes),
          f"dataset.classes must be a non-empty list of distinct labels, got {classes}")
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    present = set(np.unique(labels).tolist())
    missing = [c for c in classes if c not in present]
    check(not missing, f"dataset.classes: no {split} images of class(es) {missing} "
          f"(labels are {sorted(present)})")
    rng = np.random.default_rng(SPLIT_SEED)
    members = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
    if weights is not None:
        weights = [float(w) for w in weights]
        check(len(weights) == len(classes),
              f"dataset.class_weights needs one weight per class ({len(classes)}), got {weights}")
        check(all(w > 0 for w in weights), f"dataset.class_weights must be positive, got {weights}")
        scale = min(len(m) / w for m, w in zip(members, weights))
        members = [m[:int(math.floor(scale * w + 1e-9))] for m, w in zip(members, weights)]
    idx = rng.permutation(np.concatenate(members))
    return images[idx], labels[idx]


def _limit(images: np.ndarray, n: int | None, key: str, what: str) -> np.ndarray:
    """The first ``n`` images, or all of them for ``None``."""
    if n is None:
        return images
    positive(f"dataset.{key}", n)
    check(n <= len(images), f"dataset.{key}={n} exceeds the {len(images)} {what} images")
    return images[:n]


__all__ = ["ImageDataset", "Digits", "MNIST", "FashionMNIST", "read_idx"]

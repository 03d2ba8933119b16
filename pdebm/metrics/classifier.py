"""A small image classifier trained on a data set's labels: the feature network of FID and KID
(:mod:`pdebm.metrics.fid`).

Inception weights cannot be downloaded here and would be wrong for 8×8 or 28×28 grey images;
the usual practice for MNIST-like data is FID in the features of a classifier trained on the data
set itself. :func:`classifier_for` trains one (a few seconds on the 8×8 digits, about a minute
on 20 000 Fashion-MNIST images on one thread) and caches it on disk under a *content key*: a hash
of the training images, their labels and every training setting. The same data and settings give
the same key, so the network is trained once per machine and every run, sweep and script scores
samples with the same features. Training is deterministic (fixed seeds; torch's and numpy's
global generators are left untouched), so two machines with the same library versions agree.

The classifier sees pixel-space images ``u ∈ [0, 1]`` of shape ``(N, C, H, W)`` (what
``dataset.to_images`` returns), trained on freshly dequantised training images each epoch.
Its features are the ``n_features`` ReLU activations before the last linear layer, scaled by
one number so that their root-mean-square over the training images is 1.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from pdebm.errors import check
from pdebm.io import atomic_write

logger = logging.getLogger("pdebm.classifier")

VERSION = 2
"""Bump when the architecture or the training loop changes: old cache entries are then ignored."""
CACHE_ENV = "PDEBM_CACHE"
"""Environment variable naming the cache directory (default ``~/.cache/pdebm``)."""


@dataclass(frozen=True)
class ClassifierConfig:
    """How the classifier is built and trained (all of it enters the content key)."""

    width: int = 32           # channels of the first conv layer (then 2×, 2×)
    n_features: int = 64      # penultimate features: the FID/KID feature space
    epochs: int = 30          # passes over the training images (capped by max_steps)
    max_steps: int = 1500     # at most this many optimizer steps in all
    max_train: int = 20000    # train on at most this many (first) training images
    batch_size: int = 128     # images per step
    lr: float = 2e-3          # Adam learning rate
    seed: int = 0             # initialisation, order and dequantisation noise


class Classifier(nn.Module):
    """Three 3×3 convolutions (stride 1, 2, 2), 2×2 average pooling, a ReLU feature layer and a
    linear read-out. ``features(u)`` is what FID sees, ``forward(u)`` the class logits."""

    def __init__(self, channels: int, n_classes: int, width: int = 32, n_features: int = 64) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(),
            nn.Linear(8 * width, n_features), nn.ReLU())
        self.head = nn.Linear(n_features, n_classes)
        self.num_features = n_features  # read by torchmetrics (no dummy forward pass)
        # 1 / RMS of the features over the training images, set after training: features of
        # unit scale keep FID in readable units and KID's cubic kernel near its usual range
        self.register_buffer("feature_scale", torch.ones(()))

    def _body(self, u: Tensor) -> Tensor:
        return self.body((u.float() - 0.5) / 0.5)

    def features(self, u: Tensor) -> Tensor:
        """The FID/KID features of pixel-space images: penultimate ReLU activations, scaled."""
        return self._body(u) * self.feature_scale

    def forward(self, u: Tensor) -> Tensor:
        return self.head(self._body(u))


@dataclass
class TrainedClassifier:
    """The network (in eval mode, parameters frozen), its held-out accuracy and its cache key."""

    net: Classifier
    test_accuracy: float
    key: str
    path: Path | None


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "pdebm").expanduser()


def content_key(name: str, train: np.ndarray, labels: np.ndarray, levels: int,
                config: ClassifierConfig) -> str:
    """Hash of everything the trained weights depend on."""
    h = hashlib.sha256()
    h.update(json.dumps({"version": VERSION, "name": name, "levels": int(levels),
                         "shape": list(train.shape), "torch": torch.__version__.split("+")[0],
                         **asdict(config)}, sort_keys=True).encode())
    h.update(np.ascontiguousarray(train, dtype=np.uint8).tobytes())
    h.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    return h.hexdigest()[:20]


def dequantise(v: np.ndarray, levels: int, rng: np.random.Generator) -> Tensor:
    """Grey levels → pixel space ``(v + U)/L`` (uniform dequantisation, as the data sets do)."""
    return torch.from_numpy((v.astype(np.float32) + rng.random(v.shape, dtype=np.float32)) / levels)


def train_classifier(train: np.ndarray, labels: np.ndarray, levels: int,
                     config: ClassifierConfig = ClassifierConfig()) -> Classifier:
    """Train the classifier on uint8 grey levels ``(N, C, H, W)`` with integer labels.

    Deterministic: the initialisation runs under a forked torch generator seeded with
    ``config.seed``, order and noise come from a numpy Generator of the same seed."""
    check(train.ndim == 4 and len(train) == len(labels) and len(train) > 0,
          f"classifier: {len(train)} training images of shape {train.shape[1:]} with "
          f"{len(labels)} labels")
    train, labels = train[: config.max_train], np.asarray(labels[: config.max_train], np.int64)
    n_classes = int(labels.max()) + 1
    y_all = torch.from_numpy(labels)
    rng = np.random.default_rng(config.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        net = Classifier(train.shape[1], n_classes, config.width, config.n_features)
    opt = torch.optim.Adam(net.parameters(), lr=config.lr)
    steps_per_epoch = -(-len(train) // config.batch_size)
    total = min(config.epochs * steps_per_epoch, config.max_steps)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, total)
    step = 0
    net.train()
    while step < total:
        order = rng.permutation(len(train))
        for i in range(0, len(train), config.batch_size):
            if step == total:
                break
            idx = order[i:i + config.batch_size]
            u = dequantise(train[idx], levels, rng)
            loss = nn.functional.cross_entropy(net(u), y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
    net = freeze(net)
    with torch.no_grad():
        u = dequantise(train[: min(len(train), 4096)], levels, rng)
        rms = torch.cat([net._body(c) for c in u.split(1024)]).pow(2).mean().sqrt()
        net.feature_scale.fill_(1.0 / float(rms.clamp_min(1e-12)))
    return net


def freeze(net: Classifier) -> Classifier:
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


@torch.no_grad()
def accuracy(net: Classifier, u: Tensor, labels: Tensor, chunk: int = 2048) -> float:
    """Fraction of pixel-space images ``u`` classified as ``labels``."""
    pred = torch.cat([net(u[i:i + chunk]).argmax(1) for i in range(0, len(u), chunk)])
    return float((pred.cpu() == labels.cpu()).double().mean())


def _test_accuracy(net: Classifier, dataset) -> float:
    """Accuracy on the data set's (fixed, dequantised) held-out images; NaN without labels."""
    if getattr(dataset, "test_labels", None) is None:
        return float("nan")
    return accuracy(net, dataset.to_images(dataset.test), dataset.test_labels)


def require_labels(dataset):
    """The training labels of an image data set, or one ConfigError line saying why there is no
    classifier (checked when a run is built, before the classifier is trained at its first use)."""
    check(getattr(dataset, "is_image", False), "FID needs an image data set")
    labels = getattr(dataset, "train_labels", None)
    check(labels is not None, f"dataset {dataset.name}: no labels found, so there is no classifier "
          "for FID/KID (MNIST-style sets need train-labels-idx1-ubyte beside the images; or set "
          "eval.fid=false)")
    return labels


def classifier_for(dataset, config: ClassifierConfig = ClassifierConfig(),
                   cache: bool = True) -> TrainedClassifier:
    """The (cached) classifier of an image data set with labels (``dataset.train_labels``).

    Looks for ``<cache dir>/classifier-<name>-<key>.pt``; trains and writes it (atomically) when
    absent. The test accuracy on ``dataset.test`` is measured every time (a forward pass)."""
    labels = require_labels(dataset)
    train = dataset.train_grey_levels
    key = content_key(dataset.name, train, labels.numpy(), dataset.levels, config)
    path = cache_dir() / f"classifier-{dataset.name}-{key}.pt"
    if cache and path.is_file():
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            net = Classifier(train.shape[1], int(state["n_classes"]), config.width,
                             config.n_features)
            net.load_state_dict(state["weights"])
            return TrainedClassifier(freeze(net), _test_accuracy(net, dataset), key, path)
        except (OSError, RuntimeError, KeyError, ValueError) as e:
            logger.warning("cached classifier %s unreadable (%s): training it again", path, e)
    logger.info("training the FID classifier for %s (%d images)", dataset.name,
                min(len(train), config.max_train))
    with torch.enable_grad():  # also when called from an evaluation under no_grad
        net = train_classifier(train, labels.numpy(), dataset.levels, config)
    acc = _test_accuracy(net, dataset)
    if cache:
        buf = io.BytesIO()
        torch.save({"weights": net.state_dict(), "n_classes": net.head.out_features,
                    "key": key, "config": asdict(config)}, buf)
        try:
            atomic_write(path, lambda f: f.write(buf.getvalue()))
        except OSError as e:  # a read-only home: train again next time, but say so
            logger.warning("cannot cache the classifier in %s (%s; set %s)", path.parent, e,
                           CACHE_ENV)
            path = None
    return TrainedClassifier(net, acc, key, path if cache else None)


__all__ = ["Classifier", "ClassifierConfig", "TrainedClassifier", "classifier_for",
           "train_classifier", "accuracy", "content_key", "cache_dir"]

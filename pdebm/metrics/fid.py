"""FID and KID of image samples in the features of the data set's own classifier
(:mod:`pdebm.metrics.classifier`), computed by torchmetrics.

torchmetrics' :class:`~torchmetrics.image.fid.FrechetInceptionDistance` and
:class:`~torchmetrics.image.kid.KernelInceptionDistance` take any ``nn.Module`` as ``feature``:
here :class:`ClassifierFeatures`, the classifier's penultimate ReLU layer (64 numbers per image),
so no Inception network is built and nothing is downloaded. :class:`ImageScore` holds both
metrics with the *reference* features (held-out images) computed once, and scores a batch of
samples against them.

Beside them, ``confident``: the fraction of samples the classifier labels with a top-class
probability of at least :data:`CONFIDENT` (0.9), a number for "reads as one of the classes".
Read it against the reference rows of ``scripts/image_references.py``: a classifier is confident
on many images no person would read (on the digits, on a third of uniform-noise images).

Both FID and KID are biased by the sample size (FID strongly; KID's estimate is unbiased but
noisy): compare numbers computed with the same number of samples, next to the reference rows
(held-out against training images: the floor).
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from pdebm.errors import check
from pdebm.metrics.classifier import Classifier


CONFIDENT = 0.9
"""Top-class softmax probability at or above which a sample counts as ``confident``."""


class ClassifierFeatures(nn.Module):
    """The feature extractor torchmetrics calls: pixel-space images ``(N, C, H, W)`` in
    ``[0, 1]`` → the classifier's ``(N, n_features)`` penultimate activations."""

    def __init__(self, net: Classifier) -> None:
        super().__init__()
        self.net = net
        self.num_features = net.num_features

    @torch.no_grad()
    def forward(self, u: Tensor) -> Tensor:
        return self.net.features(u.float())


class ImageScore:
    """FID and KID of samples against fixed reference images.

    Args:
        net: the data set's classifier (its features are the metric space).
        reference: pixel-space reference images ``(M, C, H, W)`` (the held-out images).
        kid_subsets, kid_subset_size: KID averages the polynomial-kernel MMD² over this many
            random subsets of this size (capped by the smaller sample).
        seed: KID's subsets are drawn under a forked torch generator with this seed (plus the
            caller's ``salt``), so scoring never moves the training run's random stream.
    """

    def __init__(self, net: Classifier, reference: Tensor, kid_subsets: int = 50,
                 kid_subset_size: int = 100, seed: int = 0) -> None:
        check(len(reference) >= 2, "FID needs at least 2 reference images")
        self.features = ClassifierFeatures(net)
        self.kid_subsets, self.kid_subset_size, self.seed = kid_subsets, kid_subset_size, seed
        self.n_reference = len(reference)
        self.fid = FrechetInceptionDistance(feature=self.features, reset_real_features=False,
                                            normalize=True)
        with warnings.catch_warnings():  # "will save all extracted features": 64 floats each here
            warnings.simplefilter("ignore", UserWarning)
            self.kid = KernelInceptionDistance(
                feature=self.features, reset_real_features=False, normalize=True,
                subsets=kid_subsets, subset_size=min(kid_subset_size, len(reference)))
        for chunk in reference.cpu().split(2048):
            self.fid.update(chunk, real=True)
            self.kid.update(chunk, real=True)

    def __call__(self, samples: Tensor, salt: int = 0) -> dict[str, float]:
        """``{"fid", "kid", "kid_std", "confident"}`` of pixel-space ``samples`` (at least 2):
        FID and KID against the reference images, and the fraction of samples the classifier
        labels with top-class probability ≥ :data:`CONFIDENT`."""
        check(len(samples) >= 2, f"FID needs at least 2 samples, got {len(samples)}")
        samples = samples.detach().cpu().float().clamp(0.0, 1.0)
        self.fid.reset()
        self.kid.reset()
        self.kid.subset_size = min(self.kid_subset_size, self.n_reference, len(samples))
        for chunk in samples.split(2048):
            self.fid.update(chunk, real=False)
            self.kid.update(chunk, real=False)
        fid = float(self.fid.compute())
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed * 1_000_003 + salt)
            kid, kid_std = self.kid.compute()
        return {"fid": fid, "kid": float(kid), "kid_std": float(kid_std),
                "confident": confident_fraction(self.features.net, samples)}


def confident_fraction(net: Classifier, images: Tensor) -> float:
    """The fraction of pixel-space ``images`` that ``net`` labels with top-class softmax
    probability ≥ :data:`CONFIDENT`."""
    images = images.detach().cpu().float().clamp(0.0, 1.0)
    with torch.no_grad():
        top = torch.cat([torch.softmax(net(c), 1).amax(1) for c in images.split(2048)])
    return float((top >= CONFIDENT).double().mean())


def image_score_for(dataset, reference: Tensor | None = None, n_reference: int | None = None,
                    seed: int = 0, **kwargs) -> ImageScore:
    """An :class:`ImageScore` with the data set's cached classifier; the reference is the
    held-out set (its first ``n_reference`` images) unless ``reference`` is given."""
    from pdebm.metrics.classifier import classifier_for

    net = classifier_for(dataset).net
    if reference is None:
        x = dataset.test if n_reference is None else dataset.test[:n_reference]
        reference = dataset.to_images(x)
    return ImageScore(net, reference, seed=seed, **kwargs)


def weighted_pick(log_w: Tensor | None, n: int, generator: torch.Generator) -> Tensor | None:
    """Indices of ``n`` draws with probabilities ``softmax(log_w)`` (multinomial resampling), so
    that a weighted population is scored as the distribution it represents; ``None`` for
    unweighted populations (score them as they are)."""
    if log_w is None:
        return None
    p = torch.softmax(log_w.detach().double().cpu(), 0)
    return torch.multinomial(p, n, replacement=True, generator=generator)



__all__ = ["CONFIDENT", "ClassifierFeatures", "ImageScore", "confident_fraction", "image_score_for",
           "weighted_pick"]

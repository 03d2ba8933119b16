"""Exact Gaussian reference log-likelihoods for the image results tables.

Fits a diagonal and a full-covariance Gaussian (maximum likelihood, ``Σ + s·I``) to the training
images in pixel space ``[0, 1]`` (dequantised with the dataset's fixed statistics noise, as the
base and AIS's start are) and reports their exact mean log-likelihood on the dataset's test
images (the same tensor, dequantisation ``(v + U)/L`` and noise seed as training and
``pdebm eval``), in nats/image and bits/dim (``(−log p(u) + D·log L)/(D·ln 2)``).

    python scripts/gaussian_baselines.py                     # digits and Fashion-MNIST
    python scripts/gaussian_baselines.py --datasets digits --shrinkage 1e-4 --json out.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import torch

from pdebm.data.images import Digits, FashionMNIST, ImageDataset
from pdebm.errors import ConfigError
from pdebm.metrics.ais import fit_gaussian

DATASETS = {"digits": Digits, "fashion_mnist": FashionMNIST}


@torch.no_grad()
def baselines(dataset: ImageDataset, shrinkage: float,
              diag_shrinkage: float = 0.0) -> dict[str, dict[str, float]]:
    """``{"diagonal": {...}, "full": {...}}`` with nats/image and bits/dim on the test set; the
    diagonal fit is unshrunk by default (dequantised pixels always have positive variance)."""
    x_train = dataset.statistics_images()
    out = {}
    for name, cov in (("diagonal", "diag"), ("full", "full")):
        g = fit_gaussian(x_train.double(), cov, shrinkage if cov == "full" else diag_shrinkage)
        g = g.double()
        ll = float((g.log_prob(dataset.test.double())
                    + dataset.log_det_jacobian(dataset.test.double())).mean())
        d = dataset.n_dims
        out[name] = {"log_likelihood": ll,
                     "bits_per_dim": (-ll + d * math.log(dataset.levels)) / (d * math.log(2))}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS),
                        help="image data sets (default: all)")
    parser.add_argument("--shrinkage", type=float, default=1e-4,
                        help="s added to the covariance's diagonal (default 1e-4)")
    parser.add_argument("--json", default=None, help="also write the numbers to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    results = {}
    try:
        for name in args.datasets:
            ds = DATASETS[name](transform="none", dequantize=True)
            results[name] = {"n_train": ds.n_train, "n_test": len(ds.test),
                             **baselines(ds, args.shrinkage)}
    except ConfigError as e:
        print(f"pdebm: error: {e}", file=sys.stderr)
        return 2
    print("| data set | Gaussian | log-likelihood (nats/image) | bits/dim |")
    print("|---|---|---|---|")
    for name, r in results.items():
        for kind in ("diagonal", "full"):
            print(f"| {name} | {kind} (fitted, exact) | {r[kind]['log_likelihood']:.2f} | "
                  f"{r[kind]['bits_per_dim']:.3f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"shrinkage": args.shrinkage, **results}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Exact Gaussian and Gaussian-mixture reference log-likelihoods for the image results tables.

Fits a diagonal and a full-covariance Gaussian (maximum likelihood, ``Σ + s·I``) and
scikit-learn's ``GaussianMixture(covariance_type="full")`` to the training images in pixel space
``[0, 1]`` (dequantised with the dataset's fixed statistics noise, as the base and AIS's start
are) and reports their exact mean log-likelihood on the dataset's test images (the same tensor,
dequantisation ``(v + U)/L`` and noise seed as training and ``pdebm eval``), in nats/image and
bits/dim (``(−log p(u) + D·log L)/(D·ln 2)``).

The mixture's number of components ``k`` and ``reg_covar`` are chosen on a held-out fifth of the
training images (the last fifth; fitted on the other four fifths), then the chosen mixture is
refitted on all training images. ``--n-train`` caps the training images (the first n; Fashion-MNIST
uses 10 000, as ``fashion_quick``'s statistics do).

    python scripts/gaussian_baselines.py                     # digits and Fashion-MNIST
    python scripts/gaussian_baselines.py --datasets digits --ks 1 2 3 5 8 --json out.json
    python scripts/gaussian_baselines.py --datasets digits --transform zca --ks 3 5 8 12   # the base of experiment=digits
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import numpy as np
import torch

from pdebm.command import one_line_errors
from pdebm.data.images import Digits, FashionMNIST, ImageDataset
from pdebm.errors import check
from pdebm.metrics.ais import fit_gaussian

DATASETS = {"digits": Digits, "fashion_mnist": FashionMNIST}
DEFAULT_KS = {"digits": [1, 2, 3, 5, 8, 12, 20], "fashion_mnist": [1, 2, 5, 10]}
DEFAULT_REGS = {"digits": [1e-4, 1e-3, 1e-2], "fashion_mnist": [1e-3, 1e-2]}
ZCA_REGS = [0.01, 0.03, 0.1, 0.3]
DEFAULT_N_TRAIN = {"digits": None, "fashion_mnist": 10000}


def bits_per_dim(ll: float, dataset: ImageDataset) -> float:
    d = dataset.n_dims
    return (-ll + d * math.log(dataset.levels)) / (d * math.log(2))


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
        out[name] = {"log_likelihood": ll, "bits_per_dim": bits_per_dim(ll, dataset)}
    return out


def fit_mixture(x: np.ndarray, k: int, reg: float, seed: int = 0):
    """scikit-learn's full-covariance Gaussian mixture (k-means initialisation, fixed seed)."""
    from sklearn.mixture import GaussianMixture

    return GaussianMixture(n_components=k, covariance_type="full", reg_covar=reg,
                           random_state=seed, max_iter=200).fit(x)


def mixture(dataset: ImageDataset, ks: list[int], regs: list[float], seed: int = 0,
            log=print) -> dict:
    """Choose ``k`` and ``reg_covar`` on the held-out last fifth of the training images, refit on
    all of them; the chosen mixture's exact test log-likelihood and the validation table."""
    x = dataset.statistics_images().flatten(1).double().numpy()
    n_val = len(x) // 5
    fit_x, val_x = x[:-n_val], x[-n_val:]
    jac = float(dataset.log_det_jacobian(torch.from_numpy(val_x)).double().mean())
    table = []
    for reg in regs:
        for k in ks:
            t0 = time.perf_counter()
            g = fit_mixture(fit_x, k, reg, seed)
            val = float(g.score(val_x)) + jac  # nats/image in pixel space
            table.append({"k": k, "reg_covar": reg, "val_log_likelihood": val,
                          "fit_s": time.perf_counter() - t0})
            log(f"  k={k} reg={reg:g}: held-out {val:.2f} nats/image ({table[-1]['fit_s']:.1f} s)")
    best = max(table, key=lambda r: r["val_log_likelihood"])
    g = fit_mixture(x, best["k"], best["reg_covar"], seed)
    test = dataset.test.flatten(1).double().numpy()
    ll = float(np.mean(g.score_samples(test))
               + dataset.log_det_jacobian(dataset.test.double()).mean())
    return {"k": best["k"], "reg_covar": best["reg_covar"], "log_likelihood": ll,
            "bits_per_dim": bits_per_dim(ll, dataset), "validation": table}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS),
                        help="image data sets (default: all)")
    parser.add_argument("--shrinkage", type=float, default=1e-4,
                        help="s added to the single Gaussians' covariance diagonal (default 1e-4)")
    parser.add_argument("--ks", type=int, nargs="+", default=None,
                        help="mixture sizes tried (default: digits 1 2 3 5 8 12 20, "
                             "Fashion-MNIST 1 2 5 10)")
    parser.add_argument("--regs", type=float, nargs="+", default=None,
                        help="reg_covar values tried (default: digits 1e-4 1e-3 1e-2, "
                             "Fashion-MNIST 1e-3 1e-2)")
    parser.add_argument("--n-train", type=int, default=None,
                        help="use the first n training images (default: digits all 1438, "
                             "Fashion-MNIST 10000)")
    parser.add_argument("--transform", default="none", choices=["none", "zca"],
                        help="space the mixtures are fitted in: none (pixels, default) or zca "
                             "(the whitened space of the zca presets, where experiment=digits "
                             "fits its base; reg_covar is then in whitened units)")
    parser.add_argument("--no-mixture", action="store_true", help="only the single Gaussians")
    parser.add_argument("--json", default=None, help="also write the numbers to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    results = {}
    with one_line_errors():  # bad flags and bad data alike: one line, exit 2, before any work
        check(args.ks is None or min(args.ks) >= 1, "--ks must be positive integers")
        check(args.regs is None or min(args.regs) > 0, "--regs must be positive")
        for name in args.datasets:
            n_train = args.n_train if args.n_train is not None else DEFAULT_N_TRAIN[name]
            ds = DATASETS[name](transform="none", dequantize=True, n_train=n_train)
            results[name] = {"n_train": ds.n_train, "n_test": len(ds.test),
                             **baselines(ds, args.shrinkage)}
            if args.transform != "none":  # log-likelihoods stay in pixel space (exact Jacobian)
                ds = DATASETS[name](transform=args.transform, dequantize=True, n_train=n_train)
            if not args.no_mixture:
                print(f"{name}: Gaussian mixtures on {ds.n_train} training images "
                      f"(held-out fifth)", file=sys.stderr)
                results[name]["mixture"] = mixture(
                    ds, args.ks or DEFAULT_KS[name],
                    args.regs or (DEFAULT_REGS[name] if args.transform == "none" else ZCA_REGS),
                    log=lambda s: print(s, file=sys.stderr))
    print("| data set | training images | model | log-likelihood (nats/image) | bits/dim |")
    print("|---|---|---|---|---|")
    for name, r in results.items():
        for kind in ("diagonal", "full"):
            print(f"| {name} | {r['n_train']} | {kind} Gaussian (fitted, exact) | "
                  f"{r[kind]['log_likelihood']:.2f} | {r[kind]['bits_per_dim']:.3f} |")
        if "mixture" in r:
            m = r["mixture"]
            print(f"| {name} | {r['n_train']} | Gaussian mixture, full covariance, k = {m['k']}, "
                  f"reg_covar {m['reg_covar']:g} ({args.transform} space; chosen on a held-out "
                  f"fifth) | "
                  f"{m['log_likelihood']:.2f} | {m['bits_per_dim']:.3f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"shrinkage": args.shrinkage, **results}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

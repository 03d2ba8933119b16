"""FID/KID reference rows for the image tables: what the numbers of a model's samples are read
against, in the same classifier features (:mod:`pdebm.metrics.fid`) and with the same sample
size as the model's row.

Rows, each over ``--repeats`` independent draws of ``n`` images (mean ± sd):

- ``training images`` (the floor): ``n`` dequantised training images against the held-out images;
- ``full-covariance Gaussian``: samples of the Gaussian fitted to the training images (pixel
  space, ``Σ + s·I``; the base and AIS start of the digits_conv / fashion_quick presets);
- ``Gaussian mixture``: samples of a 5-component full-covariance scikit-learn GaussianMixture
  fitted to the dequantised training images (digits: all 1438, ``reg_covar`` 1e-4;
  Fashion-MNIST: the first 10 000, ``reg_covar`` 1e-3);
- ``uniform noise``: the ceiling.

Each row also gives ``confident``: the fraction of the ``n`` images the classifier labels with
top-class probability ≥ 0.9 (:data:`pdebm.metrics.fid.CONFIDENT`), the yardstick for a model's
"reads as one of the classes"; a last line gives it for all the held-out images.

Samples are clipped to ``[0, 1]`` (the pixel range) before scoring, as model samples are.

    python scripts/image_references.py --datasets digits --n 100 128
    python scripts/image_references.py --datasets fashion_mnist --n 64 100 --json refs.json
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from pdebm.command import one_line_errors
from pdebm.data.images import Digits, FashionMNIST, ImageDataset
from pdebm.errors import check
from pdebm.metrics.ais import fit_gaussian
from pdebm.metrics.fid import confident_fraction, image_score_for

DATASETS = {"digits": Digits, "fashion_mnist": FashionMNIST}
GMM = {"digits": {"reg_covar": 1e-4, "n_fit": None}, "fashion_mnist": {"reg_covar": 1e-3, "n_fit": 10000}}


def samplers(dataset: ImageDataset, name: str, components: int, shrinkage: float, seed: int):
    """``{row: draw(n, generator) -> pixel-space images}``."""
    from sklearn.mixture import GaussianMixture

    u_train = dataset.statistics_images()  # transform=none: pixel space, fixed statistics noise
    shape = u_train.shape[1:]
    gauss = fit_gaussian(u_train.double(), "full", shrinkage).double()
    n_fit = GMM[name]["n_fit"] or len(u_train)
    gmm = GaussianMixture(components, covariance_type="full", reg_covar=GMM[name]["reg_covar"],
                          random_state=seed, max_iter=200)
    gmm.fit(u_train[:n_fit].flatten(1).double().numpy())
    counter = iter(range(10**9))

    def training(n, g):
        return u_train[torch.randperm(len(u_train), generator=g)[:n]]

    def gaussian(n, g):
        return gauss.sample(n, generator=g).float()

    def mixture(n, g):
        gmm.random_state = seed + 1 + next(counter)
        x, _ = gmm.sample(n)
        x = x[np.random.default_rng(int(torch.randint(2**31, (1,), generator=g))).permutation(n)]
        return torch.from_numpy(x).float().reshape(n, *shape)

    def noise(n, g):
        return torch.rand((n, *shape), generator=g)

    return {"training images (floor)": training, "full-covariance Gaussian": gaussian,
            f"Gaussian mixture ({components} full)": mixture, "uniform noise": noise}


def references(name: str, sizes: list[int], repeats: int, components: int, shrinkage: float,
               seed: int) -> dict:
    dataset = DATASETS[name](transform="none", dequantize=True,
                             **({"n_stats": GMM[name]["n_fit"]} if GMM[name]["n_fit"] else {}))
    score = image_score_for(dataset, n_reference=1000, seed=seed)
    from pdebm.metrics.classifier import classifier_for

    cached = classifier_for(dataset)
    held_out = dataset.to_images(dataset.test)
    out = {"classifier_test_accuracy": cached.test_accuracy, "n_reference": score.n_reference,
           "n_held_out": len(held_out),
           "held_out_confident": confident_fraction(cached.net, held_out),
           "rows": {}}
    for row, draw in samplers(dataset, name, components, shrinkage, seed).items():
        out["rows"][row] = {}
        for n in sizes:
            g = torch.Generator().manual_seed(seed)
            vals = [score(draw(n, g).clamp(0, 1), salt=r) for r in range(repeats)]
            fid = np.array([v["fid"] for v in vals])
            kid = np.array([v["kid"] for v in vals])
            conf = np.array([v["confident"] for v in vals])
            sd = (lambda a: a.std(ddof=1)) if repeats > 1 else (lambda a: 0.0)
            out["rows"][row][n] = {"fid": fid.mean(), "fid_sd": sd(fid), "kid": kid.mean(),
                                   "kid_sd": sd(kid), "confident": conf.mean(),
                                   "confident_sd": sd(conf)}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--n", nargs="+", type=int, default=[100],
                        help="sample sizes (match the model row's: AIS chains, sample n, batch)")
    parser.add_argument("--repeats", type=int, default=5, help="independent draws per row")
    parser.add_argument("--components", type=int, default=5, help="Gaussian mixture components")
    parser.add_argument("--shrinkage", type=float, default=1e-4, help="s of the Gaussian's Σ + s·I")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the numbers to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    results = {}
    with one_line_errors():  # bad flags and bad data alike: one line, exit 2, before any work
        check(min(args.n) >= 2 and args.repeats >= 1 and args.components >= 1,
              "--n must be >= 2, --repeats and --components >= 1")
        for name in args.datasets:
            results[name] = res = references(name, args.n, args.repeats, args.components,
                                             args.shrinkage, args.seed)
            print(f"\n{name}: FID / KID against {res['n_reference']} held-out images "
                  f"(classifier test accuracy {res['classifier_test_accuracy']:.3f}; mean ± sd "
                  f"over {args.repeats} draws)")
            print("| reference | " + " | ".join(f"FID n={n} | KID n={n} | confident n={n}"
                                                for n in args.n) + " |")
            print("|---|" + "---|---|---|" * len(args.n))
            for row, by_n in res["rows"].items():
                cells = " | ".join(f"{v['fid']:.3f} ± {v['fid_sd']:.3f} | {v['kid']:.3f} ± "
                                   f"{v['kid_sd']:.3f} | {v['confident']:.3f} ± "
                                   f"{v['confident_sd']:.3f}" for v in by_n.values())
                print(f"| {row} | {cells} |")
            print(f"held-out images (all {res['n_held_out']}): confident "
                  f"{res['held_out_confident']:.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2, default=float)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

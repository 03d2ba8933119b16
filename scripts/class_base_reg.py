"""Choose ``energy.base_reg`` for a class-fitted mixture base (``energy.base_fit=classes``).

The base of ``experiment=digits_modes_mixture`` is one full-covariance Gaussian per class, each
its class's mean and covariance ``+ reg·I`` in the model space, weighted equally. For each reg this
refits the preset's own base (``MixtureBase``) to the first four fifths of every class's training
images (the preset's data, dequantised with the statistics noise, as the base is) and prints the
mean log-likelihood of the held-out last fifth, in the model space (ZCA: the Jacobian is one constant, so the ranking is that of
nats/image). The test images are not used. The best reg is what the preset sets::

    python scripts/class_base_reg.py --preset digits_modes_mixture --regs 0.03 0.1 0.2 0.3 0.5 1

Exact (no sampling): the numbers depend only on the data and the preset.
"""
from __future__ import annotations

import argparse
import sys

import torch

from pdebm.build import build_data_and_energy
from pdebm.command import one_line_errors
from pdebm.config import compose_config
from pdebm.energy.base import MixtureBase
from pdebm.errors import check


def table(preset: str, regs: list[float]) -> list[tuple[float, float]]:
    """(reg, mean held-out log-likelihood in model space) for each reg: the preset's own base
    (``MixtureBase``, ``fit=classes``, its component weights) refitted at every reg."""
    cfg = compose_config([f"experiment={preset}"])
    check(cfg.energy.get("base_fit") == "classes",
          f"--preset {preset} does not fit its base to the classes (energy.base_fit=classes)")
    ds, energy = build_data_and_energy(cfg)
    x = ds.statistics_images()
    y = torch.as_tensor(ds.train_labels[:len(x)])
    held = torch.zeros(len(x), dtype=torch.bool)
    for c in y.unique():  # the last fifth of each class
        idx = (y == c).nonzero().flatten()
        held[idx[len(idx) - len(idx) // 5:]] = True
    rows = []
    for reg in regs:
        base = MixtureBase(x.shape[1:], energy.base.n_components, reg_covar=reg, fit="classes",
                           weights=energy.base.weights).fit(x[~held], y[~held])
        rows.append((reg, float(base.log_prob(x[held]).double().mean())))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="digits_modes_mixture",
                   help="experiment preset with energy.base_fit=classes")
    p.add_argument("--regs", type=float, nargs="+", default=[0.03, 0.1, 0.2, 0.3, 0.5, 1.0],
                   help="energy.base_reg values to compare (whitened units)")
    args = p.parse_args(argv)
    with one_line_errors():
        check(all(r > 0 for r in args.regs), "--regs must all be > 0")
        rows = table(args.preset, args.regs)
    best = max(rows, key=lambda r: r[1])[0]
    print("| base_reg | held-out fifth's log-likelihood (model space, nats/image) |")
    print("|---|---|")
    for reg, ll in rows:
        print(f"| {reg:g}{' (best)' if reg == best else ''} | {ll:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

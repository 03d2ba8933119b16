#!/usr/bin/env python
"""Training's own share of an image model's likelihood: trained model minus its initial model,
paired on the same test images, with a paired standard error.

For each run directory (evaluated by ``pdebm eval``, so its ``ais.json`` holds log Z), the
per-image test log-likelihoods ``log p_θ(u_i) = −E_θ(x_i) − log Z + log|∂x/∂u|`` of the trained
model are paired with those of the run's *initial* model: the energy rebuilt from the run's own
config with its zero-initialised last layer, i.e. exactly its normalised base (log Z₀ = 0: a fixed
Gaussian or the mixture fitted by scikit-learn with the same seed). The gain is the mean of the
differences ``d_i``; its standard error ``√(var(d)/n + se(log Z)²)`` combines the test images'
spread with AIS's own error.

    python scripts/paired_gain.py outputs/train/<date>/<run> [more runs ...]
    python scripts/paired_gain.py <run>/ais-2.json     # a later evaluation's results file
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402


@torch.no_grad()
def paired_gain(path: Path) -> dict:
    from pdebm import checkpoint
    from pdebm.build import build_data_and_energy
    from pdebm.errors import check
    from pdebm.eval import rebuild

    # a run directory (its first evaluation, ais.json) or one evaluation's results file
    run, ais_path = (path.parent, path) if path.suffix == ".json" else (path, path / "ais.json")
    check(ais_path.is_file(), f"{ais_path}: no such AIS results file (run `pdebm eval run={run}` "
          "first)")
    ais = json.loads(ais_path.read_text())
    state = checkpoint.load(run / "checkpoints" / "last.pt")
    job = OmegaConf.create(state["config"])
    check(bool(job.energy.get("zero_init_last", False)) and job.energy.get("base") != "none",
          f"{run}: the initial model is its base only with energy.zero_init_last=true and a base")
    torch.manual_seed(int(job.seed))
    dataset, trained = rebuild(state, torch.device("cpu"))
    torch.manual_seed(int(job.seed))
    _, initial = build_data_and_energy(job)  # the same base, network output zero
    x = dataset.test[: ais["n_test"]]
    jac = dataset.log_det_jacobian(x).double()
    trained.eval()
    initial.eval()
    ll = -trained(x).double() - ais["log_z"] + jac
    ll0 = -initial(x).double() + jac
    d = ll - ll0
    n = len(d)
    se = math.sqrt(float(d.var()) / n + float(ais["log_z_se"]) ** 2)
    conv = ais.get("convergence", [])
    return {"run": str(run), "results": str(ais_path), "log_likelihood": float(ll.mean()), "initial": float(ll0.mean()),
            "gain": float(d.mean()), "gain_se": se, "ess_fraction": ais["ess_fraction"],
            "t_to_4t": [c["log_likelihood"] for c in conv], "start": ais["settings"]["start"],
            "wall_clock_s": float(state.get("wall_clock", float("nan")))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run directories evaluated by pdebm eval (their "
                        "ais.json), or the results files of later evaluations (<run>/ais-2.json)")
    parser.add_argument("--json", default=None, help="also write the numbers to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    from pdebm.errors import ConfigError

    rows = []
    try:
        for r in args.runs:
            rows.append(paired_gain(Path(r)))
    except ConfigError as e:
        print(f"pdebm: error: {e}", file=sys.stderr)
        return 2
    print("| run | AIS start | log-likelihood (nats) | ESS/N | T → 4T | initial model | "
          "gain ± paired SE | train s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        moves = " → ".join(f"{v:.2f}" for v in r["t_to_4t"])
        print(f"| {Path(r['run']).name} | {r['start']} | {r['log_likelihood']:.2f} | "
              f"{r['ess_fraction']:.3f} | {moves} | {r['initial']:.2f} | "
              f"{r['gain']:+.2f} ± {r['gain_se']:.2f} | {r['wall_clock_s']:.0f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The prescribed-path table (issue 22): each particle-sampler variant driven along every family
of :mod:`pdebm.prescribed` (exact initial samples, N particles, 30 moves), over several seeds.

Prints, per variant and family: the weighted estimate of E[x₂²] over its exact value, the worst
z-score over the four moments (E x₁, E x₂, E x₁², E x₂²; mean over seeds against its standard
error across seeds), ESS/N at the end, the fraction of distinct particles at the end, the largest
Pareto k̂ of the weights over the path, the transport's substeps / move fraction (mean over
the path) where the sampler reports them, the fraction of seeds whose corrections fell back to
the curvature-scaled kernel (``curvature_fallback``), and which of the sampler's one-line
warnings came (in how many seeds): k̂ (Pareto k̂ > 0.7), mh_low (failing proposals), K=0
(resampling without moves), fallback.

    python scripts/consistency_table.py                       # all variants, 8 seeds, N = 2000
    python scripts/consistency_table.py --variants default --seeds 4
"""

from __future__ import annotations

import argparse
import inspect
import time
import warnings

from pdebm.prescribed import FAMILIES, run_path, summarise
from pdebm.samplers.particle import ParticleSampler
from pdebm.samplers.weights import distinct_fraction, pareto_k_hat

VARIANTS: dict[str, dict] = {
    "default": {},
    "plain kernel": {"curvature_fallback": None},  # the default before curvature_fallback
    "K=0": {"n_steps": 0},
    "basis": {"field": "basis"},
    "none": {"field": "none"},
    "gradient": {"field": "gradient"},
    "substeps=4": {"substeps": 4},
    "max_substeps=8": {"max_substeps": 8},
    "adapt_accept=0.57, MALA": {"adapt_accept": 0.57, "kernel": {"mala": True}},
    "bounds=[0.1,10]": {"jacobian_bounds": (0.1, 10.0)},
    "unweighted": {"weights": False},
    "unweighted basis": {"weights": False, "field": "basis"},
    "curved": {"curvature_step": 1.0, "curvature_max_step": 200.0},  # sampler=particle_curved
}


WARNINGS = {"k̂": "Pareto k̂", "mh_low": "langevin.step_size is too large",
            "K=0": "n_steps=0 with resampling", "fallback": "curvature-scaled Metropolis"}
"""The sampler's one-line warnings, by a piece of text only that warning has."""


def caught_warnings(messages: list[str]) -> set[str]:
    return {name for m in messages for name, text in WARNINGS.items() if text in m}


def run_seed(fam: str, make, seed: int, moves: int):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = run_path(fam, make, seed, moves, keep=True)
    return res, caught_warnings([str(w.message) for w in caught])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS),
                    help="variants to run (default: all): " + ", ".join(VARIANTS))
    ap.add_argument("--families", nargs="*", default=list(FAMILIES))
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--n", type=int, default=2000, help="particles N")
    ap.add_argument("--moves", type=int, default=30)
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="extra sampler settings applied to every variant (Python literals)")
    args = ap.parse_args()
    extra = {}
    for kv in args.set:
        k, v = kv.split("=", 1)
        extra[k] = eval(v)  # noqa: S307 - a developer's script
    accepted = set(inspect.signature(ParticleSampler).parameters)
    print(f"N = {args.n}, {args.moves} moves, {args.seeds} seeds; z: worst over the four moments")
    print("| variant | family | E x₂² est/exact | worst z | ESS/N end | distinct end | k̂ max | "
          "substeps | move frac | fell back | warned (seeds) | s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name in args.variants:
        settings = {**VARIANTS[name], **extra}
        settings = {k: v for k, v in settings.items() if k in accepted}
        for fam in args.families:
            t0 = time.time()
            make = lambda: ParticleSampler(n_samples=args.n, init="exact",
                                           **{"weights": True, **settings})
            runs = [run_seed(fam, make, seed, args.moves) for seed in range(args.seeds)]
            res = [r for r, _ in runs]
            names = [n for n in WARNINGS if any(n in w for _, w in runs)]
            warned = ", ".join(f"{n} ({sum(n in w for _, w in runs)})" for n in names) or "none"
            s = summarise(res)
            distinct = sum(float(distinct_fraction(r.x)) for r in res) / len(res)
            k_hat = s.k_hat_max
            if k_hat != k_hat:  # the sampler does not report it: the final weights' k̂
                k_hat = max(float(pareto_k_hat(r.log_w)) for r in res)
            sub = s.stats.get("substeps", float("nan"))
            frac = s.stats.get("move_fraction", float("nan"))
            fell = s.stats.get("curved", float("nan"))
            weighted = settings.get("weights", True)
            ess = f"{s.ess:.2f}" if weighted else "–"
            print(f"| {name} | {fam} | {float(s.ratio[3]):.3f} | {s.worst_z:.1f} | {ess} | "
                  f"{distinct:.2f} | {k_hat:.2f} | {sub:.1f} | {frac:.2f} | {fell:.2f} | {warned} | "
                  f"{time.time() - t0:.0f} |",
                  flush=True)


if __name__ == "__main__":
    main()

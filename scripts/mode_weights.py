#!/usr/bin/env python
"""Mode weights: does a sampler's EBM recover the relative weights of separated classes?

Trains each sampler (``--samplers``) on a class subset in known proportions (the preset
``experiment=digits_modes``: digits 2, 3 and 6 in a 4:2:1 ratio, ``dataset.classes`` /
``dataset.class_weights``), then labels with the data set's classifier
(:mod:`pdebm.metrics.classifier`, trained on *all* the labelled training digits, so a sample may
also be called another digit):

* the sampler's own **negatives** at the end of training (weighted by their self-normalised
  importance weights where the sampler carries them), and
* **model samples**: the final states of AIS chains started from the model's own base
  (``--ais-chains`` chains, ``--n-temps`` temperatures), weighted by their AIS weights, so they
  are samples of the trained density itself and not of the sampler's history.

For each it prints the recovered proportions of the classes (plus "other": any other predicted
class) and the total-variation distance to the target ``w/Σw`` (other: 0),
``TV = ½ Σ |p̂ − p|``, and "TV within": the same with the shares renormalised over the target
classes (the weights' error apart from samples that look like no target class), per seed and as
a mean over seeds. Reference rows: the subset's test images (true and classified labels), the
untrained model (its base: exact draws), and a density whose class weights are exactly right:
one full-covariance Gaussian per class (``--class-reg`` on its diagonal) weighted 4:2:1, exact
draws. The first row labels the held-out test images of the subset itself: the classifier's own
error on real data sets the floor. The last shows how much of a model's TV comes from samples
that look like no target class when the weights are not at fault at all
(``--references-only`` prints these rows without training anything).

A second set of tables measures the same samples as Carbone et al. (2023) do: with a classifier of
the **three target classes alone** (trained, deterministically, on every training image of those
classes, so its prior is theirs equally and not 4:2:1), every sample gets one of the three labels
and there is no "other" (the authors' ``LightningMNISTClassifier`` has three outputs). Its TV
is the weights' error under that protocol; the ten-class TV above is the stricter one.

Each run is a normal ``pdebm train`` (subprocess, one thread) in ``<out>/<sampler>/seed<s>``;
a run whose ``checkpoints/last.pt`` is at its last step is reused.

    python scripts/mode_weights.py --seeds 0 1 2 --jobs 2
    python scripts/mode_weights.py --seeds 0 --samplers particle pcd steps=100   # key=value: overrides
    python scripts/mode_weights.py --references-only                             # reference rows only
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

SAMPLERS = ["particle", "particle_unweighted", "particle_paper", "pcd", "sgld"]


def train_run(run_dir: Path, overrides: list[str], log) -> float:
    """``pdebm train`` into ``run_dir`` unless it has finished there; returns its wall time."""
    from pdebm import checkpoint

    last = run_dir / "checkpoints" / "last.pt"
    if last.is_file():
        state = checkpoint.load(last)
        want = state["config"]
        if state["step"] >= int(want["steps"]) and (run_dir / "overrides.json").is_file() and \
                json.loads((run_dir / "overrides.json").read_text()) == overrides:
            return float(state.get("wall_clock", float("nan")))
    if run_dir.exists():
        raise SystemExit(f"pdebm: error: {run_dir} exists but is not this finished run; "
                         "remove it or choose another --out")
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pdebm.cli", "train", *overrides, "num_threads=1",
           "progress=false", f"hydra.run.dir={run_dir}"]
    log(f"train {' '.join(overrides)}")
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"pdebm: error: training failed ({' '.join(overrides)}):\n"
                         f"{res.stderr.strip().splitlines()[-1] if res.stderr.strip() else ''}")
    (run_dir / "overrides.json").write_text(json.dumps(overrides))
    return float(checkpoint.load(last).get("wall_clock", float("nan")))


def three_class_labels(net, classes: list[int]):
    """Labels of the classifier restricted to the target classes: the argmax over their logits
    alone, mapped back to the class ids (so no sample is "other")."""
    ids = torch.as_tensor(classes)

    def labels(u: torch.Tensor) -> torch.Tensor:
        return ids[net(u)[:, ids].argmax(1)]
    return labels


def proportions(pred: torch.Tensor, weights: torch.Tensor, classes: list[int]) -> list[float]:
    """Weighted share of each class, then of "other" (any other label)."""
    w = weights.double() / weights.double().sum()
    shares = [float(w[pred == c].sum()) for c in classes]
    return shares + [max(0.0, 1.0 - sum(shares))]


def spread(v: list[float]) -> str:
    """A summary cell: mean over seeds, min–max in brackets."""
    return f"{statistics.mean(v):.3f} ({min(v):.3f}–{max(v):.3f})"


def tv(p: list[float], target: list[float]) -> float:
    return 0.5 * sum(abs(a - b) for a, b in zip(p, target))


def tv_within(p: list[float], target: list[float]) -> float:
    """TV between the class shares renormalised over the target classes (``other`` dropped):
    the weights' error alone, apart from samples the classifier puts in no target class."""
    q = [v / max(sum(p[:-1]), 1e-12) for v in p[:-1]]
    return tv(q, target[:-1])


@torch.no_grad()
def analyse(run_dir: Path, classifier, n_chains: int, n_temps: int, seed: int,
            beta_schedule: str, three) -> dict:
    """Classifier-labelled negatives and AIS model samples of one finished run, and their shares
    under ``three``, the labeller of the target classes alone (``*_3``)."""
    from pdebm import checkpoint
    from pdebm.build import _to
    from pdebm.config import instantiate
    from pdebm.eval import rebuild
    from pdebm.metrics.ais import ais_log_z
    from pdebm.samplers.langevin import LangevinConfig

    state = checkpoint.load(run_dir / "checkpoints" / "last.pt")
    cfg = OmegaConf.create(state["config"])
    torch.manual_seed(seed)
    dataset, energy = rebuild(state, torch.device("cpu"))
    sampler = instantiate(cfg.sampler)
    sampler.load_state_dict(_to(state["sampler"], torch.device("cpu")))
    with torch.enable_grad():
        x, log_w = sampler.negatives(energy)
    x, w_neg = x.detach(), torch.softmax(log_w.detach().double(), 0)
    ais = ais_log_z(energy, n_chains=n_chains, n_temps=n_temps, schedule=beta_schedule,
                    kernel=LangevinConfig(n_steps=1, step_size=float(cfg.langevin.step_size),
                                             mala=True), seed=seed)
    w_ais = torch.softmax(ais.log_weights.double(), 0)

    classes = [int(c) for c in cfg.dataset.classes]
    neg, samples = dataset.to_images(x.cpu()), dataset.to_images(ais.samples.cpu())
    return {"classes": classes,
           "negatives": proportions(classifier(neg).argmax(1), w_neg, classes),
           "negatives_ess": float(1.0 / w_neg.pow(2).sum()) / len(w_neg),
           "samples": proportions(classifier(samples).argmax(1), w_ais, classes),
           "samples_ess": ais.ess / n_chains, "log_z": ais.log_z,
           "wall_clock_s": float(state.get("wall_clock", float("nan"))),
           "negatives_3": proportions(three(neg), w_neg, classes),
           "samples_3": proportions(three(samples), w_ais, classes)}


def class_mixture_reference(dataset, n_classes: int, reg: float) -> "MixtureBase":
    """One full-covariance Gaussian per target class (mean and covariance of the class's training
    images in the model space, ``+ reg·I``) weighted by the class frequencies, i.e. the target
    proportions: a density whose class weights are right by construction. The same fit as a
    class-given preset's base (``energy.base_fit=classes``), on the data set already loaded."""
    from pdebm.energy.base import MixtureBase

    x = dataset.statistics_images()
    return MixtureBase(x.shape[1:], n_classes, reg_covar=reg, fit="classes",
                       weights="fitted").fit(x, dataset.train_labels[:len(x)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="digits_modes", help="experiment preset (default "
                        "digits_modes: digits 2, 3, 6 at 4:2:1)")
    parser.add_argument("--samplers", nargs="+", default=SAMPLERS,
                        help=f"sampler options (default: {' '.join(SAMPLERS)}); trailing "
                             "key=value words are overrides for every run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=2, help="trainings at a time")
    parser.add_argument("--ais-chains", type=int, default=500, help="AIS chains per model")
    parser.add_argument("--n-temps", type=int, default=300, help="AIS temperatures")
    parser.add_argument("--beta-schedule", default="geometric", choices=["geometric", "linear"],
                        help="AIS β spacing (pdebm eval's beta_schedule)")
    parser.add_argument("--out", default="outputs/mode_weights", help="run directories")
    parser.add_argument("--json", default=None, help="also write the numbers to this file")
    parser.add_argument("--class-reg", type=float, default=None,
                        help="ridge of the right-weights reference (one Gaussian per class): "
                             "default the preset's energy.base_reg when its base is already one "
                             "Gaussian per class, else 0.5 (digits' held-out choice, "
                             "scripts/class_base_reg.py; Fashion-MNIST: 0.03)")
    parser.add_argument("--references-only", action="store_true",
                        help="print the reference rows and stop (no training)")
    args = parser.parse_args(argv)
    samplers = [s for s in args.samplers if "=" not in s]
    overrides = [s for s in args.samplers if "=" in s]
    if args.jobs < 1 or args.ais_chains < 2 or args.n_temps < 1:
        print("pdebm: error: --jobs and --n-temps must be >= 1, --ais-chains >= 2",
              file=sys.stderr)
        return 2
    if args.class_reg is not None and not args.class_reg > 0:
        print(f"pdebm: error: --class-reg must be > 0 (got {args.class_reg})", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    out = Path(args.out)
    if not out.is_absolute():
        out = ROOT / out

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    jobs = [(s, seed, [f"experiment={args.preset}", f"sampler={s}", f"seed={seed}", *overrides])
            for s in samplers for seed in args.seeds]
    if not args.references_only:
        with ThreadPoolExecutor(args.jobs) as pool:
            list(pool.map(lambda j: train_run(out / j[0] / f"seed{j[1]}", j[2], log), jobs))

    from pdebm.build import build_data_and_energy
    from pdebm.config import compose_config, instantiate
    from pdebm.metrics.classifier import classifier_for

    cfg = compose_config([f"experiment={args.preset}", *overrides])
    torch.manual_seed(0)
    subset, initial = build_data_and_energy(cfg)  # the untrained model: its base, exactly
    full = instantiate(OmegaConf.merge(cfg.dataset, {"classes": None, "class_weights": None}),
                       seed=0)
    clf = classifier_for(full)
    log(f"classifier: test accuracy {clf.test_accuracy:.4f} on all {len(full.test)} held-out "
        f"images of {full.name}")
    classes = [int(c) for c in subset.classes]
    # the authors' protocol: a classifier of the target classes alone, trained on all their images
    only = instantiate(OmegaConf.merge(cfg.dataset, {"class_weights": None}), seed=0)
    clf3 = classifier_for(only)
    three = three_class_labels(clf3.net, classes)
    acc3 = float((three(only.to_images(only.test)) == only.test_labels).double().mean())
    log(f"three-class classifier: test accuracy {acc3:.4f} on the {len(only.test)} held-out "
        f"images of classes {classes}")
    weights = [float(w) for w in cfg.dataset.class_weights]
    target = [w / sum(weights) for w in weights] + [0.0]
    test_images = subset.to_images(subset.test)
    test_pred = clf.net(test_images).argmax(1)
    data_p = proportions(test_pred, torch.ones(len(test_pred)), classes)
    true_p = proportions(subset.test_labels, torch.ones(len(test_pred)), classes)

    x0 = initial.sample_base(5000, generator=torch.Generator().manual_seed(0))
    x0_images = subset.to_images(x0)
    init_p = proportions(clf.net(x0_images).argmax(1), torch.ones(len(x0)), classes)
    own_classes = cfg.energy.get("base") == "mixture" and cfg.energy.get("base_fit") == "classes"
    reg = args.class_reg if args.class_reg is not None else (
        float(cfg.energy.base_reg) if own_classes else 0.5)
    xr = class_mixture_reference(subset, len(classes), reg).sample(
        5000, generator=torch.Generator().manual_seed(0))
    xr_images = subset.to_images(xr)
    ref_p = proportions(clf.net(xr_images).argmax(1), torch.ones(len(xr)), classes)
    refs3 = {name: proportions(three(u), torch.ones(len(u)), classes)
             for name, u in (("test_images_classified", test_images),
                             ("initial_model", x0_images), ("right_weights_reference", xr_images))}
    results = {"classifier_test_accuracy": clf.test_accuracy, "target": target,
               "initial_model": init_p, "right_weights_reference": ref_p,
               "right_weights_reference_reg": reg,
               "test_images_true": true_p, "test_images_classified": data_p,
               "three_class": {"test_accuracy": acc3, **refs3}, "runs": []}
    names = [str(c) for c in classes] + ["other"]
    head = " / ".join(names)
    print(f"Classifier test accuracy (all {len(full.test)} held-out images, every class): "
          f"{clf.test_accuracy:.4f}\n")
    print(f"| sampler | seed | negatives {head} | TV | TV within | model samples (AIS) {head} | "
          "TV | TV within | AIS ESS/N | train s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    fmt = lambda p: " / ".join(f"{v:.3f}" for v in p)  # noqa: E731
    print(f"| target | – | {fmt(target)} | 0 | 0 | | | | | |")
    print(f"| held-out images ({len(subset.test)}), true labels | – | {fmt(true_p)} | "
          f"{tv(true_p, target):.3f} | {tv_within(true_p, target):.3f} | | | | | |")
    print(f"| held-out images, classified | – | {fmt(data_p)} | {tv(data_p, target):.3f} | "
          f"{tv_within(data_p, target):.3f} | | | | | |")
    print(f"| initial model (its base, 5000 exact draws), classified | – | {fmt(init_p)} | "
          f"{tv(init_p, target):.3f} | {tv_within(init_p, target):.3f} | | | | | |")
    print(f"| right weights: one Gaussian per class (+ {reg:g}·I) at {':'.join(f'{w:g}' for w in weights)} "
          f"(5000 exact draws), classified | – | {fmt(ref_p)} | {tv(ref_p, target):.3f} | "
          f"{tv_within(ref_p, target):.3f} | | | | | |")
    names3 = " / ".join(str(c) for c in classes)
    heading3 = (f"\nAs Carbone et al. (2023) measure it: a classifier of classes {names3} alone "
                f"(held-out accuracy {acc3:.4f} on their {len(only.test)} test images), every "
                "sample labelled one of them")
    print(heading3 + "\n")
    print(f"| reference | {names3} | TV |\n|---|---|---|")
    fmt3 = lambda p: fmt(p[:-1])  # noqa: E731  (no "other" share)
    for name, label in (("test_images_classified", "held-out images, classified"),
                        ("initial_model", "initial model (5000 exact draws)"),
                        ("right_weights_reference", f"right weights (+ {reg:g}·I)")):
        print(f"| {label} | {fmt3(refs3[name])} | {tv(refs3[name], target):.3f} |")
    if args.references_only:
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2))
        return 0
    summary: dict[str, list] = {}
    for s, seed, _ in jobs:
        r = analyse(out / s / f"seed{seed}", clf.net, args.ais_chains, args.n_temps, seed,
                    args.beta_schedule, three)
        r.update(sampler=s, seed=seed, negatives_tv=tv(r["negatives"], target),
                 samples_tv=tv(r["samples"], target),
                 negatives_tv_3=tv(r["negatives_3"], target),
                 samples_tv_3=tv(r["samples_3"], target),
                 negatives_tv_within=tv_within(r["negatives"], target),
                 samples_tv_within=tv_within(r["samples"], target))
        results["runs"].append(r)
        summary.setdefault(s, []).append(r)
        print(f"| {s} | {seed} | {fmt(r['negatives'])} | {r['negatives_tv']:.3f} | "
              f"{r['negatives_tv_within']:.3f} | {fmt(r['samples'])} | {r['samples_tv']:.3f} | "
              f"{r['samples_tv_within']:.3f} | {r['samples_ess']:.3f} | "
              f"{r['wall_clock_s']:.0f} |", flush=True)
    print()
    keys = ["negatives_tv", "negatives_tv_within", "samples_tv", "samples_tv_within"]
    print("| sampler | seeds | negatives TV | negatives TV within | model samples TV | "
          "model samples TV within |")
    print("|---|---|---|---|---|---|")
    for s, rs in summary.items():
        print(f"| {s} | {len(rs)} | " + " | ".join(spread([r[k] for r in rs]) for k in keys) + " |")
    print("\n(mean over seeds, min–max in brackets; TV within: shares renormalised over the "
          "target classes)")
    print(heading3 + "\n")
    print(f"| sampler | seed | negatives {names3} | TV | model samples (AIS) {names3} | TV |")
    print("|---|---|---|---|---|---|")
    for r in results["runs"]:
        print(f"| {r['sampler']} | {r['seed']} | {fmt3(r['negatives_3'])} | "
              f"{r['negatives_tv_3']:.3f} | {fmt3(r['samples_3'])} | {r['samples_tv_3']:.3f} |")
    print("\n| sampler | seeds | negatives TV | model samples TV |\n|---|---|---|---|")
    for s, rs in summary.items():
        print(f"| {s} | {len(rs)} | " + " | ".join(spread([r[k] for r in rs])
                                                   for k in ("negatives_tv_3", "samples_tv_3")) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""FID, KID and ``confident`` of a finished image run's final negatives, read from its checkpoint:
the score ``eval/*`` logs during training, for runs trained before a metric existed.

The negatives are the sampler's state at the checkpoint: the particles (weighted ones resampled
by their weights, as the monitor does), or ``--n`` random entries of a PCD replay buffer.

    python scripts/negatives_score.py <run dir> [<run dir> ...] --n 128
"""

from __future__ import annotations

import argparse
import json

import torch

from pdebm import checkpoint
from pdebm.command import one_line_errors
from pdebm.config import instantiate
from pdebm.errors import check
from pdebm.metrics.fid import image_score_for, weighted_pick
from pdebm.sample import rebuild


def negatives(state: dict, job, n: int, gen: torch.Generator) -> torch.Tensor:
    s = state["sampler"]
    if s.get("buffer") is not None:  # PCD: the replay buffer
        return s["buffer"][torch.randperm(len(s["buffer"]), generator=gen)[:n]]
    check(s.get("x") is not None, "the checkpoint holds no negatives (sampler state without x)")
    x = s["x"]
    weighted = instantiate(job.sampler).weighted  # the sampler interface's flag, as the trainer's
    pick = weighted_pick(s["log_w"] if weighted else None, len(x), gen)
    return (x if pick is None else x[pick])[:n]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run directories or checkpoint files")
    parser.add_argument("--n", type=int, default=128, help="negatives scored (at most)")
    parser.add_argument("--n-reference", type=int, default=1000, help="held-out reference images")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    with one_line_errors():  # bad flags, a missing run: one line, exit 2, before any work
        check(args.n >= 2, "--n must be >= 2")
        ckpts = [checkpoint.resolve(r) for r in args.runs]
        for run, ckpt in zip(args.runs, ckpts):
            state = checkpoint.load(ckpt)
            job, dataset, _ = rebuild(state, torch.device("cpu"))  # checks it is an image run
            x = negatives(state, job, args.n, torch.Generator().manual_seed(args.seed))
            r = image_score_for(dataset, n_reference=args.n_reference, seed=args.seed)(
                dataset.to_images(x.cpu()))
            print(json.dumps({"run": run, "step": int(state["step"]), "n": len(x), **r}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

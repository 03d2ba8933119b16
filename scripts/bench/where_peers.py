"""pdebm's training iteration against ebmkit's on the peers' task, in one process, interleaved.

The task of ``../shared/bench/peers`` (8gaussians, 2→128→128→1 SiLU, batch 256, K = 20 Langevin steps,
Adam lr 1e-3, energy reg 1e-3, one thread); pdebm with ``energy.base=none`` (the peers' energy has
no Gaussian base). Each repetition runs one iteration of each library in turn, so a load change of
the machine hits both alike; per-iteration time is taken both as wall-clock (``perf_counter``) and
as this thread's CPU time (``thread_time``, which other processes on a busy machine disturb far
less). Prints medians, means and the pdebm / ebmkit ratios, and a breakdown of pdebm's iteration.

    PY=<venv with ebmkit> ; PYTHONPATH=. $PY scripts/bench/where_peers.py sgld --reps 300
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from pdebm.build import build
from pdebm.config import compose_config
from pdebm.diverge import DivergenceWatch
from pdebm.loss import loss_fn
from pdebm.step import train_step

OVERRIDES = ["dataset=8gaussians", "energy.hidden=128", "energy.depth=2", "batch_size=256",
             "sampler.n_steps=20", "langevin.step_size=0.1", "lr=1e-3", "betas=[0.9,0.999]",
             "energy_reg=1e-3", "progress=false", "num_threads=1", "device=cpu",
             "energy.base=none", "energy.zero_init_last=false"]


def pdebm_iteration(method: str):
    extra = ["sampler.buffer_size=10000", "sampler.reinit_prob=0.05"] if method == "pcd" else []
    cfg = compose_config([f"sampler={method}", *OVERRIDES, *extra])
    run, watch, step = build(cfg), DivergenceWatch(), [0]

    def iteration() -> None:  # what the trainer does per step, logging at its default log_every
        x = run.dataset.train_batch(cfg.batch_size)
        out = train_step(run, x, alpha=float(cfg.energy_reg), step=step[0], watch=watch)
        step[0] += 1
        if step[0] % cfg.log_every == 0:
            out.host()
    return run, iteration


def ebmkit_iteration(method: str):
    import ebm  # ebmkit, imported as ``ebm``

    model = ebm.nets.MLPEnergy(2, hidden=(128, 128))
    sampler = ebm.LangevinDynamics(step_size=0.05, steps=20)  # ε_ebmkit = 0.05 ≙ pdebm ε = 0.1
    buffer = (ebm.ReplayBuffer(capacity=10000, shape=(2,), reinit_prob=0.05)
              if method == "pcd" else None)
    loss = ebm.ContrastiveDivergence(sampler, buffer=buffer, energy_reg=1e-3)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    pool = torch.randn(100_000, 2)

    def iteration() -> None:  # the peers harness's loop (peer_train_2d.py)
        x = pool[torch.randint(len(pool), (256,))]
        out = loss(model, x)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
    return iteration


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("method", choices=["sgld", "pcd"])
    ap.add_argument("--reps", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=20)
    a = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    run, p_it = pdebm_iteration(a.method)
    fns = {"pdebm": p_it, "ebmkit": ebmkit_iteration(a.method)}
    for _ in range(a.warmup):
        for fn in fns.values():
            fn()
    wall = {k: [] for k in fns}
    cpu = {k: [] for k in fns}
    for _ in range(a.reps):
        for k, fn in fns.items():
            w0, c0 = time.perf_counter(), time.thread_time()
            fn()
            cpu[k].append(time.thread_time() - c0)
            wall[k].append(time.perf_counter() - w0)
    print(f"# {a.method}: {a.reps} interleaved iterations after {a.warmup} warm-up, 1 thread, "
          f"torch {torch.__version__}")
    print("| clock | statistic | pdebm (ms) | ebmkit (ms) | pdebm / ebmkit |")
    print("|---|---|---:|---:|---:|")
    for clock, t in (("wall", wall), ("thread CPU", cpu)):
        for name, stat in (("median", statistics.median), ("mean", statistics.mean)):
            p, e = stat(t["pdebm"]) * 1e3, stat(t["ebmkit"]) * 1e3
            print(f"| {clock} | {name} | {p:.2f} | {e:.2f} | {p / e:.3f} |")
    # where pdebm's iteration goes (thread CPU time, medians)
    parts: dict[str, list[float]] = {}
    watch = DivergenceWatch()
    for i in range(a.reps // 2):
        t = [time.thread_time()]
        x = run.dataset.train_batch(256); t.append(time.thread_time())
        x_neg, log_w = run.sampler.negatives(run.energy); t.append(time.thread_time())
        loss, _ = loss_fn(run.energy, x, x_neg, log_w, 1e-3); watch.observe(loss, i)
        t.append(time.thread_time())
        run.optimizer.zero_grad(set_to_none=True); loss.backward(); t.append(time.thread_time())
        run.optimizer.step(); run.sampler.update(None, run.energy); t.append(time.thread_time())
        for name, t0, t1 in zip(("batch", "negatives (K=20)", "loss", "backward", "Adam + update"),
                                t, t[1:]):
            parts.setdefault(name, []).append(t1 - t0)
    print("\npdebm iteration, thread CPU time (median ms): " +
          ", ".join(f"{k} {statistics.median(v) * 1e3:.2f}" for k, v in parts.items()))


if __name__ == "__main__":
    main()

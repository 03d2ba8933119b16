"""No host sync inside a training step (issue 11): every read of a device value on the host is
counted while ``train_step`` runs, by patching the Tensor methods that read one (``item``,
``tolist``, ``cpu``, ``numpy``, ``float()``, ``int()``, ``bool()``, ``index``). On the CPU these
calls cost nothing, but each one is a ``cudaStreamSynchronize`` on a GPU.

One read is not counted (:mod:`pdebm.hostsync`): ``torch.optim.Adam`` (``capturable=False``)
reads its step counter with ``item()``; that counter is a CPU tensor even for a CUDA model, so
the read is not a device sync.
"""

from __future__ import annotations

import pytest
import torch

from pdebm.build import build
from pdebm.config import compose_config
from pdebm.hostsync import count_host_reads
from pdebm.samplers.langevin import LangevinConfig, langevin
from pdebm.step import DivergenceWatch, train_step


def test_counter_sees_the_reads_it_must_see():
    """The patching works: each kind of read is counted (else a zero below proves nothing)."""
    t = torch.ones(3)
    with count_host_reads() as counts:
        t.sum().item(), t.tolist(), t.cpu(), float(t.sum()), int(t.sum()), bool(t.sum() > 0)
        [0, 1][t.long()[0]]
    kinds = {k.split(" @ ")[0] for k in counts}
    assert kinds >= {"item", "tolist", "cpu", "__float__", "__int__", "__bool__", "__index__"}


SAMPLERS = {
    "sgld": ["sampler=sgld", "sampler.n_steps=3"],
    "sgld_mala": ["sampler=sgld", "sampler.n_steps=3", "langevin.mala=true"],
    "pcd": ["sampler=pcd", "sampler.n_steps=3", "sampler.buffer_size=128",
            "sampler.reinit_prob=0.3"],
    "pcd_mala_clip": ["sampler=pcd", "sampler.n_steps=3", "sampler.buffer_size=128",
                      "langevin.mala=true", "grad_clip=1.0", "langevin.grad_clip=5.0"],
    "exact": ["sampler=exact", "eval.resolution=40", "eval.lag_bins=10"],
    # the authors' particle sampler (gradient field, first-order δE, unweighted); the other
    # particle options still read c, ESS and the shortcut's check on the host (docs: perf report)
    "particle_paper": ["sampler=particle_paper", "sampler.n_steps=2"],
}


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_train_step_reads_nothing_from_the_device(name):
    cfg = compose_config(["batch_size=64", "sampler.n_samples=64", "energy.hidden=32",
                          "progress=false", "device=cpu", "energy_reg=0.01",
                          *SAMPLERS[name]])
    run = build(cfg)
    watch = DivergenceWatch()
    batches = [run.dataset.train_batch(cfg.batch_size) for _ in range(4)]
    train_step(run, batches[0], alpha=0.01, grad_clip=cfg.grad_clip, watch=watch)  # warm-up
    with count_host_reads() as counts:
        outs = [train_step(run, x, alpha=0.01, grad_clip=cfg.grad_clip, step=k, watch=watch)
                for k, x in enumerate(batches[1:], 1)]
    assert dict(counts) == {}
    # the numbers are all there, as device tensors, and come over in one transfer
    out = outs[-1]
    assert all(torch.is_tensor(v) for v in out.parts.values())
    with count_host_reads() as counts:
        host = out.host()
    assert sum(counts.values()) == 1 and next(iter(counts)).startswith("tolist")
    assert host["train/loss"] == pytest.approx(float(out.parts["loss"]))
    if "mala" in name:
        assert 0.0 <= host["sampler/accept_rate"] <= 1.0
    if name.startswith("pcd"):
        assert "sampler/reinit_frac" in host
    if "clip" in name:
        assert host["train/grad_norm"] > 0


def test_mala_kernel_alone_reads_nothing():
    energy = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.SiLU(), torch.nn.Linear(16, 1),
                                 torch.nn.Flatten(0))
    x = torch.randn(32, 2)
    with count_host_reads() as counts:
        out = langevin(energy, x, LangevinConfig(n_steps=4, step_size=0.05, mala=True),
                       log_weights=torch.zeros(32))
        ula = langevin(energy, x, LangevinConfig(n_steps=4, step_size=0.05),
                       log_weights=torch.zeros(32))
    assert dict(counts) == {}
    assert torch.is_tensor(out.accept_rate) and 0 <= float(out.accept_rate) <= 1
    assert torch.isfinite(ula.log_weights).all()


def test_divergence_is_caught_at_the_next_transfer_with_its_step():
    """The device-side watch names the first non-finite step when the numbers are fetched."""
    from pdebm.errors import TrainingDiverged
    cfg = compose_config(["batch_size=32", "sampler=sgld", "sampler.n_samples=32",
                          "sampler.n_steps=2", "energy.hidden=16", "progress=false",
                          "device=cpu"])
    run = build(cfg)
    watch = DivergenceWatch()
    x = run.dataset.train_batch(32)
    train_step(run, x, step=0, watch=watch).host()  # finite: no error
    with torch.no_grad():
        next(run.energy.parameters()).fill_(float("nan"))
    out = None
    for k in (1, 2, 3):
        out = train_step(run, x, step=k, watch=watch)  # no error while the numbers stay put
    with pytest.raises(TrainingDiverged, match="at step 1"):
        out.host()

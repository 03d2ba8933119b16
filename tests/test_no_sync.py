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
from pdebm.diverge import DivergenceWatch
from pdebm.step import train_step
from tests.conftest import FAST_SAMPLER


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
    # the authors' particle sampler (gradient field, first-order δE, unweighted)
    "particle_paper": ["sampler=particle_paper", "sampler.n_steps=2"],
    # pdebm's default: optimal c*, importance weights, exact δE, exact 2D Hessian log-det
    "particle": ["sampler=particle", "sampler.n_steps=2"],
    # unweighted: the transport and the corrections, no Hessian
    "particle_unweighted": ["sampler=particle_unweighted", "sampler.n_steps=2"],
    "particle_basis": ["sampler=particle", "sampler.n_steps=2", "sampler.field=basis"],
}
SAMPLERS.update({k: v for k, v in FAST_SAMPLER.items() if k not in SAMPLERS})  # every option


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
    if getattr(getattr(run.sampler, "kernel", None), "mala", False):
        assert 0.0 <= host["sampler/accept_rate"] <= 1.0
    if "reinit_prob" in cfg.sampler:  # chains restarted from noise: their share is logged
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


@pytest.mark.parametrize("name", ["particle", "particle_basis"])
def test_particle_2d_calls_no_linalg_that_checks_its_status_on_the_host(name, monkeypatch):
    """``torch.linalg.eigvalsh`` and ``solve`` read their solver status on the host inside
    C++ (a GPU sync the counter above cannot see): the 2D particle sampler must not call them
    (closed-form 2×2 eigenvalues, ``solve_ex`` without the check)."""
    calls = []
    for fn in ("eigvalsh", "eigh", "solve", "inv", "cholesky"):
        orig = getattr(torch.linalg, fn)
        monkeypatch.setattr(torch.linalg, fn,
                            lambda *a, _f=fn, _o=orig, **k: (calls.append(_f), _o(*a, **k))[1])
    cfg = compose_config(["batch_size=64", "sampler.n_samples=64", "energy.hidden=32",
                          "progress=false", "device=cpu", *SAMPLERS[name]])
    run = build(cfg)
    for k in range(3):
        train_step(run, run.dataset.train_batch(64), alpha=0.0, step=k)
    assert calls == []


def test_closed_form_2x2_eigenvalues_match_eigvalsh():
    from pdebm.samplers.weights import symmetric_eigvals
    torch.manual_seed(0)
    h = torch.randn(500, 2, 2, dtype=torch.float64) * torch.logspace(-6, 3, 500,
                                                                       dtype=torch.float64)[:, None, None]
    h = h + h.mT
    h[0] = 0.0  # a zero Hessian (δE linear)
    h[1] = torch.tensor([[2.0, 0.0], [0.0, 2.0]])  # a repeated eigenvalue
    ref = torch.linalg.eigvalsh(h)
    scale = h.flatten(1).abs().amax(1, keepdim=True).clamp_min(1e-300)
    assert ((symmetric_eigvals(h) - ref).abs() <= 1e-13 * scale).all()
    h1 = torch.randn(10, 1, 1, dtype=torch.float64)
    assert torch.equal(symmetric_eigvals(h1), torch.linalg.eigvalsh(h1))


def test_ais_host_reads_do_not_grow_with_the_temperatures():
    """AIS (``pdebm eval``, the periodic image evaluation) keeps its adapted MALA step size and
    acceptance on the device: its host reads are a fixed handful per call, not one per
    temperature (they were ``n_temps`` before)."""
    from pdebm.metrics.ais import ais_log_z

    cfg = compose_config(["energy.hidden=16", "progress=false", "device=cpu"])
    energy = build(cfg).energy
    reads = {}
    for n_temps in (4, 40):
        with count_host_reads() as counts:
            result = ais_log_z(energy, n_chains=16, n_temps=n_temps, seed=0)
        reads[n_temps] = sum(counts.values())
        assert result.accept_rate is not None and 0.0 < result.accept_rate <= 1.0
        assert result.step_size != 0.1  # the step size was adapted (on the device)
    assert reads[40] == reads[4] < 12, reads

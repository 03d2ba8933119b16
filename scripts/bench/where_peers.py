"""Where pdebm's per-step time goes on the peers' task (SGLD, K=20, batch 256, 2->128->128->1 SiLU):
variants of train_step (Gaussian base removed, parameters frozen while sampling) against a plain
torch loop, in one process, interleaved, medians. Usage: PYTHONPATH=. python3 scripts/bench/where_peers.py"""
import statistics, time, types, sys
import torch
torch.set_num_threads(1)
from pdebm.config import compose_config
from pdebm.build import build
from pdebm.step import train_step, DivergenceWatch
ov = ["sampler=sgld", "dataset=8gaussians", "energy.hidden=128", "energy.depth=2", "batch_size=256",
      "sampler.n_steps=20", "langevin.step_size=0.1", "lr=1e-3", "betas=[0.9,0.999]", "energy_reg=1e-3",
      "progress=false", "num_threads=1", "device=cpu"]
def make(variant):
    run = build(compose_config(ov + (["sampler=pcd", "sampler.buffer_size=10000", "sampler.reinit_prob=0.05"] if "pcd" in variant else [])))
    if "nobase" in variant:
        net = run.energy.net
        run.energy.forward = types.MethodType(lambda self, x: net(x).reshape(x.shape[0]), run.energy)
    if "frozen" in variant:
        import pdebm.samplers.langevin as L
        orig = L.energy_and_grad
        def eg(energy, x, orig=orig):
            ps = [p for p in run.energy.parameters() if p.requires_grad]
            for p in ps: p.requires_grad_(False)
            try: return orig(energy, x)
            finally:
                for p in ps: p.requires_grad_(True)
        run._eg = eg
    w = DivergenceWatch()
    def step():
        if "frozen" in variant:
            import pdebm.samplers.langevin as L; L.energy_and_grad = run._eg
        x = run.dataset.train_batch(256)
        train_step(run, x, alpha=1e-3, watch=w)
        if "frozen" in variant:
            L.energy_and_grad = L.__dict__["_orig"]
    return step
import pdebm.samplers.langevin as L; L._orig = L.energy_and_grad
# plain loop like ebmkit: no base, frozen params, x - eps g + sqrt(2eps) xi
def plain():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2,128), torch.nn.SiLU(), torch.nn.Linear(128,128), torch.nn.SiLU(), torch.nn.Linear(128,1))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    data = torch.randn(100000, 2)
    def step():
        x = data[torch.randint(100000, (256,))]
        for p in net.parameters(): p.requires_grad_(False)
        z = torch.randn(256, 2)
        for _ in range(20):
            z.requires_grad_(True)
            g, = torch.autograd.grad(net(z).sum(), z)
            z = (z - 0.05 * g + (0.1) ** 0.5 * torch.randn_like(z)).detach()
        for p in net.parameters(): p.requires_grad_(True)
        ep, en = net(x).squeeze(-1), net(z).squeeze(-1)
        loss = ep.mean() - en.mean() + 1e-3 * (ep.pow(2).mean() + en.pow(2).mean())
        opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
    return step
variants = sys.argv[1:] or ["sgld", "sgld_nobase", "sgld_frozen", "sgld_nobase_frozen", "plain"]
steps = {v: (plain() if v == "plain" else make(v)) for v in variants}
for s in steps.values():
    for _ in range(20): s()
times = {v: [] for v in variants}
for r in range(int(__import__('os').environ.get("REPS", "150"))):
    for v in variants:
        t0 = time.perf_counter(); steps[v](); times[v].append(time.perf_counter() - t0)
for v in variants:
    print(f"{v:22s} median {1e3*statistics.median(times[v]):6.2f} ms")

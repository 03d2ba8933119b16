"""The console during training: a tqdm bar, or one line per evaluation for parallel sweep jobs.

Jobs of a sweep run by a parallel launcher (joblib, SLURM) share one terminal, where bars
overwrite each other; such a job prints one line per evaluation instead, prefixed by its job
number and swept values. The bar's ``nll=`` shows the latest evaluation, the final one included.
"""

from __future__ import annotations

import sys

from hydra.core.hydra_config import HydraConfig
from tqdm import tqdm


def parallel_job() -> str | None:
    """``"job 3 (lr=0.01,seed=1)"`` when this job is one of a sweep run by a parallel launcher."""
    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    target = str(hc.get("launcher", {}).get("_target_", ""))
    if str(hc.mode) != "RunMode.MULTIRUN" or target.endswith("BasicLauncher") or not target:
        return None
    return f"job {hc.job.num} ({hc.job.override_dirname or 'defaults'})"


class Progress:
    def __init__(self, total: int, initial: int, desc: str, enabled: bool) -> None:
        self.job = parallel_job()
        self.total, self.enabled = total, enabled
        self.bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True,
                        disable=not enabled or self.job is not None, file=sys.stderr)
        self.loss: str | None = None
        self.nll: str | None = None

    def step(self) -> None:
        self.bar.update(1)

    def loss_is(self, loss: float) -> None:
        """The loss of a logged step (read on logging steps only: no host sync per step)."""
        self.loss = f"{loss:.3f}"
        self._postfix()

    def evaluated(self, step: int, scalars: dict[str, float]) -> None:
        if "test_nll" in scalars:
            self.nll = f"{scalars['test_nll']:.3f}"
            self._postfix()
        if self.job is not None and self.enabled:
            shown = " ".join(f"{k}={scalars[k]:.4g}" for k in ("test_nll", "lag_kl", "mmd2")
                             if k in scalars)
            print(f"pdebm: {self.job} step {step}/{self.total} {shown}", file=sys.stderr,
                  flush=True)

    def _postfix(self) -> None:
        self.bar.set_postfix(**({"loss": self.loss} if self.loss else {}),
                             **({"nll": self.nll} if self.nll else {}))

    def close(self) -> None:
        """Close the bar (its line ends), so that a message printed next starts a line."""
        self.bar.close()
        sys.stderr.flush()

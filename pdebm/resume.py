"""``pdebm train resume=<run dir or checkpoint>``: continue a run as it was configured.

The run's own overrides (``<run>/.hydra/overrides.yaml``) are composed again, so a resume needs
no other argument. Extra overrides are allowed only for :data:`SAFE_KEYS` (more steps, logging
periods, device, threads); any other difference from the checkpoint's config is refused in one
line that names the keys. The resumed run writes into the original run directory: TensorBoard
discards the events from the checkpoint's step on (``purge_step``), and ``metrics.jsonl`` keeps
only its rows before that step (see :func:`purge_metrics`).
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any, Mapping

from pdebm.checkpoint_diff import SAFE_KEYS, config_diff

OVERRIDES = Path(".hydra") / "overrides.yaml"


def run_dir_of(checkpoint: Path) -> Path:
    """The run directory a checkpoint belongs to (``<run>/checkpoints/last.pt`` -> ``<run>``)."""
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent


def original_overrides(run: Path) -> list[str] | None:
    """The overrides the run was launched with (Hydra's record), without ``resume``; None when
    the run was not launched by the command (no ``.hydra/overrides.yaml``)."""
    from omegaconf import OmegaConf

    p = run / OVERRIDES
    if not p.is_file():
        return None
    return [str(o) for o in OmegaConf.load(p) if _key(str(o)) != "resume"]


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def merged_overrides(original: list[str], given: list[str]) -> list[str]:
    """The run's own overrides, with the keys the user gives now replaced by the user's."""
    mine = {_key(o) for o in given}
    return [o for o in original if _key(o) not in mine] + list(given)


def refusal(saved: Mapping[str, Any] | None, current: Mapping[str, Any]) -> str | None:
    """The one-line refusal when the resumed config differs from the checkpoint's outside
    :data:`SAFE_KEYS`; None when the run may continue."""
    if saved is None:
        return None
    diffs = config_diff(saved, current)
    if not diffs:
        return None
    keys = ", ".join(d.split(":", 1)[0] for d in diffs)
    shown = "; ".join(diffs[:4]) + (f" (and {len(diffs) - 4} more)" if len(diffs) > 4 else "")
    return (f"resume continues the run as it was configured, but {keys} differ: {shown} (only "
            f"{', '.join(k for k in SAFE_KEYS if k != 'resume')} may change on resume; start a "
            "new run for anything else)")


def continue_command(run: Path) -> str:
    """The command that continues ``run``, pasteable into a POSIX shell: Hydra's quoting for a
    value holding ``=`` or ``,`` (sweep job directories), shell quoting on top."""
    from pdebm.cli import quote

    value = str(run)
    if any(c in value for c in "=,'\"\\ []{}()$*?:"):
        value = quote(value)
    arg = f"resume={value}"
    if arg == shlex.quote(arg) or any(c in arg for c in '"$`\\!'):
        return f"pdebm train {shlex.quote(arg)}"
    return f'pdebm train "{arg}"'  # double quotes keep Hydra's single quotes readable


def purge_metrics(path: Path, step: int) -> None:
    """Drop the rows of ``metrics.jsonl`` at or after ``step`` (written after the checkpoint the
    run resumes from), as TensorBoard's ``purge_step`` does for the events."""
    if not path.is_file():
        return
    keep = [ln for ln in path.read_text().splitlines()
            if ln.strip() and json.loads(ln).get("step", 0) < step]
    from pdebm.io import atomic_write_text

    atomic_write_text(path, "".join(ln + "\n" for ln in keep))

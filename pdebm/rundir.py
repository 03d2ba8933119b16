"""Run directories: claimed before Hydra starts, never written over, stubs removed.

:func:`claim_output_dir` creates the run's (or sweep's) directory exclusively when its name
comes from the config (two launches in the same instant never share one), refuses a directory
that already holds a run unless the command resumes that very run, and checks that it is
writable. After a run that fails before writing anything, :func:`remove_stub` removes what
Hydra left.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from pdebm.resume import quote


@dataclass
class Plan:
    """What :func:`preflight` decided: the arguments handed to Hydra, warnings to print, and the
    directory it made for the run (removed again if the run fails before writing anything)."""

    args: list[str]
    warnings: list[str] = field(default_factory=list)
    created: list[Path] = field(default_factory=list)   # directories made here, outermost first
    run_dir: Path | None = None                           # the run's (or sweep's) directory
    jobs: int = 0                                         # a sweep's number of jobs


def claim_output_dir(plan: Plan, cfg, parsed, multirun: bool, resumed: Path | None = None) -> None:
    """Create the run's (or sweep's) directory before Hydra does: exclusively when its name
    comes from the config (a ``-2``, ``-3`` ... suffix if taken), as given when the user set
    ``hydra.run.dir`` / ``hydra.sweep.dir``; then check that it is writable. A resumed run
    continues in its own directory ``resumed`` (never removed on failure)."""
    from hydra.core.utils import setup_globals
    from omegaconf import OmegaConf

    from pdebm.errors import ConfigError

    setup_globals()  # Hydra's ${now:...} resolver
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    for k in ("hydra.run.dir", "hydra.sweep.dir"):
        if any(o.get_key_element().lstrip("+") == k for o in parsed):
            value = OmegaConf.select(cfg, k)
            if value is None or not str(value).strip():
                raise ConfigError(f"{k} is empty: give a directory, or leave {k} out for a new "
                                  "one under outputs/")
    given = any(o.get_key_element().lstrip("+") == key for o in parsed)
    path = Path(str(OmegaConf.select(cfg, key)))
    if resumed is not None and (not given or path.resolve() == resumed.resolve()):
        given, path = True, resumed
        plan.args.append(f"{key}={quote(str(path))}")
    else:
        resumed = None
        held = holds_run(path) if given else None
        if held is not None:
            what = "sweep" if multirun or (path / "multirun.yaml").is_file() else "run"
            from pdebm.resume import continue_command

            raise ConfigError(f"{key}={path} already holds a {what} ({held}); pdebm never "
                              f"writes over a run: give a new directory, or continue it with "
                              f"{continue_command(path)}")
    try:
        if resumed is not None:
            pass
        elif given:
            plan.created = _makedirs(path)
        else:
            path, plan.created = claim(path)
            plan.args.append(f"{key}={quote(str(path))}")
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        remove_created(plan.created)
        plan.created = []
        reason = e.strerror or type(e).__name__
        raise ConfigError(f"cannot write the run directory {path}: {reason} (set {key}=<a "
                          "writable directory>, or run from a writable working directory)") from None
    plan.run_dir = path


RUN_MARKS = ("checkpoints/last.pt", "checkpoints/last_good.pt", "metrics.jsonl",
             "final_metrics.json", "multirun.yaml")
"""Files that show a directory holds a run (or a sweep); with ``events.out.tfevents.*``."""


def holds_run(d: Path, depth: int = 1) -> str | None:
    """What shows that ``d`` (or a directory in it, ``depth`` levels down: a sweep's jobs)
    holds a run: the first such file, relative to ``d``; None for a new or run-free directory."""
    if not d.is_dir():
        return None
    for mark in RUN_MARKS:
        if (d / mark).exists():
            return mark
    events = next(d.glob("events.out.tfevents.*"), None)
    if events is not None:
        return events.name
    if depth > 0:
        try:
            subdirs = sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))
        except OSError:
            return None
        for sub in subdirs:
            found = holds_run(sub, depth - 1)
            if found is not None:
                return f"{sub.name}/{found}"
    return None


def _makedirs(path: Path) -> list[Path]:
    """``mkdir -p``; returns the directories it made, outermost first."""
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    made = []
    try:
        for d in reversed(missing):
            d.mkdir()
            made.append(d)
    except FileExistsError:
        pass
    except OSError:
        remove_created(made)
        raise
    return made


def claim(path: Path) -> tuple[Path, list[Path]]:
    """Create ``path`` exclusively (``os.mkdir`` fails if it exists); if another run took that
    name, try ``path-2``, ``path-3``, ... Returns the directory and all directories made."""
    made = _makedirs(path.parent)
    try:
        for k in itertools.count(1):
            candidate = path if k == 1 else path.with_name(f"{path.name}-{k}")
            try:
                os.mkdir(candidate)
            except FileExistsError:
                continue
            return candidate, [*made, candidate]
    except OSError:
        remove_created(made)
        raise
    raise AssertionError("unreachable")


def remove_created(dirs: list[Path]) -> None:
    """Remove directories made by preflight that are still empty, innermost first."""
    for d in reversed(dirs):
        try:
            d.rmdir()
        except OSError:
            pass


def is_stub(d: Path) -> bool:
    """A run directory holding nothing but Hydra's ``.hydra/`` and empty log files: what a run
    that failed its config checks inside the trainer leaves behind."""
    for p in d.rglob("*"):
        if p.is_dir():
            continue
        rel = p.relative_to(d)
        if rel.parts[0] == ".hydra" or (p.suffix == ".log" and p.stat().st_size == 0):
            continue
        if len(rel.parts) == 1 and p.name == "multirun.yaml":
            continue
        return False
    return True


def remove_stub(plan: Plan) -> None:
    """After a failed run: remove the directory preflight made if it holds only a stub."""
    d = plan.run_dir
    if d is None or not plan.created or not d.is_dir():
        return
    for job in [p for p in d.iterdir() if p.is_dir() and p.name != ".hydra"]:
        if is_stub(job):
            shutil.rmtree(job, ignore_errors=True)
    if is_stub(d):
        shutil.rmtree(d, ignore_errors=True)
        remove_created(plan.created[:-1])

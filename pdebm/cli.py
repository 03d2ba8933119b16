"""The ``pdebm`` command: a dispatcher that pops the sub-command and hands the rest to Hydra.

    pdebm train [overrides]         one training run     (pdebm/train.py)
    pdebm train -m a=1,2 b=x,y      a sweep (multirun)
    pdebm train --cfg job           print the composed config
    pdebm train --help              config groups and their options
    pdebm eval  run=<dir> [...]     AIS log-likelihood of a finished run (images)
    pdebm sample run=<dir> [...]    long-run chains of a trained image model

Before Hydra starts, :func:`preflight` composes the config of every job (the full cartesian
product of a sweep) and checks it (:mod:`pdebm.validate`, and the sampler and schedule
constructors), so that bad input is reported in one line, exit status 2, before any job trains
and before any directory is made. It then claims the run directory (single run) or sweep
directory (``-m``) by creating it exclusively, checks that it is writable, and hands its name to
Hydra, so two launches in the same instant never share a directory.
"""

from __future__ import annotations

import itertools
import os
import shutil
import sys
import tempfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

USAGE = """usage: pdebm <command> [hydra overrides]

commands:
  train   train an energy-based model (pdebm train --help lists config groups and options)
  eval    evaluate a finished run: AIS log-likelihood and long-run samples (images)
  sample  long Langevin chains from a trained image model: grids, samples, diagnostics

examples:
  pdebm train sampler=particle dataset=8gaussians
  pdebm train -m sampler=particle,sgld,pcd seed=0,1,2
  tensorboard --logdir outputs
"""

COMMANDS = {"train": ("pdebm.train", "train"), "eval": ("pdebm.eval", "eval"),
            "sample": ("pdebm.sample", "sample")}
MULTIRUN_FLAGS = ("-m", "--multirun")


@dataclass
class Plan:
    """What :func:`preflight` decided: the arguments handed to Hydra, warnings to print, and the
    directory it made for the run (removed again if the run fails before writing anything)."""

    args: list[str]
    warnings: list[str] = field(default_factory=list)
    created: list[Path] = field(default_factory=list)   # directories made here, outermost first
    run_dir: Path | None = None                           # the run's (or sweep's) directory


def preflight(config_name: str, args: list[str]) -> Plan:
    """Compose and check every job; claim the output directory. Raises ConfigError (one line)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    import pdebm.config  # noqa: F401  (registers pdebm's resolvers on import)
    from pdebm.errors import ConfigError

    if any(a.startswith("-") and a not in MULTIRUN_FLAGS for a in args):
        return Plan(list(args))  # --help, --cfg, --info ...: Hydra handles those itself
    multirun = any(a in MULTIRUN_FLAGS for a in args)
    positional = [a for a in args if a not in MULTIRUN_FLAGS]
    for a in positional:
        if "=" not in a and not a.startswith("~"):
            raise ConfigError(f"override {a!r} has no value: write {a}=<value> "
                              f"(`pdebm {_command(config_name)} --cfg job` lists the keys)")
    parser = OverridesParser.create()
    try:
        parsed = parser.parse_overrides(positional)
    except HydraException as e:
        raise ConfigError(f"cannot parse overrides: {str(e).splitlines()[0]} (quote a value that "
                          "holds '=', ',' or spaces: key=\"'a=b,c'\")") from None
    # steps=1e3 -> steps=1000: integer keys given as integral floats, rewritten on the override
    # itself so that the saved config, the directory name and the progress bar all say 1000.
    rewritten = [_coerce(o) for o in parsed]
    if rewritten != [o.input_line for o in parsed]:
        positional = rewritten
        parsed = parser.parse_overrides(positional)
    sweeps = [o for o in parsed if o.is_sweep_override()]
    if sweeps and not multirun:
        o = sweeps[0]
        raise ConfigError(f"{o.input_line} gives several values: use -m to sweep "
                          f"(pdebm {_command(config_name)} -m {o.input_line}), or give one value")
    resumed = _resume(parsed, multirun) if config_name == "train" else None
    if resumed is not None:
        positional = resumed.overrides
        parsed = parser.parse_overrides(positional)
    try:
        jobs = _jobs(parsed)
    except HydraException as e:
        raise ConfigError(str(e).splitlines()[0]) from None
    cfgs = compose_and_check(config_name, jobs, multirun)
    plan = Plan([*(["-m"] if multirun else []), *positional])
    plan.warnings = _unread(config_name, parsed)
    if resumed is not None:
        from pdebm.config import job_config
        from pdebm.resume import refusal

        why = refusal(resumed.config, job_config(cfgs[0]))
        if why:
            raise ConfigError(why)
    if config_name == "train":
        _claim_output_dir(plan, cfgs[0], parsed, multirun,
                          resumed.run if resumed is not None and resumed.own else None)
    return plan


@dataclass
class Resumed:
    """A ``resume=`` request: the overrides to compose (the run's own, the user's safe ones, the
    checkpoint), the checkpoint's config, and the run directory it continues in."""

    overrides: list[str]
    config: dict | None
    run: Path
    own: bool  # the run was launched by the command: its overrides are known, continue in place


def _resume(parsed, multirun: bool) -> Resumed | None:
    """Read the checkpoint named by ``resume=`` (a run directory or a checkpoint file)."""
    from pdebm import checkpoint
    from pdebm.errors import ConfigError
    from pdebm.resume import merged_overrides, original_overrides, run_dir_of

    given = [o for o in parsed if o.get_key_element().lstrip("+") == "resume"]
    if not given or given[-1].value() in (None, "null"):
        return None
    if multirun:
        raise ConfigError("resume= continues one run, not a sweep: resume each job's directory "
                          "with its own `pdebm train resume=<job dir>`")
    ckpt = checkpoint.resolve(str(given[-1].value()))
    state = checkpoint.load(ckpt)
    run = run_dir_of(ckpt.resolve())
    mine = [o.input_line for o in parsed if o.get_key_element().lstrip("+") != "resume"]
    original = original_overrides(run)
    overrides = merged_overrides(original or [], mine) + [f"resume={quote(str(ckpt))}"]
    return Resumed(overrides, state.get("config"), run, original is not None)


def _command(config_name: str) -> str:
    return next((c for c, (_, n) in COMMANDS.items() if n == config_name), config_name)


def _coerce(o) -> str:
    """One override, with integral floats of integer keys written as integers."""
    from pdebm.validate import INTEGER_KEYS, as_integer

    key = o.get_key_element().lstrip("+~")
    if key not in INTEGER_KEYS or o.is_delete():
        return o.input_line
    prefix = o.get_key_element()[: len(o.get_key_element()) - len(key)]
    if o.is_sweep_override():
        if not o.is_discrete_sweep():
            return o.input_line
        values = list(o.sweep_string_iterator())
    else:
        values = [o.get_value_element_as_str()]
    out = []
    for v in values:
        try:
            int(v)
            out.append(v)  # already an integer
            continue
        except ValueError:
            pass
        try:
            f = float(v)
        except ValueError:
            out.append(v)  # not a number: validate() names the key and the value
            continue
        new = as_integer(key, f)
        out.append(str(new) if isinstance(new, int) else v)
    if out == values:
        return o.input_line
    return f"{prefix}{key}={','.join(out)}"


def _jobs(parsed) -> list[tuple[list[str], list[str]]]:
    """The jobs of a sweep in Hydra's order (BasicSweeper: cartesian product over the keys in
    order of first appearance); each job as (all its overrides, its swept overrides)."""
    lists: OrderedDict[str, list[str]] = OrderedDict()
    swept: set[str] = set()
    for o in parsed:
        key = o.get_key_element()
        if o.is_sweep_override():
            if not o.is_discrete_sweep():
                from hydra.errors import HydraException
                raise HydraException(f"{o.input_line}: only comma-separated sweeps are supported")
            lists[key] = [f"{key}={v}" for v in o.sweep_string_iterator()]
            swept.add(key)
        else:
            lists[key] = [o.input_line]
    keys = list(lists)
    jobs = []
    for combo in itertools.product(*lists.values()):
        jobs.append((list(combo), [c for k, c in zip(keys, combo) if k in swept]))
    return jobs


def compose_and_check(config_name: str, jobs, multirun: bool) -> list:
    """Compose every job and run the pure checks; the first failure is one ConfigError line
    that names the job."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from pdebm.config import CONFIG_DIR
    from pdebm.errors import ConfigError

    cfgs = []
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            for i, (overrides, swept) in enumerate(jobs):
                where = (f"sweep job {i} of {len(jobs)} ({' '.join(swept)}): "
                         if multirun and len(jobs) > 1 else "")
                try:
                    cfg = compose(config_name=config_name, overrides=overrides,
                                  return_hydra_config=True)
                    if config_name == "train":
                        _check_train(cfg)
                except ConfigError as e:
                    raise ConfigError(where + str(e)) from None
                except (HydraException, OmegaConfBaseException, ValueError, TypeError,
                        KeyError) as e:
                    raise ConfigError(where + describe(e, overrides)) from None
                cfgs.append(cfg)
    finally:
        GlobalHydra.instance().clear()
    return cfgs


def _check_train(cfg) -> None:
    """Everything about a ``train`` job that needs no data and no model: the trainer's keys, and
    the sampler's and schedule's own checks (their constructors are cheap and pure)."""
    from omegaconf import OmegaConf

    from pdebm.config import instantiate
    from pdebm.validate import validate

    job = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    validate(job)
    instantiate(job.sampler)
    instantiate(job.schedule, total_steps=job.steps)


def _unread(config_name: str, parsed) -> list[str]:
    """Warnings for appended top-level keys (``+stepz=10``) that no object reads."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from pdebm.config import CONFIG_DIR
    from pdebm.validate import GROUPS, unread_keys

    added = [o.input_line.lstrip("+") for o in parsed
             if (o.is_add() or o.is_force_add()) and o.get_key_element().lstrip("+").split("/")[0]
             not in GROUPS and "/" not in o.get_key_element()]
    if not added:
        return []
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            known = [k for k in compose(config_name=config_name) if k != "hydra"]
    finally:
        GlobalHydra.instance().clear()
    return unread_keys(added, [*known, *GROUPS])


def _claim_output_dir(plan: Plan, cfg, parsed, multirun: bool, resumed: Path | None = None) -> None:
    """Create the run's (or sweep's) directory before Hydra does: exclusively when its name
    comes from the config (a ``-2``, ``-3`` ... suffix if taken), as given when the user set
    ``hydra.run.dir`` / ``hydra.sweep.dir``; then check that it is writable. A resumed run
    continues in its own directory ``resumed`` (never removed on failure)."""
    from hydra.core.utils import setup_globals
    from omegaconf import OmegaConf

    from pdebm.errors import ConfigError

    setup_globals()  # Hydra's ${now:...} resolver
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    given = any(o.get_key_element().lstrip("+") == key for o in parsed)
    path = Path(str(OmegaConf.select(cfg, key)))
    if resumed is not None:
        given, path = True, resumed
        plan.args.append(f"{key}={quote(str(path))}")
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


def quote(value: str) -> str:
    """A Hydra override value as a quoted string (directory names hold ``=`` and ``,``)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


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


RENAMED = {f"sampler.{k}": f"langevin.{k}" for k in ("step_size", "noise_scale", "mala", "grad_clip")}
"""Keys that moved (a user's old command gets the new name in its error line)."""


def describe(e: Exception, overrides: list[str]) -> str:
    """Hydra's multi-line composition errors, condensed to one line."""
    msg = str(e)
    lines = [ln.strip() for ln in msg.splitlines() if ln.strip()]
    if "Could not find" in msg and "Available options" in msg:
        group = msg.split("Could not find '", 1)[1].split("/", 1)[0]
        opts = [ln for ln in lines[lines.index(next(ln for ln in lines if ln.startswith("Available options"))) + 1:]
                if not ln.startswith("Config search path") and ":" not in ln][:40]
        bad = next((o for o in overrides if o.lstrip("+~").startswith(group + "=")), group)
        return f"unknown option {bad}: {group} must be one of {', '.join(opts)}"
    if "Could not override" in msg or "not in struct" in msg:
        key = msg.split("'", 2)[1] if "'" in msg else "?"
        if key in RENAMED:
            return f"'{key}' is now '{RENAMED[key]}' (the Langevin kernel's settings are one node)"
        return f"unknown config key '{key}' (see `pdebm train --cfg job` for the available keys)"
    return lines[0] if lines else type(e).__name__


def main(argv: list[str] | None = None) -> None:
    from pdebm.errors import ConfigError
    from pdebm.stop import STOP

    STOP.install()  # from here on a signal ends in one line, never a traceback (pdebm/stop.py)
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        raise SystemExit(0 if argv else 2)
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"pdebm: error: unknown command {command!r} (choose from {', '.join(COMMANDS)})",
              file=sys.stderr)
        raise SystemExit(2)
    module_name, config_name = COMMANDS[command]
    try:
        plan = preflight(config_name, rest)
    except ConfigError as e:
        print(f"pdebm: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    for w in plan.warnings:
        print(f"pdebm: warning: {w}", file=sys.stderr)
    import importlib

    module = importlib.import_module(module_name)
    # Hydra reads sys.argv; keep argv[0] so that hydra.job.name stays the command's module name.
    sys.argv = [sys.argv[0]] + plan.args
    ok = False
    try:
        module.main()
        ok = True
    except SystemExit as e:
        ok = e.code in (None, 0)
        raise
    finally:
        if not ok:
            remove_stub(plan)


if __name__ == "__main__":
    main()

"""The checks before any work: compose the config of every job (the full cartesian product of a
sweep) and check it (:mod:`pdebm.validate`, the dataset/preset fit, the sampler's and schedule's
constructors), read what a ``resume=`` names, then claim the output directory
(:mod:`pdebm.rundir`). Bad input is one :class:`~pdebm.errors.ConfigError` line, before any job
trains and before any directory is made.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from pdebm.resume import quote
from pdebm.rundir import Plan, claim_output_dir

MULTIRUN_FLAGS = ("-m", "--multirun")


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
    positional = [_pasted_path(a) for a in _run_positional(config_name, positional)]
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
        multirun = multirun or resumed.sweep
    try:
        jobs = _jobs(parsed)
    except HydraException as e:
        raise ConfigError(str(e).splitlines()[0]) from None
    cfgs = compose_and_check(config_name, jobs, multirun)
    plan = Plan([*(["-m"] if multirun else []), *positional])
    plan.warnings = _unread(config_name, parsed)
    if resumed is not None and not resumed.sweep:
        from pdebm.config import job_config
        from pdebm.resume import refusal

        why = refusal(resumed.config, job_config(cfgs[0]), resumed.given)
        if why:
            raise ConfigError(why)
        plan.warnings += resumed.warnings
    if config_name == "train":
        claim_output_dir(plan, cfgs[0], parsed, multirun,
                          resumed.run if resumed is not None and resumed.own else None)
        if multirun:
            plan.jobs = len(jobs)
            if _requeues(cfgs[0]) and not any(_is_resume(o) for o in parsed):
                # submitit requeues a preempted job with its own arguments (its checkpoint()
                # hook): resume=auto makes the requeued job continue from its checkpoint
                plan.args.append("resume=auto")
    return plan


def _is_resume(o) -> bool:
    return o.get_key_element().lstrip("+~") == "resume"


def _requeues(cfg) -> bool:
    """Whether the sweep's launcher requeues preempted jobs (hydra-submitit-launcher)."""
    from omegaconf import OmegaConf

    return "submitit" in str(OmegaConf.select(cfg, "hydra.launcher._target_", default="") or "")


RUN_KEYS = ("run", "resume", "hydra.run.dir", "hydra.sweep.dir")
"""Keys whose value is a path: a pasted path holding ``=`` or ``,`` is quoted for Hydra."""


def _run_positional(config_name: str, args: list[str]) -> list[str]:
    """``pdebm eval <run dir>`` (any command but ``train``, whose config has a ``run`` key): a
    lone word that is no override and names an existing path becomes ``run=<that path>``."""
    if config_name == "train":
        return args
    from pdebm.errors import ConfigError

    out = []
    for a in args:
        if "=" not in a.split("/", 1)[0] and not a.startswith(("~", "+")):
            if not Path(a).expanduser().exists():
                raise ConfigError(f"{a}: no such run directory or checkpoint (pdebm "
                                  f"{_command(config_name)} <run dir> [key=value ...])")
            a = f"run={quote(a)}"
        out.append(a)
    return out


def _pasted_path(arg: str) -> str:
    """``run=outputs/.../lr=0.01,seed=1`` as pasted: the value names an existing path but would
    parse as a sweep or a nested override, so it is quoted (``run='outputs/...'``)."""
    key, sep, value = arg.partition("=")
    if (not sep or key.lstrip("+") not in RUN_KEYS or not value or value[0] in "'\""
            or not any(c in value for c in "=,[]{}() '")):
        return arg
    if key.lstrip("+") in ("run", "resume") and not Path(value).expanduser().exists():
        return arg
    return f"{key}={quote(value)}"


@dataclass
class Resumed:
    """A ``resume=`` request: the overrides to compose (the run's own or, when those are missing
    or no longer compose to the checkpoint's config, overrides rebuilt from the checkpoint's
    config; then the user's, then the checkpoint), the checkpoint's config, and the run (or
    sweep) directory it continues in."""

    overrides: list[str]
    config: dict | None
    run: Path
    own: bool              # continue in the run's own directory (a checkpoint of a run directory)
    given: list[str] = field(default_factory=list)     # the user's own overrides
    warnings: list[str] = field(default_factory=list)  # e.g. damaged rows of metrics.jsonl
    sweep: bool = False    # resume=<sweep dir>: the sweep again, every job with resume=auto


def _resume(parsed, multirun: bool) -> Resumed | None:
    """Read what ``resume=`` names: a run directory, a checkpoint file or a sweep directory."""
    from pdebm import checkpoint
    from pdebm.errors import ConfigError
    from pdebm.resume import (AUTO, is_sweep_dir, merged_overrides, original_overrides,
                              read_metrics, run_dir_of)

    given = [o for o in parsed if o.get_key_element().lstrip("+") == "resume"]
    if not given or given[-1].value() in (None, "null", AUTO):
        return None
    value = str(given[-1].value())
    mine = [o.input_line for o in parsed if o.get_key_element().lstrip("+") != "resume"]
    if is_sweep_dir(Path(value).expanduser()):
        return _resume_sweep(Path(value).expanduser(), mine)
    if multirun:
        raise ConfigError("resume= of one run takes no -m; to continue a whole sweep, give its "
                          "directory: pdebm train resume=<sweep dir>")
    ckpt = checkpoint.resolve(value)
    state = checkpoint.load(ckpt)
    saved = state.get("config")
    own = ckpt.resolve().parent.name == "checkpoints"
    run = run_dir_of(ckpt.resolve())
    original = original_overrides(run) if own else None
    overrides = None
    with _composer("train") as compose_job:
        if original is not None:
            overrides = merged_overrides(original, mine)
            if saved is not None and _unexplained(saved, compose_job, overrides, mine):
                overrides = None  # the record no longer composes to the run: the checkpoint rules
        if overrides is None and saved is not None:
            from pdebm.resume import overrides_from_config

            overrides = merged_overrides(overrides_from_config(saved, compose_job), mine)
    if overrides is None:
        overrides = list(mine)
    warnings = []
    if own:
        _, damage = read_metrics(run / "metrics.jsonl", int(state["step"]))
        warnings = [damage] if damage else []
    return Resumed([*overrides, f"resume={quote(str(ckpt))}"], saved, run, own, mine, warnings)


def _unexplained(saved: dict, compose_job, overrides: list[str], mine: list[str]) -> bool:
    """Whether ``overrides`` compose to a config that differs from the checkpoint's in a key the
    user did not give (or do not compose at all)."""
    from pdebm.checkpoint_diff import config_diff
    from pdebm.resume import _key

    try:
        job = compose_job(overrides)
    except Exception:
        return True
    keys = [_key(o) for o in mine]
    for d in config_diff(saved, job):
        k = d.split(":", 1)[0]
        if not any(k == u or k.startswith(u + ".") or u == "experiment" for u in keys):
            return True
    return False


def _resume_sweep(root: Path, mine: list[str]) -> Resumed:
    """``resume=<sweep dir>``: the sweep's own overrides (``multirun.yaml``), its launcher, and
    ``resume=auto`` for every job: a finished job is kept, a stopped one continues from its
    checkpoint, one that never started runs."""
    from omegaconf import OmegaConf

    from pdebm.checkpoint_diff import SAFE_KEYS
    from pdebm.errors import ConfigError
    from pdebm.resume import AUTO, MULTIRUN, SAFE_SHORT, _key, merged_overrides

    try:
        record = OmegaConf.load(root / MULTIRUN).hydra.overrides
        task, launch = [str(o) for o in record.task], [str(o) for o in record.hydra]
    except Exception as e:
        raise ConfigError(f"cannot read the sweep's record {root / MULTIRUN}: "
                          f"{type(e).__name__}") from None
    bad = [o for o in mine if _key(o) not in SAFE_KEYS and not _key(o).startswith("hydra")]
    if bad:
        raise ConfigError(f"resume=<sweep dir> continues the sweep as it was launched: {bad[0]} "
                          f"cannot change (only {SAFE_SHORT} may change on resume)")
    task = [o for o in task if _key(o) != "resume"]
    launch = [o for o in launch if _key(o) not in ("hydra.sweep.dir", "hydra.mode")]
    overrides = [*merged_overrides(task, mine), *launch, f"resume={AUTO}"]
    return Resumed(overrides, None, root, True, mine, sweep=True)


class _composer:
    """``with _composer("train") as compose:``; ``compose(overrides)`` -> the job config as
    plain data (no checks)."""

    def __init__(self, config_name: str) -> None:
        self.config_name = config_name

    def __enter__(self):
        from hydra import compose, initialize_config_dir
        from hydra.core.global_hydra import GlobalHydra

        from pdebm.config import CONFIG_DIR, job_config

        GlobalHydra.instance().clear()
        self._ctx = initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3")
        self._ctx.__enter__()
        return lambda overrides: job_config(compose(config_name=self.config_name,
                                                    overrides=list(overrides)))

    def __exit__(self, *exc) -> None:
        from hydra.core.global_hydra import GlobalHydra

        self._ctx.__exit__(*exc)
        GlobalHydra.instance().clear()


def _command(config_name: str) -> str:
    """The command of a config (each command's config is named after it)."""
    return config_name


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
    _check_fit(cfg)
    validate(job)
    instantiate(job.sampler)
    instantiate(job.schedule, total_steps=job.steps)


def _kind(dataset_option: str | None) -> str | None:
    """``2d`` or ``images`` for a dataset option (from its YAML's ``_target_``), else None."""
    from omegaconf import OmegaConf

    from pdebm.config import CONFIG_DIR

    p = CONFIG_DIR / "dataset" / f"{dataset_option}.yaml"
    if not dataset_option or not p.is_file():
        return None
    target = str(OmegaConf.load(p).get("_target_", ""))
    return "images" if ".images." in target else "2d" if ".toy2d." in target else None


def _keys(dataset_option: str | None) -> set[str]:
    """The settings of a dataset option (two IDX sets share theirs: 28×28 images from files)."""
    from omegaconf import OmegaConf

    from pdebm.config import CONFIG_DIR

    p = CONFIG_DIR / "dataset" / f"{dataset_option}.yaml"
    return set(OmegaConf.load(p)) - {"_target_"} if dataset_option and p.is_file() else set()


def _preset_dataset(experiment: str, _seen: frozenset = frozenset()) -> str | None:
    """The dataset option an experiment preset selects (its ``override /dataset``, or that of the
    preset it builds on: a plain ``- <preset>`` entry of its defaults list)."""
    from omegaconf import OmegaConf

    from pdebm.config import CONFIG_DIR

    p = CONFIG_DIR / "experiment" / f"{experiment}.yaml"
    if not p.is_file() or experiment in _seen:
        return None
    parents = []
    for entry in OmegaConf.load(p).get("defaults", []) or []:
        if isinstance(entry, dict) or OmegaConf.is_dict(entry):
            for k, v in entry.items():
                if str(k).replace("override ", "").strip().lstrip("/") == "dataset":
                    return str(v)
        elif isinstance(entry, str) and entry != "_self_":
            parents.append(entry)
    for parent in parents:
        found = _preset_dataset(parent, _seen | {experiment})
        if found is not None:
            return found
    return None


def presets_for(dataset_option: str, kind: str | None = None) -> list[str]:
    """The experiment presets made for ``dataset_option`` (or, given ``kind``, for any dataset
    of that kind), quick ones first and the papers' protocols last."""
    from pdebm.config import CONFIG_DIR

    names = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))
    own = [n for n in names if _preset_dataset(n) == dataset_option]
    similar = [n for n in names if kind is not None and n not in own
               and _kind(_preset_dataset(n)) == kind and "quick" in n]
    similar.sort(key=lambda n: _keys(_preset_dataset(n)) != _keys(dataset_option))  # same layout first
    quick = [n for n in own if "quick" in n]
    rest = sorted((n for n in own if n not in quick), key=lambda n: (n.startswith("paper"), n))
    return [*quick, *([] if quick else similar), *rest] or sorted(
        (n for n in names if kind is not None and _kind(_preset_dataset(n)) == kind),
        key=lambda n: (n.startswith("paper"), "quick" not in n, n))


def _use(presets: list[str], dataset: str) -> str:
    """``experiment=X`` (with ``dataset=`` when X is made for another set), and up to two more."""
    words = [f"experiment={p}" + (f" dataset={dataset}" if _preset_dataset(p) != dataset else "")
             for p in presets[:3]]
    return words[0] + (f" (or {', '.join(words[1:])})" if len(words) > 1 else "")


def _check_fit(cfg) -> None:
    """A dataset and the settings around it that cannot train together, in the user's words:
    an image dataset with the 2D defaults (the MLP energy, no preset), or a preset made for the
    other kind of data (``experiment=paper_2d dataset=digits``)."""
    from omegaconf import OmegaConf

    from pdebm.errors import ConfigError

    choices = OmegaConf.select(cfg, "hydra.runtime.choices") or {}
    dataset, experiment = choices.get("dataset"), choices.get("experiment")
    kind = _kind(dataset)
    if kind is None:
        return
    if experiment in (None, "null"):
        if kind == "images" and choices.get("energy") == "mlp":
            use = presets_for(dataset, kind)
            hint = f"use {_use(use, dataset)}" if use else "choose energy=conv and image settings"
            raise ConfigError(f"dataset={dataset} is an image data set, and the defaults are made "
                              f"for 2D data (the MLP energy, langevin.step_size=0.01): {hint}, "
                              "which sets the image model up")
        return
    made_for = _preset_dataset(str(experiment))
    preset_kind = _kind(made_for)
    if preset_kind is not None and preset_kind != kind:
        words = {"2d": "a 2D data set", "images": "an image data set"}
        use = presets_for(dataset, kind)
        hint = f"use {_use(use, dataset)}" if use else "leave experiment= out"
        raise ConfigError(f"experiment={experiment} is made for {words[preset_kind]} "
                          f"(dataset={made_for}), but dataset={dataset} is {words[kind]}: {hint}")


def _short_override(line: str, limit: int = 60) -> str:
    """An override as shown in a warning: a long value cut, with its length."""
    key, sep, value = line.partition("=")
    if len(line) <= limit or not sep:
        return line
    return f"{key}={value[:20]}... ({len(value)} characters)"


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
    return [" ".join(w.split()) for w in
            unread_keys([_short_override(a) for a in added], [*known, *GROUPS])]


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

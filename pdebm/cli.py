"""The ``pdebm`` command: a dispatcher that pops the sub-command and hands the rest to Hydra.

    pdebm train [overrides]         one training run     (pdebm/train.py)
    pdebm train -m a=1,2 b=x,y      a sweep (multirun)
    pdebm train --cfg job           print the composed config
    pdebm train --help              config groups and their options
    pdebm eval  run=<dir> [...]     AIS log-likelihood of a finished run (images)

Before Hydra starts, every override is composed once (sweep values one at a time) so that an
unknown key or option is reported in one line, before any work starts.
"""

from __future__ import annotations

import sys

USAGE = """usage: pdebm <command> [hydra overrides]

commands:
  train   train an energy-based model (pdebm train --help lists config groups and options)
  eval    evaluate a finished run: AIS log-likelihood and long-run samples (images)

examples:
  pdebm train sampler=particle dataset=8gaussians
  pdebm train -m sampler=particle,sgld,pcd seed=0,1,2
  tensorboard --logdir outputs
"""

COMMANDS = {"train": ("pdebm.train", "train"), "eval": ("pdebm.eval", "eval")}


def preflight(config_name: str, args: list[str]) -> str | None:
    """Compose the config with the user's overrides; return a one-line error or None."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from pdebm.config import CONFIG_DIR  # registers pdebm's resolvers on import
    overrides = [a for a in args if not a.startswith("-") and "=" in a]
    if any(a.startswith("--") for a in args if a not in ("--multirun",)):
        return None  # --help, --cfg, --info ...: Hydra handles those itself
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as e:
        return f"cannot parse overrides: {str(e).splitlines()[0]}"
    # One composition per sweep value, the other overrides at their first value.
    firsts, variants = [], []
    for o in parsed:
        if o.is_sweep_override():
            values = list(o.sweep_string_iterator())
            firsts.append(f"{o.get_key_element()}={values[0]}")
            variants.append((len(firsts) - 1, [f"{o.get_key_element()}={v}" for v in values[1:]]))
        else:
            firsts.append(o.input_line)
    trials = [firsts] + [firsts[:i] + [v] + firsts[i + 1:] for i, vs in variants for v in vs]
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            for trial in trials:
                try:
                    compose(config_name=config_name, overrides=trial)
                except (HydraException, OmegaConfBaseException) as e:
                    return describe(e, trial)
    finally:
        GlobalHydra.instance().clear()
    return None


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
        return f"unknown config key '{key}' (see `pdebm train --cfg job` for the available keys)"
    return lines[0] if lines else type(e).__name__


def main(argv: list[str] | None = None) -> None:
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
    error = preflight(config_name, rest)
    if error:
        print(f"pdebm: error: {error}", file=sys.stderr)
        raise SystemExit(2)
    import importlib

    module = importlib.import_module(module_name)
    # Hydra reads sys.argv; keep argv[0] so that hydra.job.name stays the command's module name.
    sys.argv = [sys.argv[0]] + rest
    module.main()


if __name__ == "__main__":
    main()

"""Where the config tree lives, and the OmegaConf resolvers it uses."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from omegaconf import OmegaConf


def _config_dir() -> Path:
    """``conf/`` of a source checkout or editable install, else the copy shipped in the wheel
    as the package ``pdebm.conf``. Hydra needs an absolute directory."""
    checkout = Path(__file__).resolve().parent.parent / "conf"
    if (checkout / "train.yaml").is_file():
        return checkout
    spec = importlib.util.find_spec("pdebm.conf")
    if spec is not None and spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0]).resolve()
    raise FileNotFoundError("pdebm's config tree (conf/) is missing from this installation")


CONFIG_DIR = _config_dir()


def sweep_subdir(override_dirname: str, seed: int) -> str:
    """Name of a sweep job's directory: its overrides (seed excluded) then ``seed=N``, so seeds
    never overwrite each other and TensorBoard shows readable run names."""
    return f"{override_dirname},seed={seed}" if override_dirname else f"seed={seed}"


def run_name(time: str, dataset: str = "", sampler: str = "", overrides: str = "",
             seed: int | None = None) -> str:
    """Name of a single run's directory: ``<HH-MM-SS.mmm>_<dataset>,<sampler>,<overrides>,seed=N``
    (or only the time, for a sweep's root). ``time`` comes as ``%H-%M-%S.%f`` and is cut to
    milliseconds; the CLI creates the directory exclusively, so equal names get a ``-2`` suffix."""
    import re

    stamp = time[:-3] if "." in time else time
    if not dataset:
        return stamp
    rest = re.sub(r"(^|,)(dataset|sampler)=[^,]*", "", overrides).strip(",")
    parts = [dataset, sampler, *([rest] if rest else []), *([f"seed={seed}"] if seed is not None else [])]
    name = f"{stamp}_{','.join(p for p in parts if p)}"
    if len(name) > 160:  # file names stop at 255 bytes: cut, and keep runs apart by a hash
        import hashlib
        name = f"{name[:150]}~{hashlib.sha1(name.encode()).hexdigest()[:8]}"
    return name


def register_resolvers() -> None:
    """Register pdebm's OmegaConf resolvers (idempotent; done once on import of this module)."""
    if not OmegaConf.has_resolver("pdebm_subdir"):
        OmegaConf.register_new_resolver("pdebm_subdir", sweep_subdir)
    if not OmegaConf.has_resolver("pdebm_run_name"):
        OmegaConf.register_new_resolver("pdebm_run_name", run_name)


register_resolvers()


def instantiate(node, **kwargs):
    """``hydra.utils.instantiate`` after checking every key of ``node`` against the annotations
    of the constructor it names (:func:`pdebm.schema.check_node`: types, choices, declared
    ranges; an integral float for an ``int`` is passed as an int). It lets a
    :class:`~pdebm.errors.ConfigError` raised by a constructor through unchanged (Hydra wraps it
    in a multi-line InstantiationException), and reports any other failure as one line that
    names the innermost cause (a wrong argument name: ``TypeError: ... got an unexpected keyword
    argument 'x'``)."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate as hydra_instantiate

    from pdebm.errors import ConfigError
    from pdebm.schema import check_node

    checked = check_node(node, skip=kwargs) if hasattr(node, "keys") and "_target_" in node else {}
    try:
        return hydra_instantiate(node, **{**checked, **kwargs})
    except InstantiationException as e:
        cause = e.__cause__
        while cause is not None and not isinstance(cause, ConfigError) and cause.__cause__ is not None:
            cause = cause.__cause__
        if isinstance(cause, ConfigError):
            raise cause from None
        raise ConfigError(f"cannot build {node.get('_target_', '?')}: {innermost(e)}") from None


def innermost(e: BaseException) -> str:
    """``Type: message`` of the deepest ``__cause__`` of ``e``, on one line."""
    while e.__cause__ is not None:
        e = e.__cause__
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return f"{type(e).__name__}: {' '.join(lines)}" if lines else type(e).__name__


def job_config(cfg) -> dict:
    """The run's own settings as plain data (without the ``hydra`` node): what a checkpoint
    stores as ``config`` and what a resume is compared against."""
    return OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]),
                                  resolve=True)


def compose_config(overrides: list[str], run_dir: str | Path | None = None,
                   config_name: str = "train"):
    """Compose the config tree with overrides, outside the CLI (tests, benchmark scripts), and
    register it as the current HydraConfig so that ``train(cfg)`` finds its run directory."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=list(overrides), return_hydra_config=True)
    if run_dir is not None:
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(run_dir)
    HydraConfig.instance().set_config(cfg)
    return cfg

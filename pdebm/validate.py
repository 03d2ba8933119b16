"""Pure checks of the trainer's own settings (the top-level keys of ``conf/train.yaml`` and its
``eval:`` node): types and ranges, before any object is built or any directory is made.

The config groups (dataset, energy, sampler, schedule) and the ``langevin:`` node are checked
against their constructors' annotations (:func:`validate_groups`, :mod:`pdebm.schema`); their
constructors check what annotations cannot say. Everything here raises
:class:`~pdebm.errors.ConfigError` with one line that names the key, the value and what is
allowed. Used by the CLI for every job of a sweep before any job starts, and by the trainer's
build.

Integer keys given as an integral float (``steps=1e3``) are turned into integers by
:func:`coerce_integers` (the CLI does it on the override itself, so the run's saved config,
directory name and progress bar say ``1000``); a non-integral value (``batch_size=1.5``) is refused.
"""

from __future__ import annotations

import difflib
from typing import Any, Iterable

from pdebm.errors import check
from pdebm.schema import check_node, integer, is_number, number, show

# Keys that count things: integers only (an integral float is coerced by coerce_integers).
INTEGER_KEYS = ("seed", "num_threads", "steps", "batch_size", "log_every", "eval_every",
                "ckpt_every", "eval.resolution", "eval.lag_bins", "eval.mmd_points", "eval.n_plot")
# The 2D quadrature grid: fewer cells per side than this and log Z by quadrature misses the toy
# densities' modes (eval.resolution=1 reported a test NLL below the data entropy).
MIN_RESOLUTION = 32
# The sampler-lag KL compares two histograms on lag_bins × lag_bins; one bin per side is a
# KL of 0 whatever the sampler does.
MIN_LAG_BINS = 2
# Top-level keys that belong to Hydra's groups rather than to the trainer.
GROUPS = ("dataset", "energy", "sampler", "schedule", "experiment")


def _get(cfg: Any, key: str) -> Any:
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def validate(cfg: Any) -> None:
    """Check the trainer's settings of a composed ``train`` config; raise one ConfigError line."""
    integer("seed", cfg.seed, minimum=0)
    check(isinstance(cfg.device, str) and cfg.device != "",
          f"device must be a name such as auto, cpu or cuda:0, got {show(cfg.device)}")
    integer("num_threads", cfg.num_threads, minimum=1, nullable=True)
    integer("steps", cfg.steps, minimum=1)
    number("budget", cfg.budget, low=0, nullable=True)
    integer("batch_size", cfg.batch_size, minimum=1)
    number("lr", cfg.lr, low=0)
    betas = cfg.betas
    check(not isinstance(betas, (str, bytes)) and hasattr(betas, "__len__") and len(betas) == 2
          and all(is_number(b) and 0 <= b < 1 for b in betas),
          f"betas must be two numbers in [0, 1), got {show(betas)}")
    number("weight_decay", cfg.weight_decay, low=0, strict=False)
    number("energy_reg", cfg.energy_reg, low=0, strict=False)
    number("grad_clip", cfg.grad_clip, low=0, nullable=True)
    integer("log_every", cfg.log_every, minimum=1)
    integer("eval_every", cfg.eval_every, minimum=1)
    integer("ckpt_every", cfg.ckpt_every, minimum=0)
    check(cfg.resume is None or (isinstance(cfg.resume, str) and cfg.resume != ""),
          f"resume must be a checkpoint file or run directory, got {show(cfg.resume)}")
    check(isinstance(cfg.progress, bool), f"progress must be true or false, got {show(cfg.progress)}")
    number("divergence.energy_factor", cfg.divergence.energy_factor, low=1, nullable=True)
    number("divergence.nll_margin", cfg.divergence.nll_margin, low=0, nullable=True)
    validate_eval(cfg.eval)
    validate_groups(cfg)


def validate_groups(cfg: Any) -> None:
    """Every key of every group against its constructor's annotations (:mod:`pdebm.schema`):
    types, choices and declared ranges, before anything is built. The ``langevin:`` node, and a
    sampler's own ``kernel:`` node, against :class:`~pdebm.samplers.langevin.LangevinConfig`
    (``n_steps`` is the sampler's key)."""
    from pdebm.samplers.langevin import LangevinConfig

    for group in (*GROUPS, "eval"):
        node = cfg.get(group)
        if hasattr(node, "keys") and "_target_" in node:
            check_node(node)
    for node in (cfg.get("langevin"), cfg.sampler.get("kernel") if "sampler" in cfg else None):
        if hasattr(node, "keys"):
            check_node(node, LangevinConfig, skip=("n_steps",))


def validate_eval(ev: Any) -> None:
    """The ``eval:`` node: quadrature box and grid, lag bins, MMD and plot sizes."""
    number("eval.low", ev.low)
    number("eval.high", ev.high)
    check(ev.high > ev.low, f"eval.low must be < eval.high, got [{ev.low}, {ev.high}]")
    integer("eval.resolution", ev.resolution, minimum=MIN_RESOLUTION)
    integer("eval.lag_bins", ev.lag_bins, minimum=MIN_LAG_BINS)
    # The model's mass per lag bin is summed from grid cells: every bin must hold the same whole
    # number of cells, or bins of different areas are compared with the samples' histogram.
    check(ev.resolution % ev.lag_bins == 0,
          f"eval.resolution={ev.resolution} is too coarse for eval.lag_bins={ev.lag_bins}: the "
          f"resolution must be a multiple of lag_bins (e.g. eval.resolution="
          f"{max(ev.lag_bins, -(-ev.resolution // ev.lag_bins) * ev.lag_bins)})")
    integer("eval.mmd_points", ev.mmd_points, minimum=1)
    bws = ev.mmd_bandwidths
    check(not isinstance(bws, (str, bytes)) and hasattr(bws, "__len__") and len(bws) > 0
          and all(is_number(b) and b > 0 for b in bws),
          f"eval.mmd_bandwidths must be a list of numbers > 0, got {show(bws)}")
    integer("eval.n_plot", ev.n_plot, minimum=1)


def as_integer(key: str, value: Any) -> Any:
    """An integral float for an integer key becomes an int (``1e3`` -> ``1000``); anything else
    is returned unchanged (and judged by :func:`validate`)."""
    if key in INTEGER_KEYS and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def coerce_integers(cfg: Any) -> list[str]:
    """Replace integral floats of :data:`INTEGER_KEYS` in ``cfg`` by ints, in place; returns the
    keys changed. For configs composed outside the CLI (which rewrites the overrides itself)."""
    from omegaconf import open_dict

    changed = []
    for key in INTEGER_KEYS:
        parent_key, _, leaf = key.rpartition(".")
        try:
            parent = _get(cfg, parent_key) if parent_key else cfg
            value = parent[leaf]
        except (KeyError, AttributeError):
            continue
        new = as_integer(key, value)
        if new is not value:
            with open_dict(parent):
                parent[leaf] = new
            changed.append(key)
    return changed


def unread_keys(added: Iterable[str], known: Iterable[str]) -> list[str]:
    """Messages for appended top-level keys (``+stepz=10``) that no object reads, each with the
    closest known key when there is one."""
    known = sorted(set(known))
    out = []
    for key in added:
        top = key.split("=", 1)[0].split(".", 1)[0]
        if top in known or top == "hydra":
            continue
        close = difflib.get_close_matches(top, known, n=1)
        out.append(f"+{key} adds a key that nothing reads"
                   + (f" (did you mean {close[0]}?)" if close else ""))
    return out

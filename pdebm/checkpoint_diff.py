"""Say what differs between a checkpoint and the run that tries to load it, in one line.

``load_state_dict`` reports a mismatch as a multi-line message cut at a colon (``... for
MLPEnergy:``) or as a bare key (``'buffer'``). The checkpoint stores the run's composed config
(``state["config"]``), so the useful answer is the config keys that differ::

    checkpoint does not match this config: energy.hidden: checkpoint 300, config 100

and, when the configs agree but the tensors do not (a code change), the state entries that differ::

    checkpoint does not match this config: energy.net.0.weight: checkpoint shape (300, 2), model shape (100, 2)
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

# Keys a resumed run may change without changing what it computes (phase B of issue 12 refuses
# any other difference when `resume=` is combined with overrides).
SAFE_KEYS = ("steps", "budget", "log_every", "eval_every", "ckpt_every", "progress", "device",
             "num_threads", "divergence", "resume")
MAX_SHOWN = 4  # differences listed in the one line; the rest are counted


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts (a config, a state_dict with nested parts) as ``{"a.b.c": leaf}``."""
    if isinstance(node, Mapping):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: node}


def _show(v: Any) -> str:
    shape = getattr(v, "shape", None)
    if shape is not None:
        return f"shape {tuple(shape)}"
    if isinstance(v, str):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_show(x) for x in v) + "]"
    return str(v)


def config_diff(saved: Mapping, current: Mapping, ignore: Iterable[str] = SAFE_KEYS) -> list[str]:
    """Differences between the checkpoint's config and this run's, as
    ``"energy.hidden: checkpoint 300, config 100"``; keys under ``ignore`` (and ``hydra``) are
    left out. A key the config has and the checkpoint lacks is an option added to pdebm after the
    checkpoint was written: it is not a difference (an added option's default keeps the behaviour
    that came before it, docs/architecture.md). A key only the checkpoint has reads ``(absent)``."""
    ignore = tuple(ignore)
    a, b = flatten(saved), flatten(current)
    out = []
    for key in sorted(a):  # keys only the config has are options added since: not differences
        top = key.split(".", 1)[0]
        if top == "hydra" or key in ignore or top in ignore:
            continue
        va, vb = a[key], b.get(key, _ABSENT)
        if va != vb:
            out.append(f"{key}: checkpoint {_show(va)}, config {_show(vb)}")
    return out


def state_diff(name: str, saved: Mapping, current: Mapping) -> list[str]:
    """Differences between two state dicts (nested dicts allowed): entries on one side only,
    tensors of different shapes, and plain values of different types."""
    a, b = flatten(saved, name), flatten(current, name)
    out = []
    for key in sorted(set(a) | set(b)):
        if key not in b:
            out.append(f"{key}: in the checkpoint, not in this {name}")
        elif key not in a:
            out.append(f"{key}: missing from the checkpoint")
        else:
            sa, sb = getattr(a[key], "shape", None), getattr(b[key], "shape", None)
            if (sa is None) != (sb is None) or (sa is not None and tuple(sa) != tuple(sb)):
                out.append(f"{key}: checkpoint {_show(a[key])}, model {_show(b[key])}")
    return out


def mismatch_message(saved_config: Mapping | None, current_config: Mapping,
                     saved_states: Mapping[str, Mapping], current_states: Mapping[str, Mapping],
                     error: BaseException | None = None) -> str:
    """One line for a checkpoint that does not load: the config keys that differ first (the
    cause a user can act on), else the state entries that differ, else the loader's own first
    line. ``saved_states``/``current_states`` map a part name (``energy``, ``sampler`` ...) to its
    state dict."""
    diffs = config_diff(saved_config, current_config) if saved_config is not None else []
    if not diffs:
        for part, cur in current_states.items():
            if part in saved_states and isinstance(saved_states[part], Mapping):
                diffs += state_diff(part, saved_states[part], cur)
    if not diffs:
        first = str(error).strip().splitlines()[0] if error is not None and str(error).strip() else ""
        diffs = [f"{type(error).__name__}: {first}" if error is not None else "unknown difference"]
    shown = "; ".join(diffs[:MAX_SHOWN])
    more = f" (and {len(diffs) - MAX_SHOWN} more)" if len(diffs) > MAX_SHOWN else ""
    return f"checkpoint does not match this config: {shown}{more}"


class _Absent:
    def __repr__(self) -> str:
        return "(absent)"

    __str__ = __repr__


_ABSENT = _Absent()

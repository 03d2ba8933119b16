"""``pdebm train resume=<run dir, checkpoint or sweep dir>``: continue a run as it was configured.

The checkpoint holds the run's composed config (``state["config"]``), and that is what a resume
continues. The run's own overrides (``<run>/.hydra/overrides.yaml``) are used when they compose
to that config; when they are missing (a copied run) or compose to something else (the defaults
changed since), :func:`overrides_from_config` rebuilds overrides from the checkpoint's config
itself. Extra overrides are allowed only for :data:`SAFE_KEYS` (more steps, logging periods,
device, threads); any other difference is refused in one line that names the user's keys. The
resumed run writes into its own directory: TensorBoard discards the events from the
checkpoint's step on (``purge_step``), and ``metrics.jsonl`` keeps only its valid rows before
that step (:func:`purge_metrics`).

``resume=auto`` continues from the run directory's own checkpoint when there is one, and returns
a finished run's metrics without training (:func:`auto`): what every job of a resumed sweep and
every job under the submitit launcher (requeued after a preemption) is given.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any, Mapping, Sequence

from pdebm.checkpoint_diff import SAFE_KEYS, config_diff, flatten

OVERRIDES = Path(".hydra") / "overrides.yaml"
MULTIRUN = "multirun.yaml"
GROUPS = ("dataset", "energy", "sampler", "schedule")
AUTO = "auto"
SAFE_SHORT = "steps, budget, *_every, progress, device, num_threads, divergence"


def quote(value: str) -> str:
    """A Hydra override value as a quoted string (directory names hold ``=`` and ``,``)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def run_dir_of(checkpoint: Path) -> Path:
    """The run directory a checkpoint belongs to (``<run>/checkpoints/last.pt`` -> ``<run>``)."""
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent


def is_sweep_dir(path: Path) -> bool:
    """A sweep's root directory (Hydra writes ``multirun.yaml`` there)."""
    return (path / MULTIRUN).is_file()


def original_overrides(run: Path) -> list[str] | None:
    """The overrides the run was launched with (Hydra's record), without ``resume``; None when
    the run was not launched by the command (no readable ``.hydra/overrides.yaml``)."""
    from omegaconf import OmegaConf

    p = run / OVERRIDES
    if not p.is_file():
        return None
    try:
        return [str(o) for o in OmegaConf.load(p) if _key(str(o)) != "resume"]
    except Exception:  # a damaged record: the checkpoint's config is the source of truth
        return None


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def merged_overrides(original: list[str], given: list[str]) -> list[str]:
    """The run's own overrides, with the keys the user gives now replaced by the user's."""
    mine = {_key(o) for o in given}
    groups = tuple(f"{k}." for k in mine if k in GROUPS)  # a group chosen anew drops its settings
    return [o for o in original if _key(o) not in mine and not _key(o).startswith(groups or ("\0",))
            ] + list(given)


# --------------------------------------------------------------------------- config -> overrides
def hydra_value(v: Any) -> str:
    """A plain value written as a Hydra override value that parses back to exactly ``v``."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return quote(v)
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(hydra_value(x) for x in v) + "]"
    if isinstance(v, Mapping):
        return "{" + ",".join(f"{k}:{hydra_value(x)}" for k, x in v.items()) + "}"
    return quote(str(v))


def _leaves(node: Mapping, prefix: str = "") -> dict[str, Any]:
    """Like :func:`flatten`, but an empty dict stays a leaf (so that it can be written back)."""
    out: dict[str, Any] = {}
    for k, v in node.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, Mapping) and v:
            out.update(_leaves(v, key))
        else:
            out[key] = v
    return out


def overrides_from_config(saved: Mapping[str, Any], compose) -> list[str]:
    """Overrides that compose to the checkpoint's config ``saved``: each group's option (the one
    with the same ``_target_`` whose settings differ least), then every setting that still
    differs. ``compose(overrides)`` returns a composed job config as plain data."""
    from pdebm.config import CONFIG_DIR

    options = {g: sorted(p.stem for p in (CONFIG_DIR / g).glob("*.yaml")) for g in GROUPS}
    best: dict[str, tuple[int, str]] = {}
    for i in range(max(len(v) for v in options.values())):
        trial = {g: opts[i] for g, opts in options.items() if i < len(opts) and g in saved}
        try:
            job = compose([f"{g}={o}" for g, o in trial.items()])
        except Exception:
            continue
        for g, o in trial.items():
            if not isinstance(job.get(g), Mapping) or not isinstance(saved.get(g), Mapping):
                continue
            if job[g].get("_target_") != saved[g].get("_target_"):
                continue
            a, b = flatten(job[g]), flatten(saved[g])
            n = sum(a.get(k, _NONE) != b.get(k, _NONE) for k in set(a) | set(b))
            if g not in best or n < best[g][0]:
                best[g] = (n, o)
    chosen = [f"{g}={o}" for g, (_, o) in best.items()]
    job = compose(chosen)
    have, want = _leaves(job), _leaves(saved)
    out = list(chosen)
    for key in sorted(want):  # a key the checkpoint lacks is an option added since: its default stays
        if key.split(".", 1)[0] != "hydra" and have.get(key, _NONE) != want[key]:
            out.append(f"++{key}={hydra_value(want[key])}")
    return out


class _NoneType:
    pass


_NONE = _NoneType()


# --------------------------------------------------------------------------- refusal
def _short(v: str) -> str:
    return v if len(v) <= 24 else v[:21] + "..."


def refusal(saved: Mapping[str, Any] | None, current: Mapping[str, Any],
            given: Sequence[str] = ()) -> str | None:
    """The one-line refusal when the resumed config differs from the checkpoint's outside
    :data:`SAFE_KEYS`, named by the user's own overrides ``given`` where they cause it (a group
    option as ``sampler: checkpoint ParticleSampler, config SGLD``); None when the run may
    continue."""
    if saved is None:
        return None
    diffs = config_diff(saved, current)
    decays = str((saved.get("schedule") or {}).get("_target_", "")).endswith("Cosine")
    if decays and saved.get("steps") != current.get("steps"):
        # the learning rate decays to the run's last step: more steps would train at lr ≈ 0
        diffs.insert(0, f"steps: checkpoint {saved.get('steps')}, config {current.get('steps')} "
                        "(the schedule decays to the run's own last step)")
    if not diffs:
        return None
    keyed = [(d.split(":", 1)[0], d) for d in diffs]
    shown: list[str] = []
    left = list(keyed)

    def group_line(g: str) -> str:
        a = str((saved.get(g) or {}).get("_target_", "?")).rsplit(".", 1)[-1]
        b = str((current.get(g) or {}).get("_target_", "?")).rsplit(".", 1)[-1]
        return f"{g}: checkpoint {a}, config {b}" if a != b else f"{g}.* settings differ"

    for o in given:
        k = _key(o)
        hit = [(kk, d) for kk, d in left if kk == k or kk.startswith(k + ".")]
        if not hit:
            continue
        left = [x for x in left if x not in hit]
        if len(hit) == 1 and hit[0][0] == k:
            shown.append(_short_diff(hit[0][1]))
        elif k.split(".")[0] in GROUPS and "." not in k:
            shown.append(group_line(k))
        else:
            shown.append(f"{o.lstrip('+~')} changes {len(hit)} settings")
    groups_done: set[str] = set()
    for kk, d in left:
        top = kk.split(".", 1)[0]
        if top in GROUPS and f"{top}._target_" in {x for x, _ in left}:
            if top not in groups_done:
                groups_done.add(top)
                shown.append(group_line(top))
            continue
        shown.append(_short_diff(d))
    more = f" (and {len(shown) - 2} more)" if len(shown) > 2 else ""
    return f"resume would change {'; '.join(shown[:2])}{more}; only {SAFE_SHORT} may change on resume"


def _short_diff(d: str) -> str:
    """``key: checkpoint A, config B`` with long values cut."""
    key, rest = d.split(": ", 1)
    rest, paren, note = rest.partition(" (")
    a, _, b = rest.partition(", config ")
    if paren:
        return f"{key}: checkpoint {_short(a[len('checkpoint '):])}, config {_short(b)} ({note}"
    return f"{key}: checkpoint {_short(a[len('checkpoint '):])}, config {_short(b)}"


# --------------------------------------------------------------------------- pasteable commands
def _pasteable(value: str) -> str:
    if any(c in value for c in "=,'\"\\ []{}()$*?:"):
        value = quote(value)
    return value


def continue_command(run: Path) -> str:
    """The command that continues ``run``, pasteable into a POSIX shell: Hydra's quoting for a
    value holding ``=`` or ``,`` (sweep job directories), shell quoting on top."""
    arg = f"resume={_pasteable(str(run))}"
    if arg == shlex.quote(arg) or any(c in arg for c in '"$`\\!'):
        return f"pdebm train {shlex.quote(arg)}"
    return f'pdebm train "{arg}"'  # double quotes keep Hydra's single quotes readable


def eval_command(run: Path) -> str:
    """``pdebm eval <run dir>``, pasteable into a POSIX shell (the run is a positional word)."""
    return f"pdebm eval {shlex.quote(str(run))}"


def done_command(cfg, run: Path) -> str:
    """What to run next on a finished run, pasteable: ``pdebm eval <run>`` for an image run
    (AIS), ``tensorboard --logdir <run>`` for a 2D one (its figures and curves)."""
    target = str(cfg.dataset.get("_target_", "")) if cfg.get("dataset") is not None else ""
    if ".images." in target:
        return eval_command(run)
    return f"tensorboard --logdir {shlex.quote(str(run))}"


# --------------------------------------------------------------------------- metrics.jsonl
def read_metrics(path: Path, step: int) -> tuple[list[str], str | None]:
    """The rows of ``metrics.jsonl`` a run resumed at ``step`` keeps: valid JSON rows with a
    step before ``step``, in increasing order; and one line saying what was dropped for damage
    (None when nothing was). Rows at or after ``step`` (written after the checkpoint) are
    dropped silently, as TensorBoard's ``purge_step`` drops the events."""
    if not path.is_file():
        return [], None
    keep: list[str] = []
    bad: list[int] = []
    last = -1
    try:
        text = path.read_bytes().decode("utf-8", errors="replace")
    except OSError:
        return [], f"{path} is unreadable; it starts again empty"
    for i, ln in enumerate(text.splitlines(), 1):
        if not ln.strip():
            continue
        try:
            row = json.loads(ln)
            s = row["step"]
            ok = isinstance(row, dict) and isinstance(s, int) and s > last
        except (ValueError, KeyError, TypeError):
            ok = False
        if not ok:
            bad.append(i)
            continue
        if s < step:
            keep.append(ln)
            last = s
    if not bad:
        return keep, None
    lines = ", ".join(map(str, bad[:3])) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
    where = f"the last row kept is step {json.loads(keep[-1])['step']}" if keep else "no row kept"
    return keep, (f"{path}: dropped {len(bad)} damaged line{'s' if len(bad) > 1 else ''} "
                  f"(line {lines}); {where}")


def purge_metrics(path: Path, step: int) -> str | None:
    """Cut ``metrics.jsonl`` back to its valid rows before ``step`` (:func:`read_metrics`);
    returns the damage warning, if any. Rewritten only when something changes."""
    if not path.is_file():
        return None
    keep, warning = read_metrics(path, step)
    text = "".join(ln + "\n" for ln in keep)
    if path.read_bytes() != text.encode("utf-8"):
        from pdebm.io import atomic_write_text

        atomic_write_text(path, text)
    return warning


# --------------------------------------------------------------------------- resume=auto
FINAL = "final_metrics.json"


def auto(cfg, out: Path) -> dict[str, float] | None:
    """``resume=auto``: a finished run directory returns its final metrics (nothing is run); one
    with a checkpoint continues from it (``cfg.resume`` set to it); otherwise a fresh start."""
    from omegaconf import open_dict

    if cfg.get("resume") != AUTO:
        return None
    final = out / FINAL
    if final.is_file() and _steps_of(out) >= int(cfg.steps):
        try:
            return json.loads(final.read_text())
        except ValueError:
            pass  # damaged: continue from the checkpoint, which rewrites it
    ckpt = out / "checkpoints" / "last.pt"
    with open_dict(cfg):
        cfg.resume = str(ckpt) if ckpt.is_file() else None
    return None


def _steps_of(out: Path) -> int:
    """``steps`` of the run in ``out`` as its ``config.yaml`` says (0 when unreadable)."""
    from omegaconf import OmegaConf

    try:
        return int(OmegaConf.load(out / "config.yaml").steps)
    except Exception:
        return 0

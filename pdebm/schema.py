"""The declared types of every setting, checked before anything is built.

A config node with a ``_target_`` (``sampler:``, ``energy:``, ``dataset:``, ``schedule:``,
``eval:``) is checked against the type annotations of the constructor it names: every key's
value must be what the annotation declares, and lie in the range an ``Annotated`` marker
declares. A new constructor gets the check by annotating its arguments; it writes no check::

    def __init__(self, n_steps: Positive[int] = 20, init: Literal["base", "uniform"] = "base",
                 channels: Sequence[Positive[int]] = (32, 64), scale: float | None = None): ...

What the annotations mean:

- ``int``: an integer (an integral float such as ``1e3`` is taken as ``1000``; a bool is not);
- ``float``: a number; ``bool``: ``true`` or ``false``; ``str``: a string;
- ``Literal[a, b]``: one of the choices; ``X | None``: also ``null``;
- ``Sequence[X]``, ``list[X]``, ``tuple[X, ...]``: a list whose items are ``X``; ``tuple[X, Y]``: a
  list of exactly two;
- ``Annotated[X, Gt(0)]`` (the ``annotated_types`` markers ``Gt``, ``Ge``, ``Lt``, ``Le``,
  ``Interval``; :data:`Positive`, :data:`NonNegative` for short): ``X`` within the bounds;
- anything else (``Mapping``, tensors, data sets): not checked here.

The first bad value is one :class:`~pdebm.errors.ConfigError` line that names the key as the
user types it (``sampler.n_steps must be an integer, got 2.5``). :func:`pdebm.config.instantiate`
runs the check on every node it builds, and :func:`pdebm.validate.validate` on every group before
the run starts (the CLI's pre-run checks), so nothing is built and no directory made on bad input.

:func:`integer` and :func:`number` are the same vocabulary for the trainer's own keys
(:mod:`pdebm.validate`).
"""

from __future__ import annotations

import collections.abc
import functools
import inspect
import math
import numbers
import os
import types
import typing
from typing import Annotated, Any, Literal, TypeVar, Union

from annotated_types import Ge, Gt

from pdebm.errors import ConfigError, check

T = TypeVar("T")
Positive = Annotated[T, Gt(0)]
"""``Positive[int]``: an integer > 0 (``Positive[float]``: a number > 0)."""
NonNegative = Annotated[T, Ge(0)]
"""``NonNegative[int]``: an integer >= 0."""

_SEQUENCES = (list, tuple, collections.abc.Sequence, collections.abc.MutableSequence)


def show(v: Any) -> str:
    """A value as a user wrote it: strings quoted, ``None`` as ``null``, lists as lists."""
    if v is None:
        return "null"
    if isinstance(v, str):
        return repr(v)
    if is_list(v):
        return "[" + ", ".join(show(x) for x in v) + "]"
    return str(v)


def is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def is_list(v: Any) -> bool:
    """A YAML list (a ``ListConfig``, list or tuple), not a string."""
    return (not isinstance(v, (str, bytes)) and hasattr(v, "__len__") and hasattr(v, "__iter__")
            and not hasattr(v, "keys"))


def integer(key: str, value: Any, minimum: int | None = None, nullable: bool = False) -> None:
    """``value`` is an integer (not a bool, not a float), at least ``minimum``."""
    if value is None and nullable:
        return
    if not is_int(value):
        hint = (f" (write {key}={int(value)})" if is_number(value) and float(value).is_integer()
                else "")
        raise ConfigError(f"{key} must be an integer{' or null' if nullable else ''}, "
                          f"got {show(value)}{hint}")
    if minimum is not None:
        bound = "> 0" if minimum == 1 else f">= {minimum}"
        check(value >= minimum, f"{key} must be {bound}, got {value}")


def number(key: str, value: Any, low: float | None = None, strict: bool = True,
           nullable: bool = False) -> None:
    """``value`` is a real number (not a bool, not a string) above ``low`` (or at least ``low``
    when not ``strict``)."""
    if value is None and nullable:
        return
    check(is_number(value),
          f"{key} must be a number{' or null' if nullable else ''}, got {show(value)}")
    check(math.isfinite(value), f"{key} must be a finite number, got {value}")
    if low is not None:
        ok = value > low if strict else value >= low
        check(ok, f"{key} must be {'>' if strict else '>='} {low:g}, got {value}")


# ------------------------------------------------------------------ values against annotations

def describe(tp: Any) -> str:
    """What an annotation asks for, in words (for messages)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Annotated:
        return describe(args[0]) + "".join(f" {_bounds(m)}" for m in tp.__metadata__ if _bounds(m))
    if origin in (Union, types.UnionType):
        arms = [describe(a) for a in args if a is not type(None)]
        return " or ".join(arms + (["null"] if type(None) in args else []))
    if origin is Literal:
        return f"one of {list(args)}"
    if origin in _SEQUENCES:
        if origin is tuple and args and args[-1] is not Ellipsis:
            kinds = {describe(a) for a in args}
            return (f"a list of {len(args)} {_plural(kinds.pop())}" if len(kinds) == 1 else
                    f"a list of {len(args)} ({', '.join(describe(a) for a in args)})")
        return f"a list of {_plural(describe(args[0]))}" if args else "a list"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string",
            os.PathLike: "a path"}.get(tp, getattr(tp, "__name__", str(tp)))


def _plural(words: str) -> str:
    for one, many in (("an integer", "integers"), ("a number", "numbers"), ("a string", "strings"),
                      ("true or false", "true/false values")):
        if words.startswith(one):
            return many + words[len(one):]
    return words


def _bounds(marker: Any) -> str:
    """``> 0``, ``in (0, 0.5)`` ...: the bounds an ``annotated_types`` marker sets ('' if none)."""
    lo = [(getattr(marker, "gt", None), "(", ">"), (getattr(marker, "ge", None), "[", ">=")]
    hi = [(getattr(marker, "lt", None), ")", "<"), (getattr(marker, "le", None), "]", "<=")]
    lo = next(((v, b, op) for v, b, op in lo if v is not None), None)
    hi = next(((v, b, op) for v, b, op in hi if v is not None), None)
    if lo and hi:
        return f"in {lo[1]}{lo[0]:g}, {hi[0]:g}{hi[1]}"
    if lo or hi:
        v, _, op = lo or hi
        return f"{op} {v:g}"
    return ""


def _within(marker: Any, v: Any) -> bool:
    for attr, ok in (("gt", lambda b: v > b), ("ge", lambda b: v >= b),
                     ("lt", lambda b: v < b), ("le", lambda b: v <= b)):
        bound = getattr(marker, attr, None)
        if bound is not None and not ok(bound):
            return False
    return True


def check_value(key: str, value: Any, tp: Any) -> Any:
    """``value`` checked against the annotation ``tp``; returns it as the constructor should get
    it (an integral float for an ``int`` as an int, anything else unchanged). Raises one
    ConfigError line naming ``key``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Annotated:
        value = check_value(key, value, args[0])
        for marker in tp.__metadata__:
            if value is not None and _bounds(marker) and not _within(marker, value):
                raise ConfigError(f"{key} must be {_bounds(marker)}, got {show(value)}")
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        arms = [a for a in args if a is not type(None)]
        if len(arms) == 1 and _accepts(arms[0], value):  # its own message (a range, an item)
            return check_value(key, value, arms[0])
        for arm in arms:
            if _accepts(arm, value):
                return check_value(key, value, arm)
        raise ConfigError(f"{key} must be {describe(tp)}, got {show(value)}")
    if origin is Literal:
        check(value in args, f"{key}={show(value)} is not one of {list(args)}")
        return value
    if origin in _SEQUENCES or tp in _SEQUENCES:
        check(is_list(value), f"{key} must be {describe(tp)}, got {show(value)}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            check(len(value) == len(args), f"{key} must be {describe(tp)}, got {show(value)}")
            items = list(args)
        else:
            items = [args[0] if args else Any] * len(value)
        out = [check_value(f"{key}[{i}]", v, t) for i, (v, t) in enumerate(zip(value, items))]
        return value if all(a is b for a, b in zip(out, value)) else out
    if tp is bool:
        check(isinstance(value, bool), f"{key} must be true or false, got {show(value)}")
    elif tp is int:
        if is_number(value) and not is_int(value) and float(value).is_integer():
            return int(value)  # 1e3 -> 1000
        check(is_int(value), f"{key} must be an integer, got {show(value)}")
    elif tp is float:
        check(is_number(value), f"{key} must be a number, got {show(value)}")
        check(math.isfinite(value), f"{key} must be a finite number, got {show(value)}")
    elif tp is str:
        check(isinstance(value, str), f"{key} must be a string, got {show(value)}")
    elif tp is os.PathLike:
        check(isinstance(value, os.PathLike), f"{key} must be a path, got {show(value)}")
    return value  # Any, Mapping, tensors, classes: not a setting a user types


def _accepts(tp: Any, value: Any) -> bool:
    """Whether ``value`` is of ``tp``'s kind (bounds and items aside): which arm of a union."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Annotated:
        return _accepts(args[0], value)
    if origin is Literal:
        return value in args
    if origin in _SEQUENCES or tp in _SEQUENCES:
        return is_list(value)
    if tp is int:
        return is_number(value) and float(value).is_integer()
    kinds = {bool: lambda v: isinstance(v, bool), float: is_number,
             str: lambda v: isinstance(v, str), os.PathLike: lambda v: isinstance(v, os.PathLike)}
    return kinds.get(tp, lambda v: True)(value)


# ------------------------------------------------------------------------ nodes against targets

@functools.lru_cache(maxsize=None)
def annotations(target: Any) -> dict[str, Any]:
    """A constructor's (or function's) parameter annotations, ``Annotated`` markers kept;
    ``{}`` for a target without readable annotations."""
    fn = target.__init__ if inspect.isclass(target) else target
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
        params = inspect.signature(target).parameters
    except (NameError, TypeError, ValueError):
        return {}
    return {name: hints[name] for name in params if name in hints}


def check_node(node: Any, target: Any = None, prefix: str | None = None,
               skip: typing.Iterable[str] = ()) -> dict[str, Any]:
    """Check every key of a config node against the annotations of ``target`` (default: the
    node's ``_target_``); keys in ``skip`` (filled in by the caller at build time) and keys the
    target does not take (its constructor reports those) are left alone. Returns the values the
    check changed (``{"n_steps": 1000}`` for ``n_steps: 1e3``), to pass to the constructor."""
    if target is None:
        from hydra.utils import get_object

        try:
            target = get_object(str(node["_target_"]))
        except Exception:  # noqa: BLE001 (a bad _target_ is Hydra's to report, in one line)
            return {}
    if prefix is None:
        prefix = node._get_full_key(None) if hasattr(node, "_get_full_key") else ""
    hints = annotations(target)
    skip = set(skip)
    changed = {}
    for key in node:
        key = str(key)
        if key.startswith("_") or key in skip or key not in hints:
            continue
        value = node[key]
        name = f"{prefix}.{key}" if prefix else key
        if hasattr(value, "keys") and "_target_" in value:  # a nested object: its own target
            check_node(value, prefix=name)
            continue
        new = check_value(name, value, hints[key])
        if new is not value:
            changed[key] = new
    return changed

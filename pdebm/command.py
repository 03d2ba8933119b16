"""What the commands share: one line for bad input or a failed run, never a traceback, and the
Hydra entry point that composes a command's config and runs it.

``pdebm train``, ``pdebm eval`` and ``pdebm sample`` each build their entry point with
:func:`hydra_command` from two plain functions: the work (``train(cfg)``, ``evaluate(cfg)``,
``sample(cfg)``, which tests call in-process) and what is printed when it succeeds. The scripts
in ``scripts/`` put their flag checks and their work inside :func:`one_line_errors`.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from typing import Any, Callable, Iterator

import hydra
from omegaconf import DictConfig

from pdebm.config import CONFIG_DIR
from pdebm.errors import ConfigError


@contextlib.contextmanager
def one_line_errors(*failures: type[Exception]) -> Iterator[None]:
    """End the process with ``pdebm: error: <message>`` on stderr when the block raises a
    :class:`~pdebm.errors.ConfigError` (exit status 2: bad input) or one of ``failures``
    (exit status 1: the work itself failed)."""
    try:
        yield
    except (ConfigError, *failures) as e:
        print(f"pdebm: error: {e}", file=sys.stderr)
        raise SystemExit(2 if isinstance(e, ConfigError) else 1) from None


def hydra_command(config_name: str, work: Callable[[DictConfig], Any],
                  done: Callable[[DictConfig, Any], None],
                  failures: tuple[type[Exception], ...] = ()) -> Callable[[], None]:
    """The ``@hydra.main`` entry point of a command: ``conf/<config_name>.yaml`` composed with
    the command line, ``result = work(cfg)`` inside :func:`one_line_errors`, then
    ``done(cfg, result)``."""

    @functools.wraps(work)  # Hydra names the job after work's module: outputs/train/... stays
    def entry(cfg: DictConfig) -> None:
        with one_line_errors(*failures):
            result = work(cfg)
        done(cfg, result)

    return hydra.main(version_base="1.3", config_path=str(CONFIG_DIR),
                      config_name=config_name)(entry)

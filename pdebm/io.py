"""Atomic file writes: a temporary file in the target's directory, flushed to disk, then renamed
over the target. A write interrupted at any moment (a signal, a full disk) leaves either the old
file or the new one, never a half-written one, and no temporary file behind."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Create ``path`` atomically from what ``write(f)`` writes into a binary file ``f``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # a full disk, a directory made read-only
        Path(tmp).unlink(missing_ok=True)
        cause = _os_error(e)
        if cause is None:
            raise
        raise OSError(cause.errno, cause.strerror or str(cause), str(path)) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _os_error(e: BaseException | None) -> OSError | None:
    """The OSError behind ``e`` (torch's zip writer reports a full disk as a RuntimeError whose
    context is the OSError), or None."""
    seen = 0
    while e is not None and seen < 10:
        if isinstance(e, OSError):
            return e
        e, seen = e.__cause__ or e.__context__, seen + 1
    return None


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def remove_stale_tmp(folder: Path) -> list[Path]:
    """Remove what an interrupted :func:`atomic_write` in ``folder`` left behind (a SIGKILL
    between creating and renaming its ``.<name>.<random>.tmp``); returns the files removed.
    Called when a run (re)starts in its directory, so never while a write of that run is under way."""
    removed = []
    for p in Path(folder).glob(".*.tmp"):
        if p.is_file():
            try:
                p.unlink()
                removed.append(p)
            except OSError:
                pass
    return removed

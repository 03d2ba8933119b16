"""MNIST-style IDX files: reading them, finding them in a data directory, downloading them.

Used by :class:`pdebm.data.images.MNIST` and :class:`~pdebm.data.images.FashionMNIST`; network
access happens only in :func:`download_idx`, and only when ``dataset.download=true``.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import urllib.error
import urllib.request
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np

from pdebm.errors import ConfigError, check
from pdebm.io import atomic_write

IDX_DTYPES = {0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"),
              0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (``.gz`` if the name ends so): magic ``00 00 <dtype> <ndim>``, then
    ``ndim`` big-endian uint32 sizes, then the data in row-major order.

    Malformed files (bad magic, truncated, wrong size, broken gzip) are a one-line
    :class:`ConfigError` naming the file.
    """
    path = Path(path)
    try:
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise ConfigError(f"cannot read IDX file {path}: {e}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES or raw[3] == 0:
        raise ConfigError(f"{path} is not an IDX file (magic number {raw[:4].hex() or 'missing'}, "
                          "expected 0000<type><ndim>)")
    dtype, ndim = IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    check(len(raw) >= header, f"{path} is truncated: its header needs {header} bytes, "
          f"the file has {len(raw)}")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = math.prod(dims) * dtype.itemsize
    check(len(raw) - header == expected,
          f"{path} is truncated or corrupt: its header says shape {tuple(dims)} ({expected} data "
          f"bytes), the file has {len(raw) - header}")
    return np.frombuffer(raw, dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def find_idx(root: Path, dirs: Sequence[Path], name: str, title: str,
             all_files: Sequence[str], system_dirs: Sequence[str | Path] = (),
             hint: str = "") -> Path:
    """``name`` or ``name.gz`` in the first of ``dirs`` that has it, or a one-line ConfigError
    saying what to put where.

    ``system_dirs`` (e.g. where a Debian package installs the files) are searched only when
    ``dirs`` hold none of ``all_files``, so two splits never come from different places;
    ``hint`` ends the error message (e.g. the package to install)."""
    found = _search(dirs, name)
    if found is not None:
        return found
    if system_dirs and not any(_search(dirs, n) for n in all_files):
        found = _search([Path(d) for d in system_dirs], name)
        if found is not None:
            return found
    files = " and ".join(f"{n}(.gz)" for n in all_files)
    also = "".join(f" (nor in {d})" for d in system_dirs)
    if not root.is_dir():
        raise ConfigError(f"dataset.root={root}: {title} data directory does not "
                          f"exist{also}; put {files} there, or set dataset.download=true{hint}")
    raise ConfigError(f"dataset.root={root}: {name}(.gz) not found{also}; put {files} there, "
                      f"or set dataset.download=true{hint}")


def _search(dirs: Sequence[Path], name: str) -> Path | None:
    for d in dirs:
        for candidate in (d / name, d / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


def download_idx(root: Path, names: Sequence[str], mirrors: Sequence[str]) -> None:
    """Fetch ``<name>.gz`` for each of ``names`` into ``root`` from the first mirror that
    answers, skipping files already there."""
    root.mkdir(parents=True, exist_ok=True)
    for name in names:
        target = root / f"{name}.gz"
        if target.is_file() or (root / name).is_file():
            continue
        errors = []
        for mirror in mirrors:
            try:
                _fetch(mirror + f"{name}.gz", target)
                break
            except (urllib.error.URLError, OSError, TimeoutError) as e:
                errors.append(getattr(e, "reason", e))
        else:
            raise ConfigError(f"dataset.download=true: cannot fetch {name}.gz from "
                              f"{len(mirrors)} mirror(s) (offline? last error: "
                              f"{errors[-1]}); put the files in {root} by hand")


def _fetch(url: str, target: Path, timeout: float = 60.0) -> None:
    """Download ``url`` to ``target`` atomically (temporary file, then rename)."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        data = response.read()
    atomic_write(target, lambda f: f.write(data))

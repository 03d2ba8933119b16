"""Counting host reads of tensor values: every call that brings a device value to the host
(``item``, ``tolist``, ``cpu``, ``numpy``, ``float()``, ``int()``, ``bool()``, ``index``). On a
GPU each one is a stream synchronisation. Used by ``tests/test_no_sync.py`` and
``scripts/gpu_check.py --profile``.

One read is not counted: ``torch.optim`` (Adam with ``capturable=False``) reads its step
counter with ``item()``; that counter is a CPU tensor even for a CUDA model, so the read is not
a device sync.
"""

from __future__ import annotations

import contextlib
import sys
from collections import Counter
from typing import Iterator

import torch

READS = ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__", "__index__")
HOST_SIDE = ("torch/optim/",)


@contextlib.contextmanager
def count_host_reads() -> Iterator[Counter[str]]:
    """Yields a Counter of ``method @ file:line`` for every host read of a tensor value made
    while the context is open (the Tensor methods are patched, and restored on exit)."""
    counts: Counter[str] = Counter()
    originals = {name: getattr(torch.Tensor, name) for name in READS}

    def wrap(name, fn):
        def counted(self, *args, **kwargs):
            frame = sys._getframe(1)
            where = f"{frame.f_code.co_filename}:{frame.f_lineno}"
            if not any(h in where.replace("\\", "/") for h in HOST_SIDE):
                counts[f"{name} @ {where}"] += 1
            return fn(self, *args, **kwargs)
        return counted

    for name, fn in originals.items():
        setattr(torch.Tensor, name, wrap(name, fn))
    try:
        yield counts
    finally:
        for name, fn in originals.items():
            setattr(torch.Tensor, name, fn)

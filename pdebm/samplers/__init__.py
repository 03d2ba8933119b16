"""Samplers of negatives: one class per file behind :class:`pdebm.samplers.base.Sampler`."""

from pdebm.samplers.base import Sampler

__all__ = ["Sampler"]

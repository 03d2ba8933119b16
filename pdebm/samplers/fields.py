"""Transport fields (docs/method.md, "Transport"): how far particles move along ``−∇ₓδE``.

The particles follow ``v = −∇φ`` with the potential ``φ = c·δE``; a field chooses ``c`` from
the particles. ``gradient`` is the authors' ``c = 1``; ``optimal`` minimises the variational
functional ``J[φ] = E_w[½|∇φ|² − g φ]``, ``g = δE − E_w[δE]``, over ``c``; ``none`` does not
move the particles (persistent Langevin). A richer potential (a kernel or small network fitted
by minimising ``J``) would replace ``c·∇ₓδE`` by its own ``∇φ``; keeping the field a separate
piece makes that a local change.
"""

from __future__ import annotations

import abc
import math

from torch import Tensor

from pdebm.errors import check, positive


class TransportField(abc.ABC):
    """Chooses the coefficient ``c`` of the potential ``φ = c·δE`` from the particles."""

    @abc.abstractmethod
    def coefficient(self, delta_e: Tensor, grad_delta_e: Tensor, w_bar: Tensor) -> float:
        """``c`` given ``δE`` (N,), ``∇ₓδE`` (N, *shape) and normalised weights ``w̄`` (N,)."""


class GradientField(TransportField):
    """``c = 1``: the choice in the authors' released code."""

    def coefficient(self, delta_e: Tensor, grad_delta_e: Tensor, w_bar: Tensor) -> float:
        return 1.0


class OptimalField(TransportField):
    """``c* = Var_w(δE) / E_w[|∇ₓδE|²]``, the minimiser of ``J[c·δE]`` (exact for Gaussian
    location and scale families), clipped so that the root-mean-square displacement
    ``c·sqrt(E_w|∇ₓδE|²)`` is at most ``max_displacement``."""

    def __init__(self, max_displacement: float) -> None:
        self.max_displacement = max_displacement

    def coefficient(self, delta_e: Tensor, grad_delta_e: Tensor, w_bar: Tensor) -> float:
        w, d = w_bar.detach().double(), delta_e.detach().double()
        var = float((w * (d - (w * d).sum()).pow(2)).sum())
        sq = float((w * grad_delta_e.detach().double().pow(2).flatten(1).sum(1)).sum())
        if sq <= 0.0:
            return 0.0
        return min(var / sq, self.max_displacement / math.sqrt(sq))


FIELDS = ("gradient", "optimal", "none")


def make_field(name: str, max_displacement: float) -> TransportField | None:
    """The field called ``name`` (``None`` for ``none``: no transport)."""
    check(name in FIELDS, f"sampler.field={name!r} is not one of {list(FIELDS)}")
    positive("sampler.max_displacement", max_displacement)
    if name == "gradient":
        return GradientField()
    if name == "optimal":
        return OptimalField(max_displacement)
    return None

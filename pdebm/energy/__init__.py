"""Energy models E_θ(x) = f_θ(x) − log N(x; μ, diag σ²) (docs/method.md, "Energy model")."""

from pdebm.energy.base import EnergyModel, FrozenEnergy, GaussianBase

__all__ = ["EnergyModel", "FrozenEnergy", "GaussianBase"]

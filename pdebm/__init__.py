"""pdebm: an experiment runner for energy-based models trained with particle dynamics,
SGLD or PCD negatives (Neklyudov, Jaini, Welling, *Particle Dynamics for Learning EBMs*, 2021)."""

__version__ = "0.1.0"

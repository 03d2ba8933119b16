"""Datasets: the eight standard 2D toys (toy2d.py) and image data sets (images.py)."""

from pdebm.data.base import Dataset

__all__ = ["Dataset"]

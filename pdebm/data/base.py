"""The dataset interface the trainer uses. One module per dataset family implements it."""

from __future__ import annotations

import abc
from typing import Any

import torch
from torch import Tensor


class Dataset(abc.ABC):
    """Training batches, a fixed held-out test set and data statistics.

    Attributes:
        shape: shape of one data point, e.g. ``(2,)`` or ``(1, 8, 8)``.
        is_2d: whether the exact 2D grid metrics apply (``shape == (2,)``).
        test: the held-out points every evaluation uses, shape ``(n_test, *shape)``.
        mean, std: per-coordinate statistics of the training data (initialise the Gaussian base).
    """

    shape: tuple[int, ...]
    test: Tensor
    mean: Tensor
    std: Tensor

    @property
    def is_2d(self) -> bool:
        return tuple(self.shape) == (2,)

    @property
    def is_image(self) -> bool:
        return len(self.shape) == 3

    @abc.abstractmethod
    def train_batch(self, n: int) -> Tensor:
        """The next training batch of ``n`` points (float32, CPU)."""

    def state_dict(self) -> dict[str, Any]:
        """Random-stream state so a resumed run sees the same batches."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def to_images(self, x: Tensor) -> Tensor:
        """Map model-space points back to displayable images in [0, 1], ``(N, C, H, W)``."""
        raise NotImplementedError(f"{type(self).__name__} is not an image data set")




def to_tensor(a) -> Tensor:
    return torch.as_tensor(a, dtype=torch.float32)

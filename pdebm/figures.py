"""Pictures logged to TensorBoard: the 2D density/negatives/data figure and image grids.

The one module that imports ``matplotlib.pyplot``; it selects the ``Agg`` backend first, so
every other module imports pictures from here."""

from __future__ import annotations

import math

import matplotlib
import numpy as np

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402

from matplotlib.figure import Figure  # noqa: E402

from pdebm.grid import GriddedModel  # noqa: E402


def density_figure(model: GriddedModel, negatives: Tensor, data: Tensor,
                   log_weights: Tensor | None = None, title: str = "") -> Figure:
    """Model density heat-map, negatives scattered on top of it, and the data beside it."""
    g = model.grid
    extent = (g.low, g.high, g.low, g.high)
    dens = model.log_prob.exp().T.numpy()  # rows = x₂ for imshow
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.2))
    axes[0].imshow(dens, origin="lower", extent=extent, cmap="viridis")
    axes[0].set_title("model density")
    axes[1].imshow(dens, origin="lower", extent=extent, cmap="Greys")
    x = negatives.detach().cpu()
    sizes = 3.0
    if log_weights is not None and float(log_weights.std()) > 0:
        sizes = (3.0 * len(x) * torch.softmax(log_weights.detach().cpu(), 0)).clamp(0.2, 30).numpy()
    axes[1].scatter(x[:, 0], x[:, 1], s=sizes, c="tab:red", alpha=0.5, linewidths=0)
    axes[1].set_title("negatives on the model")
    d = data.detach().cpu()
    axes[2].scatter(d[:, 0], d[:, 1], s=3.0, c="tab:blue", alpha=0.5, linewidths=0)
    axes[2].set_title("data (held-out)")
    for ax in axes:
        ax.set_xlim(g.low, g.high)
        ax.set_ylim(g.low, g.high)
        ax.set_aspect("equal")
    if title:
        fig.suptitle(title)
    # fixed margins: tight_layout would draw the whole figure once more just to measure it
    fig.subplots_adjust(left=0.04, right=0.99, bottom=0.07, top=0.87, wspace=0.15)
    return fig


def render(fig: Figure, dpi: float = 80) -> np.ndarray:
    """The figure drawn once, as an ``(H, W, 4)`` uint8 RGBA array (for TensorBoard and the
    PNG alike, so that it is not drawn twice)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig.set_dpi(dpi)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba()).copy()


def save_rgba(rgba: np.ndarray, path) -> None:
    """An ``(H, W, 4)`` uint8 array (:func:`render`) as a PNG, pixel for pixel."""
    plt.imsave(path, rgba)


def close_figure(fig: Figure) -> None:
    """Free a figure's memory once it has been logged and saved."""
    plt.close(fig)


def save_png(grid: Tensor, path, min_pixels: int = 256) -> None:
    """A ``(C, H, W)`` grid in [0, 1] as a PNG, upscaled (nearest neighbour) to at least
    ``min_pixels`` a side so that small images stay visible."""
    scale = max(1, math.ceil(min_pixels / max(grid.shape[1:])))
    img = grid.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
    if img.shape[0] == 1:
        plt.imsave(path, img[0].numpy(), cmap="gray", vmin=0.0, vmax=1.0)
    else:
        plt.imsave(path, img.permute(1, 2, 0).numpy())


def image_grid(images: Tensor, nrow: int | None = None, pad: int = 1) -> Tensor:
    """Tile ``(N, C, H, W)`` images in [0, 1] into one ``(C, H', W')`` image."""
    n, c, h, w = images.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    ncol = math.ceil(n / nrow)
    out = torch.ones(c, ncol * (h + pad) + pad, nrow * (w + pad) + pad)
    for k in range(n):
        i, j = divmod(k, nrow)
        out[:, pad + i * (h + pad): pad + i * (h + pad) + h,
            pad + j * (w + pad): pad + j * (w + pad) + w] = images[k].detach().cpu().clamp(0, 1)
    return out

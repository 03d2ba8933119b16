"""Convolutional energy for images ``(C, H, W)``, with optional spectral normalisation (docs/method.md, "Energy model").

Why not ``torch.nn.utils.parametrizations.spectral_norm``: in training mode it runs one power
iteration in *every* forward pass and writes the result into its ``_u``/``_v`` buffers, so the
energy is a slightly different function at every call — between two Langevin steps, between
the two ends of a MALA move, between the AIS temperatures, and between ``energy_before`` (a
:class:`~pdebm.energy.base.FrozenEnergy` whose cloned buffers keep iterating) and
``energy_after``. :class:`SpectralNorm` below makes the energy a pure function of
``(parameters, buffers)`` between parameter updates: it re-estimates ``σ(W)`` only when the
weight differs from the one it was last estimated for (kept in the buffer ``_w_ref``), i.e. once
after each optimizer step, independently of ``train()``/``eval()``. All state is in buffers, so
``state_dict`` resumes exactly and ``torch.func.functional_call`` evaluates a snapshot with its
own buffers without touching the live module's.
"""

from __future__ import annotations

import math
from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from pdebm.energy.base import (ACTIVATIONS, BASE_FITS, BASE_WEIGHTS, BASES, EnergyModel,
                               SwishBeta, make_activation, zero_init_)
from pdebm.errors import check, positive
from pdebm.schema import Positive

MIN_SIZE = 4     # downsample (stride 2) while the feature map's smaller side exceeds this
HEADS = ("flatten", "pool")


class SpectralNorm(nn.Module):
    """Parametrization ``W ↦ W / σ̂(W)`` with ``σ̂ = uᵀ W v`` (Miyato et al. 2018, on ``W``
    reshaped to ``(out, in·k·k)``), deterministic between weight updates (module docstring).

    Args:
        weight: the weight to normalise (shapes the buffers; initial power iterations).
        n_iterations: power iterations each time the weight has changed.
        init_iterations: power iterations at construction (so the first σ̂ is accurate).
        scale: the normalised weight's spectral norm, ``c·W/σ̂`` (1: Miyato et al.'s; larger lets
            each layer stretch its input by up to ``c``).
    """

    def __init__(self, weight: Tensor, n_iterations: int = 1, init_iterations: int = 30,
                 eps: float = 1e-12, scale: float = 1.0) -> None:
        super().__init__()
        self.n_iterations, self.eps, self.scale = n_iterations, eps, float(scale)
        mat = weight.detach().flatten(1)
        self.register_buffer("_u", F.normalize(torch.randn(mat.shape[0]), dim=0, eps=eps))
        self.register_buffer("_v", F.normalize(torch.randn(mat.shape[1]), dim=0, eps=eps))
        self.register_buffer("_w_ref", weight.detach().clone())
        self._power_iteration(mat, init_iterations)

    @torch.no_grad()
    def _power_iteration(self, mat: Tensor, n: int) -> None:
        u, v = self._u, self._v
        for _ in range(n):
            v = F.normalize(mat.t() @ u, dim=0, eps=self.eps)
            u = F.normalize(mat @ v, dim=0, eps=self.eps)
        self._u.copy_(u)
        self._v.copy_(v)

    def forward(self, weight: Tensor) -> Tensor:
        # changed since the last estimate? (NaN equals NaN here: a diverged weight must not
        # re-run the iteration on every forward pass, which would overwrite u and v in place
        # under a graph that still needs them; the divergence check then reports the NaN loss)
        if not torch.allclose(weight.detach(), self._w_ref, rtol=0.0, atol=0.0, equal_nan=True):
            self._power_iteration(weight.detach().flatten(1), self.n_iterations)
            with torch.no_grad():
                self._w_ref.copy_(weight)
        sigma = torch.dot(self._u, weight.flatten(1) @ self._v)  # u, v are constants for autograd
        normalised = weight / sigma.clamp_min(self.eps)
        # scale 1 skips the product so that the unscaled weight stays the same bits as before
        return normalised if self.scale == 1.0 else normalised * self.scale


def spectral_normalised(layer: nn.Module, n_iterations: int = 1, scale: float = 1.0) -> nn.Module:
    """``layer`` with its ``weight`` divided by its spectral norm (:class:`SpectralNorm`, re-estimated
    with ``n_iterations`` power iterations after each weight update) and multiplied by ``scale``;
    returned for chaining."""
    parametrize.register_parametrization(
        layer, "weight", SpectralNorm(layer.weight, n_iterations=n_iterations, scale=scale))
    return layer


class ConvEnergy(EnergyModel):
    """``E(x) = CNN(x) − log N(x; μ, diag σ²)`` for images of any size ``(C, H, W)``.

    One 3×3 convolution per entry of ``channels``, each followed by the activation; a conv has
    stride 2 while the smaller side of its input exceeds :data:`MIN_SIZE` (8×8 → 4×4;
    28×28 → 14 → 7 → 4), stride 1 afterwards. The head maps the last feature map to a scalar:
    ``flatten`` (a linear layer on all features: keeps where things are, which matters for
    digits) or ``pool`` (global average pooling, then linear).

    Args:
        channels: output channels of each convolution.
        activation: nonlinearity name (``silu`` or ``leaky_relu`` are the usual choices).
        head: ``flatten`` or ``pool``.
        spectral_norm: normalise every convolution by its spectral norm (:class:`SpectralNorm`).
            The last (linear) layer is never normalised: it sets the energy's scale, and a
            zero-initialised matrix has no spectral norm to divide by.
        sn_iterations: power iterations per weight update when ``spectral_norm``.
        zero_init_last: zero the last layer so the initial model equals the base distribution.
        base: ``gaussian`` (``E = CNN − log base``) or ``none`` (``E = CNN``).
        learn_base / base_* / output_bound: see :class:`~pdebm.energy.base.EnergyModel`.
    """

    example_shape = (1, 8, 8)  # any (C, H, W); the digits' shape

    def __init__(self, data_shape: Sequence[int], data_mean: Tensor, data_std: Tensor,
                 channels: Sequence[Positive[int]] = (32, 64, 128),
                 activation: Literal[tuple(ACTIVATIONS)] = "silu",
                 head: Literal[HEADS] = "flatten", spectral_norm: bool = True,
                 sn_iterations: Positive[int] = 1, zero_init_last: bool = True,
                 learn_base: bool = True, base_min_std: Positive[float] = 1e-2,
                 base_std_scale: Positive[float] = 1.0, base: Literal[BASES] = "gaussian",
                 base_components: Positive[int] = 5, base_reg: Positive[float] = 1e-3,
                 output_bound: Positive[float] | None = None,
                 base_fit: Literal[BASE_FITS] = "em",
                 base_weights: Literal[BASE_WEIGHTS] = "fitted") -> None:
        shape = tuple(int(s) for s in data_shape)
        check(len(shape) == 3, f"energy=conv needs image data of shape (C, H, W), the dataset "
              f"has shape {shape}; use energy=mlp for vector data")
        channels = list(channels) if channels is not None else []
        check(len(channels) > 0 and all(isinstance(c, int) and c > 0 for c in channels),
              f"energy.channels must be a non-empty list of positive integers, got {channels}")
        check(head in HEADS, f"energy.head={head!r} is not one of {list(HEADS)}")
        positive("energy.sn_iterations", sn_iterations)
        super().__init__(shape, data_mean, data_std, learn_base, base_min_std, base_std_scale,
                         base, base_components, base_reg, output_bound, base_fit, base_weights)
        c_in, h, w = shape
        layers: list[nn.Module] = []
        for c_out in channels:
            stride = 2 if min(h, w) > MIN_SIZE else 1
            conv = nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1)
            if spectral_norm:
                spectral_normalised(conv, sn_iterations)
            layers += [conv, make_activation(activation)]
            c_in, h, w = c_out, _conv_out(h, stride), _conv_out(w, stride)
        if head == "pool":
            layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
            features = c_in
        else:
            layers.append(nn.Flatten())
            features = c_in * h * w
        last = nn.Linear(features, 1)
        if zero_init_last:
            zero_init_(last)
        layers.append(last)
        self.net = nn.Sequential(*layers)
        self.feature_shape = (c_in, h, w)  # the last feature map (for the curious and the tests)


class MNISTSmallConvEnergy(EnergyModel):
    """The authors' ``MNISTSmallConvNet(nc)`` (necludov/particle-EBMs, ``core/networks.py``)
    as an energy, for 28×28 single-channel images.

    Five convolutions of ``nc`` channels, each followed by a learnable-β Swish (or LeakyReLU 0.2
    with ``activation: leaky_relu``): 3×3 stride 1 (28×28), then three 4×4 stride 2 (14, 7, 3),
    then 3×3 without padding (1×1); a linear layer maps the ``nc`` features to the energy.
    Every convolution is spectrally normalised (pdebm's deterministic :class:`SpectralNorm`;
    the authors' torch hook iterates once per forward pass). ``base: none`` is the authors'
    energy (no Gaussian term); ``zero_init_last`` is off by default as in their code.
    """

    example_shape = (1, 28, 28)  # the only shape it takes

    def __init__(self, data_shape: Sequence[int], data_mean: Tensor, data_std: Tensor,
                 nc: Positive[int] = 64, activation: Literal["swish", "leaky_relu"] = "swish",
                 spectral_norm: bool = True, sn_iterations: Positive[int] = 1,
                 zero_init_last: bool = False, base: Literal[BASES] = "none",
                 learn_base: bool = True, base_min_std: Positive[float] = 1e-2,
                 base_std_scale: Positive[float] = 1.0,
                 base_components: Positive[int] = 5, base_reg: Positive[float] = 1e-3,
                 output_bound: Positive[float] | None = None,
                 base_fit: Literal[BASE_FITS] = "em",
                 base_weights: Literal[BASE_WEIGHTS] = "fitted") -> None:
        shape = tuple(int(s) for s in data_shape)
        check(shape[1:] == (28, 28) and shape[0] == 1,
              f"energy=mnist_small_conv is the authors' 28×28 network; the dataset has shape "
              f"{shape} (use energy=conv for other sizes)")
        positive("energy.nc", nc)
        check(activation in ("swish", "leaky_relu"),
              f"energy.activation={activation!r} is not one of ['swish', 'leaky_relu']")
        positive("energy.sn_iterations", sn_iterations)
        super().__init__(shape, data_mean, data_std, learn_base, base_min_std, base_std_scale,
                         base, base_components, base_reg, output_bound, base_fit, base_weights)
        specs = [(1, nc, 3, 1, 1), (nc, nc, 4, 2, 1), (nc, nc, 4, 2, 1), (nc, nc, 4, 2, 1),
                 (nc, nc, 3, 1, 0)]
        layers: list[nn.Module] = []
        for c_in, c_out, k, stride, pad in specs:
            conv = nn.Conv2d(c_in, c_out, k, stride, pad)
            if spectral_norm:
                spectral_normalised(conv, sn_iterations)
            layers += [conv, SwishBeta(c_out) if activation == "swish" else nn.LeakyReLU(0.2)]
        last = nn.Linear(nc, 1)
        if zero_init_last:
            zero_init_(last)
        self.net = nn.Sequential(*layers, nn.Flatten(), last)


def _conv_out(size: int, stride: int) -> int:
    """Output size of a 3×3 convolution with padding 1."""
    return math.floor((size + 2 - 3) / stride) + 1

"""The Gaussian base term and the energy-model wrapper shared by every architecture.

An energy is ``E_θ(x) = f_θ(x) − log N(x; μ, diag σ²)``: a network ``f_θ`` plus a learnable
diagonal Gaussian base (the authors' choice, docs/method.md, "Energy model"). With the network's last layer
zero-initialised, ``f_θ ≡ 0`` at step 0 and the model *is* the base distribution, so samples of
the base are exact samples of the initial model.

``base: none`` is the authors' image setup: ``E_θ(x) = f_θ(x)``, no base term. Fresh chains then
start from ``N(0, I)`` (their ``torch.randn``), which is *not* part of the model.

:class:`GaussianBase` is the one Gaussian of the code base: diagonal (the learnable base) or with
a fixed full covariance (``scale_tril``: a Gaussian fitted to training data, the reference that
AIS starts from and the baselines of ``scripts/gaussian_baselines.py``).
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call

from pdebm.errors import check, one_of, positive

Energy = Callable[[Tensor], Tensor]


def energy_in_chunks(energy: Energy, x: Tensor, chunk: int,
                     device: torch.device | str | None = None) -> Tensor:
    """``energy(x)`` evaluated ``chunk`` points at a time (bounds the memory of large grids and
    test sets), each chunk moved to ``device`` first when one is given."""
    return torch.cat([energy(x[i:i + chunk] if device is None else x[i:i + chunk].to(device))
                      for i in range(0, len(x), chunk)])


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` in eval mode inside the block, back in its own mode afterwards (also on error)."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)
"""Anything that maps a batch ``x`` of shape ``(N, *shape)`` to energies of shape ``(N,)``."""


class GaussianBase(nn.Module):
    """Gaussian over the data shape: ``N(μ, diag σ²)``, or ``N(μ, LLᵀ)`` with a fixed full
    covariance when ``scale_tril`` is given.

    Args:
        mean: per-coordinate data mean, shape ``shape``.
        std: per-coordinate data standard deviation, shape ``shape`` (ignored with ``scale_tril``).
        learnable: train ``μ`` and ``log σ`` with the network (authors' choice) or keep them fixed.
        min_std: floor on the initial σ (constant pixels in images have zero spread).
        std_scale: multiply the initial σ by this factor (a wider base covers the data better).
        scale_tril: lower-triangular Cholesky factor ``L`` (D × D, ``D = prod(shape)``) of a full
            covariance; kept fixed (a buffer), ``μ`` follows ``learnable``.
    """

    def __init__(self, mean: Tensor, std: Tensor, learnable: bool = True,
                 min_std: float = 1e-2, std_scale: float = 1.0,
                 scale_tril: Tensor | None = None) -> None:
        super().__init__()
        mean = torch.as_tensor(mean, dtype=torch.float32)
        std = torch.as_tensor(std, dtype=torch.float32).clamp_min(min_std) * std_scale
        self.mu = nn.Parameter(mean.clone(), requires_grad=learnable)
        self.full = scale_tril is not None
        if self.full:
            tril = torch.as_tensor(scale_tril, dtype=torch.float32)
            check(tril.shape == (mean.numel(), mean.numel()),
                  f"scale_tril must be {mean.numel()}×{mean.numel()}, got {tuple(tril.shape)}")
            self.register_buffer("scale_tril", tril.tril().clone())
            std = tril.pow(2).sum(1).sqrt().reshape(mean.shape)  # marginal σ (for log_sigma)
            self.log_sigma = nn.Parameter(std.log(), requires_grad=False)
        else:
            self.log_sigma = nn.Parameter(std.log(), requires_grad=learnable)

    @property
    def shape(self) -> torch.Size:
        return self.mu.shape

    def whiten(self, x: Tensor) -> Tensor:
        """``z`` with ``x = μ + Lz`` (``L = diag σ`` for the diagonal Gaussian)."""
        if not self.full:
            return (x - self.mu) * torch.exp(-self.log_sigma)
        d = (x - self.mu).flatten(1).to(self.scale_tril.dtype)
        z = torch.linalg.solve_triangular(self.scale_tril, d.T, upper=False).T
        return z.reshape(x.shape).to(x.dtype)

    def unwhiten(self, z: Tensor) -> Tensor:
        """``x = μ + Lz``, the inverse of :meth:`whiten`."""
        if not self.full:
            return self.mu + torch.exp(self.log_sigma) * z
        x = z.flatten(1).to(self.scale_tril.dtype) @ self.scale_tril.T
        return self.mu + x.reshape(z.shape).to(z.dtype)

    def log_det_scale(self) -> Tensor:
        """``log |det L|``: ``log p(x) = log N(z; 0, I) − log |det L|``."""
        if not self.full:
            return self.log_sigma.sum()
        return self.scale_tril.diagonal().abs().log().sum()

    def log_prob(self, x: Tensor) -> Tensor:
        """``log N(x; μ, Σ)`` summed over all non-batch dimensions, shape ``(N,)``."""
        if not self.full:
            z = (x - self.mu) * torch.exp(-self.log_sigma)
            per_coord = -0.5 * z.pow(2) - self.log_sigma - 0.5 * math.log(2 * math.pi)
            return per_coord.flatten(1).sum(1)
        z = self.whiten(x).flatten(1)
        return (-0.5 * z.pow(2).sum(1) - self.log_det_scale()
                - 0.5 * z.shape[1] * math.log(2 * math.pi))

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` independent draws, shape ``(n, *shape)``."""
        eps = torch.randn((n, *self.shape), generator=generator, device=self.mu.device)
        return self.unwhiten(eps).detach()


BASES = ("gaussian", "mixture", "none")
BASE_FITS = ("em", "classes")          # energy.base_fit (base=mixture): how the components are fitted
BASE_WEIGHTS = ("fitted", "uniform")   # energy.base_weights (base=mixture): the fit's π_k, or 1/K


class MixtureBase(nn.Module):
    """A fixed Gaussian mixture ``Σ_k π_k N(μ_k, Σ_k)`` over the data shape (full covariances),
    fitted to training images by scikit-learn's ``GaussianMixture`` (:meth:`fit`).

    Everything is a buffer (nothing is learned; ``state_dict`` carries the fit, so a checkpoint
    rebuilds the same base without refitting). ``log_prob`` uses the precision Cholesky factors
    ``U_k`` (``Σ_k⁻¹ = U_k U_kᵀ``): ``log N(x; μ_k, Σ_k) = Σ log diag U_k − |(x − μ_k)ᵀU_k|²/2 −
    D/2·log 2π``; ``sample`` draws a component, then ``μ_k + L_k ε`` with ``Σ_k = L_k L_kᵀ``.
    Before :meth:`fit` the buffers are placeholders of the right shapes (what a checkpoint's
    state is loaded into).

    Args:
        shape: the data shape (``D = prod(shape)``).
        n_components: number of components ``K``.
        reg_covar: ``reg_covar`` of the fit (added to every covariance's diagonal).
        fit: ``em`` (scikit-learn's EM from k-means, unsupervised) or ``classes`` (one component
            per class of the labelled images: the class's mean and covariance, its frequency as
            weight; the base then knows the classes' shapes).
        weights: ``fitted`` (the fit's ``π_k``) or ``uniform`` (every ``π_k = 1/K``: with
            ``fit=classes`` the base knows the classes but not how often each occurs, which
            training has to learn: the mode-weight experiment).
    """

    def __init__(self, shape: Sequence[int], n_components: int = 5,
                 reg_covar: float = 1e-3, fit: str = "em", weights: str = "fitted") -> None:
        super().__init__()
        check(fit in BASE_FITS, f"energy.base_fit={fit!r} is not one of {list(BASE_FITS)}")
        check(weights in BASE_WEIGHTS,
              f"energy.base_weights={weights!r} is not one of {list(BASE_WEIGHTS)}")
        self._shape = torch.Size(int(s) for s in shape)
        k, d = int(n_components), math.prod(self._shape)
        self.n_components, self.reg_covar = k, float(reg_covar)
        self.fit_method, self.weights = fit, weights
        self.register_buffer("log_pi", torch.full((k,), -math.log(k)))
        self.register_buffer("means", torch.zeros(k, d))
        self.register_buffer("prec_chol", torch.eye(d).repeat(k, 1, 1))   # U_k
        self.register_buffer("scale_tril", torch.eye(d).repeat(k, 1, 1))  # L_k
        self.register_buffer("mu", torch.zeros(self._shape))  # the mixture's mean (device, shape)

    @property
    def shape(self) -> torch.Size:
        return self._shape

    @torch.no_grad()
    def fit(self, x: Tensor, labels: Tensor | None = None, seed: int = 0) -> "MixtureBase":
        """Fit the mixture to the points ``x`` (N, *shape): by EM from a k-means start (fixed
        seed), or with ``fit=classes`` one component per class of ``labels`` (N,), in the
        order of the sorted class labels."""
        flat = x.detach().flatten(1).double().cpu()
        k = self.n_components
        check(len(flat) >= k, f"energy.base_components={k} exceeds the {len(flat)} images the "
              "base is fitted to")
        if self.fit_method == "classes":
            check(labels is not None, "energy.base_fit=classes needs labelled training images")
            labels = torch.as_tensor(labels).cpu()
            classes = labels.unique()
            check(len(classes) == k, f"energy.base_fit=classes makes one component per class: "
                  f"energy.base_components={k}, but the training images hold {len(classes)} "
                  f"classes")
            eye = torch.eye(flat.shape[1], dtype=torch.float64)
            parts = [flat[labels == c] for c in classes]
            check(all(len(p) > 1 for p in parts), "energy.base_fit=classes: a class has fewer "
                  "than 2 training images")
            means = torch.stack([p.mean(0) for p in parts])
            cov = torch.stack([torch.cov(p.T).reshape(len(eye), len(eye)) + self.reg_covar * eye
                               for p in parts])
            weights = torch.tensor([len(p) / len(flat) for p in parts], dtype=torch.float64)
            scale_tril = torch.linalg.cholesky(cov)
            prec_chol = torch.linalg.solve_triangular(scale_tril, eye.expand_as(cov),
                                                      upper=False).transpose(1, 2)  # U = L⁻ᵀ
        else:
            from sklearn.mixture import GaussianMixture

            g = GaussianMixture(k, covariance_type="full", reg_covar=self.reg_covar,
                                random_state=seed, max_iter=200).fit(flat.numpy())
            means, weights = torch.as_tensor(g.means_), torch.as_tensor(g.weights_)
            scale_tril = torch.linalg.cholesky(torch.as_tensor(g.covariances_, dtype=torch.float64))
            prec_chol = torch.as_tensor(g.precisions_cholesky_)
        if self.weights == "uniform":
            weights = torch.full((k,), 1.0 / k, dtype=torch.float64)
        dev = self.means.device
        self.log_pi.copy_(weights.log().float().to(dev))
        self.means.copy_(means.float().to(dev))
        self.prec_chol.copy_(prec_chol.float().to(dev))
        self.scale_tril.copy_(scale_tril.float().to(dev))
        self.mu.copy_((self.log_pi.exp()[:, None] * self.means).sum(0).reshape(self._shape))
        return self

    def component_log_prob(self, x: Tensor) -> Tensor:
        """``log π_k + log N(x; μ_k, Σ_k)``, shape ``(N, K)``."""
        d = x.flatten(1)[:, None, :] - self.means  # (N, K, D)
        y = torch.einsum("nkd,kde->nke", d, self.prec_chol)
        log_det = self.prec_chol.diagonal(dim1=1, dim2=2).log().sum(1)  # log |det U_k|
        return (self.log_pi + log_det - 0.5 * y.pow(2).sum(2)
                - 0.5 * d.shape[2] * math.log(2 * math.pi))

    def log_prob(self, x: Tensor) -> Tensor:
        """``log Σ_k π_k N(x; μ_k, Σ_k)``, shape ``(N,)``."""
        return torch.logsumexp(self.component_log_prob(x), dim=1)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` independent draws, shape ``(n, *shape)``."""
        dev = self.means.device
        k = torch.multinomial(self.log_pi.exp(), n, replacement=True, generator=generator)
        eps = torch.randn((n, self.means.shape[1]), generator=generator, device=dev)
        x = torch.empty_like(eps)
        for j in range(self.n_components):  # per component: memory O(n·D), not O(n·D²)
            idx = k == j
            x[idx] = self.means[j] + eps[idx] @ self.scale_tril[j].T
        return x.reshape(n, *self._shape).detach()


class EnergyModel(nn.Module):
    """Base class of every energy: ``E(x) = net(x) − base.log_prob(x)`` (``base: gaussian``) or
    ``E(x) = net(x)`` (``base: none``, the authors' image energies).

    Subclasses build ``self.net`` (a module mapping ``(N, *shape)`` to ``(N,)`` or ``(N, 1)``).
    ``output_bound = b`` passes the network's output through ``b·tanh(f/b)``: the identity near
    zero, never beyond ``±b``, so the model's density stays within ``e^{±b}`` of its base's (up to
    normalisation) and the energy cannot run away where no negative goes.
    ``data_mean``/``data_std``/``data_shape`` are filled in by the trainer from the dataset.
    Without a base, ``self.base`` is ``None`` and :meth:`sample_base` draws ``N(0, I)`` noise
    (``self.noise``), which starts chains but is not part of the model.
    ``base: mixture`` is :class:`MixtureBase` with ``base_components``, ``base_reg``,
    ``base_fit`` and ``base_weights`` (its ``n_components``, ``reg_covar``, ``fit``, ``weights``).

    Attributes:
        example_shape: a data shape the energy takes (the tests build every energy option on
            it): ``(2,)`` here; image energies declare an image shape.
    """

    example_shape: tuple[int, ...] = (2,)

    def __init__(self, data_shape: Sequence[int], data_mean: Tensor, data_std: Tensor,
                 learn_base: bool = True, base_min_std: float = 1e-2,
                 base_std_scale: float = 1.0, base: str = "gaussian",
                 base_components: int = 5, base_reg: float = 1e-3,
                 output_bound: float | None = None, base_fit: str = "em",
                 base_weights: str = "fitted") -> None:
        super().__init__()
        self.data_shape = tuple(int(s) for s in data_shape)
        if output_bound is not None:
            positive("energy.output_bound", output_bound)
        self.output_bound = None if output_bound is None else float(output_bound)
        check(base in BASES, f"energy.base={base!r} is not one of {list(BASES)}")
        check(base_std_scale > 0, f"energy.base_std_scale must be > 0, got {base_std_scale}")
        self.base: GaussianBase | MixtureBase | None = None
        self.noise: GaussianBase | None = None
        if base == "mixture":
            positive("energy.base_components", base_components)
            positive("energy.base_reg", base_reg)
            self.base = MixtureBase(self.data_shape, int(base_components), float(base_reg),
                                    base_fit, base_weights)
        elif base == "gaussian":
            self.base = GaussianBase(torch.as_tensor(data_mean).reshape(self.data_shape),
                                     torch.as_tensor(data_std).reshape(self.data_shape),
                                     learnable=learn_base, min_std=base_min_std,
                                     std_scale=base_std_scale)
        else:
            self.noise = GaussianBase(torch.zeros(self.data_shape), torch.ones(self.data_shape),
                                      learnable=False)
        self.net: nn.Module = nn.Identity()  # replaced by subclasses

    @property
    def device(self) -> torch.device:
        return (self.base if self.base is not None else self.noise).mu.device

    @property
    def needs_base_fit(self) -> bool:
        """Whether the base is fitted to training data (``base: mixture``) before training."""
        return isinstance(self.base, MixtureBase)

    @property
    def base_needs_labels(self) -> bool:
        """Whether fitting the base needs the training images' labels (``base_fit: classes``)."""
        return isinstance(self.base, MixtureBase) and self.base.fit_method == "classes"

    def fit_base(self, x: Tensor, labels: Tensor | None = None) -> None:
        """Fit a data-fitted base (``base: mixture``) to the training points ``x`` (and their
        ``labels`` for ``base_fit: classes``); no-op for the other bases (their statistics come
        in through ``data_mean``/``data_std``)."""
        if isinstance(self.base, MixtureBase):
            self.base.fit(x, labels)

    def network(self, x: Tensor) -> Tensor:
        """The network's output for ``x`` (``self.net(x)``; subclasses may run it faster)."""
        return self.net(x)

    def forward(self, x: Tensor) -> Tensor:
        out = self.network(x).reshape(x.shape[0])
        if self.output_bound is not None:  # f ↦ b·tanh(f/b): |f| < b, the model within e^{±b} of its base
            out = self.output_bound * torch.tanh(out / self.output_bound)
        return out if self.base is None else out - self.base.log_prob(x)

    def sample_base(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Draws from the base distribution (exact samples of the initial model when the
        network's last layer is zero-initialised), or ``N(0, I)`` noise without a base."""
        return (self.base if self.base is not None else self.noise).sample(n, generator)

    def base_log_prob(self, x: Tensor) -> Tensor:
        """``log`` density of the distribution :meth:`sample_base` draws from (the proposal
        of fresh particles, for importance weights)."""
        return (self.base if self.base is not None else self.noise).log_prob(x)

    def frozen(self) -> "FrozenEnergy":
        """A functional view of the energy at the current parameters (copies only θ)."""
        return FrozenEnergy(self)


class FrozenEnergy(nn.Module):
    """``E_{θ_k}``: the same module evaluated at a snapshot of its parameters.

    Used as ``energy_before`` in ``Sampler.update``; ``params`` is the snapshot, so the
    parameter step ``θ_{k+1} − θ_k`` is ``live.param − frozen.params[name]``.

    The snapshot lives in buffers allocated once; :meth:`refresh` copies the live values into
    them (one ``_foreach_copy_``, no allocation), so the trainer can keep one
    ``FrozenEnergy`` per run and refresh it every step (:func:`pdebm.step.train_step`).
    """

    def __init__(self, model: EnergyModel) -> None:
        super().__init__()
        self._model = [model]  # a list keeps the live module out of this module's children
        self.params = {k: v.detach().clone() for k, v in model.named_parameters()}
        self.buffers_ = {k: v.detach().clone() for k, v in model.named_buffers()}

    def refresh(self) -> "FrozenEnergy":
        """Copy the live module's current parameters and buffers into the snapshot in place."""
        live = dict(self.model.named_parameters())
        live_buffers = dict(self.model.named_buffers())
        if live.keys() != self.params.keys() or live_buffers.keys() != self.buffers_.keys():
            self.__init__(self.model)  # the module changed shape: take a fresh snapshot
            return self
        dst = [*self.params.values(), *self.buffers_.values()]
        src = [*(live[k].detach() for k in self.params), *(live_buffers[k] for k in self.buffers_)]
        if any(d.shape != s.shape or d.device != s.device or d.dtype != s.dtype
               for d, s in zip(dst, src)):
            self.__init__(self.model)
            return self
        if dst:
            torch._foreach_copy_(dst, src)
        return self

    @property
    def model(self) -> EnergyModel:
        return self._model[0]

    @property
    def device(self) -> torch.device:
        return self.model.device

    def forward(self, x: Tensor) -> Tensor:
        return functional_call(self.model, {**self.params, **self.buffers_}, (x,))


def zero_init_(layer: nn.Module) -> None:
    """Zero a layer's weight and bias so that the network outputs zero at initialisation."""
    nn.init.zeros_(layer.weight)
    if getattr(layer, "bias", None) is not None:
        nn.init.zeros_(layer.bias)


class SwishBeta(nn.Module):
    """Swish with a learnable slope per unit, ``x·sigmoid(βx)``, ``β`` initialised to 1 (the
    authors' ``Swish(dim)`` in necludov/particle-EBMs ``core/networks.py``).

    With ``width`` the module holds one ``β`` per unit (features of a 2D input, channels of a
    4D one); without, one shared ``β``.
    """

    def __init__(self, width: int | None = None) -> None:
        super().__init__()
        self.beta = nn.Parameter(torch.ones(width if width is not None else 1))

    def forward(self, x: Tensor) -> Tensor:
        beta = self.beta.view(1, -1, *([1] * (x.dim() - 2))) if x.dim() > 1 else self.beta
        return x * torch.sigmoid(beta * x)


ACTIVATIONS = {"silu": nn.SiLU, "swish": nn.SiLU, "relu": nn.ReLU, "elu": nn.ELU,
               "leaky_relu": lambda: nn.LeakyReLU(0.2), "tanh": nn.Tanh, "softplus": nn.Softplus,
               "gelu": nn.GELU, "swish_beta": SwishBeta}
PER_UNIT = {"swish_beta"}
"""Activations with parameters per unit: built with the layer's width."""


def make_activation(name: str, width: int | None = None) -> nn.Module:
    """Build an activation by name (``width``: units of the layer it follows, for activations
    with per-unit parameters); unknown names are a :class:`ConfigError`."""
    one_of("energy.activation", name, sorted(ACTIVATIONS))
    return ACTIVATIONS[name](width) if name in PER_UNIT else ACTIVATIONS[name]()

"""Image data sets (digits, IDX-file MNIST), the conv energy with spectral norm, and AIS."""

from __future__ import annotations

import gzip
import math
import struct
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from pdebm.data.images import MNIST, Digits, FashionMNIST, ImageDataset, read_idx
from pdebm.energy.base import EnergyModel
from pdebm.energy.conv import ConvEnergy
from pdebm.errors import ConfigError
from pdebm.metrics.ais import ais_log_likelihood, ais_log_z, beta_schedule
from pdebm.samplers.langevin import LangevinConfig


@pytest.fixture(scope="module")
def digits() -> Digits:
    return Digits(seed=0)


def one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg and msg
    return msg


# --------------------------------------------------------------------------- data sets

def test_digits_offline_shape_and_range(digits):
    assert digits.shape == (1, 8, 8) and digits.is_image and not digits.is_2d
    assert digits.levels == 17 and digits.n_dims == 64
    assert digits.n_train == 1438 and digits.test.shape == (359, 1, 8, 8)
    assert digits.mean.shape == digits.std.shape == (1, 8, 8)
    assert 0.0 <= float(digits.test.min()) and float(digits.test.max()) < 1.0
    batch = digits.train_batch(100)
    assert batch.shape == (100, 1, 8, 8) and batch.dtype == torch.float32
    # dequantisation: every pixel lies inside its grey level's cell [v/17, (v+1)/17)
    v = torch.floor(batch * 17)
    assert torch.all((batch >= v / 17) & (batch < (v + 1) / 17)) and v.max() <= 16


def test_digits_split_fixed_batches_seeded_and_resumable():
    a, b, c = Digits(seed=0), Digits(seed=0), Digits(seed=1)
    assert torch.equal(a.test, c.test) and torch.equal(a.mean, c.mean)  # independent of the seed
    assert torch.equal(a.train_batch(64), b.train_batch(64))
    assert not torch.equal(a.train_batch(64), c.train_batch(64))
    state = a.state_dict()
    expected = [a.train_batch(1000) for _ in range(3)]  # crosses an epoch boundary
    b.load_state_dict(state)
    assert all(torch.equal(e, b.train_batch(1000)) for e in expected)
    # one epoch without dequantisation visits every training image exactly once
    d = Digits(seed=3, dequantize=False)
    epoch = d.train_batch(d.n_train).flatten(1)
    ref = torch.from_numpy(d._train.reshape(d.n_train, -1).astype(np.float32)) / 16
    key = lambda t: sorted(map(tuple, t.tolist()))  # noqa: E731
    assert key(epoch) == key(ref)


@pytest.mark.parametrize("transform", ["none", "logit"])
@pytest.mark.parametrize("dequantize", [True, False])
def test_preprocessing_inverts(transform, dequantize):
    d = Digits(transform=transform, dequantize=dequantize, n_train=200, n_test=50)
    u = torch.rand(10, 1, 8, 8, dtype=torch.float64)
    assert torch.allclose(d.to_images(d.to_model(u)), u, atol=1e-9)
    pixels = d.to_images(d.test)
    assert pixels.shape == (50, 1, 8, 8) and 0 <= pixels.min() and pixels.max() <= 1
    if not dequantize:  # exact grey levels v/16 come back
        assert torch.allclose(pixels * 16, torch.round(pixels * 16), atol=1e-4)
    if transform == "logit":
        lam = d.logit_lambda
        assert float(d.test.abs().max()) <= math.log((1 - lam) / lam) + 1e-5
    # log |∂x/∂u| against autograd: the Jacobian is diagonal, so sum the log-derivatives
    u = (torch.rand(4, 1, 8, 8, dtype=torch.float64) * 0.98 + 0.01).requires_grad_(True)
    x = d.to_model(u)
    (grad,) = torch.autograd.grad(x.sum(), u)
    expected = grad.abs().log().flatten(1).sum(1) if transform == "logit" else torch.zeros(4)
    assert torch.allclose(d.log_det_jacobian(x.detach()), expected.to(x.dtype), atol=1e-8)


def test_image_options_are_checked():
    with pytest.raises(ConfigError, match="dataset.transform='sqrt'"):
        Digits(transform="sqrt")
    with pytest.raises(ConfigError, match="dataset.logit_lambda"):
        Digits(logit_lambda=0.5)
    with pytest.raises(ConfigError, match="dataset.n_train=5000 exceeds the 1438"):
        Digits(n_train=5000)


# --------------------------------------------------------------------------- IDX files

def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> Path:
    """A uint8 IDX file written by hand: 00 00 08 <ndim>, big-endian sizes, data."""
    raw = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    raw += array.astype(np.uint8).tobytes()
    (gzip.open if gz else open)(path, "wb").write(raw)
    return path


def test_idx_parsing_plain_and_gz(tmp_path):
    a = np.arange(2 * 3 * 5, dtype=np.uint8).reshape(2, 3, 5)
    assert np.array_equal(read_idx(write_idx(tmp_path / "a-idx3-ubyte", a)), a)
    assert np.array_equal(read_idx(write_idx(tmp_path / "a-idx3-ubyte.gz", a, gz=True)), a)
    big_endian = bytes([0, 0, 0x0C, 1]) + struct.pack(">I", 3) + struct.pack(">3i", 1, -2, 70000)
    (tmp_path / "i32").write_bytes(big_endian)
    assert read_idx(tmp_path / "i32").tolist() == [1, -2, 70000]


@pytest.mark.parametrize("content, match", [
    (b"\x01\x02\x08\x03" + b"\x00" * 12, "not an IDX file"),
    (bytes([0, 0, 8, 3]) + struct.pack(">3I", 2, 4, 4) + b"\x00" * 20, "truncated or corrupt"),
    (bytes([0, 0, 8, 3]) + b"\x00\x00", "truncated"),
    (b"", "not an IDX file"),
])
def test_idx_malformed_is_one_line(tmp_path, content, match):
    (tmp_path / "bad").write_bytes(content)
    with pytest.raises(ConfigError, match=match) as err:
        read_idx(tmp_path / "bad")
    assert "bad" in one_line(err)
    (tmp_path / "bad.gz").write_bytes(b"not gzip at all")
    with pytest.raises(ConfigError, match="cannot read IDX file") as err:
        read_idx(tmp_path / "bad.gz")
    one_line(err)


def test_mnist_reads_idx_directory(tmp_path):
    rng = np.random.default_rng(0)
    train, test = rng.integers(0, 256, (30, 6, 6)), rng.integers(0, 256, (7, 6, 6))
    write_idx(tmp_path / "train-images-idx3-ubyte", train)
    (tmp_path / "raw").mkdir()
    write_idx(tmp_path / "raw" / "t10k-images-idx3-ubyte.gz", test, gz=True)
    d = MNIST(root=tmp_path, seed=0, dequantize=False, n_train=20)
    assert d.shape == (1, 6, 6) and d.levels == 256 and d.n_train == 20 and len(d.test) == 7
    pixels = d.to_images(d.test)[:, 0] * 255
    assert torch.allclose(pixels, torch.from_numpy(test).float(), atol=1e-3)
    assert d.train_batch(25).shape == (25, 1, 6, 6)
    f = FashionMNIST(root=tmp_path, transform="logit")
    assert f.shape == (1, 6, 6) and torch.isfinite(f.test).all()


def test_missing_mnist_directory_fails_fast(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(ConfigError) as err:
        MNIST(root=missing)
    msg = one_line(err)
    assert str(missing) in msg and "train-images-idx3-ubyte" in msg
    assert "t10k-images-idx3-ubyte" in msg and "download=true" in msg
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((2, 4, 4)))
    with pytest.raises(ConfigError, match="t10k-images-idx3-ubyte.*not found") as err:
        FashionMNIST(root=tmp_path)
    one_line(err)


def test_download_offline_is_one_line(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")
    monkeypatch.setattr("urllib.request.urlopen", offline)
    with pytest.raises(ConfigError, match="dataset.download=true: cannot fetch") as err:
        MNIST(root=tmp_path / "mnist", download=True)
    assert "offline" in one_line(err)


# --------------------------------------------------------------------------- conv energy

def make_conv(shape, **kw) -> ConvEnergy:
    torch.manual_seed(0)
    mean, std = torch.full(shape, 0.3), torch.full(shape, 0.25)
    return ConvEnergy(shape, mean, std, channels=kw.pop("channels", [8, 16, 16]), **kw)


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28)])
@pytest.mark.parametrize("sn", [True, False])
def test_conv_energy_shapes(shape, sn):
    x = torch.rand(5, *shape)
    e = make_conv(shape, spectral_norm=sn, zero_init_last=False)
    assert e.feature_shape[1:] == (4, 4)
    out = e(x)
    assert out.shape == (5,) and torch.isfinite(out).all()
    assert not torch.allclose(out, -e.base.log_prob(x))
    (g,) = torch.autograd.grad(e(x.requires_grad_()).sum(), x)
    assert g.shape == x.shape and torch.isfinite(g).all()
    z = make_conv(shape, spectral_norm=sn, head="pool")  # zero_init_last=True by default
    assert torch.allclose(z(x), -z.base.log_prob(x))
    assert torch.allclose(z.frozen()(x), z(x))  # functional_call view (FrozenEnergy)


def test_conv_energy_rejects_bad_config():
    with pytest.raises(ConfigError, match="energy=conv needs image data"):
        ConvEnergy((2,), torch.zeros(2), torch.ones(2))
    with pytest.raises(ConfigError, match="energy.channels"):
        make_conv((1, 8, 8), channels=[])
    with pytest.raises(ConfigError, match="energy.activation"):
        make_conv((1, 8, 8), activation="swishy")


def test_spectral_norm_is_deterministic_and_frozen_safe():
    """σ̂ tracks the weight only when it changes: repeated calls, train/eval mode and frozen
    snapshots all see one function; a snapshot keeps the old energy after an optimizer step."""
    e = make_conv((1, 8, 8), zero_init_last=False)
    x = torch.rand(6, 1, 8, 8)
    conv = e.net[0]
    sigma = torch.linalg.matrix_norm(conv.weight.detach().flatten(1), ord=2)
    assert math.isclose(float(sigma), 1.0, rel_tol=1e-3)
    old = e(x).detach()
    e.eval()
    assert torch.equal(e(x), old) and torch.equal(e(x), old)
    e.train()
    frozen = e.frozen()
    assert torch.equal(frozen(x), old)
    live_buffers = {k: v.clone() for k, v in e.named_buffers()}
    opt = torch.optim.Adam(e.parameters(), lr=1e-2)
    e(x).sum().backward()
    opt.step()
    new = e(x).detach()
    assert not torch.allclose(new, old)
    assert torch.equal(e(x), new)                       # one power iteration per weight update
    assert torch.equal(frozen(x), old)                  # the snapshot's own buffers
    assert not torch.equal(e.net[0].parametrizations.weight[0]._u, live_buffers[
        "net.0.parametrizations.weight.0._u"])          # the live estimate moved on ...
    frozen(x)
    assert torch.equal(e(x), new)                       # ... and frozen calls never touch it
    clone = make_conv((1, 8, 8), zero_init_last=False)
    clone.load_state_dict(e.state_dict())               # resumes the exact same function
    assert torch.equal(clone(x), new)


def test_spectral_norm_of_a_nan_weight_leaves_the_graph_intact():
    """A weight that went NaN is "unchanged" on the next pass: two forward passes (data, then
    negatives, as the loss does) and one backward must give NaN gradients for the divergence
    check to report, not an autograd error from u and v rewritten in place."""
    e = make_conv((1, 8, 8), zero_init_last=False)
    with torch.no_grad():
        e.net[0].parametrizations.weight.original.fill_(float("nan"))
    x = torch.rand(4, 1, 8, 8)
    loss = e(x).mean() - e(x + 0.1).mean()
    loss.backward()  # raised "modified by an inplace operation" before
    assert not torch.isfinite(loss)


# --------------------------------------------------------------------------- AIS

class GaussianEnergy(EnergyModel):
    """``E(x) = ½‖(x − m)/s‖² + c`` with the closed form ``log Z = D·log(s√(2π)) − c``;
    its Gaussian base (mean 0.2, std 2) differs from the target (mean 1, std 0.5)."""

    def __init__(self, shape=(1, 4, 4), m=1.0, s=0.5, c=3.0) -> None:
        super().__init__(shape, torch.full(shape, 0.2), torch.full(shape, 2.0))
        self.m, self.s, self.c = m, s, c
        self.net = _Quadratic(self)

    def log_z(self) -> float:
        return math.prod(self.data_shape) * math.log(self.s * math.sqrt(2 * math.pi)) - self.c


class _Quadratic(torch.nn.Module):
    """``net(x) = E(x) + log N_base(x)``, so that ``EnergyModel.forward`` gives ``E``."""

    def __init__(self, owner: GaussianEnergy) -> None:
        super().__init__()
        self._owner = [owner]

    def forward(self, x):
        o = self._owner[0]
        return 0.5 * ((x - o.m) / o.s).pow(2).flatten(1).sum(1) + o.c + o.base.log_prob(x)


def test_beta_schedules():
    for kind in ("linear", "geometric"):
        b = beta_schedule(50, kind)
        assert len(b) == 50 and b[-1] == 1 and torch.all(b[1:] > b[:-1]) and b[0] > 0
    with pytest.raises(ConfigError, match="ais.beta_schedule"):
        beta_schedule(5, "cosine")


def test_ais_recovers_gaussian_log_z_and_improves_with_temperatures():
    e = GaussianEnergy()
    errors = {}
    for n_temps in (3, 30, 300):
        r = ais_log_z(e, n_chains=256, n_temps=n_temps, beta_min=1e-3, seed=0)
        errors[n_temps] = r.log_z - e.log_z()
    r300 = ais_log_z(e, n_chains=256, n_temps=300, beta_min=1e-3, seed=0)
    assert abs(errors[300]) < 4 * r300.log_z_se + 0.05, errors
    assert abs(errors[3]) > abs(errors[30]) > abs(errors[300]), errors
    assert 0.4 < r300.accept_rate < 0.75 and r300.samples.shape == (256, 1, 4, 4)
    # the weighted final samples match the target's mean
    w = torch.softmax(r300.log_weights, 0).float()
    assert abs(float((w[:, None] * r300.samples.flatten(1)).sum(0).mean()) - e.m) < 0.1


def test_ais_ula_weights_and_seed():
    e = GaussianEnergy()
    ula = LangevinConfig(n_steps=2, step_size=0.01, mala=False)
    r = ais_log_z(e, n_chains=256, n_temps=200, kernel=ula, beta_min=1e-3, seed=1)
    assert r.accept_rate is None and abs(r.log_z - e.log_z()) < 4 * r.log_z_se + 0.1
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = ais_log_z(e, n_chains=32, n_temps=10, seed=7)
    assert torch.equal(torch.random.get_rng_state(), before)  # caller's stream untouched
    b = ais_log_z(e, n_chains=32, n_temps=10, seed=7)
    assert a.log_z == b.log_z and torch.equal(a.samples, b.samples)


def test_ais_log_likelihood_gaussian_and_digits(digits):
    e = GaussianEnergy()
    x = e.m + e.s * torch.randn(500, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    res = ais_log_likelihood(e, x, n_chains=256, n_temps=300, beta_min=1e-3, seed=0)
    exact = float((-0.5 * ((x - e.m) / e.s).pow(2).flatten(1).sum(1)).mean()) - e.log_z() - e.c
    assert abs(res.log_likelihood - exact) < 4 * res.ais.log_z_se + 0.05
    assert math.isclose(res.bits_per_dim, -res.log_likelihood / (16 * math.log(2)))
    # zero-initialised conv energy on digits: the model *is* its base, log Z = 0 exactly
    model = ConvEnergy(digits.shape, digits.mean, digits.std, channels=[8, 8])
    res = ais_log_likelihood(model, digits.test, dataset=digits, n_chains=16, n_temps=5, seed=0)
    assert abs(res.ais.log_z) < 1e-9 and res.ais.log_z_se < 1e-9
    ll_base = float(model.base.log_prob(digits.test).detach().double().mean())
    assert math.isclose(res.log_likelihood, ll_base, rel_tol=1e-6)
    assert math.isclose(res.bits_per_dim, (-ll_base + 64 * math.log(17)) / (64 * math.log(2)),
                        rel_tol=1e-6)
    assert set(res.scalars()) >= {"log_likelihood", "bits_per_dim", "log_z", "log_z_se"}
    assert res.samples.shape == (16, 1, 8, 8)


def test_image_dataset_is_a_dataset():
    assert issubclass(Digits, ImageDataset) and issubclass(FashionMNIST, MNIST)


@pytest.mark.parametrize("target", ["pdebm.energy.mlp.MLPEnergy", "pdebm.energy.conv.ConvEnergy"])
def test_output_bound_keeps_the_network_within_b_of_the_base(target):
    """``energy.output_bound=b``: the zero-initialised model is still exactly its base, and however
    large the network's raw output, ``|E + log base| ≤ b`` (without the bound it runs past b)."""
    from hydra.utils import get_class

    shape = (1, 8, 8)
    cls = get_class(target)
    kw = dict(data_shape=shape, data_mean=torch.zeros(shape), data_std=torch.ones(shape),
              learn_base=False)
    bounded, free = cls(**kw, output_bound=3.0), cls(**kw)
    x = torch.randn(16, *shape)
    base = -bounded.base_log_prob(x)
    assert torch.allclose(bounded(x), base)  # zero last layer: the base, bound or not
    free.load_state_dict(bounded.state_dict())
    with torch.no_grad():
        for m in (bounded, free):
            last = [p for p in m.net.parameters()][-2:]  # the last layer's weight and bias
            last[0].fill_(5.0), last[1].fill_(-50.0)
    f_bounded, f_free = bounded(x) - base, free(x) - base
    assert (f_bounded.abs() <= 3.0 + 1e-5).all()
    assert (f_free.abs() > 3.0).any()
    with pytest.raises(ConfigError, match="energy.output_bound"):
        cls(**kw, output_bound=0.0)


def test_mlp_spectral_norm_normalises_every_hidden_layer_not_the_last():
    from pdebm.energy.mlp import MLPEnergy

    torch.manual_seed(0)
    shape = (1, 8, 8)
    energy = MLPEnergy(shape, torch.zeros(shape), torch.ones(shape), hidden=32, depth=2,
                       spectral_norm=True, zero_init_last=False)
    linears = [m for m in energy.net if isinstance(m, torch.nn.Linear)]
    for layer in linears[:-1]:  # W / σ̂(W), σ̂ ≤ σ from 30 power iterations: spectral norm just ≥ 1
        norm = float(torch.linalg.matrix_norm(layer.weight, ord=2))
        assert 1.0 - 1e-4 <= norm < 1.05, norm
    assert not hasattr(linears[-1], "parametrizations")
    plain = MLPEnergy(shape, torch.zeros(shape), torch.ones(shape), hidden=32, depth=2)
    assert not any(hasattr(m, "parametrizations") for m in plain.net)


def test_mlp_spectral_norm_scale_sets_every_hidden_layers_norm():
    """energy.sn_scale=c rescales each hidden layer to spectral norm c (c·W/σ̂); c = 1 is the
    plain normalisation, bit for bit, and c ≤ 0 is a config error."""
    from pdebm.energy.mlp import MLPEnergy

    shape = (1, 8, 8)
    kw = dict(hidden=32, depth=2, spectral_norm=True, zero_init_last=False)
    torch.manual_seed(0)
    scaled = MLPEnergy(shape, torch.zeros(shape), torch.ones(shape), sn_scale=1.5, **kw)
    torch.manual_seed(0)
    plain = MLPEnergy(shape, torch.zeros(shape), torch.ones(shape), **kw)
    torch.manual_seed(0)
    one = MLPEnergy(shape, torch.zeros(shape), torch.ones(shape), sn_scale=1.0, **kw)
    linears = [m for m in scaled.net if isinstance(m, torch.nn.Linear)]
    for layer in linears[:-1]:
        norm = float(torch.linalg.matrix_norm(layer.weight, ord=2))
        assert 1.5 * (1.0 - 1e-4) <= norm < 1.5 * 1.05, norm
    x = torch.randn(5, *shape)
    assert torch.equal(plain(x), one(x))
    assert not torch.allclose(plain(x), scaled(x))
    with pytest.raises(ConfigError, match="energy.sn_scale"):
        MLPEnergy(shape, torch.zeros(shape), torch.ones(shape), sn_scale=0.0, **kw)

"""More likelihoods (their math) and more data sets (loaded from files the tests write)."""

import math
import pickle

import numpy as np
import pyro
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from vaekit import VAE, evaluate, fit, runs
from vaekit.cli import cli
from vaekit.data import load_dataset
from vaekit.errors import DataError
from vaekit.likelihoods import (
    ContinuousBernoulli,
    DiscretizedLogistic,
    Gaussian,
    Laplace,
    _DiscretizedLogisticDist,
)

LEVELS = torch.arange(256, dtype=torch.float64) / 255


@pytest.mark.parametrize("logit", [-6.0, -0.5, 0.0, 1e-3, 2.0])
def test_continuous_bernoulli_normaliser_by_integration(logit):
    lam = torch.sigmoid(torch.tensor(logit, dtype=torch.float64))
    xs = torch.linspace(0, 1, 200001, dtype=torch.float64)
    d = ContinuousBernoulli()(torch.full((1, 1, 1, 1), logit, dtype=torch.float64))
    dens = torch.stack([d.log_prob(x.reshape(1, 1, 1, 1)) for x in xs[::1000]]).exp().squeeze()
    fine = torch.distributions.ContinuousBernoulli(probs=lam).log_prob(xs).exp()
    assert torch.trapezoid(fine, xs).item() == pytest.approx(1.0, abs=1e-6)
    # the closed form: C(λ) = 2 artanh(1 - 2λ) / (1 - 2λ), 2 at λ = 1/2
    c = 2.0 if abs(lam - 0.5) < 1e-6 else (2 * torch.atanh(1 - 2 * lam) / (1 - 2 * lam)).item()
    x = xs[::1000]
    expected = math.log(c) + x * lam.log() + (1 - x) * (1 - lam).log()
    torch.testing.assert_close(dens.log(), expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("loc, scale", [(0.3, 0.05), (0.0, 0.01), (1.0, 0.2), (-2.0, 0.5),
                                        (0.5, 0.003)])
def test_discretized_logistic_sums_to_one_and_matches_the_cdf(loc, scale):
    d = _DiscretizedLogisticDist(torch.full((256,), loc, dtype=torch.float64),
                                 torch.full((256,), scale, dtype=torch.float64))
    p = d.log_prob(LEVELS).exp()
    assert p.sum().item() == pytest.approx(1.0, abs=1e-4)
    k = 100  # an interior level: the logistic CDF difference over its bin
    cdf = lambda v: 1 / (1 + math.exp(-(v - loc) / scale))
    direct = cdf(k / 255 + 0.5 / 255) - cdf(k / 255 - 0.5 / 255)
    if direct > 1e-5:
        assert p[k].item() == pytest.approx(direct, rel=1e-6)
    assert DiscretizedLogistic.kind == "discrete"


def test_laplace_and_gaussian_scale_modes():
    loc, x = torch.rand(2, 1, 3, 3), torch.rand(2, 1, 3, 3)
    expected = (-(x - loc).abs() / 0.2 - math.log(2 * 0.2)).sum((1, 2, 3))
    torch.testing.assert_close(Laplace(0.2)(loc).log_prob(x), expected)
    pix = Gaussian(0.1, scale_mode="pixel")
    assert pix.params_per_channel == 2
    out = torch.zeros(2, 2, 3, 3)  # loc 0 and the raw scale at its starting point
    assert pix(out).base_dist.scale.mean().item() == pytest.approx(0.1, rel=1e-3)
    ch = Gaussian(0.1, scale_mode="channel", channels=3)
    assert ch.log_scale.shape == (3, 1, 1) and ch.log_scale.requires_grad
    vae = VAE(z_dim=2, likelihood=pix)
    assert vae.decoder(torch.zeros(1, 2)).shape == (1, 2, 28, 28)
    assert VAE.from_config(vae.config()).config() == vae.config()


@pytest.mark.parametrize("lik", [ContinuousBernoulli(), Gaussian(0.1, scale_mode="pixel"),
                                 Laplace(0.1, learn_scale=True), DiscretizedLogistic()],
                         ids=lambda lik: lik.name)
def test_each_likelihood_trains_and_round_trips(lik, mnist_small):
    train_x, test_x = mnist_small
    pyro.set_rng_seed(0)
    r = fit(VAE(z_dim=2, likelihood=lik), train_x[:256], test_x[:64], epochs=2, batch_size=64,
            device="cpu", progress=False)
    assert all(math.isfinite(h["test_neg_elbo"]) for h in r.history)
    assert r.history[1]["train_loss"] < r.history[0]["train_loss"]
    assert VAE.from_config(r.vae.config()).config() == r.vae.config()
    ev = evaluate(r.vae, lik.targets(test_x[:16].float() / 255), num_samples=4)
    if lik.kind == "discrete":
        assert ev.bits_per_dim == pytest.approx(ev.neg_log_px / (784 * math.log(2)))
    else:
        assert ev.bits_per_dim is not None


def _write_idx(path, data, magic):
    arr = np.asarray(data, dtype=np.uint8)
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    path.write_bytes(header + arr.tobytes())


def test_fashion_mnist_and_cifar10_from_files(tmp_path, monkeypatch):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    imgs = np.random.default_rng(0).integers(0, 256, (5, 28, 28))
    for split in ("train", "t10k"):
        _write_idx(raw / f"{split}-images-idx3-ubyte", imgs, 2051)
        _write_idx(raw / f"{split}-labels-idx1-ubyte", [0, 1, 2, 3, 9], 2049)
    x, y = load_dataset("fashion-mnist", tmp_path, download=False)
    assert x.shape == (5, 1, 28, 28) and x.dtype == torch.uint8 and y.tolist() == [0, 1, 2, 3, 9]
    assert torch.equal(x[:, 0], torch.as_tensor(imgs, dtype=torch.uint8))
    x32, _ = load_dataset("fashion-mnist", tmp_path, download=False, size=32, channels=3)
    assert x32.shape == (5, 3, 32, 32)

    cifar = tmp_path / "cifar-10-batches-py"
    cifar.mkdir()
    rgb = np.random.default_rng(1).integers(0, 256, (4, 3 * 32 * 32)).astype(np.uint8)
    batch = {"data": rgb, "labels": [1, 2, 3, 4]}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (cifar / name).write_bytes(pickle.dumps(batch))
    (cifar / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)  # fake files: other md5s
    x, y = load_dataset("cifar10", tmp_path, train=False, download=False)
    assert x.shape == (4, 3, 32, 32) and y.tolist() == [1, 2, 3, 4]
    assert torch.equal(x[0], torch.as_tensor(rgb[0].reshape(3, 32, 32)))
    gray, _ = load_dataset("cifar10", tmp_path, train=False, download=False, channels=1)
    assert gray.shape == (4, 1, 32, 32)


def test_image_folder_and_errors(tmp_path):
    for cls in ("cats", "dogs"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(3):
            colour = (200, 30 * i, 0) if cls == "cats" else (0, 30 * i, 200)
            Image.new("RGB", (40, 40), colour).save(tmp_path / "imgs" / cls / f"{i}.png")
    (tmp_path / "imgs" / "dogs" / "notes.txt").write_text("not an image")
    x, y = load_dataset(f"folder:{tmp_path / 'imgs'}", size=28, channels=1)
    assert x.shape == (6, 1, 28, 28) and y.tolist() == [0, 0, 0, 1, 1, 1]
    x, _ = load_dataset(f"folder:{tmp_path / 'imgs'}", size=64, channels=3)
    assert x.shape == (6, 3, 64, 64) and x[0, 0].float().mean() == pytest.approx(200, abs=1)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        load_dataset(f"folder:{tmp_path / 'empty'}")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_text("not a png")
    with pytest.raises(DataError, match="not a readable image"):
        load_dataset(f"folder:{tmp_path / 'bad'}")
    with pytest.raises(DataError, match="unknown data set 'svhn'"):
        load_dataset("svhn")
    with pytest.raises(DataError, match="cifar-10-batches-py"):
        load_dataset("cifar10", tmp_path / "nothing", download=False)


def test_cli_folder_data_and_new_likelihoods(monkeypatch, mnist_root, tmp_path):
    monkeypatch.setenv("VAEKIT_DATA", str(mnist_root))
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(16):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (36, 36, 3), dtype=np.uint8)
                        ).save(folder / f"{i}.png")
    base = ["fit", "--epochs", "1", "--batch-size", "8", "--z-dim", "2", "--no-progress",
            "--device", "cpu", "--no-download"]
    r = CliRunner().invoke(cli, [*base, "--data", f"folder:{folder}", "--image-size", "32",
                                 "--likelihood", "gaussian", "--scale-mode", "pixel",
                                 "--out", "f"])
    assert r.exit_code == 0, r.output
    cfg = runs.read_config("f")
    assert cfg["vae"]["image_shape"] == [3, 32, 32] and cfg["data"]["image_size"] == 32
    r = CliRunner().invoke(cli, ["evaluate", "f", "--num-samples", "3", "--device", "cpu",
                                 "--no-progress"])
    assert r.exit_code == 0, r.output
    for lik in ("continuous-bernoulli", "discretized-logistic", "laplace"):
        r = CliRunner().invoke(cli, [*base, "--limit-train", "64", "--limit-test", "32",
                                     "--likelihood", lik, "--out", lik])
        assert r.exit_code == 0, r.output
        assert runs.read_config(lik)["vae"]["likelihood"]["name"] == lik

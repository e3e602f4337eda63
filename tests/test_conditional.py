"""Conditional VAEs and user networks plugged in by name."""

import pyro
import pytest
import torch
from click.testing import CliRunner
from torch import nn

import vaekit
from vaekit import VAE, fit, runs
from vaekit.cli import cli
from vaekit.errors import ConfigError, DataError


class TinyEncoder(nn.Module):
    """A user's encoder: built as TinyEncoder(image_shape, z_dim)."""

    def __init__(self, image_shape, z_dim):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(int(torch.tensor(image_shape).prod()),
                                                         2 * z_dim))

    def forward(self, x):
        loc, log_scale = self.net(x).chunk(2, -1)
        return loc, log_scale.exp()


class TinyDecoder(nn.Module):
    """A user's decoder: built as TinyDecoder(image_shape, z_dim, out_channels)."""

    def __init__(self, image_shape, z_dim, out_channels):
        super().__init__()
        self.shape = (out_channels, *image_shape[1:])
        self.net = nn.Linear(z_dim, int(torch.tensor(self.shape).prod()))

    def forward(self, z):
        return self.net(z).reshape(*z.shape[:-1], *self.shape)


class WrongDecoder(TinyDecoder):
    def __init__(self, image_shape, z_dim, out_channels):
        super().__init__((image_shape[0], 14, 14), z_dim, out_channels)


def test_conditional_model_passes_the_label_to_both_nets():
    vae = VAE(z_dim=3, num_classes=10).eval()
    x = torch.bernoulli(torch.full((4, 1, 28, 28), 0.3))
    y = torch.tensor([0, 1, 2, 3])
    from pyro import poutine

    guide_tr = poutine.trace(vae.guide).get_trace(x, y)
    model_tr = poutine.trace(poutine.replay(vae.model, trace=guide_tr)).get_trace(x, y)
    assert model_tr.nodes["x"]["fn"].event_shape == (1, 28, 28)
    z = torch.zeros(2, 3)
    a, b = vae.decode(z, 3), vae.decode(z, 7)
    assert not torch.allclose(a, b)  # the label changes the image
    with pytest.raises(ConfigError, match="pass the labels"):
        vae.decode(z)
    with pytest.raises(ConfigError, match="0..9"):
        vae.sample(2, y=10)
    with pytest.raises(ConfigError, match="not conditional"):
        VAE(z_dim=3).decode(z, 1)


def test_fit_conditional_and_load(mnist_root, tmp_path):
    x, y = vaekit.load_mnist(mnist_root, train=True, download=False, limit=256)
    tx, ty = vaekit.load_mnist(mnist_root, train=False, download=False, limit=64)
    pyro.set_rng_seed(0)
    with pytest.raises(DataError, match="one integer label per training image"):
        fit(VAE(z_dim=2, num_classes=10), x, tx, epochs=1, batch_size=64, progress=False)
    r = fit(VAE(z_dim=2, num_classes=10), x, tx, epochs=2, batch_size=64, device="cpu",
            train_labels=y, test_labels=ty, run_dir=tmp_path / "c", progress=False)
    assert r.history[-1]["test_neg_elbo"] < r.history[0]["test_neg_elbo"]
    loaded = vaekit.load(tmp_path / "c")
    assert loaded.num_classes == 10
    z = torch.randn(4, 2)
    torch.testing.assert_close(loaded.decode(z, 5), r.vae.decode(z, 5))
    ev = vaekit.evaluate(loaded, torch.bernoulli(tx.float() / 255), num_samples=5, y=ty)
    assert ev.neg_log_px <= ev.neg_elbo + 1.0


def test_user_networks_by_name_round_trip(tmp_path, mnist_small):
    train_x, _ = mnist_small
    spec_e, spec_d = f"{__name__}:TinyEncoder", f"{__name__}:TinyDecoder"
    pyro.set_rng_seed(0)
    vae = VAE(z_dim=3, encoder=spec_e, decoder=spec_d)
    assert vae.config()["encoder"] == spec_e
    fit(vae, train_x[:128], epochs=1, batch_size=64, device="cpu", run_dir=tmp_path / "u",
        progress=False)
    again = vaekit.load(tmp_path / "u")
    assert isinstance(again.encoder, TinyEncoder)
    with pytest.raises(ConfigError, match=r"decoder returns \(1, 14, 14\) per image"):
        VAE(z_dim=3, decoder=WrongDecoder)
    with pytest.raises(ConfigError, match="cannot import the encoder"):
        VAE(z_dim=3, encoder="nowhere.module:Enc")


def test_cli_conditional_sample_label_and_user_nets(monkeypatch, mnist_root, tmp_path):
    monkeypatch.setenv("VAEKIT_DATA", str(mnist_root))
    monkeypatch.chdir(tmp_path)
    base = ["fit", "--limit-train", "128", "--limit-test", "64", "--batch-size", "64",
            "--epochs", "1", "--z-dim", "2", "--no-progress", "--device", "cpu", "--no-download"]
    r = CliRunner().invoke(cli, [*base, "--conditional", "--out", "c"])
    assert r.exit_code == 0, r.output
    assert runs.read_config("c")["vae"]["num_classes"] == 10
    r = CliRunner().invoke(cli, ["sample", "c", "--label", "3", "--n", "8", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    from torchvision.io import read_image

    assert read_image("c/sample.png").float().std() > 0
    r = CliRunner().invoke(cli, ["sample", "c", "--label", "12", "--device", "cpu"])
    assert r.exit_code == 2 and "--label must be below 10" in r.output
    r = CliRunner().invoke(cli, [*base, "--encoder", "nowhere:Enc", "--out", "u"])
    assert r.exit_code == 2 and "cannot import the encoder" in r.output


class CondTinyEncoder(TinyEncoder):
    """A conditional encoder by the contract: Class(image_shape, z_dim, num_classes=K)."""

    def __init__(self, image_shape, z_dim, num_classes):
        super().__init__(image_shape, z_dim)
        self.embed = nn.Embedding(num_classes, 2 * z_dim)

    def forward(self, x, y):
        loc, log_scale = (self.net(x) + self.embed(y)).chunk(2, -1)
        return loc, log_scale.exp()


class CondTinyDecoder(TinyDecoder):
    """Class(image_shape, z_dim, out_channels=C, num_classes=K), called as decoder(z, y)."""

    def __init__(self, image_shape, z_dim, out_channels, num_classes):
        super().__init__(image_shape, z_dim, out_channels)
        self.embed = nn.Embedding(num_classes, z_dim)

    def forward(self, z, y):
        return super().forward(z + self.embed(y))


class NoLabelsEncoder(TinyEncoder):
    """A conditional encoder that forgot num_classes (the new user's TypeError)."""

    def __init__(self, image_shape, z_dim, hidden):
        super().__init__(image_shape, z_dim)


def test_conditional_user_nets_follow_the_documented_contract():
    vae = VAE(z_dim=3, num_classes=10, encoder=CondTinyEncoder, decoder=CondTinyDecoder)
    assert vae.encoder.embed.num_embeddings == 10 and vae.decoder.embed.num_embeddings == 10
    assert not torch.allclose(vae.decode(torch.zeros(1, 3), 1), vae.decode(torch.zeros(1, 3), 2))
    # A constructor that does not take the contract's arguments: one line showing the call made.
    with pytest.raises(ConfigError, match=r"cannot build the encoder NoLabelsEncoder\(image_shape, "
                                          r"z_dim, num_classes=10\).*conditional encoder class"):
        VAE(z_dim=3, num_classes=10, encoder=NoLabelsEncoder)
    with pytest.raises(ConfigError, match=r"cannot build the decoder TinyDecoder\(image_shape, "
                                          r"z_dim, out_channels=1, num_classes=10\)"):
        VAE(z_dim=3, num_classes=10, decoder=TinyDecoder)
    # An unconditional net instance in a conditional VAE: the call it must accept is named.
    with pytest.raises(ConfigError, match=r"as encoder\(x, y\)"):
        VAE(z_dim=3, num_classes=10, encoder=TinyEncoder((1, 28, 28), 3))
    # vaekit's own conditional nets follow the same contract.
    from vaekit.nets import ConditionalDecoder, ConditionalEncoder

    VAE(z_dim=3, num_classes=10, encoder=ConditionalEncoder, decoder=ConditionalDecoder)


def test_cli_conditional_user_nets_and_bad_constructor(monkeypatch, mnist_root, tmp_path):
    monkeypatch.setenv("VAEKIT_DATA", str(mnist_root))
    monkeypatch.chdir(tmp_path)
    base = ["fit", "--limit-train", "64", "--limit-test", "32", "--batch-size", "32",
            "--epochs", "1", "--z-dim", "2", "--no-progress", "--device", "cpu", "--no-download",
            "--conditional"]
    r = CliRunner().invoke(cli, [*base, "--encoder", f"{__name__}:CondTinyEncoder",
                                 "--decoder", f"{__name__}:CondTinyDecoder", "--out", "ok"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(cli, [*base, "--encoder", f"{__name__}:NoLabelsEncoder", "--out", "bad"])
    assert r.exit_code == 2, r.output
    assert "cannot build the encoder NoLabelsEncoder" in r.output
    assert "Traceback" not in r.output
    assert [line for line in r.output.splitlines() if line.startswith("Error")] == \
        r.output.strip().splitlines()[-1:]


def test_picture_commands_support_conditional_runs(monkeypatch, mnist_root, tmp_path):
    """interpolate, traverse and latent-map on a conditional run: each image is encoded with its
    own label and decoded as one class (--label), checked against the model's own numbers."""
    from torchvision.io import read_image
    from torchvision.utils import make_grid

    monkeypatch.setenv("VAEKIT_DATA", str(mnist_root))
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(cli, ["fit", "--limit-train", "128", "--limit-test", "64",
                                 "--batch-size", "64", "--epochs", "1", "--z-dim", "2",
                                 "--no-progress", "--device", "cpu", "--no-download",
                                 "--conditional", "--out", "c"])
    assert r.exit_code == 0, r.output
    vae = vaekit.load("c", device="cpu")
    x, y = runs.load_test_set("c", vae, limit=64)
    assert y[0] != y[1]

    def expected_row(label):
        z = vae.encode(x[[0, 1]], y[[0, 1]])[0]
        t = torch.linspace(0, 1, 4)[:, None]
        row = torch.cat([x[:1], vae.decode((1 - t) * z[0] + t * z[1], label), x[1:2]])
        return make_grid(row, nrow=6, padding=2, pad_value=0.5)

    other = (int(y[0]) + 3) % 10
    for extra, label in (([], int(y[0])), (["--label", str(other)], other)):
        r = CliRunner().invoke(cli, ["interpolate", "c", "--pair", "0", "1", "--steps", "4",
                                     "--device", "cpu", *extra])
        assert r.exit_code == 0, r.output
        got = read_image("c/interpolate.png")[:1].float() / 255
        assert (got - expected_row(label)[:1]).abs().max() <= 1 / 255 + 1e-6, extra
    assert not torch.allclose(expected_row(int(y[0])), expected_row(other))

    r = CliRunner().invoke(cli, ["traverse", "c", "--index", "1", "--dims", "2", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert f"class {int(y[1])}" in r.output and read_image("c/traverse.png").float().std() > 0
    r = CliRunner().invoke(cli, ["traverse", "c", "--label", "12", "--device", "cpu"])
    assert r.exit_code == 2 and "--label must be below 10" in r.output

    for label in (None, 3):
        r = CliRunner().invoke(cli, ["latent-map", "c", "--grid", "3", "--device", "cpu",
                                     *([] if label is None else ["--label", str(label)])])
        assert r.exit_code == 0, r.output
        q = torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor([1 / 6, 0.5, 5 / 6]))
        z1, z0 = torch.meshgrid(q.flip(0), q, indexing="ij")
        want = make_grid(vae.decode(torch.stack([z0.reshape(-1), z1.reshape(-1)], 1),
                                    label or 0), nrow=3, padding=0)
        got = read_image("c/manifold.png")[:1].float() / 255
        assert (got - want[:1]).abs().max() <= 1 / 255 + 1e-6
    # An unconditional run refuses --label.
    r = CliRunner().invoke(cli, ["fit", "--limit-train", "64", "--limit-test", "32",
                                 "--batch-size", "32", "--epochs", "1", "--z-dim", "2",
                                 "--no-progress", "--device", "cpu", "--no-download", "--out", "u"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(cli, ["interpolate", "u", "--label", "1", "--device", "cpu"])
    assert r.exit_code == 2 and "--label needs a conditional run" in r.output


def test_mlp_conditional_encoder_takes_the_label_beside_the_flat_image():
    """The fully connected q(z|x, y) reads C*H*W + K inputs (not K label planes), and its
    output changes with y."""
    import torch

    from vaekit.nets import make_nets

    enc, _ = make_nets("mlp:8", (1, 28, 28), 2, 1, num_classes=10)
    first = next(m for m in enc.modules() if isinstance(m, torch.nn.Linear))
    assert first.in_features == 28 * 28 + 10
    x = torch.rand(3, 1, 28, 28)
    a, b = enc(x, torch.tensor([0, 1, 2])), enc(x, torch.tensor([3, 4, 5]))
    assert a[0].shape == (3, 2) and not torch.allclose(a[0], b[0])

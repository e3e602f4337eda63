"""The VAE-GAN: its feature likelihood against a hand computation, Larsen's gradients, its
discriminator's step, and a run that trains, resumes bit for bit and is evaluated."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyro
import pytest
import torch

import vaekit
from vaekit import runs
from vaekit.adversarial import VAEGAN
from vaekit.nets import Discriminator
from vaekit.traces import site_log_probs


def _vae_gan(seed: int = 0, layer: int | None = None) -> tuple[vaekit.VAE, VAEGAN]:
    pyro.set_rng_seed(seed)
    lik = vaekit.get_likelihood("discriminator", **({} if layer is None else
                                                    {"feature_layer": layer}))
    vae = vaekit.VAE(z_dim=4, likelihood=lik)
    return vae, VAEGAN(vae)


def test_the_feature_likelihood_is_a_unit_normal_on_the_discriminators_layer(tiny_images):
    vae, obj = _vae_gan(layer=1)
    d = obj.auxiliary("discriminator")
    assert isinstance(d, Discriminator) and d.layers == 2
    out = torch.randn(8, 1, 28, 28)
    x = tiny_images
    got = vae.likelihood(out).log_prob(x)
    f_x, f_fake = d(x, layer=1), d(torch.sigmoid(out), layer=1)
    assert f_x.shape == (8, 16 * 13 * 13)
    by_hand = (-0.5 * (f_x - f_fake) ** 2 - 0.5 * math.log(2 * math.pi)).sum(1)
    torch.testing.assert_close(got, by_hand)
    # one image's density does not depend on the others in its batch (no BatchNorm in D)
    alone = vae.likelihood(out[:1]).log_prob(x[:1])
    torch.testing.assert_close(alone, got[:1])
    assert d(x).shape == (8,)  # the logit per image


def test_the_encoder_gets_larsens_gradient_and_the_discriminator_none(tiny_images):
    """The encoder's gradient is that of β KL + L_llike alone (the adversarial terms reach the
    decoder only), and the VAE's loss leaves the discriminator's weights without gradient."""
    vae, obj = _vae_gan()
    x = tiny_images
    pyro.set_rng_seed(1)
    obj(x).backward()
    enc = [p.grad.clone() for p in vae.encoder.parameters()]
    dec = [p.grad.clone() for p in vae.decoder.parameters()]
    assert all(p.grad is None for p in obj.auxiliary("discriminator").parameters())
    vae.zero_grad()
    pyro.set_rng_seed(1)
    t = site_log_probs(vae, x, closed_form=False)
    (-(t.log_lik - t.kl_sampled).sum()).backward()
    for a, b in zip(enc, (p.grad for p in vae.encoder.parameters())):
        torch.testing.assert_close(a, b)
    assert any(not torch.allclose(a, p.grad) for a, p in zip(dec, vae.decoder.parameters()))


def test_the_discriminator_steps_learns_and_stops_on_a_non_finite_loss(tiny_images):
    vae, obj = _vae_gan()
    obj.setup(torch.device("cpu"))
    obj(tiny_images)
    before = [p.clone() for p in obj.auxiliary("discriminator").parameters()]
    obj.auxiliary_step(tiny_images, None, 0)
    after = list(obj.auxiliary("discriminator").parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after))
    assert obj.aux_optimizers["discriminator"].state  # Adam has moments now
    with torch.no_grad():
        obj.auxiliary("discriminator").head.bias.fill_(float("nan"))
    obj(tiny_images)
    with pytest.raises(vaekit.TrainingError, match="discriminator loss is not finite at step 4"):
        obj.auxiliary_step(tiny_images, None, 3)


_CPU = ("--device", "cpu", "--no-download", "--no-progress")


def test_a_vae_gan_refuses_objectives_that_cannot_train_its_discriminator(runner):
    from vaekit.cli import cli

    base = ["fit", "--likelihood", "discriminator", "--epochs", "1", "--limit-train", "64",
            "--limit-test", "64", "--batch-size", "32", *_CPU]
    r = runner.invoke(cli, [*base, "--objective", "iwae", "--out", "a"])
    assert r.exit_code == 2, r.output
    assert "cannot train the discriminator" in r.output and "Traceback" not in r.output
    r = runner.invoke(cli, [*base, "--feature-layer", "3", "--out", "b"])
    assert r.exit_code == 2, r.output
    assert "deeper than the discriminator's 2 hidden blocks" in r.output
    assert not (Path("a").exists() or Path("b").exists())  # refused before any file


def test_a_vae_gan_run_trains_resumes_exactly_and_its_pictures_change(mnist_small, tmp_path):
    train_x, test_x = mnist_small[0][:256], mnist_small[1][:64]
    kw = dict(batch_size=64, device="cpu", progress=False, verbose=False, lr=5e-4)

    def new():
        pyro.set_rng_seed(0)
        return vaekit.VAE(z_dim=8, likelihood="discriminator")

    whole = vaekit.fit(new(), train_x, test_x, epochs=2, run_dir=tmp_path / "whole", **kw)
    vaekit.fit(new(), train_x, test_x, epochs=1, run_dir=tmp_path / "half", **kw)
    first = (tmp_path / "half" / "samples.png").read_bytes()
    d_one = runs.load_checkpoint(tmp_path / "half")["objective"]["modules"]["discriminator"]
    again = vaekit.resume(tmp_path / "half", train_x, test_x, epochs=2, progress=False,
                          verbose=False)
    assert [r["train_loss"] for r in again.history] == [r["train_loss"] for r in whole.history]
    assert all(math.isfinite(r["test_neg_elbo"]) for r in whole.history)
    for r in runs.read_metrics(tmp_path / "half"):  # the discriminator's own columns
        assert 0 < r["disc_real"] < 5 and 0 < r["disc_fake"] < 5 and 0 <= r["disc_skipped"] <= 4
    a, b = (runs.load_checkpoint(tmp_path / d) for d in ("whole", "half"))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    da, db = (c["objective"]["modules"]["discriminator"] for c in (a, b))
    assert all(torch.equal(da[k], db[k]) for k in da)  # the discriminator, bit for bit
    oa, ob = (c["objective"]["optimizers"]["discriminator"]["state"] for c in (a, b))
    assert oa and all(torch.equal(oa[k]["exp_avg"], ob[k]["exp_avg"]) for k in oa)
    assert any(not torch.equal(d_one[k], db[k]) for k in db)  # it learned in epoch 2
    assert (tmp_path / "half" / "samples.png").read_bytes() != first
    samples = vaekit.load(tmp_path / "half").sample(4)  # loads and samples without its D
    assert samples.shape == (4, 1, 28, 28) and 0 <= samples.min() and samples.max() <= 1


def test_evaluate_says_a_vae_gan_has_no_likelihood_and_scores_it(runner, tmp_path):
    from vaekit.cli import cli

    run = tmp_path / "vg"
    r = runner.invoke(cli, ["fit", "--likelihood", "discriminator", "--epochs", "1",
                            "--limit-train", "256", "--limit-test", "200", "--batch-size", "128",
                            "--out", str(run), *_CPU])
    assert r.exit_code == 0, r.output
    r = runner.invoke(cli, ["evaluate", str(run), "--quality-samples", "100", *_CPU])
    assert r.exit_code == 0, r.output
    assert "-log p(x) is not defined for a VAE-GAN" in r.output
    assert "squared error per image" in r.output and "FID" in r.output
    assert "IWAE" not in r.output
    record = json.loads((run / "eval.json").read_text())
    pe = record["pixel_error"]
    assert pe["n_images"] == 200 and 0 < pe["per_pixel"] < 1
    assert math.isclose(pe["per_pixel"], pe["squared"] / 784)
    assert record["sample_quality"]["fid"] > 0

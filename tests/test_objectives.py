"""Objectives beyond the ELBO: their math against hand computations, and training with them."""

import math

import pyro
import pytest
import torch
from click.testing import CliRunner
from pyro.infer import Trace_ELBO

from vaekit import VAE, fit, runs
from vaekit.cli import cli
from vaekit.errors import ConfigError
from vaekit.objectives import IWAE, BetaSchedule, Capacity, FreeBits, make_objective


def _x(n=6):
    return torch.bernoulli(torch.full((n, 1, 28, 28), 0.3))


def _hand_terms(vae, x):
    """Seeded z ~ q, reconstruction NLL per image and analytic KL per image and dimension."""
    loc, scale = vae.encoder(x)
    z = torch.distributions.Normal(loc, scale).rsample()
    recon = -vae.likelihood(vae.decoder(z)).log_prob(x)
    kl_d = 0.5 * (scale**2 + loc**2 - 1 - 2 * scale.log())
    return recon, kl_d


def test_beta_schedules():
    lin = BetaSchedule.parse("linear:100", beta=2.0)
    assert [lin(s) for s in (0, 50, 100, 1000)] == [0.0, 1.0, 2.0, 2.0]
    cyc = BetaSchedule.parse("cyclical:100:0.5")
    assert [cyc(s) for s in (0, 25, 50, 99, 100, 125)] == [0.0, 0.5, 1.0, 1.0, 0.0, 0.5]
    assert BetaSchedule.parse("constant", beta=3.0)(123) == 3.0
    for bad in ("linear", "cyclical:0", "cyclical:10:2", "warmup:5", "linear:x"):
        with pytest.raises(ConfigError, match="bad beta schedule"):
            BetaSchedule.parse(bad)


def test_iwae_with_one_sample_is_the_elbo():
    vae = VAE(z_dim=3).eval()
    x = _x()
    pyro.set_rng_seed(5)
    elbo = Trace_ELBO().loss(vae.model, vae.guide, x)
    pyro.set_rng_seed(5)
    assert IWAE(vae, 1)(x).item() == pytest.approx(elbo, rel=1e-5)


def test_iwae_bound_tightens_with_k(mnist_small):
    train_x, test_x = mnist_small
    pyro.set_rng_seed(0)
    vae = fit(VAE(z_dim=4), train_x, epochs=1, batch_size=64, device="cpu", progress=False).vae
    x = torch.bernoulli(test_x[:16].float() / 255)
    with torch.no_grad():
        means = {k: sum(IWAE(vae, k)(x).item() for _ in range(10)) / 10 for k in (1, 10, 100)}
    assert means[100] < means[10] < means[1]  # -bound falls (the bound rises) with K


def test_iwae_matches_the_evaluation_estimator():
    from vaekit.evaluation import iwae_bound

    pyro.set_rng_seed(0)
    vae = VAE(z_dim=2).eval()
    x = _x(4)
    with torch.no_grad():
        ours = IWAE(vae, 500)(x).item() / len(x)
    theirs = iwae_bound(vae, x, num_samples=500).mean().item()
    assert ours == pytest.approx(theirs, abs=1.0)


def test_capacity_and_free_bits_by_hand():
    vae = VAE(z_dim=3).eval()
    x = _x()
    cap = Capacity(vae, gamma=10.0, c_max=4.0, steps=100)
    cap.set_step(50)
    assert cap.c == 2.0
    pyro.set_rng_seed(1)
    loss = cap(x)
    pyro.set_rng_seed(1)
    recon, kl_d = _hand_terms(vae, x)
    assert loss.item() == pytest.approx((recon + 10.0 * (kl_d.sum(-1) - 2.0).abs()).sum().item(),
                                        rel=1e-5)
    fb = FreeBits(vae, lam=0.3)
    pyro.set_rng_seed(1)
    loss = fb(x)
    expected = recon.sum() + len(x) * kl_d.mean(0).clamp_min(0.3).sum()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_objectives_refuse_a_beta():
    with pytest.raises(ConfigError, match="has no β"):
        make_objective(VAE(z_dim=2, beta=2.0), "iwae")
    with pytest.raises(ConfigError, match="unknown objective"):
        make_objective(VAE(z_dim=2), "vimco")


@pytest.mark.parametrize("objective", ["iwae", "capacity", "free-bits"])
def test_fit_with_each_objective(mnist_small, objective):
    train_x, test_x = mnist_small
    pyro.set_rng_seed(0)
    r = fit(VAE(z_dim=2), train_x[:256], test_x[:64], epochs=2, batch_size=64, device="cpu",
            objective=objective, iwae_samples=3, capacity_steps=8, progress=False)
    assert all(math.isfinite(h["train_loss"]) and math.isfinite(h["test_neg_elbo"])
               for h in r.history)
    assert r.history[-1]["test_neg_elbo"] < r.history[0]["test_neg_elbo"] + 5


def test_beta_warm_up_reaches_beta_and_is_logged(mnist_small):
    train_x, _ = mnist_small
    pyro.set_rng_seed(0)
    r = fit(VAE(z_dim=2, beta=2.0), train_x[:256], epochs=2, batch_size=64, device="cpu",
            beta_schedule="linear:6", progress=False)
    assert [h["beta"] for h in r.history] == [2.0 * 3 / 6, 2.0]
    assert r.vae.beta == 2.0  # the model keeps its own β


def test_cli_objectives(monkeypatch, mnist_root, tmp_path):
    monkeypatch.setenv("VAEKIT_DATA", str(mnist_root))
    monkeypatch.chdir(tmp_path)
    base = ["fit", "--limit-train", "128", "--limit-test", "64", "--batch-size", "64",
            "--epochs", "1", "--z-dim", "2", "--no-progress", "--device", "cpu", "--no-download"]
    res = CliRunner().invoke(cli, [*base, "--objective", "iwae", "--iwae-samples", "3",
                                   "--out", "iwae"])
    assert res.exit_code == 0, res.output
    assert runs.read_config("iwae")["train"]["objective"] == "iwae"
    res = CliRunner().invoke(cli, [*base, "--beta-schedule", "cyclical:2", "--out", "cyc"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(cli, [*base, "--objective", "capacity", "--beta", "4", "--out", "x"])
    assert res.exit_code == 2 and "has no β" in res.output
    res = CliRunner().invoke(cli, [*base, "--beta-schedule", "warmup", "--out", "y"])
    assert res.exit_code == 2 and "bad beta schedule" in res.output

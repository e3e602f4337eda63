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


# -- the seam for objectives that own part of the step (issue #23) ------------------------------
import pyro as _pyro  # noqa: E402
import torch as _torch  # noqa: E402
from pyro.infer import Trace_ELBO as _Trace_ELBO  # noqa: E402

from vaekit.objectives import Objective, register_objective  # noqa: E402


class _Critic(Objective):
    """The ELBO for the VAE, and beside it a critic of its own, trained by a second optimizer
    (SGD with momentum, so its state matters) to predict each image's reconstruction error from
    the encoder's mean, with noise drawn from the global RNG (so the RNG must resume exactly)."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae
        self.elbo = _Trace_ELBO(max_plate_nesting=1)(vae.model, vae.guide)
        self.add_auxiliary("critic", _torch.nn.Linear(vae.z_dim, 1),
                           lambda p: _torch.optim.SGD(p, lr=1e-3, momentum=0.9))
        self.steps = 0

    def forward(self, x, y=None):
        return self.elbo(x)

    def auxiliary_step(self, x, y, step):
        with _torch.no_grad():
            z, _ = self.vae.encode(x)
            target = ((self.vae.decode(z) - x) ** 2).flatten(1).sum(1, keepdim=True)
        z = z + 0.01 * _torch.randn_like(z)
        loss = ((self.aux_train["critic"](z) - target) ** 2).mean()
        opt = self.aux_optimizers["critic"]
        opt.zero_grad()
        loss.backward()
        opt.step()


register_objective("test-critic")(_Critic)


def test_an_objective_with_its_own_network_and_optimizer_trains_and_resumes_exactly(
        mnist_small, tmp_path):
    import vaekit
    from vaekit import runs

    train_x, test_x = mnist_small
    kw = dict(objective="test-critic", batch_size=64, device="cpu", progress=False,
              verbose=False)

    def new():
        _pyro.set_rng_seed(0)
        return vaekit.VAE(z_dim=2, nets="mlp:16")

    whole = vaekit.fit(new(), train_x, test_x, epochs=2, run_dir=tmp_path / "whole", **kw)
    vaekit.fit(new(), train_x, test_x, epochs=1, run_dir=tmp_path / "half", **kw)
    after_one = runs.load_checkpoint(tmp_path / "half")["objective"]["modules"]["critic"]
    again = vaekit.resume(tmp_path / "half", train_x, test_x, epochs=2, progress=False,
                          verbose=False)
    assert [r["train_loss"] for r in again.history] == [r["train_loss"] for r in whole.history]
    a, b = (runs.load_checkpoint(tmp_path / d) for d in ("whole", "half"))
    for name in ("modules", "optimizers"):
        assert name in a["objective"]
    wa, wb = a["objective"]["modules"]["critic"], b["objective"]["modules"]["critic"]
    assert all(_torch.equal(wa[k], wb[k]) for k in wa)  # the critic resumed bit for bit
    ma = a["objective"]["optimizers"]["critic"]["state"]
    mb = b["objective"]["optimizers"]["critic"]["state"]
    assert ma and all(_torch.equal(ma[k]["momentum_buffer"], mb[k]["momentum_buffer"]) for k in ma)
    assert all(_torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert not _torch.equal(after_one["weight"], wb["weight"])  # the critic learns each step
    with pytest.raises(vaekit.ConfigError, match="unknown objective 'nope'.*register_objective"):
        vaekit.fit(new(), train_x, test_x, epochs=1, objective="nope", batch_size=64,
                   device="cpu", progress=False, verbose=False)

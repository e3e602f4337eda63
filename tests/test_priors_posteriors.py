"""Priors and posteriors as modules: their densities against direct computations, the flow's
Jacobian against autograd, and numbers from the traces against closed forms and known answers."""

import math

import pyro
import pytest
import torch
from click.testing import CliRunner
from pyro import poutine
from torch import nn

import vaekit
from vaekit import runs
from vaekit.cli import cli
from vaekit.errors import ConfigError
from vaekit.evaluation import elbo_terms, evaluate, is_standard_gaussian
from vaekit.model import Model
from vaekit.posteriors import IAF, get_posterior
from vaekit.priors import MixtureOfGaussians, Prior, VampPrior, get_prior


def _normal_log_prob(z, loc, scale):
    return (-0.5 * ((z - loc) / scale) ** 2 - scale.log() - 0.5 * math.log(2 * math.pi)).sum(-1)


def test_mixture_prior_log_density_is_the_direct_sum():
    torch.manual_seed(0)
    prior = MixtureOfGaussians(z_dim=3, k=4)
    with torch.no_grad():
        prior.logits.copy_(torch.randn(4))
        prior.log_scale.copy_(torch.randn(4, 3) * 0.3)
    z = torch.randn(5, 3) * 2
    log_pi = torch.log_softmax(prior.logits, 0)
    direct = torch.logsumexp(torch.stack([log_pi[k] + _normal_log_prob(
        z, prior.loc[k], prior.log_scale[k].exp()) for k in range(4)]), 0)
    torch.testing.assert_close(prior(5).log_prob(z), direct)
    assert prior(5).batch_shape == (5,) and prior(5).event_shape == (3,)


def test_vamp_prior_is_the_mean_of_the_encoder_posteriors_with_every_constant():
    torch.manual_seed(0)
    vae = vaekit.VAE(z_dim=3, prior="vamp:6").eval()
    assert isinstance(vae.prior, VampPrior) and vae.prior.u_logits.shape == (6, 1, 28, 28)
    z = torch.randn(4, 3)
    with torch.no_grad():
        loc, scale = vae.encoder(torch.sigmoid(vae.prior.u_logits))
        direct = torch.logsumexp(torch.stack([_normal_log_prob(z, loc[k], scale[k])
                                              for k in range(6)]), 0) - math.log(6)
        torch.testing.assert_close(vae.prior(4).log_prob(z), direct)
    # the pseudo-inputs are parameters of the model, the encoder is not duplicated
    names = [n for n, _ in vae.named_parameters()]
    assert "model.prior.u_logits" in names and not any(n.startswith("model.prior._") for n in names)


def test_iaf_log_det_matches_the_autograd_jacobian():
    torch.manual_seed(0)
    post = IAF(z_dim=3, steps=2)
    for f in post.flows:  # move away from the identity at initialisation
        for p in f.parameters():
            nn.init.normal_(p, std=0.5)
    loc, scale = torch.randn(1, 3), torch.rand(1, 3) + 0.5
    q = post(loc, scale)
    context = torch.cat([loc, scale.log()], -1)
    transforms = [f.condition(context) for f in post.flows]

    def push(x):
        for t in transforms:
            x = t(x)
        return x

    x0 = torch.randn(1, 3)
    z = push(x0)
    jac = torch.autograd.functional.jacobian(lambda v: push(v[None])[0], x0[0])
    log_det = torch.linalg.slogdet(jac).logabsdet
    base = _normal_log_prob(x0, loc, scale)
    torch.testing.assert_close(q.log_prob(z.detach()), base - log_det, rtol=1e-4, atol=1e-4)


def test_iaf_masks_are_saved_so_a_reloaded_model_gives_the_same_log_q(tmp_path):
    torch.manual_seed(0)
    vae = vaekit.VAE(z_dim=4, posterior="iaf:2").eval()
    x = torch.bernoulli(torch.rand(3, 1, 28, 28))
    z = torch.randn(3, 4)
    before = vae.qz_dist(x).log_prob(z)
    torch.save(vae.state_dict(), tmp_path / "w.pt")
    torch.manual_seed(123)  # other random masks and orders, before loading
    again = vaekit.VAE.from_config(vae.config())
    assert any(not torch.equal(a, b) for a, b in zip(again.state_dict().values(),
                                                   vae.state_dict().values()))
    again.load_state_dict(torch.load(tmp_path / "w.pt"))
    assert torch.equal(again.eval().qz_dist(x).log_prob(z), before)


class _Traced(Model):
    """vaekit's own model, as a user's subclass: scored through the traces."""


def test_trace_path_agrees_with_the_closed_forms_on_the_standard_vae(mnist_small):
    train_x, test_x = mnist_small
    pyro.set_rng_seed(0)
    vae = vaekit.fit(vaekit.VAE(z_dim=4), train_x, epochs=1, batch_size=64, device="cpu",
                     progress=False, verbose=False).vae
    x = torch.bernoulli(test_x[:16].float() / 255, generator=torch.Generator().manual_seed(0))
    direct = evaluate(vae, x, num_samples=200)
    vae.model.__class__ = _Traced
    assert not is_standard_gaussian(vae)
    traced = evaluate(vae, x, num_samples=200)
    se = math.hypot(direct.neg_log_px_se, traced.neg_log_px_se) / math.sqrt(16) + 0.05
    assert traced.neg_log_px == pytest.approx(direct.neg_log_px, abs=3 * se)
    assert traced.kl == pytest.approx(direct.kl, rel=1e-5)  # analytic in both: the same
    assert traced.recon == pytest.approx(direct.recon, rel=0.01)
    assert traced.kl_sites == pytest.approx({"z": direct.kl}, rel=1e-5)
    recon, kl = elbo_terms(vae, x)
    assert recon.shape == kl.shape == (16,)


class _ExactEncoder(nn.Module):
    """The exact posterior mean and marginal standard deviations of a linear-Gaussian model."""

    def __init__(self, w, b, sigma):
        super().__init__()
        self.w, self.b, self.sigma = w, b, sigma
        m = torch.eye(w.shape[1]) + w.T @ w / sigma**2
        self.cov = torch.linalg.inv(m)

    def forward(self, x):
        mean = (x.flatten(1) - self.b) @ self.w @ self.cov / self.sigma**2
        return mean, self.cov.diagonal().sqrt().expand_as(mean)


class _LinearDecoder(nn.Module):
    def __init__(self, w, b):
        super().__init__()
        self.lin = nn.Linear(w.shape[1], w.shape[0])
        with torch.no_grad():
            self.lin.weight.copy_(w)
            self.lin.bias.copy_(b)

    def forward(self, z):
        out = self.lin(z)
        return out.reshape(*z.shape[:-1], 1, 4, 4)


def test_iwae_approaches_the_exact_log_likelihood_of_a_linear_gaussian_model():
    torch.manual_seed(0)
    d, k, sigma = 16, 2, 0.5
    w, b = torch.randn(d, k) * 0.8, torch.randn(d) * 0.1
    lik = vaekit.likelihoods.Gaussian(scale=sigma)
    lik.check = lambda x: None  # images here are unbounded Gaussian data
    vae = vaekit.VAE(z_dim=k, likelihood=lik, image_shape=(1, 4, 4),
                     encoder=_ExactEncoder(w, b, sigma), decoder=_LinearDecoder(w, b))
    vae.model.__class__ = _Traced  # through the traces
    x = (torch.randn(8, k) @ w.T + b + sigma * torch.randn(8, d)).reshape(8, 1, 4, 4)
    exact = torch.distributions.MultivariateNormal(b, w @ w.T + sigma**2 * torch.eye(d))
    truth = -exact.log_prob(x.flatten(1)).mean().item()
    r = evaluate(vae, x, num_samples=3000, chunk_size=8 * 3000)
    assert r.neg_log_px == pytest.approx(truth, abs=0.02)
    assert r.neg_elbo > r.neg_log_px - 0.01  # the ELBO bounds it from below (in nats: above)


def _independent_iwae(vae, x, k):
    """-log p(x) per image from the model and guide traces alone (not vaekit's code)."""
    with torch.no_grad():
        with pyro.plate("particles", k, dim=-2):
            guide_tr = poutine.trace(vae.guide).get_trace(x)
            model_tr = poutine.trace(poutine.replay(vae.model, trace=guide_tr)).get_trace(x)
        model_tr.compute_log_prob()
        guide_tr.compute_log_prob()
        log_w = sum(s["log_prob"] for s in model_tr.nodes.values() if s["type"] == "sample") - sum(
            s["log_prob"] for s in guide_tr.nodes.values()
            if s["type"] == "sample" and not s["is_observed"])
        return math.log(k) - torch.logsumexp(log_w, 0)


@pytest.mark.parametrize("prior, posterior, latents", [("mog:3", "diagonal", 1),
                                                       ("vamp:5", "iaf:2", 1),
                                                       ("mog:3", "iaf:2", 2)])
def test_vaekit_evaluate_agrees_with_an_independent_estimator(prior, posterior, latents,
                                                              mnist_small):
    train_x, test_x = mnist_small
    pyro.set_rng_seed(0)
    vae = vaekit.VAE(z_dim=4, prior=prior, posterior=posterior, latents=latents)
    vae = vaekit.fit(vae, train_x, epochs=1, batch_size=64, device="cpu", progress=False,
                     verbose=False).vae
    x = torch.bernoulli(test_x[:32].float() / 255, generator=torch.Generator().manual_seed(0))
    ours = evaluate(vae, x, num_samples=100)
    with pyro.settings.context(module_local_params=True):
        theirs = _independent_iwae(vae, x, 100)
    se = math.hypot(ours.neg_log_px_se, float(theirs.std()) / math.sqrt(32))
    assert ours.neg_log_px == pytest.approx(float(theirs.mean()), abs=3 * se + 0.05)
    assert ours.kl_per_dim is None
    assert set(ours.kl_sites) == ({"z"} if latents == 1 else {"z1", "z2"})
    assert ours.neg_elbo >= ours.neg_log_px - 3 * se


def test_samples_come_from_the_prior_in_use():
    torch.manual_seed(0)
    prior = get_prior("mog:2", z_dim=3)
    with torch.no_grad():
        prior.loc.fill_(5.0)
        prior.log_scale.fill_(math.log(0.1))
    z = prior.sample(2000, generator=torch.Generator().manual_seed(0))
    assert z.mean().item() == pytest.approx(5.0, abs=0.05)
    again = prior.sample(2000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(z, again)  # reproducible from the generator


class HalfNormalScale(Prior):
    """A user's prior: Normal(0, 0.5 I), in a few lines."""

    def forward(self, n):
        return pyro.distributions.Normal(torch.zeros(n, self.z_dim),
                                         0.5 * torch.ones(n, self.z_dim)).to_event(1)


def test_a_user_prior_is_scored_correctly():
    torch.manual_seed(0)
    vae = vaekit.VAE(z_dim=2, prior=HalfNormalScale(2)).eval()
    x = torch.bernoulli(torch.rand(4, 1, 28, 28))
    pyro.set_rng_seed(0)
    recon, kl = elbo_terms(vae, x)
    loc, scale = vae.qz(x)
    exact = torch.distributions.kl_divergence(torch.distributions.Normal(loc, scale),
                                              torch.distributions.Normal(0.0, 0.5)).sum(-1)
    torch.testing.assert_close(kl, exact)  # analytic: both are diagonal Normals
    assert vae.config()["prior"] == {"class": f"{__name__}:HalfNormalScale"}


def test_objectives_that_need_closed_forms_refuse_other_priors(mnist_small):
    train_x, _ = mnist_small
    for objective in ("capacity", "free-bits"):
        with pytest.raises(ConfigError, match=f"the {objective} objective needs the closed-form "
                                              "KL.*prior mog:2 and posterior diagonal"):
            vaekit.fit(vaekit.VAE(z_dim=2, prior="mog:2"), train_x, objective=objective,
                       batch_size=64, progress=False)
    with pytest.raises(ConfigError, match="bad prior 'mog:0'"):
        get_prior("mog:0", z_dim=2)
    with pytest.raises(ConfigError, match="bad posterior 'iaf:x'"):
        get_posterior("iaf:x", z_dim=2)
    with pytest.raises(ConfigError, match="VampPrior.*conditional"):
        vaekit.VAE(z_dim=2, prior="vamp:3", num_classes=10)


def test_cli_trains_evaluates_and_resumes_vamp_with_iaf(monkeypatch, mnist_root, tmp_path):
    monkeypatch.setenv("VAEKIT_DATA", str(mnist_root))
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    base = ["fit", "--limit-train", "256", "--limit-test", "64", "--batch-size", "64",
            "--z-dim", "4", "--no-progress", "--device", "cpu", "--no-download"]
    res = runner.invoke(cli, [*base, "--epochs", "1", "--prior", "vamp:5", "--posterior", "iaf:2",
                              "--out", "v"])
    assert res.exit_code == 0, res.output
    config = runs.read_config("v")
    assert (config["model"]["prior"], config["model"]["posterior"]) == ("vamp:5", "iaf:2")
    res = runner.invoke(cli, ["fit", "--resume", "v", "--epochs", "2", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert [r["epoch"] for r in runs.read_metrics("v")] == [1, 2]
    res = runner.invoke(cli, ["evaluate", "v", "--num-samples", "5", "--device", "cpu",
                              "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "KL per dimension" not in res.output or "n/a" in res.output
    vae = vaekit.load("v")
    assert type(vae.posterior).__name__ == "IAF" and type(vae.prior).__name__ == "VampPrior"
    res = runner.invoke(cli, [*base, "--prior", "mog:2", "--objective", "capacity", "--out", "c"])
    assert res.exit_code == 2 and "capacity objective needs" in res.output
    res = runner.invoke(cli, [*base, "--prior", "gauss", "--out", "d"])
    assert res.exit_code == 2 and "bad prior 'gauss'" in res.output
    # two stochastic layers: trains, resumes, evaluates (a KL per latent site), samples
    res = runner.invoke(cli, [*base, "--epochs", "1", "--latents", "2", "--out", "h"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["fit", "--resume", "h", "--epochs", "2", "--no-progress"])
    assert res.exit_code == 0 and [r["epoch"] for r in runs.read_metrics("h")] == [1, 2]
    res = runner.invoke(cli, ["evaluate", "h", "--num-samples", "5", "--device", "cpu",
                              "--no-progress"])
    assert res.exit_code == 0 and "site z1" in res.output and "site z2" in res.output
    assert runner.invoke(cli, ["sample", "h", "--device", "cpu"]).exit_code == 0
    res = runner.invoke(cli, [*base, "--latents", "2", "--objective", "free-bits", "--out", "e"])
    assert res.exit_code == 2 and "second latent layer" in res.output
    assert "run folder" not in res.output  # nothing was written: no folder is announced

import pyro
import pyro.optim
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO

from vaekit import VAE
from vaekit.data import to_unit
from vaekit.errors import ConfigError
from vaekit.likelihoods import Gaussian


def _binary(n=6):
    return torch.bernoulli(torch.full((n, 1, 28, 28), 0.3))


def test_model_and_guide_read_like_the_math():
    vae = VAE(z_dim=4, beta=2.0).eval()
    x = _binary()
    guide_tr = poutine.trace(vae.guide).get_trace(x)
    model_tr = poutine.trace(poutine.replay(vae.model, trace=guide_tr)).get_trace(x)
    for tr in (guide_tr, model_tr):
        z = tr.nodes["z"]
        assert z["fn"].event_shape == (4,) and z["fn"].batch_shape == (6,)
        assert z["scale"] == 2.0
        assert [f.name for f in z["cond_indep_stack"]] == ["data"]
    xs = model_tr.nodes["x"]
    assert xs["is_observed"] and xs["value"] is x and xs["scale"] == 1.0
    assert xs["fn"].event_shape == (1, 28, 28)


def test_beta_zero_drops_the_kl_term():
    vae = VAE(z_dim=3, beta=0.0).eval()
    x = _binary(4)
    pyro.set_rng_seed(3)
    loss = Trace_ELBO().loss(vae.model, vae.guide, x)
    pyro.set_rng_seed(3)
    with torch.no_grad():
        loc, scale = vae.encoder(x)
        z = torch.distributions.Normal(loc, scale).rsample()
        recon = -vae.likelihood(vae.decoder(z)).log_prob(x).sum()
    assert loss == pytest.approx(recon.item(), rel=1e-5)


@pytest.mark.parametrize("beta", [1.0, 0.5, 4.0])
def test_beta_weighted_loss_equals_recon_plus_beta_kl(beta):
    vae = VAE(z_dim=3, beta=beta).eval()
    x = _binary(5)

    # Trace_ELBO with a seeded z: recon NLL + beta * (log q(z|x) - log p(z)).
    pyro.set_rng_seed(7)
    loss = Trace_ELBO().loss(vae.model, vae.guide, x)
    pyro.set_rng_seed(7)
    with torch.no_grad():
        loc, scale = vae.encoder(x)
        z = torch.distributions.Normal(loc, scale).rsample()
        recon = -vae.likelihood(vae.decoder(z)).log_prob(x).sum()
        log_q = torch.distributions.Normal(loc, scale).log_prob(z).sum()
        log_p = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum()
    assert loss == pytest.approx((recon + beta * (log_q - log_p)).item(), rel=1e-5)

    # With the analytic KL (TraceMeanField_ELBO), the same z: recon NLL + beta * KL, by hand.
    pyro.set_rng_seed(7)
    loss_mf = TraceMeanField_ELBO().loss(vae.model, vae.guide, x)
    kl = 0.5 * (scale**2 + loc**2 - 1 - 2 * scale.log()).sum()
    assert loss_mf == pytest.approx((recon + beta * kl).item(), rel=1e-5)


def test_plain_pyro_svi_lowers_the_loss(mnist_small):
    train_x, _ = mnist_small
    x = torch.bernoulli(to_unit(train_x[:256]))
    vae = VAE(z_dim=8)
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 2e-3}), Trace_ELBO())
    before = vae.decoder.net[0].weight.detach().clone()
    losses = [svi.step(x) / len(x) for _ in range(30)]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 50
    assert "decoder$$$net.0.weight" in pyro.get_param_store()
    assert "encoder$$$net.0.weight" in pyro.get_param_store()
    assert not torch.equal(before, vae.decoder.net[0].weight)  # the module itself was trained


def test_elbo_module_holds_every_parameter_and_trains_with_torch_adam(mnist_small):
    train_x, _ = mnist_small
    x = torch.bernoulli(to_unit(train_x[:256]))
    vae = VAE(z_dim=8, likelihood=Gaussian(0.3, learn_scale=True))
    with pyro.settings.context(module_local_params=True):
        loss_fn = Trace_ELBO()(vae.model, vae.guide)
        assert {id(p) for p in loss_fn.parameters()} == {id(p) for p in vae.parameters()}
        assert any(p is vae.likelihood.log_scale for p in loss_fn.parameters())
        opt = torch.optim.Adam(loss_fn.parameters(), lr=2e-3)
        losses = []
        for _ in range(20):
            loss = loss_fn(x)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert len(pyro.get_param_store()) == 0  # nothing leaked into the global param store


def test_bad_settings_are_refused():
    with pytest.raises(ConfigError, match="beta must be a number >= 0"):
        VAE(beta=-1.0)
    with pytest.raises(ConfigError, match="z_dim"):
        VAE(z_dim=0)
    with pytest.raises(ConfigError, match="unknown likelihood"):
        VAE(likelihood="poisson")
    vae = VAE(z_dim=2)
    with pytest.raises(ConfigError):
        vae.beta = float("nan")
    vae.beta = 3.0
    assert vae.model.beta == vae.guide.beta == 3.0


def test_config_round_trip():
    vae = VAE(z_dim=5, likelihood=Gaussian(0.2, learn_scale=True), beta=2.0, image_shape=(3, 32, 32))
    again = VAE.from_config(vae.config())
    assert again.config() == vae.config()
    assert [p.shape for p in again.parameters()] == [p.shape for p in vae.parameters()]


def test_helpers_shapes_and_range():
    vae = VAE(z_dim=4).eval()
    x = torch.rand(3, 1, 28, 28)
    z_loc, z_scale = vae.encode(x)
    assert z_loc.shape == (3, 4)
    for img in (vae.decode(z_loc), vae.sample(7), vae.reconstruct(x)):
        assert img.shape[1:] == (1, 28, 28)
        assert 0 <= img.min() and img.max() <= 1

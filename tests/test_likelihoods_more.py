"""The likelihoods beyond Bernoulli: their normalisers, closed forms, numerics and training."""

import math

import pyro
import pytest
import torch

import vaekit
from vaekit.errors import ConfigError, DataError
from vaekit.evaluation import elbo_terms
from vaekit.likelihoods import (
    KINDS,
    LIKELIHOODS,
    ContinuousBernoulli,
    DiscretizedLogistic,
    Gaussian,
    Laplace,
    Likelihood,
    _DiscretizedLogisticDist,
    get_likelihood,
    register_likelihood,
)

LEVELS = torch.arange(256, dtype=torch.float64) / 255


def _pixels(t: torch.Tensor) -> torch.Tensor:
    """A 1-D tensor as a batch of 1×1 images ``[N, 1, 1, 1]``."""
    return t.reshape(-1, 1, 1, 1)


# -- continuous Bernoulli ---------------------------------------------------------------------------
@pytest.mark.parametrize("logit", [0.0, 1e-4, -2e-3, 4e-3, -0.01, 0.3, -1.0, 5.0, -12.0, 20.0, -20.0,
                                   60.0, -60.0])
def test_continuous_bernoulli_density_integrates_to_one(logit):
    """In float32, as in training; torch's own implementation fails this beyond |logit| = 16."""
    xs = torch.linspace(0, 1, 100001, dtype=torch.float64)
    out = torch.full((xs.numel(), 1, 1, 1), logit, dtype=torch.float32)
    density = ContinuousBernoulli()(out).log_prob(_pixels(xs.float())).double().exp()
    assert torch.trapezoid(density, xs).item() == pytest.approx(1.0, abs=2e-4)


def test_continuous_bernoulli_log_prob_and_mean_closed_form():
    logits = torch.tensor([-6.0, -1.5, -0.2, 0.05, 0.7, 3.0], dtype=torch.float64)
    lam = torch.sigmoid(logits)
    norm = 2 * torch.atanh(1 - 2 * lam) / (1 - 2 * lam)  # C(λ), Loaiza-Ganem & Cunningham eq. (7)
    x = torch.tensor([0.0, 0.9, 0.31, 1.0, 0.5, 0.02], dtype=torch.float64)
    expected = norm.log() + x * lam.log() + (1 - x) * (1 - lam).log()
    d = ContinuousBernoulli()(_pixels(logits))
    assert d.event_shape == (1, 1, 1)
    torch.testing.assert_close(d.log_prob(_pixels(x)), expected)
    mean = lam / (2 * lam - 1) + 1 / (2 * torch.atanh(1 - 2 * lam))  # eq. (8)
    torch.testing.assert_close(ContinuousBernoulli().mean(_pixels(logits)).flatten(), mean)
    # the mean is not λ, and it is E[x] by integration, also where torch's mean saturates
    assert (mean - lam).abs().max() > 0.1
    xs = torch.linspace(0, 1, 200001, dtype=torch.float64)
    for logit in (-40.0, 0.0, 2e-3, 25.0):
        dens = ContinuousBernoulli()(torch.full((xs.numel(), 1, 1, 1), logit, dtype=torch.float64))
        e_x = torch.trapezoid(xs * dens.log_prob(_pixels(xs)).exp(), xs).item()
        lik_mean = ContinuousBernoulli().mean(torch.full((1, 1, 1, 1), logit)).item()  # float32
        assert lik_mean == pytest.approx(e_x, abs=1e-5)


def test_continuous_bernoulli_refuses_pixels_outside_the_unit_interval():
    with pytest.raises(DataError, match=r"continuous-bernoulli.*\[0, 1\]"):
        ContinuousBernoulli().check(torch.tensor([0.0, 1.5]))
    ContinuousBernoulli().check(torch.tensor([0.0, 0.5, 1.0]))


# -- discretized logistic -----------------------------------------------------------------------
def _reference_log_probs(loc: float, scale: float) -> torch.Tensor:
    """log P(level k) for k = 0..255 from the logistic CDF in float64, subtracting on the side of
    the smaller tail so that the difference does not cancel."""
    up = (LEVELS + 0.5 / 255 - loc) / scale
    lo = (LEVELS - 0.5 / 255 - loc) / scale
    lower_tail = torch.sigmoid(up) - torch.sigmoid(lo)
    upper_tail = torch.sigmoid(-lo) - torch.sigmoid(-up)
    p = torch.where(LEVELS > loc, upper_tail, lower_tail)
    p[0], p[-1] = torch.sigmoid(up[0]), torch.sigmoid(-lo[-1])
    return p.log()


CASES = [(0.3, 0.05), (0.5, 0.2), (0.0, 0.01), (1.0, 0.003), (-2.0, 0.5), (3.0, 0.02),
         (0.5017, 1e-3), (0.6, 1e-4), (0.4, 30.0)]


@pytest.mark.parametrize("loc, scale", CASES)
def test_discretized_logistic_levels_sum_to_one_and_match_the_cdf(loc, scale):
    d = _DiscretizedLogisticDist(torch.full((256,), loc, dtype=torch.float64),
                                 torch.full((256,), scale, dtype=torch.float64))
    log_p = d.log_prob(LEVELS)
    assert log_p.exp().sum().item() == pytest.approx(1.0, abs=1e-10)
    ref = _reference_log_probs(loc, scale)
    keep = ref > -600  # where the float64 reference itself is representable
    torch.testing.assert_close(log_p[keep], ref[keep], rtol=1e-7, atol=1e-9)
    # float32, as in training: still normalised, and as accurate as its input rounding allows
    d32 = _DiscretizedLogisticDist(torch.full((256,), loc), torch.full((256,), scale))
    log_p32 = d32.log_prob(LEVELS.float()).double()
    assert torch.isfinite(log_p32).all()
    assert log_p32.exp().sum().item() == pytest.approx(1.0, abs=2e-4)


def test_discretized_logistic_far_tails_need_no_midpoint_fallback():
    """Bins many scales from the location, where σ(a) - σ(b) underflows in float32: the log-sigmoid
    identity keeps the exact value (a naive log of the difference gives -inf or noise)."""
    loc, scale = 0.5, 0.02
    far = torch.tensor([0.0, 10, 200, 230, 254, 255]) / 255
    d32 = _DiscretizedLogisticDist(torch.full((6,), loc), torch.full((6,), scale))
    ref = _reference_log_probs(loc, scale)[(far * 255).round().long()]
    log_p = d32.log_prob(far)
    torch.testing.assert_close(log_p.double(), ref, rtol=1e-4, atol=1e-4)
    up, lo = (far + 0.5 / 255 - loc) / scale, (far - 0.5 / 255 - loc) / scale
    naive = (torch.sigmoid(up) - torch.sigmoid(lo)).log()
    assert not torch.isfinite(naive[1:-1]).all() or (naive[1:-1] - log_p[1:-1]).abs().max() > 1e-2


def test_discretized_logistic_gradients_are_finite_at_extremes():
    loc = torch.tensor([-50.0, 0.5, 60.0, 0.5, 0.2], requires_grad=True)
    scale = torch.tensor([1e-4, 1e-4, 1e-3, 50.0, 4.6e-4], requires_grad=True)
    value = torch.tensor([100.0, 255.0, 0.0, 3.0, 51.0]) / 255
    log_p = _DiscretizedLogisticDist(loc, scale).log_prob(value)
    log_p.sum().backward()
    for t in (log_p, loc.grad, scale.grad):
        assert torch.isfinite(t).all()


def test_discretized_logistic_mean_sample_and_support():
    loc = torch.tensor([0.3, -0.1, 0.98, 0.5], dtype=torch.float64)
    scale = torch.tensor([0.05, 0.03, 0.02, 0.3], dtype=torch.float64)
    d = _DiscretizedLogisticDist(loc, scale)
    probs = d.log_prob(LEVELS.unsqueeze(-1).expand(256, 4)).exp()  # [256 levels, 4]
    torch.testing.assert_close(d.mean, (LEVELS.unsqueeze(-1) * probs).sum(0))
    assert d.mean[1] > 0 and d.mean[2] < 0.98  # not the clamped location
    torch.manual_seed(0)
    draws = d.sample((20000,))
    assert draws.dtype == torch.float64
    assert torch.equal(draws * 255, (draws * 255).round()) and draws.min() >= 0 and draws.max() <= 1
    se = (d.mean - 0).abs().new_tensor(0.5 / math.sqrt(20000))
    assert ((draws.mean(0) - d.mean).abs() < 5 * se).all()
    assert d.support.is_discrete
    assert bool(d.support.check(LEVELS).all()) and not bool(d.support.check(torch.tensor([0.5])))
    with pytest.raises(ValueError):  # Pyro's validation, on in the tests: 0.5 is not a level
        _DiscretizedLogisticDist(loc, scale, validate_args=True).log_prob(torch.full((4,), 0.5))


def test_discretized_logistic_likelihood():
    lik = DiscretizedLogistic()
    assert lik.kind == "discrete" and lik.levels == 256 and lik.params_per_channel == 2
    out = torch.zeros(2, 2, 3, 3)  # locations 0 and the raw scales at their starting point
    px = lik(out)
    assert px.event_shape == (1, 3, 3) and px.base_dist.scale.mean().item() == pytest.approx(0.05)
    floor = lik(torch.cat([torch.zeros(1, 1, 1, 1), torch.full((1, 1, 1, 1), -1e4)], 1))
    assert floor.base_dist.scale.item() == pytest.approx(DiscretizedLogistic.MIN_SCALE)
    assert DiscretizedLogistic.MIN_SCALE == pytest.approx(math.exp(-7) / 2)
    x = torch.tensor([0.0, 0.1, 0.5, 1.0])
    assert torch.equal(lik.targets(x) * 255, (x * 255).round())
    means = lik.mean(out)
    assert means.shape == (2, 1, 3, 3) and 0 < means.min() and means.max() < 0.1
    channel = DiscretizedLogistic(scale_mode="channel", channels=3)
    assert channel.params_per_channel == 1 and channel.log_scale.shape == (3, 1, 1)
    assert channel(torch.zeros(1, 3, 2, 2)).event_shape == (3, 2, 2)
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        lik.check(torch.tensor([-0.5, 0.5]))


# -- Gaussian and Laplace scales ----------------------------------------------------------------
def _normal_log_prob(x, loc, scale):
    return -0.5 * ((x - loc) / scale) ** 2 - torch.log(scale) - 0.5 * math.log(2 * math.pi)


def test_gaussian_keeps_its_old_options_and_configs():
    assert Gaussian(0.1).config() == {"scale": 0.1, "learn_scale": False}
    assert Gaussian(0.2, learn_scale=True).config() == {"scale": 0.2, "learn_scale": True}
    lik = get_likelihood("gaussian", scale=0.3, learn_scale=True)
    assert lik.scale_mode == "global" and [p.shape for p in lik.parameters()] == [torch.Size([])]
    assert Gaussian(0.3, scale_mode="global").config() == lik.config()
    for kwargs in ({}, {"learn_scale": True}, {"scale_mode": "channel", "channels": 3},
                   {"scale_mode": "pixel", "scale": 0.2}):
        for cls in (Gaussian, Laplace, DiscretizedLogistic):
            lik = cls(**kwargs)
            again = get_likelihood(cls.name, **lik.config())
            assert again.config() == lik.config() and again.scale_mode == lik.scale_mode


def test_gaussian_per_channel_and_per_pixel_scales():
    x, loc = torch.rand(2, 3, 4, 4), torch.rand(2, 3, 4, 4)
    ch = Gaussian(0.1, scale_mode="channel", channels=3)
    assert ch.params_per_channel == 1
    with torch.no_grad():
        ch.log_scale.copy_(torch.tensor([0.05, 0.1, 0.2]).log().view(3, 1, 1))
    s = torch.tensor([0.05, 0.1, 0.2]).view(1, 3, 1, 1).expand_as(x)
    torch.testing.assert_close(ch(loc).log_prob(x), _normal_log_prob(x, loc, s).sum((1, 2, 3)))
    ch(loc).log_prob(x).sum().backward()
    assert ch.log_scale.grad.shape == (3, 1, 1) and (ch.log_scale.grad != 0).all()

    pix = Gaussian(0.1, scale_mode="pixel")
    assert pix.params_per_channel == 2 and list(pix.parameters()) == []
    raw = torch.randn(2, 3, 4, 4)
    s = torch.nn.functional.softplus(raw + pix._bias) + Gaussian.MIN_SCALE
    out = torch.cat([loc, raw], 1)  # the documented layout: loc_R, loc_G, loc_B, scale_R, ...
    torch.testing.assert_close(pix(out).log_prob(x), _normal_log_prob(x, loc, s).sum((1, 2, 3)))
    assert torch.equal(pix.mean(out), loc.clamp(0, 1))
    start = pix(torch.zeros(1, 2, 2, 2)).base_dist.scale
    torch.testing.assert_close(start, torch.full_like(start, 0.1))
    floor = pix(torch.cat([loc, torch.full_like(raw, -1e4)], 1)).base_dist.scale
    assert (floor == Gaussian.MIN_SCALE).all()
    # the decoder of a VAE gives two maps per channel
    vae = vaekit.VAE(z_dim=2, likelihood=Gaussian(0.1, scale_mode="pixel"), image_shape=(3, 32, 32))
    assert vae.decoder(torch.zeros(1, 2)).shape == (1, 6, 32, 32)
    assert vae.decode(torch.zeros(1, 2)).shape == (1, 3, 32, 32)


def test_scale_options_that_cannot_be():
    with pytest.raises(ConfigError, match="scale_mode must be one of"):
        Gaussian(scale_mode="per-image")
    with pytest.raises(ConfigError, match="contradicts"):
        Laplace(learn_scale=True, scale_mode="fixed")
    with pytest.raises(ConfigError, match="positive"):
        Laplace(scale=0.0)
    with pytest.raises(ConfigError, match="channels"):
        Gaussian(scale_mode="channel", channels=0)
    one = Gaussian(scale_mode="channel")  # one channel, then given colour images
    with pytest.raises(DataError, match="channels=3"):
        one.check(torch.rand(2, 3, 4, 4))
    with pytest.raises(ConfigError, match="channels=3"):
        one(torch.rand(2, 3, 4, 4))


def test_laplace_log_prob_closed_form_and_learned_scale():
    loc, x = torch.rand(2, 1, 3, 3), torch.rand(2, 1, 3, 3)
    expected = (-(x - loc).abs() / 0.2 - math.log(2 * 0.2)).sum((1, 2, 3))
    torch.testing.assert_close(Laplace(0.2)(loc).log_prob(x), expected)
    learned = Laplace(0.2, learn_scale=True)
    learned(loc).log_prob(x).sum().backward()
    assert learned.log_scale.grad is not None and learned.log_scale.grad != 0


# -- kinds --------------------------------------------------------------------------------------
def test_every_likelihood_has_a_kind():
    assert {name: cls.kind for name, cls in LIKELIHOODS.items() if name in {
        "bernoulli", "gaussian", "laplace", "continuous-bernoulli", "discretized-logistic"}} == {
        "bernoulli": "binary", "gaussian": "continuous", "laplace": "continuous",
        "continuous-bernoulli": "continuous", "discretized-logistic": "discrete"}
    assert all(cls.kind in KINDS for cls in LIKELIHOODS.values())
    with pytest.raises(ConfigError, match="kind 'ordinal'"):
        @register_likelihood("test-ordinal")
        class Ordinal(Likelihood):
            kind = "ordinal"
    assert "test-ordinal" not in LIKELIHOODS


# -- training -----------------------------------------------------------------------------------
TRAINED = [
    ("continuous-bernoulli", {}),
    ("gaussian", {"scale_mode": "channel"}),
    ("gaussian", {"scale_mode": "pixel"}),
    ("laplace", {"learn_scale": True}),
    ("discretized-logistic", {}),
    ("discretized-logistic", {"scale_mode": "channel"}),
]


@pytest.mark.parametrize("name, kwargs", TRAINED, ids=[f"{n}-{'-'.join(map(str, k.values())) or 'default'}"
                                                      for n, k in TRAINED])
def test_new_likelihood_trains_and_round_trips(name, kwargs, mnist_small):
    train_x = mnist_small[0][:256]
    pyro.set_rng_seed(0)
    vae = vaekit.VAE(z_dim=2, likelihood=get_likelihood(name, **kwargs))
    x_obs = vae.likelihood.targets(vaekit.data.to_unit(train_x))

    def neg_elbo() -> float:  # in training mode (batch statistics), one fixed draw of z
        pyro.set_rng_seed(1)
        with torch.no_grad():
            recon, kl = elbo_terms(vae, x_obs)
        return float((recon + kl).mean())

    before = neg_elbo()
    result = vaekit.fit(vae, train_x, epochs=1, batch_size=64, device="cpu", progress=False)
    assert math.isfinite(result.history[0]["train_loss"])
    assert neg_elbo() < before
    assert vaekit.VAE.from_config(vae.config()).config() == vae.config()
    assert vae.config()["likelihood"]["name"] == name
    pictures = vae.sample(4, generator=torch.Generator().manual_seed(0))
    assert pictures.shape == (4, 1, 28, 28) and 0 <= pictures.min() and pictures.max() <= 1
    ev = vaekit.evaluate(vae, x_obs[:16], num_samples=4)  # nats to bits/dim by the likelihood's kind
    if vae.likelihood.kind == "discrete":
        assert ev.bits_per_dim == pytest.approx(ev.neg_log_px / (784 * math.log(2)))
    else:
        assert ev.bits_per_dim == pytest.approx((ev.neg_log_px / 784 + math.log(255)) / math.log(2))

import math

import pytest
import torch

from vaekit import likelihoods
from vaekit.errors import ConfigError, DataError
from vaekit.likelihoods import Bernoulli, Gaussian, Likelihood, get_likelihood, register_likelihood


def test_bernoulli_log_prob_closed_form():
    logits = torch.randn(3, 1, 4, 4)
    x = torch.bernoulli(torch.rand(3, 1, 4, 4))
    p = torch.sigmoid(logits)
    expected = (x * p.log() + (1 - x) * (1 - p).log()).sum((1, 2, 3))
    d = Bernoulli()(logits)
    assert d.event_shape == (1, 4, 4) and d.batch_shape == (3,)
    torch.testing.assert_close(d.log_prob(x), expected, rtol=1e-5, atol=1e-4)


def test_bernoulli_logits_are_stable_at_extremes():
    logits = torch.tensor([-200.0, 200.0]).reshape(1, 1, 1, 2)
    x = torch.tensor([0.0, 1.0]).reshape(1, 1, 1, 2)
    assert torch.isfinite(Bernoulli()(logits).log_prob(x)).all()


def test_bernoulli_grayscale_targets_give_bce():
    logits = torch.randn(2, 1, 3, 3)
    x = torch.rand(2, 1, 3, 3)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="none")
    lp = Bernoulli(binarize=False)(logits).log_prob(x)
    torch.testing.assert_close(lp, -bce.sum((1, 2, 3)))
    assert torch.equal(Bernoulli(binarize=False).targets(x), x)


def test_dynamic_binarization_is_random_and_binary():
    x = torch.full((1000,), 0.3)
    a, b = Bernoulli().targets(x), Bernoulli().targets(x)
    assert set(a.unique().tolist()) <= {0.0, 1.0}
    assert not torch.equal(a, b)
    assert abs(a.mean().item() - 0.3) < 0.05
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    assert torch.equal(Bernoulli().targets(x, g1), Bernoulli().targets(x, g2))


def test_gaussian_log_prob_closed_form():
    loc = torch.rand(2, 3, 4, 4)
    x = torch.rand(2, 3, 4, 4)
    s = 0.1
    expected = (-0.5 * ((x - loc) / s) ** 2 - math.log(s) - 0.5 * math.log(2 * math.pi)).sum((1, 2, 3))
    torch.testing.assert_close(Gaussian(scale=s)(loc).log_prob(x), expected)


def test_gaussian_learned_scale_is_a_parameter():
    fixed, learned = Gaussian(0.2), Gaussian(0.2, learn_scale=True)
    assert list(fixed.parameters()) == []
    assert [p.shape for p in learned.parameters()] == [torch.Size([])]
    assert learned.scale.item() == pytest.approx(0.2)
    learned(torch.zeros(1, 1, 2, 2)).log_prob(torch.ones(1, 1, 2, 2)).sum().backward()
    assert learned.log_scale.grad is not None and learned.log_scale.grad != 0


def test_registry_and_user_likelihood():
    @register_likelihood("test-laplace")
    class Laplace(Likelihood):
        def forward(self, out):
            import pyro.distributions as dist

            return dist.Laplace(out, 0.1).to_event(3)

    try:
        lik = get_likelihood("test-laplace")
        assert isinstance(lik, Laplace) and lik.name == "test-laplace"
        assert lik(torch.zeros(2, 1, 4, 4)).event_shape == (1, 4, 4)
    finally:
        likelihoods.LIKELIHOODS.pop("test-laplace")


def test_unknown_likelihood_and_bad_options():
    known = "bernoulli, continuous-bernoulli, discretized-logistic, discriminator, gaussian, laplace"
    with pytest.raises(ConfigError, match=f"unknown likelihood 'poisson'.*{known}"):
        get_likelihood("poisson")
    with pytest.raises(ConfigError, match="does not take"):
        get_likelihood("bernoulli", scale=0.1)
    with pytest.raises(ConfigError, match="positive"):
        Gaussian(scale=-1.0)


def test_bernoulli_refuses_out_of_range_images():
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        Bernoulli().check(torch.tensor([0.0, 2.0]))
    with pytest.raises(DataError, match="NaN"):
        Gaussian().check(torch.tensor([0.0, float("nan")]))
    Bernoulli().check(torch.tensor([0.0, 1.0]))

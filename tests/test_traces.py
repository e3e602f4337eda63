"""The trace layer (vaekit.traces): which sites' KL may be taken in closed form, and that every
KL and -ELBO vaekit reports agrees with an estimator that reads only the Pyro traces."""

import itertools
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from torch.distributions import kl_divergence

import vaekit
from vaekit.data import load_mnist
from vaekit.evaluation import elbo_terms, evaluate, evaluate_elbo
from vaekit.traces import closed_form_sites, site_log_probs, trace_pair

COMBOS = [(prior, posterior, latents) for prior, posterior, latents in itertools.product(
    ("standard", "mog:3", "vamp:4"), ("diagonal", "iaf:2"), (1, 2))
    if not (latents == 2 and prior.startswith("vamp"))]


def _chain(order):
    """A model drawing a -> b -> c (each given the one before) and a guide drawing them in
    ``order``, each given the ones it drew before."""
    def model():
        a = pyro.sample("a", dist.Normal(0.0, 1.0))
        b = pyro.sample("b", dist.Normal(a, 1.0))
        pyro.sample("c", dist.Normal(b, 1.0))

    def guide():
        drawn = 0.0
        for name in order:
            drawn = drawn + pyro.sample(name, dist.Normal(0.5 * drawn, 1.0))

    return model, guide


@pytest.mark.parametrize("order, closed", [
    ("abc", {"a", "b", "c"}),  # the guide follows the model: every KL is exact given the past
    ("cba", {"a"}),            # reversed: only p(a) is fixed when a is drawn (after c and b)
    ("acb", {"a", "b"}),       # p(c|b) with b drawn after c: c does not qualify
    ("bac", {"a", "c"}),       # p(b|a) with a drawn after b: b does not qualify
])
def test_closed_form_sites_follow_the_order_of_the_draws(order, closed):
    model, guide = _chain(order)
    guide_tr, model_tr = trace_pair(model, guide)
    assert closed_form_sites(guide_tr, model_tr) == closed


def _paired(d):
    """Mean and standard error of paired per-draw differences."""
    return float(d.mean()), float(d.std() / math.sqrt(d.numel()))


@pytest.mark.parametrize("prior, posterior, latents", COMBOS)
def test_each_site_kl_is_an_unbiased_estimate_of_its_elbo_term(prior, posterior, latents):
    """Per site, the KL vaekit uses (closed form where `closed_form_sites` allows it) minus the
    draw's own log q - log p has mean zero over many draws, within paired Monte Carlo error;
    where the closed form is refused, taking it anyway is measurably biased."""
    pyro.set_rng_seed(0)
    x = torch.bernoulli(torch.rand(16, 1, 28, 28))
    vae = vaekit.VAE(z_dim=3, nets="mlp:32", prior=prior, posterior=posterior,
                     latents=latents).eval()
    with torch.no_grad():
        t = site_log_probs(vae, x, particles=4000)
    assert set(t.log_q) == ({"z"} if latents == 1 else {"z1", "z2"})
    for site in t.log_q:
        mc = t.log_q[site] - t.log_p[site]
        mean, se = _paired(t.kl(site) - mc)
        assert abs(mean) < 4 * se + 1e-6, (site, mean, se)
        q, p = t.dists[site]
        if site == "z1" and posterior == "diagonal":  # p(z1|z2) with z2 drawn after z1
            assert site not in t.kl_closed
            naive, naive_se = _paired(kl_divergence(q, p) - mc)
            assert abs(naive) > 6 * naive_se, (naive, naive_se)
        # closed forms: Normal(0, I) against a diagonal Normal q, with nothing drawn after
        expected = prior == "standard" and (site == "z2" or (posterior == "diagonal"
                                                              and latents == 1))
        assert (site in t.kl_closed) == expected, site


def _trace_only_elbo(vae, x, k, seed):
    """Per image, the mean over k draws of log q(z|x) - log p(x, z), and each image's variance
    of that draw: read off the model's and guide's traces (Pyro's own log_prob bookkeeping).
    The draws come from the global RNG seeded with ``seed``, as `evaluate` seeds its own, so the
    two can be compared on common random numbers."""
    torch.manual_seed(seed)
    with torch.no_grad(), pyro.settings.context(module_local_params=True), \
            pyro.plate("draws", k, dim=-2):
        guide_tr = poutine.trace(vae.guide).get_trace(x)
        model_tr = poutine.trace(poutine.replay(vae.model, trace=guide_tr)).get_trace(x)
        model_tr.compute_log_prob()
        guide_tr.compute_log_prob()
        neg_w = sum(s["log_prob"] for s in guide_tr.nodes.values()
                    if s["type"] == "sample" and not s["is_observed"]) - sum(
            s["log_prob"] for s in model_tr.nodes.values() if s["type"] == "sample")
    return neg_w.mean(0), neg_w.var(0), guide_tr, model_tr


@pytest.fixture(scope="module")
def mnist_2048(mnist_root):
    train_x, _ = load_mnist(mnist_root, train=True, download=False, limit=2048)
    test_x, _ = load_mnist(mnist_root, train=False, download=False, limit=200)
    x = torch.bernoulli(test_x.float() / 255, generator=torch.Generator().manual_seed(0))
    return train_x, x


@pytest.mark.parametrize("prior, nets, epochs", [("standard", "mlp:128", 6), ("mog:5", "mlp:128", 6),
                                                 ("standard", "dcgan", 1), ("mog:5", "dcgan", 1)])
def test_two_layer_elbo_agrees_with_a_trace_only_estimator(mnist_2048, prior, nets, epochs):
    """A trained two-layer VAE: `elbo_terms` (metrics.csv, best.pt) and `evaluate` give the
    -ELBO an independent trace reader gives, within paired Monte Carlo error, at a training
    length where the old closed-form z1 KL is off by many standard errors."""
    train_x, x = mnist_2048
    pyro.set_rng_seed(0)
    vae = vaekit.VAE(z_dim=8, nets=nets, latents=2, prior=prior)
    vae = vaekit.fit(vae, train_x, epochs=epochs, batch_size=64, lr=3e-3, device="cpu",
                     progress=False, verbose=False).vae.eval()
    n, k = x.shape[0], 64
    theirs, var, guide_tr, model_tr = _trace_only_elbo(vae, x, k, seed=5)
    # The old number: KL(q(z1|x) || p(z1|z2)) in closed form at the sampled z2 - shows the bias.
    with torch.no_grad():
        old_kl1 = kl_divergence(guide_tr.nodes["z1"]["fn"], model_tr.nodes["z1"]["fn"])
    mc = {s: guide_tr.nodes[s]["log_prob"] - model_tr.nodes[s]["log_prob"] for s in ("z1", "z2")}
    bias, bias_se = _paired(old_kl1 - mc["z1"])
    assert bias > 8 * bias_se, (bias, bias_se)
    # evaluate, on the reader's own draws (same seed, same plate of k): z1's KL is the draws'
    # log q - log p exactly; the -ELBO differs only by z2's closed form against its k-draw mean,
    # whose error bar is that mean's Monte Carlo error. That band is far narrower than the bias.
    r = evaluate(vae, x, num_samples=k, batch_size=n, chunk_size=n * k, seed=5)
    assert r.kl_sites["z1"] == pytest.approx(float(mc["z1"].mean()), rel=1e-4, abs=1e-4)
    crn_se = float(torch.sqrt((mc["z2"].var(0) / k).sum()) / n) + 1e-4
    assert abs(r.neg_elbo - float(theirs.mean())) < 4 * crn_se, (r.neg_elbo, crn_se)
    assert 4 * crn_se < bias, (crn_se, bias)
    # elbo_terms (metrics.csv, best.pt), one draw per image per repeat, independent draws:
    # paired image by image with the reader, within the Monte Carlo error of both.
    torch.manual_seed(1)
    with torch.no_grad():
        ours = sum(sum(elbo_terms(vae, x)) for _ in range(k)) / k
    mean, se = _paired(ours - theirs)
    assert abs(mean) < 4 * se, (mean, se)
    # evaluate_elbo: one draw per image, against the reader, within both draws' error.
    one = evaluate_elbo(vae, x)["neg_elbo"]
    assert abs(one - float(theirs.mean())) < 4 * float(torch.sqrt(var.sum() + (var / k).sum()) / n)

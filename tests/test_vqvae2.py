"""The VQ-VAE-2 (two levels of codes): its bound and gradients against hand computations, the
conditional PixelCNN's causality and normalisation over every pair of tiny grids, and runs of
both stages that train, resume exactly and use what they learned."""

from __future__ import annotations

import math

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO

import vaekit
from vaekit import runs
from vaekit.evaluation import evaluate
from vaekit.traces import site_log_probs
from vaekit.vqvae import VQTraining


def _vq2(k: int = 16, d: int = 8, seed: int = 0, **kw) -> vaekit.VAE:
    pyro.set_rng_seed(seed)
    return vaekit.VAE(posterior=f"vq:{k}", z_dim=d, latents=2, **kw)


def _images(n: int = 10, seed: int = 1) -> torch.Tensor:
    return torch.bernoulli(torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed)))


def _nearest(z_e: torch.Tensor, book: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes ``[n, h, w]`` and vectors ``[n, d, h, w]`` by brute force over every distance."""
    n, d, h, w = z_e.shape
    codes = torch.cdist(z_e.permute(0, 2, 3, 1).reshape(-1, d), book).argmin(1)
    return codes.view(n, h, w), book[codes].view(n, h, w, d).permute(0, 3, 1, 2)


def _by_hand(vae: vaekit.VAE, x: torch.Tensor, straight_through: bool = False):
    """The VQ-VAE-2's guide written out: top codes from the encoder's top grid, the bottom grid
    from the features and the top codes' vectors, bottom codes; then log p(x | codes)."""
    h, z_e2 = vae.encoder(x)
    c2, e2 = _nearest(z_e2.detach(), vae.posterior.top.codebook)
    if straight_through:
        e2 = z_e2 + (e2 - z_e2).detach()
    z_e1 = vae.encoder.merge(h, e2)
    c1, e1 = _nearest(z_e1.detach(), vae.posterior.quantizer.codebook)
    if straight_through:
        e1 = z_e1 + (e1 - z_e1).detach()
    log_lik = torch.distributions.Bernoulli(logits=vae.decoder(e1, e2)).log_prob(x).sum((1, 2, 3))
    return log_lik, (c1, c2), (z_e1, e1, z_e2, e2)


def test_the_two_level_bound_is_log_p_x_given_both_grids_plus_their_log_prior():
    vae, x = _vq2().eval(), _images()
    with torch.no_grad():
        log_lik, (c1, c2), _ = _by_hand(vae, x)
    assert c1.shape == (10, 7, 7) and c2.shape == (10, 4, 4)  # 28x28: 7x7 under 4x4
    got = vae.codes(x)
    assert torch.equal(got[0], c1) and torch.equal(got[1], c2)
    t = site_log_probs(vae, x, particles=3)
    assert list(t.log_q) == ["z2", "z1"]  # the top grid first, then the bottom given it
    assert all(torch.equal(v, torch.zeros(3, 10)) for v in t.log_q.values())
    assert torch.allclose(t.log_p["z2"], torch.full((3, 10), -16 * math.log(16)), atol=1e-4)
    assert torch.allclose(t.log_p["z1"], torch.full((3, 10), -49 * math.log(16)), atol=1e-4)
    assert torch.allclose(t.log_lik[0], log_lik, rtol=1e-5)
    want = float(-(log_lik - 65 * math.log(16)).mean())
    ev = evaluate(vae, x, num_samples=20)
    assert ev.num_samples == 1 and ev.neg_elbo == pytest.approx(want, rel=1e-5)
    assert ev.kl_sites["z2"] == pytest.approx(16 * math.log(16), rel=1e-5)
    assert ev.neg_elbo_uniform_prior == pytest.approx(want, rel=1e-5)
    assert 1 <= ev.codes_used_top <= 16 and 1 <= ev.code_perplexity_top <= ev.codes_used_top
    pyro_loss = Trace_ELBO().loss(vae.model, vae.guide, x)  # Pyro's own estimator agrees
    assert pyro_loss == pytest.approx(want * 10, rel=1e-5)
    assert torch.equal(vae.reconstruct(x), vae.decode_codes((c1, c2)))


def test_both_grids_get_straight_through_gradients_and_both_codebooks_move_by_averages():
    vae, x = _vq2(), _images(6)
    books = [q.codebook.clone() for q in vae.posterior.quantizers]  # the ones that assign
    VQTraining(vae, commitment=0.25)(x).backward()
    got = {n: p.grad.clone() for n, p in vae.named_parameters() if p.grad is not None}
    assert all(not torch.equal(q.codebook, b) for q, b in zip(vae.posterior.quantizers, books))
    assert not any("codebook" in n for n, _ in vae.named_parameters())  # buffers under EMA
    assert got["guide.encoder.top.0.weight"].abs().sum() > 0  # the top grid's encoder learns
    for q, b in zip(vae.posterior.quantizers, books):  # by hand, with the codebooks that assigned
        q.codebook.copy_(b)
    vae.zero_grad()
    vae.eval()
    log_lik, _, (z_e1, e1, z_e2, e2) = _by_hand(vae, x, straight_through=True)
    commit = (z_e1 - e1.detach()).pow(2).sum() + (z_e2 - e2.detach()).pow(2).sum()
    (-log_lik.sum() + 0.25 * commit).backward()
    for name, p in vae.named_parameters():
        assert torch.allclose(got[name], p.grad, rtol=1e-4, atol=1e-6), name


def _two_level_pixelcnn(k: int = 3, grid=(2, 2), top_grid=(1, 1), seed: int = 0):
    from vaekit.pixelcnn import PixelCNNPrior

    torch.manual_seed(seed)
    prior = PixelCNNPrior(2, k, hidden=8, layers=2, levels=2)
    with torch.no_grad():  # weights far from zero: conditionals that differ
        for p in prior.parameters():
            p.mul_(3)
    vae = _vq2(k=k, d=2)
    prior.bind_codebook(vae.posterior.quantizer, grid, vae.posterior.top, top_grid)
    return prior


def test_the_bottom_pixelcnn_sees_earlier_cells_and_the_whole_top_grid():
    prior = _two_level_pixelcnn(k=4, grid=(4, 4), top_grid=(2, 2))
    gen = torch.Generator().manual_seed(0)
    codes, top = torch.randint(4, (1, 4, 4), generator=gen), torch.randint(4, (1, 2, 2),
                                                                           generator=gen)
    base = prior.net(codes, top)
    for cell in range(16):
        changed = codes.clone()
        changed.view(-1)[cell] = (changed.view(-1)[cell] + 1) % 4
        moved = (prior.net(changed, top) - base).abs().amax(1).view(-1)
        assert moved[: cell + 1].max() == 0  # the cell itself and earlier ones do not move
    other = top.clone()
    other[0, 1, 1] = (other[0, 1, 1] + 1) % 4  # the last top cell moves even the first bottom cell
    assert (prior.net(codes, other) - base).abs().amax(1).view(-1).max() > 0
    with pytest.raises(vaekit.ConfigError, match="conditioned on a top grid"):
        prior.net(codes)


def test_the_two_level_pixelcnn_masses_of_every_pair_of_grids_sum_to_one():
    prior = _two_level_pixelcnn(k=3, grid=(2, 2), top_grid=(1, 2))
    tops = torch.cartesian_prod(*[torch.arange(3)] * 2).view(-1, 1, 2)  # all 9 top grids
    bottoms = torch.cartesian_prod(*[torch.arange(3)] * 4).view(-1, 2, 2)  # all 81 bottom ones
    with torch.no_grad():
        top_lp = prior.log_prob_top(tops).double()
        per_top = torch.stack([prior.log_prob_codes(bottoms, t.expand(81, 1, 2)).double()
                               for t in tops])
    assert torch.allclose(torch.logsumexp(per_top, 1), torch.zeros(9, dtype=torch.float64),
                          atol=1e-5)  # p(c | c_top) sums to one for every top grid
    assert float(torch.logsumexp(top_lp[:, None] + per_top, (0, 1))) == pytest.approx(0, abs=1e-5)
    assert not torch.allclose(per_top[0], per_top[1])  # and it does depend on the top grid
    torch.manual_seed(0)
    bottom, top = prior.sample_levels(4000)  # the sampler draws from the same joint
    first = torch.bincount(top[:, 0, 0], minlength=3).double() / 4000
    with torch.no_grad():
        want = torch.softmax(prior.top_net(torch.zeros(1, 1, 2, dtype=torch.long))[0, :, 0, 0], 0)
    assert torch.allclose(first, want.double(), atol=0.03)
    pick = (top == tops[4]).flatten(1).all(1)  # bottom's first cell given one top grid
    freq = torch.bincount(bottom[pick][:, 0, 0], minlength=3).double() / int(pick.sum())
    with torch.no_grad():
        cond = torch.softmax(prior.net(torch.zeros(1, 2, 2, dtype=torch.long), tops[4:5])
                             [0, :, 0, 0], 0)
    assert torch.allclose(freq, cond.double(), atol=0.08)


def test_a_two_level_run_and_its_prior_train_resume_exactly_and_are_used(mnist_small, tmp_path):
    from vaekit.prior_fit import fit_prior
    from vaekit.settings import PriorSettings

    train_x, test_x = mnist_small[0][:256], mnist_small[1][:64]
    kw = dict(batch_size=64, device="cpu", progress=False, verbose=False, lr=1e-3)
    whole = vaekit.fit(_vq2(k=32), train_x, test_x, epochs=2, run_dir=tmp_path / "whole", **kw)
    vaekit.fit(_vq2(k=32), train_x, test_x, epochs=1, run_dir=tmp_path / "half", **kw)
    again = vaekit.resume(tmp_path / "half", train_x, test_x, epochs=2, progress=False,
                          verbose=False)
    assert [r["train_loss"] for r in again.history] == [r["train_loss"] for r in whole.history]
    a, b = (runs.load_checkpoint(tmp_path / d) for d in ("whole", "half"))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert any("posterior.top.counts" in k for k in a["model"])  # the top averages are saved
    for r in runs.read_metrics(tmp_path / "half"):
        assert 1 <= r["codes_used_top"] <= 32 and 1 <= r["perplexity_top"] <= r["codes_used_top"]
        assert r["test_kl"] == pytest.approx(65 * math.log(32), rel=1e-5)
    assert (tmp_path / "half" / runs.CODES).stat().st_size > 1000
    images = (train_x, test_x)
    s = PriorSettings(epochs=2, batch_size=64, hidden=8, layers=1)
    fitted = fit_prior(tmp_path / "whole", s, verbose=False, images=images)
    fit_prior(tmp_path / "half", PriorSettings(epochs=1, batch_size=64, hidden=8, layers=1),
              verbose=False, images=images)
    resumed = fit_prior(tmp_path / "half", s, verbose=False, images=images)
    assert [r["test_nll"] for r in resumed.history] == [r["test_nll"] for r in fitted.history]
    vae = vaekit.load(tmp_path / "whole")
    assert vae.prior.name == "pixelcnn" and vae.prior.levels == 2
    x = _images(8)
    with torch.no_grad():
        log_lik, (c1, c2), _ = _by_hand(vae, x)
        log_p = vae.prior.log_prob_top(c2) + vae.prior.log_prob_codes(c1, c2)
    ev = evaluate(vae, x)
    assert ev.neg_elbo == pytest.approx(float(-(log_lik + log_p).mean()), rel=1e-5)
    assert ev.neg_elbo_uniform_prior == pytest.approx(ev.recon + 65 * math.log(32), rel=1e-6)
    vae.prior.temperature = 0.7
    one = vae.sample(3, generator=torch.Generator().manual_seed(5))
    assert torch.equal(one, vae.sample(3, generator=torch.Generator().manual_seed(5)))
    assert one.shape == (3, 1, 28, 28) and 0 <= one.min() and one.max() <= 1


def test_two_levels_on_64x64_colour_images_and_what_is_refused():
    vae = vaekit.VAE(posterior="vq:8", z_dim=4, latents=2, image_shape=(3, 64, 64),
                     likelihood="gaussian")
    x = torch.rand(4, 3, 64, 64)
    assert [tuple(c.shape) for c in vae.codes(x)] == [(4, 16, 16), (4, 8, 8)]
    assert vae.sample(2).shape == (2, 3, 64, 64)
    loss = VQTraining(vae)(x)
    assert torch.isfinite(loss)
    with pytest.raises(vaekit.ConfigError, match="must return"):  # a one-level encoder
        vaekit.VAE(posterior="vq:8", z_dim=4, latents=2, encoder="vaekit.nets:GridEncoder")
    from vaekit.priors import UniformCodes

    with pytest.raises(vaekit.ConfigError, match="level"):
        vaekit.VAE(posterior="vq:8", z_dim=4, latents=2, prior=UniformCodes(4, 8))

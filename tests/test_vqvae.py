"""The VQ-VAE: its bound against a hand computation, the straight-through and codebook
gradients, the codebook under two processes, and runs that train, resume exactly and refuse
what they cannot do."""

from __future__ import annotations

import dataclasses
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO

import vaekit
from vaekit import runs
from vaekit.evaluation import evaluate
from vaekit.traces import site_log_probs
from vaekit.vqvae import VQTraining

HERE = Path(__file__).resolve().parent
_CPU = ("--device", "cpu", "--no-download", "--no-progress")


def _vq(k: int = 16, d: int = 8, seed: int = 0, **kw) -> vaekit.VAE:
    pyro.set_rng_seed(seed)
    return vaekit.VAE(posterior=f"vq:{k}", z_dim=d, **kw)


def _images(n: int = 12, seed: int = 1) -> torch.Tensor:
    return torch.bernoulli(torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed)))


def _by_hand(vae: vaekit.VAE, x: torch.Tensor, book: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image: log p(x | codes) with the codes found by brute force in ``book`` (default the
    VAE's codebook), and the codes' vectors."""
    with torch.no_grad():
        z_e = vae.encoder(x)
        n, d, h, w = z_e.shape
        flat = z_e.permute(0, 2, 3, 1).reshape(-1, d)
        book = vae.posterior.quantizer.codebook if book is None else book
        codes = torch.cdist(flat, book).argmin(1)  # every distance, not the quantizer's
        e = book[codes].view(n, h, w, d).permute(0, 3, 1, 2)
        logits = vae.decoder(e)
        log_lik = torch.distributions.Bernoulli(logits=logits).log_prob(x).sum((1, 2, 3))
    return log_lik, e


def test_the_bound_is_log_p_x_given_codes_plus_log_p_codes_computed_by_hand():
    vae, x = _vq().eval(), _images()
    log_lik, _ = _by_hand(vae, x)
    log_p_codes = -49 * math.log(16)  # a 7x7 grid, 16 codes, uniform
    t = site_log_probs(vae, x, particles=3)
    assert torch.equal(t.log_q["z"], torch.zeros(3, 12))  # the point mass: log q = 0
    assert torch.allclose(t.log_p["z"], torch.full((3, 12), log_p_codes), atol=1e-4)
    assert torch.allclose(t.log_lik[0], log_lik, rtol=1e-5)
    ev = evaluate(vae, x, num_samples=50)
    assert ev.num_samples == 1  # a point mass: K equal weights
    want = float(-(log_lik + log_p_codes).mean())
    assert ev.neg_elbo == pytest.approx(want, rel=1e-5)
    assert ev.neg_log_px == pytest.approx(want, rel=1e-5)
    assert ev.recon == pytest.approx(float(-log_lik.mean()), rel=1e-5)
    assert ev.kl == pytest.approx(-log_p_codes, rel=1e-6)
    pyro_loss = Trace_ELBO().loss(vae.model, vae.guide, x)  # Pyro's own estimator agrees
    assert pyro_loss == pytest.approx(float(-(log_lik + log_p_codes).sum()), rel=1e-5)
    assert 1 <= ev.codes_used <= 16 and 1 <= ev.code_perplexity <= ev.codes_used


def _encoder_grads(vae: vaekit.VAE) -> list[torch.Tensor]:
    return [p.grad.clone() for p in vae.encoder.parameters()]


@pytest.mark.parametrize("decay", [0.99, 0.0])
def test_the_encoder_gets_the_straight_through_gradient_and_the_codebook_only_its_own(decay):
    """Under EMA the codebook is no parameter; with decay 0 its gradient is the codebook loss's.
    The encoder's gradient is the decoder's gradient at the codes plus the commitment's."""
    vae, x = _vq(codebook_decay=decay), _images(6)
    obj = VQTraining(vae, commitment=0.25)
    before = vae.posterior.quantizer.codebook.detach().clone()  # the codebook that quantizes
    obj(x).backward()  # then an EMA update, in training mode
    got = _encoder_grads(vae)
    book = vae.posterior.quantizer.codebook
    assert torch.equal(book, before) == (decay == 0)  # the averages moved it
    assert isinstance(book, torch.nn.Parameter) == (decay == 0)
    book_grad = None if book.grad is None else book.grad.clone()
    vae.zero_grad()
    vae.eval()  # no more updates
    z_e = vae.encoder(x)
    _, e = _by_hand(vae, x, before)
    e = e.clone().requires_grad_(True)
    recon = -torch.distributions.Bernoulli(logits=vae.decoder(e)).log_prob(x).sum()
    (g_e,) = torch.autograd.grad(recon, e)
    (z_e * (g_e + 2 * 0.25 * (z_e - e).detach())).sum().backward()
    want = _encoder_grads(vae)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(got, want))
    if decay == 0:
        flat = z_e.detach().permute(0, 2, 3, 1).reshape(-1, 8)
        codes = torch.cdist(flat, before).argmin(1)
        leaf = book.detach().clone().requires_grad_(True)
        (flat - leaf[codes]).pow(2).sum().backward()
        assert torch.allclose(book_grad, leaf.grad, rtol=1e-4, atol=1e-6)


def test_the_uniform_prior_draws_codebook_vectors_and_masses_sum_to_one():
    vae = _vq(k=3, d=2)
    prior = vae.prior
    z = prior(5).sample()
    assert z.shape == (5, 2, 7, 7)
    book = vae.posterior.quantizer.codebook
    flat = z.permute(0, 2, 3, 1).reshape(-1, 2)
    assert torch.cdist(flat, book).min(1).values.max() == 0  # every value is a code's vector
    prior.grid = (2, 2)  # a tiny grid: the masses of all 3^4 grids sum to one
    grids = torch.cartesian_prod(*[torch.arange(3)] * 4).view(-1, 2, 2)
    assert torch.logsumexp(prior.log_prob_codes(grids), 0) == pytest.approx(0.0, abs=1e-6)


def test_the_codebook_stays_the_same_on_two_ranks(tmp_path):
    sys.path.insert(0, str(HERE))
    from vq_worker import data, run

    out = tmp_path / "books.pt"
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                        "--nproc-per-node=2", str(HERE / "vq_worker.py"), str(out)],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    got = torch.load(out)
    a, b = got["reseeded"]
    assert torch.equal(a, b)  # re-seeded codes too: rank 0's draws, broadcast
    one = run(data(), 0.0).codebook  # one process on the whole batch
    assert torch.allclose(got["plain"][0], one, atol=1e-5)
    assert torch.equal(got["plain"][0], got["plain"][1])
    assert not torch.allclose(got["reseeded"][0], one, atol=1e-3)  # the re-seeding did happen


def test_a_vq_run_trains_resumes_exactly_and_reports_its_codes(mnist_small, tmp_path):
    train_x, test_x = mnist_small[0][:256], mnist_small[1][:64]
    kw = dict(batch_size=64, device="cpu", progress=False, verbose=False, lr=1e-3)
    whole = vaekit.fit(_vq(k=32), train_x, test_x, epochs=2, run_dir=tmp_path / "whole", **kw)
    vaekit.fit(_vq(k=32), train_x, test_x, epochs=1, run_dir=tmp_path / "half", **kw)
    again = vaekit.resume(tmp_path / "half", train_x, test_x, epochs=2, progress=False,
                          verbose=False)
    assert [r["train_loss"] for r in again.history] == [r["train_loss"] for r in whole.history]
    a, b = (runs.load_checkpoint(tmp_path / d) for d in ("whole", "half"))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])  # codebook too
    assert any("quantizer.counts" in k for k in a["model"])  # the moving averages are saved
    rows = runs.read_metrics(tmp_path / "half")
    for r in rows:
        assert 1 <= r["codes_used"] <= 32 and 1 <= r["perplexity"] <= r["codes_used"]
        assert r["test_kl"] == pytest.approx(49 * math.log(32), rel=1e-5)
        assert r["commitment"] > 0
    assert rows[1]["test_neg_elbo"] < rows[0]["test_neg_elbo"]
    back = vaekit.load(tmp_path / "half")
    assert back.is_vq and back.spec() == again.vae.spec()
    samples = back.sample(4)
    assert samples.shape == (4, 1, 28, 28) and 0 <= samples.min() and samples.max() <= 1


@pytest.mark.parametrize("extra,message", [
    (["--beta", "2"], "beta 1"),
    (["--prior", "mog:3"], "prior is over its codes"),
    (["--objective", "iwae"], "does not train a VQ-VAE"),
    (["--conditional"], "unconditional"),
])
def test_a_vq_vae_refuses_what_its_maths_does_not_allow(runner, extra, message):
    from vaekit.cli import cli

    r = runner.invoke(cli, ["fit", "--posterior", "vq:16", "--epochs", "1", "--limit-train", "64",
                            "--limit-test", "64", "--batch-size", "32", *extra, "--out", "a",
                            *_CPU])
    assert r.exit_code == 2, r.output
    assert message in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1
    assert not Path("a").exists()  # refused before any file


def test_the_cli_fits_evaluates_and_samples_a_vq_vae(runner):
    from vaekit.cli import cli

    r = runner.invoke(cli, ["fit", "--posterior", "vq:32", "--z-dim", "8", "--epochs", "1",
                            "--limit-train", "256", "--limit-test", "64", "--batch-size", "64",
                            "--out", "vq", *_CPU])
    assert r.exit_code == 0, r.output
    assert Path("vq/codes.png").stat().st_size > 1000  # which codes the test images use
    r = runner.invoke(cli, ["evaluate", "vq", "--device", "cpu", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "KL = -log p(codes), uniform" in r.output and "codes used" in r.output
    assert "IWAE -log p(x), K=1" in r.output and "active units" not in r.output
    r = runner.invoke(cli, ["sample", "vq", "--n", "8", "--temperature", "0.5", "--device", "cpu"])
    assert r.exit_code == 2 and "needs a VQ-VAE with a learned prior" in r.output
    r = runner.invoke(cli, ["sample", "vq", "--n", "8", "--device", "cpu"])
    assert r.exit_code == 0 and Path("vq/sample.png").exists(), r.output
    r = runner.invoke(cli, ["fit-prior", "vq", "--epochs", "1", "--hidden", "8", "--layers", "1",
                            "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert "prior epoch 1/1" in r.output and Path("vq/prior/metrics.csv").exists()
    r = runner.invoke(cli, ["evaluate", "vq", "--device", "cpu", "--no-progress"])
    assert "KL = -log p(codes), pixelcnn" in r.output
    assert "-ELBO with the uniform prior" in r.output, r.output
    r = runner.invoke(cli, ["sample", "vq", "--n", "8", "--temperature", "0.5", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(cli, ["fit", "--epochs", "1", "--limit-train", "64", "--limit-test", "64",
                            "--batch-size", "32", "--out", "plain", *_CPU])
    r = runner.invoke(cli, ["fit-prior", "plain", "--device", "cpu"])
    assert r.exit_code == 2 and "is not a VQ-VAE" in r.output
    assert len(r.output.strip().splitlines()) == 1 and not Path("plain/prior").exists()


def _pixelcnn(k: int = 3, grid=(2, 2), seed: int = 0):
    from vaekit.pixelcnn import PixelCNNPrior

    torch.manual_seed(seed)
    prior = PixelCNNPrior(2, k, hidden=8, layers=2)
    with torch.no_grad():  # weights far from zero: conditionals that differ
        for p in prior.parameters():
            p.mul_(3)
    vae = _vq(k=k, d=2)
    prior.bind_codebook(vae.posterior.quantizer, grid)
    return prior


def test_the_pixelcnn_conditionals_depend_only_on_earlier_cells():
    prior = _pixelcnn(k=4, grid=(4, 4))
    codes = torch.randint(4, (1, 4, 4), generator=torch.Generator().manual_seed(0))
    base = prior.net(codes)
    for cell in range(16):
        changed = codes.clone()
        changed.view(-1)[cell] = (changed.view(-1)[cell] + 1) % 4
        moved = (prior.net(changed) - base).abs().amax(1).view(-1)  # per cell
        assert moved[: cell + 1].max() == 0  # the cell itself and earlier ones do not move
    later = codes.clone()
    later.view(-1)[0] = (later.view(-1)[0] + 1) % 4
    assert (prior.net(later) - base).abs().amax(1).view(-1)[1:].max() > 0  # later ones do


def test_the_pixelcnn_masses_of_every_grid_sum_to_one():
    prior = _pixelcnn(k=3, grid=(2, 2))
    grids = torch.cartesian_prod(*[torch.arange(3)] * 4).view(-1, 2, 2)  # all 3^4 grids
    with torch.no_grad():
        total = torch.logsumexp(prior.log_prob_codes(grids).double(), 0)
    assert float(total) == pytest.approx(0.0, abs=1e-5)
    draws = prior.sample_codes(4000)  # the sampler draws from the same distribution
    first = torch.bincount(draws[:, 0, 0], minlength=3).double() / 4000
    with torch.no_grad():
        want = torch.softmax(prior.net(torch.zeros(1, 2, 2, dtype=torch.long))[0, :, 0, 0], 0)
    assert torch.allclose(first, want.double(), atol=0.03)


def test_fit_prior_trains_resumes_exactly_and_the_run_then_uses_it(mnist_small, tmp_path,
                                                                   monkeypatch, mnist_root):
    from vaekit.data import load_splits
    from vaekit.prior_fit import fit_prior
    from vaekit.settings import DataSpec, PriorSettings

    monkeypatch.setenv("VAEKIT_DATA", str(mnist_root))
    spec = DataSpec(limit_train=256, limit_test=64, val=0, download=False)

    vaekit.fit(_vq(k=16), load_splits(spec), epochs=1, batch_size=64, device="cpu",
               run_dir=tmp_path / "vq", progress=False, verbose=False, data_spec=spec)
    s = PriorSettings(epochs=2, batch_size=32, hidden=8, layers=1)
    whole = fit_prior(tmp_path / "vq", s, verbose=False)
    assert whole.history[1]["train_nll"] < whole.history[0]["train_nll"]
    for r in whole.history:  # below the uniform prior's 49 log 16 nats, a true bound's part
        assert 0 < r["test_nll"] < 49 * math.log(16) + 1
    first = {k: v.clone() for k, v in whole.prior.state_dict().items()}
    shutil.rmtree(tmp_path / "vq" / "prior")
    fit_prior(tmp_path / "vq", dataclasses.replace(s, epochs=1), verbose=False)
    again = fit_prior(tmp_path / "vq", s, verbose=False)  # resumed at epoch 1
    assert [r["train_nll"] for r in again.history] == [r["train_nll"] for r in whole.history]
    assert all(torch.equal(first[k], v) for k, v in again.prior.state_dict().items())
    with pytest.raises(vaekit.ConfigError, match="fitted with batch_size 32, hidden 8, layers 1"):
        fit_prior(tmp_path / "vq", PriorSettings(epochs=3), verbose=False)
    vae = vaekit.load(tmp_path / "vq")
    assert vae.prior.name == "pixelcnn"
    assert vaekit.load(tmp_path / "vq", prior="trained").prior.name == "uniform"
    x = _images(16)
    ev = evaluate(vae, x)
    by_hand = -(_by_hand(vae, x)[0] + vae.prior.log_prob_codes(
        vae.posterior.quantizer.codes_of(vae.encode(x)[0])).detach()).mean()
    assert ev.neg_elbo == pytest.approx(float(by_hand), rel=1e-5)
    assert ev.neg_elbo_uniform_prior == pytest.approx(ev.recon + 49 * math.log(16), rel=1e-6)
    vae.prior.temperature = 0.5
    assert vae.sample(3).shape == (3, 1, 28, 28)

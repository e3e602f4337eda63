"""Evaluation numbers against analytic answers: IWAE on a linear-Gaussian model, the ELBO two ways,
per-dimension KL and active units, bits/dim, and the CLI ``evaluate`` end to end."""

import json
import math
from pathlib import Path

import pyro
import pytest
import torch
from click.testing import CliRunner
from pyro.infer import TraceMeanField_ELBO
from torch import nn
from torch.distributions import MultivariateNormal

import vaekit
from vaekit.cli import cli
from vaekit.errors import ConfigError, DataError
from vaekit.evaluation import (
    Evaluation,
    active_units,
    bits_per_dim,
    evaluate,
    evaluate_elbo,
    iwae_bound,
)
from vaekit.likelihoods import Gaussian

SHAPE = (1, 2, 2)  # D = 4 "pixels"
D, Z, SIGMA = 4, 2, 0.5


class LinearDecoder(nn.Module):
    """x = W z + b (+ N(0, σ²I) from the Gaussian likelihood)."""

    def __init__(self, w: torch.Tensor, b: torch.Tensor) -> None:
        super().__init__()
        self.w, self.b = nn.Parameter(w), nn.Parameter(b)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return (z @ self.w.T + self.b).reshape(z.shape[:-1] + SHAPE)


class LinearEncoder(nn.Module):
    """q(z|x) = N(shrink · A (x - b) + shift, inflate · s): the exact posterior when shrink=1,
    shift=0, inflate=1 and WᵀW is diagonal, an imperfect one otherwise."""

    def __init__(self, w: torch.Tensor, b: torch.Tensor, shrink: float = 1.0, shift: float = 0.0,
                 inflate: float = 1.0) -> None:
        super().__init__()
        cov = torch.linalg.inv(torch.eye(Z) + w.T @ w / SIGMA**2)  # posterior covariance
        self.register_buffer("a", cov @ w.T / SIGMA**2)
        self.register_buffer("b", b.clone())
        self.register_buffer("s", cov.diagonal().sqrt() * inflate)
        self.shrink, self.shift = shrink, shift

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc = self.shrink * (x.flatten(1) - self.b) @ self.a.T + self.shift
        return loc, self.s.expand_as(loc)


def linear_gaussian(orthogonal: bool = False, seed: int = 0, **enc):
    """A VAE with a known marginal p(x) = N(b, WWᵀ + σ²I), and data drawn from it."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(D, Z, generator=g)
    if orthogonal:  # orthogonal columns: WᵀW diagonal, so the true posterior is a diagonal Normal
        w = torch.linalg.qr(w)[0] * torch.tensor([2.0, 0.7])
    b = torch.randn(D, generator=g)
    vae = vaekit.VAE(z_dim=Z, likelihood=Gaussian(scale=SIGMA), image_shape=SHAPE,
                     encoder=LinearEncoder(w, b, **enc), decoder=LinearDecoder(w, b))
    px = MultivariateNormal(b, w @ w.T + SIGMA**2 * torch.eye(D))
    return vae, px


def data(px, n, seed=1):
    torch.manual_seed(seed)
    x = px.sample((n,))
    return x.reshape(n, *SHAPE), -px.log_prob(x)


IMPERFECT = {"shrink": 0.8, "shift": 0.1, "inflate": 1.3}


# -- IWAE against the true log-likelihood --------------------------------------------------------
def test_iwae_is_exact_with_the_true_posterior():
    vae, px = linear_gaussian(orthogonal=True)
    x, true_nll = data(px, 50)
    est = iwae_bound(vae, x, num_samples=1)  # every weight p(x, z)/q(z|x) equals p(x)
    torch.testing.assert_close(est, true_nll, atol=1e-4, rtol=1e-5)


def test_iwae_approaches_log_px_from_above_and_tightens_with_k():
    vae, px = linear_gaussian(**IMPERFECT)
    x, true_nll = data(px, 2000)
    gaps, ses = [], []
    for k in (1, 4, 16, 64, 256, 4096):
        n = 2000 if k < 4096 else 300  # K = 4096 has little Monte Carlo noise: fewer images
        gap = iwae_bound(vae, x[:n], num_samples=k, batch_size=500, seed=k) - true_nll[:n]
        gaps.append(float(gap.mean()))
        ses.append(float(gap.std() / math.sqrt(len(gap))))
    # An upper bound on -log p(x) on average: never below the truth beyond Monte Carlo error.
    assert all(g > -3 * s for g, s in zip(gaps, ses)), (gaps, ses)
    # The encoder is imperfect: K = 1 (the ELBO) is clearly loose ...
    assert gaps[0] > 0.5
    # ... and the bound tightens as K grows (each step beyond its standard errors) ...
    for (g1, s1), (g2, s2) in zip(zip(gaps[:4], ses[:4]), zip(gaps[1:5], ses[1:5])):
        assert g1 - g2 > 2 * math.hypot(s1, s2), (gaps, ses)
    # ... until it reaches the true log-likelihood.
    assert abs(gaps[-1]) < 3 * ses[-1] + 0.01, (gaps, ses)


def test_iwae_does_not_depend_on_the_chunk_size_and_is_seeded():
    vae, px = linear_gaussian(**IMPERFECT)
    x, _ = data(px, 30)
    a = iwae_bound(vae, x, num_samples=50, batch_size=7, chunk_size=3, seed=5)
    b = iwae_bound(vae, x, num_samples=50, batch_size=7, chunk_size=100000, seed=5)
    c = iwae_bound(vae, x, num_samples=50, batch_size=7, chunk_size=3, seed=6)
    torch.testing.assert_close(a, b)
    assert a.shape == (30,) and not torch.allclose(a, c)


# -- the ELBO: analytic, decomposed, and through Pyro ---------------------------------------------
def analytic_neg_elbo(vae, x):
    """-ELBO of the linear-Gaussian model in closed form: E_q[-log p(x|z)] + KL."""
    loc, scale = vae.encoder(x)
    w, b = vae.decoder.w, vae.decoder.b
    resid = x.flatten(1) - loc @ w.T - b
    recon = (0.5 * D * math.log(2 * math.pi * SIGMA**2)
             + ((resid**2).sum(1) + (w**2 @ scale[0] ** 2).sum()) / (2 * SIGMA**2))
    kl = 0.5 * (loc**2 + scale**2 - 1 - 2 * scale.log()).sum(1)
    return recon.detach(), kl.detach()


def test_evaluate_matches_the_closed_form_elbo_and_bounds():
    vae, px = linear_gaussian(**IMPERFECT)
    x, true_nll = data(px, 400)
    r = evaluate(vae, x, num_samples=500)
    recon, kl = analytic_neg_elbo(vae, x)
    assert isinstance(r, Evaluation) and r.n_images == 400 and r.num_samples == 500
    assert r.kl == pytest.approx(float(kl.mean()), rel=1e-5)  # the KL is analytic
    assert r.recon == pytest.approx(float(recon.mean()), abs=0.02)  # Monte Carlo, K = 500
    assert r.neg_elbo == pytest.approx(r.recon + r.kl)
    assert r.objective == pytest.approx(r.neg_elbo)  # β = 1
    assert r.neg_elbo_se == pytest.approx(float((recon + kl).std() / 20), rel=0.05)
    # true -log p(x) <= IWAE estimate <= -ELBO
    assert float(true_nll.mean()) - 3 * r.neg_log_px_se / 10 < r.neg_log_px < r.neg_elbo - 0.5
    assert sum(r.kl_per_dim) == pytest.approx(r.kl, rel=1e-5)


def test_elbo_two_ways_pyro_mean_field_loss_and_recon_plus_kl():
    """Pyro's loss on the model/guide pair (with β) agrees with recon + β·KL from `evaluate`."""
    vae, px = linear_gaussian(**IMPERFECT)
    x, _ = data(px, 200)
    vae.beta = 2.5
    r = evaluate(vae, x, num_samples=1000)
    assert r.beta == 2.5 and r.objective == pytest.approx(r.recon + 2.5 * r.kl)
    assert r.neg_elbo == pytest.approx(r.recon + r.kl)
    elbo = TraceMeanField_ELBO(num_particles=4000, vectorize_particles=True, max_plate_nesting=1)
    loss = elbo.loss(vae.model, vae.guide, x) / x.shape[0]
    assert loss == pytest.approx(r.objective, abs=0.03)
    assert loss > r.neg_elbo + 1  # β > 1 makes the objective larger than the -ELBO here


def test_elbo_two_ways_on_the_conv_vae_and_evaluate_elbo(mnist_small):
    """On the default conv VAE and binarized MNIST: Pyro's Trace_ELBO loss, `evaluate_elbo`
    (one sample) and `evaluate` (K samples) estimate the same -ELBO."""
    _, test_x = mnist_small
    pyro.set_rng_seed(0)
    vae = vaekit.VAE(z_dim=4).eval()
    with torch.no_grad():  # spread the posterior means, so that the KL term is not ~0
        vae.encoder.net[-1].weight.mul_(20)
    x = vae.likelihood.targets(vaekit.data.to_unit(test_x[:32]),
                               generator=torch.Generator().manual_seed(0))
    r = evaluate(vae, x, num_samples=100)
    elbo = pyro.infer.Trace_ELBO(num_particles=100, vectorize_particles=True, max_plate_nesting=1)
    with torch.no_grad():
        loss = elbo.loss(vae.model, vae.guide, x) / x.shape[0]
    assert r.kl > 2  # the check covers both terms
    assert loss == pytest.approx(r.neg_elbo, rel=0.001)
    assert evaluate_elbo(vae, x)["neg_elbo"] == pytest.approx(r.neg_elbo, rel=0.01)
    assert r.bits_per_dim is None  # Bernoulli: a discrete likelihood
    assert r.neg_log_px < r.neg_elbo - 1


# -- latent usage ---------------------------------------------------------------------------------
class PartialEncoder(nn.Module):
    """Dims 0, 1 follow the image, dim 2 barely (variance 0.0025 < 0.01), dim 3 is the prior."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.flatten(1)
        loc = torch.stack([2 * x[:, 0], 2 * x[:, 1], 0.05 * x[:, 2], torch.zeros_like(x[:, 0])], 1)
        scale = torch.tensor([0.5, 0.3, 1.0, 1.0]).expand_as(loc)
        return loc, scale


class FlatDecoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.lin(z).reshape(z.shape[:-1] + SHAPE)


def test_per_dimension_kl_and_active_units_on_a_known_encoder():
    vae = vaekit.VAE(z_dim=4, likelihood=Gaussian(scale=1.0), image_shape=SHAPE,
                     encoder=PartialEncoder(), decoder=FlatDecoder())
    x = torch.randn(3000, *SHAPE, generator=torch.Generator().manual_seed(0))
    r = evaluate(vae, x, num_samples=2)
    loc, scale = PartialEncoder()(x)
    expected = (0.5 * (loc**2 + scale**2 - 1 - 2 * scale.log())).mean(0)
    assert r.kl_per_dim == pytest.approx(expected.tolist(), abs=1e-5)
    assert r.kl_per_dim[3] == 0 and r.kl_per_dim[0] > r.kl_per_dim[2]
    assert r.active_units == 2 and r.active_threshold == 0.01
    assert active_units(loc, threshold=0.001) == 3
    assert active_units(loc[:1]) == 0


def test_bits_per_dim_is_reported_for_continuous_likelihoods_only():
    vae, px = linear_gaussian(**IMPERFECT)
    x, _ = data(px, 100)
    r = evaluate(vae, x, num_samples=10)
    assert r.bits_per_dim == pytest.approx((r.neg_log_px / D + math.log(255)) / math.log(2))
    assert bits_per_dim(0.0, 784) == pytest.approx(math.log2(255))  # a density of 1 on [0, 1]^D


def test_bits_per_dim_is_withheld_when_the_likelihood_rescales_its_targets():
    """A density of 2x - 1 is not a density of x = v / 255: its Jacobian differs, so no figure."""
    from vaekit.likelihoods import Gaussian

    class Signed(Gaussian):
        def targets(self, x, generator=None):
            return 2 * x - 1

    pyro.set_rng_seed(0)
    vae = vaekit.VAE(z_dim=2, nets="mlp:16", likelihood=Signed())
    x = torch.rand(8, 1, 28, 28) * 2 - 1
    assert evaluate(vae, x, num_samples=2).bits_per_dim is None
    plain = vaekit.VAE(z_dim=2, nets="mlp:16", likelihood="gaussian")
    assert evaluate(plain, x.abs(), num_samples=2).bits_per_dim is not None


def test_evaluate_runs_in_eval_mode_and_restores_the_mode(mnist_small):
    _, test_x = mnist_small
    pyro.set_rng_seed(0)
    vae = vaekit.VAE(z_dim=3)  # BatchNorm: train and eval mode differ
    x = torch.bernoulli(vaekit.data.to_unit(test_x[:16]), generator=torch.Generator().manual_seed(0))
    vae.train()
    in_train = evaluate(vae, x, num_samples=5)
    assert vae.training
    vae.eval()
    assert evaluate(vae, x, num_samples=5) == in_train
    assert not vae.training
    iwae_bound(vae.train(), x, num_samples=3)
    assert vae.training


@pytest.mark.parametrize("kwargs, error, message", [
    ({"num_samples": 0}, ConfigError, "num_samples must be an integer >= 1"),
    ({"batch_size": 0}, ConfigError, "batch_size"),
    ({"x": torch.zeros(3, 1, 2, 3)}, DataError, "the model takes"),
])
def test_bad_arguments_are_clear_errors(kwargs, error, message):
    vae, px = linear_gaussian()
    x = kwargs.pop("x", torch.zeros(3, *SHAPE))
    with pytest.raises(error, match=message):
        evaluate(vae, x, **kwargs)


# -- the command line -----------------------------------------------------------------------------
SMOKE = ["--limit-train", "256", "--limit-test", "128", "--batch-size", "64", "--epochs", "2",
         "--z-dim", "2", "--no-progress", "--device", "cpu", "--no-download"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, mnist_root):
    """A real two-epoch run folder from ``vaekit fit``, shared by the CLI tests of this module."""
    folder = tmp_path_factory.mktemp("evalrun")
    mp = pytest.MonkeyPatch()
    mp.setenv("VAEKIT_DATA", str(mnist_root))
    mp.chdir(folder)
    try:
        res = CliRunner().invoke(cli, ["fit", "--out", "run", *SMOKE])
    finally:
        mp.undo()
    assert res.exit_code == 0, res.output
    return folder / "run"


def test_cli_evaluate_writes_eval_json(tiny_run, monkeypatch, mnist_root):
    monkeypatch.setenv("VAEKIT_DATA", str(mnist_root))
    args = ["evaluate", str(tiny_run), "--num-samples", "20", "--limit", "64", "--device", "cpu",
            "--no-download", "--no-progress"]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    for text in ("-ELBO", "IWAE -log p(x), K=20", "active units", "bits/dim", "eval.json"):
        assert text in res.output
    record = json.loads((tiny_run / "eval.json").read_text())
    assert record["n_images"] == 64 and record["num_samples"] == 20 and record["limit"] == 64
    assert record["likelihood"] == "bernoulli" and record["bits_per_dim"] is None
    assert 50 < record["neg_log_px"] <= record["neg_elbo"] + 1 < 600
    assert record["neg_elbo"] == pytest.approx(record["recon"] + record["kl"])
    assert len(record["kl_per_dim"]) == 2 and 0 <= record["active_units"] <= 2
    assert record["seconds"] > 0
    assert not list(tiny_run.glob(".eval.json.*"))  # the atomic write left no temporary file

    again = CliRunner().invoke(cli, args)  # seeded: the same numbers
    assert json.loads((tiny_run / "eval.json").read_text())["neg_log_px"] == record["neg_log_px"]
    assert again.exit_code == 0


def test_cli_evaluate_bad_run_folder_is_one_line_exit_2(tmp_path):
    for folder in (tmp_path / "missing", tmp_path):
        res = CliRunner().invoke(cli, ["evaluate", str(folder), "--no-download"])
        assert res.exit_code == 2
        assert res.output.startswith("Error: ") and res.output.count("\n") == 1
        assert "not a vaekit run folder" in res.output
    Path(tmp_path / "config.json").write_text("{not json")
    res = CliRunner().invoke(cli, ["evaluate", str(tmp_path)])
    assert res.exit_code == 2 and "corrupt" in res.output


def test_the_seed_decoder_gives_the_same_iwae_bits_at_any_decode_chunk(monkeypatch):
    """The direct path decodes `CPU_DECODE_CHUNK` latents at a time on a CPU, its fastest batch;
    the values are bit for bit those of decoding 2,048 (or 100) at a time, as before."""
    import pyro

    from vaekit import VAE, evaluation

    pyro.set_rng_seed(0)
    vae = VAE().to(memory_format=torch.channels_last)  # as `vaekit evaluate` holds it
    x = torch.bernoulli(torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(0)))
    now = iwae_bound(vae, x, num_samples=300)
    for chunk in (2048, 100):
        monkeypatch.setattr(evaluation, "CPU_DECODE_CHUNK", chunk)
        assert torch.equal(iwae_bound(vae, x, num_samples=300), now), chunk

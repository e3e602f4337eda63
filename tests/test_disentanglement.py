"""The disentanglement metrics on codes whose scores are known, and the sprites renderer."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vaekit.disentanglement import (
    beta_vae_score,
    dci,
    disentanglement,
    factor_vae_score,
    mig,
    sap,
)
from vaekit.sprites import VARIANTS, GroundTruth, _grid, render, shape_area, sprites

SIZES = (3, 4, 5, 6)


def toy_truth() -> GroundTruth:
    """A grid whose "images" are the factors' indices themselves, as floats."""
    classes = _grid(SIZES)
    return GroundTruth(classes.float(), classes, SIZES, "toy")


def noisy(scale: float = 0.05, mix: torch.Tensor | None = None, drop: int | None = None):
    """A representation: the factors (scaled to [0, 1]) plus noise, optionally mixed by ``mix``
    or with factor ``drop`` replaced by noise."""
    gen = torch.Generator().manual_seed(1)

    def rep(images: torch.Tensor) -> torch.Tensor:
        z = images / torch.tensor(SIZES, dtype=torch.float32)
        if drop is not None:
            z[:, drop] = torch.rand(len(z), generator=gen)
        z = z + scale * torch.randn(z.shape, generator=gen)
        return z @ mix if mix is not None else z

    return rep


def codes_of(truth: GroundTruth, rep, n: int, seed: int):
    f = truth.sample_factors(n, torch.Generator().manual_seed(seed))
    return rep(truth.images_of(f)).numpy().astype(np.float64), f.numpy()


def test_a_code_that_is_the_factors_scores_near_one():
    truth, rep = toy_truth(), noisy()
    c, f = codes_of(truth, rep, 2000, 0)
    c2, f2 = codes_of(truth, rep, 1000, 1)
    assert mig(c, f) > 0.85
    d = dci(c, f, c2, f2)
    assert d["disentanglement"] > 0.9 and d["completeness"] > 0.9 and d["informativeness"] > 0.9
    assert sap(c, f, c2, f2) > 0.2  # one linear SVM per dimension: the middle classes of a
    # factor are not separable on a line, so even a perfect code's gap is far below 1
    gen = torch.Generator().manual_seed(2)
    assert factor_vae_score(truth, rep, 2000, 300, 150, generator=gen)["eval_accuracy"] > 0.95
    assert beta_vae_score(truth, rep, 300, 150, generator=gen)["eval_accuracy"] > 0.9


def test_a_rotated_code_scores_low_on_mig():
    truth = toy_truth()
    q, _ = torch.linalg.qr(torch.randn(4, 4, generator=torch.Generator().manual_seed(3)))
    c, f = codes_of(truth, noisy(mix=q), 2000, 0)
    aligned, _ = codes_of(truth, noisy(), 2000, 0)
    assert mig(c, f) < 0.3 < mig(aligned, f)
    c2, f2 = codes_of(truth, noisy(mix=q), 1000, 1)
    a2, _ = codes_of(truth, noisy(), 1000, 1)
    assert sap(c, f, c2, f2) < sap(aligned, f, a2, f2) - 0.1


def test_a_code_that_ignores_a_factor_loses_its_completeness_and_informativeness():
    truth = toy_truth()
    full = dci(*codes_of(truth, noisy(), 1500, 0), *codes_of(truth, noisy(), 800, 1))
    blind = dci(*codes_of(truth, noisy(drop=3), 1500, 0),
                *codes_of(truth, noisy(drop=3), 800, 1))
    assert blind["informativeness"] < full["informativeness"] - 0.15  # factor 3 at chance
    assert blind["completeness"] < full["completeness"] - 0.1


def test_constant_codes_score_zero_never_nan():
    truth = toy_truth()

    def rep(images: torch.Tensor) -> torch.Tensor:
        return torch.zeros(len(images), 3)

    scores = disentanglement(truth, rep, n_points=300, n_votes=40)
    values = [v for v in scores.to_dict().values()]
    assert all(math.isfinite(v) for v in values)
    assert scores.mig == scores.factor_vae == scores.dci_disentanglement == scores.sap == 0.0
    assert scores.active_dims == 0


def test_the_sprites_grid_has_every_combination_once_and_shapes_of_the_right_area():
    sizes = VARIANTS["sprites"]
    assert math.prod(sizes) == 737_280
    small = sprites("sprites:small")
    assert len(small.images) == math.prod(VARIANTS["sprites:small"]) == 9216
    assert len(torch.unique(small.classes, dim=0)) == len(small.classes)
    assert torch.equal(small.index_of(small.classes), torch.arange(len(small.classes)))
    one = render((3, 2, 1, 1, 1))  # each shape at scales 0.5 and 1, centred, unrotated
    for shape in range(3):
        for j, scale in enumerate((0.5, 1.0)):
            area = float(one[2 * shape + j].double().sum() / 255)
            assert area == pytest.approx(shape_area(shape, scale), rel=0.05)
    assert torch.equal(render((1, 1, 2, 2, 2)), render((1, 1, 2, 2, 2)))  # deterministic
    assert set(small.images.unique().tolist()) == {0, 255}


def test_sprites_are_cached_and_read_back(tmp_path):
    a = sprites("sprites:small", tmp_path)
    assert (tmp_path / "sprites-3x6x8x8x8.npy").exists()
    b = sprites("sprites:small", tmp_path)
    assert torch.equal(a.images, b.images)


class _GaussianCode(torch.nn.Module):
    """q(z|x) = N(x, σ²I) over data x ~ N(0, Σ): the aggregate posterior is N(0, Σ + σ²I)."""

    z_dim = 2

    def guide(self, x):
        import pyro
        import pyro.distributions as dist
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x, 0.5).to_event(1))

    def model(self, x):
        import pyro
        import pyro.distributions as dist
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)


@pytest.mark.parametrize("sampling", ["mws", "mss"])
def test_the_beta_tc_estimator_of_total_correlation_approaches_the_gaussians_closed_form(
        sampling):
    import pyro

    from vaekit.objectives import BetaTC

    rho, n = 0.8, 4000
    cov = torch.tensor([[1.0, rho], [rho, 1.0]])
    pyro.set_rng_seed(0)
    data = torch.distributions.MultivariateNormal(torch.zeros(2), cov).sample((n,))
    agg = cov + 0.25 * torch.eye(2)
    closed = float(0.5 * agg.diag().log().sum() - 0.5 * torch.logdet(agg))  # 0.2635 nats
    obj = BetaTC(_GaussianCode(), dataset_size=n, sampling=sampling)
    with torch.no_grad():
        whole = obj.decomposition(data)  # the batch is the data set: q(z) exactly its mixture
        batches = [obj.decomposition(data[torch.randperm(n)[:500]])["tc"].mean()
                   for _ in range(8)]
    assert float(whole["tc"].mean()) == pytest.approx(closed, abs=0.03)
    assert float(torch.stack(batches).mean()) == pytest.approx(closed, abs=0.05)
    from vaekit.traces import site_log_probs

    pyro.set_rng_seed(3)
    with torch.no_grad():
        d = obj.decomposition(data[:50])
    pyro.set_rng_seed(3)
    t = site_log_probs(_GaussianCode(), data[:50])  # the same draws: the parts sum to its KL
    assert (d["mi"] + d["tc"] + d["dim_kl"]).tolist() == pytest.approx(
        (t.log_q["z"] - t.log_p["z"])[0].tolist(), abs=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["beta-tc", "factor-vae", "dip-vae"])
def test_the_objectives_on_sprites_train_resume_exactly_and_are_scored(tmp_path, objective):
    from vaekit.errors import ConfigError
    from vaekit.model import VAE
    from vaekit.objectives import check_objective
    from vaekit.runs import load_ground_truth
    from vaekit.settings import DataSpec, ModelSpec, RunOptions, TrainSettings
    from vaekit.train import fit_settings, resume_run

    data = DataSpec(dataset="sprites:small", root=str(tmp_path / "data"), limit_train=192,
                    limit_test=64, val=0)
    train = TrainSettings(epochs=2, batch_size=64, objective=objective, tc_beta=4.0)
    model = ModelSpec(z_dim=6)
    full = fit_settings(model, data, train, RunOptions(out=str(tmp_path / "a"), progress=False),
                        verbose=False)
    half = fit_settings(model, data, TrainSettings(**{**train.__dict__, "epochs": 1}),
                        RunOptions(out=str(tmp_path / "b"), progress=False), verbose=False)
    resumed = resume_run(tmp_path / "b", epochs=2, progress=False, verbose=False)

    def same(rows):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]

    assert same(resumed.history) == same(full.history) and same(half.history) == same(
        full.history[:1])
    if objective == "factor-vae":  # its discriminator's numbers, per epoch
        assert {"tc", "disc_loss", "disc_accuracy"} <= set(full.history[-1])
    truth = load_ground_truth(tmp_path / "a")
    assert truth.sizes == (3, 6, 8, 8, 8)
    with pytest.raises(ConfigError, match="factorised"):
        check_objective(VAE(prior="mog:3", image_shape=(1, 64, 64)), "beta-tc")


def test_permuting_dimensions_keeps_each_marginal_and_breaks_their_dependence():
    from vaekit.factor_vae import permute_dims

    torch.manual_seed(0)
    a = torch.randn(4000)
    z = torch.stack([a, a + 0.01 * torch.randn(4000)], 1)  # correlation ~1
    p = permute_dims(z)
    assert torch.equal(p.sort(0).values, z.sort(0).values)
    assert abs(float(torch.corrcoef(p.T)[0, 1])) < 0.05


def test_the_factor_vae_loss_is_the_elbo_plus_gamma_times_the_discriminators_tc():
    import pyro

    from vaekit.factor_vae import FactorVAE
    from vaekit.model import VAE
    from vaekit.traces import site_log_probs

    pyro.set_rng_seed(0)
    vae = VAE(z_dim=4, nets="mlp:16", image_shape=(1, 4, 4)).eval()
    x = torch.bernoulli(torch.rand(6, 1, 4, 4))
    obj = FactorVAE(vae, gamma=2.5, hidden=(8,))
    pyro.set_rng_seed(1)
    loss = obj(x).detach()
    logits = obj.auxiliary("discriminator")(obj._z).detach()
    pyro.set_rng_seed(1)
    t = site_log_probs(vae, x)
    neg_elbo = (-t.log_lik[0] + t.kl_total[0]).sum().detach()
    assert float(loss) == pytest.approx(float(neg_elbo + 2.5 * (logits[:, 0] - logits[:, 1]).sum()),
                                        rel=1e-5)
    obj.setup(torch.device("cpu"))
    before = [p.clone() for p in obj.auxiliary("discriminator").parameters()]
    obj.auxiliary_step(x, None, 0)  # D's own step moves D, not the VAE
    assert any(not torch.equal(b, p) for b, p in zip(before, obj.auxiliary("discriminator")
                                                     .parameters()))
    assert obj.epoch_metrics()["disc_loss"] > 0


def test_each_dimension_is_named_by_the_factor_it_carries():
    from vaekit.disentanglement import factor_of_dims

    truth = toy_truth()
    perm = torch.tensor([2, 0, 3, 1])  # dimension d carries factor perm[d]
    c, f = codes_of(truth, noisy(mix=torch.eye(4)[perm].T), 2000, 0)
    named = factor_of_dims(c, f, ("a", "b", "c", "d"))
    assert [n for n, _ in named] == ["c", "a", "d", "b"]
    assert all(v > 0.8 for _, v in named)


@pytest.mark.parametrize("kind", ["i", "ii"])
def test_the_dip_vae_loss_is_the_elbo_plus_m_times_its_covariance_penalty(kind):
    import pyro

    from vaekit.errors import ConfigError
    from vaekit.model import VAE
    from vaekit.objectives import DIPVAE, check_objective, make_objective
    from vaekit.traces import site_log_probs

    pyro.set_rng_seed(0)
    vae = VAE(z_dim=3, nets="mlp:16", image_shape=(1, 4, 4)).eval()
    x = torch.bernoulli(torch.rand(7, 1, 4, 4))
    obj = make_objective(vae, "dip-vae", dip_type=kind, dip_lambda_od=2.0, dip_lambda_d=5.0)
    assert isinstance(obj, DIPVAE)
    pyro.set_rng_seed(1)
    loss = float(obj(x).detach())
    pyro.set_rng_seed(1)
    t = site_log_probs(vae, x, closed_form=False)
    neg_elbo = float((-t.log_lik[0] + t.kl_total[0]).sum().detach())
    with torch.no_grad():  # the encoder's own outputs, and numpy's covariance
        loc, scale = (v.double().numpy() for v in vae.encoder(x))
    cov = np.cov(loc.T, bias=True) + (np.diag((scale ** 2).mean(0)) if kind == "ii" else 0)
    off = cov - np.diag(np.diag(cov))
    penalty = 2.0 * (off ** 2).sum() + 5.0 * ((np.diag(cov) - 1) ** 2).sum()
    assert loss == pytest.approx(neg_elbo + 7 * penalty, rel=1e-5)
    centred = torch.randn(50, 3, dtype=torch.float64)
    white = torch.linalg.qr(centred - centred.mean(0))[0] * math.sqrt(50)  # Cov = I exactly
    assert float(DIPVAE(vae, "i").penalty(DIPVAE(vae, "i").covariance(white, white))) == \
        pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ConfigError, match="diagonal q"):
        check_objective(VAE(posterior="iaf:1", nets="mlp:16", image_shape=(1, 4, 4)), "dip-vae")
    with pytest.raises(ConfigError, match="dip_type"):
        DIPVAE(vae, "iii")


def test_modularity_is_one_for_a_code_of_separate_factors_and_low_when_they_are_mixed():
    from vaekit.disentanglement import modularity

    truth = toy_truth()
    c, f = codes_of(truth, noisy(0.01), 3000, 0)
    assert modularity(c, f) > 0.95  # each dimension carries its own factor
    mixed, _ = codes_of(truth, noisy(0.01, mix=torch.ones(4, 4)), 3000, 0)
    assert modularity(mixed, f) < 0.3  # each dimension is the sum of every factor
    assert modularity(np.zeros((500, 4)), f[:500]) == 0.0  # constant: 0, not NaN

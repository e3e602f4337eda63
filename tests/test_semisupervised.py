"""The semi-supervised VAE (Kingma et al.'s M2): enumeration against sums by hand, the labelled
term, the marginal likelihood against numerical integration, the labelled subset, a short run."""

from __future__ import annotations

import json
import math

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import TraceEnum_ELBO, config_enumerate

from vaekit.errors import ConfigError, DataError
from vaekit.evaluation import elbo_terms, evaluate
from vaekit.model import VAE
from vaekit.semisupervised import (
    SemiSupervised,
    accuracy,
    clustering_accuracy,
    confusion_matrix,
    labelled_subset,
)
from vaekit.settings import DataSpec, ModelSpec, RunOptions, TrainSettings
from vaekit.train import fit_settings, resume_run

C, B, D = 3, 2, 3


def num(t: torch.Tensor) -> float:
    return float(t.detach())


def tiny(z_dim: int = D, seed: int = 0) -> VAE:
    pyro.set_rng_seed(seed)
    return VAE(z_dim=z_dim, num_classes=C, semi_supervised=True, nets="mlp:8",
               image_shape=(1, 4, 4)).eval()


def images(n: int = B, seed: int = 1) -> torch.Tensor:
    return torch.bernoulli(torch.rand(n, 1, 4, 4, generator=torch.Generator().manual_seed(seed)))


def elbo_by_hand(vae: VAE, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Σ_y q(y|x) [log p(x|z_y,y) + log p(y) + log p(z_y) - log q(z_y|x,y) - log q(y|x)] per
    image, z_y = loc + scale * eps[y], from the networks alone."""
    log_q_y = torch.log_softmax(vae.classifier(x), -1)
    out = 0.0
    for c in range(C):
        yc = torch.full((len(x),), c)
        loc, scale = vae.encoder(x, yc)
        z = loc + scale * eps[c]
        log_q = torch.distributions.Normal(loc, scale).log_prob(z).sum(-1)
        log_p = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
        log_lik = torch.distributions.Bernoulli(logits=vae.decoder(z, yc)).log_prob(x).sum((1, 2, 3))
        out = out + log_q_y[:, c].exp() * (log_lik + log_p - log_q - math.log(C) - log_q_y[:, c])
    return out


def test_trace_enum_elbo_of_unlabelled_images_is_the_sum_over_classes_by_hand():
    vae, x = tiny(), images()
    pyro.set_rng_seed(5)
    with pyro.settings.context(module_local_params=True):
        loss = TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(
            vae.model, config_enumerate(vae.guide, "parallel", expand=False), x)
    pyro.set_rng_seed(5)
    eps = torch.randn(C, B, D)  # the same draws: one z per class, in class order
    assert num(loss) == pytest.approx(-num(elbo_by_hand(vae, x, eps).sum()), rel=1e-5)
    # the objective's unlabelled term is that loss; the reported terms are its parts
    obj = SemiSupervised(vae, x[:0], torch.zeros(0, dtype=torch.long))
    pyro.set_rng_seed(5)
    assert num(obj(x)) == pytest.approx(num(loss), rel=1e-6)
    pyro.set_rng_seed(5)
    recon, kl = elbo_terms(vae, x)
    assert (recon + kl).tolist() == pytest.approx((-elbo_by_hand(vae, x, eps)).detach().tolist(), rel=1e-5)


@torch.no_grad()
def test_labelled_images_never_enumerate_and_observe_y_in_both_programs():
    vae, x = tiny(), images()
    y = torch.tensor([2, 0])
    guide = config_enumerate(vae.guide, "parallel", expand=False)
    with pyro.settings.context(module_local_params=True):
        guide_tr = poutine.trace(poutine.enum(guide, first_available_dim=-2)).get_trace(x, y)
        model_tr = poutine.trace(poutine.replay(vae.model, trace=guide_tr)).get_trace(x, y)
    assert "y" not in guide_tr.nodes
    assert not any(s["infer"].get("_enumerate_dim") is not None
                   for s in guide_tr.nodes.values() if s["type"] == "sample")
    assert model_tr.nodes["y"]["is_observed"] and torch.equal(model_tr.nodes["y"]["value"], y)
    assert guide_tr.nodes["z"]["value"].shape == (B, D)  # one z per image, none per class


def test_the_auxiliary_loss_is_the_classifiers_cross_entropy_times_its_weight():
    vae, x = tiny(), images(4)
    x_l, y_l = images(3, seed=7), torch.tensor([0, 1, 2])
    losses = []
    for weight in (0.0, 46.0):
        obj = SemiSupervised(vae, x_l, y_l, batch=3, weight=weight)
        pyro.set_rng_seed(11)
        losses.append(num(obj(x)))
    ce = torch.nn.functional.cross_entropy(vae.classifier(x_l), y_l, reduction="sum")
    assert losses[1] - losses[0] == pytest.approx(46.0 * num(ce), rel=1e-4)
    assert obj.epoch_metrics()["labelled_ce"] == pytest.approx(num(ce) / 3, rel=1e-5)
    sparse = SemiSupervised(vae, x_l, y_l, batch=3, weight=46.0, every=3)
    seen = []
    for _ in range(6):
        sparse(x)
        seen.append(sparse.epoch_metrics().get("labelled_ce", 0.0) > 0)
    assert seen == [True, False, False, True, False, False]  # every third step
    assert sparse.auxiliary_state()["steps"] == 6


@torch.no_grad()
def test_the_marginal_likelihood_estimate_matches_numerical_integration_over_z():
    """z_dim 1: log p(x) = logsumexp_y [log p(y) + log ∫ N(z; 0, 1) p(x|z, y) dz] on a grid."""
    vae, x = tiny(z_dim=1), images(3)
    z = torch.linspace(-10, 10, 20001)[:, None]
    exact = []
    with torch.no_grad():
        for i in range(len(x)):
            per_class = []
            for c in range(C):
                logits = vae.decoder(z, torch.full((len(z),), c))
                log_f = (torch.distributions.Bernoulli(logits=logits).log_prob(x[i]).sum((1, 2, 3))
                         + torch.distributions.Normal(0.0, 1.0).log_prob(z[:, 0]))
                integral = torch.logsumexp(log_f, 0) + math.log(float(z[1] - z[0]))
                per_class.append(integral - math.log(C))
            exact.append(float(torch.logsumexp(torch.stack(per_class), 0)))
    r = evaluate(vae, x, num_samples=4000, batch_size=3, seed=0)
    assert -r.neg_log_px == pytest.approx(sum(exact) / len(exact), abs=0.02)
    assert r.neg_elbo >= r.neg_log_px - 1e-4  # the ELBO is the looser bound
    assert set(r.kl_sites) == {"z", "y"}


def test_labelled_subset_is_class_balanced_and_reproducible():
    labels = torch.arange(1000) % 10
    a, b = labelled_subset(labels, 100, seed=3), labelled_subset(labels, 100, seed=3)
    assert torch.equal(a, b) and len(a.unique()) == 100
    assert torch.bincount(labels[a], minlength=10).tolist() == [10] * 10
    assert not torch.equal(a, labelled_subset(labels, 100, seed=4))
    assert torch.bincount(labels[labelled_subset(labels, 13, 0)], minlength=10).tolist() == \
        [2, 2, 2] + [1] * 7
    with pytest.raises(DataError, match="class 0"):
        labelled_subset(labels, 1010, 0)


def test_clustering_accuracy_finds_the_best_matching_and_confusion_counts():
    y = torch.tensor([0, 0, 1, 1, 2, 2, 2])
    relabelled = (y + 1) % 3  # the same clusters under other names
    assert clustering_accuracy(relabelled, y, 3) == 100.0
    assert confusion_matrix(relabelled, y, 3).tolist() == [[0, 2, 0], [0, 0, 2], [3, 0, 0]]
    wrong = torch.tensor([0, 1, 1, 1, 2, 2, 0])
    assert clustering_accuracy(wrong, y, 3) == pytest.approx(100 * 5 / 7)


def test_refusals_name_the_problem():
    with pytest.raises(ConfigError, match="semi-supervised"):
        VAE(num_classes=10, semi_supervised=True, latents=2)
    with pytest.raises(ConfigError, match="semi-supervised"):
        VAE(num_classes=10, semi_supervised=True, posterior="vq:16", z_dim=8)
    with pytest.raises(ConfigError, match="drop conditional"):
        ModelSpec(semi_supervised=True, conditional=True)


@pytest.mark.slow
def test_a_short_run_learns_records_its_labels_and_resumes_exactly(tmp_path, mnist_root):
    data = DataSpec(root=str(mnist_root), limit_train=1200, limit_test=200, val=200)
    model = ModelSpec(semi_supervised=True, z_dim=16, nets="mlp:256")
    train = TrainSettings(epochs=4, batch_size=50, labels=100, lr=2e-3, seed=1)
    full = fit_settings(model, data, train, RunOptions(out=str(tmp_path / "a"), progress=False),
                        verbose=False)
    assert full.history[-1]["test_accuracy"] > 50  # chance: 10
    assert full.best_epoch == min(full.history, key=lambda r: r["val_error"])["epoch"]
    record = json.loads((tmp_path / "a" / "labelled.json").read_text())
    assert len(record["indices"]) == 100 and sorted(set(record["labels"])) == list(range(10))
    assert (tmp_path / "a" / "confusion.png").exists()
    half = fit_settings(model, data, TrainSettings(**{**train.__dict__, "epochs": 2}),
                        RunOptions(out=str(tmp_path / "b"), progress=False), verbose=False)
    def same(rows):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]

    assert same(half.history) == same(full.history[:2])
    resumed = resume_run(tmp_path / "b", epochs=4, progress=False, verbose=False)
    assert same(resumed.history) == same(full.history)
    assert json.loads((tmp_path / "b" / "labelled.json").read_text()) == record
    assert accuracy(resumed.vae, torch.rand(3, 1, 28, 28), torch.tensor([1, 2, 3])) >= 0


def test_the_classifier_refuses_integer_images_with_the_fix():
    from vaekit import VAE
    from vaekit.errors import DataError
    from vaekit.semisupervised import predict

    vae = VAE(num_classes=10, semi_supervised=True, z_dim=2, nets="mlp:8")
    with pytest.raises(DataError, match="test_observations"):
        predict(vae, torch.zeros(3, 1, 28, 28, dtype=torch.uint8))


def test_the_enumerated_bound_has_the_same_bits_at_any_net_batch(monkeypatch):
    """Evaluating on a CPU, `call_per_label` runs the nets `CPU_NET_BATCH` inputs at a time (the
    seed nets' fastest batch); the IWAE values are bit for bit those of one batch, as before."""
    from vaekit import model
    from vaekit.evaluation import iwae_bound

    pyro.set_rng_seed(0)
    vae = VAE(num_classes=10, semi_supervised=True).to(memory_format=torch.channels_last)
    x = torch.bernoulli(torch.rand(60, 1, 28, 28, generator=torch.Generator().manual_seed(0)))
    now = iwae_bound(vae, x, num_samples=3, batch_size=60)  # 1,800 decodes per pass
    monkeypatch.setattr(model, "CPU_NET_BATCH", 10**9)
    assert torch.equal(iwae_bound(vae, x, num_samples=3, batch_size=60), now)

"""Sample-quality scores (issue #24): the shipped reference classifier, FID, KID, precision and
recall against known answers, and the scores of a model's samples."""

import hashlib
import json
import math
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch

import vaekit
from vaekit import features, quality
from vaekit.data import load_mnist, to_unit
from vaekit.errors import ConfigError


@pytest.fixture(scope="module")
def test_digits(mnist_root):
    """2,000 MNIST test images in [0, 1] and their labels."""
    x, y = load_mnist(mnist_root, train=False, download=False, limit=2000)
    return to_unit(x), y


@pytest.fixture(scope="module")
def digit_features(test_digits):
    return quality.image_features(test_digits[0])


def test_the_shipped_weights_are_the_hashed_file_and_a_changed_hash_is_refused(monkeypatch):
    data = (resources.files("vaekit") / "assets" / features.FEATURES_FILE).read_bytes()
    assert hashlib.sha256(data).hexdigest() == features.FEATURES_SHA256
    assert len(data) < 1_000_000
    assert features.load_digit_features().num_features == 128
    monkeypatch.setattr(features, "FEATURES_SHA256", "0" * 64)
    with pytest.raises(ConfigError, match="SHA-256 .* reinstall vaekit"):
        features.load_digit_features()


def test_the_reference_classifier_is_accurate_on_test_digits(test_digits):
    x, y = test_digits
    assert quality.classifier_accuracy(x, y) >= 0.99
    assert quality.classifier_accuracy(x, (y + 1) % 10) < 0.02  # it reads the labels


def test_fid_is_the_frechet_distance_of_the_fitted_gaussians(digit_features):
    """torchmetrics' FID against the formula computed here in its symmetric form,
    tr(Ca + Cb - 2 (Ca^1/2 Cb Ca^1/2)^1/2), with scipy's symmetric eigensolver."""
    a, b = digit_features[:1000], digit_features[1000:]
    ma, mb = a.mean(0).numpy(), b.mean(0).numpy()
    ca, cb = np.cov(a.numpy(), rowvar=False), np.cov(b.numpy(), rowvar=False)

    def root(c):  # the PSD square root (ReLU features leave some directions without variance)
        w, v = scipy.linalg.eigh(c)
        return (v * np.sqrt(np.clip(w, 0, None))) @ v.T

    cross = np.sqrt(np.clip(scipy.linalg.eigh(root(ca) @ cb @ root(ca), eigvals_only=True), 0, None))
    expected = ((ma - mb) ** 2).sum() + np.trace(ca) + np.trace(cb) - 2 * cross.sum()
    assert quality.fid(a, b) == pytest.approx(expected, rel=1e-4)


def test_fid_is_zero_on_itself_small_between_halves_and_large_for_noise_or_blanks(test_digits,
                                                                                 digit_features):
    x = test_digits[0]
    f = digit_features
    assert abs(quality.fid(f, f)) < 1e-3 * quality.fid(f[:1000], f[1000:])
    halves = quality.fid(f[:1000], f[1000:])
    assert halves > 0
    noise = quality.image_features(torch.rand(1000, 1, 28, 28, generator=torch.Generator().manual_seed(0)))
    blank = quality.image_features(torch.zeros(1000, 1, 28, 28))
    blurred = quality.image_features(torch.nn.functional.avg_pool2d(x[:1000], 5, 1, 2))
    assert quality.fid(f[1000:], noise) > 20 * halves
    assert quality.fid(f[1000:], blank) > 20 * halves
    assert halves < quality.fid(f[1000:], blurred) < quality.fid(f[1000:], noise)


def test_kid_is_unbiased_between_halves_and_positive_for_noise(digit_features):
    a, b = digit_features[:1000], digit_features[1000:]
    k, se = quality.kid(a, b, subset_size=250, subsets=50)
    assert se > 0 and abs(k) < 4 * se  # mean over splits of one set's halves: near 0
    noise = quality.image_features(torch.rand(1000, 1, 28, 28, generator=torch.Generator().manual_seed(1)))
    k_noise, se_noise = quality.kid(a, noise, subset_size=250, subsets=50)
    assert k_noise > 10 * se_noise and k_noise > 100 * abs(k)
    assert quality.kid(a, b, subset_size=250, subsets=50) == (k, se)  # seeded: repeats


def test_kid_is_unbiased_on_gaussians_of_one_distribution():
    """Two independent draws of one Gaussian: over 40 pairs the mean KID is within 3 SE of 0."""
    g = torch.Generator().manual_seed(0)
    ks = torch.tensor([quality.kid(torch.randn(200, 8, generator=g, dtype=torch.float64),
                                   torch.randn(200, 8, generator=g, dtype=torch.float64),
                                   subset_size=200, subsets=1)[0] for _ in range(40)])
    assert abs(ks.mean()) < 3 * ks.std() / math.sqrt(len(ks))


def _brute_force_precision_recall(real, fake, k):
    def radius(points, i):
        d = sorted(float(torch.dist(points[i], points[j])) for j in range(len(points)) if j != i)
        return d[k - 1]

    rr = [radius(real, i) for i in range(len(real))]
    rf = [radius(fake, i) for i in range(len(fake))]
    p = sum(any(float(torch.dist(f, r)) <= rr[i] for i, r in enumerate(real)) for f in fake)
    r = sum(any(float(torch.dist(x, f)) <= rf[i] for i, f in enumerate(fake)) for x in real)
    return p / len(fake), r / len(real)


def test_precision_and_recall_match_a_brute_force_count():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(40, 3, generator=g, dtype=torch.float64)
    fake = 0.5 * torch.randn(30, 3, generator=g, dtype=torch.float64) + 0.8
    got = quality.precision_recall(real, fake, k=3)
    assert got == pytest.approx(_brute_force_precision_recall(real, fake, 3))
    assert 0 < got[0] < 1 and 0 < got[1] < 1  # the case is not trivial


def test_precision_and_recall_of_a_set_against_itself_are_one_and_of_one_image_recall_is_zero(
        digit_features):
    f = digit_features
    assert quality.precision_recall(f, f) == (1.0, 1.0)
    one = f[:1].repeat(500, 1)  # the same image 500 times: a point, no spread
    p, r = quality.precision_recall(f, one)
    assert r <= 0.01 and p == 1.0  # the one image is a real one: precise, covers nothing


def test_compare_images_gives_every_score_with_standard_errors(test_digits):
    x = test_digits[0]
    s = quality.compare_images(x[:1000], x[1000:], bootstrap=5, kid_subset_size=250)
    assert (s.n_real, s.n_fake, s.k) == (1000, 1000, 3)
    for name in ("fid", "kid", "precision", "recall"):
        assert math.isfinite(getattr(s, name)) and getattr(s, f"{name}_se") > 0, name
    assert s.precision > 0.5 and s.recall > 0.5  # one distribution
    assert s.label_accuracy is None


def test_sample_quality_of_a_model_is_reproducible_and_reports_label_accuracy_when_conditional(
        test_digits):
    x, y = test_digits
    vae = vaekit.VAE(z_dim=2, nets="mlp:16")
    a = quality.sample_quality(vae, x[:400], n=300, bootstrap=3, kid_subset_size=100)
    b = quality.sample_quality(vae, x[:400], n=300, bootstrap=3, kid_subset_size=100)
    assert a == b and a.n_fake == 300 and a.label_accuracy is None
    assert a.fid > quality.fid(quality.image_features(x[:400]), quality.image_features(x[400:800]))
    cvae = vaekit.VAE(z_dim=2, nets="mlp:16", num_classes=10)
    c = quality.sample_quality(cvae, x[:400], n=200, bootstrap=0, kid_subset_size=100)
    assert 0 <= c.label_accuracy <= 1 and c.label_accuracy_se >= 0 and math.isnan(c.fid_se)
    samples, labels = quality.model_samples(cvae, 200)
    assert labels.tolist() == [i % 10 for i in range(200)]
    assert c.label_accuracy == quality.classifier_accuracy(samples, labels)


def test_cli_evaluate_sample_quality_adds_its_scores_and_keeps_the_bound(runner):
    from vaekit.cli import cli

    fit = ["fit", "--out", "run", "--limit-train", "256", "--limit-test", "300", "--batch-size", "64",
           "--epochs", "1", "--z-dim", "2", "--nets", "mlp:16", "--no-progress", "--device", "cpu",
           "--no-download"]
    assert runner.invoke(cli, fit).exit_code == 0
    base = ["evaluate", "run", "--device", "cpu", "--no-download", "--no-progress"]
    res = runner.invoke(cli, [*base, "--num-samples", "5"])
    assert res.exit_code == 0, res.output
    bound = json.loads(Path("run/eval.json").read_text())
    res = runner.invoke(cli, [*base, "--no-bound", "--sample-quality", "--quality-samples", "200"])
    assert res.exit_code == 0, res.output
    for text in ("FID", "KID", "precision (k=3)", "recall (k=3)", "200 samples"):
        assert text in res.output
    assert "IWAE" not in res.output
    record = json.loads(Path("run/eval.json").read_text())
    q = record["sample_quality"]
    assert q["n_fake"] == q["n_real"] == 200 and q["fid"] > 0 and 0 <= q["recall"] <= 1
    assert record["neg_log_px"] == bound["neg_log_px"]  # the same weights: the bound is kept
    res = runner.invoke(cli, ["compare", "run", "--out", "c.png"])
    assert res.exit_code == 0 and "FID (eval.json)" in res.output and f"{q['fid']:.2f}" in res.output

    res = runner.invoke(cli, [*base, "--no-bound"])
    assert res.exit_code == 2 and "add --sample-quality" in res.output
    res = runner.invoke(cli, [*base, "--sample-quality", "--quality-samples", "500", "--no-bound"])
    assert res.exit_code == 2 and "at most 300" in res.output
    assert json.loads(Path("run/eval.json").read_text()) == record  # refused: nothing rewritten

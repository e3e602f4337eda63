"""Training for quality: validation split, best checkpoint, early stopping, LR schedules, gradient
clipping and a weight average (issue #16)."""

import math

import pyro
import pytest
import torch
from click.testing import CliRunner

import vaekit
from vaekit import runs
from vaekit.cli import cli
from vaekit.data import load_splits
from vaekit.errors import ConfigError
from vaekit.evaluation import evaluate_elbo
from vaekit.likelihoods import test_observations as observations_of
from vaekit.optim import cosine_lr, make_ema
from vaekit.settings import DataSpec, TrainSettings

SMALL = dict(batch_size=64, device="cpu", progress=False, verbose=False)


def _strip(history):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in history]


def _vae():
    pyro.set_rng_seed(0)
    return vaekit.VAE(z_dim=4, nets="mlp:64")


@pytest.fixture(scope="module")
def split(mnist_root):
    """384 training, 128 validation (held out of the training set) and 128 test images."""
    s = load_splits(DataSpec(root=str(mnist_root), download=False, limit_train=384, val=128,
                             limit_test=128))
    return s.train[0], s.val[0], s.test[0]


def test_validation_split_is_the_last_training_images(mnist_root):
    from vaekit.data import load_mnist

    x, y = load_mnist(mnist_root, train=True, download=False)
    s = load_splits(DataSpec(root=str(mnist_root), download=False, limit_test=5))
    assert len(s.train[0]) == 50000 and len(s.val[0]) == 10000 and len(s.test[0]) == 5
    assert torch.equal(s.val[0], x[-10000:]) and torch.equal(s.val[1], y[-10000:])
    assert torch.equal(s.train[0], x[:50000])
    # --limit-train limits what is left for training; the held-out images stay held out.
    s = load_splits(DataSpec(root=str(mnist_root), download=False, limit_train=100, val=300,
                             limit_test=5))
    assert torch.equal(s.train[0], x[:100]) and torch.equal(s.val[0], x[-300:])
    # Smoke runs (--limit-train) have no validation split unless asked for.
    assert DataSpec(limit_train=100).val_size(60000) == 0
    assert DataSpec().val_size(60000) == 10000 and DataSpec().val_size(600) == 100
    assert load_splits(DataSpec(root=str(mnist_root), download=False, limit_train=10,
                                limit_test=5)).val is None
    with pytest.raises(ConfigError, match="val 60000 holds out every one of the 60000"):
        load_splits(DataSpec(root=str(mnist_root), download=False, val=60000))


def test_cosine_schedule_and_moving_average_follow_their_formulas():
    assert cosine_lr(0, 100, 1e-3, 1e-5) == pytest.approx(1e-3)
    assert cosine_lr(50, 100, 1e-3, 1e-5) == pytest.approx((1e-3 + 1e-5) / 2)
    assert cosine_lr(100, 100, 1e-3, 1e-5) == pytest.approx(1e-5)
    assert cosine_lr(150, 100, 1e-3, 1e-5) == pytest.approx(1e-5)  # stays at the floor
    net = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        net.weight.fill_(1.0)
    ema = make_ema(net, 0.9)
    for w in (2.0, 4.0):  # w_ema = 0.9 w_ema + 0.1 w, from the first copy
        with torch.no_grad():
            net.weight.fill_(w)
        ema.update_parameters(net)
    assert ema.module.weight.item() == pytest.approx(0.9 * 2.0 + 0.1 * 4.0)


def test_settings_refuse_what_cannot_be():
    with pytest.raises(ConfigError, match="ema must be below 1"):
        TrainSettings(ema=1.0)
    with pytest.raises(ConfigError, match="bad lr_schedule 'step'"):
        TrainSettings(lr_schedule="step")
    with pytest.raises(ConfigError, match="lr_min .* must be below lr"):
        TrainSettings(lr_schedule="cosine", lr=1e-3, lr_min=1e-3)
    with pytest.raises(ConfigError, match="patience .*needs validation images"):
        vaekit.fit(_vae(), torch.zeros(64, 1, 28, 28), epochs=1, patience=2, **SMALL)


def test_validation_picks_the_best_epoch_and_load_returns_it(split, tmp_path):
    train_x, val_x, test_x = split
    r = vaekit.fit(_vae(), train_x, test_x, epochs=4, lr=3e-3, val_data=val_x,
                   run_dir=tmp_path / "r", **SMALL)
    vals = [row["val_neg_elbo"] for row in r.history]
    assert all(math.isfinite(v) for v in vals)
    assert r.best_epoch == 1 + vals.index(min(vals))
    best = runs.load_checkpoint(tmp_path / "r", name=runs.BEST)
    assert best["epoch"] == r.best_epoch and best["val_neg_elbo"] == min(vals)
    # The model handed back, the one `load` rebuilds and best.pt's weights are one and the same.
    loaded = vaekit.load(tmp_path / "r")
    for k, v in r.vae.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]) and torch.equal(v, best["model"][k]), k
    # The recorded validation -ELBO is that model's -ELBO on the held-out images (the estimate
    # draws z, so an independent evaluation with many draws agrees to within noise).
    obs = observations_of(loaded.likelihood, val_x)
    pyro.set_rng_seed(1)
    again = sum(evaluate_elbo(loaded, obs)["neg_elbo"] for _ in range(20)) / 20
    assert again == pytest.approx(min(vals), abs=1.0)
    last = vaekit.load(tmp_path / "r", checkpoint="last")
    if r.best_epoch != 4:
        assert not torch.equal(last.decoder.net[0].weight, loaded.decoder.net[0].weight)
    r2 = CliRunner().invoke(cli, ["evaluate", str(tmp_path / "r"), "--num-samples", "2",
                                  "--device", "cpu", "--no-progress"])
    assert f"(best.pt, epoch {r.best_epoch})" in r2.output, r2.output
    assert runs.read_config(tmp_path / "r") and (tmp_path / "r" / "eval.json").exists()


def test_early_stopping_follows_the_patience_rule_and_survives_resume(split, tmp_path):
    train_x, val_x, test_x = split
    # A learning rate so small that the weights barely move: the validation -ELBO only
    # fluctuates (its z are drawn), so some epoch fails to improve on the best.
    r = vaekit.fit(_vae(), train_x, test_x, epochs=8, lr=1e-9, val_data=val_x, patience=2,
                   run_dir=tmp_path / "p", **SMALL)
    vals = [row["val_neg_elbo"] for row in r.history]
    best_at, expected = 0, None
    for i, v in enumerate(vals):  # the rule, computed independently
        if v < min(vals[:i], default=math.inf):
            best_at = i
        if i - best_at >= 2:
            expected = i + 1
            break
    assert expected is not None and len(r.history) == expected < 8 and r.stopped_early
    again = vaekit.resume(tmp_path / "p", train_x, test_x, val_data=val_x, epochs=12,
                          progress=False, verbose=False)
    assert len(again.history) == expected and again.stopped_early  # nothing more to do
    more = vaekit.resume(tmp_path / "p", train_x, test_x, val_data=val_x, epochs=9, patience=5,
                         progress=False, verbose=False)
    assert len(more.history) > expected  # a new patience lets it go on


def test_plateau_halves_the_rate_as_torch_decides(split):
    train_x, val_x, test_x = split
    r = vaekit.fit(_vae(), train_x, None, epochs=6, lr=1e-9, val_data=val_x,
                   lr_schedule="plateau:1", **SMALL)
    lr, best, bad = 1e-9, math.inf, 0
    for row in r.history:  # ReduceLROnPlateau(mode=min, factor=0.5, patience=1), by hand
        assert row["lr"] == pytest.approx(lr)  # the rate the epoch trained with
        if row["val_neg_elbo"] < best * (1 - 1e-4):
            best, bad = row["val_neg_elbo"], 0
        else:
            bad += 1
        if bad > 1:
            lr, bad = lr * 0.5, 0
    assert any(row["lr"] < 1e-9 for row in r.history)


def test_cosine_clip_and_average_in_a_run(split, tmp_path):
    train_x, val_x, test_x = split
    r = vaekit.fit(_vae(), train_x, test_x, epochs=2, lr=2e-3, lr_schedule="cosine",
                   lr_min=1e-4, clip_grad=5.0, ema=0.9, run_dir=tmp_path / "c", **SMALL)
    steps = len(train_x) // 64
    for row in r.history:  # the rate of the epoch's last step
        assert row["lr"] == pytest.approx(cosine_lr(row["epoch"] * steps - 1, 2 * steps,
                                                    2e-3, 1e-4))
    state = runs.load_checkpoint(tmp_path / "c")
    assert state["ema"]["count"] == 2 * steps
    # Without validation, the model is the average: what the test -ELBO measured and load gives.
    loaded = vaekit.load(tmp_path / "c")
    for k, v in state["ema"]["weights"].items():
        assert torch.equal(loaded.state_dict()[k], v) and torch.equal(r.vae.state_dict()[k], v)
    key = "model.decoder.net.0.weight"
    assert not torch.equal(state["model"][key], state["ema"]["weights"][key])
    obs = observations_of(loaded.likelihood, test_x)
    pyro.set_rng_seed(1)
    again = sum(evaluate_elbo(loaded, obs)["neg_elbo"] for _ in range(20)) / 20
    assert again == pytest.approx(r.history[-1]["test_neg_elbo"], abs=1.0)


def test_clipping_scales_the_gradient_before_the_step():
    """Adam's step is ~lr per weight whatever the gradient's size, unless the gradient is below
    its eps (1e-8): clipping the norm to 1e-12 must leave the weights all but unmoved."""
    x = torch.bernoulli(torch.full((64, 1, 28, 28), 0.3))

    def moved(**opts):
        vae = _vae()
        before = {k: v.clone() for k, v in vae.state_dict().items()}
        r = vaekit.fit(vae, x, epochs=1, lr=1e-3, **opts, **SMALL)  # one step
        return max(float((v - before[k]).abs().max()) for k, v in r.vae.state_dict().items())

    assert moved() == pytest.approx(1e-3, rel=0.01)
    assert moved(clip_grad=1e-12) < 1e-6


def test_interrupted_run_with_every_option_resumes_exactly(split, tmp_path):
    """Validation, best.pt, the average, clipping and the plateau schedule all resume bit for
    bit: two epochs then two more give the run of four."""
    train_x, val_x, test_x = split
    opts = dict(lr=2e-3, val_data=val_x, ema=0.9, clip_grad=10.0, lr_schedule="plateau:1",
                **SMALL)
    full = vaekit.fit(_vae(), train_x, test_x, epochs=4, run_dir=tmp_path / "full", **opts)
    vaekit.fit(_vae(), train_x, test_x, epochs=2, run_dir=tmp_path / "half", **opts)
    resumed = vaekit.resume(tmp_path / "half", train_x, test_x, val_data=val_x, epochs=4,
                            progress=False, verbose=False)
    assert _strip(resumed.history) == _strip(full.history)
    assert resumed.best_epoch == full.best_epoch
    for k, v in full.vae.state_dict().items():
        assert torch.equal(v, resumed.vae.state_dict()[k]), k


def test_cli_validation_options(mnist_root, tmp_path, monkeypatch):
    monkeypatch.setenv("VAEKIT_DATA", str(mnist_root))
    monkeypatch.chdir(tmp_path)
    base = ["fit", "--limit-train", "128", "--limit-test", "64", "--batch-size", "64",
            "--z-dim", "2", "--nets", "mlp:32", "--no-progress", "--device", "cpu",
            "--no-download"]
    r = CliRunner().invoke(cli, [*base, "--val", "64", "--epochs", "2", "--ema", "0.5",
                                 "--lr-schedule", "cosine", "--out", "v"])
    assert r.exit_code == 0, r.output
    assert "val -ELBO" in r.output
    rows = runs.read_metrics("v")
    assert {"val_neg_elbo", "val_recon", "val_kl", "lr"} <= set(rows[0])
    assert (tmp_path / "v" / runs.BEST).exists()
    cfg = runs.read_config("v")
    assert cfg["data"]["val"] == 64 and cfg["data_info"]["n_val"] == 64
    assert cfg["train"]["ema"] == 0.5 and cfg["vae"]["nets"] == "mlp:32"
    r = CliRunner().invoke(cli, [*base, "--epochs", "1", "--patience", "2", "--out", "p"])
    assert r.exit_code == 2 and "patience needs validation images" in r.output, r.output
    r = CliRunner().invoke(cli, [*base, "--epochs", "1", "--lr-schedule", "step", "--out", "s"])
    assert r.exit_code == 2 and "bad lr_schedule 'step'" in r.output, r.output
    r = CliRunner().invoke(cli, [*base, "--epochs", "1", "--nets", "resnet", "--out", "n"])
    assert r.exit_code == 2 and "bad nets 'resnet'" in r.output, r.output
    # A resumed run continues its validation split (recorded in config.json).
    r = CliRunner().invoke(cli, ["fit", "--resume", "v", "--epochs", "3", "--no-progress",
                                 "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert len(runs.read_metrics("v")) == 3 and "val_neg_elbo" in runs.read_metrics("v")[2]


@pytest.mark.parametrize("latents", [1, 2])
def test_independent_estimator_agrees_with_evaluate(split, tmp_path, latents):
    """benchmarks/independent_nll.py (plain torch, no Pyro) and vaekit's trace-based IWAE
    estimate of -log p(x) agree within their standard errors on a trained model."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "independent_nll.py"
    spec = importlib.util.spec_from_file_location("independent_nll", path)
    independent = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(independent)
    train_x, val_x, test_x = split
    pyro.set_rng_seed(0)
    vae = vaekit.VAE(z_dim=4, nets="mlp:64", latents=latents)
    r = vaekit.fit(vae, train_x, test_x, epochs=2, lr=3e-3, run_dir=tmp_path / "m", **SMALL)
    x, _ = runs.load_test_set(tmp_path / "m", r.vae)
    x = x[:2000]  # the MC noise of the mean of 2,000 images' estimates is ~0.01 nats here
    torch.manual_seed(0)
    mine, mine_se = independent.estimate(r.vae, x, 200, 64)
    theirs = vaekit.evaluate(r.vae, x, num_samples=200, seed=3, progress=False)
    # Same images: what differs is the Monte Carlo noise of each image's estimate (K = 200),
    # far below the standard error over images.
    assert abs(mine - theirs.neg_log_px) < 0.2 < mine_se
    assert mine < theirs.neg_elbo  # the bound is looser than the K-sample estimate


def test_an_iwae_run_selects_on_the_validation_iwae_bound(split, tmp_path):
    """Trained with IWAE, the best epoch is the one with the best validation IWAE bound (the
    trained bound), which metrics.csv records as ``val_neg_iwae`` and best.pt keeps."""
    from vaekit.evaluation import iwae_bound

    train_x, val_x, test_x = split
    r = vaekit.fit(_vae(), train_x, test_x, epochs=3, lr=3e-3, val_data=val_x, objective="iwae",
                   iwae_samples=3, run_dir=tmp_path / "r", **SMALL)
    rows = runs.read_metrics(tmp_path / "r")
    iw = [row["val_neg_iwae"] for row in rows]
    assert [row["val_neg_iwae"] for row in r.history] == iw and all(map(math.isfinite, iw))
    assert r.best_epoch == 1 + iw.index(min(iw)) and runs.validation_key(rows) == "val_neg_iwae"
    best = runs.load_checkpoint(tmp_path / "r", name=runs.BEST)
    assert best["epoch"] == r.best_epoch and best["val_neg_iwae"] == min(iw)
    # The recorded value is the IWAE-3 bound of best.pt's weights on the validation images ...
    loaded = vaekit.load(tmp_path / "r")
    obs = observations_of(loaded.likelihood, val_x)
    again = iwae_bound(loaded, obs, 3, 64, seed=0).mean().item()
    assert again == pytest.approx(min(iw), rel=1e-5)
    # ... and it is a tighter bound than the -ELBO of the same weights (Burda et al.).
    assert sum(iw) < sum(row["val_neg_elbo"] for row in rows)
    # An ELBO run keeps selecting on the -ELBO and writes no IWAE column.
    r = vaekit.fit(_vae(), train_x, test_x, epochs=1, val_data=val_x, **SMALL)
    assert "val_neg_iwae" not in r.history[0] and runs.validation_key(r.history) == "val_neg_elbo"


def test_metrics_written_before_a_new_column_still_read(tmp_path):
    """A run resumed by a vaekit that writes a new column: the old rows read it as NaN."""
    runs.append_metrics(tmp_path, {"epoch": 1, "val_neg_elbo": 90.0})
    runs.append_metrics(tmp_path, {"epoch": 2, "val_neg_elbo": 91.0, "val_neg_iwae": 85.0})
    rows = runs.read_metrics(tmp_path)
    assert math.isnan(rows[0]["val_neg_iwae"]) and rows[1]["val_neg_iwae"] == 85.0
    assert runs.best_validation(rows) == (2, 85.0)

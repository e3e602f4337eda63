import math

import pyro
import pytest
import torch

import vaekit
from vaekit import VAE, fit, resume, runs
from vaekit.devices import resolve_device
from vaekit.errors import CheckpointError, ConfigError, DataError, TrainingError


def new_vae(seed=0, **kwargs):
    """A VAE with seeded initial weights."""
    pyro.set_rng_seed(seed)
    return VAE(**kwargs)


RUN_FILES = {"config.json", "checkpoint.pt", "metrics.csv", "samples.png", ".pictures.json",
             "reconstructions.png", "loss.png"}


def test_fit_lowers_the_loss_and_reports_test_elbo(mnist_small):
    train_x, test_x = mnist_small
    result = fit(new_vae(z_dim=8), train_x, test_x, epochs=3, batch_size=64, device="cpu",
                 progress=False)
    h = result.history
    assert [r["epoch"] for r in h] == [1, 2, 3]
    assert h[-1]["train_loss"] < h[0]["train_loss"] - 50
    assert h[-1]["test_neg_elbo"] < h[0]["test_neg_elbo"]
    for r in h:  # -ELBO = recon + KL, all finite, KL >= 0
        assert r["test_neg_elbo"] == pytest.approx(r["test_recon"] + r["test_kl"])
        assert r["test_kl"] >= 0 and math.isfinite(r["test_neg_elbo"])
    assert not result.vae.training and result.run_dir is None


def test_run_folder_and_load_round_trip(mnist_small, tmp_path):
    train_x, test_x = mnist_small
    out = tmp_path / "run"
    result = fit(new_vae(z_dim=4, likelihood="gaussian"), train_x, test_x, epochs=2, batch_size=128,
                 device="cpu", run_dir=out, progress=False)
    assert {p.name for p in out.iterdir()} == RUN_FILES | {".vaekit.lock"}  # the writer's lock
    rows = runs.read_metrics(out)
    assert [r == pytest.approx(h) for r, h in zip(rows, result.history)] == [True, True]
    config = runs.read_config(out)
    assert config["vae"]["likelihood"] == {"name": "gaussian", "scale": 0.1, "learn_scale": False}
    assert {k: config["train"][k] for k in ("epochs", "batch_size", "lr", "seed")} == {
        "epochs": 2, "batch_size": 128, "lr": 2e-3, "seed": 0}
    from vaekit.train import TrainSettings

    assert TrainSettings(**config["train"]) == TrainSettings(epochs=2, batch_size=128, device="cpu")

    loaded = vaekit.load(out)
    x = test_x[:10].float() / 255
    with torch.no_grad():
        assert torch.equal(loaded.encode(x)[0], result.vae.encode(x)[0])
        assert torch.equal(loaded.reconstruct(x), result.vae.reconstruct(x))
    assert loaded.config() == result.vae.config()


def test_same_seed_same_numbers(mnist_small, capsys):
    train_x, test_x = mnist_small
    a = fit(new_vae(z_dim=4), train_x, test_x, epochs=1, batch_size=128, device="cpu", progress=False)
    assert capsys.readouterr().out.startswith("epoch 1/1  train loss")  # the line, not the bar
    b = fit(new_vae(z_dim=4), train_x, test_x, epochs=1, batch_size=128, device="cpu", progress=False,
            verbose=False)
    assert capsys.readouterr().out == ""
    c = fit(new_vae(z_dim=4), train_x, test_x, epochs=1, batch_size=128, device="cpu", seed=1,
            progress=False)
    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]
    assert strip(a.history) == strip(b.history)
    assert strip(a.history) != strip(c.history)


def test_resume_matches_uninterrupted_run(mnist_small, tmp_path):
    train_x, test_x = mnist_small
    kw = dict(batch_size=128, device="cpu", progress=False)
    full = fit(new_vae(z_dim=4), train_x, test_x, epochs=3, run_dir=tmp_path / "full", **kw)
    fit(new_vae(z_dim=4), train_x, test_x, epochs=1, run_dir=tmp_path / "part", **kw)
    # a process killed inside atomic_write leaves its temporary behind; resume clears it
    for name in (".checkpoint.pt.k1ll3d.vaekit.tmp", ".metrics.csv.x9.vaekit.tmp"):
        (tmp_path / "part" / name).write_bytes(b"half a file")
    resumed = resume(tmp_path / "part", train_x, test_x, epochs=3, device="cpu", progress=False)
    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]
    assert strip(resumed.history) == strip(full.history)  # bit for bit: same machine, same kernels
    assert [r["epoch"] for r in runs.read_metrics(tmp_path / "part")] == [1, 2, 3]
    assert {p.name for p in (tmp_path / "part").iterdir()} == RUN_FILES | {".vaekit.lock"}
    for a, b in zip(full.vae.state_dict().values(), resumed.vae.state_dict().values()):
        assert torch.equal(a, b)


def test_bad_settings_write_nothing(mnist_small, tmp_path):
    train_x, test_x = mnist_small
    out = tmp_path / "run"
    cases = [
        (dict(epochs=0), ConfigError, "epochs"),
        (dict(batch_size=0), ConfigError, "batch_size must be >= 1"),
        (dict(batch_size=10_000), ConfigError, "larger than"),
        (dict(lr=0.0), ConfigError, "lr must be > 0"),
        (dict(device="tpu"), ConfigError, "device must be one of auto, cpu, cuda"),
        (dict(epoch=3), ConfigError, "epoch is not a setting"),
    ]
    for kwargs, err, match in cases:
        with pytest.raises(err, match=match):
            fit(new_vae(z_dim=2), train_x, test_x, run_dir=out, progress=False,
                **{"batch_size": 128, **kwargs})
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        fit(new_vae(z_dim=2), train_x.float(), batch_size=128, run_dir=out, progress=False)  # 0..255 floats
    with pytest.raises(DataError, match="shape"):
        fit(new_vae(z_dim=2), torch.rand(16, 3, 32, 32), batch_size=8, run_dir=out, progress=False)
    assert not out.exists()


def test_existing_folder_is_not_overwritten(mnist_small, tmp_path):
    train_x, _ = mnist_small
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty"):
        fit(new_vae(z_dim=2), train_x, batch_size=128, run_dir=tmp_path, progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_nan_loss_stops_with_a_clear_error(mnist_small, tmp_path):
    train_x, test_x = mnist_small
    vae = new_vae(z_dim=2, likelihood="gaussian")
    initial = {k: v.clone() for k, v in vae.state_dict().items()}
    with pytest.raises(TrainingError, match="NaN or infinite.*lower the learning rate.*"
                       "initial weights are kept in"):
        fit(vae, train_x, test_x, epochs=1, lr=1e30, batch_size=128, device="cpu",
            run_dir=tmp_path / "r", progress=False)
    # The checkpoint written before the first step holds the initial weights, untouched by the
    # step that diverged: what a resume starts from.
    state = runs.load_checkpoint(tmp_path / "r")
    assert (state["epoch"], state["step"], state["history"]) == (0, 0, [])
    for k, v in initial.items():
        assert torch.equal(state["model"][k], v), k
    # Without a run folder nothing is saved, and the message does not claim otherwise.
    with pytest.raises(TrainingError) as e:
        fit(new_vae(z_dim=2, likelihood="gaussian"), train_x, epochs=1, lr=1e30, batch_size=128,
            device="cpu", progress=False)
    assert "kept" not in str(e.value)


def test_cuda_without_gpu_is_refused():
    if torch.cuda.is_available():
        assert resolve_device("cuda").type == "cuda"
    else:
        with pytest.raises(ConfigError, match="no GPU"):
            resolve_device("cuda")
    assert resolve_device("auto").type in ("cpu", "cuda")


def test_corrupt_or_foreign_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="not a vaekit run folder"):
        vaekit.load(tmp_path)
    runs.write_config(tmp_path, {"model": VAE(z_dim=2).config()})
    with pytest.raises(CheckpointError, match="no checkpoint"):
        vaekit.load(tmp_path)
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt"):
        vaekit.load(tmp_path)
    runs.save_checkpoint(tmp_path, {"model": VAE(z_dim=2).state_dict()})
    whole = (tmp_path / "checkpoint.pt").read_bytes()
    (tmp_path / "checkpoint.pt").write_bytes(whole[: len(whole) // 2])  # truncated by a full disk
    with pytest.raises(CheckpointError, match="corrupt"):
        vaekit.load(tmp_path)
    torch.save({"weights": 1}, tmp_path / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="not a vaekit checkpoint"):
        vaekit.load(tmp_path)
    runs.save_checkpoint(tmp_path, {"model": VAE(z_dim=3).state_dict()})
    with pytest.raises(CheckpointError, match="does not match"):
        vaekit.load(tmp_path)
    state = VAE(z_dim=2).state_dict()
    state["model.extra"] = state.pop("guide.encoder.net.0.weight")
    runs.save_checkpoint(tmp_path, {"model": state})
    with pytest.raises(CheckpointError, match="missing keys guide.encoder.net.0.weight; "
                                              "unexpected keys model.extra"):
        vaekit.load(tmp_path)
    runs.write_config(tmp_path, {"model": {"z_dim": "two"}})
    with pytest.raises(CheckpointError, match="cannot rebuild the model"):
        vaekit.load(tmp_path)


def test_hand_edited_run_files_of_the_wrong_type_are_clear_errors(mnist_small, tmp_path):
    train_x, _ = mnist_small
    kw = dict(batch_size=128, device="cpu", progress=False, verbose=False)
    fit(new_vae(z_dim=2), train_x, epochs=1, run_dir=tmp_path / "r", **kw)
    good = runs.read_config(tmp_path / "r")
    for edit in ({"image_shape": "abc"}, {"z_dim": "two"}, {"likelihood": ["bernoulli"]}):
        runs.write_config(tmp_path / "r", {**good, "vae": {**good["vae"], **edit}})
        with pytest.raises(CheckpointError, match="cannot (rebuild the model|be used to resume)"):
            vaekit.load(tmp_path / "r")
        with pytest.raises(CheckpointError):
            resume(tmp_path / "r", train_x, progress=False, verbose=False)
    runs.write_config(tmp_path / "r", good)
    state = runs.load_checkpoint(tmp_path / "r")
    runs.save_checkpoint(tmp_path / "r", {**state, "epoch": "one"})
    with pytest.raises(CheckpointError, match="no valid training position"):
        resume(tmp_path / "r", train_x, epochs=2, progress=False, verbose=False)


def test_an_out_folder_name_too_long_for_the_file_system(mnist_small, tmp_path):
    train_x, _ = mnist_small
    with pytest.raises(ConfigError, match="File name too long"):
        fit(new_vae(z_dim=2), train_x, epochs=1, batch_size=128, device="cpu",
            run_dir=tmp_path / ("x" * 300), progress=False, verbose=False)


def test_fit_and_resume_take_the_data_as_one_splits(mnist_small, tmp_path):
    import pyro

    from vaekit.data import Splits
    from vaekit.errors import ConfigError
    from vaekit.train import fit, resume

    train_x, test_x = mnist_small
    kw = dict(batch_size=128, device="cpu", progress=False, verbose=False)
    splits = Splits((train_x[:256], None), (train_x[256:384], None), (test_x, None))
    pyro.set_rng_seed(0)
    a = fit(VAE(z_dim=2, nets="mlp:16"), splits, epochs=1, run_dir=tmp_path / "a", **kw)
    pyro.set_rng_seed(0)
    b = fit(VAE(z_dim=2, nets="mlp:16"), train_x[:256], test_x, val_data=train_x[256:384],
            epochs=1, **kw)
    assert a.history[0]["val_neg_elbo"] == b.history[0]["val_neg_elbo"]  # the same run
    assert resume(tmp_path / "a", splits, epochs=2, progress=False, verbose=False).best_epoch
    with pytest.raises(ConfigError, match="leave those arguments out"):
        fit(VAE(z_dim=2, nets="mlp:16"), splits, test_x, **kw)

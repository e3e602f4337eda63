"""Faults: kills at random moments, signals, non-finite losses, bad input; and reproducibility."""

import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pyro
import pytest
import torch
from conftest import lock_held_elsewhere

import vaekit
from vaekit import VAE, fit, likelihoods, resume, runs
from vaekit.errors import CheckpointError, ConfigError, Interrupted, TrainingError
from vaekit.likelihoods import Bernoulli, Gaussian, register_likelihood

# A real `vaekit fit` subprocess: 512 images, 8 steps per epoch, 3 epochs, a checkpoint every 2 steps.
FIT = ["--limit-train", "512", "--limit-test", "128", "--batch-size", "64", "--epochs", "3",
       "--z-dim", "4", "--device", "cpu", "--no-download", "--no-progress",
       "--checkpoint-every", "2"]


def _vaekit(args, env, **kw):
    return subprocess.Popen([sys.executable, "-m", "vaekit", "fit", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


@pytest.fixture(scope="module")
def env(mnist_root):
    return {**os.environ, "VAEKIT_DATA": str(mnist_root), "PYTHONHASHSEED": "0"}


def _metrics(run):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in runs.read_metrics(run)]


@pytest.fixture(scope="module")
def reference(env, tmp_path_factory):
    """Metrics, weights and wall time of an uninterrupted run (one for the module's tests)."""
    tmp_path = tmp_path_factory.mktemp("reference")
    t0 = time.perf_counter()
    p = _vaekit(["--out", str(tmp_path / "ref"), *FIT], env)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    return (_metrics(tmp_path / "ref"), runs.load_checkpoint(tmp_path / "ref")["model"],
            time.perf_counter() - t0)


def test_sigkill_at_random_moments_then_resume_matches(env, tmp_path, reference):
    ref_metrics, ref_weights, ref_seconds = reference
    run = tmp_path / "killed"
    rng = random.Random(1234)
    kills, scale = 0, 1.0
    for _ in range(10):  # three kills at random moments, then a run to the end
        args = ["--resume", str(run), "--device", "cpu", "--no-download", "--no-progress"] \
            if runs.is_run_dir(run) else ["--out", str(run), *FIT]
        p = _vaekit(args, env)
        try:
            p.wait(timeout=rng.uniform(0.15, 0.75) * ref_seconds * scale if kills < 3 else 300)
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGKILL)
            p.wait()
            kills += 1
            continue
        finally:
            p.stdout.close()
            p.stderr.close()
        assert p.returncode == 0
        if kills == 0:  # it ended before the first kill (the machine got faster): again, sooner
            shutil.rmtree(run)
            scale /= 2
            continue
        break
    assert p.returncode == 0 and kills >= 1  # it was interrupted, and it finished
    assert _metrics(run) == ref_metrics
    for a, b in zip(runs.load_checkpoint(run)["model"].values(), ref_weights.values()):
        assert torch.equal(a, b)
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]  # no half-written files


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signals_write_a_checkpoint_and_say_how_to_resume(env, tmp_path, reference, sig, code):
    run = tmp_path / "sig"
    p = _vaekit(["--out", str(run), *FIT], env)
    deadline = time.time() + 120
    while not (run / "checkpoint.pt").exists() and time.time() < deadline:
        time.sleep(0.05)
    p.send_signal(sig)
    out, err = p.communicate(timeout=120)
    assert p.returncode == code, err
    assert f"vaekit fit --resume {run}" in err and "Traceback" not in err
    state = runs.load_checkpoint(run)
    assert state["epoch"] * 8 + state["step"] >= 1
    p = _vaekit(["--resume", str(run), "--device", "cpu", "--no-download", "--no-progress"], env)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    assert _metrics(run) == reference[0]  # the resumed run ends like the uninterrupted one


def test_interrupt_mid_epoch_then_resume_bit_for_bit(mnist_small, tmp_path):
    """SIGINT in step 5 of epoch 1: a checkpoint at that step, and resume ends where a full run does."""

    @register_likelihood("test-interrupting")
    class Interrupting(Bernoulli):
        calls = 0

        def forward(self, out):
            if self.training:
                Interrupting.calls += 1
                if Interrupting.calls == 5:
                    os.kill(os.getpid(), signal.SIGINT)
            return super().forward(out)

    train_x, test_x = mnist_small
    kw = dict(epochs=2, batch_size=64, device="cpu", progress=False)
    try:
        pyro.set_rng_seed(0)
        full = fit(VAE(z_dim=4), train_x, test_x, **kw)
        pyro.set_rng_seed(0)
        with pytest.raises(Interrupted) as e:
            fit(VAE(z_dim=4, likelihood="test-interrupting"), train_x, test_x,
                run_dir=tmp_path / "b", **kw)
        assert (e.value.epoch, e.value.step, e.value.signum) == (1, 5, signal.SIGINT)
        assert "vaekit fit --resume" in str(e.value)
        state = runs.load_checkpoint(tmp_path / "b")
        assert (state["epoch"], state["step"]) == (0, 5)
        resumed = resume(tmp_path / "b", train_x, test_x, device="cpu", progress=False)
    finally:
        likelihoods.LIKELIHOODS.pop("test-interrupting")
    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]
    assert strip(resumed.history) == strip(full.history)
    for a, b in zip(resumed.vae.state_dict().values(), full.vae.state_dict().values()):
        assert torch.equal(a, b)


def test_same_seed_gives_identical_checkpoints(mnist_small, tmp_path):
    train_x, test_x = mnist_small
    for name in ("a", "b"):
        pyro.set_rng_seed(3)
        fit(VAE(z_dim=4), train_x, test_x, epochs=1, batch_size=128, device="cpu", seed=3,
            run_dir=tmp_path / name, progress=False)
    a, b = runs.load_checkpoint(tmp_path / "a"), runs.load_checkpoint(tmp_path / "b")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key])
    assert runs.read_config(tmp_path / "a")["train"]["seed"] == 3


@pytest.fixture
def flaky_likelihood():
    """A Gaussian whose output turns NaN on the training calls listed in ``Flaky.bad``."""

    @register_likelihood("test-flaky")
    class Flaky(Gaussian):
        calls = 0
        bad: tuple = (3, 5)

        def forward(self, out):
            if self.training:
                Flaky.calls += 1
                if Flaky.calls in Flaky.bad:
                    out = out * float("nan")
            return super().forward(out)

    yield Flaky
    likelihoods.LIKELIHOODS.pop("test-flaky")


def test_nonfinite_loss_stops_naming_step_and_term(mnist_small, tmp_path, flaky_likelihood):
    train_x, test_x = mnist_small
    flaky_likelihood.bad = range(3, 10_000)
    with pytest.raises(TrainingError, match="epoch 1, step 3.*reconstruction term.*"
                       "checkpoint after 0 epochs and 2 steps is kept"):
        fit(VAE(z_dim=2, likelihood="test-flaky"), train_x, test_x, epochs=1, batch_size=64,
            device="cpu", run_dir=tmp_path / "r", checkpoint_every=1, progress=False)
    # checkpoint_every=1 saved steps 1 and 2; the message names the one kept
    state = runs.load_checkpoint(tmp_path / "r")
    assert (state["epoch"], state["step"]) == (0, 2)


def test_nonfinite_batches_can_be_skipped_and_counted(mnist_small, flaky_likelihood):
    train_x, test_x = mnist_small
    result = fit(VAE(z_dim=2, likelihood="test-flaky"), train_x, test_x, epochs=1, batch_size=64,
                 device="cpu", skip_nonfinite=True, progress=False)
    assert result.final["skipped"] == 2
    assert all(torch.isfinite(p).all() for p in result.vae.parameters())


def test_resume_of_a_run_killed_before_its_first_checkpoint(mnist_small, tmp_path):
    train_x, test_x = mnist_small
    kw = dict(batch_size=128, device="cpu", progress=False)
    pyro.set_rng_seed(0)
    ref = fit(VAE(z_dim=4), train_x, test_x, epochs=1, run_dir=tmp_path / "ref", **kw)
    # Only config.json was written when the run died.
    (tmp_path / "dead").mkdir()
    (tmp_path / "dead" / "config.json").write_bytes((tmp_path / "ref" / "config.json").read_bytes())
    again = resume(tmp_path / "dead", train_x, test_x, device="cpu", progress=False)
    assert again.final["train_loss"] == ref.final["train_loss"]


def test_a_second_writer_is_refused_with_the_holders_pid(mnist_small, tmp_path):
    """While a fit holds its run folder, another fit or resume of it touches nothing there."""
    train_x, test_x = mnist_small
    kw = dict(batch_size=128, device="cpu", progress=False, verbose=False)
    fit(VAE(z_dim=2), train_x, test_x, epochs=1, run_dir=tmp_path / "r", **kw)
    stale = tmp_path / "r" / ".checkpoint.pt.x1.vaekit.tmp"  # as if the holder were mid-write
    stale.write_bytes(b"being written")
    with lock_held_elsewhere(tmp_path / "r") as holder:
        with pytest.raises(ConfigError, match=f"being written by another vaekit process "
                                              f"\\(PID {holder.pid}\\)"):
            resume(tmp_path / "r", train_x, test_x, epochs=2, progress=False, verbose=False)
        with pytest.raises(ConfigError, match=f"PID {holder.pid}"):
            fit(VAE(z_dim=2), train_x, test_x, epochs=1, run_dir=tmp_path / "r", overwrite=True,
                **kw)
        assert stale.read_bytes() == b"being written"  # nothing of the holder's was touched
        assert [r["epoch"] for r in runs.read_metrics(tmp_path / "r")] == [1]
    # the holder is gone (killed: the OS released its lock): the folder can be resumed
    resume(tmp_path / "r", train_x, test_x, epochs=2, progress=False, verbose=False)
    assert [r["epoch"] for r in runs.read_metrics(tmp_path / "r")] == [1, 2]
    assert not stale.exists()  # a killed writer's temporary, cleaned up by the next writer


def test_a_diverged_run_resumes_with_a_lower_learning_rate(mnist_small, tmp_path):
    train_x, test_x = mnist_small
    kw = dict(batch_size=128, device="cpu", progress=False, verbose=False)
    with pytest.raises(TrainingError, match="resume it with a lower lr"):
        fit(VAE(z_dim=2, likelihood="gaussian"), train_x, test_x, epochs=2, lr=1e30,
            run_dir=tmp_path / "r", **kw)
    result = resume(tmp_path / "r", train_x, test_x, lr=1e-3, progress=False, verbose=False)
    assert [r["epoch"] for r in result.history] == [1, 2]
    state = runs.load_checkpoint(tmp_path / "r")
    assert {g["lr"] for g in state["optimizer"]["param_groups"]} == {1e-3}  # not the old 1e30
    assert runs.read_config(tmp_path / "r")["train"]["lr"] == 1e-3


def test_skipped_steps_never_change_the_weights(mnist_small, flaky_likelihood):
    """With skip_nonfinite, a step whose loss or gradients are not finite leaves every weight."""
    train_x, _ = mnist_small
    flaky_likelihood.bad = range(1, 10_000)  # every training call NaN: every step skipped
    pyro.set_rng_seed(0)
    vae = VAE(z_dim=2, likelihood="test-flaky")
    before = {k: v.clone() for k, v in vae.state_dict().items() if "running" not in k
              and "num_batches" not in k}
    result = fit(vae, train_x, epochs=1, batch_size=64, device="cpu", skip_nonfinite=True,
                 progress=False, verbose=False)
    assert result.final["skipped"] == 8
    after = result.vae.state_dict()
    for k, v in before.items():
        assert torch.equal(after[k], v), k


def test_a_checkpoint_with_nan_weights_is_a_one_line_error(mnist_small, tmp_path):
    train_x, _ = mnist_small
    fit(VAE(z_dim=2), train_x, epochs=1, batch_size=128, device="cpu", run_dir=tmp_path / "r",
        progress=False, verbose=False)
    state = runs.load_checkpoint(tmp_path / "r")
    state["model"]["model.decoder.net.0.weight"][0] = float("nan")
    runs.save_checkpoint(tmp_path / "r", state)
    with pytest.raises(vaekit.CheckpointError, match="NaN or infinite.*model.decoder.net.0.weight"):
        vaekit.load(tmp_path / "r")


def test_resume_draws_pictures_a_killed_run_left_empty(mnist_small, tmp_path):
    train_x, test_x = mnist_small
    fit(VAE(z_dim=2), train_x, test_x, epochs=1, batch_size=128, device="cpu",
        run_dir=tmp_path / "r", progress=False, verbose=False)
    (tmp_path / "r" / "samples.png").write_bytes(b"")  # killed while drawing the last pictures
    (tmp_path / "r" / "loss.png").unlink()
    resume(tmp_path / "r", train_x, test_x, progress=False, verbose=False)  # nothing to train
    assert (tmp_path / "r" / "samples.png").stat().st_size > 0
    assert (tmp_path / "r" / "loss.png").stat().st_size > 0


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"),
                                   RuntimeError("[enforce fail at inline_container.cc:672] . "
                                                "unexpected pos 512 vs 448\nmore lines")])
def test_a_full_disk_while_checkpointing_is_one_line(mnist_small, tmp_path, monkeypatch, error):
    train_x, _ = mnist_small

    def full_disk(*args, **kwargs):
        raise error

    monkeypatch.setattr(runs, "save_checkpoint", full_disk)
    with pytest.raises(CheckpointError) as e:
        fit(VAE(z_dim=2), train_x, epochs=1, batch_size=128, device="cpu",
            run_dir=tmp_path / "r", progress=False, verbose=False)
    message = str(e.value)
    assert "could not write the checkpoint" in message and "free space, then resume" in message
    assert "no checkpoint was written yet" in message  # none to be intact: the very first
    assert "\n" not in message

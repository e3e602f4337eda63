"""Data-parallel training on the CPU with Gloo: 2 processes against 1."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vaekit import runs
from vaekit.distributed import Context

HERE = Path(__file__).resolve().parent
FIT = ["--limit-train", "512", "--limit-test", "128", "--batch-size", "64", "--z-dim", "4",
       "--device", "cpu", "--no-download", "--no-progress"]


@pytest.fixture
def env(mnist_root):
    return {**os.environ, "VAEKIT_DATA": str(mnist_root)}


def _run(cmd, env, cwd):
    p = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
    cause = p.stderr.find("Root Cause")  # torchrun's summary of the failing rank
    assert p.returncode == 0, p.stderr[max(0, cause - 3000) : cause + 2000] if cause > 0 else p.stderr[-5000:]
    return p


def _torchrun(n, *args):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc-per-node={n}", *args]


def test_two_processes_take_the_same_steps_as_one(env, tmp_path):
    """DDP + global BatchNorm + the world-size loss scaling give the 1-process update."""
    _run([sys.executable, str(HERE / "dist_worker.py"), str(tmp_path / "one.pt")], env, tmp_path)
    p = _run(_torchrun(2, str(HERE / "dist_worker.py"), str(tmp_path / "two.pt")), env, tmp_path)
    # Each rank closed the group vaekit opened before exiting (an open Gloo group can abort the
    # process in its destructor: "terminate called without an active exception").
    assert p.stdout.count("process group open at exit: False") == 2, p.stdout
    one, two = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    assert one.keys() == two.keys()
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=1e-4, atol=1e-4, msg=k)  # float32 sums
    assert not torch.equal(one["model.decoder.net.1.running_mean"],
                           torch.zeros_like(one["model.decoder.net.1.running_mean"]))


def test_fit_two_processes_matches_one_within_noise(env, tmp_path):
    """Same global batch and seed; only the z and binarization noise differ per rank."""
    _run([sys.executable, "-m", "vaekit", "fit", *FIT, "--epochs", "2", "--out", "one"], env,
         tmp_path)
    p = _run(_torchrun(2, "-m", "vaekit", "fit", *FIT, "--epochs", "2", "--sync-batchnorm",
                       "--out", "two"), env, tmp_path)
    assert p.stdout.count("done:") == 1  # printed once, by rank 0
    one, two = runs.read_metrics(tmp_path / "one"), runs.read_metrics(tmp_path / "two")
    for a, b in zip(one, two, strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=0.02)
        assert b["test_neg_elbo"] == pytest.approx(a["test_neg_elbo"], rel=0.03)


def test_launcher_writes_one_run_folder_and_resumes(env, tmp_path):
    _run([sys.executable, "-m", "vaekit", "fit", "--nproc", "2", *FIT, "--epochs", "1"], env,
         tmp_path)
    folders = list((tmp_path / "runs").iterdir())
    assert len(folders) == 1 and [p.name for p in tmp_path.iterdir()] == ["runs"]
    run = folders[0]
    assert runs.read_config(run)["train"]["batch_size"] == 64
    state = runs.load_checkpoint(run)
    assert len(state["rng"]["ranks"]) == 2  # each rank's random state, for resume
    _run([sys.executable, "-m", "vaekit", "fit", "--nproc", "2", "--resume", str(run),
          "--epochs", "2", "--device", "cpu", "--no-download", "--no-progress"], env, tmp_path)
    assert [r["epoch"] for r in runs.read_metrics(run)] == [1, 2]
    # The resumed 2-process run ends exactly where an uninterrupted one does.
    _run(_torchrun(2, "-m", "vaekit", "fit", *FIT, "--epochs", "2", "--out", "full"), env,
         tmp_path)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]
    assert strip(runs.read_metrics(run)) == strip(runs.read_metrics(tmp_path / "full"))


def test_batch_must_split_over_processes(env, tmp_path):
    p = subprocess.run(_torchrun(2, "-m", "vaekit", "fit", *FIT[:-8], "--batch-size", "63",
                                 "--device", "cpu", "--no-download", "--out", "x"),
                       env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert p.returncode != 0
    assert p.stderr.count("does not split over 2 processes") == 1  # the message once
    assert not (tmp_path / "x").exists()


def test_single_process_context_is_a_no_op():
    ctx = Context()
    t = torch.ones(3)
    assert ctx.main and not ctx.active and ctx.all_sum(t) is t and ctx.gather(5) == [5]

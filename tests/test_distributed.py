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
sys.path.insert(0, str(HERE))  # dist_worker, for its LR and STEPS
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


def _mismatches(one: dict, two: dict) -> list[str]:
    """Where 2 processes did not reproduce the 1-process gradients and steps (empty: they did).

    Why these tolerances: the ranks sum their float32 gradients in another order than one process
    does (two shards of 16 images, then an all-reduce, against one batch of 32; and AVX2 and
    AVX-512 kernels order their sums differently again), so the first-step gradients agree to
    float32 rounding of sums of ~25,000 terms, measured at up to 5e-6 of the largest gradient
    entry G (AVX2; 8e-7 with AVX-512): we allow 1e-4 G. SGD then moves each parameter by lr * g
    per step, so after k steps the parameters can differ by k * lr * 1e-4 G, plus their own
    rounding. The steps must be small for that bound to hold: at lr = 1e-3 (the test before
    this one) a step moved biases by ~2 and the dynamics multiplied the 1e-6 gradient noise by
    ~100 per step, which AVX2 rounding pushed past a fixed tolerance. A broken all-reduce (rank
    1 dropped, or summed instead of averaged) is off by half or all of G.
    """
    from dist_worker import LR, STEPS

    g1, g2 = one["grads"], two["grads"]
    big = max(float(g.abs().max()) for g in g1.values())
    grad_atol = 1e-4 * big
    bad = [f"grad {k}" for k in g1 if not torch.allclose(g2[k], g1[k], rtol=0, atol=grad_atol)]
    for k, v1 in one["state"].items():
        v2 = two["state"][k]
        if k.endswith("num_batches_tracked"):
            ok = torch.equal(v1, v2)
        elif "running_" in k:  # BatchNorm statistics of the global batch: float noise only
            ok = torch.allclose(v2, v1, rtol=1e-5, atol=1e-6)
        else:
            ok = torch.allclose(v2, v1, rtol=1e-6, atol=STEPS * LR * grad_atol)
        if not ok:
            bad.append(f"{k}: max abs difference {float((v2 - v1).abs().max()):.3g}")
    return bad


def test_two_processes_take_the_same_steps_as_one(env, tmp_path):
    """DDP + global BatchNorm + the world-size loss scaling give the 1-process update."""
    _run([sys.executable, str(HERE / "dist_worker.py"), str(tmp_path / "one.pt")], env, tmp_path)
    p = _run(_torchrun(2, str(HERE / "dist_worker.py"), str(tmp_path / "two.pt")), env, tmp_path)
    # Each rank closed the group vaekit opened before exiting (an open Gloo group can abort the
    # process in its destructor: "terminate called without an active exception").
    assert p.stdout.count("process group open at exit: False") == 2, p.stdout
    one = torch.load(tmp_path / "one.pt")["ddp"]
    two = torch.load(tmp_path / "two.pt")
    assert _mismatches(one, two["ddp"]) == []
    # The parameters moved far beyond the tolerance, and BatchNorm's statistics moved too.
    assert max(float((one["state"][k] - v).abs().max()) for k, v in one["init"].items()
               if k.endswith("bias")) > 1e-3
    assert not torch.equal(one["state"]["model.decoder.net.1.running_mean"],
                           one["init"]["model.decoder.net.1.running_mean"])
    # The same comparison catches a broken all-reduce, in gradients and in parameters.
    for broken in ("drop", "sum"):
        found = _mismatches(one, two[broken])
        assert any(m.startswith("grad ") for m in found), broken
        assert any(not m.startswith("grad ") for m in found), broken


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
    _run([sys.executable, "-m", "vaekit", "fit", "--nproc", "2", *FIT, "--epochs", "1",
          "--logger", "tensorboard"], env, tmp_path)
    folders = list((tmp_path / "runs").iterdir())
    assert len(folders) == 1 and [p.name for p in tmp_path.iterdir()] == ["runs"]
    run = folders[0]
    events = list((run / "tensorboard").glob("events.out.tfevents.*"))  # ...<host>.<pid>.<n>
    assert events and len({p.name.split(".")[-2] for p in events}) == 1  # one process: rank 0
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


def test_launcher_stops_every_rank_when_one_fails(env, tmp_path):
    p = subprocess.run([sys.executable, "-m", "vaekit", "fit", "--nproc", "2", *FIT[:-8],
                        "--batch-size", "63", "--device", "cpu", "--no-download", "--out", "x"],
                       env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2, p.stderr
    assert p.stderr.count("does not split over 2 processes") == 1 and "Traceback" not in p.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.skipif(sys.platform != "linux", reason="process groups and /proc")
@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_interrupting_the_launcher_stops_every_rank_cleanly(env, tmp_path, how):
    """Ctrl-C (SIGINT to the terminal's process group) or a SIGTERM to the launcher: every rank
    writes the checkpoint and stops, one message, no traceback, exit 128 + signal."""
    import signal
    import time

    out = tmp_path / "stopped"
    launcher = subprocess.Popen([sys.executable, "-m", "vaekit", "fit", "--nproc", "2", *FIT,
                                 "--limit-train", "60000", "--epochs", "5", "--out", str(out)],
                                env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 300  # a slow, busy machine takes long to start three processes
    while not (out / "checkpoint.pt").exists() and time.time() < deadline:
        time.sleep(0.2)
    assert (out / "checkpoint.pt").exists(), "training did not start"
    time.sleep(1.0)  # into the first epoch
    sig = signal.SIGINT if how == "ctrl-c" else signal.SIGTERM
    if how == "ctrl-c":
        os.killpg(launcher.pid, sig)  # what the terminal does
    else:
        launcher.send_signal(sig)
    try:
        stdout, stderr = launcher.communicate(timeout=300)
    finally:
        if launcher.poll() is None:  # leave nothing running, whatever failed
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.communicate()
    assert launcher.returncode == 128 + sig, stderr
    assert "Traceback" not in stderr and stderr.count("interrupted by signal") == 1, stderr
    assert f"vaekit fit --resume {out}" in stderr
    assert _processes_naming(str(out)) == []

    state = runs.load_checkpoint(out)  # the checkpoint of the step the message names
    assert f"step {state['step']}," in stderr and len(state["rng"]["ranks"]) == 2


def test_single_process_context_is_a_no_op():
    ctx = Context()
    t = torch.ones(3)
    assert ctx.main and not ctx.active and ctx.all_sum(t) is t and ctx.gather(5) == [5]


def _processes_naming(text):
    """PIDs of live processes whose command line contains ``text``."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                state = next((ln for ln in (proc / "status").read_text().splitlines()
                              if ln.startswith("State:")), "")
            except OSError:
                continue
            if text in cmdline and "zombie" not in state:
                found.append(int(proc.name))
    return found


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux's")
def test_ranks_die_with_a_killed_launcher(env, tmp_path):
    """kill -9 of `vaekit fit --nproc 2` leaves no torchrun and no rank training, orphaned."""
    import signal
    import time

    out = tmp_path / "orphans"
    launcher = subprocess.Popen([sys.executable, "-m", "vaekit", "fit", "--nproc", "2", *FIT,
                                 "--epochs", "50", "--out", str(out)], env=env, cwd=tmp_path,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (out / "checkpoint.pt").exists() and time.time() < deadline:
        time.sleep(0.2)
    assert len(_processes_naming(str(out))) >= 3  # the launcher, torchrun and two ranks
    launcher.send_signal(signal.SIGKILL)
    launcher.wait()
    deadline = time.time() + 60
    while _processes_naming(str(out)) and time.time() < deadline:
        time.sleep(0.5)
    assert _processes_naming(str(out)) == []


def test_the_launcher_exits_with_the_first_failure_not_the_ranks_it_stopped():
    """Rank 1 fails with 2 while rank 0 runs on: the launcher stops rank 0 (which then dies of
    SIGTERM, code -15) and exits 2, whatever the rank order; a death by signal N is 128 + N."""
    import subprocess
    import sys

    from vaekit.distributed import _wait_for_ranks

    def rank(code: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", code])

    ranks = [rank("import time; time.sleep(60)"), rank("import time, sys; time.sleep(0.5); sys.exit(2)")]
    assert _wait_for_ranks(ranks) == 2 and ranks[0].returncode == -15
    ranks = [rank("import time; time.sleep(60)"),
             rank("import os, signal, time; time.sleep(0.5); os.kill(os.getpid(), signal.SIGKILL)")]
    assert _wait_for_ranks(ranks) == 128 + 9
    assert _wait_for_ranks([rank("pass"), rank("pass")]) == 0


@pytest.mark.skipif(sys.platform != "linux", reason="/proc")
def test_a_rank_killed_by_sigkill_is_one_line_naming_it(env, tmp_path):
    """kill -9 of rank 1: no Gloo traceback from rank 0, one line that names the dead rank and
    how to go on; the run resumes."""
    import signal
    import time

    out = tmp_path / "lost"
    launcher = subprocess.Popen([sys.executable, "-m", "vaekit", "fit", "--nproc", "2", *FIT,
                                 "--limit-train", "60000", "--epochs", "5", "--out", str(out)],
                                env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.time() + 300
        while not (out / "checkpoint.pt").exists() and time.time() < deadline:
            time.sleep(0.2)
        assert (out / "checkpoint.pt").exists(), "training did not start"
        time.sleep(1.0)
        rank1 = [pid for pid in _processes_naming(str(out)) if b"RANK=1\0" in
                 Path(f"/proc/{pid}/environ").read_bytes()]
        assert len(rank1) == 1, rank1
        os.kill(rank1[0], signal.SIGKILL)
        stdout, stderr = launcher.communicate(timeout=300)
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.communicate()
    assert launcher.returncode != 0
    assert "Traceback" not in stderr and "Connection closed" not in stderr, stderr[-3000:]
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert lines == [f"Error: rank 1 died of signal 9 (SIGKILL); the other ranks were stopped; "
                     f"continue with: vaekit fit --resume {out}"], stderr[-3000:]


def test_nproc_in_a_settings_file_is_honoured_and_recorded(env, tmp_path):
    import json

    (tmp_path / "two.json").write_text(json.dumps({"run": {"nproc": 2}}))
    p = subprocess.run([sys.executable, "-m", "vaekit", "fit", "--config", "two.json", *FIT,
                        "--epochs", "1", "--out", "r"], env=env, cwd=tmp_path,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert runs.read_config(tmp_path / "r")["run"]["nproc"] == 2
    assert len(runs.load_checkpoint(tmp_path / "r")["rng"]["ranks"]) == 2  # two ranks trained


def test_a_vae_gan_trains_in_two_processes_like_one(env, tmp_path):
    """The VAE-GAN's discriminator is wrapped for DDP and skips or steps on every rank alike:
    two processes finish, save one discriminator and land within noise of one process."""
    gan = [*FIT, "--likelihood", "discriminator", "--epochs", "1", "--lr", "5e-4"]
    _run([sys.executable, "-m", "vaekit", "fit", *gan, "--out", "one"], env, tmp_path)
    p = _run([sys.executable, "-m", "vaekit", "fit", "--nproc", "2", *gan, "--out", "two"], env,
             tmp_path)
    assert p.stdout.count("done:") == 1
    one, two = runs.read_metrics(tmp_path / "one"), runs.read_metrics(tmp_path / "two")
    assert two[0]["train_loss"] == pytest.approx(one[0]["train_loss"], rel=0.05)
    state = runs.load_checkpoint(tmp_path / "two")
    assert state["objective"]["optimizers"]["discriminator"]["state"]  # it stepped
    assert len(state["rng"]["ranks"]) == 2


def test_a_vq_vae_trains_in_two_processes_like_one(env, tmp_path):
    """The moving-average codebook is all-reduced: two processes finish within noise of one,
    and report the codes of the whole batch."""
    vq = [*FIT, "--posterior", "vq:16", "--epochs", "1"]
    _run([sys.executable, "-m", "vaekit", "fit", *vq, "--out", "one"], env, tmp_path)
    _run([sys.executable, "-m", "vaekit", "fit", "--nproc", "2", *vq, "--out", "two"], env,
         tmp_path)
    one, two = runs.read_metrics(tmp_path / "one"), runs.read_metrics(tmp_path / "two")
    assert two[0]["train_loss"] == pytest.approx(one[0]["train_loss"], rel=0.1)
    assert two[0]["test_neg_elbo"] == pytest.approx(one[0]["test_neg_elbo"], rel=0.1)
    assert 1 <= two[0]["codes_used"] <= 16


def test_factor_vae_and_beta_tc_train_in_two_processes_like_one(env, tmp_path):
    """FactorVAE's discriminator steps on every rank and its metrics count every rank's steps;
    β-TCVAE estimates q(z) on each rank's share of the batch: both land within noise of one
    process."""
    for objective in ("factor-vae", "beta-tc"):
        args = [*FIT, "--objective", objective, "--epochs", "1", "--limit-train", "256"]
        _run([sys.executable, "-m", "vaekit", "fit", *args, "--out", f"{objective}-1"], env,
             tmp_path)
        _run([sys.executable, "-m", "vaekit", "fit", "--nproc", "2", *args, "--out",
              f"{objective}-2"], env, tmp_path)
        one, two = (runs.read_metrics(tmp_path / f"{objective}-{n}")[0] for n in (1, 2))
        assert two["train_loss"] == pytest.approx(one["train_loss"], rel=0.1)
        assert two["test_neg_elbo"] == pytest.approx(one["test_neg_elbo"], rel=0.1)
    state = runs.load_checkpoint(tmp_path / "factor-vae-2")
    assert state["objective"]["optimizers"]["discriminator"]["state"]  # it stepped
    one, two = (runs.read_metrics(tmp_path / f"factor-vae-{n}")[0] for n in (1, 2))
    assert 0.0 <= two["disc_accuracy"] <= 1.0
    assert two["disc_loss"] == pytest.approx(one["disc_loss"], rel=0.1)  # a mean, not twice it


def test_semi_supervised_ranks_share_each_labelled_batch(env, tmp_path):
    """Under 2 processes each step's labelled batch is split between the ranks, every image
    once (their summed losses count it once, as one process does), and the epoch's classifier
    numbers are summed over the ranks: the same as one process's."""
    from dist_m2_worker import STEPS, build, unlabelled

    _run(_torchrun(2, str(HERE / "dist_m2_worker.py"), str(tmp_path / "two.pt")), env, tmp_path)
    two = torch.load(tmp_path / "two.pt")
    one = build()
    for step in range(STEPS):
        state = one.draws.get_state()
        whole = one.labelled_indices()
        one.draws.set_state(state)
        one(unlabelled())
        r0, r1 = two["shares"][0][step], two["shares"][1][step]
        assert len(r0) + len(r1) == len(whole) == 10
        assert sorted((*r0.tolist(), *r1.tolist())) == sorted(whole.tolist())
    expect = one.epoch_metrics()
    assert expect.keys() == two["metrics"].keys()
    for k, v in expect.items():
        assert two["metrics"][k] == pytest.approx(v, rel=1e-5), k

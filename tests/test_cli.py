"""The command line: wiring, one real tiny end-to-end fit, resume, and bad input."""

import json
from pathlib import Path

import pytest
import torch

from vaekit import runs
from vaekit.cli import cli

SMOKE = ["--limit-train", "256", "--limit-test", "128", "--batch-size", "64", "--epochs", "2",
         "--z-dim", "4", "--no-progress", "--device", "cpu", "--no-download"]


def test_version_and_help(runner):
    assert runner.invoke(cli, ["--version"]).output.startswith("vaekit, version")
    out = runner.invoke(cli, ["fit", "--help"]).output
    for opt in ("--likelihood", "--beta", "--z-dim", "--epochs", "--batch-size", "--lr",
                "--device", "--seed", "--data-root", "--out", "--limit-train", "--resume"):
        assert opt in out
    assert "1024" in out and "default" in out


def test_fit_end_to_end_and_resume(runner):
    res = runner.invoke(cli, ["fit", "--likelihood", "bernoulli", "--out", "run", *SMOKE])
    assert res.exit_code == 0, res.output
    assert "test -ELBO" in res.output and "run folder: run" in res.output
    # --no-progress hides the bar, not the per-epoch lines (what a log file needs).
    assert [ln.split()[1] for ln in res.output.splitlines() if ln.startswith("epoch ")] == \
        ["1/2", "2/2"]
    files = {"config.json", "checkpoint.pt", "metrics.csv", "samples.png",
             "reconstructions.png", "loss.png"}
    assert files <= {p.name for p in Path("run").iterdir()}
    config = json.loads(Path("run/config.json").read_text())
    assert config["model"]["z_dim"] == 4 and config["data_info"]["n_train"] == 256
    assert [r["epoch"] for r in runs.read_metrics("run")] == [1, 2]

    res = runner.invoke(cli, ["fit", "--resume", "run", "--epochs", "3", "--no-progress",
                              "--device", "cpu", "--no-download"])
    assert res.exit_code == 0, res.output
    assert [r["epoch"] for r in runs.read_metrics("run")] == [1, 2, 3]
    assert "epoch 3/3" in res.output and "epoch 2/3" not in res.output

    res = runner.invoke(cli, ["fit", "--resume", "run", "--beta", "2"])
    assert res.exit_code == 2 and "--beta cannot be combined with --resume" in res.output


def test_gaussian_options_reach_the_likelihood(runner):
    res = runner.invoke(cli, ["fit", "--likelihood", "gaussian", "--scale", "0.3",
                              "--learn-scale", "--out", "g", *SMOKE[:-6], "--epochs", "1",
                              "--no-progress", "--device", "cpu", "--no-download"])
    assert res.exit_code == 0, res.output
    lik = json.loads(Path("g/config.json").read_text())["vae"]["likelihood"]
    assert lik == {"name": "gaussian", "scale": 0.3, "learn_scale": True}


@pytest.mark.parametrize(
    "args, message",
    [
        (["--likelihood", "poisson"], "unknown likelihood 'poisson'"),
        (["--beta", "-1"], "--beta"),
        (["--z-dim", "0"], "--z-dim"),
        (["--epochs", "0"], "--epochs"),
        (["--lr", "0"], "--lr"),
        (["--device", "tpu"], "--device"),
        (["--likelihood", "bernoulli", "--scale", "0.1"], "does not take these options"),
        (["--batch-size", "100000"], "larger than"),
        (["--data-root", "empty"], "MNIST not found under empty"),
        (["--out", "afile/run"], "cannot write the run folder afile/run"),
        (["--out", "notarun"], "notarun already exists and is not empty"),
        (["--out", "oldrun"], "oldrun already exists and is a vaekit run"),
        (["--resume", "empty"], "empty is not a vaekit run folder"),
        (["--checkpoint-every", "-1"], "--checkpoint-every"),
    ] + ([] if torch.cuda.is_available() else [(["--device", "cuda"], "no GPU is available")]),
)
def test_bad_input_is_one_line_exit_2_nothing_written(runner, args, message):
    Path("empty").mkdir()
    Path("afile").write_text("a file, not a folder")
    Path("notarun").mkdir()
    Path("notarun/keep.txt").write_text("mine")
    Path("oldrun").mkdir()
    Path("oldrun/config.json").write_text("{}")
    before = sorted(str(p) for p in Path().rglob("*"))
    base = [] if "--resume" in args else ["--limit-train", "256", "--batch-size", "64"]
    if "--out" not in args and "--resume" not in args:
        base += ["--out", "run"]
    res = runner.invoke(cli, ["fit", "--no-download", *base, *args])
    assert res.exit_code == 2, res.output
    assert message in res.output
    assert "Traceback" not in res.output and len(res.output.strip().splitlines()) <= 4
    assert sorted(str(p) for p in Path().rglob("*")) == before  # nothing written


def test_the_command_line_starts_without_torch_and_every_public_name_resolves():
    """`vaekit --help` and a Ctrl-C during start-up do not wait for torch: the package and the
    CLI import it only when a command needs it; `vaekit.X` still gives every name of __all__."""
    import subprocess
    import sys

    code = ("import sys, vaekit, vaekit.cli; assert 'torch' not in sys.modules, 'torch'; "
            "[getattr(vaekit, n) for n in vaekit.__all__]; assert 'torch' in sys.modules; "
            "assert vaekit.priors.Prior and vaekit.posteriors.Posterior and vaekit.nets; "
            "assert not hasattr(vaekit, 'nosuchthing')")
    subprocess.run([sys.executable, "-c", code], check=True)

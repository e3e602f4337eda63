"""Experiment tracking read back with the real libraries, and `vaekit compare` (issue #17)."""

import json
import sys

import pytest
from click.testing import CliRunner

import vaekit
from vaekit import runs
from vaekit.cli import cli
from vaekit.tracking import Logger

FIT = ["fit", "--limit-train", "128", "--val", "64", "--limit-test", "64", "--batch-size", "32",
       "--z-dim", "2", "--nets", "mlp:32", "--no-progress", "--device", "cpu", "--no-download"]


@pytest.fixture
def workdir(mnist_root, tmp_path, monkeypatch):
    monkeypatch.setenv("VAEKIT_DATA", str(mnist_root))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _scalars(log_dir, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc, [(e.step, e.value) for e in acc.Scalars(tag)]


def test_tensorboard_and_mlflow_hold_what_metrics_csv_holds(workdir):
    from mlflow import MlflowClient

    uri = f"sqlite:///{workdir / 'ml.db'}"
    r = CliRunner().invoke(cli, [*FIT, "--epochs", "2", "--logger", "tensorboard", "--logger",
                                 "mlflow", "--mlflow-uri", uri, "--out", "runs/a"])
    assert r.exit_code == 0, r.output
    rows = runs.read_metrics("runs/a")
    steps_per_epoch = 128 // 32
    # TensorBoard: the per-epoch scalars are metrics.csv's columns, at each epoch's last step.
    acc, test = _scalars(workdir / "runs/a/tensorboard", "epoch/test_neg_elbo")
    assert [s for s, _ in test] == [steps_per_epoch * r["epoch"] for r in rows]
    assert [v for _, v in test] == pytest.approx([r["test_neg_elbo"] for r in rows], rel=1e-6)
    _, val = _scalars(workdir / "runs/a/tensorboard", "epoch/val_neg_elbo")
    assert [v for _, v in val] == pytest.approx([r["val_neg_elbo"] for r in rows], rel=1e-6)
    _, loss = _scalars(workdir / "runs/a/tensorboard", "train/loss")
    assert [s for s, _ in loss] == list(range(1, 2 * steps_per_epoch + 1))  # every step, once
    assert {"samples", "reconstructions"} <= set(acc.Tags()["images"])
    # MLflow: one run named after the folder, the settings as params, the same metrics.
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("vaekit").experiment_id])
    assert run.info.run_name == "a" and run.info.status == "FINISHED"
    assert run.data.params["model.z_dim"] == "2" and run.data.params["train.batch_size"] == "32"
    assert run.data.tags["likelihood"] == "bernoulli" and "vaekit_version" in run.data.tags
    history = client.get_metric_history(run.info.run_id, "epoch/test_neg_elbo")
    assert [m.step for m in history] == [steps_per_epoch * r["epoch"] for r in rows]
    assert [m.value for m in history] == pytest.approx([r["test_neg_elbo"] for r in rows])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.json", "metrics.csv", "model", "pictures"} <= artifacts
    assert [a.path for a in client.list_artifacts(run.info.run_id, "model")] == ["model/best.pt"]
    assert json.loads((workdir / "runs/a/tracking.json").read_text())["mlflow_run_id"] == \
        run.info.run_id


def test_resume_continues_the_same_logs_without_duplicated_steps(workdir):
    from mlflow import MlflowClient

    uri = f"sqlite:///{workdir / 'ml.db'}"
    r = CliRunner().invoke(cli, [*FIT, "--epochs", "1", "--logger", "tensorboard", "--logger",
                                 "mlflow", "--mlflow-uri", uri, "--out", "r"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(cli, ["fit", "--resume", "r", "--epochs", "3", "--no-progress",
                                 "--device", "cpu"])
    assert r.exit_code == 2 and f"--mlflow-uri {uri}" in r.output  # the folder does not choose
    r = CliRunner().invoke(cli, ["fit", "--resume", "r", "--epochs", "3", "--no-progress",
                                 "--device", "cpu", "--mlflow-uri", uri])
    assert r.exit_code == 0, r.output
    rows = runs.read_metrics("r")
    _, test = _scalars(workdir / "r/tensorboard", "epoch/test_neg_elbo")
    assert [s for s, _ in test] == [4, 8, 12]
    assert [v for _, v in test] == pytest.approx([r["test_neg_elbo"] for r in rows], rel=1e-6)
    _, loss = _scalars(workdir / "r/tensorboard", "train/loss")
    assert [s for s, _ in loss] == list(range(1, 13))
    client = MlflowClient(tracking_uri=uri)
    found = client.search_runs([client.get_experiment_by_name("vaekit").experiment_id])
    assert len(found) == 1 and found[0].info.status == "FINISHED"  # the same run, continued
    steps = [m.step for m in client.get_metric_history(found[0].info.run_id, "train/loss")]
    assert steps == list(range(1, 13))


def test_a_missing_extra_is_one_line_with_the_pip_command(workdir, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if not installed
    r = CliRunner().invoke(cli, [*FIT, "--epochs", "1", "--logger", "mlflow", "--out", "m"])
    assert r.exit_code == 2
    assert r.output.strip().splitlines()[-1] == (
        'Error: --logger mlflow needs the mlflow package, which is not installed: '
        'pip install "vaekit[mlflow]"')
    assert not (workdir / "m" / "checkpoint.pt").exists()
    r = CliRunner().invoke(cli, [*FIT, "--epochs", "1", "--logger", "wandb", "--out", "w"])
    assert r.exit_code == 2 and "'wandb' is not one of 'tensorboard', 'mlflow'" in r.output


class ListLogger:
    """A logger of one's own: the protocol's four methods."""

    def __init__(self):
        self.calls = []

    def start(self, run):
        self.calls.append(("start", run.name, run.step, run.resumed))

    def log_metrics(self, metrics, step):
        self.calls.append(("metrics", step, dict(metrics)))

    def log_images(self, images, step):
        self.calls.append(("images", step, {k: tuple(v.shape) for k, v in images.items()}))

    def finish(self, summary, status="FINISHED"):
        self.calls.append(("finish", status, dict(summary)))


def test_a_logger_of_ones_own_sees_the_run(mnist_small, tmp_path):
    train_x, test_x = mnist_small
    logger = ListLogger()
    assert isinstance(logger, Logger)
    r = vaekit.fit(vaekit.VAE(z_dim=2, nets="mlp:32"), train_x[:128], test_x[:64], epochs=2,
                   batch_size=64, device="cpu", progress=False, verbose=False,
                   run_dir=tmp_path / "own", loggers=[logger])
    assert logger.calls[0] == ("start", "own", 0, False)
    epochs = [c for c in logger.calls if c[0] == "metrics" and "epoch/test_neg_elbo" in c[2]]
    assert [c[2]["epoch/test_neg_elbo"] for c in epochs] == [h["test_neg_elbo"] for h in r.history]
    assert [c[1] for c in logger.calls if c[0] == "images"] == [2, 4]
    assert logger.calls[-1][:2] == ("finish", "FINISHED")
    assert logger.calls[-1][2]["test_neg_elbo"] == r.history[-1]["test_neg_elbo"]


def test_an_interrupted_run_tells_its_loggers(mnist_small, tmp_path):
    from vaekit.errors import TrainingError

    train_x, test_x = mnist_small
    logger = ListLogger()
    with pytest.raises(TrainingError):
        vaekit.fit(vaekit.VAE(z_dim=2, likelihood="gaussian"), train_x[:128], epochs=2,
                   batch_size=64, lr=1e30, device="cpu", progress=False, verbose=False,
                   loggers=[logger])
    assert logger.calls[-1][:2] == ("finish", "FAILED")


def test_compare_two_runs(workdir):
    for name, lr in (("a", "0.001"), ("b", "0.003")):
        r = CliRunner().invoke(cli, [*FIT, "--epochs", "2", "--lr", lr, "--out", name])
        assert r.exit_code == 0, r.output
    r = CliRunner().invoke(cli, ["compare", "a", "b", "--out", "cmp.png"])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0].split() == ["a", "b"]
    lr_row = next(line for line in lines if line.startswith("train.lr"))
    assert lr_row.split()[1:] == ["0.001", "0.003"]
    assert not any(line.startswith("model.z_dim") for line in lines)  # the same in both
    best = next(line for line in lines if line.startswith("best val -ELBO"))
    want = [min(row["val_neg_elbo"] for row in runs.read_metrics(n)) for n in "ab"]
    assert [float(v) for v in best.split()[3:]] == pytest.approx(want, abs=0.006)
    from torchvision.io import read_image

    assert read_image(str(workdir / "cmp.png")).float().std() > 0
    r = CliRunner().invoke(cli, ["compare", "a", "nowhere"])
    assert r.exit_code == 2 and "nowhere is not a vaekit run folder" in r.output
    for name, want in (("final test KL", "test_kl"), ("final test reconstruction", "test_recon")):
        row = next(line for line in lines if line.startswith(name))  # a β comparison's columns
        assert [float(v) for v in row.split()[-2:]] == pytest.approx(
            [runs.read_metrics(n)[-1][want] for n in "ab"], abs=0.006)
    # a damaged run: one line naming the file, exit 2, never a traceback
    import shutil

    good = (workdir / "b" / "metrics.csv").read_text()
    damaged = {"a value": good.replace(good.splitlines()[1].split(",")[1], "foo", 1),
               "no header": "\n".join(good.splitlines()[1:]) + "\n",
               "binary": "\x00\xff\xfe garbage \x80",
               "extra values": good.rstrip("\n") + ",1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16\n"}
    shutil.copytree("b", "c")
    for what, text in damaged.items():
        (workdir / "c" / "metrics.csv").write_bytes(text.encode("latin-1"))
        r = CliRunner().invoke(cli, ["compare", "a", "c", "--out", "cmp2.png"])
        assert r.exit_code == 2 and "metrics.csv" in r.output, (what, r.output)
        assert r.exception is None or isinstance(r.exception, SystemExit), what
    header = good.splitlines()[0].split(",")
    nan = ",".join("1" if k in ("epoch", "skipped") else "nan" for k in header)
    (workdir / "c" / "metrics.csv").write_text(",".join(header) + "\n" + nan + "\n")  # all NaN
    r = CliRunner().invoke(cli, ["compare", "a", "c", "--out", "cmp2.png"])
    assert r.exit_code == 0, r.output
    (workdir / "c" / "config.json").write_text("[1, 2]")
    r = CliRunner().invoke(cli, ["compare", "a", "c", "--out", "cmp2.png"])
    assert r.exit_code == 2 and "is not a vaekit config" in r.output, r.output


def test_the_wandb_example_logs_through_the_protocol(mnist_small, tmp_path, monkeypatch):
    """examples/wandb_logger.py against a stand-in for the wandb package."""
    import importlib.util
    import types
    from pathlib import Path

    logged, finished = [], []

    class FakeRun:
        summary: dict = {}

        def log(self, data, step):
            logged.append((step, sorted(data)))

        def finish(self, exit_code):
            finished.append(exit_code)

    fake = types.SimpleNamespace(init=lambda **kw: FakeRun(), Image=lambda array: array.shape)
    monkeypatch.setitem(sys.modules, "wandb", fake)
    path = Path(__file__).resolve().parents[1] / "examples" / "wandb_logger.py"
    spec = importlib.util.spec_from_file_location("wandb_logger", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    train_x, test_x = mnist_small
    vaekit.fit(vaekit.VAE(z_dim=2, nets="mlp:32"), train_x[:128], test_x[:64], epochs=1,
               batch_size=64, device="cpu", progress=False, verbose=False,
               run_dir=tmp_path / "w", loggers=[module.WandbLogger()])
    assert (2, ["reconstructions", "samples"]) in logged and finished == [0]
    assert any("epoch/test_neg_elbo" in keys for _, keys in logged)

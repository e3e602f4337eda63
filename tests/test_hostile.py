"""What a hostile or careless input must not do (issue #22, part 3): each test fails on the code
before its fix. Files named by a run folder or a settings file are data, never orders."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import lock_held_elsewhere

from vaekit import runs
from vaekit.cli import cli
from vaekit.errors import ConfigError
from vaekit.io import LOCK_FILE, FolderLock
from vaekit.model import VAE
from vaekit.train import fit

FIT = ["fit", "--limit-train", "128", "--val", "0", "--limit-test", "64", "--batch-size", "64",
       "--z-dim", "2", "--nets", "mlp:16", "--no-progress", "--device", "cpu", "--no-download",
       "--epochs", "1"]
KW = dict(batch_size=64, device="cpu", progress=False, verbose=False, epochs=1)


@pytest.fixture
def workdir(mnist_root, tmp_path, monkeypatch):
    monkeypatch.setenv("VAEKIT_DATA", str(mnist_root))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_a_lock_file_linked_elsewhere_is_refused_and_its_target_kept(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK_FILE).symlink_to(notes)
    with pytest.raises(OSError, match="is a link"):
        FolderLock(run).acquire()
    assert notes.read_text() == "my notes\n"
    (run / LOCK_FILE).unlink()
    (run / LOCK_FILE).mkdir()  # not a regular file either
    with pytest.raises(OSError):
        FolderLock(run).acquire()


def test_a_fit_through_a_linked_lock_file_is_one_line_and_harmless(workdir):
    tmp_path = workdir
    assert CliRunner().invoke(cli, [*FIT, "--out", "r"]).exit_code == 0
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    (tmp_path / "r" / LOCK_FILE).unlink()
    (tmp_path / "r" / LOCK_FILE).symlink_to(notes)
    r = CliRunner().invoke(cli, ["fit", "--resume", str(tmp_path / "r"), "--epochs", "2",
                                 "--no-progress"])
    assert r.exit_code == 2 and "is a link" in r.output, r.output
    assert notes.read_text() == "my notes\n"


def test_deleting_the_lock_file_does_not_let_a_second_writer_in(tmp_path):
    with lock_held_elsewhere(tmp_path / "r"):
        (tmp_path / "r" / LOCK_FILE).unlink()
        with pytest.raises(OSError, match="another vaekit process"):
            FolderLock(tmp_path / "r").acquire()


def test_overwrite_deletes_only_a_folder_that_is_provably_a_vaekit_run(synthetic, tmp_path):
    train_x, test_x = synthetic
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.json").write_text('{"my": "own settings"}')
    (mine / "metrics.csv").write_text("my,own\n1,2\n")
    with pytest.raises(ConfigError, match="not a vaekit run"):
        fit(VAE(z_dim=2, nets="mlp:16"), train_x, test_x, run_dir=mine, overwrite=True, **KW)
    assert (mine / "config.json").read_text() == '{"my": "own settings"}'
    assert (mine / "metrics.csv").read_text() == "my,own\n1,2\n"
    # a vaekit run is overwritten as before
    fit(VAE(z_dim=2, nets="mlp:16"), train_x, test_x, run_dir=tmp_path / "r", **KW)
    fit(VAE(z_dim=2, nets="mlp:16"), train_x, test_x, run_dir=tmp_path / "r", overwrite=True,
        **KW)
    assert [r["epoch"] for r in runs.read_metrics(tmp_path / "r")] == [1]


def test_a_config_file_chooses_neither_where_a_run_goes_nor_that_it_overwrites(workdir):
    r = CliRunner().invoke(cli, [*FIT, "--out", "precious"])
    assert r.exit_code == 0, r.output
    before = (workdir / "precious" / "checkpoint.pt").read_bytes()
    (workdir / "foreign.json").write_text(json.dumps(
        {"train": {"epochs": 1}, "run": {"out": "precious", "overwrite": True}}))
    r = CliRunner().invoke(cli, [*FIT, "--config", "foreign.json"])
    assert r.exit_code == 0, r.output
    assert (workdir / "precious" / "checkpoint.pt").read_bytes() == before
    assert "names the run folder precious, which is in use" in r.output
    new = [p for p in (workdir / "runs").iterdir()]
    assert len(new) == 1 and runs.is_run_dir(new[0])
    assert runs.read_config(new[0])["run"]["overwrite"] is False
    # a free folder the file names is its default name, still
    (workdir / "mine.json").write_text(json.dumps({"run": {"out": "fresh"}}))
    r = CliRunner().invoke(cli, [*FIT, "--config", "mine.json"])
    assert r.exit_code == 0 and runs.is_run_dir(workdir / "fresh"), r.output
    # rerunning a run's own config.json without --out makes a new run, never refuses
    r = CliRunner().invoke(cli, [*FIT, "--config", "fresh/config.json"])
    assert r.exit_code == 0, r.output
    assert len(list((workdir / "runs").iterdir())) == 2


def test_a_config_file_does_not_choose_where_data_is_sent(workdir):
    pytest.importorskip("mlflow")
    (workdir / "foreign.json").write_text(json.dumps(
        {"run": {"logger": ["mlflow"], "mlflow_uri": "http://127.0.0.1:9/"}}))
    r = CliRunner().invoke(cli, [*FIT, "--config", "foreign.json", "--out", "x"])
    assert r.exit_code == 2 and "--mlflow-uri http://127.0.0.1:9/" in r.output, r.output
    assert not (workdir / "x").exists()


def test_resume_does_not_send_data_where_a_run_folder_says(workdir):
    pytest.importorskip("mlflow")
    r = CliRunner().invoke(cli, [*FIT, "--out", "r"])
    assert r.exit_code == 0, r.output
    config = json.loads((workdir / "r" / "config.json").read_text())
    config["run"].update(logger=["mlflow"], mlflow_uri="http://127.0.0.1:9/")
    (workdir / "r" / "config.json").write_text(json.dumps(config))
    r = CliRunner().invoke(cli, ["fit", "--resume", "r", "--epochs", "2", "--no-progress"])
    assert r.exit_code == 2 and "--mlflow-uri http://127.0.0.1:9/" in r.output, r.output
    assert [row["epoch"] for row in runs.read_metrics(workdir / "r")] == [1]


def test_a_plugin_named_by_a_config_file_is_not_imported_untrusted(workdir, monkeypatch):
    marker = workdir / "ran.txt"
    for part, cls in (("prior", "Prior"), ("posterior", "Posterior"), ("likelihood", "Lik"),
                      ("encoder", "Enc")):
        mod = f"evil_{part}"
        (workdir / f"{mod}.py").write_text(
            f"open({str(marker)!r}, 'a').write('{part} ')\nclass {cls}: pass\n")
        (workdir / f"{part}.json").write_text(json.dumps({"model": {part: f"{mod}:{cls}"}}))
        monkeypatch.syspath_prepend(str(workdir))
        r = CliRunner().invoke(cli, [*FIT, "--config", f"{part}.json", "--out", part])
        assert r.exit_code == 2 and "--trust-plugins" in r.output, (part, r.output)
        assert not marker.exists(), part
        assert mod not in sys.modules
    (workdir / "this.json").write_text(json.dumps({"model": {"prior": "this:X"}}))
    r = CliRunner().invoke(cli, [*FIT, "--config", "this.json", "--out", "this"])
    assert r.exit_code == 2 and "The Zen of Python" not in r.output, r.output


@pytest.mark.parametrize("bad, match", [
    (lambda x: x.double() / 255, "torch.float64"),
    (lambda x: x.half() / 255, "torch.float16"),
    (lambda x: x.numpy(), "must be a torch.Tensor"),
    (lambda x: x.tolist(), "must be a torch.Tensor"),
    (lambda x: x[:0], "no training images"),
])
def test_fit_refuses_images_it_cannot_use_in_one_line(synthetic, tmp_path, bad, match):
    from vaekit.errors import DataError

    train_x, test_x = synthetic
    with pytest.raises(DataError, match=match):
        fit(VAE(z_dim=2, nets="mlp:16"), bad(train_x), test_x, run_dir=tmp_path / "r", **KW)
    assert not (tmp_path / "r").exists()
    with pytest.raises(DataError, match="no test images"):
        fit(VAE(z_dim=2, nets="mlp:16"), train_x, test_x[:0], **KW)


def _hand_edit(path, **changes):
    import torch

    state = torch.load(path, weights_only=False)
    state.update(changes)
    torch.save(state, path)


@pytest.mark.parametrize("changes, match", [
    ({"rng": {}}, "random states"),
    ({"history": ["x", 5]}, "history"),
    ({"epoch": -5}, "epoch"),
    ({"step": 10**9}, "step"),
    ({"epoch": 7}, "epochs 1..7"),
])
def test_a_hand_edited_checkpoint_is_one_line_and_keeps_metrics(workdir, changes, match):
    assert CliRunner().invoke(cli, [*FIT, "--epochs", "2", "--out", "r"]).exit_code == 0
    metrics = (workdir / "r" / "metrics.csv").read_text()
    _hand_edit(workdir / "r" / "checkpoint.pt", **changes)
    r = CliRunner().invoke(cli, ["fit", "--resume", "r", "--epochs", "3", "--no-progress"])
    assert r.exit_code == 2 and match in r.output and "Traceback" not in r.output, r.output
    assert (workdir / "r" / "metrics.csv").read_text() == metrics


def test_a_prior_class_with_the_wrong_constructor_is_one_line(workdir, monkeypatch):
    (workdir / "myparts.py").write_text(
        "from vaekit.priors import StandardNormal\n"
        "class Prior(StandardNormal):\n"
        "    def __init__(self, z_dim, width):\n"
        "        super().__init__(z_dim)\n")
    monkeypatch.syspath_prepend(str(workdir))
    r = CliRunner().invoke(cli, [*FIT, "--prior", "myparts:Prior", "--out", "p"])
    assert r.exit_code == 2 and "cannot build the prior Prior(2)" in r.output, r.output


def test_sizes_that_would_exhaust_memory_are_refused_up_front(workdir):
    r = CliRunner().invoke(cli, [*FIT, "--z-dim", "100000000", "--out", "z"])
    assert r.exit_code == 2 and "--z-dim" in r.output and not (workdir / "z").exists()
    assert CliRunner().invoke(cli, [*FIT, "--out", "r"]).exit_code == 0
    r = CliRunner().invoke(cli, ["sample", "r", "--n", "1000000000000"])
    assert r.exit_code == 2 and "--n" in r.output
    config = json.loads((workdir / "r" / "config.json").read_text())
    config["vae"]["z_dim"] = 10**12
    (workdir / "r" / "config.json").write_text(json.dumps(config))
    r = CliRunner().invoke(cli, ["evaluate", "r", "--num-samples", "2"])
    assert r.exit_code == 2 and "z_dim" in r.output, r.output


def test_values_python_parses_oddly_are_one_line_errors(workdir):
    r = CliRunner().invoke(cli, [*FIT, "--lr-schedule", "plateau:\u00b2", "--val", "64",
                                 "--out", "a"])
    assert r.exit_code == 2 and "lr_schedule" in r.output, r.output
    assert CliRunner().invoke(cli, [*FIT, "--out", "r"]).exit_code == 0
    r = CliRunner().invoke(cli, ["evaluate", "r", "--seed", "1180591620717411303424"])
    assert r.exit_code == 2 and "--seed" in r.output
    r = CliRunner().invoke(cli, ["traverse", "r", "--span", "nan"])
    assert r.exit_code == 2 and "finite" in r.output


def test_settings_files_that_are_too_deep_or_too_long_are_one_short_line(workdir):
    (workdir / "deep.json").write_text("[" * 100000 + "]" * 100000)
    r = CliRunner().invoke(cli, [*FIT, "--config", "deep.json"])
    assert r.exit_code == 2 and "nested too deeply" in r.output, r.output[:300]
    (workdir / "long.json").write_text(json.dumps({"model": {"prior": "x" * 10**7}}))
    r = CliRunner().invoke(cli, [*FIT, "--config", "long.json"])
    assert r.exit_code == 2 and len(r.output) < 2000 and "\n" == r.output[-1], r.output[:300]


def test_load_of_a_file_is_a_checkpoint_error(tmp_path):
    from vaekit.errors import CheckpointError

    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(CheckpointError, match="is a file, not a run folder"):
        runs.load(tmp_path / "f.txt")


def _wait_until_torch_loads(p: subprocess.Popen, most: float = 180.0) -> None:
    """Wait until process ``p`` maps libtorch: it is inside `vaekit.__main__.main`, importing torch
    (what an interpreter still starting up on a loaded machine gets is Python's, not vaekit's)."""
    import time

    maps, end = Path(f"/proc/{p.pid}/maps"), time.monotonic() + most
    while time.monotonic() < end and p.poll() is None:
        try:
            if "libtorch" in maps.read_text():
                return
        except OSError:
            pass
        time.sleep(0.02)


@pytest.mark.parametrize("delay", [0.0, 4.0])  # in torch's import; loading the data or later
def test_ctrl_c_during_start_up_is_one_line_and_exit_130(workdir, delay):
    import signal
    import time

    p = subprocess.Popen([sys.executable, "-m", "vaekit", *FIT, "--epochs", "1000", "--out", "r"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=dict(os.environ))
    try:
        _wait_until_torch_loads(p)
        time.sleep(delay)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=120)
    finally:  # a child that did not stop is not left running into the next test
        p.kill()
        p.communicate()
    assert p.returncode == 130, (out, err)
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    if not runs.is_run_dir(workdir / "r"):
        assert "nothing to resume" in err or "interrupted" == err.strip()[7:], err


def test_pictures_of_an_older_epoch_are_redrawn_on_resume(synthetic, tmp_path):
    """Killed (or a full disk) while drawing the last epoch's pictures: the folder holds epoch
    N-1's. Resume draws epoch N's, though every file is there and non-empty."""
    from vaekit.train import resume

    train_x, test_x = synthetic
    fit(VAE(z_dim=2, nets="mlp:16"), train_x, test_x, run_dir=tmp_path / "r", **KW)
    old = {f: (tmp_path / "r" / f).read_bytes() for f in ("samples.png", "loss.png")}
    resume(tmp_path / "r", train_x, test_x, epochs=2, progress=False, verbose=False)
    assert runs.pictures_epoch(tmp_path / "r") == 2
    for f, data in old.items():  # as if epoch 2's drawing had died before writing them
        (tmp_path / "r" / f).write_bytes(data)
    runs.mark_pictures(tmp_path / "r", 1)
    resume(tmp_path / "r", train_x, test_x, epochs=2, progress=False, verbose=False)
    assert runs.pictures_epoch(tmp_path / "r") == 2
    assert (tmp_path / "r" / "loss.png").read_bytes() != old["loss.png"]  # two epochs drawn


def test_a_tracker_that_cannot_start_is_one_line_and_the_folder_resumable(synthetic, tmp_path):
    pytest.importorskip("tensorboard")
    from vaekit.tracking import TensorBoardLogger
    from vaekit.train import resume

    train_x, test_x = synthetic
    (tmp_path / "blocked").write_text("in the way")  # where the event files should go
    with pytest.raises(ConfigError, match="TensorBoardLogger tracker cannot start") as e:
        fit(VAE(z_dim=2, nets="mlp:16"), train_x, test_x, run_dir=tmp_path / "r",
            loggers=[TensorBoardLogger(tmp_path / "blocked")], **KW)
    assert "\n" not in str(e.value) and "resume it" in str(e.value)
    result = resume(tmp_path / "r", train_x, test_x, progress=False, verbose=False)
    assert [row["epoch"] for row in result.history] == [1]


@pytest.mark.parametrize("uri, said", [
    ("nosuchscheme://host/x", "MLflow cannot use the tracking URI"),  # a scheme MLflow lacks
    ("sqlite:///{workdir}", "is a folder"),
    ("sqlite:///{workdir}/no/such/folder/m.db", "does not exist"),
    ("sqlite:///{workdir}/garbage.db", "is not an SQLite database"),
])
def test_a_bad_mlflow_uri_is_one_line(workdir, uri, said):
    pytest.importorskip("mlflow")
    (workdir / "garbage.db").write_bytes(b"\x00garbage" * 100)
    uri = uri.format(workdir=workdir)
    r = CliRunner().invoke(cli, [*FIT, "--logger", "mlflow", "--mlflow-uri", uri, "--out", "r"])
    assert r.exit_code == 2 and said in r.output, r.output
    assert "Traceback" not in r.output and r.output.count("\n") == 1


class _Breaks:
    """A logger that fails at its n-th call of one method."""

    def __init__(self, method, n=1):
        self.method, self.n, self.calls = method, n, []

    def _call(self, name, *args):
        self.calls.append(name)
        if name == self.method and self.calls.count(name) >= self.n:
            raise OSError(28, "No space left on device")

    def start(self, run):
        self._call("start", run)

    def log_metrics(self, metrics, step):
        self._call("log_metrics", metrics, step)

    def log_images(self, images, step):
        self._call("log_images", images, step)

    def finish(self, summary, status="FINISHED"):
        self._call("finish", summary, status)


def test_a_tracker_failing_mid_run_is_one_line_and_training_goes_on(synthetic, tmp_path,
                                                                    capsys):
    train_x, test_x = synthetic
    broken = _Breaks("log_metrics", n=2)
    result = fit(VAE(z_dim=2, nets="mlp:16"), train_x, test_x, run_dir=tmp_path / "r",
                 loggers=[broken], **{**KW, "epochs": 3})
    assert [row["epoch"] for row in result.history] == [1, 2, 3]
    err = capsys.readouterr().err
    assert err.count("tracker failed") == 1 and "No space left on device" in err
    assert "finish" not in broken.calls  # dropped: not called again


def test_a_tracker_failing_at_the_end_does_not_hide_the_real_error(synthetic, tmp_path, capsys):
    from vaekit.errors import TrainingError

    train_x, test_x = synthetic
    with pytest.raises(TrainingError):
        fit(VAE(z_dim=2, nets="mlp:16", likelihood="gaussian"), train_x, test_x, lr=1e30,
            run_dir=tmp_path / "r", loggers=[_Breaks("finish")], **{**KW, "epochs": 2})
    assert "could not finish" in capsys.readouterr().err


@pytest.mark.parametrize("chunk", ["text", "icc"])
def test_a_png_whose_chunks_inflate_too_far_is_a_data_error(tmp_path, chunk):
    from PIL import Image, PngImagePlugin

    from vaekit.data import load_dataset
    from vaekit.errors import DataError

    Image.new("L", (28, 28)).save(tmp_path / "fine.png")
    info = PngImagePlugin.PngInfo()
    if chunk == "text":
        info.add_text("k", "a" * (3 * 1024 * 1024), zip=True)  # a zTXt chunk of 3 MB inflated
        Image.new("L", (28, 28)).save(tmp_path / "bomb.png", pnginfo=info)
    else:  # an iCCP colour profile of 3 MB inflated
        Image.new("L", (28, 28)).save(tmp_path / "bomb.png", icc_profile=b"\0" * (3 * 1024 * 1024))
    with pytest.raises(DataError, match="bomb.png cannot be decoded safely"):
        load_dataset(f"folder:{tmp_path}", size=28, channels=1)


def test_a_run_killed_while_writing_its_first_config_can_be_started_again(workdir):
    (workdir / "r").mkdir()
    (workdir / "r" / LOCK_FILE).write_text("")
    (workdir / "r" / ".config.json.k3j2.vaekit.tmp").write_text('{"half": ')  # what it left
    r = CliRunner().invoke(cli, [*FIT, "--out", "r"])
    assert r.exit_code == 0, r.output
    assert runs.is_vaekit_run(workdir / "r")
    assert not (workdir / "r" / ".config.json.k3j2.vaekit.tmp").exists()


def test_an_objective_setting_that_overflows_is_refused_not_blamed_on_a_fault(workdir):
    r = CliRunner().invoke(cli, [*FIT, "--objective", "capacity", "--capacity", "1e300",
                                 "--out", "c"])
    assert r.exit_code == 2 and "--capacity" in r.output and "transient" not in r.output


def test_evaluate_interrupted_or_unable_to_write_says_so_and_keeps_the_numbers(workdir,
                                                                               monkeypatch):
    import vaekit.evaluation
    import vaekit.runs

    assert CliRunner().invoke(cli, [*FIT, "--out", "r"]).exit_code == 0

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device", "r/eval.json")

    monkeypatch.setattr(vaekit.runs, "write_evaluation", full)
    r = CliRunner().invoke(cli, ["evaluate", "r", "--num-samples", "2", "--no-progress"])
    assert r.exit_code == 2 and "IWAE -log p(x)" in r.output  # the numbers are on the screen
    assert "the numbers above are not saved" in r.output and "--out" not in r.output

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(vaekit.evaluation, "evaluate", stop)
    r = CliRunner().invoke(cli, ["evaluate", "r", "--num-samples", "2", "--no-progress"])
    assert r.exit_code == 130 and r.output.strip().endswith("Error: interrupted"), r.output

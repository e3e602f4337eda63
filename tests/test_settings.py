"""Settings declared once: the settings classes, the options and config files derived from them,
and the package's layers."""

import ast
import dataclasses
from pathlib import Path

import pyro
import pytest
import torch

import vaekit
from vaekit import runs
from vaekit.cli import cli
from vaekit.errors import ConfigError, Interrupted, VaekitError
from vaekit.settings import SECTIONS, DataSpec, ModelSpec, TrainSettings, read_settings

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--limit-train", "128", "--limit-test", "64", "--batch-size", "64", "--epochs", "1",
        "--z-dim", "2", "--no-progress", "--device", "cpu", "--no-download"]


def test_every_fit_option_is_a_field_of_exactly_one_settings_class():
    options = {p.name: p for p in cli.commands["fit"].params}
    fields = {f"{section}__{f.name}" for section, cls in SECTIONS.items()
              for f in dataclasses.fields(cls)}
    assert set(options) - fields == {"config_file", "resume_dir", "trust_plugins"}  # not settings
    assert fields <= set(options)
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            option = options[f"{section}__{f.name}"]
            assert option.default == f.default, f.name  # the default is the field's
            assert f.metadata["help"] in option.help, f.name
            assert f"[config: {section}.{f.name}]" in option.help


def test_help_is_grouped_by_settings_class(runner):
    out = runner.invoke(cli, ["fit", "--help"]).output
    titles = ["Model options (ModelSpec)", "Data options (DataSpec)",
              "Training options (TrainSettings)", "Run options (RunOptions)", "Other options"]
    assert [out.index(t) for t in titles] == sorted(out.index(t) for t in titles)
    assert out.index("--z-dim") < out.index("Data options") < out.index("--data-root") \
        < out.index("Training options") < out.index("--lr") < out.index("Run options")


def test_fields_are_checked_and_named():
    with pytest.raises(ConfigError, match="^epochs must be an integer, got True"):
        TrainSettings(epochs=True)
    with pytest.raises(ConfigError, match="^batch_size must be >= 1, got 0"):
        TrainSettings(batch_size=0)
    with pytest.raises(ConfigError, match="^lr must be a finite number"):
        TrainSettings(lr=float("nan"))
    with pytest.raises(ConfigError, match="^likelihood must be a string"):
        ModelSpec(likelihood=None)
    with pytest.raises(ConfigError, match="^channels must be 1 .* or 3"):
        DataSpec(channels=2)
    with pytest.raises(ConfigError, match="^device must be one of"):
        TrainSettings(device="tpu")
    assert TrainSettings(lr=1).lr == 1  # an integer is a number
    with pytest.raises(dataclasses.FrozenInstanceError):
        TrainSettings().lr = 1.0


def test_python_api_takes_settings_and_keyword_overrides(mnist_small, tmp_path):
    train_x, test_x = mnist_small
    settings = TrainSettings(epochs=2, batch_size=256, device="cpu")
    pyro.set_rng_seed(0)
    r = vaekit.fit(vaekit.VAE(z_dim=2), train_x, test_x, settings, epochs=1, run_dir=tmp_path / "r",
                   progress=False, verbose=False)
    assert len(r.history) == 1  # the keyword wins over the settings object
    recorded = runs.read_config(tmp_path / "r")
    assert recorded["train"] == dataclasses.asdict(dataclasses.replace(settings, epochs=1))
    assert recorded["model"] == dataclasses.asdict(r.vae.spec())
    assert recorded["run"]["out"] == str(tmp_path / "r")
    with pytest.raises(ConfigError, match="^lr must be > 0"):
        vaekit.fit(vaekit.VAE(z_dim=2), train_x, None, settings, lr=-1.0)


def test_config_file_reruns_a_run(runner):
    assert runner.invoke(cli, ["fit", *TINY, "--beta", "2", "--out", "a"]).exit_code == 0
    res = runner.invoke(cli, ["fit", "--config", "a/config.json", "--epochs", "2", "--out", "b"])
    assert res.exit_code == 0, res.output
    a, b = runs.read_config("a"), runs.read_config("b")
    assert b["train"].pop("epochs") == 2 and a["train"].pop("epochs") == 1
    assert (b["run"].pop("out"), a["run"].pop("out")) == ("b", "a")
    assert a == b  # everything else, the settings and the facts of the run
    assert b["model"]["beta"] == 2.0
    assert [r["epoch"] for r in runs.read_metrics("b")] == [1, 2]


def test_hand_written_toml_and_json_configs(runner):
    Path("mine.toml").write_text('[model]\nz_dim = 3\nlikelihood = "gaussian"\nscale = 0.2\n\n'
                                 '[data]\nlimit_train = 128\nlimit_test = 64\ndownload = false\n\n'
                                 '[train]\nbatch_size = 64\nepochs = 1\ndevice = "cpu"\n\n'
                                 '[run]\nprogress = false\n')
    res = runner.invoke(cli, ["fit", "--config", "mine.toml", "--z-dim", "2", "--out", "t"])
    assert res.exit_code == 0, res.output
    config = runs.read_config("t")
    assert config["model"]["z_dim"] == 2  # the command line overrides the file
    assert config["vae"]["likelihood"] == {"name": "gaussian", "scale": 0.2, "learn_scale": False}
    assert read_settings("mine.toml")["train"] == {"batch_size": 64, "epochs": 1, "device": "cpu"}
    for text, message in [
        ('{"train": {"epoch": 2}}', "c.json: train.epoch is not a setting; TrainSettings has:"),
        ('{"train": {"epochs": "ten"}}', "c.json: train.epochs (--epochs) must be an integer"),
        ('{"model": {"beta": -1}}', "c.json: model.beta (--beta) must be >= 0"),
        ('{"optimizer": {}}', "c.json: unknown section 'optimizer'"),
        ('{"train": ', "c.json is not valid JSON"),
    ]:
        Path("c.json").write_text(text)
        res = runner.invoke(cli, ["fit", "--config", "c.json", "--out", "never"])
        assert res.exit_code == 2, (text, res.output)
        assert len(res.output.strip().splitlines()) == 1 and message in res.output, res.output
        assert not Path("never").exists()


def test_resume_refuses_settings_it_cannot_change(runner):
    assert runner.invoke(cli, ["fit", *TINY, "--out", "a"]).exit_code == 0
    res = runner.invoke(cli, ["fit", "--resume", "a", "--batch-size", "32", "--z-dim", "3"])
    assert res.exit_code == 2
    assert "--z-dim, --batch-size cannot be combined with --resume" in res.output
    res = runner.invoke(cli, ["fit", "--resume", "a", "--epochs", "2", "--lr", "1e-3",
                              "--no-progress"])
    assert res.exit_code == 0, res.output
    assert {k: runs.read_config("a")["train"][k] for k in ("epochs", "lr")} == {
        "epochs": 2, "lr": 1e-3}


def test_interruption_is_not_an_input_error():
    assert not issubclass(Interrupted, ValueError) and not issubclass(Interrupted, VaekitError)
    assert issubclass(ConfigError, ValueError)


def test_deterministic_mode_is_restored_after_fit(mnist_small):
    train_x, _ = mnist_small
    assert not torch.are_deterministic_algorithms_enabled()
    vaekit.fit(vaekit.VAE(z_dim=2), train_x[:128], epochs=1, batch_size=64, device="cpu",
               deterministic=True, progress=False, verbose=False)
    assert not torch.are_deterministic_algorithms_enabled()


# The package's layers: a module imports only from the layers above it (and its own).
LAYERS = [
    {"errors"},
    {"settings", "io", "devices", "plugins", "features", "sprites"},
    {"data", "quantize"},
    {"likelihoods", "nets", "distributed", "priors", "posteriors", "optim", "traces",
     "auxiliary"},
    {"pixelcnn"},
    {"building"},
    {"model"},
    {"adversarial", "vqvae", "semisupervised", "factor_vae"},
    {"objectives", "evaluation", "plots", "quality", "disentanglement"},
    {"runs", "tracking", "checks"},
    {"session"},
    {"train", "comparison", "prior_fit"},
    {"cli"},
    {"__main__", "__init__"},
]


def _imports(path: Path) -> set[str]:
    """The vaekit modules that a file imports, at any depth of the file (an AST scan)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vaekit"):
            parts = node.module.split(".")
            found |= {parts[1]} if len(parts) > 1 else {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("vaekit.")}
    return found


def test_modules_import_only_downwards():
    layer_of = {m: i for i, layer in enumerate(LAYERS) for m in layer}
    modules = {p.stem: p for p in (ROOT / "vaekit").glob("*.py")}
    assert set(modules) == set(layer_of)  # every module has its layer
    for name, path in modules.items():
        for dep in _imports(path) - {name}:
            assert layer_of[dep] < layer_of[name], \
                f"vaekit.{name} imports vaekit.{dep}, which is not above it"
    for path in (ROOT / "vaekit").glob("*.py"):  # public APIs of Pyro only
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pyro"):
                assert not any(a.name.startswith("_") for a in node.names), path.name


def test_checkpoint_at_step_zero_resumes_to_the_uninterrupted_run(mnist_small, tmp_path):
    """A run folder holds its initial weights and random state before the first step; a run
    that dies in its first step resumes from them and ends where an uninterrupted run ends."""
    from vaekit.errors import TrainingError
    from vaekit.likelihoods import LIKELIHOODS, Gaussian, register_likelihood

    @register_likelihood("test-nan-first-step")
    class NanFirstStep(Gaussian):
        calls = 0

        def forward(self, out):
            if self.training:
                NanFirstStep.calls += 1
                if NanFirstStep.calls == 1:
                    out = out * float("nan")
            return super().forward(out)

    train_x, test_x = mnist_small
    kw = dict(batch_size=128, device="cpu", progress=False, verbose=False)
    try:
        pyro.set_rng_seed(0)
        full = vaekit.fit(vaekit.VAE(z_dim=2, likelihood="gaussian"), train_x, test_x, epochs=2,
                          **kw)
        pyro.set_rng_seed(0)
        with pytest.raises(TrainingError, match="initial weights are kept"):
            vaekit.fit(vaekit.VAE(z_dim=2, likelihood="test-nan-first-step"), train_x, test_x,
                       epochs=2, run_dir=tmp_path / "r", **kw)
        pyro.set_rng_seed(123)  # resume must not depend on the global seed: all is in the folder
        resumed = vaekit.resume(tmp_path / "r", train_x, test_x, progress=False, verbose=False)
    finally:
        LIKELIHOODS.pop("test-nan-first-step")
    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]
    assert strip(resumed.history) == strip(full.history)

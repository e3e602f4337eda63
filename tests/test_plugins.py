"""A run folder that names code (its networks, its likelihood) is code: loading it imports nothing
the user did not ask for."""

import json
import subprocess
import sys
import uuid

import pyro
import pytest

import vaekit
from vaekit import runs
from vaekit.errors import ConfigError

PLANTED = '''
from pathlib import Path
Path("{marker}").write_text("imported")  # what a planted module could do: anything
from vaekit.nets import Encoder as _Base

class Encoder(_Base):
    pass
'''


@pytest.fixture(scope="module")
def run(mnist_root, tmp_path_factory):
    """A tiny trained run with vaekit's own networks."""
    from vaekit.data import load_mnist

    folder = tmp_path_factory.mktemp("plugins") / "run"
    train_x, _ = load_mnist(mnist_root, train=True, download=False, limit=128)
    pyro.set_rng_seed(0)
    vaekit.fit(vaekit.VAE(z_dim=2), train_x, epochs=1, batch_size=64, device="cpu",
               run_dir=folder, progress=False, verbose=False)
    return folder


def _plant(run, tmp_path, spec_of):
    """A copy of ``run`` whose config names an encoder in a module planted beside it."""
    name = f"planted_{uuid.uuid4().hex[:8]}"
    folder = tmp_path / "shared"
    folder.mkdir()
    marker = folder / "marker.txt"
    (folder / f"{name}.py").write_text(PLANTED.format(marker=marker))
    config = runs.read_config(run)
    config["vae"]["encoder"] = spec_of(name)
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "checkpoint.pt").write_bytes((run / "checkpoint.pt").read_bytes())
    return folder, name, marker


def test_a_planted_network_module_is_not_imported_by_the_cli(run, tmp_path, mnist_root):
    folder, name, marker = _plant(run, tmp_path, lambda n: f"{n}:Encoder")
    env = {"VAEKIT_DATA": str(mnist_root), "PATH": "/usr/bin:/bin"}
    cmd = [sys.executable, "-m", "vaekit", "sample", ".", "--device", "cpu"]
    p = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and not marker.exists(), p.stderr
    assert f"from the module '{name}', which is not imported" in p.stderr
    assert "--trust-plugins" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    p = subprocess.run([*cmd, "--trust-plugins"], cwd=folder, env=env, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0 and marker.exists(), p.stderr  # asked for: imported, and it works
    assert (folder / "sample.png").exists()


def test_a_stdlib_module_named_by_a_run_is_not_imported(run, tmp_path, mnist_root):
    folder, _, _ = _plant(run, tmp_path, lambda n: "this:Encoder")
    p = subprocess.run([sys.executable, "-m", "vaekit", "evaluate", str(folder), "--device",
                        "cpu", "--limit", "8", "--num-samples", "2", "--no-download"],
                       env={"VAEKIT_DATA": str(mnist_root), "PATH": "/usr/bin:/bin"},
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "from the module 'this'" in p.stderr
    assert "Beautiful is better than ugly" not in p.stdout  # `import this` prints the Zen


def test_load_and_resume_refuse_then_accept_when_trusted_or_imported(run, tmp_path,
                                                                     monkeypatch):
    folder, name, marker = _plant(run, tmp_path, lambda n: f"{n}:Encoder")
    monkeypatch.syspath_prepend(str(folder))
    with pytest.raises(ConfigError, match=f"module '{name}', which is not imported"):
        vaekit.load(folder)
    with pytest.raises(ConfigError, match="trust_plugins=True"):
        vaekit.resume(folder, torch_images(), epochs=2, progress=False)
    assert not marker.exists()
    vae = vaekit.load(folder, trust_plugins=True)
    assert marker.exists() and type(vae.encoder).__module__ == name
    assert vaekit.load(folder) is not None  # now imported: the user's own module is used
    monkeypatch.delitem(sys.modules, name)


def torch_images():
    import torch

    return torch.zeros(128, 1, 28, 28, dtype=torch.uint8)


def test_a_registered_likelihood_names_its_module(tmp_path, monkeypatch, mnist_small):
    name = f"lik_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(
        "from vaekit.likelihoods import Bernoulli, register_likelihood\n\n"
        f"@register_likelihood('{name}')\nclass Mine(Bernoulli):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    module = __import__(name)
    train_x, _ = mnist_small
    pyro.set_rng_seed(0)
    vaekit.fit(vaekit.VAE(z_dim=2, likelihood=name), train_x[:128], epochs=1, batch_size=64,
               device="cpu", run_dir=tmp_path / "r", progress=False, verbose=False)
    assert runs.read_config(tmp_path / "r")["vae"]["likelihood_module"] == name
    # a new session: neither the module nor its registration
    vaekit.likelihoods.LIKELIHOODS.pop(name)
    monkeypatch.delitem(sys.modules, name)
    with pytest.raises(ConfigError, match=f"the likelihood '{name}' comes from the module "
                                          f"'{name}', which is not imported"):
        vaekit.load(tmp_path / "r")
    vae = vaekit.load(tmp_path / "r", trust_plugins=True)
    assert vae.likelihood.name == name
    vaekit.likelihoods.LIKELIHOODS.pop(name)
    del module


def test_a_likelihood_class_from_the_command_line(runner, tmp_path, monkeypatch):
    """`--likelihood package.module:Class` for a Likelihood that is not registered."""
    from vaekit.cli import cli
    from vaekit.errors import PluginError

    name = f"lik_cls_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(
        "from vaekit.likelihoods import Bernoulli\n\nclass Sharp(Bernoulli):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    res = runner.invoke(cli, ["fit", "--likelihood", f"{name}:Sharp", "--limit-train", "128",
                              "--limit-test", "64", "--batch-size", "64", "--epochs", "1",
                              "--z-dim", "2", "--no-progress", "--device", "cpu",
                              "--no-download", "--out", "s"])
    assert res.exit_code == 0, res.output
    config = runs.read_config("s")
    assert config["model"]["likelihood"] == f"{name}:Sharp"
    assert config["vae"]["likelihood"] == {"class": f"{name}:Sharp", "binarize": True}
    monkeypatch.delitem(sys.modules, name)
    with pytest.raises(PluginError, match=f"module '{name}', which is not imported"):
        vaekit.load("s")
    assert type(vaekit.load("s", trust_plugins=True).likelihood).__name__ == "Sharp"

"""Every example runs as written with tiny arguments; a new example must be listed here."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TINY = ["--epochs", "1", "--limit-train", "256"]
CASES = {  # example: (arguments, text its output must contain, files it must write)
    "quickstart.py": (TINY, "test -ELBO", ["runs/quickstart/quickstart_samples.png",
                                            "runs/quickstart/checkpoint.pt"]),
    "custom_likelihood.py": (TINY, "rebuilt: MyLaplace", ["runs/custom_likelihood/config.json"]),
    "custom_networks.py": (TINY, "encoder recorded as __main__:MLPEncoder",
                           ["runs/custom_networks/metrics.csv"]),
    "beta_sweep.py": (TINY + ["--betas", "0.5", "4"], "traverse_beta4.png",
                      ["runs/beta_sweep/traverse_beta0.5.png"]),
    "plain_pyro_svi.py": (TINY, "epoch 1: -ELBO", []),
}


def test_every_example_is_listed():
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_example_runs(name, tmp_path, mnist_root):
    args, expected, files = CASES[name]
    env = {**os.environ, "VAEKIT_DATA": str(mnist_root)}
    p = subprocess.run([sys.executable, str(EXAMPLES / name), *args], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert expected in p.stdout
    for f in files:
        assert (tmp_path / f).is_file(), f

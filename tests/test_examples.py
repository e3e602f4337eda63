"""Every example runs as written with tiny arguments; a new example must be listed here."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TINY = ["--epochs", "1", "--limit-train", "256"]
CASES = {  # id: (example, arguments, text its output must contain, files it must write)
    "quickstart": ("quickstart.py", TINY, "test -ELBO",
                   ["runs/quickstart/quickstart_samples.png", "runs/quickstart/checkpoint.pt"]),
    "custom_likelihood": ("custom_likelihood.py", TINY, "rebuilt: StudentT",
                          ["runs/custom_likelihood/config.json"]),
    "my_vaekit": ("my_vaekit.py", ["fit", "--likelihood", "student-t", "--out", "runs/st",
                                   "--no-progress", "--limit-test", "256", "--batch-size", "128",
                                   *TINY], "done: 1 epochs", ["runs/st/samples.png"]),
    "custom_networks": ("custom_networks.py", TINY, "encoder recorded as custom_networks:MLPEncoder",
                        ["runs/custom_networks/metrics.csv"]),
    "custom_prior": ("custom_prior.py", TINY + ["--limit-test", "64", "--num-samples", "5"],
                     "IWAE -log p(x)",
                     ["runs/custom_prior/checkpoint.pt"]),
    "custom_posterior": ("custom_posterior.py", TINY + ["--limit-test", "64", "--num-samples", "5"],
                         "IWAE -log p(x)",
                         ["runs/custom_posterior/checkpoint.pt"]),
    "custom_logger": ("custom_logger.py", TINY, "test -ELBO by epoch:",
                      ["runs/custom_logger/log.jsonl"]),
    "wandb_logger": ("wandb_logger.py", [], "WandbLogger implements vaekit.tracking.Logger", []),
    "beta_sweep": ("beta_sweep.py", TINY + ["--betas", "0.5", "4"],
                   "wrote runs/beta_sweep/beta_sweep.png", ["runs/beta_sweep/beta_sweep.png"]),
    "vae_gan": ("vae_gan.py", TINY + ["--samples", "200"], "pixel squared error",
                ["runs/vae_gan/checkpoint.pt"]),
    "vq_vae": ("vq_vae.py", TINY + ["--prior-epochs", "1"], "with the uniform one",
               ["runs/vq_vae/prior/checkpoint.pt"]),
    "semi_supervised": ("semi_supervised.py", TINY, "test accuracy",
                        ["runs/semi_supervised/labelled.json",
                         "runs/semi_supervised/analogies.png"]),
    "plain_pyro_svi": ("plain_pyro_svi.py", TINY, "epoch 1: -ELBO",
                       ["runs/plain_pyro_svi/samples.png"]),
    "plain_pyro_svi-own": ("plain_pyro_svi.py", TINY + ["--model", "own", "--out", "own"],
                           "epoch 1: -ELBO", ["own/samples.png"]),
}


def _run(args, cwd, env):
    p = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    return p


def test_every_example_is_listed():
    listed = {example for example, *_ in CASES.values()}
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(listed)


@pytest.mark.parametrize("case", sorted(CASES))
def test_example_runs(case, tmp_path, mnist_root):
    name, args, expected, files = CASES[case]
    env = {**os.environ, "VAEKIT_DATA": str(mnist_root), "PYTHONDONTWRITEBYTECODE": "1"}
    p = _run([str(EXAMPLES / name), *args], tmp_path, env)
    assert expected in p.stdout
    for f in files:
        assert (tmp_path / f).is_file(), f
    if name == "custom_networks.py":  # the model rebuilds outside the example, as its docstring says
        _run(["-m", "vaekit", "sample", "runs/custom_networks", "--trust-plugins"], tmp_path,
             {**env, "PYTHONPATH": str(EXAMPLES)})
        assert (tmp_path / "runs/custom_networks/sample.png").is_file()

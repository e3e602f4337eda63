"""Shared fixtures: a clean param store, seeds and validation before each test; MNIST slices."""

import os
from pathlib import Path

import pyro
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
MNIST_ROOT = Path(os.environ.get("VAEKIT_DATA") or REPO.parent / "shared" / "data" / "mnist")


@pytest.fixture(autouse=True)
def _clean_pyro():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    pyro.enable_validation(True)
    yield
    pyro.clear_param_store()


@pytest.fixture(scope="session")
def mnist_root() -> Path:
    if not (MNIST_ROOT / "MNIST" / "raw" / "train-images-idx3-ubyte").exists():
        pytest.fail(f"real MNIST is needed at {MNIST_ROOT} (set VAEKIT_DATA)")
    return MNIST_ROOT


@pytest.fixture(scope="session")
def mnist_small(mnist_root):
    """512 training and 256 test images, uint8."""
    from vaekit.data import load_mnist

    train_x, _ = load_mnist(mnist_root, train=True, download=False, limit=512)
    test_x, _ = load_mnist(mnist_root, train=False, download=False, limit=256)
    return train_x, test_x


@pytest.fixture
def tiny_images():
    return torch.rand(8, 1, 28, 28)


@pytest.fixture
def runner(monkeypatch, mnist_root, tmp_path):
    """A click CliRunner working in a fresh temporary folder, with VAEKIT_DATA set."""
    from click.testing import CliRunner

    monkeypatch.setenv("VAEKIT_DATA", str(mnist_root))
    monkeypatch.chdir(tmp_path)
    return CliRunner()

"""Shared fixtures: a clean param store, seeds and validation before each test; MNIST slices."""

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pyro
import pytest
import torch

# A shell that starts the suite in the background without job control (``bash .ci/run &`` in a
# script) ignores SIGINT, and processes inherit that across exec: the tests' vaekit subprocesses
# would never see the Ctrl-C they are sent. The suite stands for a user at a terminal, where
# SIGINT is not ignored; Python's own handler is not inherited (children start with the default).
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

REPO = Path(__file__).resolve().parents[1]
MNIST_ROOT = Path(os.environ.get("VAEKIT_DATA") or REPO.parent / "shared" / "data" / "mnist")


_MNIST_FIXTURES = {"mnist_root", "mnist_small", "runner", "mnist_2048", "workdir", "env"}
_SLOW = {"test_traces.py::test_two_layer_elbo_agrees_with_a_trace_only_estimator",
         "test_traces.py::test_each_site_kl_is_an_unbiased_estimate_of_its_elbo_term"}


def pytest_collection_modifyitems(config, items):
    """The tiers: ``mnist`` for every test that reads real MNIST (through a fixture),
    ``processes`` for those that start processes, ``slow`` for the long ones. ``make test``
    runs them all; ``pytest -m "not mnist and not processes and not slow"`` is the fast tier."""
    for item in items:
        if _MNIST_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.mnist)
        if item.path.name == "test_distributed.py" or "subprocess" in item.name:
            item.add_marker(pytest.mark.processes)
        if any(item.nodeid.endswith(s) or f"{s}[" in item.nodeid for s in _SLOW) \
                or item.path.name in ("test_distributed.py", "test_quality.py"):
            item.add_marker(pytest.mark.slow)


def synthetic_images(n: int = 64, shape: tuple[int, ...] = (1, 28, 28), seed: int = 0
                     ) -> torch.Tensor:
    """uint8 images of bright rectangles on black, with no download and no data set: for the
    fast tests of code that trains (their numbers mean nothing)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, *shape, dtype=torch.uint8)
    h, w = shape[-2:]
    for i in range(n):
        top, left = (int(v) for v in torch.randint(0, h // 2, (2,), generator=g))
        x[i, :, top : top + h // 3, left : left + w // 3] = 255
    return x


@pytest.fixture
def synthetic():
    """`synthetic_images`: 64 training and 32 test images."""
    return synthetic_images(64), synthetic_images(32, seed=1)


@contextlib.contextmanager
def lock_held_elsewhere(folder):
    """Another process holding `vaekit.io.FolderLock` on ``folder`` for the block; yields it."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from vaekit.io import FolderLock; "
         "lock = FolderLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(60)",
         str(folder)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        yield holder
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()


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

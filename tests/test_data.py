import pytest
import torch

from vaekit.data import load_mnist, resolve_data_root, to_unit
from vaekit.errors import DataError


def test_data_root_order(monkeypatch, tmp_path):
    monkeypatch.setenv("VAEKIT_DATA", str(tmp_path / "env"))
    assert resolve_data_root(tmp_path / "cli") == tmp_path / "cli"
    assert resolve_data_root(None) == tmp_path / "env"
    monkeypatch.delenv("VAEKIT_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert resolve_data_root(None) == tmp_path / "cache" / "vaekit" / "data"


def test_real_mnist_as_tensors(mnist_root):
    x, y = load_mnist(mnist_root, train=False, download=False, limit=100)
    assert x.shape == (100, 1, 28, 28) and x.dtype == torch.uint8
    assert y.shape == (100,) and y[:3].tolist() == [7, 2, 1]  # the well-known first test labels
    u = to_unit(x)
    assert u.dtype == torch.float32 and 0 <= u.min() and u.max() == 1


def test_missing_data_says_where_the_files_go(tmp_path):
    with pytest.raises(DataError) as e:
        load_mnist(tmp_path, download=False)
    msg = str(e.value)
    assert "\n" not in msg
    assert str(tmp_path / "MNIST" / "raw") in msg and "train-images-idx3-ubyte" in msg


def test_to_unit_refuses_integer_images_other_than_uint8():
    with pytest.raises(DataError, match="uint8 or floating"):
        to_unit(torch.zeros(2, dtype=torch.int64))

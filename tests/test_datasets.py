"""load_dataset: torchvision sets from files the tests write in torchvision's layout, image folders
written with PIL, and the errors when they are missing. Nothing is downloaded."""

import pickle

import numpy as np
import pytest
import torch
import torchvision.datasets.cifar as tv_cifar
from click.testing import CliRunner
from PIL import Image

from vaekit import runs
from vaekit.cli import cli
from vaekit.data import load_dataset, load_mnist
from vaekit.errors import ConfigError, DataError


def _write_idx(path, array, magic):
    """An uncompressed idx-ubyte file, as torchvision's (Fashion-)MNIST reads from ``raw/``."""
    array = np.asarray(array, dtype=np.uint8)
    header = magic.to_bytes(4, "big") + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    path.write_bytes(header + array.tobytes())


def _luma(rgb):
    """PIL's ITU-R 601-2 luma of an RGB triple, rounded."""
    r, g, b = rgb
    return round(0.299 * r + 0.587 * g + 0.114 * b)


def test_fashion_mnist_from_idx_files(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    train, test = rng.integers(0, 256, (6, 28, 28)), rng.integers(0, 256, (3, 28, 28))
    _write_idx(raw / "train-images-idx3-ubyte", train, 2051)
    _write_idx(raw / "train-labels-idx1-ubyte", [9, 0, 0, 3, 1, 2], 2049)
    _write_idx(raw / "t10k-images-idx3-ubyte", test, 2051)
    _write_idx(raw / "t10k-labels-idx1-ubyte", [4, 5, 6], 2049)
    x, y = load_dataset("fashion-mnist", tmp_path, download=False)
    assert x.shape == (6, 1, 28, 28) and x.dtype == torch.uint8 and x.is_contiguous()
    assert y.dtype == torch.int64 and y.tolist() == [9, 0, 0, 3, 1, 2]
    assert torch.equal(x[:, 0], torch.as_tensor(train, dtype=torch.uint8))
    x, y = load_dataset("fashion-mnist", tmp_path, train=False, download=False, limit=2)
    assert y.tolist() == [4, 5] and torch.equal(x[:, 0], torch.as_tensor(test[:2], dtype=torch.uint8))
    rgb, _ = load_dataset("fashion-mnist", tmp_path, train=False, download=False, channels=3)
    assert rgb.shape == (3, 3, 28, 28) and (rgb == rgb[:, :1]).all()  # gray repeated
    big, _ = load_dataset("fashion-mnist", tmp_path, train=False, download=False, size=64)
    assert big.shape == (3, 1, 64, 64) and big.dtype == torch.uint8


def _fake_cifar(root, per_batch=3):
    """A CIFAR-10 python folder: rows of 3072 bytes, the red plane, then green, then blue."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(1)
    batches = {}
    for i, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        data = rng.integers(0, 256, (per_batch, 3 * 32 * 32), dtype=np.uint8)
        batches[name] = (data, [(i + j) % 10 for j in range(per_batch)])
        (folder / name).write_bytes(pickle.dumps({"data": data, "labels": batches[name][1]}))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))
    return batches


def test_cifar10_from_python_batches(tmp_path, monkeypatch):
    batches = _fake_cifar(tmp_path)
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)  # our md5s differ
    x, y = load_dataset("cifar10", tmp_path, download=False)  # the five training batches
    assert x.shape == (15, 3, 32, 32) and x.dtype == torch.uint8 and x.is_contiguous()
    assert y.tolist() == [label for i in range(1, 6) for label in batches[f"data_batch_{i}"][1]]
    first = torch.as_tensor(batches["data_batch_1"][0][0]).reshape(3, 32, 32)  # CHW, as stored
    assert torch.equal(x[0], first)
    test, test_y = load_dataset("cifar10", tmp_path, train=False, download=False)
    assert test.shape == (3, 3, 32, 32) and test_y.tolist() == batches["test_batch"][1]
    gray, _ = load_dataset("cifar10", tmp_path, train=False, download=False, channels=1, size=28)
    assert gray.shape == (3, 1, 28, 28)
    gray, _ = load_dataset("cifar10", tmp_path, train=False, download=False, channels=1)
    r, g, b = (int(v) for v in test[0, :, 5, 7])
    assert abs(int(gray[0, 0, 5, 7]) - _luma((r, g, b))) <= 1


@pytest.mark.parametrize("name, folder, file", [
    ("mnist", "MNIST/raw", "train-images-idx3-ubyte"),
    ("fashion-mnist", "FashionMNIST/raw", "t10k-labels-idx1-ubyte"),
    ("cifar10", "cifar-10-batches-py", "data_batch_5"),
])
def test_missing_sets_say_where_torchvision_wants_them(tmp_path, name, folder, file):
    with pytest.raises(DataError) as e:
        load_dataset(name, tmp_path, download=False)
    msg = str(e.value)
    assert "\n" not in msg and "downloading is off" in msg
    assert str(tmp_path / folder) in msg and file in msg


def test_unreadable_set_files_are_not_called_missing(tmp_path):
    (tmp_path / "cifar-10-batches-py").mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]:
        (tmp_path / "cifar-10-batches-py" / name).write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="could not be read"):
        load_dataset("cifar10", tmp_path, download=False)


def test_unknown_set_and_impossible_options(tmp_path):
    with pytest.raises(DataError, match="unknown data set 'svhn'; choose one of: mnist, fashion-mnist, "
                                        "cifar10, sprites, sprites:small, or folder:PATH"):
        load_dataset("svhn", tmp_path)
    with pytest.raises(ConfigError, match="size must be a positive integer"):
        load_dataset("mnist", tmp_path, size=0)
    with pytest.raises(ConfigError, match="channels must be 1"):
        load_dataset("folder:" + str(tmp_path), channels=2)


def _image_folder(root):
    """Two classes of 40×40 RGB images, one of them with a nested folder, and things to skip."""
    colours = {"apples": [(200, 10, 10), (180, 40, 0)], "pears": [(10, 200, 10), (0, 120, 60)]}
    for cls, cs in colours.items():
        (root / cls).mkdir(parents=True)
        for i, c in enumerate(cs):
            Image.new("RGB", (40, 40), c).save(root / cls / f"{i}.png")
    (root / "pears" / "more").mkdir()
    Image.new("RGB", (40, 40), (90, 90, 90)).save(root / "pears" / "more" / "2.jpg", quality=100)
    (root / "pears" / "notes.txt").write_text("not an image")
    (root / "pears" / ".hidden.png").write_text("skipped")
    (root / ".cache").mkdir()
    Image.new("RGB", (40, 40)).save(root / ".cache" / "x.png")  # not a class
    return colours


def test_image_folder_with_classes(tmp_path):
    colours = _image_folder(tmp_path / "fruit")
    x, y = load_dataset(f"folder:{tmp_path / 'fruit'}")  # defaults: 32×32 RGB
    assert x.shape == (5, 3, 32, 32) and x.dtype == torch.uint8 and x.is_contiguous()
    assert y.dtype == torch.int64 and y.tolist() == [0, 0, 1, 1, 1]
    assert x[0, :, 16, 16].tolist() == list(colours["apples"][0])
    gray, _ = load_dataset(f"folder:{tmp_path / 'fruit'}", size=28, channels=1)
    assert gray.shape == (5, 1, 28, 28)
    assert int(gray[2, 0, 10, 10]) == _luma(colours["pears"][0])
    big, y = load_dataset(f"folder:{tmp_path / 'fruit'}", size=64, limit=3)
    assert big.shape == (3, 3, 64, 64) and y.tolist() == [0, 0, 1]


def test_flat_image_folder_has_label_zero(tmp_path):
    for i in range(3):
        Image.new("L", (40, 30), 50 * i).save(tmp_path / f"{i}.png")
    x, y = load_dataset(f"folder:{tmp_path}", size=28, channels=3)
    assert x.shape == (3, 3, 28, 28) and y.tolist() == [0, 0, 0]
    assert x[:, :, 5, 5].tolist() == [[0, 0, 0], [50, 50, 50], [100, 100, 100]]


def test_image_folder_errors_name_the_folder(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(f"folder:{tmp_path / 'nowhere'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError) as e:
        load_dataset(f"folder:{tmp_path / 'empty'}")
    assert str(tmp_path / "empty") in str(e.value) and "expected image files (.bmp" in str(e.value)
    (tmp_path / "texts" / "a").mkdir(parents=True)
    (tmp_path / "texts" / "a" / "1.txt").write_text("x")
    (tmp_path / "texts" / "a" / "2.csv").write_text("x")
    with pytest.raises(DataError, match=r"no images in .*texts, only 2 other file\(s\)"):
        load_dataset(f"folder:{tmp_path / 'texts'}")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "x.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match=r"x\.png is not a readable image"):
        load_dataset(f"folder:{tmp_path / 'broken'}")


def test_mnist_through_load_dataset(mnist_root):
    x, y = load_dataset("mnist", mnist_root, train=False, download=False, limit=8)
    x0, y0 = load_mnist(mnist_root, train=False, download=False, limit=8)
    assert torch.equal(x, x0) and torch.equal(y, y0) and y[:3].tolist() == [7, 2, 1]
    x, _ = load_dataset("mnist", mnist_root, train=False, download=False, limit=8, size=32,
                        channels=3)
    assert x.shape == (8, 3, 32, 32) and x.dtype == torch.uint8


def test_cli_folder_data_and_new_likelihoods(monkeypatch, mnist_root, tmp_path):
    monkeypatch.setenv("VAEKIT_DATA", str(mnist_root))
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(16):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (36, 36, 3), dtype=np.uint8)
                        ).save(folder / f"{i}.png")
    base = ["fit", "--epochs", "1", "--batch-size", "8", "--z-dim", "2", "--no-progress",
            "--device", "cpu", "--no-download"]
    r = CliRunner().invoke(cli, [*base, "--data", f"folder:{folder}", "--image-size", "32",
                                 "--likelihood", "gaussian", "--scale-mode", "pixel",
                                 "--out", "f"])
    assert r.exit_code == 0, r.output
    cfg = runs.read_config("f")
    assert cfg["vae"]["image_shape"] == [3, 32, 32] and cfg["data"]["image_size"] == 32
    r = CliRunner().invoke(cli, ["evaluate", "f", "--num-samples", "3", "--device", "cpu",
                                 "--no-progress"])
    assert r.exit_code == 0, r.output
    for lik in ("continuous-bernoulli", "discretized-logistic", "laplace"):
        r = CliRunner().invoke(cli, [*base, "--limit-train", "64", "--limit-test", "32",
                                     "--likelihood", lik, "--out", lik])
        assert r.exit_code == 0, r.output
        assert runs.read_config(lik)["vae"]["likelihood"]["name"] == lik


def test_corrupt_mnist_files_are_called_corrupt_not_missing(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (raw / name).write_bytes(np.random.default_rng(0).bytes(1000))
    with pytest.raises(DataError, match="MNIST files in .* are corrupt"):
        load_mnist(tmp_path, train=True, download=False)


def test_a_decompression_bomb_in_an_image_folder_is_a_clear_error(tmp_path, monkeypatch):
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(np.zeros((64, 64, 3), dtype=np.uint8)).save(folder / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64 x 64 > 2 x 1000: a "bomb"
    with pytest.raises(DataError, match="too large to decode safely"):
        load_dataset(f"folder:{folder}")

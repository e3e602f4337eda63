"""Image data as tensors: MNIST and others through torchvision, or any folder of images.

    train_x, train_y = load_mnist(train=True)     # uint8 [60000, 1, 28, 28], int64 [60000]
    x, y = load_dataset("cifar10", train=False)   # uint8 [10000, 3, 32, 32], int64 [10000]
    x = to_unit(train_x[:16])                     # float in [0, 1]

Data sets are loaded once into uint8 tensors (no per-image transforms) and kept whole on the
training device. The data root comes from the ``root`` argument (``--data-root``), else the
``VAEKIT_DATA`` environment variable, else ``~/.cache/vaekit/data`` (``$XDG_CACHE_HOME`` is
honoured).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import torch

from vaekit.errors import ConfigError, DataError
from vaekit.settings import DataSpec
from vaekit.sprites import VARIANTS, sprites

__all__ = ["resolve_data_root", "load_mnist", "load_dataset", "load_data", "load_splits",
           "Splits", "DATASETS", "to_unit", "MNIST_FILES"]

MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

DATASETS = ("mnist", "fashion-mnist", "cifar10", "sprites", "sprites:small")
"""Data sets by name (torchvision; the sprites rendered by `vaekit.sprites`); ``folder:PATH``
reads any folder of images, ``dsprites:PATH`` DeepMind's dSprites file."""

SPRITES_TEST = 5000
"""Images of a sprites data set that `load_dataset` gives as its test split (drawn from all)."""

_TORCHVISION_FILES = {
    # name: (folder under the root that torchvision reads, files it needs there)
    "fashion-mnist": ("FashionMNIST/raw", ", ".join(MNIST_FILES)),
    "cifar10": ("cifar-10-batches-py", "data_batch_1 ... data_batch_5, test_batch, batches.meta"),
}


def resolve_data_root(root: str | os.PathLike[str] | None = None) -> Path:
    """The data root: ``root`` if given, else ``$VAEKIT_DATA``, else a cache folder."""
    if root:
        return Path(root).expanduser()
    if os.environ.get("VAEKIT_DATA"):
        return Path(os.environ["VAEKIT_DATA"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "vaekit" / "data"


def load_mnist(
    root: str | os.PathLike[str] | None = None,
    *,
    train: bool = True,
    download: bool = True,
    limit: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load MNIST images and labels as tensors (no per-image transforms).

    Args:
        root: Data root holding ``MNIST/raw/*-ubyte`` (see `resolve_data_root`).
        train: The 60,000 training images, or the 10,000 test images.
        download: Download with torchvision when the files are missing.
        limit: Keep only the first ``limit`` images.

    Returns:
        ``(images, labels)``: uint8 ``[N, 1, 28, 28]`` and int64 ``[N]``.

    Raises:
        DataError: when the files are missing and cannot be downloaded, or cannot be read.
    """
    from torchvision.datasets import MNIST

    path = resolve_data_root(root)
    try:
        ds = MNIST(str(path), train=train, download=download)
    except Exception as e:  # torchvision raises RuntimeError, URLError, OSError ...
        files = ", ".join(MNIST_FILES)
        raw = path / "MNIST" / "raw"
        if all((raw / f).is_file() for f in MNIST_FILES):  # there, but torchvision cannot read them
            raise DataError(f"the MNIST files in {raw} are corrupt ({type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else ''}); delete them to "
                            "download them again, or copy good ones there") from None
        why = "could not be downloaded" if download else "downloading is off"
        raise DataError(
            f"MNIST not found under {path} and {why} ({type(e).__name__}); put {files} in "
            f"{path / 'MNIST' / 'raw'}, or pass --data-root / set VAEKIT_DATA to a folder that "
            "has them"
        ) from None
    images, labels = ds.data.unsqueeze(1), ds.targets
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return images.contiguous(), labels.contiguous()


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """Images as float in [0, 1]: uint8 is divided by 255, floating point is returned as is."""
    if x.dtype == torch.uint8:
        return x.float().div_(255)
    if not x.is_floating_point():
        raise DataError(f"images must be uint8 or floating point, got {x.dtype}")
    return x


def load_dataset(
    name: str,
    root: str | os.PathLike[str] | None = None,
    *,
    train: bool = True,
    download: bool = True,
    limit: int | None = None,
    size: int | None = None,
    channels: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and labels of a data set, as uint8 ``[N, C, H, W]`` and int64 ``[N]`` tensors.

    Args:
        name: ``"mnist"``, ``"fashion-mnist"`` (1×28×28), ``"cifar10"`` (3×32×32), read with
            torchvision from ``root``, or ``"folder:PATH"``: the image files (PNG, JPEG, BMP,
            GIF, TIFF, WebP) in PATH, either in one sub-folder per class (labels 0, 1, ... in
            sorted folder order, files found recursively, like torchvision's ImageFolder) or
            directly in PATH (all label 0). Hidden files and folders are skipped. A folder has
            no split: the same files serve as training and test set. ``"sprites"`` and
            ``"sprites:small"`` are rendered by vaekit (`vaekit.sprites`, cached under the root),
            ``"dsprites:PATH"`` is DeepMind's file; labelled by shape, in a fixed random order,
            the test split `SPRITES_TEST` of the images.
        root: Data root for the torchvision sets (see `resolve_data_root`).
        train: Training or test split (torchvision sets).
        download: Download a torchvision set when it is missing.
        limit: Keep the first ``limit`` images (a folder reads only those).
        size: Resize to ``size`` × ``size``, bilinear with antialiasing (28, 32 and 64 fit the
            default nets; folder images are squashed to a square, not cropped). Default: the
            set's own size; 32 for folders.
        channels: 1 (grayscale, ITU-R 601 luma as PIL's ``"L"``) or 3 (RGB; grayscale is
            repeated). Default: the set's own; 3 for folders.

    Raises:
        DataError: for an unknown name, missing files (with the folder and files torchvision
            expects), or a folder without readable images.
        ConfigError: for a ``size`` or ``channels`` that cannot be.
    """
    if size is not None and not (isinstance(size, int) and size >= 1):
        raise ConfigError(f"size must be a positive integer (28, 32 or 64 fit the default nets), "
                          f"got {size!r}")
    if channels is not None and channels not in (1, 3):
        raise ConfigError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels!r}")
    if name == "mnist":
        x, y = load_mnist(root, train=train, download=download, limit=limit)
    elif name in ("fashion-mnist", "cifar10"):
        x, y = _torchvision_set(name, root, train, download, limit)
    elif name in VARIANTS or name.startswith("dsprites:"):
        x, y = _sprites(name, root, train, limit)
    elif name.startswith("folder:"):
        x, y = _image_folder(Path(name[len("folder:"):]).expanduser(), size or 32, channels or 3,
                             limit)
        return x, y
    else:
        raise DataError(f"unknown data set {name!r}; choose one of: {', '.join(DATASETS)}, "
                        "or folder:PATH (dsprites:PATH: DeepMind's dSprites file)")
    return _resize(x, size, channels), y


def _torchvision_set(name: str, root: str | os.PathLike[str] | None, train: bool, download: bool,
                     limit: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    from torchvision import datasets

    path = resolve_data_root(root)
    cls = {"fashion-mnist": datasets.FashionMNIST, "cifar10": datasets.CIFAR10}[name]
    folder, files = _TORCHVISION_FILES[name]
    where = path / folder
    try:
        ds = cls(str(path), train=train, download=download)
    except Exception as e:  # torchvision raises RuntimeError, URLError, OSError, pickle errors ...
        if where.is_dir() and any(where.iterdir()):
            detail = " ".join(str(e).split())  # one line
            why = f"its files in {where} could not be read ({type(e).__name__}: {detail})"
        else:
            why = "could not be downloaded" if download else "downloading is off"
            why = f"it is not under {path} and {why} ({type(e).__name__})"
        raise DataError(f"{name}: {why}; put torchvision's files ({files}) in {where}, or pass "
                        "--data-root / set VAEKIT_DATA to a folder that has them") from None
    data = torch.as_tensor(ds.data)
    x = data.unsqueeze(1) if data.dim() == 3 else data.permute(0, 3, 1, 2)  # CIFAR: HWC -> CHW
    y = torch.as_tensor(ds.targets, dtype=torch.long)
    if limit is not None:
        x, y = x[:limit], y[:limit]
    return x.contiguous(), y


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def _sprites(name: str, root: str | os.PathLike[str] | None, train: bool, limit: int | None
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """A sprites set (`vaekit.sprites`) in a fixed random order (seed 0; the grid's own order
    would put one shape in the validation split), labelled by shape; its test split is the first
    `SPRITES_TEST` images of that order, which are also training images: like dSprites it has no
    held-out images, and the disentanglement metrics read the whole grid."""
    truth = sprites(name, resolve_data_root(root) / "sprites")
    order = torch.randperm(len(truth.images), generator=torch.Generator().manual_seed(0))
    if not train:
        order = order[:SPRITES_TEST]
    if limit is not None:
        order = order[:limit]
    return truth.images[order], truth.classes[order, 0]


def _image_folder(path: Path, size: int, channels: int, limit: int | None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    from PIL import Image, UnidentifiedImageError

    if not path.is_dir():
        raise DataError(f"image folder {path} does not exist; give folder:PATH of a folder of "
                        "images (or of one sub-folder of images per class)")
    classes = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if classes:  # one sub-folder per class, searched recursively
        groups = [(i, sorted(f for f in c.rglob("*") if not _hidden(f, c))) for i, c in enumerate(classes)]
    else:  # a flat folder: label 0
        groups = [(0, sorted(f for f in path.iterdir() if not f.name.startswith(".")))]
    found = [(f, i) for i, fs in groups for f in fs if f.is_file()]
    files = [(f, i) for f, i in found if f.suffix.lower() in IMAGE_SUFFIXES]
    if limit is not None:
        files = files[:limit]
    if not files:
        others = f", only {len(found)} other file(s)" if found else ""
        raise DataError(f"no images in {path}{others}: expected image files "
                        f"({', '.join(sorted(IMAGE_SUFFIXES))}) directly in it or in one "
                        "sub-folder per class")
    mode = "L" if channels == 1 else "RGB"
    images = []
    for f, _ in files:
        try:
            with Image.open(f) as im:
                im = im.convert(mode).resize((size, size), Image.Resampling.BILINEAR)
                images.append(torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8)
                              .reshape(size, size, channels))
        except (UnidentifiedImageError, OSError) as e:
            raise DataError(f"{f} is not a readable image ({e}); remove it from {path}") from None
        except Image.DecompressionBombError:
            raise DataError(f"{f} is too large to decode safely (PIL's decompression-bomb "
                            f"limit); shrink it or remove it from {path}") from None
        except ValueError as e:  # e.g. a text or colour-profile chunk that inflates too far
            raise DataError(f"{f} cannot be decoded safely ({e}); remove it from {path}"
                            ) from None
    x = torch.stack(images).permute(0, 3, 1, 2).contiguous()
    return x, torch.tensor([i for _, i in files], dtype=torch.long)


def _hidden(f: Path, top: Path) -> bool:
    """Whether ``f`` or a folder between it and ``top`` is hidden (its name starts with a dot)."""
    return any(part.startswith(".") for part in f.relative_to(top).parts)


def _resize(x: torch.Tensor, size: int | None, channels: int | None) -> torch.Tensor:
    """Resize uint8 images (bilinear) and convert between 1 and 3 channels."""
    if channels is not None and channels != x.shape[1]:
        if channels == 3 and x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        elif channels == 1 and x.shape[1] == 3:
            w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
            x = (x.float() * w).sum(1, keepdim=True).round().to(torch.uint8)
        else:
            raise ConfigError(f"channels must be 1 or 3, got {channels}")
    if size is not None and size != x.shape[-1]:
        x = torch.nn.functional.interpolate(x.float(), size=(size, size), mode="bilinear",
                                            antialias=True, align_corners=False)
        x = x.round().clamp(0, 255).to(torch.uint8)
    return x.contiguous()


def load_data(spec: DataSpec, train: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The training or test images and labels a `DataSpec` describes (see `load_dataset`)."""
    return load_dataset(spec.dataset, resolve_data_root(spec.root), train=train,
                        download=spec.download, limit=spec.limit_train if train else spec.limit_test,
                        size=spec.image_size, channels=spec.channels)


class Splits(NamedTuple):
    """Images and labels of the training, validation (None without one) and test splits."""

    train: tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor] | None
    test: tuple[torch.Tensor, torch.Tensor]


def load_splits(spec: DataSpec) -> Splits:
    """The training, validation and test splits a `DataSpec` describes.

    The validation images are the last ``spec.val_size(n)`` of the n training images (MNIST:
    the usual 50,000 / 10,000 split), never trained on; ``limit_train`` then keeps the first N
    of the images left for training, and ``limit_test`` the first N test images.

    Raises:
        ConfigError: if the validation split would leave no training images.
    """
    test = load_data(spec, train=False)
    if spec.val == 0 or (spec.val is None and spec.limit_train is not None):
        return Splits(load_data(spec, train=True), None, test)
    x, y = load_dataset(spec.dataset, resolve_data_root(spec.root), train=True,
                        download=spec.download, size=spec.image_size, channels=spec.channels)
    n_val = spec.val_size(len(x))
    if not n_val:
        return Splits((x, y), None, test)
    if n_val >= len(x):
        raise ConfigError(f"val {n_val} holds out every one of the {len(x)} training images; "
                          "lower --val (0: no validation split)")
    train_x, train_y = x[:-n_val], y[:-n_val]
    if spec.limit_train is not None:
        train_x, train_y = train_x[: spec.limit_train], train_y[: spec.limit_train]
    return Splits((train_x, train_y), (x[-n_val:], y[-n_val:]), test)

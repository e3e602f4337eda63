"""Image data as tensors: MNIST through torchvision, kept whole on the training device.

    train_x, train_y = load_mnist(train=True)     # uint8 [60000, 1, 28, 28], int64 [60000]
    x = to_unit(train_x[:16])                     # float in [0, 1]

The data root comes from the ``root`` argument (``--data-root``), else the ``VAEKIT_DATA``
environment variable, else ``~/.cache/vaekit/data`` (``$XDG_CACHE_HOME`` is honoured).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from vaekit.errors import DataError

__all__ = ["resolve_data_root", "load_mnist", "to_unit", "MNIST_FILES"]

MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


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

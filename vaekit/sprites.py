"""Sprites with known factors, dSprites-like, rendered by vaekit: every combination of shape,
scale, orientation and position once, as 64x64 binary images.

    truth = sprites("sprites")                 # 737,280 images, rendered once and cached
    truth.images.shape, truth.classes.shape    # [737280, 1, 64, 64] uint8, [737280, 5] int64
    x = truth.images_of(truth.sample_factors(64, generator))

The factor grid is dSprites' (Matthey et al. 2017): 3 shapes (square, ellipse, heart), 6 scales
linear in [0.5, 1], 40 orientations in [0, 2π) and 32 x 32 positions in [0, 1]. The images are
vaekit's own, not byte-identical to DeepMind's file: a pixel is on when its centre lies inside
the shape, whose centre moves from 12 to 52 pixels across the canvas and whose size at scale 1
is a square of side 20, an ellipse of semi-axes 12 and 6, and a heart 20 pixels high. The
original file (``dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz``) loads with
``dsprites:PATH``. ``sprites:small`` (3 x 6 x 8 x 8 x 8 = 9,216 images) is for tests and quick
runs.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vaekit.errors import DataError

__all__ = ["FACTORS", "GroundTruth", "sprites", "render", "VARIANTS", "shape_area",
           "load_dsprites"]

FACTORS = ("shape", "scale", "orientation", "position x", "position y")
"""The factors of variation, in the order of `GroundTruth.classes`' columns."""

VARIANTS = {"sprites": (3, 6, 40, 32, 32), "sprites:small": (3, 6, 8, 8, 8)}
"""Each variant's number of values per factor."""

SIZE = 64
_SQUARE_HALF, _ELLIPSE_AXES, _HEART_HEIGHT = 10.0, (12.0, 6.0), 20.0


def factor_values(sizes: tuple[int, ...]) -> list[torch.Tensor]:
    """The values of each factor: shape indices, scales linear in [0.5, 1], orientations
    ``2π k / n`` and positions linear in [0, 1]."""
    return [torch.arange(sizes[0], dtype=torch.float64), torch.linspace(0.5, 1.0, sizes[1],
            dtype=torch.float64), torch.arange(sizes[2], dtype=torch.float64) * 2 * math.pi
            / sizes[2], torch.linspace(0, 1, sizes[3], dtype=torch.float64),
            torch.linspace(0, 1, sizes[4], dtype=torch.float64)]


def _inside(shape: int, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Whether points ``(u, v)`` of the shape's own frame (pixels at scale 1, v up) are in it."""
    if shape == 0:
        return (u.abs() <= _SQUARE_HALF) & (v.abs() <= _SQUARE_HALF)
    if shape == 1:
        a, b = _ELLIPSE_AXES
        return (u / a) ** 2 + (v / b) ** 2 <= 1
    s = _HEART_HEIGHT / 2.25  # the curve (x²+y²-1)³ = x²y³ spans y in [-1, 1.25]
    x, y = u / s, v / s + 0.125
    return (x * x + y * y - 1) ** 3 - x * x * y ** 3 <= 0


def shape_area(shape: int, scale: float = 1.0) -> float:
    """The shape's area in pixels at ``scale``: the square's and the ellipse's in closed form,
    the heart's by a fine numerical count."""
    if shape == 0:
        return (2 * _SQUARE_HALF * scale) ** 2
    if shape == 1:
        return math.pi * _ELLIPSE_AXES[0] * _ELLIPSE_AXES[1] * scale ** 2
    g = torch.linspace(-20, 20, 4001, dtype=torch.float64)
    u, v = torch.meshgrid(g, g, indexing="xy")
    return float(_inside(2, u, v).double().mean()) * 40 * 40 * scale ** 2


def render(sizes: tuple[int, ...]) -> torch.Tensor:
    """Every image of the factor grid ``sizes``, uint8 ``[N, 1, 64, 64]`` (0 or 255), in the
    order of `GroundTruth.classes` (the last factor fastest)."""
    shapes, scales, angles, xs, ys = factor_values(sizes)
    centre = SIZE * 0.5 + (torch.stack([xs, ys]) - 0.5) * 40  # 12 .. 52 pixels
    pix = torch.arange(SIZE, dtype=torch.float64) + 0.5
    dx = pix[None, :] - centre[0][:, None]  # [nx, 64]: column offsets
    dy = centre[1][:, None] - pix[None, :]  # [ny, 64]: row offsets, up positive
    out = torch.empty(math.prod(sizes), 1, SIZE, SIZE, dtype=torch.uint8)
    i = 0
    block = sizes[3] * sizes[4]
    for shape in range(sizes[0]):
        for scale in scales.tolist():
            for angle in angles.tolist():
                c, s = math.cos(angle), math.sin(angle)
                # [nx, ny, row, col]: rotate the offsets by -angle, into the shape's frame
                ddx, ddy = dx[:, None, None, :], dy[None, :, :, None]
                u = (c * ddx + s * ddy) / scale
                v = (-s * ddx + c * ddy) / scale
                mask = _inside(shape, u, v)
                out[i:i + block, 0] = mask.reshape(block, SIZE, SIZE).to(torch.uint8) * 255
                i += block
    return out


@dataclass
class GroundTruth:
    """Images with their factors: the full grid, so any combination can be looked up.

    Attributes:
        images: uint8 ``[N, 1, 64, 64]``.
        classes: int64 ``[N, len(FACTORS)]``, each factor's value index.
        sizes: Values per factor.
        name: The variant.
    """

    images: torch.Tensor
    classes: torch.Tensor
    sizes: tuple[int, ...]
    name: str

    def sample_factors(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` factor combinations drawn uniformly, ``[n, len(sizes)]``."""
        return torch.stack([torch.randint(k, (n,), generator=generator) for k in self.sizes], 1)

    def index_of(self, classes: torch.Tensor) -> torch.Tensor:
        """Row indices of factor combinations ``[n, F]`` (the grid's own order)."""
        strides = torch.tensor([math.prod(self.sizes[i + 1:]) for i in range(len(self.sizes))])
        return (classes * strides).sum(-1)

    def images_of(self, classes: torch.Tensor) -> torch.Tensor:
        """The images of factor combinations ``[n, F]``."""
        return self.images[self.index_of(classes)]


def _grid(sizes: tuple[int, ...]) -> torch.Tensor:
    return torch.cartesian_prod(*[torch.arange(k) for k in sizes]).reshape(-1, len(sizes))


def sprites(name: str = "sprites", root: str | os.PathLike[str] | None = None) -> GroundTruth:
    """The sprites variant ``name`` (`VARIANTS`), rendered and cached in ``root`` (as packed
    bits, ``sprites-3x6x40x32x32.npy``, 377 MB for the full grid) the first time.

    Raises:
        DataError: for an unknown variant.
    """
    if name.startswith("dsprites:"):
        return load_dsprites(Path(name[len("dsprites:"):]).expanduser())
    if name not in VARIANTS:
        raise DataError(f"unknown sprites variant {name!r}; use {', '.join(VARIANTS)} or "
                        "dsprites:PATH")
    sizes = VARIANTS[name]
    n = math.prod(sizes)
    images = None
    cache = None
    if root is not None:
        cache = Path(root) / f"sprites-{'x'.join(map(str, sizes))}.npy"
        if cache.exists():
            bits = np.load(cache)
            images = torch.from_numpy(np.unpackbits(bits, count=n * SIZE * SIZE).reshape(
                n, 1, SIZE, SIZE) * np.uint8(255))
    if images is None:
        images = render(sizes)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(".tmp.npy")
            np.save(tmp, np.packbits(images.numpy() > 0))
            os.replace(tmp, cache)
    return GroundTruth(images, _grid(sizes), sizes, name)


def load_dsprites(path: Path) -> GroundTruth:
    """DeepMind's ``dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz`` as a `GroundTruth`.

    Raises:
        DataError: if the file is missing or not that file.
    """
    try:
        with np.load(path) as f:
            imgs, classes = f["imgs"], f["latents_classes"]
    except (OSError, KeyError, ValueError) as e:
        raise DataError(f"cannot read the dSprites file {path} ({e}); give the path of "
                        "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz") from None
    images = torch.from_numpy(imgs.astype(np.uint8) * np.uint8(255))[:, None]
    return GroundTruth(images, torch.from_numpy(classes[:, 1:].astype(np.int64)),
                       VARIANTS["sprites"], "dsprites")

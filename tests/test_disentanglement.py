"""The disentanglement metrics on codes whose scores are known, and the sprites renderer."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vaekit.disentanglement import (
    beta_vae_score,
    dci,
    disentanglement,
    factor_vae_score,
    mig,
    sap,
)
from vaekit.sprites import VARIANTS, GroundTruth, _grid, render, shape_area, sprites

SIZES = (3, 4, 5, 6)


def toy_truth() -> GroundTruth:
    """A grid whose "images" are the factors' indices themselves, as floats."""
    classes = _grid(SIZES)
    return GroundTruth(classes.float(), classes, SIZES, "toy")


def noisy(scale: float = 0.05, mix: torch.Tensor | None = None, drop: int | None = None):
    """A representation: the factors (scaled to [0, 1]) plus noise, optionally mixed by ``mix``
    or with factor ``drop`` replaced by noise."""
    gen = torch.Generator().manual_seed(1)

    def rep(images: torch.Tensor) -> torch.Tensor:
        z = images / torch.tensor(SIZES, dtype=torch.float32)
        if drop is not None:
            z[:, drop] = torch.rand(len(z), generator=gen)
        z = z + scale * torch.randn(z.shape, generator=gen)
        return z @ mix if mix is not None else z

    return rep


def codes_of(truth: GroundTruth, rep, n: int, seed: int):
    f = truth.sample_factors(n, torch.Generator().manual_seed(seed))
    return rep(truth.images_of(f)).numpy().astype(np.float64), f.numpy()


def test_a_code_that_is_the_factors_scores_near_one():
    truth, rep = toy_truth(), noisy()
    c, f = codes_of(truth, rep, 2000, 0)
    c2, f2 = codes_of(truth, rep, 1000, 1)
    assert mig(c, f) > 0.85
    d = dci(c, f, c2, f2)
    assert d["disentanglement"] > 0.9 and d["completeness"] > 0.9 and d["informativeness"] > 0.9
    assert sap(c, f, c2, f2) > 0.2  # one linear SVM per dimension: the middle classes of a
    # factor are not separable on a line, so even a perfect code's gap is far below 1
    gen = torch.Generator().manual_seed(2)
    assert factor_vae_score(truth, rep, 2000, 300, 150, generator=gen)["eval_accuracy"] > 0.95
    assert beta_vae_score(truth, rep, 300, 150, generator=gen)["eval_accuracy"] > 0.9


def test_a_rotated_code_scores_low_on_mig():
    truth = toy_truth()
    q, _ = torch.linalg.qr(torch.randn(4, 4, generator=torch.Generator().manual_seed(3)))
    c, f = codes_of(truth, noisy(mix=q), 2000, 0)
    aligned, _ = codes_of(truth, noisy(), 2000, 0)
    assert mig(c, f) < 0.3 < mig(aligned, f)
    c2, f2 = codes_of(truth, noisy(mix=q), 1000, 1)
    a2, _ = codes_of(truth, noisy(), 1000, 1)
    assert sap(c, f, c2, f2) < sap(aligned, f, a2, f2) - 0.1


def test_a_code_that_ignores_a_factor_loses_its_completeness_and_informativeness():
    truth = toy_truth()
    full = dci(*codes_of(truth, noisy(), 1500, 0), *codes_of(truth, noisy(), 800, 1))
    blind = dci(*codes_of(truth, noisy(drop=3), 1500, 0),
                *codes_of(truth, noisy(drop=3), 800, 1))
    assert blind["informativeness"] < full["informativeness"] - 0.15  # factor 3 at chance
    assert blind["completeness"] < full["completeness"] - 0.1


def test_constant_codes_score_zero_never_nan():
    truth = toy_truth()

    def rep(images: torch.Tensor) -> torch.Tensor:
        return torch.zeros(len(images), 3)

    scores = disentanglement(truth, rep, n_points=300, n_votes=40)
    values = [v for v in scores.to_dict().values()]
    assert all(math.isfinite(v) for v in values)
    assert scores.mig == scores.factor_vae == scores.dci_disentanglement == scores.sap == 0.0
    assert scores.active_dims == 0


def test_the_sprites_grid_has_every_combination_once_and_shapes_of_the_right_area():
    sizes = VARIANTS["sprites"]
    assert math.prod(sizes) == 737_280
    small = sprites("sprites:small")
    assert len(small.images) == math.prod(VARIANTS["sprites:small"]) == 9216
    assert len(torch.unique(small.classes, dim=0)) == len(small.classes)
    assert torch.equal(small.index_of(small.classes), torch.arange(len(small.classes)))
    one = render((3, 2, 1, 1, 1))  # each shape at scales 0.5 and 1, centred, unrotated
    for shape in range(3):
        for j, scale in enumerate((0.5, 1.0)):
            area = float(one[2 * shape + j].double().sum() / 255)
            assert area == pytest.approx(shape_area(shape, scale), rel=0.05)
    assert torch.equal(render((1, 1, 2, 2, 2)), render((1, 1, 2, 2, 2)))  # deterministic
    assert set(small.images.unique().tolist()) == {0, 255}


def test_sprites_are_cached_and_read_back(tmp_path):
    a = sprites("sprites:small", tmp_path)
    assert (tmp_path / "sprites-3x6x8x8x8.npy").exists()
    b = sprites("sprites:small", tmp_path)
    assert torch.equal(a.images, b.images)

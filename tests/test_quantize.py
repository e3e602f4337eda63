"""The vector quantizer against brute force and the moving-average formulas by hand."""

from __future__ import annotations

import math

import pytest
import torch

import vaekit
from vaekit.quantize import VectorQuantizer, perplexity


def test_each_vector_goes_to_its_nearest_code_and_gradients_pass_straight_through():
    torch.manual_seed(0)
    vq = VectorQuantizer(16, 3, decay=0.0)
    z = torch.randn(2, 3, 4, 5, requires_grad=True)
    q = vq(z)
    vectors = z.detach().movedim(1, -1).reshape(-1, 3)
    brute = torch.stack([((vq.codebook.detach() - v) ** 2).sum(1).argmin() for v in vectors])
    assert torch.equal(q.codes.flatten(), brute)
    assert q.codes.shape == (2, 4, 5) and q.quantized.shape == z.shape
    e = vq.codebook.detach()[q.codes].movedim(-1, 1)
    torch.testing.assert_close(q.quantized.detach(), e)
    q.quantized.sum().backward()
    assert torch.equal(z.grad, torch.ones_like(z))  # straight through: identity to z_e
    per_image = ((z.detach() - e) ** 2).sum((1, 2, 3))
    torch.testing.assert_close(q.commitment.detach(), per_image)
    torch.testing.assert_close(q.codebook_loss.detach(), per_image)


def test_the_codebook_loss_moves_codes_toward_their_vectors_and_commitment_only_the_encoder():
    vq = VectorQuantizer(4, 2, decay=0.0)
    z = torch.randn(3, 2, 2, 2, requires_grad=True)
    q = vq(z)
    q.commitment.sum().backward()
    assert vq.codebook.grad is None and z.grad is not None
    z.grad = None
    q = vq(z)
    q.codebook_loss.sum().backward()
    assert z.grad is None and vq.codebook.grad.abs().sum() > 0


def test_the_moving_averages_follow_the_formulas_with_laplace_smoothing():
    torch.manual_seed(1)
    vq = VectorQuantizer(3, 2, decay=0.9, eps=1e-5, dead_below=0.0)
    book = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    vq.codebook.copy_(book)
    vq.sums.copy_(book)
    vq.counts.fill_(1.0)
    x = torch.tensor([[0.5, 0.0], [1.5, 0.0], [9.0, 1.0]])  # two to code 0, one to code 1
    vq.train()
    q = vq(x.view(3, 2, 1, 1))
    assert q.codes.flatten().tolist() == [0, 0, 1] and q.used == 2
    counts = 0.9 * torch.ones(3) + 0.1 * torch.tensor([2.0, 1.0, 0.0])
    sums = 0.9 * book + 0.1 * torch.stack([x[0] + x[1], x[2], torch.zeros(2)])
    n = counts.sum()
    smoothed = (counts + 1e-5) / (n + 3e-5) * n
    torch.testing.assert_close(vq.counts, counts)
    torch.testing.assert_close(vq.codebook, sums / smoothed[:, None])
    vq.eval()
    before = vq.codebook.clone()
    vq(x.view(3, 2, 1, 1))
    assert torch.equal(vq.codebook, before)  # evaluation leaves the averages alone


def test_a_dead_code_is_reseeded_with_an_encoder_vector():
    torch.manual_seed(2)
    vq = VectorQuantizer(4, 2, decay=0.5, dead_below=0.05)
    x = torch.randn(64, 2) * 0.01 + 5  # far from every code but one gets them all
    vq.train()
    for _ in range(8):
        vq(x.view(64, 2, 1, 1))
    rows = [c for c in vq.codebook]
    assert all(((x - c) ** 2).sum(1).min() < 1e-3 for c in rows)  # every code is now data


def test_perplexity_is_the_number_of_codes_used_equally():
    assert perplexity(torch.arange(8).repeat(5), 8) == pytest.approx(8)
    assert perplexity(torch.zeros(10, dtype=torch.long), 8) == pytest.approx(1)
    p = torch.tensor([0.5, 0.25, 0.25])
    codes = torch.tensor([0, 0, 1, 2])
    assert perplexity(codes, 3) == pytest.approx(math.exp(-(p * p.log()).sum().item()))


def test_bad_shapes_and_settings_are_one_line_errors():
    with pytest.raises(vaekit.ConfigError, match=r"takes \[batch, 3, \.\.\.\]"):
        VectorQuantizer(4, 3)(torch.zeros(2, 4, 1, 1))
    with pytest.raises(vaekit.ConfigError, match="decay must lie in"):
        VectorQuantizer(4, 3, decay=1.0)
    with pytest.raises(vaekit.ConfigError, match="K >= 1"):
        VectorQuantizer(0, 3)


@pytest.mark.parametrize("size", [28, 32])
def test_the_grid_nets_map_images_to_a_quarter_size_grid_and_back(size):
    from vaekit.nets import GridDecoder, GridEncoder

    enc, dec = GridEncoder((1, size, size), dim=8, hidden=16), GridDecoder((1, size, size), 8, 16)
    x = torch.rand(2, 1, size, size)
    grid = enc(x)
    assert grid.shape == (2, 8, size // 4, size // 4)
    q = VectorQuantizer(5, 8)(grid)
    assert dec(q.quantized).shape == x.shape
    assert dec(q.quantized[None]).shape == (1, 2, 1, size, size)  # leading dimensions kept
    with pytest.raises(vaekit.ConfigError, match="not divisible by 4"):
        GridEncoder((1, 30, 30))


def test_the_codes_of_forwards_output_are_the_ones_it_assigned_without_a_second_search():
    torch.manual_seed(0)
    vq = VectorQuantizer(16, 4, decay=0.0)
    z_e = torch.randn(3, 4, 5, 5)
    q = vq(z_e)
    searches = []
    assign = vq.assign
    vq.assign = lambda flat: searches.append(1) or assign(flat)  # type: ignore[method-assign]
    again = vq.codes_of(q.quantized.detach().clone())  # the same values, another tensor
    assert torch.equal(again, q.codes) and not searches
    particle = vq.codes_of(q.quantized.detach()[None])  # a particle dimension in front
    assert torch.equal(particle, q.codes[None]) and not searches
    vq.codes_of(q.quantized.detach() + 1e-3)  # other values: a real search
    assert len(searches) == 1
    vq.load_state_dict(vq.state_dict())  # a codebook loaded anew forgets the last codes
    assert torch.equal(vq.codes_of(q.quantized.detach()), q.codes) and len(searches) == 2

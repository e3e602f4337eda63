import pytest
import torch
from torch import nn

from vaekit.errors import ConfigError
from vaekit.nets import Block, Decoder, Encoder, default_layers


def test_seed_architecture_exactly():
    enc = Encoder((1, 28, 28), 32)
    convs = [m for m in enc.net if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding) for c in convs] == [
        (1, 16, (4, 4), (2, 2), (0, 0)),
        (16, 32, (4, 4), (2, 2), (0, 0)),
        (32, 64, (4, 4), (2, 2), (0, 0)),
    ]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in enc.net) == 2
    acts = [m for m in enc.net if isinstance(m, nn.LeakyReLU)]
    assert len(acts) == 2 and all(a.negative_slope == 0.2 for a in acts)

    dec = Decoder((1, 28, 28), 32)
    tconvs = [m for m in dec.net if isinstance(m, nn.ConvTranspose2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size[0], c.stride[0]) for c in tconvs] == [
        (32, 256, 3, 2), (256, 128, 4, 1), (128, 64, 3, 2), (64, 1, 4, 2),
    ]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in dec.net) == 3
    assert isinstance(dec.net[-1], nn.ConvTranspose2d)  # last block: no norm, no activation


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (3, 64, 64), (1, 64, 64)])
@pytest.mark.parametrize("z_dim", [2, 32])
def test_shapes(shape, z_dim):
    enc, dec = Encoder(shape, z_dim), Decoder(shape, z_dim)
    x = torch.rand(5, *shape)
    z_loc, z_scale = enc(x)
    assert z_loc.shape == z_scale.shape == (5, z_dim)
    assert (z_scale > 0).all()
    assert dec(z_loc).shape == (5, *shape)
    assert dec(torch.randn(3, 4, z_dim)).shape == (3, 4, *shape)  # extra batch dims


def test_decoder_extra_channels_for_likelihood_parameters():
    assert Decoder((3, 32, 32), 8, out_channels=6)(torch.randn(2, 8)).shape == (2, 6, 32, 32)


@pytest.mark.parametrize("shape", [(1, 30, 30), (1, 28, 32)])
def test_unsupported_sizes_are_refused(shape):
    with pytest.raises(ConfigError, match="not supported"):
        default_layers(shape, 8)


def test_custom_blocks_are_checked():
    with pytest.raises(ConfigError, match="not 1x1"):
        Encoder((1, 28, 28), 4, blocks=[Block(16, 4, 2), Block(8, 4, 2)])
    with pytest.raises(ConfigError, match="not 28x28"):
        Decoder((1, 28, 28), 4, blocks=[Block(16, 4, 1), Block(1, 4, 2)])

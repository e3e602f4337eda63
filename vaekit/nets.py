"""DCGAN-style convolutional networks: an `Encoder` for q(z|x) and a `Decoder` for p(x|z).

    enc = Encoder(image_shape=(1, 28, 28), z_dim=32)
    z_loc, z_scale = enc(x)                 # each [batch, 32]
    logits = Decoder((1, 28, 28), 32)(z_loc)  # [batch, 1, 28, 28]

The default layers for 1x28x28 reproduce the seed notebook's nets exactly; 32x32 and 64x64
images (any channel count) get the usual DCGAN stack of stride-2, kernel-4 layers. `MLPEncoder`
and `MLPDecoder` are the fully connected nets of the published MNIST figures; `make_nets` builds
either family by name (``--nets dcgan|mlp[:H]``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from vaekit.errors import ConfigError

__all__ = ["Block", "Encoder", "Decoder", "MLPEncoder", "MLPDecoder", "ConditionalEncoder",
           "ConditionalDecoder", "Discriminator", "GridEncoder", "GridDecoder",
           "TwoLevelGridEncoder", "TwoLevelGridDecoder", "Classifier", "MLPClassifier",
           "default_layers", "make_nets", "make_classifier", "NETS"]


@dataclass(frozen=True)
class Block:
    """One (transposed) convolution: output channels, kernel size, stride and padding."""

    channels: int
    kernel: int
    stride: int
    padding: int = 0


def default_layers(image_shape: Sequence[int], z_dim: int) -> tuple[list[Block], list[Block]]:
    """Encoder and decoder layers for an image shape.

    Args:
        image_shape: ``(channels, height, width)``; height and width must be 28, 32 or 64 and equal.
        z_dim: Latent dimension.

    Returns:
        ``(encoder_blocks, decoder_blocks)``; the encoder's last block has ``2 * z_dim`` channels
        (location and log-scale heads), the decoder's last block has the image's channel count.

    Raises:
        ConfigError: for an image size the default nets cannot take.
    """
    c, h, w = image_shape
    if h != w or h not in (28, 32, 64):
        raise ConfigError(
            f"image size {h}x{w} is not supported by the default networks; "
            "use 28x28, 32x32 or 64x64 images (resize them) or pass your own encoder and decoder"
        )
    if h == 28:  # the seed notebook's nets, exactly
        enc = [Block(16, 4, 2), Block(32, 4, 2), Block(2 * z_dim, 4, 2)]  # 28 -> 13 -> 5 -> 1
        dec = [Block(256, 3, 2), Block(128, 4, 1), Block(64, 3, 2), Block(c, 4, 2)]  # 1->3->6->13->28
        return enc, dec
    n = {32: 3, 64: 4}[h]  # stride-2 halvings down to 4x4
    widths = [16 * 2**i for i in range(n)]  # 16, 32, 64(, 128)
    enc = [Block(ch, 4, 2, 1) for ch in widths] + [Block(2 * z_dim, 4, 1, 0)]
    dec_widths = [64 * 2**i for i in reversed(range(n))]  # (512,) 256, 128, 64
    dec = [Block(dec_widths[0], 4, 1, 0)]  # 1 -> 4
    dec += [Block(ch, 4, 2, 1) for ch in dec_widths[1:]] + [Block(c, 4, 2, 1)]
    return enc, dec


class Encoder(nn.Module):
    """Conv classifier with two heads: the location and the positive scale of q(z|x).

    Blocks are Conv2d + BatchNorm + LeakyReLU(0.2); the last conv has ``2 * z_dim`` channels and
    a 1x1 output, split into ``z_loc`` and ``log z_scale``.

    Args:
        image_shape: ``(channels, height, width)`` of the input images.
        z_dim: Latent dimension.
        blocks: Layers to use instead of `default_layers`.
    """

    def __init__(
        self, image_shape: Sequence[int], z_dim: int, blocks: Sequence[Block] | None = None
    ) -> None:
        super().__init__()
        self.image_shape = tuple(image_shape)
        self.z_dim = z_dim
        blocks = list(blocks) if blocks is not None else default_layers(image_shape, z_dim)[0]
        if blocks[-1].channels != 2 * z_dim:
            raise ConfigError(f"the encoder's last block needs 2*z_dim = {2 * z_dim} channels")
        layers: list[nn.Module] = []
        in_ch = self.image_shape[0]
        for b in blocks[:-1]:
            layers += [
                nn.Conv2d(in_ch, b.channels, b.kernel, b.stride, b.padding),
                nn.BatchNorm2d(b.channels),
                nn.LeakyReLU(0.2, inplace=True),
            ]
            in_ch = b.channels
        last = blocks[-1]
        layers.append(nn.Conv2d(in_ch, last.channels, last.kernel, last.stride, last.padding))
        self.net = nn.Sequential(*layers)
        size = _out_size(self.image_shape[1:], blocks, transposed=False)
        if size != (1, 1):
            raise ConfigError(
                f"the encoder maps {self.image_shape[1]}x{self.image_shape[2]} images to "
                f"{size[0]}x{size[1]}, not 1x1: change its blocks or the image size"
            )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Map images ``[batch, C, H, W]`` to ``(z_loc, z_scale)``, each ``[batch, z_dim]``."""
        h = self.net(x).flatten(1)
        z_loc, z_log_scale = h.chunk(2, dim=-1)
        return z_loc, z_log_scale.exp()


class Discriminator(nn.Module):
    """The DCGAN discriminator of a VAE-GAN: the seed encoder's conv stack with one logit out.

    Blocks are Conv2d + norm + LeakyReLU(0.2), with no norm in the first (as DCGAN's). The norm
    is per image, GroupNorm with one group (LayerNorm over channels and positions), not DCGAN's
    BatchNorm: a hidden block's features of an image then depend on that image alone, so the
    feature likelihood built on them (`vaekit.likelihoods.DiscriminatorFeatures`) is a density
    per image whatever the batch, and the features have unit scale from the start.

    Args:
        image_shape: ``(channels, height, width)`` of the images (28, 32 or 64 square).
        blocks: Layers to use instead of the encoder's `default_layers` (the last block's
            channel count is replaced by 1, the logit).
    """

    def __init__(self, image_shape: Sequence[int], blocks: Sequence[Block] | None = None) -> None:
        super().__init__()
        self.image_shape = tuple(image_shape)
        blocks = list(blocks) if blocks is not None else default_layers(image_shape, 1)[0]
        self.hidden = nn.ModuleList()
        in_ch = self.image_shape[0]
        for i, b in enumerate(blocks[:-1]):
            norm = nn.GroupNorm(1, b.channels) if i else nn.Identity()
            self.hidden.append(nn.Sequential(
                nn.Conv2d(in_ch, b.channels, b.kernel, b.stride, b.padding), norm,
                nn.LeakyReLU(0.2)))
            in_ch = b.channels
        last = blocks[-1]
        self.head = nn.Conv2d(in_ch, 1, last.kernel, last.stride, last.padding)
        if _out_size(self.image_shape[1:], blocks, transposed=False) != (1, 1):
            raise ConfigError("the discriminator's blocks must map the images to 1x1")

    @property
    def layers(self) -> int:
        """Its hidden blocks, the layers whose features can be read (1 ... `layers`)."""
        return len(self.hidden)

    def forward(self, x: torch.Tensor, layer: int | None = None) -> torch.Tensor:
        """The logit of "real" per image ``[batch]``, or with ``layer`` the flattened output of
        hidden block ``layer`` (1-based) ``[batch, features]``."""
        h = x
        for i, block in enumerate(self.hidden, start=1):
            h = block(h)
            if i == layer:
                return h.flatten(1)
        return self.head(h).flatten()


class Decoder(nn.Module):
    """Transposed-conv generator from ``z`` to the likelihood's parameters for each pixel.

    Blocks are ConvTranspose2d + BatchNorm + ReLU; the last block has no norm and no activation
    (its output is e.g. Bernoulli logits or a Gaussian location).

    Args:
        image_shape: ``(channels, height, width)`` of the images to generate.
        z_dim: Latent dimension.
        blocks: Layers to use instead of `default_layers`.
        out_channels: Output channels, when a likelihood needs more than one value per image
            channel (default: the image's channel count).
    """

    def __init__(
        self,
        image_shape: Sequence[int],
        z_dim: int,
        blocks: Sequence[Block] | None = None,
        out_channels: int | None = None,
    ) -> None:
        super().__init__()
        self.image_shape = tuple(image_shape)
        self.z_dim = z_dim
        blocks = list(blocks) if blocks is not None else default_layers(image_shape, z_dim)[1]
        out_channels = out_channels or self.image_shape[0]
        layers: list[nn.Module] = []
        in_ch = z_dim
        for b in blocks[:-1]:
            layers += [
                nn.ConvTranspose2d(in_ch, b.channels, b.kernel, b.stride, b.padding),
                nn.BatchNorm2d(b.channels),
                nn.ReLU(inplace=True),
            ]
            in_ch = b.channels
        last = blocks[-1]
        layers.append(nn.ConvTranspose2d(in_ch, out_channels, last.kernel, last.stride, last.padding))
        self.net = nn.Sequential(*layers)
        size = _out_size((1, 1), blocks, transposed=True)
        if size != self.image_shape[1:]:
            raise ConfigError(
                f"the decoder makes {size[0]}x{size[1]} images, not "
                f"{self.image_shape[1]}x{self.image_shape[2]}: change its blocks or the image size"
            )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Map latents ``[..., z_dim]`` to ``[..., out_channels, H, W]``."""
        batch = z.shape[:-1]
        out = self.net(z.reshape(-1, self.z_dim, 1, 1))
        return out.reshape(batch + out.shape[1:])


def _out_size(size: Sequence[int], blocks: Sequence[Block], transposed: bool) -> tuple[int, ...]:
    """Spatial size after a stack of (transposed) convolutions."""
    out = []
    for n in size:
        for b in blocks:
            if transposed:
                n = (n - 1) * b.stride - 2 * b.padding + b.kernel
            else:
                n = (n + 2 * b.padding - b.kernel) // b.stride + 1
        out.append(n)
    return tuple(out)


class MLPEncoder(nn.Module):
    """Fully connected encoder: the flattened image through hidden layers to two heads.

    The nets of the published MNIST VAE figures (Burda et al. 2015: two layers of 200 tanh
    units; Tomczak & Welling 2018: two of 300), here with SiLU activations.

    Args:
        image_shape: ``(channels, height, width)`` of the input images.
        z_dim: Latent dimension.
        hidden: Units of each hidden layer.
    """

    def __init__(self, image_shape: Sequence[int], z_dim: int,
                 hidden: Sequence[int] = (300, 300)) -> None:
        super().__init__()
        self.image_shape, self.z_dim = tuple(image_shape), z_dim
        sizes = [math.prod(self.image_shape), *hidden]
        layers: list[nn.Module] = [nn.Flatten()]
        for a, b in zip(sizes, sizes[1:]):
            layers += [nn.Linear(a, b), nn.SiLU()]
        layers.append(nn.Linear(sizes[-1], 2 * z_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Map images ``[batch, C, H, W]`` to ``(z_loc, z_scale)``, each ``[batch, z_dim]``."""
        z_loc, z_log_scale = self.net(x).chunk(2, dim=-1)
        return z_loc, z_log_scale.exp()


class MLPDecoder(nn.Module):
    """Fully connected decoder from ``z`` to the likelihood's parameters for each pixel.

    Args:
        image_shape: ``(channels, height, width)`` of the images to generate.
        z_dim: Latent dimension.
        hidden: Units of each hidden layer (in the order the data flows).
        out_channels: Output channels (see `Decoder`).
    """

    def __init__(self, image_shape: Sequence[int], z_dim: int,
                 hidden: Sequence[int] = (300, 300), out_channels: int | None = None) -> None:
        super().__init__()
        self.image_shape, self.z_dim = tuple(image_shape), z_dim
        self.out_shape = (out_channels or self.image_shape[0], *self.image_shape[1:])
        sizes = [z_dim, *hidden]
        layers: list[nn.Module] = []
        for a, b in zip(sizes, sizes[1:]):
            layers += [nn.Linear(a, b), nn.SiLU()]
        layers.append(nn.Linear(sizes[-1], math.prod(self.out_shape)))
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Map latents ``[..., z_dim]`` to ``[..., out_channels, H, W]``."""
        return self.net(z).reshape(*z.shape[:-1], *self.out_shape)


class _Residual(nn.Module):
    """``h + Conv1x1(ReLU(Conv3x3(ReLU(h))))``, the VQ-VAE's residual block."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.ReLU(), nn.Conv2d(channels, hidden, 3, 1, 1), nn.ReLU(),
                                 nn.Conv2d(hidden, channels, 1))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.net(h)


def _grid_size(image_shape: Sequence[int]) -> tuple[int, int]:
    c, h, w = image_shape
    if h % 4 or w % 4:
        raise ConfigError(f"the grid networks halve the image twice; {h}x{w} is not divisible "
                          "by 4 (resize it, e.g. to 28, 32 or 64)")
    return h // 4, w // 4


class GridEncoder(nn.Module):
    """The VQ-VAE's encoder (van den Oord et al. 2017): two stride-2 convolutions (the DCGAN
    family's kernel 4), a 3x3 convolution, two residual blocks and a 1x1 projection to ``dim``
    channels: images ``[batch, C, H, W]`` to a grid of vectors ``[batch, dim, H/4, W/4]``
    (7x7 for 28x28 images).

    Args:
        image_shape: ``(channels, height, width)``; height and width divisible by 4.
        dim: D, the size of each grid vector (the codebook's).
        hidden: Channels of the hidden layers.
    """

    def __init__(self, image_shape: Sequence[int], dim: int = 64, hidden: int = 128) -> None:
        super().__init__()
        self.image_shape, self.dim = tuple(image_shape), dim
        self.grid = _grid_size(image_shape)
        self.net = nn.Sequential(
            nn.Conv2d(self.image_shape[0], hidden // 2, 4, 2, 1), nn.ReLU(),
            nn.Conv2d(hidden // 2, hidden, 4, 2, 1), nn.ReLU(),
            nn.Conv2d(hidden, hidden, 3, 1, 1),
            _Residual(hidden, hidden // 4), _Residual(hidden, hidden // 4), nn.ReLU(),
            nn.Conv2d(hidden, dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The grid ``[batch, dim, H/4, W/4]`` of images ``x``."""
        return self.net(x)


class GridDecoder(nn.Module):
    """The VQ-VAE's decoder, `GridEncoder` mirrored: a grid ``[..., dim, H/4, W/4]`` to the
    likelihood's parameters ``[..., out_channels, H, W]``.

    Args:
        image_shape: ``(channels, height, width)`` of the images to make.
        dim: D, the size of each grid vector.
        hidden: Channels of the hidden layers.
        out_channels: Output channels (see `Decoder`; default the image's).
    """

    def __init__(self, image_shape: Sequence[int], dim: int = 64, hidden: int = 128,
                 out_channels: int | None = None) -> None:
        super().__init__()
        self.image_shape, self.dim = tuple(image_shape), dim
        self.grid = _grid_size(image_shape)
        self.net = nn.Sequential(
            nn.Conv2d(dim, hidden, 3, 1, 1),
            _Residual(hidden, hidden // 4), _Residual(hidden, hidden // 4), nn.ReLU(),
            nn.ConvTranspose2d(hidden, hidden // 2, 4, 2, 1), nn.ReLU(),
            nn.ConvTranspose2d(hidden // 2, out_channels or self.image_shape[0], 4, 2, 1))

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        """The parameters for grids ``e`` (leading dimensions kept)."""
        lead = e.shape[:-3]
        out = self.net(e.reshape(-1, *e.shape[-3:]))
        return out.reshape(*lead, *out.shape[1:])


def _top_grid(grid: Sequence[int]) -> tuple[int, int]:
    """The top grid of a two-level VQ-VAE: the bottom grid halved, rounded up (7x7 to 4x4)."""
    return tuple((g + 1) // 2 for g in grid)  # type: ignore[return-value]


class _Upsample(nn.Module):
    """A transposed 3x3 stride-2 convolution from the top grid back to the bottom grid's size."""

    def __init__(self, channels_in: int, channels_out: int, bottom: Sequence[int]) -> None:
        super().__init__()
        pad = tuple(1 - g % 2 for g in bottom)  # odd sizes come out exactly, even need one more
        self.conv = nn.ConvTranspose2d(channels_in, channels_out, 3, 2, 1, output_padding=pad)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.conv(h)


class TwoLevelGridEncoder(nn.Module):
    """The VQ-VAE-2's encoder (Razavi et al. 2019): `GridEncoder`'s layers give features ``h``
    on the bottom grid (H/4); a stride-2 convolution and a residual block give the top grid's
    vectors (half that, rounded up: 4x4 for 28x28 images); `merge` then makes the bottom grid's
    vectors from ``h`` and the quantized top grid, upsampled.

    Args:
        image_shape: ``(channels, height, width)``; height and width divisible by 4.
        dim: D, the size of each grid vector (both codebooks').
        hidden: Channels of the hidden layers.
    """

    def __init__(self, image_shape: Sequence[int], dim: int = 64, hidden: int = 128) -> None:
        super().__init__()
        self.image_shape, self.dim = tuple(image_shape), dim
        self.grid = _grid_size(image_shape)
        self.top_grid = _top_grid(self.grid)
        self.features = nn.Sequential(
            nn.Conv2d(self.image_shape[0], hidden // 2, 4, 2, 1), nn.ReLU(),
            nn.Conv2d(hidden // 2, hidden, 4, 2, 1), nn.ReLU(),
            nn.Conv2d(hidden, hidden, 3, 1, 1),
            _Residual(hidden, hidden // 4), _Residual(hidden, hidden // 4), nn.ReLU())
        self.top = nn.Sequential(nn.Conv2d(hidden, hidden, 3, 2, 1),
                                 _Residual(hidden, hidden // 4), nn.ReLU(),
                                 nn.Conv2d(hidden, dim, 1))
        self.up = _Upsample(dim, dim, self.grid)
        self.bottom = nn.Conv2d(hidden + dim, dim, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(h, z_e_top)``: the bottom grid's features ``[batch, hidden, H/4, W/4]`` and the
        top grid's vectors ``[batch, dim, *top_grid]`` of images ``x``."""
        h = self.features(x)
        return h, self.top(h)

    def merge(self, h: torch.Tensor, z_top: torch.Tensor) -> torch.Tensor:
        """The bottom grid's vectors ``[batch, dim, H/4, W/4]`` from the features ``h`` and
        the top grid's codes' vectors ``z_top`` (leading dimensions of ``z_top`` kept, such as
        a plate of particles; ``h`` is broadcast to them)."""
        lead = z_top.shape[:-3]
        top = z_top.reshape(-1, *z_top.shape[-3:])
        feats = h.expand(*lead, *h.shape[-3:]).reshape(-1, *h.shape[-3:])
        out = self.bottom(torch.cat([feats, self.up(top)], dim=1))
        return out.reshape(*lead, *out.shape[1:])


class TwoLevelGridDecoder(nn.Module):
    """The VQ-VAE-2's decoder: the top grid upsampled to the bottom grid's size, joined to the
    bottom grid, then `GridDecoder`'s layers: ``(z_bottom, z_top)`` to the likelihood's
    parameters ``[..., out_channels, H, W]``.

    Args:
        image_shape: ``(channels, height, width)`` of the images to make.
        dim: D, the size of each grid vector.
        hidden: Channels of the hidden layers.
        out_channels: Output channels (default the image's).
    """

    def __init__(self, image_shape: Sequence[int], dim: int = 64, hidden: int = 128,
                 out_channels: int | None = None) -> None:
        super().__init__()
        self.image_shape, self.dim = tuple(image_shape), dim
        self.grid = _grid_size(image_shape)
        self.up = _Upsample(dim, dim, self.grid)
        self.net = nn.Sequential(
            nn.Conv2d(2 * dim, hidden, 3, 1, 1),
            _Residual(hidden, hidden // 4), _Residual(hidden, hidden // 4), nn.ReLU(),
            nn.ConvTranspose2d(hidden, hidden // 2, 4, 2, 1), nn.ReLU(),
            nn.ConvTranspose2d(hidden // 2, out_channels or self.image_shape[0], 4, 2, 1))

    def forward(self, z_bottom: torch.Tensor, z_top: torch.Tensor) -> torch.Tensor:
        """The parameters for grids ``z_bottom`` and ``z_top`` (leading dimensions kept)."""
        lead = z_bottom.shape[:-3]
        bottom = z_bottom.reshape(-1, *z_bottom.shape[-3:])
        top = self.up(z_top.reshape(-1, *z_top.shape[-3:]))
        out = self.net(torch.cat([bottom, top], dim=1))
        return out.reshape(*lead, *out.shape[1:])


NETS = ("dcgan", "mlp")
"""The named network families: ``dcgan`` (the seed's conv nets, the default) and ``mlp``."""


def make_nets(name: str, image_shape: Sequence[int], z_dim: int, out_channels: int,
              num_classes: int = 0) -> tuple[nn.Module, nn.Module]:
    """The encoder and decoder of a named family: ``"dcgan"``, ``"mlp"`` or ``"mlp:H"``.

    ``mlp:H`` has two hidden layers of H units (default 300) in each net. With
    ``num_classes`` the conditional versions (`ConditionalEncoder`, `ConditionalDecoder`).

    Raises:
        ConfigError: for another name.
    """
    family, _, arg = name.partition(":")
    if family == "dcgan" and not arg:
        enc: Callable[..., nn.Module] = Encoder
        dec: Callable[..., nn.Module] = Decoder
    elif family == "mlp" and (not arg or (arg.isdigit() and int(arg) >= 1)):
        hidden = (int(arg),) * 2 if arg else (300, 300)
        enc = functools.partial(MLPEncoder, hidden=hidden)
        dec = functools.partial(MLPDecoder, hidden=hidden[::-1])
    else:
        raise ConfigError(f"unknown nets {name!r}; use dcgan, mlp or mlp:H (H hidden units)")
    if num_classes:
        return (ConditionalEncoder(image_shape, z_dim, num_classes, base=enc,
                                   flat=family == "mlp"),
                ConditionalDecoder(image_shape, z_dim, num_classes, out_channels=out_channels,
                                   base=dec))
    return enc(image_shape, z_dim), dec(image_shape, z_dim, out_channels=out_channels)


class ConditionalEncoder(nn.Module):
    """Encoder of q(z|x, y): the label's one-hot code enters as constant extra input channels,
    or, with ``flat``, beside the flattened image (as a fully connected net takes it: C*H*W + K
    inputs, not (C + K)*H*W).

    Args:
        image_shape: ``(channels, height, width)`` of the images.
        z_dim: Latent dimension.
        num_classes: Number of labels.
        blocks: Layers to use instead of `default_layers`.
        base: The encoder it wraps, built as ``base(image_shape_with_label_channels, z_dim)``
            (default `Encoder` with ``blocks``), or with ``flat`` as
            ``base((C*H*W + num_classes,), z_dim)``.
        flat: Append the one-hot code to the flattened image (for a fully connected ``base``).
    """

    def __init__(self, image_shape: Sequence[int], z_dim: int, num_classes: int,
                 blocks: Sequence[Block] | None = None,
                 base: Callable[..., nn.Module] | None = None, flat: bool = False) -> None:
        super().__init__()
        c, h, w = image_shape
        self.num_classes, self.flat = num_classes, flat
        base = base or functools.partial(Encoder, blocks=blocks)
        self.inner = base((c * h * w + num_classes,) if flat else (c + num_classes, h, w), z_dim)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(z_loc, z_scale)`` for images ``x`` with integer labels ``y`` (``[batch]``)."""
        code = nn.functional.one_hot(y, self.num_classes).to(x.dtype)
        if self.flat:
            return self.inner(torch.cat([x.flatten(1), code], dim=1))
        maps = code[:, :, None, None].expand(-1, -1, *x.shape[2:])
        return self.inner(torch.cat([x, maps], dim=1))


class ConditionalDecoder(nn.Module):
    """Decoder of p(x|z, y): ``z`` concatenated with the label's one-hot code.

    Args:
        image_shape: ``(channels, height, width)`` of the images.
        z_dim: Latent dimension.
        num_classes: Number of labels.
        blocks: Layers to use instead of `default_layers`.
        out_channels: Output channels (see `Decoder`).
        base: The decoder it wraps, built as ``base(image_shape, z_dim + num_classes,
            out_channels=out_channels)`` (default `Decoder` with ``blocks``).
    """

    def __init__(self, image_shape: Sequence[int], z_dim: int, num_classes: int,
                 blocks: Sequence[Block] | None = None, out_channels: int | None = None,
                 base: Callable[..., nn.Module] | None = None) -> None:
        super().__init__()
        self.num_classes = num_classes
        if base is None:
            blocks = blocks if blocks is not None else default_layers(image_shape, z_dim)[1]
            base = functools.partial(Decoder, blocks=blocks)
        self.inner = base(image_shape, z_dim + num_classes, out_channels=out_channels)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Likelihood parameters for latents ``z`` (``[..., batch, z_dim]``) and labels ``y``."""
        code = nn.functional.one_hot(y, self.num_classes).to(z.dtype)
        return self.inner(torch.cat([z, code.expand(*z.shape[:-1], -1)], dim=-1))


class Classifier(nn.Module):
    """Conv classifier of the DCGAN family, the logits of q(y|x): the default encoder's layout
    (`default_layers`) at twice its widths, every block Conv2d + BatchNorm + LeakyReLU(0.2),
    down to 128 channels at 1x1, then a linear layer to ``num_classes`` logits.

    Args:
        image_shape: ``(channels, height, width)`` of the images.
        num_classes: Number of classes.
    """

    def __init__(self, image_shape: Sequence[int], num_classes: int) -> None:
        super().__init__()
        self.image_shape, self.num_classes = tuple(image_shape), num_classes
        enc = default_layers(image_shape, 64)[0]
        blocks = [Block(2 * b.channels, b.kernel, b.stride, b.padding) for b in enc[:-1]]
        blocks.append(Block(128, enc[-1].kernel, enc[-1].stride, enc[-1].padding))
        layers: list[nn.Module] = []
        in_ch = self.image_shape[0]
        for b in blocks:
            layers += [nn.Conv2d(in_ch, b.channels, b.kernel, b.stride, b.padding),
                       nn.BatchNorm2d(b.channels), nn.LeakyReLU(0.2, inplace=True)]
            in_ch = b.channels
        self.net = nn.Sequential(*layers, nn.Flatten(), nn.Linear(in_ch, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The logits ``[batch, num_classes]`` of images ``[batch, C, H, W]``."""
        return self.net(x)


class MLPClassifier(nn.Module):
    """Fully connected classifier, the logits of q(y|x): hidden layers with SiLU (Pyro's M2
    example uses one of 500 units).

    Args:
        image_shape: ``(channels, height, width)`` of the images.
        num_classes: Number of classes.
        hidden: Units of each hidden layer.
    """

    def __init__(self, image_shape: Sequence[int], num_classes: int,
                 hidden: Sequence[int] = (300, 300)) -> None:
        super().__init__()
        sizes = [math.prod(tuple(image_shape)), *hidden]
        layers: list[nn.Module] = [nn.Flatten()]
        for a, b in zip(sizes, sizes[1:]):
            layers += [nn.Linear(a, b), nn.SiLU()]
        self.net = nn.Sequential(*layers, nn.Linear(sizes[-1], num_classes))
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The logits ``[batch, num_classes]`` of images ``[batch, C, H, W]``."""
        return self.net(x)


def make_classifier(name: str, image_shape: Sequence[int], num_classes: int) -> nn.Module:
    """The classifier q(y|x) of a network family (`make_nets`' names): `Classifier` for
    ``"dcgan"``, `MLPClassifier` with two layers of H units for ``"mlp:H"``."""
    family, _, arg = name.partition(":")
    if family == "mlp":
        return MLPClassifier(image_shape, num_classes, (int(arg),) * 2 if arg else (300, 300))
    make_nets(name, image_shape, 1, 1)  # the name's check
    return Classifier(image_shape, num_classes)

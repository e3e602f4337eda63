"""A learned prior over a VQ-VAE's code grid: a PixelCNN (van den Oord et al. 2016) whose
masked convolutions make each cell's distribution depend only on the cells before it in raster
order, so that log p(c) = Σ_i log p(c_i | c_<i) is an exact, normalised log-probability.

    prior = PixelCNNPrior(z_dim=64, k=512)        # built by `vaekit fit-prior` from a VQ run
    prior.bind_codebook(vae.posterior.quantizer, (7, 7))
    prior.log_prob_codes(codes)                   # [n] nats, codes [n, 7, 7]
    prior.temperature = 0.8; prior.sample_codes(16)

Why a PixelCNN and not a causal transformer: the grid is 7x7 (49 cells), where a few masked
convolutions see every earlier cell; it trains in minutes on a CPU and is what the VQ-VAE papers
use. It is the plain PixelCNN (a 7x7 type-A mask, then residual 3x3 type-B masks), not the gated
one: the plain one's receptive field has a blind spot (cells up and to the right of its
diagonal), which on a 7x7 grid with 5 layers leaves a few cells unseen; it stays a valid
autoregressive model, and the tests check the masks' causality and normalisation.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from vaekit.errors import ConfigError
from vaekit.priors import CodePrior

__all__ = ["MaskedConv2d", "PixelCNN", "PixelCNNPrior"]


class MaskedConv2d(nn.Conv2d):
    """A same-size convolution whose kernel sees only the cells before the centre in raster
    order: type ``"A"`` excludes the centre (the first layer, on the codes themselves), ``"B"``
    includes it (later layers, whose centre holds only earlier cells' information)."""

    def __init__(self, kind: str, in_channels: int, out_channels: int, size: int) -> None:
        super().__init__(in_channels, out_channels, size, padding=size // 2)
        if kind not in ("A", "B"):
            raise ConfigError(f"a mask is of type A or B, got {kind!r}")
        mask = torch.ones(size, size)
        c = size // 2
        mask[c, c + (kind == "B"):] = 0
        mask[c + 1:] = 0
        self.register_buffer("mask", mask[None, None])

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """The masked convolution of ``h``."""
        return F.conv2d(h, self.weight * self.mask, self.bias, padding=self.padding)


class _Block(nn.Module):
    def __init__(self, hidden: int, conditioned: bool = False) -> None:
        super().__init__()
        self.conv = MaskedConv2d("B", hidden, hidden, 3)
        self.out = nn.Conv2d(hidden, hidden, 1)
        self.cond = nn.Conv2d(hidden, hidden, 1) if conditioned else None

    def forward(self, h: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        a = self.conv(F.relu(h))
        if self.cond is not None and c is not None:
            a = a + self.cond(c)  # the condition is known everywhere: no mask
        return h + self.out(F.relu(a))


class PixelCNN(nn.Module):
    """Logits ``[n, K, h, w]`` of each cell's code given the earlier cells, for codes
    ``[n, h, w]``: an embedding, a 7x7 type-A masked convolution, ``layers`` residual type-B
    blocks and a 1x1 head. With ``conditioned`` it also takes a coarser grid of codes (a
    VQ-VAE-2's top grid), embedded, resized to the grid (nearest cell) and added in every block
    through unmasked 1x1 convolutions: each cell then depends on the earlier cells and on the
    whole condition.

    Args:
        k: K, the number of codes.
        hidden: Channels.
        layers: Residual blocks.
        conditioned: Take a grid of K codes to condition on.
    """

    def __init__(self, k: int, hidden: int = 64, layers: int = 5,
                 conditioned: bool = False) -> None:
        super().__init__()
        self.embed = nn.Embedding(k, hidden)
        self.first = MaskedConv2d("A", hidden, hidden, 7)
        self.blocks = nn.ModuleList([_Block(hidden, conditioned) for _ in range(layers)])
        self.head = nn.Conv2d(hidden, k, 1)
        self.embed_condition = nn.Embedding(k, hidden) if conditioned else None

    def forward(self, codes: torch.Tensor, condition: torch.Tensor | None = None
                ) -> torch.Tensor:
        """The logits of every cell (given the codes ``condition`` ``[n, h', w']``)."""
        h = self.first(self.embed(codes).permute(0, 3, 1, 2))
        c = None
        if self.embed_condition is not None:
            if condition is None:
                raise ConfigError("this PixelCNN is conditioned on a top grid: pass its codes")
            c = F.interpolate(self.embed_condition(condition).permute(0, 3, 1, 2),
                              size=codes.shape[-2:], mode="nearest")
        for block in self.blocks:
            h = block(h, c)
        return self.head(F.relu(h))


def _log_prob(logits: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Σ over cells of log softmax(logits) at ``codes``: ``[n]``."""
    return F.log_softmax(logits, dim=1).gather(1, codes[:, None]).flatten(1).sum(1)


class PixelCNNPrior(CodePrior):
    """p(c) = Π_i p(c_i | c_<i) by a `PixelCNN`, the VQ-VAE's learned prior; of two levels (the
    VQ-VAE-2) p(c_top) p(c | c_top): a `PixelCNN` over the top grid and one over the bottom grid
    conditioned on the top grid's codes.

    Args:
        z_dim: D, the size of the code vectors.
        k: K, the number of codes.
        hidden: The PixelCNNs' channels.
        layers: Their residual blocks.
        levels: 1, or 2 for a VQ-VAE-2.
    """

    name = "pixelcnn"

    def __init__(self, z_dim: int, k: int = 512, hidden: int = 64, layers: int = 5,
                 levels: int = 1) -> None:
        super().__init__(z_dim, k, levels)
        self.hidden, self.layers = hidden, layers
        self.net = PixelCNN(k, hidden, layers, conditioned=levels == 2)
        if levels == 2:
            self.top_net = PixelCNN(k, hidden, layers)
        self.temperature = 1.0

    def log_prob_codes(self, codes: torch.Tensor, top: torch.Tensor | None = None
                       ) -> torch.Tensor:
        """See `CodePrior.log_prob_codes`: Σ over cells of log p(c_i | c_<i), in nats."""
        return _log_prob(self.net(codes, top), codes)

    def log_prob_top(self, codes: torch.Tensor) -> torch.Tensor:
        """See `CodePrior.log_prob_top`."""
        return _log_prob(self.top_net(codes), codes)

    @torch.no_grad()
    def _sample(self, net: PixelCNN, n: int, grid: tuple[int, ...],
                condition: torch.Tensor | None) -> torch.Tensor:
        """Cell by cell in raster order, each from its logits divided by `temperature`."""
        if not self.temperature > 0:
            raise ConfigError(f"the temperature must be > 0, got {self.temperature!r}")
        h, w = grid
        codes = torch.zeros(n, h, w, dtype=torch.long, device=self._anchor.device)
        for i in range(h):
            for j in range(w):
                logits = net(codes, condition)[:, :, i, j] / self.temperature
                codes[:, i, j] = torch.multinomial(F.softmax(logits, dim=1), 1)[:, 0]
        return codes

    def sample_codes(self, n: int, top: torch.Tensor | None = None) -> torch.Tensor:
        """See `CodePrior.sample_codes`: cell by cell in raster order, each from its logits
        divided by `temperature` (1: the model's own distribution)."""
        return self._sample(self.net, n, self.grid, top)

    def sample_top(self, n: int) -> torch.Tensor:
        """See `CodePrior.sample_top`, likewise."""
        return self._sample(self.top_net, n, self.top_grid, None)

    def config(self) -> dict[str, Any]:
        """See `Prior.config`."""
        return {**super().config(), "hidden": self.hidden, "layers": self.layers}

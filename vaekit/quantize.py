"""Vector quantization (van den Oord et al. 2017): a codebook of K vectors, nearest-code
assignment, straight-through gradients, and the codebook learned by moving averages.

    vq = VectorQuantizer(num_codes=512, dim=64)          # decay 0.99: the EMA codebook
    q = vq(z_e)                                           # z_e [batch, 64, 7, 7] from an encoder
    q.quantized                                           # z_e + sg(e_k - z_e): the codes' vectors
    q.codes                                               # [batch, 7, 7] indices in 0..511
    q.commitment, q.codebook_loss, q.perplexity

The moving averages (the VQ-VAE paper's appendix; Sonnet's ``VectorQuantizerEMA``) keep, per
code, the count of encoder vectors assigned to it, N_k, and their sum, m_k, each decayed by
γ = ``decay`` per update; the code is ``e_k = m_k / Ñ_k`` with Ñ_k the counts Laplace-smoothed,
``Ñ_k = (N_k + ε) / (Σ N + K ε) Σ N``, so a code that receives nothing is not divided by zero.
Under `torch.distributed` the batch's counts and sums are all-reduced first, so every rank keeps
the same codebook. A code whose smoothed count has fallen below ``dead_below`` is dead: at the
next update it is re-seeded with an encoder vector of the batch drawn at random (the same one on
every rank: drawn from the all-reduced batch's first rank), and its averages restart there.
With ``decay=0`` the codebook is a parameter trained by the codebook loss
``||sg(z_e) - e_k||²`` instead, and no code is re-seeded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist
from torch import nn

from vaekit.errors import ConfigError

__all__ = ["VectorQuantizer", "Quantized", "perplexity", "perplexity_of_counts"]


@dataclass
class Quantized:
    """What `VectorQuantizer` returns for a batch.

    Attributes:
        quantized: The codes' vectors with straight-through gradients, shaped like the input.
        codes: The nearest code per vector, ``[batch, *grid]``.
        commitment: ``Σ ||z_e - sg(e_k)||²`` per image (unweighted), ``[batch]``.
        codebook_loss: ``Σ ||sg(z_e) - e_k||²`` per image, ``[batch]`` (zero gradient with the
            EMA codebook, where the moving averages learn the codes).
        num_codes: K.
    """

    quantized: torch.Tensor
    codes: torch.Tensor
    commitment: torch.Tensor
    codebook_loss: torch.Tensor
    num_codes: int

    @property
    def perplexity(self) -> float:
        """``exp`` of the entropy of the batch's code frequencies (K when every code is used
        equally, 1 when one code is); computed when asked, off the training step."""
        return perplexity(self.codes, self.num_codes)

    @property
    def used(self) -> int:
        """How many codes the batch used."""
        return int(torch.bincount(self.codes.flatten(), minlength=self.num_codes).gt(0).sum())


def perplexity(codes: torch.Tensor, num_codes: int) -> float:
    """``exp(-Σ_k p_k log p_k)`` of the frequencies ``p_k`` of ``codes`` (any shape)."""
    return perplexity_of_counts(torch.bincount(codes.flatten(), minlength=num_codes))


def perplexity_of_counts(counts: torch.Tensor) -> float:
    """``exp(-Σ_k p_k log p_k)`` of the frequencies ``p_k = counts_k / Σ counts`` (NaN when
    there are none)."""
    p = counts.double()
    if float(p.sum()) <= 0:
        return float("nan")
    p = p[p > 0] / p.sum()
    return float(torch.exp(-(p * p.log()).sum()))


def _all_reduce(*tensors: torch.Tensor) -> None:
    if torch_dist.is_available() and torch_dist.is_initialized():
        for t in tensors:
            torch_dist.all_reduce(t)


def _forget_after_load(module: VectorQuantizer, incompatible_keys: object) -> None:
    module.forget()


class VectorQuantizer(nn.Module):
    """Snap each D-vector of a ``[batch, D, *grid]`` tensor to its nearest of K codes.

    Args:
        num_codes: K.
        dim: D, the vectors' size (the input's channel dimension).
        decay: γ of the moving averages (0.99, the paper's); 0: a codebook trained by its loss.
        eps: ε of the Laplace smoothing of the counts.
        dead_below: A code whose smoothed moving-average count (vectors per update) is below
            this is re-seeded (0: never). The default 1 is Jukebox's (Dhariwal et al. 2020):
            the counts start at 1, so after the first update every code the batch did not use
            takes one of its encoder vectors, a data-dependent start.

    Raises:
        ConfigError: for K < 1, D < 1, or a decay outside [0, 1).
    """

    def __init__(self, num_codes: int, dim: int, decay: float = 0.99, eps: float = 1e-5,
                 dead_below: float = 1.0) -> None:
        super().__init__()
        if num_codes < 1 or dim < 1:
            raise ConfigError(f"a codebook needs K >= 1 codes of size D >= 1, got K={num_codes}, "
                              f"D={dim}")
        if not 0 <= decay < 1:
            raise ConfigError(f"the codebook's decay must lie in [0, 1), got {decay!r}")
        self.num_codes, self.dim, self.decay, self.eps = num_codes, dim, decay, eps
        self.dead_below = dead_below
        init = torch.randn(num_codes, dim) / math.sqrt(dim)
        if decay > 0:
            self.register_buffer("codebook", init)
            self.register_buffer("counts", torch.ones(num_codes))
            self.register_buffer("sums", init.clone())
        else:
            self.codebook = nn.Parameter(init)
        self._last: tuple[torch.Tensor, torch.Tensor] | None = None  # forward's (output, codes)
        self.register_load_state_dict_post_hook(_forget_after_load)

    @property
    def ema(self) -> bool:
        """Whether the codebook is learned by moving averages."""
        return self.decay > 0

    def assign(self, flat: torch.Tensor) -> torch.Tensor:
        """The index of the nearest code (squared Euclidean distance) of each row of ``flat``
        ``[N, D]``; ties go to the lower index."""
        book = self.codebook
        d = (flat.pow(2).sum(1, keepdim=True) - 2 * flat @ book.t() + book.pow(2).sum(1)[None])
        return d.argmin(1)

    def lookup(self, codes: torch.Tensor, grid_dims: int = 2) -> torch.Tensor:
        """The codes' vectors ``[..., D, *grid]`` of indices ``[..., *grid]`` (``grid_dims``
        trailing grid dimensions)."""
        return self.codebook[codes].movedim(-1, codes.dim() - grid_dims)

    def codes_of(self, vectors: torch.Tensor, grid_dims: int = 2) -> torch.Tensor:
        """The nearest code of each vector of ``[..., D, *grid]``: indices ``[..., *grid]``
        (the codes themselves for the codebook's own vectors). For the values of the last
        `forward`'s output (the objective's and the prior's view of a draw), the codes that
        forward assigned, without a second search."""
        last = self._last
        if (last is not None and vectors.numel() == last[0].numel()  # leading 1s allowed
                and vectors.shape[vectors.dim() - last[0].dim():] == last[0].shape
                and torch.equal(vectors.reshape(last[0].shape), last[0])):
            return last[1].reshape(*vectors.shape[:vectors.dim() - grid_dims - 1],
                                   *vectors.shape[vectors.dim() - grid_dims:])
        moved = vectors.movedim(vectors.dim() - grid_dims - 1, -1)
        return self.assign(moved.reshape(-1, self.dim).float()).view(moved.shape[:-1])

    def forward(self, z_e: torch.Tensor) -> Quantized:
        """Quantize ``z_e`` ``[batch, D, *grid]`` with the current codebook; in training mode with
        the EMA codebook, then update the averages (and re-seed dead codes)."""
        if z_e.dim() < 2 or z_e.shape[1] != self.dim:
            raise ConfigError(f"the quantizer takes [batch, {self.dim}, ...] tensors, got "
                              f"{tuple(z_e.shape)}")
        moved = z_e.movedim(1, -1)  # [batch, *grid, D]
        flat = moved.reshape(-1, self.dim).float()
        codes = self.assign(flat.detach())
        e = self.codebook[codes].view(moved.shape).to(z_e.dtype)  # the codebook that assigned
        if self.training and self.ema:  # then the moving averages move it (Sonnet's order)
            self._update(flat.detach(), codes)
        per_image = tuple(range(1, moved.dim()))
        commitment = (moved - e.detach()).pow(2).sum(per_image)
        codebook_loss = (moved.detach() - e).pow(2).sum(per_image)
        quantized = (moved + (e - moved).detach()).movedim(-1, 1)  # straight through
        self._last = (quantized.detach(), codes.view(moved.shape[:-1]))
        return Quantized(quantized, codes.view(moved.shape[:-1]), commitment, codebook_loss,
                         self.num_codes)

    def forget(self) -> None:
        """Drop the last `forward`'s codes (after the codebook is loaded anew)."""
        self._last = None

    @torch.no_grad()
    def _update(self, flat: torch.Tensor, codes: torch.Tensor) -> None:
        """One moving-average step on the (all-reduced) batch's counts and sums."""
        onehot = torch.nn.functional.one_hot(codes, self.num_codes).to(flat.dtype)
        count, total = onehot.sum(0), onehot.t() @ flat
        _all_reduce(count, total)
        g = self.decay
        self.counts.mul_(g).add_(count, alpha=1 - g)
        self.sums.mul_(g).add_(total, alpha=1 - g)
        n = self.counts.sum()
        smoothed = (self.counts + self.eps) / (n + self.num_codes * self.eps) * n
        self.codebook.copy_(self.sums / smoothed[:, None])
        if self.dead_below > 0:
            self._reseed(flat, smoothed)

    def _reseed(self, flat: torch.Tensor, smoothed: torch.Tensor) -> None:
        """Dead codes take encoder vectors of this batch drawn at random; rank 0's draw is
        broadcast so every rank's codebook stays the same."""
        dead = smoothed < self.dead_below
        k = int(dead.sum())
        if k == 0:
            return
        pick = flat[torch.randint(flat.shape[0], (k,), device=flat.device)]
        if torch_dist.is_available() and torch_dist.is_initialized():
            torch_dist.broadcast(pick, 0)
        self.codebook[dead] = pick
        self.sums[dead] = pick
        self.counts[dead] = 1.0

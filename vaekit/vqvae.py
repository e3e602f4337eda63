"""The VQ-VAE's training step (van den Oord et al. 2017) as an objective over its Pyro programs.

    vae = VAE(posterior="vq:512", z_dim=64)       # CodeGuide: a point mass on the nearest codes
    obj = VQTraining(vae, commitment=0.25)         # what objective="elbo" builds for it
    loss = obj(x)                                  # -log p(x|z) + 0.25 ||z_e - sg(e)||^2, summed

The guide is a point mass, so the ELBO is log p(x|z) + log p(z), with log p(z) = -h w log K under
the uniform prior of training: a constant, so maximising the ELBO is maximising log p(x|z), the
reconstruction, through the straight-through gradient that the guide's draw carries to the
encoder. The VQ training terms are not part of the bound: the commitment loss (weight
``commitment``) pulls the encoder's grid ``z_e`` (the guide's record ``"z_e"``) towards its codes,
and the codebook follows by moving averages (the quantizer's update, once per step, when the
guide runs) or, with ``codebook_decay=0``, by the codebook loss ``||sg(z_e) - e||^2``. Both are
read off the same traces as the bound, in one run of the two programs.
"""

from __future__ import annotations

import torch
import torch.distributed as torch_dist

from vaekit.auxiliary import Objective
from vaekit.errors import ConfigError
from vaekit.model import VAE
from vaekit.quantize import perplexity_of_counts
from vaekit.traces import site_log_probs

__all__ = ["VQTraining", "is_vq"]


def is_vq(vae: VAE) -> bool:
    """Whether the VAE is a VQ-VAE (posterior ``vq:K``)."""
    return bool(getattr(vae, "is_vq", False))


def _levels(vae: VAE) -> list[tuple[str, str]]:
    """The guide's ``(record, site)`` of each level, bottom first: ``("z_e", "z")``, or
    ``("z_e1", "z1")`` and ``("z_e2", "z2")`` for two levels."""
    return [("z_e", "z")] if vae.latents == 1 else [("z_e1", "z1"), ("z_e2", "z2")]


class VQTraining(Objective):
    """The VQ-VAE's loss: ``-log p(x|z) + commitment ||z_e - sg(z)||^2`` per image (plus the
    codebook loss ``||sg(z_e) - e||^2`` when the codebook is not a moving average), summed over
    the batch; and the epoch's codebook usage for ``metrics.csv``. Of two levels (the
    VQ-VAE-2) the commitment and codebook terms are those of both grids, summed.

    Args:
        vae: A VQ-VAE.
        commitment: The commitment loss's weight (0.25, the paper's β).

    Raises:
        ConfigError: for another VAE or a negative weight.
    """

    def __init__(self, vae: VAE, commitment: float = 0.25) -> None:
        super().__init__()
        if not is_vq(vae):
            raise ConfigError("the VQ-VAE objective needs --posterior vq:K")
        if not commitment >= 0:
            raise ConfigError(f"commitment must be >= 0, got {commitment!r}")
        self.vae, self.commitment = vae, float(commitment)
        self._k = vae.posterior.quantizer.num_codes
        levels = vae.posterior.levels
        # per level: code counts; then Σ commitment, Σ codebook loss, images
        self._epoch = torch.zeros(levels * self._k + 3, dtype=torch.float64)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The VQ-VAE's loss on ``x``, summed over the batch."""
        t = site_log_probs(self.vae, x, y, closed_form=False)
        loss, commit, book, counts = -t.log_lik[0], 0.0, 0.0, []
        for (record, site), quantizer in zip(_levels(self.vae), self.vae.posterior.quantizers):
            z_e, z = (v.reshape(-1, *v.shape[-3:])[:x.shape[0]]  # the first particle:
                      for v in (t.recorded[record], t.values[site].detach()))  # [batch, D, h, w]
            cells = tuple(range(1, z_e.dim()))
            codes = quantizer.codes_of(z)
            commit = commit + (z_e - z).pow(2).sum(cells)
            book = book + (z_e.detach() - quantizer.lookup(codes)).pow(2).sum(cells)
            counts.append(torch.bincount(codes.flatten(), minlength=self._k))
        loss = loss + self.commitment * commit
        if not self.vae.posterior.quantizer.ema:
            loss = loss + book
        self._count(counts, commit.detach(), book.detach(), x.shape[0])
        return loss.sum()

    @torch.no_grad()
    def _count(self, counts: list[torch.Tensor], commit: torch.Tensor, book: torch.Tensor,
               n: int) -> None:
        """Add the batch's code counts and terms to the epoch's sums (over every rank)."""
        step = torch.cat([*(c.double() for c in counts),
                          torch.stack([commit.sum(), book.sum()]).double(),
                          torch.tensor([float(n)], dtype=torch.float64, device=commit.device)])
        if torch_dist.is_available() and torch_dist.is_initialized():
            torch_dist.all_reduce(step)
        self._epoch += step.cpu()

    def epoch_metrics(self) -> dict[str, float]:
        """The epoch's codebook usage: ``perplexity`` of the codes' frequencies (K when all are
        used equally), ``codes_used``, and the mean ``commitment`` and ``codebook_loss`` per
        image (unweighted); of two levels also ``perplexity_top`` and ``codes_used_top``. The
        sums start again for the next epoch."""
        counts, (commit, book, n) = self._epoch[:-3].clone(), self._epoch[-3:].tolist()
        self._epoch.zero_()
        n = max(n, 1.0)
        out = {}
        for i, suffix in enumerate(["", "_top"][:counts.numel() // self._k]):
            level = counts[i * self._k:(i + 1) * self._k]
            out.update({f"perplexity{suffix}": perplexity_of_counts(level),
                        f"codes_used{suffix}": float(level.gt(0).sum())})
        return {**out, "commitment": commit / n, "codebook_loss": book / n}

    def auxiliary_state(self) -> dict[str, object]:
        """The epoch's sums so far (a run resumed mid-epoch reports the same epoch numbers); the
        codebook itself is in the VAE's weights."""
        return {**super().auxiliary_state(), "epoch_sums": self._epoch.clone()}

    def load_auxiliary_state(self, state: dict[str, object]) -> None:
        """Restore `auxiliary_state`."""
        super().load_auxiliary_state(state)
        if "epoch_sums" in state:
            self._epoch = state["epoch_sums"].clone()  # type: ignore[union-attr]

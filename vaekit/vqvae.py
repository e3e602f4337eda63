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


class VQTraining(Objective):
    """The VQ-VAE's loss: ``-log p(x|z) + commitment ||z_e - sg(z)||^2`` per image (plus the
    codebook loss ``||sg(z_e) - e||^2`` when the codebook is not a moving average), summed over
    the batch; and the epoch's codebook usage for ``metrics.csv``.

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
        k = vae.posterior.quantizer.num_codes
        self._epoch = torch.zeros(k + 3, dtype=torch.float64)  # code counts, Σ commit, Σ book, n

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The VQ-VAE's loss on ``x``, summed over the batch."""
        t = site_log_probs(self.vae, x, y, closed_form=False)
        quantizer = self.vae.posterior.quantizer
        z_e, z = (v.reshape(-1, *v.shape[-4:])[0]  # the first particle: [batch, D, h, w]
                  for v in (t.recorded["z_e"], t.values["z"].detach()))
        cells = tuple(range(1, z_e.dim()))
        commit = (z_e - z).pow(2).sum(cells)
        codes = quantizer.codes_of(z)
        book = (z_e.detach() - quantizer.lookup(codes)).pow(2).sum(cells)
        loss = -t.log_lik[0] + self.commitment * commit
        if not quantizer.ema:
            loss = loss + book
        self._count(codes, commit.detach(), book.detach(), quantizer.num_codes)
        return loss.sum()

    @torch.no_grad()
    def _count(self, codes: torch.Tensor, commit: torch.Tensor, book: torch.Tensor,
               k: int) -> None:
        """Add the batch's code counts and terms to the epoch's sums (over every rank)."""
        step = torch.cat([torch.bincount(codes.flatten(), minlength=k).double(),
                          torch.stack([commit.sum(), book.sum()]).double(),
                          torch.tensor([float(codes.shape[0])], dtype=torch.float64,
                                       device=codes.device)])
        if torch_dist.is_available() and torch_dist.is_initialized():
            torch_dist.all_reduce(step)
        self._epoch += step.cpu()

    def epoch_metrics(self) -> dict[str, float]:
        """The epoch's codebook usage: ``perplexity`` of the codes' frequencies (K when all are
        used equally), ``codes_used``, and the mean ``commitment`` and ``codebook_loss`` per
        image (unweighted); the sums start again for the next epoch."""
        counts, (commit, book, n) = self._epoch[:-3].clone(), self._epoch[-3:].tolist()
        self._epoch.zero_()
        n = max(n, 1.0)
        return {"perplexity": perplexity_of_counts(counts), "codes_used": float(counts.gt(0).sum()),
                "commitment": commit / n, "codebook_loss": book / n}

    def auxiliary_state(self) -> dict[str, object]:
        """The epoch's sums so far (a run resumed mid-epoch reports the same epoch numbers); the
        codebook itself is in the VAE's weights."""
        return {**super().auxiliary_state(), "epoch_sums": self._epoch.clone()}

    def load_auxiliary_state(self, state: dict[str, object]) -> None:
        """Restore `auxiliary_state`."""
        super().load_auxiliary_state(state)
        if "epoch_sums" in state:
            self._epoch = state["epoch_sums"].clone()  # type: ignore[union-attr]

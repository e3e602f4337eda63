"""FactorVAE (Kim & Mnih 2018): the ELBO with a total-correlation penalty that a discriminator
estimates, trained in alternation through the loop's training-step seam.

    vae = VAE(z_dim=10, image_shape=(1, 64, 64))
    obj = FactorVAE(vae, gamma=35.0)            # what --objective factor-vae builds
    loss = obj(x)                               # -ELBO + γ TC(z) per image, summed

The discriminator D (an MLP over z) tells draws of q(z) = E_x q(z|x) from draws of the product
of its marginals, made by permuting each dimension of the batch's z independently across the
batch. With D's two logits, ``TC(z) ≈ logit_0(z) - logit_1(z)`` (the density-ratio trick);
the VAE's loss adds γ times it, through D's detached weights, and after the VAE's step D takes
its own Adam step on the batch's (detached) z and their permutation. The test -ELBO vaekit
reports is the plain ELBO, not this objective.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vaekit.auxiliary import Objective, summed_over_ranks
from vaekit.errors import ConfigError, TrainingError
from vaekit.likelihoods import call_detached
from vaekit.model import VAE
from vaekit.traces import site_log_probs

__all__ = ["FactorVAE", "TCDiscriminator", "permute_dims"]


class TCDiscriminator(nn.Module):
    """Kim & Mnih's discriminator: an MLP of LeakyReLU(0.2) layers to two logits (q(z) first,
    the product of its marginals second); theirs has 6 layers of 1000 units.

    Args:
        z_dim: Latent dimension.
        hidden: Units of each hidden layer.
    """

    def __init__(self, z_dim: int, hidden: tuple[int, ...] = (1000,) * 5) -> None:
        super().__init__()
        sizes = [z_dim, *hidden]
        layers: list[nn.Module] = []
        for a, b in zip(sizes, sizes[1:]):
            layers += [nn.Linear(a, b), nn.LeakyReLU(0.2)]
        self.net = nn.Sequential(*layers, nn.Linear(sizes[-1], 2))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Logits ``[batch, 2]`` of ``z`` ``[batch, z_dim]``."""
        return self.net(z)


def permute_dims(z: torch.Tensor) -> torch.Tensor:
    """``z`` ``[batch, D]`` with each dimension permuted independently across the batch: draws
    of the product of the batch's marginals."""
    return torch.stack([z[torch.randperm(z.shape[0], device=z.device), d]
                        for d in range(z.shape[1])], dim=1)


class FactorVAE(Objective):
    """FactorVAE's loss, ``-ELBO + γ TC(z)`` per image summed over the batch, and its
    discriminator's step. Needs one latent layer of vectors z.

    Args:
        vae: The model (β 1).
        gamma: γ, the weight of the total correlation (Kim & Mnih's dSprites runs: 35).
        disc_lr: The discriminator's Adam learning rate (betas 0.5, 0.9, as theirs).
        hidden: The discriminator's hidden layers.

    Raises:
        ConfigError: for a VAE without a single vector latent z, or γ < 0.
    """

    def __init__(self, vae: VAE, gamma: float = 35.0, disc_lr: float = 1e-4,
                 hidden: tuple[int, ...] = (1000,) * 5) -> None:
        super().__init__()
        if vae.latents != 1 or getattr(vae, "is_vq", False) or vae.num_classes:
            raise ConfigError("the factor-vae objective needs one latent layer of vectors z "
                              "(no --latents 2, --posterior vq:K, --conditional or "
                              "--semi-supervised)")
        if not gamma >= 0:
            raise ConfigError(f"factor_gamma must be >= 0, got {gamma!r}")
        self.vae, self.gamma = vae, float(gamma)
        disc = TCDiscriminator(vae.z_dim, hidden).to(next(vae.parameters()).device)
        self.add_auxiliary("discriminator", disc,
                           lambda p: torch.optim.Adam(p, lr=disc_lr, betas=(0.5, 0.9)))
        self._z: torch.Tensor | None = None
        self._epoch = torch.zeros(4, dtype=torch.float64)  # Σ TC, Σ D loss, Σ D accuracy, steps

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """``-ELBO + γ TC(z)`` summed over the batch, the ELBO read off the traces."""
        t = site_log_probs(self.vae, x, y)
        z = t.values["z"].reshape(-1, x.shape[0], self.vae.z_dim)[0]
        self._z = z.detach()
        logits = call_detached(self.auxiliary("discriminator"), z)
        tc = logits[:, 0] - logits[:, 1]
        self._tc = tc.detach().sum()
        return (-t.log_lik[0] + t.kl_total[0] + self.gamma * tc).sum()

    def auxiliary_step(self, x: torch.Tensor, y: torch.Tensor | None, step: int) -> None:
        """The discriminator's step: cross-entropy of q(z)'s draws (class 0) against their
        dimension-wise permutation (class 1).

        Raises:
            TrainingError: when its loss is not finite.
        """
        if self._z is None:
            return
        d, opt = self.aux_train["discriminator"], self.aux_optimizers["discriminator"]
        z = self._z
        logits = d(torch.cat([z, permute_dims(z)]))
        target = torch.cat([torch.zeros(len(z)), torch.ones(len(z))]).long().to(z.device)
        loss = F.cross_entropy(logits, target)
        if not torch.isfinite(loss):
            raise TrainingError(f"the FactorVAE discriminator's loss is not finite at step "
                                f"{step + 1}: lower --disc-lr or --lr and start again")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        right = (logits.argmax(-1) == target).double().mean()
        self._epoch += torch.tensor(
            [float(self._tc) / len(z), float(loss.detach()), float(right), 1.0],
            dtype=torch.float64)

    def epoch_metrics(self) -> dict[str, float]:
        """The epoch's mean discriminator estimate of TC per image (``tc``), its cross-entropy
        (``disc_loss``) and accuracy (``disc_accuracy``), over every rank; the sums start
        again."""
        device = next(self.auxiliary("discriminator").parameters()).device
        tc, loss, right, steps = summed_over_ranks(self._epoch, device).tolist()
        self._epoch.zero_()
        n = max(steps, 1.0)
        return {"tc": tc / n, "disc_loss": loss / n, "disc_accuracy": right / n}

    def auxiliary_state(self) -> dict[str, object]:
        """`Objective.auxiliary_state` and the epoch's sums so far."""
        return {**super().auxiliary_state(), "epoch_sums": self._epoch.clone()}

    def load_auxiliary_state(self, state: dict[str, object]) -> None:
        """Restore `auxiliary_state`."""
        super().load_auxiliary_state(state)
        if "epoch_sums" in state:
            self._epoch = state["epoch_sums"].clone()  # type: ignore[union-attr]

"""The VAE-GAN (Larsen et al. 2016) as an objective that owns its discriminator.

    vae = VAE(likelihood="discriminator")          # p(x|z): a Gaussian on D's features
    obj = VAEGAN(vae, gamma=1.0)                  # what objective="elbo" builds for it
    loss = obj(x)                                  # the VAE's loss; the loop steps on it
    obj.auxiliary_step(x, None, step)              # then the discriminator's own step

The VAE is the Pyro model/guide pair; its likelihood `DiscriminatorFeatures` measures the
reconstruction in the features of layer l of a DCGAN discriminator D. Per image, with
x~ = Dec(z), z ~ q(z|x), and x_p = Dec(z_p), z_p ~ p(z) (Larsen et al.'s Algorithm 1):

- encoder:       L_prior + L_llike                (β KL - log N(D_l(x) | D_l(x~), I): the -ELBO)
- decoder:       γ L_llike + L_GAN                (L_GAN: -log D(x~) - log D(x_p), non-saturating)
- discriminator: -log D(x) - log(1 - D(x~)) - log(1 - D(x_p))

The VAE's loss is ``L_prior + L_llike + L_GAN / γ`` with the adversarial images decoded from
detached latents, so the encoder's gradient is exactly Larsen's and the decoder's is Larsen's
divided by γ: the same Adam step (Adam does not see a constant scale of a gradient). D's weights
are detached in the VAE's loss; D learns only in `VAEGAN.auxiliary_step`.
"""

from __future__ import annotations

import pyro
import torch
import torch.distributed as torch_dist
from pyro import poutine
from torch.nn import functional as F

from vaekit.auxiliary import Objective
from vaekit.errors import ConfigError, TrainingError
from vaekit.likelihoods import DiscriminatorFeatures, FeatureNormal, call_detached
from vaekit.model import VAE
from vaekit.nets import Discriminator
from vaekit.traces import site_log_probs

__all__ = ["VAEGAN", "WINNING_BELOW", "is_vae_gan", "check_vae_gan"]

WINNING_BELOW = 0.68 - 0.4
"""The discriminator skips its update while its mean cross-entropy on real images and on
generated ones are both below this (it is winning): the equilibrium 0.68 less the margin 0.4 of
the VAE-GAN implementations in the field (pythae's ``VAEGANConfig``)."""


def is_vae_gan(vae: VAE) -> bool:
    """Whether the VAE's likelihood is the discriminator's features (a VAE-GAN)."""
    return isinstance(vae.likelihood, DiscriminatorFeatures)


def check_vae_gan(vae: VAE) -> None:
    """Refuse a VAE-GAN whose discriminator cannot be built: an image size the DCGAN stack does
    not take, or a feature layer deeper than its hidden blocks (before anything is written).

    Raises:
        ConfigError: naming the problem.
    """
    if isinstance(vae.likelihood, DiscriminatorFeatures):
        vae.likelihood.check_layer(Discriminator(vae.image_shape).layers)


class VAEGAN(Objective):
    """The VAE-GAN's training step: the VAE's loss (the β-ELBO in the discriminator's features
    plus the adversarial terms over γ) and, after the VAE's update, the discriminator's.

    Args:
        vae: A VAE whose likelihood is `DiscriminatorFeatures`.
        gamma: Larsen's γ, the weight of the feature reconstruction against the adversarial
            terms in the decoder's loss.
        disc_lr: The discriminator's Adam learning rate (betas 0.5, 0.999).

    Raises:
        ConfigError: for another likelihood, γ <= 0, or a feature layer D does not have.
    """

    def __init__(self, vae: VAE, gamma: float = 1.0, disc_lr: float = 2e-4) -> None:
        super().__init__()
        if not is_vae_gan(vae):
            raise ConfigError("the VAE-GAN objective needs --likelihood discriminator")
        if not gamma > 0:
            raise ConfigError(f"gan_gamma must be > 0, got {gamma!r}")
        self.vae, self.gamma = vae, float(gamma)
        disc = Discriminator(vae.image_shape).to(next(vae.parameters()).device)
        vae.likelihood.bind(disc)
        self.add_auxiliary("discriminator", disc,
                           lambda p: torch.optim.Adam(p, lr=disc_lr, betas=(0.5, 0.999)))
        self._fakes: torch.Tensor | None = None
        self._epoch = torch.zeros(4, dtype=torch.float64)  # Σ real, Σ generated, steps, skipped

    def _decoded(self, args: tuple[torch.Tensor, ...], latents: dict[str, torch.Tensor] | None
                 ) -> torch.Tensor:
        """The decoder's images in one run of the model: at ``latents`` (detached draws of the
        guide), or at draws of the model's own prior (None)."""
        model = self.vae.model if latents is None else poutine.condition(self.vae.model, latents)
        with pyro.settings.context(module_local_params=True), poutine.block():
            trace = poutine.trace(model).get_trace(*args)
        for site in trace.nodes.values():
            if site["type"] == "sample" and isinstance(site["fn"], FeatureNormal):
                return site["fn"].images
        raise ConfigError("the VAE-GAN's model has no site observed in discriminator features")

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The VAE's loss, summed over the batch: ``β KL + L_llike + L_GAN / γ`` per image."""
        t = site_log_probs(self.vae, x, y, closed_form=False)  # the ELBO as Trace_ELBO reads it
        neg_elbo = -(t.log_lik - self.vae.beta * t.kl_sampled).sum()
        args = (x,) if y is None else (x, y)
        recon = self._decoded(args, {name: v[0].detach() for name, v in t.values.items()})
        fakes = torch.cat([recon.reshape(x.shape), self._decoded(args, None).reshape(x.shape)])
        self._fakes = fakes.detach()
        logits = call_detached(self.auxiliary("discriminator"), fakes)  # D is not moved here
        fool = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits), reduction="sum")
        return neg_elbo + fool / self.gamma

    def auxiliary_step(self, x: torch.Tensor, y: torch.Tensor | None, step: int) -> None:
        """The discriminator's step on the real batch and the images the VAE's loss generated
        (reconstructions and prior samples, from before the VAE's update).

        Skipped while D is winning (`WINNING_BELOW`, decided on the losses averaged over the
        ranks, so every rank agrees).

        Raises:
            TrainingError: when D's loss is not finite.
        """
        if self._fakes is None:
            return
        d, opt = self.aux_train["discriminator"], self.aux_optimizers["discriminator"]
        n = x.shape[0]
        logits = d(torch.cat([x.to(self._fakes.dtype), self._fakes]))
        real = F.binary_cross_entropy_with_logits(logits[:n], torch.ones_like(logits[:n]))
        fake = F.binary_cross_entropy_with_logits(logits[n:], torch.zeros_like(logits[n:]))
        seen = torch.stack([real.detach(), fake.detach()])
        several = torch_dist.is_available() and torch_dist.is_initialized()
        if several:
            torch_dist.all_reduce(seen)
            seen /= torch_dist.get_world_size()
        if not bool(torch.isfinite(seen).all()):
            raise TrainingError(f"the VAE-GAN's discriminator loss is not finite at step "
                                f"{step + 1} (real {float(seen[0]):.3g}, generated "
                                f"{float(seen[1]):.3g}): lower --disc-lr or --lr, or raise "
                                "--gan-gamma, and start again")
        winning = bool((seen < WINNING_BELOW).all())
        self._epoch += torch.tensor([float(seen[0]), float(seen[1]), 1.0, float(winning)],
                                    dtype=torch.float64)
        opt.zero_grad(set_to_none=True)
        if winning and not several:
            return
        # the loss of Larsen et al.: real, reconstructions and prior samples, each a mean
        ((real + 2 * fake) * (0.0 if winning else 1.0)).backward()  # every rank reduces alike
        if not winning:
            opt.step()

    def epoch_metrics(self) -> dict[str, float]:
        """The epoch's mean discriminator cross-entropy on real (``disc_real``) and generated
        (``disc_fake``) images, and how many of its steps it skipped while winning
        (``disc_skipped``); the sums start again for the next epoch."""
        real, fake, steps, skipped = self._epoch.tolist()
        self._epoch.zero_()
        n = max(steps, 1.0)
        return {"disc_real": real / n, "disc_fake": fake / n, "disc_skipped": skipped}

    def auxiliary_state(self) -> dict[str, object]:
        """`Objective.auxiliary_state` and the epoch's sums so far (a run resumed mid-epoch
        reports the same epoch means)."""
        return {**super().auxiliary_state(), "epoch_sums": self._epoch.clone()}

    def load_auxiliary_state(self, state: dict[str, object]) -> None:
        """Restore `auxiliary_state`."""
        super().load_auxiliary_state(state)
        if "epoch_sums" in state:
            self._epoch = state["epoch_sums"].clone()  # type: ignore[union-attr]

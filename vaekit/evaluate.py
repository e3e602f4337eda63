"""Numbers for a trained VAE: the ELBO and its parts, in nats per image.

    terms = elbo_terms(vae, x)          # per-image reconstruction NLL and KL(q(z|x) || p(z))
    m = evaluate_elbo(vae, test_x)      # {"neg_elbo": ..., "recon": ..., "kl": ...}
"""

from __future__ import annotations

import torch
from torch.distributions import Normal, kl_divergence

from vaekit.model import VAE

__all__ = ["elbo_terms", "evaluate_elbo"]


@torch.no_grad()
def elbo_terms(vae: VAE, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reconstruction NLL ``-log p(x|z)`` (one z ~ q(z|x)) and analytic ``KL(q(z|x) || p(z))``.

    Args:
        vae: The model; used as it is (call ``vae.eval()`` first for test numbers).
        x: Observations ``[batch, C, H, W]`` (e.g. binarized images for Bernoulli).

    Returns:
        Two tensors of shape ``[batch]``; their sum is the per-image -ELBO (β = 1).
    """
    z_loc, z_scale = vae.encoder(x)
    q = Normal(z_loc, z_scale)
    recon = -vae.likelihood(vae.decoder(q.sample())).log_prob(x)
    kl = kl_divergence(q, Normal(torch.zeros_like(z_loc), torch.ones_like(z_scale))).sum(-1)
    return recon, kl


@torch.no_grad()
def evaluate_elbo(vae: VAE, x: torch.Tensor, batch_size: int = 1024) -> dict[str, float]:
    """Mean test -ELBO and its parts over ``x``, in eval mode (BatchNorm running statistics).

    Args:
        vae: The model.
        x: Observations on the model's device.
        batch_size: Images per forward pass.

    Returns:
        ``{"neg_elbo", "recon", "kl"}`` in nats per image.
    """
    was_training = vae.training
    vae.eval()
    try:
        recon = x.new_zeros(())
        kl = x.new_zeros(())
        for i in range(0, x.shape[0], batch_size):
            r, k = elbo_terms(vae, x[i : i + batch_size])
            recon += r.sum()
            kl += k.sum()
    finally:
        vae.train(was_training)
    n = x.shape[0]
    recon_f, kl_f = recon.item() / n, kl.item() / n
    return {"neg_elbo": recon_f + kl_f, "recon": recon_f, "kl": kl_f}

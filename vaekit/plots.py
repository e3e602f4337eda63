"""Pictures of a VAE: samples, reconstructions and the training curve, as PNG files.

    save_samples(vae, "samples.png")
    save_reconstructions(vae, test_x[:32], "reconstructions.png")
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torchvision.utils import make_grid, save_image

from vaekit.model import VAE

__all__ = ["save_samples", "save_reconstructions", "save_loss_curve"]


def save_samples(vae: VAE, path: str | os.PathLike[str], n: int = 64, seed: int = 0) -> Path:
    """Save a grid of mean images decoded from ``n`` draws of the prior (seeded)."""
    was_training = vae.training
    vae.eval()
    images = vae.sample(n, generator=torch.Generator().manual_seed(seed))
    vae.train(was_training)
    save_image(make_grid(images.cpu(), nrow=8, padding=2, pad_value=0.5), path)
    return Path(path)


def save_reconstructions(
    vae: VAE, x: torch.Tensor, path: str | os.PathLike[str], per_row: int = 16
) -> Path:
    """Save originals and their reconstructions in alternating rows."""
    was_training = vae.training
    vae.eval()
    recon = vae.reconstruct(x).cpu()
    vae.train(was_training)
    x = x.cpu().float()
    rows = []
    for i in range(0, x.shape[0], per_row):
        rows += [x[i : i + per_row], recon[i : i + per_row]]
    save_image(make_grid(torch.cat(rows), nrow=per_row, padding=2, pad_value=0.5), path)
    return Path(path)


def save_loss_curve(history: Sequence[dict[str, float]], path: str | os.PathLike[str]) -> Path:
    """Plot the training objective and test -ELBO per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=100)
    ax.plot(epochs, [r["train_loss"] for r in history], "o-", label="train loss (objective)")
    ax.plot(epochs, [r["test_neg_elbo"] for r in history], "s-", label="test -ELBO")
    ax.set_xlabel("epoch")
    ax.set_ylabel("nats per image")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)

"""β-VAE sweep: β in {0.5, 1, 4}; the ELBO, the KL and latent traversals side by side.

    python examples/beta_sweep.py --epochs 5

A larger β buys a smaller KL (a simpler, more factorised posterior that uses fewer latent
dimensions) with a worse reconstruction. The test -ELBO reported is always the true ELBO (β = 1),
whatever β trained the model. Writes beta_sweep.png: for each β, the 5 latent dimensions with the
largest KL, each swept from -3 to 3 around the first test image's posterior mean.
"""

import argparse
from pathlib import Path

import matplotlib
import pyro
import torch
from torchvision.utils import make_grid

import vaekit

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def traversal_grid(vae: vaekit.VAE, x_obs: torch.Tensor, rows: int = 5, steps: int = 9) -> torch.Tensor:
    """The ``rows`` latent dimensions with the largest mean KL over ``x_obs``, swept one per row."""
    z_loc, z_scale = vae.encode(x_obs)
    kl = torch.distributions.kl_divergence(torch.distributions.Normal(z_loc, z_scale),
                                           torch.distributions.Normal(0.0, 1.0)).mean(0)
    images = []
    for d in kl.argsort(descending=True)[:rows].tolist():
        z = z_loc[0].repeat(steps, 1)
        z[:, d] = torch.linspace(-3, 3, steps)
        images.append(vae.decode(z))
    return make_grid(torch.cat(images).cpu(), nrow=steps, pad_value=0.5)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--limit-train", type=int, default=None, help="use the first N images")
    p.add_argument("--betas", type=float, nargs="+", default=[0.5, 1.0, 4.0])
    p.add_argument("--out", default="runs/beta_sweep", help="folder for beta_sweep.png")
    args = p.parse_args()

    train_x, _ = vaekit.load_mnist(train=True, limit=args.limit_train)
    test_x, _ = vaekit.load_mnist(train=False, limit=args.limit_train)
    test_obs = torch.bernoulli(test_x.float() / 255, generator=torch.Generator().manual_seed(0))
    print(f"{'beta':>5} {'-ELBO':>8} {'recon':>8} {'KL':>7}")
    panels = []
    for beta in args.betas:
        pyro.set_rng_seed(0)
        vae = vaekit.VAE(z_dim=10, beta=beta)
        r = vaekit.fit(vae, train_x, test_x, epochs=args.epochs,
                       batch_size=min(256, len(train_x)), progress=False).final
        print(f"{beta:5g} {r['test_neg_elbo']:8.2f} {r['test_recon']:8.2f} {r['test_kl']:7.2f}")
        panels.append((beta, r, traversal_grid(vae, test_obs)))

    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 2.6), squeeze=False)
    for ax, (beta, r, grid) in zip(axes[0], panels):
        ax.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
        ax.set_title(f"β = {beta:g}\n-ELBO {r['test_neg_elbo']:.1f}, KL {r['test_kl']:.1f} nats",
                     fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / "beta_sweep.png", dpi=120, bbox_inches="tight")
    print("wrote", out / "beta_sweep.png")


if __name__ == "__main__":
    main()

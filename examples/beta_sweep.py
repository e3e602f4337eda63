"""β-VAE sweep: β in {0.5, 1, 4}; the true ELBO, the KL and latent traversals side by side.

    python examples/beta_sweep.py --epochs 5

A larger β buys a smaller KL (a simpler, more factorised posterior) with a worse reconstruction;
the test -ELBO reported is always the true ELBO (β = 1), whatever β trained the model.
"""

import argparse
from pathlib import Path

import pyro
import torch

import vaekit
from vaekit import plots


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--limit-train", type=int, default=None)
    p.add_argument("--betas", type=float, nargs="+", default=[0.5, 1.0, 4.0])
    p.add_argument("--out", default="runs/beta_sweep")
    args = p.parse_args()

    train_x, _ = vaekit.load_mnist(train=True, limit=args.limit_train)
    test_x, _ = vaekit.load_mnist(train=False, limit=args.limit_train)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"{'beta':>5} {'-ELBO':>8} {'recon':>8} {'KL':>7}  traversal")
    for beta in args.betas:
        pyro.set_rng_seed(0)
        vae = vaekit.VAE(z_dim=10, beta=beta)
        r = vaekit.fit(vae, train_x, test_x, epochs=args.epochs,
                       batch_size=min(256, len(train_x)), progress=False).final
        # Traverse the 5 dimensions with the largest KL around the first test image's code.
        x = torch.bernoulli(test_x.float() / 255)
        loc, scale = vae.encode(x)
        kl = torch.distributions.kl_divergence(torch.distributions.Normal(loc, scale),
                                               torch.distributions.Normal(0.0, 1.0)).mean(0)
        dims = torch.argsort(kl, descending=True)[:5].tolist()
        path = plots.save_traversals(vae, loc[0], dims, out / f"traverse_beta{beta:g}.png")
        print(f"{beta:5g} {r['test_neg_elbo']:8.2f} {r['test_recon']:8.2f} {r['test_kl']:7.2f}  {path}")


if __name__ == "__main__":
    main()

"""A posterior of your own: q(z|x) with Laplace marginals, and planar flows of Pyro on top.

    python examples/custom_posterior.py --epochs 5

A posterior is a `vaekit.posteriors.Posterior`: forward(z_loc, z_scale) turns the encoder's
output into q(z|x) (batch shape [B], event shape [z_dim]); anything with rsample and log_prob
works, here a Laplace pushed through two planar flows whose parameters come from the encoder.
"""

import argparse

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions.transforms import ConditionalPlanar
from pyro.nn import DenseNN
from torch import nn

import vaekit
from vaekit.likelihoods import test_observations


class LaplacePlanar(vaekit.posteriors.Posterior):
    """q(z|x): Laplace(z_loc, z_scale) through two planar flows conditioned on (z_loc, z_scale)."""

    def __init__(self, z_dim: int) -> None:
        super().__init__(z_dim)
        self.flows = nn.ModuleList([ConditionalPlanar(DenseNN(2 * z_dim, [4 * z_dim],
                                                              [1, z_dim, z_dim]))
                                    for _ in range(2)])

    def forward(self, z_loc: torch.Tensor, z_scale: torch.Tensor) -> dist.TorchDistribution:
        context = torch.cat([z_loc, z_scale.log()], -1)
        base = dist.Laplace(z_loc, z_scale).to_event(1)
        return dist.TransformedDistribution(base, [f.condition(context) for f in self.flows])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--limit-train", type=int, default=None, help="use the first N images")
    p.add_argument("--limit-test", type=int, default=1000, help="score the first N test images")
    p.add_argument("--num-samples", type=int, default=100, help="K for the IWAE estimate")
    p.add_argument("--out", default="runs/custom_posterior", help="run folder")
    args = p.parse_args()

    train_x, _ = vaekit.load_mnist(train=True, limit=args.limit_train)
    test_x, _ = vaekit.load_mnist(train=False, limit=args.limit_test)
    pyro.set_rng_seed(0)
    vae = vaekit.VAE(z_dim=16, posterior=LaplacePlanar(16))
    vaekit.fit(vae, train_x, test_x, epochs=args.epochs, batch_size=min(256, len(train_x)),
               run_dir=args.out, overwrite=True)
    r = vaekit.evaluate(vae, test_observations(vae.likelihood, test_x), num_samples=args.num_samples)
    print(f"test -ELBO {r.neg_elbo:.2f} (KL {r.kl:.2f} by Monte Carlo), IWAE -log p(x) "
          f"{r.neg_log_px:.2f} ± {r.neg_log_px_se:.2f} nats (K={args.num_samples})")


if __name__ == "__main__":
    main()

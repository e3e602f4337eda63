"""A prior of your own: heavy-tailed Student-t latents, scored right by vaekit.fit and evaluate.

    python examples/custom_prior.py --epochs 5

A prior is a `vaekit.priors.Prior` whose forward(n) returns a distribution over z with batch shape
[n] and event shape [z_dim], with every normalising constant. The test -ELBO and the IWAE
-log p(x) come from the model's and guide's Pyro traces, so they hold for it as they do for N(0, I).
"""

import argparse

import pyro
import pyro.distributions as dist
import torch
from torch import nn

import vaekit
from vaekit.likelihoods import test_observations


class StudentTPrior(vaekit.priors.Prior):
    """p(z) = Π_d StudentT(ν, 0, 1), with ν > 2 learned."""

    def __init__(self, z_dim: int) -> None:
        super().__init__(z_dim)
        self.log_df = nn.Parameter(torch.tensor(1.5))  # ν = 2 + exp(log_df)

    def forward(self, n: int) -> dist.TorchDistribution:
        df = 2 + self.log_df.exp()
        zeros = torch.zeros(n, self.z_dim, device=df.device)
        return dist.StudentT(df, zeros, torch.ones_like(zeros)).to_event(1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--limit-train", type=int, default=None, help="use the first N images")
    p.add_argument("--limit-test", type=int, default=1000, help="score the first N test images")
    p.add_argument("--num-samples", type=int, default=100, help="K for the IWAE estimate")
    p.add_argument("--out", default="runs/custom_prior", help="run folder")
    args = p.parse_args()

    train_x, _ = vaekit.load_mnist(train=True, limit=args.limit_train)
    test_x, _ = vaekit.load_mnist(train=False, limit=args.limit_test)
    pyro.set_rng_seed(0)
    vae = vaekit.VAE(z_dim=16, prior=StudentTPrior(16))
    vaekit.fit(vae, train_x, test_x, epochs=args.epochs, batch_size=min(256, len(train_x)),
               run_dir=args.out, overwrite=True)
    r = vaekit.evaluate(vae, test_observations(vae.likelihood, test_x), num_samples=args.num_samples)
    print(f"prior ν = {2 + vae.prior.log_df.exp().item():.2f}; test -ELBO {r.neg_elbo:.2f}, "
          f"IWAE -log p(x) {r.neg_log_px:.2f} ± {r.neg_log_px_se:.2f} nats (K={args.num_samples})")


if __name__ == "__main__":
    main()

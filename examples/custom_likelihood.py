"""Add your own likelihood p(x|z): a Laplace distribution with a learned scale, by name.

    python examples/custom_likelihood.py --epochs 3

A likelihood is a small module that turns the decoder's output into a Pyro distribution over
the whole image (event dimensions C, H, W). Registering it makes it available by name in
Python, in config.json (so `vaekit.load` can rebuild the model), and to `vaekit fit --likelihood`
in any program that imports it first.
"""

import argparse

import pyro
import pyro.distributions as dist
import torch
from torch import nn

import vaekit
from vaekit.likelihoods import Likelihood, register_likelihood


@register_likelihood("my-laplace")
class MyLaplace(Likelihood):
    """Independent Laplace pixels around the decoder output, with one learned scale."""

    def __init__(self, scale: float = 0.1) -> None:
        super().__init__()
        self.init_scale = scale
        self.log_scale = nn.Parameter(torch.tensor(scale).log())

    def forward(self, out: torch.Tensor) -> dist.TorchDistribution:
        return dist.Laplace(out, self.log_scale.exp().expand_as(out)).to_event(3)

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        return out.clamp(0, 1)

    def config(self) -> dict:
        return {"scale": self.init_scale}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--limit-train", type=int, default=None)
    p.add_argument("--out", default="runs/custom_likelihood")
    args = p.parse_args()

    train_x, _ = vaekit.load_mnist(train=True, limit=args.limit_train)
    test_x, _ = vaekit.load_mnist(train=False, limit=args.limit_train)
    pyro.set_rng_seed(0)
    vae = vaekit.VAE(likelihood="my-laplace")  # by name, like the built-in ones
    result = vaekit.fit(vae, train_x, test_x, epochs=args.epochs,
                        batch_size=min(256, len(train_x)), run_dir=args.out, overwrite=True)
    scale = vae.likelihood.log_scale.exp().item()
    print(f"test -ELBO {result.final['test_neg_elbo']:.2f} nats per image, learned scale {scale:.3f}")
    print("rebuilt:", type(vaekit.load(args.out).likelihood).__name__)


if __name__ == "__main__":
    main()

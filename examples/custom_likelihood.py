"""Add your own likelihood p(x|z) by name: Student-t pixels, with learned degrees of freedom.

    python examples/custom_likelihood.py --epochs 3

A likelihood is a small module that turns the decoder's output into a Pyro distribution over
the whole image (event dimensions C, H, W). Registering it makes it available by name in Python,
in config.json (so that `vaekit.load` can rebuild the model), and to `--likelihood` on the command
line of any program that imports this module first (see my_vaekit.py).
"""

import argparse

import pyro
import pyro.distributions as dist
import torch
from torch import nn

import vaekit
from vaekit.likelihoods import Likelihood, register_likelihood


@register_likelihood("student-t")
class StudentT(Likelihood):
    """Independent Student-t pixels around the decoder output: a Gaussian with heavier tails.

    Args:
        scale: Initial scale (learned).
        df: Initial degrees of freedom (learned; df -> infinity is the Gaussian).
    """

    kind = "continuous"  # a density of [0, 1] intensities, like "gaussian" (for bits/dim)

    def __init__(self, scale: float = 0.1, df: float = 3.0) -> None:
        super().__init__()
        self.init = {"scale": scale, "df": df}  # config(): what rebuilds it from config.json
        self.log_scale = nn.Parameter(torch.tensor(float(scale)).log())
        self.log_df = nn.Parameter(torch.tensor(float(df)).log())

    def forward(self, out: torch.Tensor) -> dist.TorchDistribution:
        df, scale = self.log_df.exp().expand_as(out), self.log_scale.exp().expand_as(out)
        return dist.StudentT(df, out, scale).to_event(3)  # event_shape (C, H, W)

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        return out.clamp(0, 1)  # the image shown in pictures

    def config(self) -> dict:
        return dict(self.init)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--limit-train", type=int, default=None, help="use the first N images")
    p.add_argument("--out", default="runs/custom_likelihood", help="run folder")
    args = p.parse_args()

    train_x, _ = vaekit.load_mnist(train=True, limit=args.limit_train)
    test_x, _ = vaekit.load_mnist(train=False, limit=args.limit_train)
    pyro.set_rng_seed(0)
    vae = vaekit.VAE(likelihood="student-t")  # by name, like the built-in ones
    result = vaekit.fit(vae, train_x, test_x, epochs=args.epochs,
                        batch_size=min(256, len(train_x)), run_dir=args.out, overwrite=True)
    lik = vae.likelihood
    print(f"test -ELBO {result.final['test_neg_elbo']:.2f} nats per image (a density: it can be "
          f"negative); learned scale {lik.log_scale.exp().item():.3f}, df {lik.log_df.exp().item():.2f}")

    again = vaekit.load(args.out).likelihood  # rebuilt by name from config.json, then the weights
    print(f"rebuilt: {type(again).__name__}, scale {again.log_scale.exp().item():.3f}, "
          f"df {again.log_df.exp().item():.2f}")


if __name__ == "__main__":
    main()

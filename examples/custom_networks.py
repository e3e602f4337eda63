"""Use your own encoder and decoder: here small fully connected nets instead of the DCGAN ones.

    python examples/custom_networks.py --epochs 3

An encoder maps images [B, C, H, W] to (z_loc, z_scale), each [B, z_dim]; a decoder maps
z [..., z_dim] to the likelihood's parameters [..., C, H, W]. vaekit checks both shapes when the
VAE is built. Given as "package.module:Class" strings (or as classes), they are recorded in
config.json so that `vaekit.load` can rebuild the model in any program that imports them (or
that trusts the run: `trust_plugins=True`, `--trust-plugins`; a run folder never imports code on
its own). The same from the command line, with this folder on the Python path:

    PYTHONPATH=examples vaekit fit --encoder custom_networks:MLPEncoder \
        --decoder custom_networks:MLPDecoder --z-dim 16 --out runs/mlp
    PYTHONPATH=examples vaekit sample runs/mlp --trust-plugins
"""

import argparse
import math

import pyro
from torch import nn

import vaekit


class MLPEncoder(nn.Module):
    """q(z|x): one hidden layer, then a location and a log-scale for each latent dimension."""

    def __init__(self, image_shape, z_dim, hidden: int = 256):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(image_shape), hidden), nn.ReLU(),
                                 nn.Linear(hidden, 2 * z_dim))

    def forward(self, x):
        z_loc, z_log_scale = self.net(x).chunk(2, dim=-1)
        return z_loc, z_log_scale.exp()  # each [batch, z_dim]; the scale must be positive


class MLPDecoder(nn.Module):
    """p(x|z): one hidden layer, then ``out_channels`` values per pixel (Bernoulli: logits)."""

    def __init__(self, image_shape, z_dim, out_channels, hidden: int = 256):
        super().__init__()
        self.shape = (out_channels, *image_shape[1:])
        self.net = nn.Sequential(nn.Linear(z_dim, hidden), nn.ReLU(),
                                 nn.Linear(hidden, math.prod(self.shape)))

    def forward(self, z):
        return self.net(z).reshape(*z.shape[:-1], *self.shape)  # z may have extra batch dims


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--limit-train", type=int, default=None, help="use the first N images")
    p.add_argument("--out", default="runs/custom_networks", help="run folder")
    args = p.parse_args()

    train_x, _ = vaekit.load_mnist(train=True, limit=args.limit_train)
    test_x, _ = vaekit.load_mnist(train=False, limit=args.limit_train)
    pyro.set_rng_seed(0)
    # Built as MLPEncoder(image_shape, z_dim) and MLPDecoder(image_shape, z_dim, out_channels).
    # Named by module (not as __main__.MLPEncoder) so that other programs can rebuild the model.
    vae = vaekit.VAE(z_dim=16, encoder="custom_networks:MLPEncoder",
                     decoder="custom_networks:MLPDecoder")
    result = vaekit.fit(vae, train_x, test_x, epochs=args.epochs,
                        batch_size=min(256, len(train_x)), run_dir=args.out, overwrite=True)
    print(f"test -ELBO {result.final['test_neg_elbo']:.2f} nats per image")
    print("encoder recorded as", vaekit.runs.read_config(args.out)["model"]["encoder"])


if __name__ == "__main__":
    main()

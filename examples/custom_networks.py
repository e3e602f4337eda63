"""Use your own encoder and decoder: here small fully connected nets instead of the DCGAN ones.

    python examples/custom_networks.py --epochs 3

An encoder maps images [B, C, H, W] to (z_loc, z_scale), each [B, z_dim]; a decoder maps
z [..., z_dim] to the likelihood's parameters [..., C, H, W]. vaekit checks both shapes when the
VAE is built. Passing the classes (or "package.module:Class" strings, as `vaekit fit --encoder`
does) records them in config.json so that `vaekit.load` can rebuild the model.
"""

import argparse

import pyro
import torch
from torch import nn

import vaekit


class MLPEncoder(nn.Module):
    def __init__(self, image_shape, z_dim, hidden: int = 256):
        super().__init__()
        c, h, w = image_shape
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, hidden), nn.ReLU(),
                                 nn.Linear(hidden, 2 * z_dim))

    def forward(self, x):
        z_loc, z_log_scale = self.net(x).chunk(2, dim=-1)
        return z_loc, z_log_scale.exp()


class MLPDecoder(nn.Module):
    def __init__(self, image_shape, z_dim, out_channels, hidden: int = 256):
        super().__init__()
        self.shape = (out_channels, *image_shape[1:])
        self.net = nn.Sequential(nn.Linear(z_dim, hidden), nn.ReLU(),
                                 nn.Linear(hidden, int(torch.tensor(self.shape).prod())))

    def forward(self, z):
        return self.net(z).reshape(*z.shape[:-1], *self.shape)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--limit-train", type=int, default=None)
    p.add_argument("--out", default="runs/custom_networks")
    args = p.parse_args()

    train_x, _ = vaekit.load_mnist(train=True, limit=args.limit_train)
    test_x, _ = vaekit.load_mnist(train=False, limit=args.limit_train)
    pyro.set_rng_seed(0)
    vae = vaekit.VAE(z_dim=16, encoder=MLPEncoder, decoder=MLPDecoder)
    result = vaekit.fit(vae, train_x, test_x, epochs=args.epochs,
                        batch_size=min(256, len(train_x)), run_dir=args.out, overwrite=True)
    print(f"test -ELBO {result.final['test_neg_elbo']:.2f} nats per image")
    print("encoder recorded as", vaekit.runs.read_config(args.out)["model"]["encoder"])


if __name__ == "__main__":
    main()

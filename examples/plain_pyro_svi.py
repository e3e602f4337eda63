"""vaekit's model and guide driven by a hand-written Pyro SVI loop (global param store).

    python examples/plain_pyro_svi.py --epochs 2

`vae.model` and `vae.guide` are ordinary Pyro programs: `pyro.module` registers their nets, a
`pyro.plate("data")` covers the batch, and both sample the site "z". Nothing vaekit-specific is
needed to fit them.
"""

import argparse

import pyro
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam

import vaekit


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--limit-train", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=256)
    args = p.parse_args()

    train_x, _ = vaekit.load_mnist(train=True, limit=args.limit_train)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    vae = vaekit.VAE(z_dim=32)
    svi = SVI(vae.model, vae.guide, Adam({"lr": 2e-3}), loss=Trace_ELBO())
    for epoch in range(1, args.epochs + 1):
        total = 0.0
        for idx in torch.randperm(len(train_x)).split(args.batch_size):
            x = torch.bernoulli(train_x[idx].float() / 255)  # dynamic binarization
            total += svi.step(x)
        print(f"epoch {epoch}: -ELBO {total / len(train_x):.2f} nats per image")


if __name__ == "__main__":
    main()

"""Fit the default Bernoulli VAE to MNIST, then save samples and reconstructions.

    python examples/quickstart.py --epochs 10 --out runs/quickstart
"""

import argparse

import pyro

import vaekit
from vaekit import plots


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--limit-train", type=int, default=None, help="use the first N images")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--out", default="runs/quickstart", help="run folder")
    args = p.parse_args()

    train_x, _ = vaekit.load_mnist(train=True, limit=args.limit_train)
    test_x, _ = vaekit.load_mnist(train=False, limit=args.limit_train)
    pyro.set_rng_seed(0)
    vae = vaekit.VAE(z_dim=32, likelihood="bernoulli", beta=1.0)
    result = vaekit.fit(vae, train_x, test_x, epochs=args.epochs,
                        batch_size=min(args.batch_size, len(train_x)), run_dir=args.out,
                        overwrite=True)
    print(f"test -ELBO {result.final['test_neg_elbo']:.2f} nats per image")

    vae = vaekit.load(args.out)  # the trained model, rebuilt from the run folder
    print("wrote", plots.save_samples(vae, f"{args.out}/quickstart_samples.png"))
    print("wrote", plots.save_reconstructions(vae, test_x[:32].float() / 255,
                                              f"{args.out}/quickstart_reconstructions.png"))


if __name__ == "__main__":
    main()

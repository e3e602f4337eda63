"""A VQ-VAE from Python: fit it, fit its learned prior over the codes, then sample and compare
the bounds under the two priors.

    python examples/vq_vae.py --epochs 5 --prior-epochs 20 --out runs/vq_vae

With ``posterior="vq:K"`` the guide is a point mass on the nearest of K codes of a grid of
``z_dim``-vectors (7x7 for MNIST), so the ELBO is exactly log p(x|codes) + log p(codes). During
training p(codes) is uniform (a constant 49 log K nats); `fit_prior` then fits a PixelCNN over
the codes of the training images, the VQ-VAE frozen, and the bound tightens by what it learns.
"""

import argparse

import pyro

import vaekit
from vaekit.evaluation import evaluate
from vaekit.likelihoods import test_observations
from vaekit.prior_fit import fit_prior


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--prior-epochs", type=int, default=20)
    p.add_argument("--limit-train", type=int, default=None, help="use the first N images")
    p.add_argument("--out", default="runs/vq_vae", help="run folder")
    args = p.parse_args()

    train_x, _ = vaekit.load_mnist(train=True, limit=args.limit_train)
    test_x, _ = vaekit.load_mnist(train=False, limit=1000)
    pyro.set_rng_seed(0)
    vae = vaekit.VAE(posterior="vq:512", z_dim=64)  # codebook_decay=0.0: the codebook loss
    vaekit.fit(vae, train_x, test_x, epochs=args.epochs, batch_size=128, lr=5e-4,
               commitment=0.25, run_dir=args.out, overwrite=True)
    fit_prior(args.out, epochs=args.prior_epochs, images=(train_x, test_x))  # runs/vq_vae/prior/

    vae = vaekit.load(args.out)  # with the learned prior
    x = test_observations(vae.likelihood, test_x)
    ev = evaluate(vae, x)
    print(f"test -ELBO {ev.neg_elbo:.2f} nats with the PixelCNN prior, "
          f"{ev.neg_elbo_uniform_prior:.2f} with the uniform one; "
          f"{ev.codes_used} of 512 codes used")
    vae.prior.temperature = 0.8
    print(f"samples: {tuple(vae.sample(16).shape)}")


if __name__ == "__main__":
    main()

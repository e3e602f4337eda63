"""A VAE-GAN from Python: fit it, then score its samples and its reconstructions.

    python examples/vae_gan.py --epochs 5 --out runs/vae_gan

The likelihood "discriminator" makes the VAE a VAE-GAN (Larsen et al. 2016): p(x|z) is a unit
Gaussian on a discriminator's features, and `vaekit.fit` trains the discriminator beside it.
Its -log p(x) is not defined, so it is judged by its samples (FID, KID, precision, recall in the
reference digit classifier's features) and by its pixel reconstruction error.
"""

import argparse

import pyro

import vaekit
from vaekit import quality
from vaekit.data import to_unit
from vaekit.evaluation import pixel_error


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--limit-train", type=int, default=None, help="use the first N images")
    p.add_argument("--samples", type=int, default=10_000, help="samples scored against test images")
    p.add_argument("--out", default="runs/vae_gan", help="run folder")
    args = p.parse_args()

    train_x, _ = vaekit.load_mnist(train=True, limit=args.limit_train)
    test_x, _ = vaekit.load_mnist(train=False, limit=max(args.samples, 100))
    pyro.set_rng_seed(0)
    vae = vaekit.VAE(likelihood="discriminator")  # get_likelihood("discriminator", feature_layer=1)
    vaekit.fit(vae, train_x, test_x, epochs=args.epochs, batch_size=128, lr=5e-4,
               gan_gamma=1.0, disc_lr=2e-4, run_dir=args.out, overwrite=True)

    vae = vaekit.load(args.out)  # loads and samples without its discriminator
    q = quality.sample_quality(vae, to_unit(test_x[:args.samples]), n=args.samples)
    print(f"FID {q.fid:.1f} ± {q.fid_se:.1f}, precision {q.precision:.3f}, recall {q.recall:.3f}")
    e = pixel_error(vae, test_x)
    print(f"pixel squared error {e.squared:.2f} ± {e.squared_se:.2f} per image")


if __name__ == "__main__":
    main()

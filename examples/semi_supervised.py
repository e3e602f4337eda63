"""A semi-supervised VAE (Kingma et al.'s M2) from Python: 100 labels, the rest of MNIST
unlabelled, the labels summed out by enumeration; then its test accuracy, its bound on
-log p(x) with y summed out, and Kingma's analogies picture.

    python examples/semi_supervised.py --epochs 5 --labels 100 --out runs/semi_supervised

`VAE(semi_supervised=True)` adds a classifier q(y|x) to the conditional VAE's q(z|x, y) and
p(x|z, y); `fit` trains it on the unlabelled batches with ``TraceEnum_ELBO`` (y enumerated) and
on the labelled images with y observed plus the classifier's cross-entropy (weight 46).
"""

import argparse

import pyro

import vaekit
from vaekit.evaluation import evaluate
from vaekit.likelihoods import test_observations
from vaekit.plots import save_analogies


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--labels", type=int, default=100, help="labelled training images")
    p.add_argument("--limit-train", type=int, default=None, help="use the first N images")
    p.add_argument("--out", default="runs/semi_supervised", help="run folder")
    args = p.parse_args()

    train_x, train_y = vaekit.load_mnist(train=True, limit=args.limit_train)
    test_x, test_y = vaekit.load_mnist(train=False, limit=1000)
    pyro.set_rng_seed(0)
    vae = vaekit.VAE(z_dim=50, num_classes=10, semi_supervised=True, nets="mlp:500")
    vaekit.fit(vae, train_x, test_x, train_labels=train_y, test_labels=test_y,
               epochs=args.epochs, batch_size=100, lr=1e-3, labels=args.labels,
               run_dir=args.out, overwrite=True)  # labelled.json: which images had labels

    vae = vaekit.load(args.out)
    x = test_observations(vae.likelihood, test_x)
    ev = evaluate(vae, x, num_samples=10, y=test_y)  # the labels score q(y|x) only
    print(f"test accuracy {ev.accuracy:.2f}%, -ELBO {ev.neg_elbo:.2f} and IWAE -log p(x) "
          f"{ev.neg_log_px:.2f} nats with y summed out")
    print(f"wrote {save_analogies(vae, x[:8], f'{args.out}/analogies.png')}")


if __name__ == "__main__":
    main()

"""vaekit's parts fitted by a hand-written Pyro SVI loop: `pyro.infer.SVI` and `pyro.optim.Adam`.

    python examples/plain_pyro_svi.py --epochs 2                # vaekit's own model and guide
    python examples/plain_pyro_svi.py --epochs 2 --model own    # a model/guide written here

`vae.model` and `vae.guide` are ordinary Pyro programs: `pyro.module` registers their nets in
Pyro's global parameter store, a `pyro.plate("data")` covers the batch, and both sample the site
"z". `own_program` below writes the same kind of model and guide around vaekit's parts
(`vae.encoder`, `vae.decoder`, `vae.likelihood`), with a sparse Laplace prior instead of a Normal.
"""

import argparse
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam
from torchvision.utils import save_image

import vaekit
from vaekit.likelihoods import test_observations


def own_program(vae: vaekit.VAE, beta: float = 1.0):
    """A model and a guide of your own around the nets and the likelihood of ``vae``."""

    def prior(n: int) -> dist.Distribution:
        return dist.Laplace(torch.zeros(n, vae.z_dim), torch.ones(n, vae.z_dim)).to_event(1)

    def model(x):
        pyro.module("decoder", vae.decoder)
        pyro.module("likelihood", vae.likelihood)
        with pyro.plate("data", x.shape[0]):
            with poutine.scale(scale=beta):  # β on the "z" site, here and in the guide
                z = pyro.sample("z", prior(x.shape[0]))
            pyro.sample("x", vae.likelihood(vae.decoder(z)), obs=x)

    def guide(x):
        pyro.module("encoder", vae.encoder)
        with pyro.plate("data", x.shape[0]):
            z_loc, z_scale = vae.encoder(x)
            with poutine.scale(scale=beta):
                pyro.sample("z", dist.Normal(z_loc, z_scale).to_event(1))

    return model, guide, prior


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--limit-train", type=int, default=None, help="use the first N images")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--model", choices=["vaekit", "own"], default="vaekit",
                   help="vaekit's model/guide, or own_program's")
    p.add_argument("--out", default="runs/plain_pyro_svi", help="folder for samples.png")
    args = p.parse_args()

    train_x, _ = vaekit.load_mnist(train=True, limit=args.limit_train)
    test_x, _ = vaekit.load_mnist(train=False, limit=args.limit_train)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    vae = vaekit.VAE(z_dim=32)  # its nets start in training mode (BatchNorm)
    test_obs = test_observations(vae.likelihood, test_x)  # binarized once, as vaekit's test sets
    if args.model == "vaekit":
        model, guide = vae.model, vae.guide
        prior = lambda n: dist.Normal(torch.zeros(n, vae.z_dim), 1.0).to_event(1)
    else:
        model, guide, prior = own_program(vae)
    svi = SVI(model, guide, Adam({"lr": 2e-3}), loss=Trace_ELBO())

    for epoch in range(1, args.epochs + 1):
        vae.train()
        total = 0.0
        for idx in torch.randperm(len(train_x)).split(args.batch_size):
            x = torch.bernoulli(train_x[idx].float() / 255)  # dynamic binarization
            total += svi.step(x)  # one Adam step on the -ELBO of the batch (a sum over images)
        vae.eval()  # BatchNorm's running statistics for the test set
        test = sum(svi.evaluate_loss(x) for x in test_obs.split(1000)) / len(test_obs)
        print(f"epoch {epoch}: -ELBO {total / len(train_x):.2f} train, {test:.2f} test "
              "(nats per image, one z per image)")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        images = vae.decode(prior(64).sample())  # mean images of p(x|z) for z ~ p(z)
    save_image(images, out / "samples.png", nrow=8, pad_value=0.5)
    print("wrote", out / "samples.png")


if __name__ == "__main__":
    main()

"""The VAE-GAN's training step against its bare networks' forward and backward.

    python benchmarks/vaegan_step.py --batch-size 128 --rounds 3

In one process, interleaved rounds of
  (a) the VAE-GAN's arithmetic in plain PyTorch on the same nets (the seed encoder and decoder,
      vaekit's `Discriminator`): encode, decode the reconstruction, its layer features and the
      real image's, decode reconstructions at detached latents and prior samples, their logits,
      one backward and Adam step for the VAE; then the discriminator's forward, backward and
      Adam step on the real and generated images;
  (b) `vaekit.fit` with ``likelihood="discriminator"`` (the Pyro model/guide, the traces, the
      auxiliary seam), timed by its own per-epoch clock, no test set;
  (c) `vaekit.fit` of the default VAE at the same batch size, for scale.
Prints the median images/s of each and b/a; writes JSON.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pyro
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BareLoop, machine, step_ratio  # noqa: E402

import vaekit  # noqa: E402
from vaekit.data import to_unit  # noqa: E402
from vaekit.nets import Decoder, Discriminator, Encoder  # noqa: E402


class BareVAEGAN(BareLoop):
    """(a): the same losses and updates as `vaekit.adversarial.VAEGAN`, in plain PyTorch."""

    def __init__(self, images: torch.Tensor, batch_size: int, lr: float = 5e-4) -> None:
        torch.manual_seed(0)
        self.x, self.bs = to_unit(images), batch_size
        self.enc, self.dec, self.disc = Encoder((1, 28, 28), 32), Decoder((1, 28, 28), 32), \
            Discriminator((1, 28, 28))
        for m in (self.enc, self.dec, self.disc):
            m.to(memory_format=torch.channels_last)
        self.opt = torch.optim.Adam([*self.enc.parameters(), *self.dec.parameters()], lr=lr)
        self.d_opt = torch.optim.Adam(self.disc.parameters(), lr=2e-4, betas=(0.5, 0.999))

    def step(self, x: torch.Tensor) -> None:
        n, d = x.shape[0], self.disc
        d.requires_grad_(False)
        loc, scale = self.enc(x)
        z = loc + scale * torch.randn_like(loc)
        recon = torch.sigmoid(self.dec(z))
        llike = 0.5 * (d(x, layer=2) - d(recon, layer=2)).pow(2).sum()
        kl = 0.5 * (loc.pow(2) + scale.pow(2) - 1 - 2 * scale.log()).sum()
        fakes = torch.sigmoid(self.dec(torch.cat([z.detach(), torch.randn_like(z)])))
        logits = d(fakes)
        loss = llike + kl + F.binary_cross_entropy_with_logits(
            logits, torch.ones_like(logits), reduction="sum")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        d.requires_grad_(True)
        logits = d(torch.cat([x, fakes.detach()]))
        d_loss = (F.binary_cross_entropy_with_logits(logits[:n], torch.ones_like(logits[:n]))
                  + 2 * F.binary_cross_entropy_with_logits(logits[n:],
                                                           torch.zeros_like(logits[n:])))
        self.d_opt.zero_grad(set_to_none=True)
        d_loss.backward()
        self.d_opt.step()


class VaekitStep:
    """(b) and (c): `vaekit.fit` for one epoch over ``n`` images, by its own clock."""

    def __init__(self, images: torch.Tensor, batch_size: int, model: dict | None = None,
                 **settings: object) -> None:
        self.x, self.bs, self.settings = images, batch_size, settings
        pyro.set_rng_seed(0)
        self.vae = vaekit.VAE(**(model or {}))

    def train_images(self, n: int) -> float:
        r = vaekit.fit(self.vae, self.x[:n], epochs=1, batch_size=self.bs, device="cpu",
                       progress=False, verbose=False, **self.settings)
        return r.final["seconds"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--images", type=int, default=4096, help="images per round")
    p.add_argument("--data-root", default=None)
    p.add_argument("--json", type=Path, default=Path("benchmarks/results/vaegan_step.json"))
    args = p.parse_args()
    images, _ = vaekit.load_mnist(args.data_root, train=True, download=False)
    n, bs = args.images - args.images % args.batch_size, args.batch_size
    print(f"machine: {machine()}\nbatch {bs}, {n} images per round\n", flush=True)
    loops = {"a_bare_vaegan": BareVAEGAN(images, bs),
             "b_vaekit_vaegan": VaekitStep(images, bs, {"likelihood": "discriminator"}, lr=5e-4),
             "c_vaekit_default_vae": VaekitStep(images, bs)}
    step_ratio(loops, n, bs, args.rounds, "VAE-GAN", args.json)

if __name__ == "__main__":
    main()

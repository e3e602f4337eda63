"""The semi-supervised M2's training step against its bare networks' forward and backward.

    python benchmarks/m2_step.py --batch-size 100 --rounds 3

In one process, interleaved rounds of
  (a) M2's arithmetic in plain PyTorch on the same modules (the conditional encoder, the
      classifier, the conditional decoder of ``VAE(num_classes=10, semi_supervised=True)``):
      the unlabelled batch's bound with y summed out by hand (every class's q(z|x, y), one z
      each, decoded; weighted by q(y|x), plus its entropy), the labelled batch's bound with y
      given and ``46 x`` the classifier's cross-entropy, one backward and Adam step;
  (b) `vaekit.fit` with ``--semi-supervised --labels 100`` (Pyro's ``TraceEnum_ELBO`` over the
      enumerated guide, ``Trace_ELBO`` on the labelled batch), timed by its own per-epoch
      clock, no test set;
  (c) `vaekit.fit` of the default VAE at the same batch size, for scale.
Prints the median images/s (unlabelled images; each step also trains on a labelled batch of
the same size) and b/a; writes JSON.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pyro
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BareLoop, machine, step_ratio  # noqa: E402

import vaekit  # noqa: E402
from vaekit.data import to_unit  # noqa: E402
from vaekit.semisupervised import labelled_subset  # noqa: E402

CLASSES = 10


def m2(nets: str, z_dim: int) -> vaekit.VAE:
    return vaekit.VAE(num_classes=CLASSES, semi_supervised=True, nets=nets, z_dim=z_dim)


class BareM2(BareLoop):
    """(a): the loss of `vaekit.semisupervised.SemiSupervised`, written out in plain PyTorch."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, nets: str,
                 z_dim: int, lr: float = 1e-3, weight: float = 46.0) -> None:
        torch.manual_seed(0)
        vae = m2(nets, z_dim).to(memory_format=torch.channels_last)
        self.enc, self.clf, self.dec = vae.guide.encoder, vae.guide.classifier, vae.model.decoder
        self.x, self.bs, self.weight = to_unit(images), batch_size, weight
        idx = labelled_subset(labels, 100, seed=0)
        self.x_l, self.y_l = self.x[idx], labels[idx]
        self.opt = torch.optim.Adam(vae.parameters(), lr=lr)

    def bound(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """log p(x|z,y) + log p(z) - log q(z|x,y) + log p(y), one z per image: ``[N]``."""
        loc, scale = self.enc(x, y)
        z = loc + scale * torch.randn_like(loc)
        logits = self.dec(z, y).reshape(len(x), -1)
        log_lik = -F.binary_cross_entropy_with_logits(logits, x.reshape(len(x), -1),
                                                      reduction="none").sum(-1)
        kl = (-0.5 * z.pow(2) + 0.5 * ((z - loc) / scale).pow(2) + scale.log()).sum(-1)
        return log_lik - kl - math.log(CLASSES)

    def step(self, x: torch.Tensor) -> None:
        b = len(x)
        log_q = F.log_softmax(self.clf(x), -1)  # [B, C]
        ys = torch.arange(CLASSES).repeat_interleave(b)
        xs = x.repeat(CLASSES, 1, 1, 1).contiguous(memory_format=torch.channels_last)
        per_class = self.bound(xs, ys).reshape(CLASSES, b).T  # [B, C]
        q = log_q.exp()
        unlabelled = (q * (per_class - log_q)).sum()
        pick = torch.randperm(len(self.y_l))[:self.bs]
        x_l = torch.bernoulli(self.x_l[pick]).contiguous(memory_format=torch.channels_last)
        y_l = self.y_l[pick]
        ce = F.cross_entropy(self.clf(x_l), y_l, reduction="sum")
        loss = -unlabelled - self.bound(x_l, y_l).sum() + self.weight * ce
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return torch.bernoulli(x)


class VaekitM2:
    """(b): `vaekit.fit` of the M2 for one epoch over ``n`` images, by its own clock."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, nets: str,
                 z_dim: int) -> None:
        self.x, self.y, self.bs = images, labels, batch_size
        pyro.set_rng_seed(0)
        self.vae = m2(nets, z_dim)

    def train_images(self, n: int) -> float:
        r = vaekit.fit(self.vae, self.x[:n], epochs=1, batch_size=self.bs, device="cpu",
                       train_labels=self.y[:n], labels=100, labelled_batch=self.bs, lr=1e-3,
                       progress=False, verbose=False)
        return r.final["seconds"]


def main() -> None:
    from vaegan_step import VaekitStep

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--images", type=int, default=2000, help="unlabelled images per round")
    p.add_argument("--nets", default="mlp:500", help="dcgan or mlp:H (Pyro's example: MLPs)")
    p.add_argument("--z-dim", type=int, default=50)
    p.add_argument("--data-root", default=None)
    p.add_argument("--json", type=Path, default=Path("benchmarks/results/m2_step.json"))
    args = p.parse_args()
    images, labels = vaekit.load_mnist(args.data_root, train=True, download=False)
    n, bs = args.images - args.images % args.batch_size, args.batch_size
    print(f"machine: {machine()}\nbatch {bs} + {bs} labelled, {n} images per round, nets "
          f"{args.nets}, z_dim {args.z_dim}\n", flush=True)
    loops = {"a_bare_m2": BareM2(images, labels, bs, args.nets, args.z_dim),
             "b_vaekit_m2": VaekitM2(images, labels, bs, args.nets, args.z_dim),
             "c_vaekit_default_vae": VaekitStep(images, bs)}
    step_ratio(loops, n, bs, args.rounds, "M2", args.json)


if __name__ == "__main__":
    main()

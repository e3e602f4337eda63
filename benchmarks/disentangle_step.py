"""The β-TCVAE's and FactorVAE's training steps against their bare networks' forward and backward.

    python benchmarks/disentangle_step.py --batch-size 64 --rounds 3

On the sprites (``--data sprites:small``, 64x64 binary images, z of 10, the seed's conv nets
sized for 64x64), in one process, interleaved rounds of
  (a) β-TCVAE's arithmetic in plain PyTorch on the same nets: encode, one reparameterised draw,
      decode, the Bernoulli log-likelihood, the batch's pairwise densities q(z_i|x_j) with Chen
      et al.'s stratified weights, MI, TC and dimension-wise KL weighted 1, 6, 1, one backward
      and Adam step;
  (b) `vaekit.fit` with ``objective="beta-tc"`` (the Pyro model/guide, the traces), timed by its
      own per-epoch clock, no test set;
  (c) FactorVAE in plain PyTorch: encode, draw, decode, -ELBO + 35 TC from the discriminator
      (6 layers of 1000), the VAE's backward and Adam step; then the discriminator's forward on
      the detached z and their dimension-wise permutation, backward and Adam step;
  (d) `vaekit.fit` with ``objective="factor-vae"``;
  (e) `vaekit.fit` of the plain VAE at the same batch size, for scale.
Prints the median images/s of each, b/a and d/c; writes JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.distributions import Normal

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BareLoop, machine  # noqa: E402
from vaegan_step import VaekitStep  # noqa: E402

from vaekit.data import to_unit  # noqa: E402
from vaekit.factor_vae import TCDiscriminator, permute_dims  # noqa: E402
from vaekit.nets import Decoder, Encoder  # noqa: E402
from vaekit.sprites import sprites  # noqa: E402

SHAPE = (1, 64, 64)


def stratified_log_weights(m: int, n: int) -> torch.Tensor:
    """Chen et al.'s minibatch stratified sampling weights, ``log w`` ``[m, m]``."""
    k = m - 1
    w = torch.full((m, m), 1.0 / k)
    w.view(-1)[::k + 1] = 1.0 / n
    w.view(-1)[1::k + 1] = (n - k) / (n * k)
    w[k - 1, 0] = (n - k) / (n * k)
    return w.log()


class Bare(BareLoop):
    """(a) and (c): the objective in plain PyTorch on the same nets, same batches."""

    def __init__(self, images: torch.Tensor, batch_size: int, objective: str,
                 z_dim: int = 10, lr: float = 1e-3) -> None:
        torch.manual_seed(0)
        self.x, self.bs, self.objective, self.z_dim = images, batch_size, objective, z_dim
        self.enc, self.dec = Encoder(SHAPE, z_dim), Decoder(SHAPE, z_dim)
        for m in (self.enc, self.dec):
            m.to(memory_format=torch.channels_last)
        self.opt = torch.optim.Adam([*self.enc.parameters(), *self.dec.parameters()], lr=lr)
        self.log_w = stratified_log_weights(batch_size, images.shape[0])
        if objective == "factor-vae":
            self.disc = TCDiscriminator(z_dim)
            self.d_opt = torch.optim.Adam(self.disc.parameters(), lr=1e-4, betas=(0.5, 0.9))

    def step(self, x: torch.Tensor) -> None:
        loc, scale = self.enc(x)
        z = loc + scale * torch.randn_like(loc)
        log_lik = -F.binary_cross_entropy_with_logits(self.dec(z), x, reduction="none").sum(
            (1, 2, 3))
        log_q = Normal(loc, scale).log_prob(z).sum(-1)
        log_p = Normal(0.0, 1.0).log_prob(z).sum(-1)
        if self.objective == "beta-tc":
            pair = Normal(loc[None], scale[None]).log_prob(z[:, None])
            log_qz = torch.logsumexp(self.log_w + pair.sum(-1), dim=1)
            log_qz_dims = torch.logsumexp(self.log_w[:, :, None] + pair, dim=1).sum(-1)
            loss = -(log_lik - (log_q - log_qz) - 6.0 * (log_qz - log_qz_dims)
                     - (log_qz_dims - log_p)).sum()
        else:
            self.disc.requires_grad_(False)
            logits = self.disc(z)
            self.disc.requires_grad_(True)
            loss = (-log_lik + log_q - log_p + 35.0 * (logits[:, 0] - logits[:, 1])).sum()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        if self.objective == "factor-vae":
            zd = z.detach()
            logits = self.disc(torch.cat([zd, permute_dims(zd)]))
            target = torch.cat([torch.zeros(len(zd)), torch.ones(len(zd))]).long()
            d_loss = F.cross_entropy(logits, target)
            self.d_opt.zero_grad(set_to_none=True)
            d_loss.backward()
            self.d_opt.step()

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return to_unit(x)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", default="sprites:small")
    p.add_argument("--data-root", default=None, help="where the sprites are cached")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--images", type=int, default=2048, help="images per round")
    p.add_argument("--json", type=Path, default=Path("benchmarks/results/disentangle_step.json"))
    args = p.parse_args()
    images = sprites(args.data, args.data_root).images
    images = images[torch.randperm(len(images), generator=torch.Generator().manual_seed(0))]
    n, bs = args.images - args.images % args.batch_size, args.batch_size
    print(f"machine: {machine()}\n{args.data}, batch {bs}, {n} images per round\n", flush=True)
    model = {"z_dim": 10, "image_shape": SHAPE}
    loops = {
        "a_bare_beta_tc": Bare(images, bs, "beta-tc"),
        "b_vaekit_beta_tc": VaekitStep(images, bs, model, objective="beta-tc", tc_beta=6.0,
                                       lr=1e-3),
        "c_bare_factor_vae": Bare(images, bs, "factor-vae"),
        "d_vaekit_factor_vae": VaekitStep(images, bs, model, objective="factor-vae",
                                          factor_gamma=35.0, disc_lr=1e-4, lr=1e-3),
        "e_vaekit_plain_vae": VaekitStep(images, bs, model, lr=1e-3),
    }
    for loop in loops.values():  # warm-up
        loop.train_images(2 * bs)
    rates: dict[str, list[float]] = {k: [] for k in loops}
    for _ in range(args.rounds):
        for name, loop in loops.items():
            rates[name].append(n / loop.train_images(n))
    med = {k: statistics.median(v) for k, v in rates.items()}
    for k, v in med.items():
        print(f"{k:<22} {v:8.0f} images/s  ({bs / v * 1000:.1f} ms per step)")
    ratios = {"beta_tc": med["b_vaekit_beta_tc"] / med["a_bare_beta_tc"],
              "factor_vae": med["d_vaekit_factor_vae"] / med["c_bare_factor_vae"]}
    for k, r in ratios.items():
        print(f"vaekit {k} / bare nets: {r:.3f} (overhead {100 * (1 - r):.1f} %)")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"machine": machine(), "data": args.data, "batch_size": bs,
                                     "images": n, "rounds": args.rounds, "images_per_s": med,
                                     "all_rounds": rates, "vaekit_over_bare": ratios},
                                    indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

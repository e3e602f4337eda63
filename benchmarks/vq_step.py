"""The VQ-VAE's training step against its bare networks' forward and backward.

    python benchmarks/vq_step.py --batch-size 128 --rounds 3
    python benchmarks/vq_step.py --latents 2     # the VQ-VAE-2: two grids, two codebooks

In one process, interleaved rounds of
  (a) the VQ-VAE's arithmetic in plain PyTorch on the same modules (`GridEncoder`, the
      moving-average `VectorQuantizer`, `GridDecoder`): encode, quantize (straight through),
      decode, the Bernoulli reconstruction and 0.25 times the commitment loss, one backward and
      Adam step (``--latents 2``: `TwoLevelGridEncoder`, two quantizers, `TwoLevelGridDecoder`);
  (b) `vaekit.fit` with ``posterior="vq:512"``, ``z_dim=64`` and ``latents`` (the Pyro
      model/guide, the traces, the objective's bookkeeping), timed by its own per-epoch clock,
      no test set;
  (c) `vaekit.fit` of the default VAE at the same batch size, for scale.
Prints the median images/s of each and b/a; writes JSON.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BareLoop, machine, step_ratio  # noqa: E402
from vaegan_step import VaekitStep  # noqa: E402

import vaekit  # noqa: E402
from vaekit.data import to_unit  # noqa: E402
from vaekit.nets import (  # noqa: E402
    GridDecoder,
    GridEncoder,
    TwoLevelGridDecoder,
    TwoLevelGridEncoder,
)
from vaekit.quantize import VectorQuantizer  # noqa: E402


class BareVQ(BareLoop):
    """(a): the same loss and updates as `vaekit.vqvae.VQTraining`, in plain PyTorch."""

    def __init__(self, images: torch.Tensor, batch_size: int, lr: float = 5e-4,
                 latents: int = 1) -> None:
        torch.manual_seed(0)
        self.x, self.bs, self.latents = to_unit(images), batch_size, latents
        enc, dec = ((GridEncoder, GridDecoder) if latents == 1
                    else (TwoLevelGridEncoder, TwoLevelGridDecoder))
        self.enc, self.dec = enc((1, 28, 28), 64), dec((1, 28, 28), 64)
        for m in (self.enc, self.dec):  # as vaekit.fit holds conv nets on the CPU
            m.to(memory_format=torch.channels_last)
        self.vq = [VectorQuantizer(512, 64) for _ in range(latents)]
        self.opt = torch.optim.Adam([*self.enc.parameters(), *self.dec.parameters()], lr=lr)

    def step(self, x: torch.Tensor) -> None:
        if self.latents == 1:
            qs = [self.vq[0](self.enc(x))]
        else:
            h, z_e2 = self.enc(x)
            top = self.vq[1](z_e2)
            qs = [self.vq[0](self.enc.merge(h, top.quantized)), top]
        logits = self.dec(*(q.quantized for q in qs))
        loss = (F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
                + 0.25 * sum(q.commitment.sum() for q in qs))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return torch.bernoulli(x)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--images", type=int, default=4096, help="images per round")
    p.add_argument("--data-root", default=None)
    p.add_argument("--latents", type=int, default=1, choices=(1, 2))
    p.add_argument("--json", type=Path, default=None,
                   help="default benchmarks/results/vq_step.json (vq2_step.json for 2 levels)")
    args = p.parse_args()
    json_path = args.json or Path(f"benchmarks/results/vq{'2' if args.latents == 2 else ''}"
                                  "_step.json")
    images, _ = vaekit.load_mnist(args.data_root, train=True, download=False)
    n, bs = args.images - args.images % args.batch_size, args.batch_size
    print(f"machine: {machine()}\nbatch {bs}, {n} images per round\n", flush=True)
    loops = {"a_bare_vq": BareVQ(images, bs, latents=args.latents),
             "b_vaekit_vq": VaekitStep(images, bs, {"posterior": "vq:512", "z_dim": 64,
                                                    "latents": args.latents}, lr=5e-4),
             "c_vaekit_default_vae": VaekitStep(images, bs)}
    step_ratio(loops, n, bs, args.rounds, "VQ-VAE" if args.latents == 1 else "VQ-VAE-2",
               json_path)

if __name__ == "__main__":
    main()

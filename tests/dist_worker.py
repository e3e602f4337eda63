"""Three data-parallel SGD steps on a noise-free stand-in for the ELBO, for test_distributed.py.

    python -m torch.distributed.run --nproc-per-node 2 tests/dist_worker.py OUT.pt

With one process (plain ``python``) it trains on the whole batch; with N it trains each rank on
its shard exactly as `vaekit.fit` does (DDP, loss scaled by the world size, global BatchNorm).
Rank 0 saves the final state_dict.
"""

import atexit
import sys

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from vaekit import VAE
from vaekit.distributed import convert_sync_batchnorm, setup


class NoiseFreeLoss(nn.Module):
    """Reconstruction NLL at z = posterior mean, plus the analytic KL: deterministic."""

    def __init__(self, vae: VAE) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z_loc, z_scale = self.vae.encoder(x)
        recon = -self.vae.likelihood(self.vae.decoder(z_loc)).log_prob(x).sum()
        return recon + 0.5 * (z_scale**2 + z_loc**2 - 1 - 2 * z_scale.log()).sum()


def _report_group_closed() -> None:
    # Registered before setup(), so it runs after vaekit's own exit handler (atexit is LIFO).
    print(f"process group open at exit: {torch.distributed.is_initialized()}", flush=True)


def main(out: str) -> None:
    atexit.register(_report_group_closed)
    ctx, dev = setup(torch.device("cpu"))
    torch.manual_seed(0)
    vae = VAE(z_dim=4)
    x = torch.bernoulli(torch.rand(32, 1, 28, 28, generator=torch.Generator().manual_seed(1)))
    if ctx.active:
        convert_sync_batchnorm(vae, dev)
    loss_fn = NoiseFreeLoss(vae)
    train = DistributedDataParallel(loss_fn) if ctx.active else loss_fn
    # SGD, not Adam: Adam would blow up the float noise in the ~0 gradients of conv biases
    # that BatchNorm cancels, and hide what this checks.
    opt = torch.optim.SGD(vae.parameters(), lr=1e-3)
    for _ in range(3):
        loss = train(x[ctx.rank :: ctx.world])
        opt.zero_grad()
        (loss * ctx.world).backward()
        opt.step()
    if ctx.main:
        torch.save(vae.state_dict(), out)


if __name__ == "__main__":
    main(sys.argv[1])

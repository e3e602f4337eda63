"""Data-parallel SGD steps on a noise-free stand-in for the ELBO, for test_distributed.py.

    python -m torch.distributed.run --nproc-per-node 2 tests/dist_worker.py OUT.pt

With one process (plain ``python``) it trains on the whole batch; with N it trains each rank on
its shard exactly as `vaekit.fit` does (DDP, loss scaled by the world size, global BatchNorm).
Rank 0 saves, for each mode, the initial state_dict, the gradients of the first step and the
state_dict after `STEPS` steps. Besides the correct ``"ddp"`` mode, two deliberately broken
all-reduces are run in the same process group, so that the test can show its comparison catches
them:

- ``"drop"``: rank 1's gradients are dropped (its loss is multiplied by 0);
- ``"sum"``: the ranks' gradients are summed instead of averaged.
"""

import atexit
import sys

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from vaekit import VAE
from vaekit.distributed import convert_sync_batchnorm, setup

STEPS = 3
LR = 1e-6  # SGD on a loss summed over 25,088 pixels: moves of ~1e-2 per step (see the test)
MODES = ("ddp", "drop", "sum")


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


def train(ctx, dev, mode: str) -> dict:
    """`STEPS` SGD steps from the seeded initial weights; first-step gradients and final state."""
    torch.manual_seed(0)
    vae = VAE(z_dim=4)
    x = torch.bernoulli(torch.rand(32, 1, 28, 28, generator=torch.Generator().manual_seed(1)))
    if ctx.active:
        convert_sync_batchnorm(vae, dev)
    init = {k: v.clone() for k, v in vae.state_dict().items()}
    loss_fn = NoiseFreeLoss(vae)
    model = DistributedDataParallel(loss_fn) if ctx.active else loss_fn
    # SGD, not Adam: Adam's first steps move every parameter by about lr * sign(g), which turns
    # the float noise in the ~0 gradients of conv biases that BatchNorm cancels into full steps.
    opt = torch.optim.SGD(vae.parameters(), lr=LR)
    scale = {"ddp": ctx.world, "drop": ctx.world * (ctx.rank == 0), "sum": ctx.world**2}[mode]
    grads = None
    for _ in range(STEPS):
        loss = model(x[ctx.rank :: ctx.world])
        opt.zero_grad()
        (loss * scale).backward()
        if grads is None:
            grads = {n: p.grad.clone() for n, p in vae.named_parameters()}
        opt.step()
    return {"init": init, "grads": grads, "state": vae.state_dict()}


def main(out: str) -> None:
    atexit.register(_report_group_closed)
    ctx, dev = setup(torch.device("cpu"))
    results = {mode: train(ctx, dev, mode) for mode in (MODES if ctx.active else MODES[:1])}
    if ctx.main:
        torch.save(results, out)


if __name__ == "__main__":
    main(sys.argv[1])

"""Data-parallel training with ``torch.distributed``: process group, sync BatchNorm, launcher.

    torchrun --nproc-per-node 2 -m vaekit fit --batch-size 1024 ...   # or: vaekit fit --nproc 2

Each rank holds the whole model and its own shard of every global batch; DDP all-reduces the
gradients. NCCL on GPUs, Gloo on CPUs. Only rank 0 writes the run folder.
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["Context", "setup", "launch", "GlobalBatchNorm2d", "convert_sync_batchnorm"]


class Context:
    """Where this process stands: ``rank``, ``world`` size and whether it is the main rank."""

    def __init__(self, rank: int = 0, world: int = 1) -> None:
        self.rank, self.world = rank, world

    @property
    def main(self) -> bool:
        """True on rank 0 (the only rank that prints and writes files)."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        """True when there is more than one process."""
        return self.world > 1

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Sum ``t`` over ranks (in place; a no-op for one process)."""
        if self.active:
            dist.all_reduce(t)
        return t

    def all_max(self, t: torch.Tensor) -> torch.Tensor:
        """Maximum of ``t`` over ranks (in place)."""
        if self.active:
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order."""
        if not self.active:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def from_main(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.active:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def setup(device: torch.device) -> tuple[Context, torch.device]:
    """Join the process group that ``torchrun`` describes in the environment, if any.

    Returns:
        The `Context` and the device of this rank (``cuda:LOCAL_RANK`` on GPUs).
    """
    if dist.is_available() and dist.is_initialized():
        ctx = Context(dist.get_rank(), dist.get_world_size())
    elif int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        # A group vaekit opened, vaekit closes: a process that exits with the group alive can
        # abort in Gloo's/NCCL's destructors ("terminate called without an active exception").
        atexit.register(_destroy_process_group)
        ctx = Context(dist.get_rank(), dist.get_world_size())
    else:
        return Context(), device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return ctx, device


def _destroy_process_group() -> None:
    """Close the default process group while the interpreter is still whole (at exit)."""
    if dist.is_initialized():
        dist.destroy_process_group()


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose gradient is the sum of the ranks' gradients."""

    @staticmethod
    def forward(ctx: Any, t: torch.Tensor) -> torch.Tensor:
        t = t.clone()
        dist.all_reduce(t)
        return t

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the global batch over all ranks.

    ``torch.nn.SyncBatchNorm`` does the same on GPUs only; this one works with Gloo on CPUs too,
    through an all-reduce whose backward all-reduces the gradients.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """See `torch.nn.BatchNorm2d.forward`."""
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return super().forward(x)
        c = x.shape[1]
        count = x.new_full((1,), x.numel() / c)
        stats = _AllReduceSum.apply(torch.cat([x.sum((0, 2, 3)), (x * x).sum((0, 2, 3)), count]))
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c : 2 * c] / n - mean * mean).clamp_min(0)
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                m = self.momentum if self.momentum is not None else 0.1
                self.running_mean.lerp_(mean.detach(), m)
                self.running_var.lerp_(var.detach() * n / (n - 1).clamp_min(1), m)
                self.num_batches_tracked += 1
        shape = (1, c, 1, 1)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Make every BatchNorm2d in ``module`` use global-batch statistics (in place).

    ``torch.nn.SyncBatchNorm`` on GPUs, `GlobalBatchNorm2d` on CPUs; the parameters, buffers and
    ``state_dict`` keys stay the same, so checkpoints load into plain BatchNorm2d.
    """
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            new = GlobalBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                    child.track_running_stats).to(child.weight.device)
            new.load_state_dict(child.state_dict())
            setattr(module, name, new)
        else:
            convert_sync_batchnorm(child, device)
    return module


def launch(nproc: int, argv: Sequence[str]) -> int:
    """Run ``python -m vaekit ARGV`` in ``nproc`` processes with torchrun on this machine.

    Returns:
        torchrun's exit code (non-zero if any rank failed; torchrun stops the others).
    """
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc-per-node={nproc}", "-m", "vaekit", *argv]
    child = subprocess.Popen(cmd, preexec_fn=_die_with_parent if sys.platform == "linux" else None)
    # Ctrl-C reaches torchrun and the ranks through the terminal's process group; the launcher
    # waits for them to write their checkpoint and stop, and exits with their code.
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return child.wait()
    finally:
        signal.signal(signal.SIGINT, old)


def _die_with_parent() -> None:
    """In the torchrun child (Linux): receive SIGTERM when the launcher dies, even by SIGKILL,
    so that torchrun stops the ranks instead of leaving them training, orphaned."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG

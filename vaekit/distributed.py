"""Data-parallel training with ``torch.distributed``: process group, sync BatchNorm, launcher.

    vaekit fit --nproc 2 --batch-size 1024 ...   # or: torchrun --nproc-per-node 2 -m vaekit fit ...

Each rank holds the whole model and its own shard of every global batch; DDP all-reduces the
gradients. NCCL on GPUs, Gloo on CPUs. Only rank 0 writes the run folder.
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["Context", "setup", "launch", "GlobalBatchNorm2d", "convert_sync_batchnorm",
           "relaunch", "lost_a_rank", "LAUNCHED", "stop_on_signals", "StopFlag"]


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

    def agree(self, *flags: float) -> list[int]:
        """The largest of each flag over ranks, the same list on every rank (as ints).

        Read at one point of the loop on every rank, so that a signal handled by one rank a
        moment later than by another cannot send them down different branches (and into
        different collectives, which would hang): e.g. ``stop, bad = agree(signum, not ok)``.
        """
        t = torch.tensor([float(f) for f in flags])
        return [int(v) for v in (self.all_max(t) if self.active else t).tolist()]

    def random_states(self, device: torch.device) -> list[dict[str, torch.Tensor]]:
        """Every rank's torch (and CUDA) random state, in rank order, for an exact resume."""
        own = {"torch": torch.get_rng_state()}
        if device.type == "cuda":
            own["cuda"] = torch.cuda.get_rng_state(device)
        return self.gather(own)

    def restore_random_state(self, state: dict[str, Any], device: torch.device) -> None:
        """Set this rank's random state from a checkpoint's ``rng`` (`random_states` of the
        ranks that saved it): its own when the world size is unchanged, else fresh noise
        derived from it."""
        ranks = state.get("ranks", [])
        own = ranks[self.rank] if len(ranks) == self.world else state
        if self.world > 1 and len(ranks) != self.world:
            own = {"torch": torch.Generator().manual_seed(int(state["torch"][:8].sum())
                                                          + self.rank).get_state()}
        torch.set_rng_state(own["torch"])
        if device.type == "cuda" and "cuda" in own:
            torch.cuda.set_rng_state(own["cuda"], device)

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


LAUNCHED = "VAEKIT_LAUNCHED"
"""Set in the ranks `launch` starts: a rank that loses another leaves the message to it."""


def launch(nproc: int, argv: Sequence[str]) -> int:
    """Run ``python -m vaekit ARGV`` in ``nproc`` processes on this machine and wait for them.

    Each rank gets the environment ``torchrun --standalone`` would give it (``RANK``,
    ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``/``MASTER_PORT`` of a free local port, and
    ``OMP_NUM_THREADS=1`` unless set), so `setup` joins the group the same way and the steps are
    those of the same torchrun job.
    Ctrl-C reaches the ranks through the terminal's process group: the launcher ignores it and
    waits while they write their checkpoint and stop. A SIGTERM to the launcher is passed on to
    the ranks; a killed launcher (even ``kill -9``) takes them with it (Linux). When a rank
    fails, the others are stopped (SIGTERM, then SIGKILL after ``grace`` seconds).

    Returns:
        0, or the exit code of the first rank that failed (rank 0 first; 128 + the signal number
        after an interrupt).
    """
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()),
               WORLD_SIZE=str(nproc), LOCAL_WORLD_SIZE=str(nproc), **{LAUNCHED: "1"})
    env.setdefault("OMP_NUM_THREADS", "1")  # torchrun's default for several processes
    ranks = [subprocess.Popen([sys.executable, "-m", "vaekit", *argv],
                              env=dict(env, RANK=str(r), LOCAL_RANK=str(r), GROUP_RANK="0"),
                              preexec_fn=_die_with_parent if sys.platform == "linux" else None)
             for r in range(nproc)]

    def pass_on(signum: int, frame: Any) -> None:
        for p in ranks:
            if p.poll() is None:
                p.send_signal(signum)

    old = {signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN),
           signal.SIGTERM: signal.signal(signal.SIGTERM, pass_on)}
    run_dir = _option_value(argv, "--resume") or _option_value(argv, "--out")
    resume = f"; continue with: vaekit fit --resume {run_dir}" if run_dir else ""

    def report(rank: int, signum: int) -> None:
        name = signal.Signals(signum).name if signum in signal.Signals._value2member_map_ else ""
        print(f"Error: rank {rank} died of signal {signum}{f' ({name})' if name else ''}; the "
              f"other ranks were stopped{resume}", file=sys.stderr, flush=True)

    try:
        return _wait_for_ranks(ranks, report=report)
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def _wait_for_ranks(ranks: list[subprocess.Popen[bytes]], grace: float = 30.0,
                    report: Callable[[int, int], None] | None = None) -> int:
    """Wait until every rank has exited; stop the rest once one fails.

    Returns the exit code of the first rank that failed (a code the rank chose before one it
    died of, among those seen at the same moment; death by signal N as 128 + N), else 0. The
    ranks stopped because of it die of the launcher's SIGTERM: their codes say nothing.
    ``report(rank, signal)`` is called for a rank found dead of a signal the launcher did not
    send (kill -9 of a rank, the kernel's OOM killer): its own message, if any, is lost, and
    the others only see a connection closed.
    """
    stop_at, first = None, 0
    while True:
        codes = [p.poll() for p in ranks]
        failed = sorted((c for c in codes if c), key=lambda c: c < 0)  # chosen codes first
        if failed and not first:
            first = failed[0] if failed[0] > 0 else 128 - failed[0]
            killed = [(r, -c) for r, c in enumerate(codes) if c is not None and c < 0]
            if killed and report is not None:
                report(*killed[0])
        if all(c is not None for c in codes):
            return first
        if failed and stop_at is None:  # a rank failed: the others would wait on it forever
            stop_at = time.monotonic() + grace
            for p in ranks:
                if p.poll() is None:
                    p.terminate()
        elif stop_at is not None and time.monotonic() > stop_at:
            for p in ranks:
                if p.poll() is None:
                    p.kill()
        time.sleep(0.1)


def relaunch(nproc: int, argv: Sequence[str], out: str | None = None) -> int:
    """``vaekit ARGV`` again in ``nproc`` ranks (`launch`), without its ``--nproc`` and with
    ``--out OUT`` added when given (every rank must write the same run folder).

    Returns:
        The exit code for the launcher (see `launch`).
    """
    args, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            args.append(a)
    return launch(nproc, [*args, *(["--out", out] if out is not None else [])])


def _option_value(argv: Sequence[str], name: str) -> str | None:
    """The value of ``name VALUE`` or ``name=VALUE`` in ``argv``, or None."""
    for i, a in enumerate(argv):
        if a == name and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


def lost_a_rank(e: BaseException) -> bool:
    """Whether ``e`` is a collective's failure because another rank went away (Gloo, NCCL)."""
    dist_error = getattr(torch.distributed, "DistError", ())
    text = str(e)
    return isinstance(e, RuntimeError) and (
        (bool(dist_error) and isinstance(e, dist_error))
        or any(m in text for m in ("Connection closed by peer", "Connection reset by peer",
                                   "Gloo", "NCCL")))


def _free_port() -> int:
    """A TCP port free on 127.0.0.1 now, for rank 0's store."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """In each rank (Linux): receive SIGTERM when the launcher dies, even by SIGKILL, so that
    the rank checkpoints and stops instead of training on, orphaned."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class StopFlag:
    """The signal received (0: none yet)."""

    signum: int = 0


class stop_on_signals:
    """Context manager: SIGINT/SIGTERM set a flag that the loop checks after each step."""

    def __enter__(self) -> StopFlag:
        self.flag = StopFlag()
        self.old: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.old[sig] = signal.signal(sig, self._handle)
        return self.flag

    def _handle(self, signum: int, frame: Any) -> None:
        if self.flag.signum:  # a second signal: stop at once
            raise KeyboardInterrupt
        self.flag.signum = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self.old.items():
            signal.signal(sig, handler)

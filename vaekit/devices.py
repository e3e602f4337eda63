"""Where tensors live and how modules run: the device, evaluation mode, compiled-kernel caches.

    dev = resolve_device("auto")          # CUDA when there is a GPU, else the CPU
    with eval_mode(vae):                  # BatchNorm running statistics; the mode is restored
        x_mean = vae.reconstruct(x)
"""

from __future__ import annotations

import contextlib
import getpass
import os
import tempfile
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from vaekit.errors import ConfigError

__all__ = ["resolve_device", "eval_mode", "separate_compile_cache", "deterministic",
           "amp_speedup", "AMP_FASTER"]

AMP_FASTER = 1.05
"""``--amp auto`` turns bf16 autocast on where the probe measures it at least this much faster."""


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` picks CUDA when available, else the CPU; ``"cuda"`` without a GPU is an error."""
    name = str(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for but no GPU is available; use 'cpu' or 'auto'")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use 'auto', 'cpu' or 'cuda'") from None


@contextlib.contextmanager
def eval_mode(*modules: nn.Module) -> Iterator[None]:
    """Put ``modules`` in eval mode for the block, then give each its previous mode back."""
    modes = [(m, m.training) for m in modules]
    for m, _ in modes:
        m.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.train(training)


def separate_compile_cache() -> str | None:
    """Keep ``torch.compile``'s CPU kernels in a cache folder of this CPU capability's own.

    Inductor's graph cache (torch 2.14) does not key on the vector ISA it generated code for, so
    kernels written for AVX2 (``ATEN_CPU_CAPABILITY=avx2``) are reused under AVX-512, where they
    overrun their buffers and abort the process. Unless the user chose ``TORCHINDUCTOR_CACHE_DIR``,
    it is set to torch's default folder plus ``cpu-<capability>``.

    Returns:
        The folder set, or None if the user's (or an earlier call's) setting was kept.
    """
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown_user"
    default = os.path.join(tempfile.gettempdir(), f"torchinductor_{user}")
    # torch writes its default into the variable the first time it looks, so that is not a choice
    if os.environ.get("TORCHINDUCTOR_CACHE_DIR", default) != default:
        return None
    folder = os.path.join(default, f"cpu-{torch.backends.cpu.get_cpu_capability().lower()}")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = folder
    return folder


class deterministic:
    """Context manager: ``torch.use_deterministic_algorithms`` for the block, then as it was."""

    def __init__(self, on: bool) -> None:
        self.on = on

    def __enter__(self) -> None:
        self.before = (torch.are_deterministic_algorithms_enabled(),
                       torch.is_deterministic_algorithms_warn_only_enabled(),
                       torch.backends.cudnn.benchmark)
        if self.on:
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False

    def __exit__(self, *exc: Any) -> None:
        enabled, warn_only, benchmark = self.before
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
        torch.backends.cudnn.benchmark = benchmark


def cpu_bf16_kernels() -> str | None:
    """None where this CPU's ATen kernels are AVX-512 (torch's capability query,
    ``torch.backends.cpu.get_cpu_capability``), the level with native bf16 arithmetic where the
    CPU has it (avx512_bf16, AMX); else the capability's name (e.g. ``"AVX2"``), where bf16
    autocast is emulated: 0.05x float32's speed measured on an AVX2-forced EPYC."""
    cap = torch.backends.cpu.get_cpu_capability()
    return None if cap.startswith("AVX512") else cap


def amp_speedup(step: Any, device: torch.device, rounds: int = 3) -> float:
    """How much faster ``step(amp)`` (a forward and backward pass; ``amp`` turns bf16 autocast
    on) runs with autocast than without on ``device``: the fastest of ``rounds`` timed calls of
    each (the least disturbed by other work on the machine), interleaved after one warm-up of
    each, float32 time over bf16 time. The global random
    states are restored afterwards, so the probe changes nothing a run draws."""
    import time

    cuda = [device] if device.type == "cuda" else []
    times: dict[bool, list[float]] = {False: [], True: []}
    with torch.random.fork_rng(devices=cuda):
        for i in range(rounds + 1):
            for amp in (False, True):
                if cuda:
                    torch.cuda.synchronize(device)
                t0 = time.perf_counter()
                step(amp)
                if cuda:
                    torch.cuda.synchronize(device)
                if i:  # the first of each is the warm-up
                    times[amp].append(time.perf_counter() - t0)
    best = {k: min(v) for k, v in times.items()}  # the least disturbed call of each
    return best[False] / max(best[True], 1e-12)

"""Pieces shared by the benchmarks: the seed notebook's loop, a plain tensor loop, memory, machine."""

from __future__ import annotations

import os
import platform
import time

import torch
import torch.nn.functional as F

from vaekit.data import resolve_data_root, to_unit
from vaekit.nets import Decoder, Encoder


def machine() -> str:
    """One line describing where the benchmark ran."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return (f"{cpu}, {os.cpu_count()} cores, {gpu}; torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads")


def reset_peak_rss() -> None:
    """Reset the kernel's peak-RSS counter of this process (Linux)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_rss_mb() -> float:
    """Peak resident memory of this process since the last reset, in MB (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM"):
                return int(line.split()[1]) / 1024
    return float("nan")


def seed_step(enc: Encoder, dec: Decoder, opt: torch.optim.Optimizer, x: torch.Tensor) -> None:
    """One step of the seed notebook: BCELoss(sum) on sigmoid outputs + analytic KL, Adam."""
    z_loc, z_scale = enc(x)
    z = z_loc + z_scale * torch.randn_like(z_scale)
    recon = torch.sigmoid(dec(z))
    kl = 0.5 * (z_scale**2 + z_loc**2 - 1 - 2 * z_scale.log()).sum()
    loss = F.binary_cross_entropy(recon, x, reduction="sum") + kl
    opt.zero_grad()
    loss.backward()
    opt.step()


class SeedLoop:
    """(a) The seed notebook: DataLoader(MNIST, ToTensor), shuffle, Adam 2e-3, BCE + KL."""

    def __init__(self, batch_size: int, device: torch.device, root: str | None = None) -> None:
        from torch.utils.data import DataLoader
        from torchvision import datasets, transforms

        ds = datasets.MNIST(str(resolve_data_root(root)), train=True, download=False,
                            transform=transforms.ToTensor())
        self.loader = DataLoader(ds, batch_size=batch_size, shuffle=True)
        self.device = device
        self.enc, self.dec = Encoder((1, 28, 28), 32).to(device), Decoder((1, 28, 28), 32).to(device)
        params = list(self.enc.parameters()) + list(self.dec.parameters())
        self.opt = torch.optim.Adam(params, lr=2e-3)
        self._it = iter(self.loader)

    def _next(self) -> torch.Tensor:
        try:
            x, _ = next(self._it)
        except StopIteration:  # a new epoch
            self._it = iter(self.loader)
            x, _ = next(self._it)
        return x.to(self.device)

    def train_images(self, n: int) -> float:
        """Train on at least ``n`` images; return the seconds it took."""
        t0, done = time.perf_counter(), 0
        while done < n:
            x = self._next()
            seed_step(self.enc, self.dec, self.opt, x)
            done += x.shape[0]
        _sync(self.device)
        return (time.perf_counter() - t0) * n / done


class TensorLoop:
    """(b) The same nets and loss in a plain PyTorch loop on a uint8 tensor kept on the device."""

    def __init__(self, images: torch.Tensor, batch_size: int, device: torch.device,
                 channels_last: bool = False) -> None:
        self.x = images.to(device)
        self.bs, self.device = batch_size, device
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.fmt = fmt
        self.enc = Encoder((1, 28, 28), 32).to(device, memory_format=fmt)
        self.dec = Decoder((1, 28, 28), 32).to(device, memory_format=fmt)
        params = list(self.enc.parameters()) + list(self.dec.parameters())
        self.opt = torch.optim.Adam(params, lr=2e-3)

    def train_images(self, n: int) -> float:
        t0, done = time.perf_counter(), 0
        perm = torch.randperm(self.x.shape[0], device=self.device)
        while done < n:
            idx = perm[done % self.x.shape[0] :][: self.bs]
            x = to_unit(self.x[idx]).contiguous(memory_format=self.fmt)
            seed_step(self.enc, self.dec, self.opt, x)
            done += x.shape[0]
        _sync(self.device)
        return (time.perf_counter() - t0) * n / done


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class BareLoop:
    """Base of the benchmarks' bare loops: ``train_images(n)`` times `step` on ``n`` of the
    images ``x`` in batches of ``bs`` drawn without replacement, each through `prepare` and
    made channels-last (as `vaekit.fit` holds conv nets on the CPU)."""

    x: torch.Tensor
    bs: int

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """The batch as the step takes it (by default as it is)."""
        return x

    def step(self, x: torch.Tensor) -> None:
        raise NotImplementedError

    def train_images(self, n: int) -> float:
        perm = torch.randperm(self.x.shape[0])[:n]
        t0 = time.perf_counter()
        for i in range(0, n - self.bs + 1, self.bs):
            self.step(self.prepare(self.x[perm[i:i + self.bs]]).contiguous(
                memory_format=torch.channels_last))
        return time.perf_counter() - t0


def step_ratio(loops: dict, n: int, bs: int, rounds: int, label: str, json_path: object) -> None:
    """Interleave ``rounds`` of the ``loops`` (objects with ``train_images(n) -> seconds``; the
    first is the bare nets, the second vaekit's), after a warm-up; print each median images/s
    and second / first, and write them as JSON to ``json_path``."""
    import json
    import statistics
    from pathlib import Path

    for loop in loops.values():  # warm-up
        loop.train_images(2 * bs)
    rates: dict[str, list[float]] = {k: [] for k in loops}
    for _ in range(rounds):
        for name, loop in loops.items():
            rates[name].append(n / loop.train_images(n))
    med = {k: statistics.median(v) for k, v in rates.items()}
    bare, ours = list(med)[:2]
    ratio = med[ours] / med[bare]
    for k, v in med.items():
        print(f"{k:<22} {v:8.0f} images/s  ({bs / v * 1000:.1f} ms per step)")
    print(f"vaekit {label} / bare nets: {ratio:.3f} (overhead {100 * (1 - ratio):.1f} %)")
    path = Path(str(json_path))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"machine": machine(), "batch_size": bs, "images": n,
                                "rounds": rounds, "images_per_s": med, "all_rounds": rates,
                                "b_over_a": ratio}, indent=2) + "\n")
    print(f"wrote {path}")

"""Training throughput: the seed notebook's loop vs a plain tensor loop vs `vaekit fit`'s step.

    python benchmarks/throughput.py --batch-sizes 64 256 1024 4096 --rounds 3

In one process, for each batch size, interleaved rounds of
  (a) the seed loop reproduced faithfully (DataLoader + ToTensor, BCELoss(sum) + analytic KL),
  (b) the same nets in a plain PyTorch loop on tensor-resident data,
  (b') (b) with channels-last nets, to isolate Pyro's overhead in (c),
  (c) `vaekit.fit` as users get it by default (Pyro Trace_ELBO, dynamic binarization),
  (d) with --amp: (c) with bf16 autocast (`vaekit fit --amp`; mixed precision, not fp32),
each training on the same number of images after a warm-up. Prints the median images/s, the
ratios c/a and c/b (and d/a), and the peak memory; writes JSON (and a plot with --plot).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import pyro
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SeedLoop, TensorLoop, machine, peak_rss_mb, reset_peak_rss  # noqa: E402

import vaekit  # noqa: E402
from vaekit.devices import resolve_device  # noqa: E402


class VaekitStep:
    """(c) `vaekit.fit` with its defaults, timed by its own per-epoch clock (no test set)."""

    def __init__(self, images: torch.Tensor, batch_size: int, device: torch.device,
                 amp: bool = False) -> None:
        self.x, self.bs, self.device, self.amp = images, batch_size, device, amp
        pyro.set_rng_seed(0)
        self.vae = vaekit.VAE()

    def train_images(self, n: int) -> float:
        x = self.x[:n] if n <= self.x.shape[0] else self.x
        r = vaekit.fit(self.vae, x, epochs=1, batch_size=self.bs, device=str(self.device),
                       amp=self.amp, progress=False)
        return r.final["seconds"] * n / x.shape[0]


def measure(loop, n: int, device: torch.device) -> tuple[float, float]:
    """Images/s of one round, and the peak memory during it (MB: RSS on CPU, CUDA allocated)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    reset_peak_rss()
    seconds = loop.train_images(n)
    mem = (torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else peak_rss_mb())
    return n / seconds, mem


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 256, 1024, 4096])
    p.add_argument("--rounds", type=int, default=3, help="measured rounds per loop")
    p.add_argument("--images", type=int, default=8192, help="images per round")
    p.add_argument("--device", default="auto")
    p.add_argument("--data-root", default=None)
    p.add_argument("--json", type=Path, default=Path("benchmarks/results/throughput.json"))
    p.add_argument("--plot", type=Path, default=None, help="PNG of images/s vs batch size")
    p.add_argument("--amp", action="store_true", help="also time (d): vaekit with bf16 autocast")
    args = p.parse_args()
    device = resolve_device(args.device)
    images, _ = vaekit.load_mnist(args.data_root, train=True, download=False)
    print(f"machine: {machine()}\ndevice: {device}\n", flush=True)

    results = []
    for bs in args.batch_sizes:
        n = max(args.images, 4 * bs)
        torch.manual_seed(0)
        loops = {
            "a_seed": SeedLoop(bs, device, args.data_root),
            "b_tensor": TensorLoop(images, bs, device),
            "b_tensor_cl": TensorLoop(images, bs, device, channels_last=True),
            "c_vaekit": VaekitStep(images, bs, device),
        }
        if args.amp:
            loops["d_vaekit_amp"] = VaekitStep(images, bs, device, amp=True)
        for loop in loops.values():  # warm-up
            loop.train_images(2 * bs)
        rates: dict[str, list[float]] = {k: [] for k in loops}
        mems: dict[str, float] = {k: 0.0 for k in loops}
        for _ in range(args.rounds):  # interleaved rounds
            for name, loop in loops.items():
                rate, mem = measure(loop, n, device)
                rates[name].append(rate)
                mems[name] = max(mems[name], mem)
        med = {k: statistics.median(v) for k, v in rates.items()}
        row = {"batch_size": bs, "images_per_round": n, "rounds": args.rounds,
               "images_per_s": med, "all_rounds": rates, "peak_memory_mb": mems,
               "c_over_a": med["c_vaekit"] / med["a_seed"],
               "c_over_b": med["c_vaekit"] / med["b_tensor"],
               "pyro_overhead": 1 - med["c_vaekit"] / med["b_tensor_cl"]}
        amp = ""
        if args.amp:
            row["d_over_a"] = med["d_vaekit_amp"] / med["a_seed"]
            amp = f"  vaekit --amp {med['d_vaekit_amp']:7.0f}  d/a {row['d_over_a']:.2f}"
        results.append(row)
        print(f"batch {bs:5d}: seed {med['a_seed']:7.0f}  tensor {med['b_tensor']:7.0f}  "
              f"tensor+cl {med['b_tensor_cl']:7.0f}  vaekit {med['c_vaekit']:7.0f} images/s | "
              f"c/a {row['c_over_a']:.2f}  c/b {row['c_over_b']:.2f}  "
              f"Pyro overhead {100 * row['pyro_overhead']:.0f}%{amp} | peak MB "
              + " ".join(f"{k}={v:.0f}" for k, v in mems.items()), flush=True)

    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"machine": machine(), "device": str(device),
                                     "results": results}, indent=2) + "\n")
    print(f"\nwrote {args.json}")
    if args.plot:
        plot(results, args.plot, machine())
        print(f"wrote {args.plot}")


def plot(results: list[dict], path: Path, where: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = {"a_seed": "(a) seed notebook loop", "b_tensor": "(b) plain loop, tensor data",
              "b_tensor_cl": "(b') plain loop, channels-last", "c_vaekit": "(c) vaekit fit",
              "d_vaekit_amp": "(d) vaekit fit --amp (bf16)"}
    bss = [r["batch_size"] for r in results]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for key, label in labels.items():
        if key not in results[0]["images_per_s"]:
            continue
        ax.plot(bss, [r["images_per_s"][key] for r in results], "o-", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size")
    ax.set_ylabel("training images / s")
    ax.set_title(where[:70], fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


if __name__ == "__main__":
    main()

"""Time to quality: wall time for the seed notebook's loop and for `vaekit fit` defaults to reach
the same test -ELBO, both measured in one run on the same test set.

    python benchmarks/time_to_quality.py --epochs 10

Both models are scored the same way after every epoch: vaekit's test -ELBO (nats per image) on
the MNIST test set binarized once with a fixed seed; the seed loop's nets are Bernoulli-logit
decoders too, so the score applies to both. Wall time includes that per-epoch evaluation for
both. The target is the seed loop's best test -ELBO; each side's time is when it first got there.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pyro
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SeedLoop, machine  # noqa: E402

import vaekit  # noqa: E402
from vaekit.data import to_unit  # noqa: E402
from vaekit.devices import resolve_device  # noqa: E402
from vaekit.train import TEST_BINARIZATION_SEED  # noqa: E402


def first_reach(curve: list[tuple[float, float]], target: float) -> float | None:
    """Cumulative seconds at the first epoch whose test -ELBO is <= target."""
    return next((t for t, v in curve if v <= target + 1e-9), None)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--device", default="auto")
    p.add_argument("--data-root", default=None)
    p.add_argument("--json", type=Path, default=Path("benchmarks/results/time_to_quality.json"))
    args = p.parse_args()
    device = resolve_device(args.device)
    train_x, _ = vaekit.load_mnist(args.data_root, train=True, download=False)
    test_x, _ = vaekit.load_mnist(args.data_root, train=False, download=False)
    fixed = torch.Generator().manual_seed(TEST_BINARIZATION_SEED)
    test_y = torch.bernoulli(to_unit(test_x), generator=fixed).to(device)
    print(f"machine: {machine()}\ndevice: {device}\n", flush=True)

    # -- the seed loop, scored with vaekit's test -ELBO after each epoch ------------------------
    torch.manual_seed(0)
    seed = SeedLoop(1024, device, args.data_root)
    scorer = vaekit.VAE(encoder=seed.enc, decoder=seed.dec).to(device)  # shares the nets
    seed_curve, total = [], 0.0
    for epoch in range(1, args.epochs + 1):
        t0 = time.perf_counter()
        seed.enc.train()
        seed.dec.train()
        seed.train_images(len(train_x))
        score = vaekit.evaluate_elbo(scorer, test_y)["neg_elbo"]
        total += time.perf_counter() - t0
        seed_curve.append((total, score))
        print(f"seed   epoch {epoch:2d}: {total:7.1f} s  test -ELBO {score:.2f}", flush=True)

    # -- vaekit fit with its defaults ------------------------------------------------------------
    pyro.set_rng_seed(0)
    result = vaekit.fit(vaekit.VAE(), train_x, test_x, epochs=args.epochs, device=device,
                        progress=False)
    vk_curve, total = [], 0.0
    for row in result.history:
        total += row["seconds"]
        vk_curve.append((total, row["test_neg_elbo"]))
        print(f"vaekit epoch {row['epoch']:2d}: {total:7.1f} s  test -ELBO "
              f"{row['test_neg_elbo']:.2f}", flush=True)

    target = min(v for _, v in seed_curve)
    t_seed, t_vk = first_reach(seed_curve, target), first_reach(vk_curve, target)
    speedup = (t_seed / t_vk) if t_vk else None
    print(f"\ntarget test -ELBO {target:.2f} (the seed loop's best): seed loop {t_seed:.1f} s, "
          f"vaekit " + (f"{t_vk:.1f} s, {speedup:.2f}x faster" if t_vk else "did not reach it"))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "machine": machine(), "device": str(device), "epochs": args.epochs, "target": target,
        "seed_seconds": t_seed, "vaekit_seconds": t_vk, "speedup": speedup,
        "seed_curve": seed_curve, "vaekit_curve": vk_curve}, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

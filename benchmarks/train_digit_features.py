"""Train the reference digit classifier that vaekit's sample-quality scores use (vaekit.features).

    python benchmarks/train_digit_features.py [--data-root ../shared/data/mnist] [--epochs 6]

Trains `vaekit.features.DigitFeatures` on the 60,000 MNIST training images (seed 0, Adam, random
shifts of up to 2 pixels), reports its accuracy on the 10,000 test images, writes the weights to
`vaekit/assets/digit_features.pt` and prints their SHA-256, which goes into
`vaekit.features.FEATURES_SHA256`.
"""

from __future__ import annotations

import argparse
import io
import time
from pathlib import Path

import torch
from torch import nn

from vaekit.data import load_mnist, to_unit
from vaekit.features import FEATURES_FILE, DigitFeatures, sha256
from vaekit.quality import classifier_accuracy

OUT = Path(__file__).resolve().parents[1] / "vaekit" / "assets" / FEATURES_FILE


def shifted(x: torch.Tensor, g: torch.Generator, most: int = 2) -> torch.Tensor:
    """Each image moved by a random whole-pixel shift of up to ``most`` pixels (zeros shifted in)."""
    n = x.shape[0]
    pad = nn.functional.pad(x, (most,) * 4)
    dx, dy = torch.randint(0, 2 * most + 1, (2, n), generator=g)
    rows = (torch.arange(28).unsqueeze(0) + dy.unsqueeze(1))  # [n, 28]
    cols = (torch.arange(28).unsqueeze(0) + dx.unsqueeze(1))
    idx = torch.arange(n)[:, None, None]
    return pad[:, 0][idx, rows[:, :, None], cols[:, None, :]].unsqueeze(1)


def accuracy(net: DigitFeatures, x: torch.Tensor, y: torch.Tensor) -> float:
    net.eval()
    return classifier_accuracy(x, y, net, batch_size=1000)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default=None)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--out", type=Path, default=OUT)
    a = p.parse_args()
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x, y = load_mnist(a.data_root, train=True, download=False)
    xt, yt = load_mnist(a.data_root, train=False, download=False)
    x, xt = to_unit(x), to_unit(xt)
    net = DigitFeatures()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=a.epochs * (len(x) // 128))
    start = time.perf_counter()
    for epoch in range(a.epochs):
        net.train()
        order = torch.randperm(len(x), generator=g)
        for i in range(0, len(x) - 127, 128):
            b = order[i:i + 128]
            loss = nn.functional.cross_entropy(net.logits(shifted(x[b], g)), y[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        print(f"epoch {epoch + 1}: test accuracy {accuracy(net, xt, yt):.4f} "
              f"({time.perf_counter() - start:.0f} s)", flush=True)
    buf = io.BytesIO()
    torch.save({k: v.detach().clone() for k, v in net.state_dict().items()}, buf)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_bytes(buf.getvalue())
    print(f"test accuracy {accuracy(net, xt, yt):.4f}; wrote {a.out} ({len(buf.getvalue())} bytes), "
          f"SHA-256 {sha256(buf.getvalue())}")


if __name__ == "__main__":
    main()

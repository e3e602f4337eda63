"""The sample-quality table: FID, KID, precision and recall of run folders' samples, and the floor.

    python benchmarks/sample_quality.py [RUN_DIR ...] [--n 10000] [--data-root ../shared/data/mnist]
                                        [--picture docs/img/samples_side_by_side.png]

The first row is the floor: the first N MNIST training images scored against the N test images
as if they were samples (what a model that draws the data distribution itself would get). Each
RUN_DIR's row scores N samples of its prior against the same test images (`vaekit.quality`), next
to its test IWAE -log p(x) from its eval.json when it has one (a VAE-GAN has none: its pixel
squared error per test image instead), and its training time from metrics.csv. ``--picture``
draws 64 samples of each run beside each other (seed 0, the same draws as samples.png).
Scores are in the shipped reference digit classifier's features, not comparable with
Inception-feature FIDs in papers.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

import vaekit
import vaekit.runs
from vaekit import quality
from vaekit.data import load_mnist, to_unit

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402


def _row(name: str, q: quality.SampleQuality, nll: str, seconds: float) -> str:
    return (f"| {name} | {q.fid:.2f} ± {q.fid_se:.2f} | {q.kid:.3f} ± {q.kid_se:.3f} | "
            f"{q.precision:.3f} ± {q.precision_se:.3f} | {q.recall:.3f} ± {q.recall_se:.3f} | {nll} | "
            f"{seconds:.0f} s |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="*", type=Path)
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--data-root", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--picture", type=Path, default=None, help="PNG of 64 samples of each run")
    a = p.parse_args()
    test_x, _ = load_mnist(a.data_root, train=False, download=False, limit=a.n)
    train_x, _ = load_mnist(a.data_root, train=True, download=False, limit=a.n)
    real = to_unit(test_x)
    print(machine())
    print(f"N = {a.n} samples against {len(real)} MNIST test images, seed {a.seed}\n")
    print("| model | FID | KID | precision | recall | test -log p(x) (IWAE) | training time | "
          "scoring time |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    t0 = time.perf_counter()
    floor = quality.compare_images(real, to_unit(train_x), seed=a.seed)
    print(_row(f"floor: {a.n} training images", floor, "n/a | n/a", time.perf_counter() - t0),
          flush=True)
    pictures = []
    for run in a.runs:
        t0 = time.perf_counter()
        vae = vaekit.load(run)
        q = quality.sample_quality(vae, real, n=a.n, seed=a.seed)
        try:
            ev = json.loads((run / "eval.json").read_text())
            nll = (f"{ev['neg_log_px']:.2f} ± {ev['neg_log_px_se']:.2f}" if "neg_log_px" in ev
                   else f"undefined (pixel squared error {ev['pixel_error']['squared']:.2f})")
        except (OSError, KeyError, ValueError, TypeError):
            nll = "not evaluated"
        trained = sum(r["seconds"] for r in vaekit.runs.read_metrics(run))
        print(_row(str(run), q, f"{nll} | {trained:.0f} s", time.perf_counter() - t0), flush=True)
        pictures.append((run.name, vae.sample(64, generator=torch.Generator().manual_seed(0))))
    if a.picture and pictures:
        side_by_side(pictures, a.picture)
        print(f"\nwrote {a.picture}")


def side_by_side(pictures: list[tuple[str, torch.Tensor]], path: Path) -> None:
    """One 8x8 grid of samples per run, titled with its name, in a row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from torchvision.utils import make_grid

    fig, axes = plt.subplots(1, len(pictures), figsize=(3.2 * len(pictures), 3.5), squeeze=False)
    for ax, (name, x) in zip(axes[0], pictures):
        ax.imshow(make_grid(x.cpu(), nrow=8, padding=1).permute(1, 2, 0).numpy())
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)


if __name__ == "__main__":
    main()

"""Semi-supervised M2 on MNIST: test accuracy at several label counts and label draws.

    python benchmarks/semi_supervised.py --labels 100 600 1000 3000 --seeds 0 1 2 \
        --epochs 10 --out runs/m2 --data-root ../shared/data/mnist

Each (label count, seed) is one `vaekit fit --semi-supervised` run folder under ``--out``
(``labels{N}-seed{S}``; the seed draws the labelled images and the initial weights), resumed if
it is there; then the test accuracy of q(y|x) on all 10,000 test images and the test -ELBO with
y summed out (best.pt, the best validation accuracy). Prints the table beside the published
figures (mean ± standard deviation over the seeds) and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402

import vaekit  # noqa: E402
from vaekit.evaluation import evaluate_elbo  # noqa: E402
from vaekit.runs import load_test_set  # noqa: E402
from vaekit.semisupervised import accuracy  # noqa: E402
from vaekit.settings import DataSpec, ModelSpec, RunOptions, TrainSettings  # noqa: E402
from vaekit.train import fit_settings, resume_run  # noqa: E402

PUBLISHED = {  # test accuracy in percent: Kingma et al. 2014 (M2, Table 1), Pyro's ss_vae_M2
    100: (88.03, 93.19), 600: (95.06, 94.37), 1000: (96.40, 94.87), 3000: (96.08, 95.82)}


def run(labels: int, seed: int, args: argparse.Namespace) -> dict[str, float]:
    """Fit (or resume) one run and score its best weights on the test set."""
    out = Path(args.out) / f"labels{labels}-seed{seed}"
    t0 = time.perf_counter()
    if (out / "checkpoint.pt").exists():
        resume_run(out, root=args.data_root, progress=False, epochs=args.epochs)
    else:
        fit_settings(ModelSpec(semi_supervised=True, nets=args.nets, z_dim=args.z_dim),
                     DataSpec(root=args.data_root),
                     TrainSettings(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                                   labels=labels, labelled_batch=args.labelled_batch,
                                   labelled_every=args.labelled_every,
                                   classifier_weight=args.classifier_weight, seed=seed),
                     RunOptions(out=str(out), progress=False))
    train_s = time.perf_counter() - t0
    vae = vaekit.load(out)
    x, y = load_test_set(out, vae, root=args.data_root)
    acc = accuracy(vae, x, y, clusters=labels == 0)
    torch.manual_seed(0)
    bound = evaluate_elbo(vae, x, 500)["neg_elbo"]
    return {"labels": labels, "seed": seed, "accuracy": acc, "test_neg_elbo": bound,
            "seconds": train_s}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--labels", type=int, nargs="+", default=[100, 600, 1000, 3000])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--nets", default="mlp:500")
    p.add_argument("--z-dim", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--labelled-batch", type=int, default=100)
    p.add_argument("--labelled-every", type=int, default=10)
    p.add_argument("--classifier-weight", type=float, default=46.0)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--out", default="runs/m2")
    p.add_argument("--data-root", default=None)
    p.add_argument("--json", default="benchmarks/results/semi_supervised.json")
    args = p.parse_args()
    results = [run(n, s, args) for n in args.labels for s in args.seeds]
    print(f"# {machine()}")
    print(f"# nets {args.nets}, z_dim {args.z_dim}, {args.epochs} epochs, batch "
          f"{args.batch_size} + {args.labelled_batch} labelled, classifier weight "
          f"{args.classifier_weight:g}, lr {args.lr:g}")
    print("| labels | vaekit M2 accuracy % | runs | Kingma et al. M2 | Pyro's example | "
          "test -ELBO | train s per run |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    table = []
    for n in args.labels:
        rs = [r for r in results if r["labels"] == n]
        accs = [r["accuracy"] for r in rs]
        sd = statistics.stdev(accs) if len(accs) > 1 else float("nan")
        kingma, pyro_ex = PUBLISHED.get(n, (float("nan"), float("nan")))
        mean_s = statistics.mean(r["seconds"] for r in rs)
        bound = statistics.mean(r["test_neg_elbo"] for r in rs)
        print(f"| {n} | {statistics.mean(accs):.2f} ± {sd:.2f} | {len(rs)} | {kingma:.2f} | "
              f"{pyro_ex:.2f} | {bound:.2f} | {mean_s:.0f} |")
        table.append({"labels": n, "mean": statistics.mean(accs), "sd": sd, "runs": rs})
    Path(args.json).write_text(json.dumps({"machine": machine(), "settings": vars(args),
                                           "table": table}, indent=1))


if __name__ == "__main__":
    main()

"""What β buys, on the sprites: β-VAE at several β, β-TCVAE, FactorVAE and DIP-VAE, several seeds.

    python benchmarks/disentanglement_sweep.py --data sprites --epochs 10 --seeds 0 1 2 \
        --out runs/sweep --data-root ~/.cache/vaekit/data

Each (model, seed) is a `vaekit fit` run folder under ``--out`` (resumed if it is there, the
seed drawing its initial weights and batches), scored by the five metrics of
`vaekit.disentanglement` on ``--metric-points`` images of the factor grid, and by its test
reconstruction and -ELBO. Prints the table (mean ± standard deviation over the seeds, and each
seed's MIG: Locatello et al. 2019 showed the seed matters as much as the method) and writes JSON.
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
from vaekit.disentanglement import disentanglement, representation  # noqa: E402
from vaekit.evaluation import evaluate_elbo  # noqa: E402
from vaekit.runs import load_ground_truth, load_test_set  # noqa: E402
from vaekit.settings import DataSpec, ModelSpec, RunOptions, TrainSettings  # noqa: E402
from vaekit.train import fit_settings, resume_run  # noqa: E402

MODELS = {  # name: (ModelSpec fields, TrainSettings fields)
    "beta-VAE β=1": ({"beta": 1.0}, {}),
    "beta-VAE β=4": ({"beta": 4.0}, {}),
    "beta-VAE β=16": ({"beta": 16.0}, {}),
    "beta-TCVAE β=6": ({}, {"objective": "beta-tc", "tc_beta": 6.0}),
    "FactorVAE γ=35": ({}, {"objective": "factor-vae", "factor_gamma": 35.0, "disc_lr": 1e-4}),
    "DIP-VAE-I λ=10": ({}, {"objective": "dip-vae", "dip_type": "i", "dip_lambda_od": 10.0,
                            "dip_lambda_d": 100.0}),
}


def run(name: str, seed: int, args: argparse.Namespace) -> dict[str, float]:
    """Fit (or resume) one model and score it."""
    model, train = MODELS[name]
    out = Path(args.out) / f"{name.split()[0]}-{name.split()[1].replace('=', '')}-seed{seed}"
    t0 = time.perf_counter()
    if (out / "checkpoint.pt").exists():
        resume_run(out, root=args.data_root, progress=False, epochs=args.epochs)
    else:
        fit_settings(ModelSpec(z_dim=args.z_dim, nets=args.nets, **model),
                     DataSpec(dataset=args.data, root=args.data_root, val=0,
                              limit_train=args.limit_train),
                     TrainSettings(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                                   seed=seed, **train),
                     RunOptions(out=str(out), progress=False))
    seconds = time.perf_counter() - t0
    vae = vaekit.load(out)
    truth = load_ground_truth(out, args.data_root)
    scores = disentanglement(truth, representation(vae), n_points=args.metric_points,
                             n_votes=args.metric_points // 4,
                             generator=torch.Generator().manual_seed(seed)).to_dict()
    x, _ = load_test_set(out, vae, root=args.data_root, limit=2000)
    torch.manual_seed(0)
    bound = evaluate_elbo(vae, x, 500)
    return {"model": name, "seed": seed, **scores, "recon": bound["recon"],
            "neg_elbo": bound["neg_elbo"], "seconds": seconds}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="sprites")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--z-dim", type=int, default=10)
    p.add_argument("--nets", default="dcgan", help="dcgan, or mlp:H (Chen et al.'s dSprites "
                   "nets are fully connected, 1200 units)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--metric-points", type=int, default=4000)
    p.add_argument("--limit-train", type=int, default=None, help="the first N images (smoke)")
    p.add_argument("--out", default="runs/sweep")
    p.add_argument("--data-root", default=None)
    p.add_argument("--json", default="benchmarks/results/disentanglement_sweep.json")
    args = p.parse_args()
    rows = [run(name, s, args) for name in args.models for s in args.seeds]
    keys = ("mig", "factor_vae", "beta_vae", "dci_disentanglement", "sap", "recon")
    print(f"# {machine()}; {args.data}, {args.epochs} epochs, nets {args.nets}, z_dim "
          f"{args.z_dim}, batch "
          f"{args.batch_size}, lr {args.lr:g}, {args.metric_points} metric points")
    print("| model | " + " | ".join(keys) + " | MIG per seed | train s |")
    print("| --- " * (len(keys) + 3) + "|")
    for name in args.models:
        rs = [r for r in rows if r["model"] == name]

        def cell(k: str, rs: list[dict[str, float]] = rs) -> str:
            v = [r[k] for r in rs]
            sd = statistics.stdev(v) if len(v) > 1 else float("nan")
            return f"{statistics.mean(v):.3f} ± {sd:.3f}"

        per_seed = ", ".join(f"{r['mig']:.3f}" for r in rs)
        print(f"| {name} | " + " | ".join(cell(k) for k in keys)
              + f" | {per_seed} | {statistics.mean(r['seconds'] for r in rs):.0f} |")
    Path(args.json).write_text(json.dumps({"machine": machine(), "settings": vars(args),
                                           "rows": rows}, indent=1))


if __name__ == "__main__":
    main()

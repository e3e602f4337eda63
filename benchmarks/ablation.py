"""Priors x posteriors on the same budget: test -ELBO, IWAE -log p(x) and seconds per epoch.

    python benchmarks/ablation.py --epochs 5 --limit-test 2000 --num-samples 100
    python benchmarks/ablation.py --latents 2 ...     # the two-layer model's rows

Each row is `vaekit fit` with the seed's settings (batch 1024, Adam 2e-3, z_dim 32, Bernoulli with
dynamic binarization) and one prior/posterior pair, then `vaekit.evaluate` on the first
``--limit-test`` test images (binarized with the fixed test seed). Prints a Markdown table and
writes ``benchmarks/results/ablation.json``; run folders go to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pyro  # noqa: E402
from common import machine  # noqa: E402

import vaekit  # noqa: E402
from vaekit.likelihoods import test_observations  # noqa: E402

ROWS = [("standard", "diagonal"), ("mog:10", "diagonal"), ("vamp:100", "diagonal"),
        ("standard", "iaf:2"), ("mog:10", "iaf:2"), ("vamp:100", "iaf:2")]
ROWS_2 = [("standard", "diagonal"), ("mog:10", "iaf:2")]  # two latent layers (no VampPrior)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--limit-test", type=int, default=2000)
    parser.add_argument("--num-samples", type=int, default=100)
    parser.add_argument("--latents", type=int, default=1, choices=[1, 2])
    parser.add_argument("--out", default="runs/ablation")
    parser.add_argument("--results", default=None,
                        help="[default: benchmarks/results/ablation[_latents2].json]")
    args = parser.parse_args()
    suffix = "" if args.latents == 1 else "_latents2"
    results = args.results or str(Path(__file__).parent / "results" / f"ablation{suffix}.json")
    rows_to_run = ROWS if args.latents == 1 else ROWS_2
    train_x, _ = vaekit.load_mnist(train=True, download=False)
    test_x, _ = vaekit.load_mnist(train=False, download=False, limit=args.limit_test)
    rows = []
    print(f"machine: {machine()}", flush=True)
    for prior, posterior in rows_to_run:
        pyro.set_rng_seed(0)
        vae = vaekit.VAE(z_dim=32, prior=prior, posterior=posterior, latents=args.latents)
        folder = Path(args.out) / f"{prior}-{posterior}{suffix}".replace(":", "")
        t0 = time.perf_counter()
        result = vaekit.fit(vae, train_x, None, epochs=args.epochs, device="cpu",
                            run_dir=folder, overwrite=True, progress=False, verbose=False)
        seconds = (time.perf_counter() - t0) / args.epochs
        x_obs = test_observations(result.vae.likelihood, test_x)
        t1 = time.perf_counter()
        ev = vaekit.evaluate(result.vae, x_obs, num_samples=args.num_samples)
        row = {"prior": prior, "posterior": posterior, "latents": args.latents,
               "epochs": args.epochs,
               "params": sum(p.numel() for p in result.vae.parameters()),
               "train_loss": result.final["train_loss"], "neg_elbo": ev.neg_elbo,
               "neg_elbo_se": ev.neg_elbo_se, "neg_log_px": ev.neg_log_px,
               "neg_log_px_se": ev.neg_log_px_se, "kl": ev.kl, "active_units": ev.active_units,
               "seconds_per_epoch": seconds, "eval_seconds": time.perf_counter() - t1,
               "n_test": len(x_obs), "num_samples": args.num_samples}
        rows.append(row)
        print(json.dumps(row), flush=True)
    Path(results).write_text(json.dumps({"machine": machine(), "command": " ".join(sys.argv),
                                              "rows": rows}, indent=2) + "\n")
    print("\n| prior | posterior | latents | params | test -ELBO | IWAE -log p(x) | KL | active |"
          " s/epoch |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['prior']} | {r['posterior']} | {r['latents']} | {r['params']:,} | {r['neg_elbo']:.2f} ± "
              f"{r['neg_elbo_se']:.2f} | {r['neg_log_px']:.2f} ± {r['neg_log_px_se']:.2f} | "
              f"{r['kl']:.2f} | {r['active_units']} | {r['seconds_per_epoch']:.0f} |")


if __name__ == "__main__":
    main()

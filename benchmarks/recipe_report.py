"""What a finished recipe run measured: training time, time to quality, best epoch, and the
IWAE estimate in its eval.json.

    python benchmarks/recipe_report.py runs/mnist-bernoulli-best [--plot docs/img/recipe_curves.png]

Times are the sums of metrics.csv's per-epoch ``seconds`` (training and the per-epoch
validation and test evaluation); "time to N nats" is when the test -ELBO first fell below N.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402

from vaekit import runs  # noqa: E402


def report(run_dir: str, targets: tuple[float, ...] = (100.0, 90.0)) -> dict:
    """The figures of one run folder, as a dict."""
    rows = runs.read_metrics(run_dir)
    elapsed, reached = 0.0, {}
    for r in rows:
        elapsed += r["seconds"]
        for t in targets:
            if t not in reached and r["test_neg_elbo"] <= t:
                reached[t] = (r["epoch"], elapsed)
    best_epoch, best_val = runs.best_validation(rows)
    out = {"run_dir": run_dir, "epochs": len(rows), "train_seconds": round(elapsed, 1),
           "final_test_neg_elbo": rows[-1]["test_neg_elbo"],
           "best_val": ({"epoch": best_epoch, runs.validation_key(rows): best_val}
                        if best_epoch else None),
           "time_to": {f"{t:g} nats": ({"epoch": reached[t][0], "seconds": round(reached[t][1])}
                                       if t in reached else "not reached") for t in targets},
           "machine": machine()}
    path = Path(run_dir) / runs.EVALUATION
    if path.exists():
        ev = json.loads(path.read_text())
        out["evaluation"] = {k: ev.get(k) for k in ("checkpoint", "epoch", "neg_elbo",
                                                    "neg_elbo_se", "neg_log_px", "neg_log_px_se",
                                                    "num_samples", "n_images", "active_units",
                                                    "seconds")}
    return out


def plot(run_dir: str, path: str) -> None:
    """Learning curves for the docs: the training objective, validation and test -ELBO per epoch,
    with eval.json's IWAE -log p(x) as a line, on the range where the curves differ."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = runs.read_metrics(run_dir)
    epochs = [r["epoch"] for r in rows]
    fig, ax = plt.subplots(figsize=(6.5, 4), dpi=100)
    train = runs.read_config(run_dir).get("train", {})
    objective = (f"train loss: -IWAE bound, k={train.get('iwae_samples')}"
                 if train.get("objective") == "iwae" else "train loss")
    ax.plot(epochs, [r["train_loss"] for r in rows], label=objective + " (epoch mean)")
    ax.plot(epochs, [r.get("val_neg_elbo", math.nan) for r in rows], "--", label="validation -ELBO")
    if any(math.isfinite(r.get("val_neg_iwae", math.nan)) for r in rows):
        ax.plot(epochs, [r.get("val_neg_iwae", math.nan) for r in rows], ":",
                label=f"validation -IWAE bound, k={train.get('iwae_samples')}")
    ax.plot(epochs, [r["test_neg_elbo"] for r in rows], label="test -ELBO")
    low = min(r["train_loss"] for r in rows)
    ev = Path(run_dir) / runs.EVALUATION
    if ev.exists():
        e = json.loads(ev.read_text())
        if e.get("neg_log_px") is not None:
            ax.axhline(e["neg_log_px"], color="k", lw=0.8, ls=":",
                       label=f"test -log p(x), IWAE k={e['num_samples']} ({e['checkpoint']})")
            low = min(low, e["neg_log_px"])
    ax.set_ylim(math.floor(low) - 1, 110)
    ax.set_xlabel("epoch")
    ax.set_ylabel("nats per image")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir")
    p.add_argument("--plot", metavar="PNG", help="also draw the learning curves into PNG")
    a = p.parse_args()
    print(json.dumps(report(a.run_dir), indent=2))
    if a.plot:
        plot(a.run_dir, a.plot)


if __name__ == "__main__":
    main()

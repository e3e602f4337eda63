"""A tracker of your own: any object with start, log_metrics, log_images and finish.

    python examples/custom_logger.py --epochs 3

This one appends every metric to a JSON-lines file; a Weights & Biases logger is the same shape
(see the docs, "Tracking experiments").
"""

import argparse
import json
from pathlib import Path

import pyro

import vaekit


class JsonLinesLogger:
    """One JSON object per line: {"step": ..., "metric": value, ...}."""

    def __init__(self, path):
        self.path = Path(path)

    def start(self, run):  # run: vaekit.tracking.RunInfo (name, params, tags, step, resumed)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = self.path.open("a")
        self._write({"event": "start", "run": run.name, "step": run.step, **run.tags})

    def log_metrics(self, metrics, step):
        self._write({"step": step, **metrics})

    def log_images(self, images, step):  # {"samples": tensor [C, H, W] in [0, 1], ...}
        self._write({"step": step, "images": sorted(images)})

    def finish(self, summary, status="FINISHED"):
        self._write({"event": "finish", "status": status, **summary})
        self.file.close()

    def _write(self, record):
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--limit-train", type=int, default=None, help="use the first N images")
    p.add_argument("--out", default="runs/custom_logger", help="run folder")
    args = p.parse_args()

    train_x, _ = vaekit.load_mnist(train=True, limit=args.limit_train)
    test_x, _ = vaekit.load_mnist(train=False, limit=args.limit_train)
    pyro.set_rng_seed(0)
    logger = JsonLinesLogger(f"{args.out}/log.jsonl")
    vaekit.fit(vaekit.VAE(z_dim=16), train_x, test_x, epochs=args.epochs,
               batch_size=min(128, len(train_x)), run_dir=args.out, overwrite=True,
               loggers=[logger])
    lines = [json.loads(line) for line in logger.path.read_text().splitlines()]
    per_epoch = [r["epoch/test_neg_elbo"] for r in lines if "epoch/test_neg_elbo" in r]
    print(f"{len(lines)} records in {logger.path}; test -ELBO by epoch: "
          + ", ".join(f"{v:.2f}" for v in per_epoch))


if __name__ == "__main__":
    main()

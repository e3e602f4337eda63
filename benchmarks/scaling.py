"""Data-parallel throughput: `vaekit.fit` in 1 and in N processes (torchrun; Gloo on CPUs).

    python benchmarks/scaling.py --nprocs 1 2 --images 16384 --batch-size 1024

Each run trains the default model for 2 epochs on the first ``--images`` MNIST images with the
same global batch; the second epoch's images/s is reported (the first includes start-up).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def worker(args: argparse.Namespace) -> None:
    import pyro

    import vaekit

    x, _ = vaekit.load_mnist(args.data_root, train=True, download=False, limit=args.images)
    pyro.set_rng_seed(0)
    r = vaekit.fit(vaekit.VAE(), x, epochs=2, batch_size=args.batch_size, device=args.device,
                   sync_batchnorm=args.sync_batchnorm, progress=False)
    if os.environ.get("RANK", "0") == "0":
        print(json.dumps({"images_per_s": len(x) / r.history[-1]["seconds"],
                          "train_loss": r.history[-1]["train_loss"]}), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--nprocs", type=int, nargs="+", default=[1, 2])
    p.add_argument("--images", type=int, default=16384)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--device", default="cpu")
    p.add_argument("--data-root", default=None)
    p.add_argument("--sync-batchnorm", action="store_true")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads per process (0: torch's default split of the cores)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--json", type=Path, default=Path("benchmarks/results/scaling.json"))
    args = p.parse_args()
    if args.worker:
        return worker(args)
    from common import machine

    results = []
    for n in args.nprocs:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={n}", __file__, "--worker", "--images", str(args.images),
               "--batch-size", str(args.batch_size), "--device", args.device]
        cmd += ["--sync-batchnorm"] if args.sync_batchnorm else []
        cmd += ["--data-root", args.data_root] if args.data_root else []
        env = dict(os.environ)
        if args.threads:
            env["OMP_NUM_THREADS"] = str(args.threads)
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
        row = {"nproc": n, **json.loads(out.strip().splitlines()[-1])}
        results.append(row)
        print(f"{n} process(es): {row['images_per_s']:.0f} images/s "
              f"(train loss {row['train_loss']:.2f})", flush=True)
    base = results[0]["images_per_s"]
    for r in results:
        r["speedup"] = r["images_per_s"] / base
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"machine": machine(), "batch_size": args.batch_size,
                                     "images": args.images, "results": results}, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

"""Evaluation against its decoder's bound: decodes per second of IWAE, FID sampling and M2's
enumerated bound, beside the decoder's own inference forward.

    python benchmarks/eval_throughput.py --images 100 --k 1000 --rounds 3

The models are built as `vaekit evaluate` holds them (channels-last, eval mode); their weights
do not change the cost, so they are fresh ones. For each path, interleaved rounds of
  (bound) the decoder alone under ``torch.inference_mode``, images/s at its fastest of 500,
      1,000 and 2,048 latents at a time: what the evaluation could reach if it only decoded;
  (iwae) `vaekit.evaluation.iwae_bound` of ``--images`` test images at K = ``--k``: decodes/s
      = images x K / seconds (the encoder, the log-densities and the logsumexp included);
  (fid) `vaekit.quality.model_samples` of ``--samples`` prior samples: decodes/s;
  (m2) `iwae_bound` of the semi-supervised M2 (y summed out: images x K x 10 decodes, read off
      the enumerated traces) against its conditional decoder's bound, at the default chunk
      (2,048 latents: 2 particles per pass of the guide) and at ``chunk_size=8192`` (8).
Prints the median rates and each path's fraction of its bound; writes JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import pyro
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402

import vaekit  # noqa: E402
from vaekit.data import to_unit  # noqa: E402
from vaekit.evaluation import iwae_bound  # noqa: E402
from vaekit.quality import model_samples  # noqa: E402


def held(vae: vaekit.VAE) -> vaekit.VAE:
    """The VAE as `vaekit evaluate` holds it."""
    return vae.to(memory_format=torch.channels_last).eval()


def decoder_rate(vae: vaekit.VAE, labels: bool, chunk: int = 2048, reps: int = 5) -> float:
    """Images/s of the decoder alone (``(z, y)`` for a conditional one), inference mode."""
    z = torch.randn(chunk, vae.z_dim)
    y = (torch.arange(chunk) % vae.num_classes,) if labels else ()
    with torch.inference_mode():
        vae.decoder(z, *y)
        t0 = time.perf_counter()
        for _ in range(reps):
            vae.decoder(z, *y)
    return chunk * reps / (time.perf_counter() - t0)


CHUNKS = (500, 1000, 2048)
"""Batch sizes the decoder's bound is measured at; the bound is the fastest."""


def timed(fn, decodes: int) -> float:
    t0 = time.perf_counter()
    fn()
    return decodes / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--images", type=int, default=100, help="test images for the bounds")
    p.add_argument("--k", type=int, default=1000, help="importance samples per image")
    p.add_argument("--samples", type=int, default=10_000, help="prior samples for FID")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--data-root", default=None)
    p.add_argument("--json", type=Path, default=Path("benchmarks/results/eval_throughput.json"))
    args = p.parse_args()
    images, _ = vaekit.load_mnist(args.data_root, train=False, download=False)
    x = torch.bernoulli(to_unit(images[:args.images]), generator=torch.Generator().manual_seed(0))
    pyro.set_rng_seed(0)
    vae = held(vaekit.VAE())
    m2 = held(vaekit.VAE(num_classes=10, semi_supervised=True))
    n, k = args.images, args.k
    m2_k = max(1, k // 10)  # ten classes: the same decodes as the IWAE at k
    paths = {
        "bound": lambda: max(decoder_rate(vae, False, c) for c in CHUNKS),
        "iwae": lambda: timed(lambda: iwae_bound(vae, x, k), n * k),
        "fid": lambda: timed(lambda: model_samples(vae, args.samples), args.samples),
        "m2_bound": lambda: max(decoder_rate(m2, True, c) for c in CHUNKS),
        "m2": lambda: timed(lambda: iwae_bound(m2, x, m2_k), n * m2_k * 10),
        "m2_chunk8192": lambda: timed(lambda: iwae_bound(m2, x, m2_k, chunk_size=8192),
                                      n * m2_k * 10),
    }
    print(f"machine: {machine()}\n{n} images, K = {k} (M2: K = {m2_k} x 10 classes), "
          f"{args.samples} samples\n", flush=True)
    for fn in paths.values():  # warm-up
        fn()
    rates: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(args.rounds):
        for name, fn in paths.items():
            rates[name].append(fn())
    med = {name: statistics.median(v) for name, v in rates.items()}
    frac = {"iwae": med["iwae"] / med["bound"], "fid": med["fid"] / med["bound"],
            "m2": med["m2"] / med["m2_bound"], "m2_chunk8192": med["m2_chunk8192"] / med["m2_bound"]}
    for name, v in med.items():
        share = f"  {100 * frac[name]:.0f} % of its decoder's bound" if name in frac else ""
        print(f"{name:<9} {v:8.0f} decodes/s{share}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"machine": machine(), "settings": {
        k_: v for k_, v in vars(args).items() if k_ != "json"}, "decodes_per_s": med,
        "all_rounds": rates, "fraction_of_bound": frac}, indent=2, default=str) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

"""Where the default VAE's step spends the time that its bare networks do not: a profile.

    python benchmarks/step_profile.py --batch-size 1024 --steps 8
    python benchmarks/step_profile.py --family vq --batch-size 128 --steps 16   # the VQ-VAE
    python benchmarks/step_profile.py --family beta-tc --batch-size 64 --steps 16

`torch.profiler` over ``--steps`` training steps of (b') the seed nets in a plain channels-last
PyTorch loop (BCE on the sigmoid + analytic KL, Adam) and of (c) `vaekit.fit`'s default VAE
(Pyro's ``Trace_ELBO``, dynamic binarization), same batch size, after a warm-up. Prints the
wall time per step of each and the self CPU time per step by kind of operator (the networks'
convolutions and normalisation, their backward, the optimizer, the binarizing draws, the
log-densities and the rest), so the gap between the two is accounted for operator by operator;
what no operator accounts for is Python (Pyro's tracing, the loop's bookkeeping).

``--family vq`` (``vq2``: two levels) profiles the VQ-VAE instead: the bare loop of
``benchmarks/vq_step.py`` against ``vaekit.fit`` with ``posterior="vq:512"``, ``z_dim=64``, and
also counts and times the nearest-code searches (`VectorQuantizer.assign`) of each step.
``--family beta-tc`` and ``factor-vae`` profile the bare loops of
``benchmarks/disentangle_step.py`` against ``vaekit.fit`` with that objective, on the
``sprites:small`` images (64x64, z of 10).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pyro
import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import TensorLoop, machine  # noqa: E402
from disentangle_step import SHAPE, Bare  # noqa: E402
from vq_step import BareVQ  # noqa: E402

import vaekit  # noqa: E402
from vaekit.quantize import VectorQuantizer  # noqa: E402
from vaekit.sprites import sprites  # noqa: E402

SEARCHES = {"calls": 0, "seconds": 0.0}  # VectorQuantizer.assign, while it is counted


def count_searches() -> None:
    """Make `VectorQuantizer.assign` count its calls and time in `SEARCHES`."""
    assign = VectorQuantizer.assign

    def counted(self: VectorQuantizer, flat: torch.Tensor) -> torch.Tensor:
        t0 = time.perf_counter()
        codes = assign(self, flat)
        SEARCHES["calls"] += 1
        SEARCHES["seconds"] += time.perf_counter() - t0
        return codes

    VectorQuantizer.assign = counted  # type: ignore[method-assign]

KINDS = (  # (kind, substrings of operator names), first match wins
    ("backward (autograd)", ("Backward", "backward")),
    ("convolution forward", ("convolution", "conv2d", "conv_transpose")),
    ("batch norm, activations", ("batch_norm", "relu", "leaky", "sigmoid", "silu")),
    ("optimizer (Adam)", ("Optimizer", "_foreach", "addcdiv", "addcmul", "lerp", "sqrt")),
    ("binarizing draws", ("bernoulli",)),
    ("matrix products, argmin, counts", ("argmin", "addmm", "aten::mm", "bincount",
                                         "one_hot", "index")),
    ("log-densities, KL, sums", ("log", "sum", "exp", "pow", "mul", "sub", "add", "neg", "div",
                                 "normal", "binary_cross_entropy")),
)


def kind_of(name: str) -> str:
    for kind, keys in KINDS:
        if any(k in name for k in keys):
            return kind
    return "other operators"


def profiled(run, steps: int) -> tuple[float, dict[str, float]]:
    """Wall seconds per step and self CPU seconds per step by kind, of ``run()``."""
    SEARCHES.update(calls=0, seconds=0.0)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        run()
        wall = time.perf_counter() - t0
    kinds: dict[str, float] = {}
    for e in prof.key_averages():
        if e.key.startswith("ProfilerStep") or e.key.startswith("autograd::engine"):
            continue  # containers: their children are counted
        k = kind_of(e.key)
        kinds[k] = kinds.get(k, 0.0) + e.self_cpu_time_total / 1e6 / steps
    if SEARCHES["calls"]:
        print(f"nearest-code searches: {SEARCHES['calls'] / steps:.1f} per step, "
              f"{1e3 * SEARCHES['seconds'] / steps:.1f} ms per step (profiled)")
    return wall / steps, kinds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--data-root", default=None)
    p.add_argument("--family", choices=("default", "vq", "vq2", "beta-tc", "factor-vae"),
                   default="default")
    args = p.parse_args()
    bs, n = args.batch_size, args.batch_size * args.steps
    settings: dict[str, object] = {}
    if args.family in ("beta-tc", "factor-vae"):
        images = sprites("sprites:small").images
        images = images[torch.randperm(len(images), generator=torch.Generator().manual_seed(0))]
    else:
        images, _ = vaekit.load_mnist(args.data_root, train=True, download=False)
    pyro.set_rng_seed(0)
    if args.family in ("beta-tc", "factor-vae"):
        bare, model, lr = Bare(images, bs, args.family), {"z_dim": 10, "image_shape": SHAPE}, 1e-3
        settings = ({"objective": "beta-tc", "tc_beta": 6.0} if args.family == "beta-tc" else
                    {"objective": "factor-vae", "factor_gamma": 35.0, "disc_lr": 1e-4})
    elif args.family == "default":
        bare, model, lr = TensorLoop(images, bs, torch.device("cpu"), channels_last=True), {}, 2e-3
    else:
        count_searches()
        latents = 1 if args.family == "vq" else 2
        bare = BareVQ(images, bs, latents=latents)
        model, lr = {"posterior": "vq:512", "z_dim": 64, "latents": latents}, 5e-4
    vae = vaekit.VAE(**model)

    def ours() -> None:
        vaekit.fit(vae, images[:n], epochs=1, batch_size=bs, device="cpu", progress=False,
                   verbose=False, lr=lr, **settings)

    bare.train_images(2 * bs)  # warm-up
    ours()
    print(f"machine: {machine()}\nbatch {bs}, {args.steps} steps each\n")
    results = {"bare (b')": profiled(lambda: bare.train_images(n), args.steps),
               "vaekit (c)": profiled(ours, args.steps)}
    names = sorted({k for _, kinds in results.values() for k in kinds},
                   key=lambda k: -results["vaekit (c)"][1].get(k, 0.0))
    print(f"{'ms per step':<28}" + "".join(f"{r:>14}" for r in results) + f"{'difference':>14}")
    rows = [("wall time", [w for w, _ in results.values()])]
    rows += [(k, [kinds.get(k, 0.0) for _, kinds in results.values()]) for k in names]
    ops = [sum(kinds.values()) for _, kinds in results.values()]
    rows += [("all operators", ops),
             ("wall - operators (Python)", [w - o for (w, _), o in zip(results.values(), ops)])]
    for label, (a, b) in rows:
        print(f"{label:<28}{1e3 * a:>14.1f}{1e3 * b:>14.1f}{1e3 * (b - a):>14.1f}")


if __name__ == "__main__":
    main()

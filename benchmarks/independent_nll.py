"""An importance-sampling estimate of -log p(x) written without Pyro, to check `vaekit evaluate`.

    python benchmarks/independent_nll.py runs/recipe --num-samples 1000 [--checkpoint last]

For a run with a Bernoulli likelihood, the diagonal Normal posterior and the standard Normal
prior, with one or two latent layers, it computes

    log p(x) ~ logsumexp_k [log p(x, z_k) - log q(z_k | x)] - log K,   z_k ~ q(z | x),

from the run's encoder and decoder modules and `torch.distributions` alone: no Pyro trace, no
vaekit evaluation code. It draws its own noise (``--seed``), so it agrees with `vaekit evaluate`
to within the two standard errors, not to the digit. The observations are the run's test images
binarized with vaekit's fixed test seed (as `vaekit evaluate` reads them).
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch
from torch.distributions import Bernoulli, Normal

import vaekit
from vaekit import runs


def log_weights(vae: vaekit.VAE, x: torch.Tensor, k: int) -> torch.Tensor:
    """``[k, batch]`` importance log-weights log p(x, z) - log q(z|x) with z ~ q(z|x)."""
    enc, dec = vae.guide.encoder, vae.model.decoder
    loc, scale = enc(x)
    q1 = Normal(loc, scale)
    z1 = q1.sample((k,))                                          # [k, B, D]
    log_q = q1.log_prob(z1).sum(-1)
    if vae.latents == 2:
        l2, s2 = vae.guide.q_z2(z1)
        q2 = Normal(l2, s2)
        z2 = q2.sample()
        log_q = log_q + q2.log_prob(z2).sum(-1)
        pl, ps = vae.model.p_z1(z2)
        log_p = Normal(0.0, 1.0).log_prob(z2).sum(-1) + Normal(pl, ps).log_prob(z1).sum(-1)
    else:
        log_p = Normal(0.0, 1.0).log_prob(z1).sum(-1)
    logits = dec(z1)                                              # [k, B, 1, 28, 28]
    log_px = Bernoulli(logits=logits).log_prob(x.expand_as(logits)).sum((-3, -2, -1))
    return log_px + log_p - log_q


@torch.no_grad()
def estimate(vae: vaekit.VAE, x: torch.Tensor, k: int, batch: int) -> tuple[float, float]:
    """Mean and standard error over images of the K-sample estimate of -log p(x), in nats."""
    per_image = []
    for i in range(0, len(x), batch):
        lw = log_weights(vae, x[i : i + batch], k)
        per_image.append(-(torch.logsumexp(lw.double(), 0) - math.log(k)))
    nll = torch.cat(per_image)
    return float(nll.mean()), float(nll.std() / math.sqrt(len(nll)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir")
    p.add_argument("--num-samples", type=int, default=1000)
    p.add_argument("--limit", type=int, default=None, help="first N test images (default: all)")
    p.add_argument("--batch", type=int, default=20, help="images per pass")
    p.add_argument("--seed", type=int, default=12345)
    p.add_argument("--checkpoint", choices=("auto", "best", "last"), default="auto",
                   help="which weights, as vaekit evaluate --checkpoint (default: auto)")
    a = p.parse_args()
    vae = vaekit.load(a.run_dir, checkpoint=a.checkpoint)
    name, state, _ = runs.model_checkpoint(a.run_dir, a.checkpoint)
    config = vaekit.runs.vae_config(runs.read_config(a.run_dir))
    ok = (config["likelihood"].get("name") == "bernoulli" and vae.prior.name == "standard"
          and vae.posterior.name == "diagonal" and not vae.num_classes)
    if not ok:
        raise SystemExit("this check covers Bernoulli runs with the standard prior and the "
                         "diagonal posterior (one or two latent layers), unconditional")
    x, _ = runs.load_test_set(a.run_dir, vae, limit=a.limit)
    torch.manual_seed(a.seed)
    t0 = time.perf_counter()
    mean, se = estimate(vae, x, a.num_samples, a.batch)
    print(json.dumps({"run_dir": a.run_dir, "checkpoint": name, "epoch": int(state["epoch"]),
                      "num_samples": a.num_samples, "n_images": len(x),
                      "neg_log_px": mean, "neg_log_px_se": se,
                      "seconds": round(time.perf_counter() - t0, 1)}, indent=2))


if __name__ == "__main__":
    main()

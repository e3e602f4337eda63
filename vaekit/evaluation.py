"""Numbers for a trained VAE: the ELBO and its parts, the IWAE bound and latent usage, in nats.

    terms = elbo_terms(vae, x)              # per-image reconstruction NLL and KL(q(z|x) || p(z))
    m = evaluate_elbo(vae, test_x)          # {"neg_elbo": ..., "recon": ..., "kl": ...}
    r = evaluate(vae, test_x, num_samples=1000)   # an `Evaluation`: -ELBO, IWAE -log p(x), ...
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch.distributions import Normal, kl_divergence
from tqdm.auto import tqdm

from vaekit.devices import eval_mode
from vaekit.errors import ConfigError, DataError
from vaekit.likelihoods import Likelihood
from vaekit.model import VAE, Guide, Model
from vaekit.posteriors import Diagonal
from vaekit.priors import StandardNormal
from vaekit.quantize import perplexity_of_counts
from vaekit.semisupervised import accuracy, is_semi_supervised
from vaekit.traces import SiteLogProbs, enumerated_log_probs, site_log_probs

__all__ = [
    "elbo_terms",
    "evaluate_elbo",
    "evaluate_elbo_sharded",
    "iwae_bound_sharded",
    "iwae_bound",
    "evaluate",
    "Evaluation",
    "active_units",
    "kl_per_dim",
    "dimension_scores",
    "bits_per_dim",
    "ACTIVE_UNIT_THRESHOLD",
    "site_log_probs",
    "SiteLogProbs",
    "is_standard_gaussian",
    "traversal_plan",
    "TraversalPlan",
    "pixel_error",
    "PixelError",
]

ACTIVE_UNIT_THRESHOLD = 0.01
"""A latent dimension is active when ``Cov_x(E_q[z_d]) > 0.01`` (Burda et al., 2015)."""


@torch.no_grad()
def elbo_terms(vae: VAE, x: torch.Tensor, y: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Reconstruction NLL ``-log p(x|z)`` (one z ~ q(z|x)) and ``KL(q(z|x) || p(z))`` per image.

    For any model/guide pair the terms come from their Pyro traces (`vaekit.traces`): the
    reconstruction sums the observed sites, the KL sums over the latent sites. A site's KL is
    taken in closed form (``torch.distributions.kl_divergence``) only where that is exactly its
    term of the ELBO: q and p of the site both have one, and no latent the model conditions it
    on was drawn after it in the guide (`vaekit.traces.closed_form_sites`; so for two layers,
    with q(z2|z1) drawn after z1, z1's KL is ``log q(z1|x) - log p(z1|z2)`` at the draws).
    Every other site contributes the one-draw ``log q - log p``. A semi-supervised VAE without
    labels sums y out exactly (`vaekit.traces.enumerated_log_probs`): the reconstruction is
    ``Σ_y q(y|x) (-log p(x|z_y, y))`` and the KL ``Σ_y q(y|x) (log q(z_y|x,y) - log p(z_y)) +
    KL(q(y|x) || p(y))``, one z_y ~ q(z|x, y) per class. For vaekit's own Normal(0, I)
    prior and diagonal posterior this is computed directly from the encoder and decoder (the
    same numbers, faster).

    Args:
        vae: The model; used as it is (call ``vae.eval()`` first for test numbers).
        x: Observations ``[batch, C, H, W]`` (e.g. binarized images for Bernoulli).
        y: Labels ``[batch]``, for a conditional VAE.

    Returns:
        Two tensors of shape ``[batch]``; their sum is the per-image -ELBO (β = 1).
    """
    if is_semi_supervised(vae) and y is None:  # M2, y summed out: Σ_y q(y|x) (...)
        e = enumerated_log_probs(vae, x, 1)
        q = e.log_q_enum.exp()
        return (-(q * e.log_lik[:, 0]).sum(0),
                (q * (e.kl_other[:, 0] + e.log_q_enum - e.log_p_enum)).sum(0))
    if not is_standard_gaussian(vae):
        t = site_log_probs(vae, x, y, 1)
        return -t.log_lik[0], t.kl_total[0]
    z_loc, z_scale = vae.qz(x, y)
    q = Normal(z_loc, z_scale)
    recon = -vae.px(q.sample(), y).log_prob(x)
    kl = kl_divergence(q, Normal(torch.zeros_like(z_loc), torch.ones_like(z_scale))).sum(-1)
    return recon, kl


@torch.no_grad()
def evaluate_elbo(vae: VAE, x: torch.Tensor, batch_size: int = 1024,
                  y: torch.Tensor | None = None) -> dict[str, float]:
    """Mean test -ELBO and its parts over ``x``, in eval mode (BatchNorm running statistics).

    Args:
        vae: The model.
        x: Observations on the model's device.
        batch_size: Images per forward pass.
        y: Labels, for a conditional VAE.

    Returns:
        ``{"neg_elbo", "recon", "kl"}`` in nats per image.
    """
    recon = x.new_zeros(())
    kl = x.new_zeros(())
    with eval_mode(vae):
        for i in range(0, x.shape[0], batch_size):
            r, k = elbo_terms(vae, x[i : i + batch_size],
                              None if y is None else y[i : i + batch_size])
            recon += r.sum()
            kl += k.sum()
    n = x.shape[0]
    recon_f, kl_f = recon.item() / n, kl.item() / n
    return {"neg_elbo": recon_f + kl_f, "recon": recon_f, "kl": kl_f}


def evaluate_elbo_sharded(vae: VAE, x: torch.Tensor, dist: Any, batch_size: int = 1024,
                          y: torch.Tensor | None = None) -> dict[str, float]:
    """`evaluate_elbo` with several processes: each rank scores its shard ``x[rank::world]``
    and the sums are added over ranks (``dist``: a `vaekit.distributed.Context`)."""
    rank, world = dist.rank, dist.world
    shard = x[rank::world]
    m = evaluate_elbo(vae, shard, batch_size, None if y is None else y[rank::world])
    sums = torch.tensor([m["recon"] * len(shard), m["kl"] * len(shard)], dtype=torch.float64)
    recon, kl = (dist.all_sum(sums) / len(x)).tolist()
    return {"neg_elbo": recon + kl, "recon": recon, "kl": kl}


def iwae_bound_sharded(vae: VAE, x: torch.Tensor, dist: Any, num_samples: int,
                       batch_size: int = 100, y: torch.Tensor | None = None) -> float:
    """The mean `iwae_bound` over ``x`` (nats per image), each rank on its shard, with fixed
    draws (seeded by the rank: epochs compare on the same noise, global RNGs untouched)."""
    rank, world = dist.rank, dist.world
    per_image = iwae_bound(vae, x[rank::world], num_samples, batch_size, seed=rank,
                           y=None if y is None else y[rank::world])
    total = dist.all_sum(per_image.double().sum().reshape(1).cpu())
    return float(total[0]) / len(x)


# -- importance sampling ------------------------------------------------------------------------
def is_standard_gaussian(vae: VAE) -> bool:
    """True for vaekit's own model and guide with the Normal(0, I) prior and the diagonal
    posterior, where the KL is exact in closed form and the direct computation applies."""
    return (type(vae.model) is Model and type(vae.guide) is Guide
            and type(vae.model.prior) is StandardNormal and type(vae.guide.posterior) is Diagonal)


CPU_DECODE_CHUNK = 512
"""Most latents the direct IWAE path decodes at once on a CPU: the seed decoder's fastest batch
there (`benchmarks/eval_throughput.py`: about 20 % more decodes/s than at 2,048 on a 2-core
EPYC); the per-image values do not depend on it."""


@dataclass
class _PerImage:
    """Per-image results of one importance-sampling pass (all ``[N]`` except noted)."""

    neg_log_px: torch.Tensor  # IWAE estimate of -log p(x)
    recon: torch.Tensor  # mean over the K samples of -log p(x|z_k)
    kl: torch.Tensor  # KL(q(z|x) || p(z)): analytic where exact, else the K-sample mean
    kl_per_dim: torch.Tensor | None  # [N, z_dim], only where it is analytic
    z_loc: torch.Tensor | None  # [N, z_dim], E_q[z] (estimated from the K draws for flows)
    discrete: bool  # the likelihood's support is discrete (no bits/dim)
    kl_sites: dict[str, torch.Tensor] | None = None  # [N] per latent site


def _check_args(vae: VAE, x: torch.Tensor, num_samples: int, batch_size: int,
                chunk_size: int) -> None:
    for name, value in (("num_samples", num_samples), ("batch_size", batch_size),
                        ("chunk_size", chunk_size)):
        if not (isinstance(value, int) and value >= 1):
            raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
    if x.dim() != 4 or tuple(x.shape[1:]) != vae.image_shape or x.shape[0] == 0:
        raise DataError(f"observations have shape {tuple(x.shape)} but the model takes "
                        f"[N >= 1, *{vae.image_shape}]; pass a batch of images shaped like that")


@torch.no_grad()
def _importance_pass(vae: VAE, x: torch.Tensor, num_samples: int, batch_size: int,
                     chunk_size: int, seed: int, progress: bool = False,
                     y: torch.Tensor | None = None) -> _PerImage:
    """Encode each batch once, draw K z's per image, decode in bounded chunks, reduce per image."""
    _check_args(vae, x, num_samples, batch_size, chunk_size)
    if not is_standard_gaussian(vae):
        return _importance_pass_traced(vae, x, num_samples, batch_size, chunk_size, seed,
                                       progress, y)
    dev = next(iter(vae.parameters()), x).device  # `vae.device` needs a parameter
    gen = torch.Generator(device=dev).manual_seed(seed)
    k = num_samples
    out: dict[str, list[torch.Tensor]] = {f: [] for f in ("iwae", "recon", "kl", "kld", "loc")}
    discrete = False
    bar = tqdm(total=x.shape[0], desc=f"IWAE K={k}", unit="img", leave=False, disable=not progress,
               dynamic_ncols=True)
    with eval_mode(vae), bar:
        for i in range(0, x.shape[0], batch_size):
            xb = x[i : i + batch_size].to(dev)
            yb = None if y is None else y[i : i + batch_size].to(dev)
            b = xb.shape[0]
            z_loc, z_scale = vae.qz(xb, yb)
            q = Normal(z_loc, z_scale)
            kld = kl_divergence(q, Normal(torch.zeros_like(z_loc), torch.ones_like(z_scale)))
            # z_k ~ q(z|x): [K, B, Z]; log q and log p(z) are cheap, do them at once.
            eps = torch.randn((k, b, vae.z_dim), generator=gen, device=dev, dtype=z_loc.dtype)
            z = z_loc + z_scale * eps
            log_q = q.log_prob(z).sum(-1)
            log_pz = Normal(0.0, 1.0).log_prob(z).sum(-1)
            # log p(x|z_k): decode the K*B latents at most `chunk_size` at a time.
            z_flat = z.reshape(k * b, vae.z_dim)
            log_lik = torch.empty(k * b, device=dev, dtype=z_loc.dtype)
            step = chunk_size if dev.type != "cpu" else min(chunk_size, CPU_DECODE_CHUNK)
            for j in range(0, k * b, step):
                idx = torch.arange(j, min(j + step, k * b), device=dev)
                px = vae.px(z_flat[idx], None if yb is None else yb[idx % b])
                log_lik[idx] = px.log_prob(xb[idx % b])
                discrete = bool(px.support.is_discrete)
            log_lik = log_lik.reshape(k, b)
            log_w = log_lik + log_pz - log_q
            out["iwae"].append(math.log(k) - torch.logsumexp(log_w, dim=0))
            out["recon"].append(-log_lik.mean(0))
            out["kl"].append(kld.sum(-1))
            out["kld"].append(kld)
            out["loc"].append(z_loc)
            bar.update(b)
    cat = {f: torch.cat(v) for f, v in out.items()}
    return _PerImage(cat["iwae"], cat["recon"], cat["kl"], cat["kld"], cat["loc"], discrete,
                     {"z": cat["kl"]})


@torch.no_grad()
def _importance_pass_traced(vae: VAE, x: torch.Tensor, num_samples: int, batch_size: int,
                            chunk_size: int, seed: int, progress: bool = False,
                            y: torch.Tensor | None = None) -> _PerImage:
    """`_importance_pass` for any model/guide: K particles per image from the traces, in chunks
    of at most ``chunk_size`` latents, with the global random state seeded and then restored."""
    dev = next(iter(vae.parameters()), x).device
    k = num_samples
    out: dict[str, list] = {"iwae": [], "recon": [], "kl": [], "loc": [], "sites": []}
    discrete = False
    bar = tqdm(total=x.shape[0], desc=f"IWAE K={k}", unit="img", leave=False, disable=not progress,
               dynamic_ncols=True)
    devices = [dev] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), eval_mode(vae), bar:
        torch.manual_seed(seed)
        for i in range(0, x.shape[0], batch_size):
            xb = x[i : i + batch_size].to(dev)
            yb = None if y is None else y[i : i + batch_size].to(dev)
            b = xb.shape[0]
            if is_semi_supervised(vae) and yb is None:  # y summed out exactly
                r = _enumerated_pass(vae, xb, k, max(1, chunk_size // (b * vae.num_classes)))
                for key, value in r.items():
                    out[key].append(value)
                bar.update(b)
                continue
            per = max(1, chunk_size // b)
            log_w, log_lik, kls, z_sum = [], [], {}, None
            for j in range(0, k, per):
                t = site_log_probs(vae, xb, yb, min(per, k - j))
                discrete = t.discrete
                log_w.append(t.log_weights)
                log_lik.append(t.log_lik)
                for site in t.log_q:
                    kls.setdefault(site, []).append(t.kl(site))
                first = "z" if "z" in t.values else "z1" if "z1" in t.values else None
                if first is not None and t.values[first].dim() == 3:  # E_q[z] of vectors z, for
                    # the active units (of the first layer; not of a VQ-VAE's code grid)
                    zs = t.values[first].reshape(-1, b, t.values[first].shape[-1]).sum(0)
                    z_sum = zs if z_sum is None else z_sum + zs
            lw = torch.cat(log_w)
            out["iwae"].append(math.log(k) - torch.logsumexp(lw, dim=0))
            out["recon"].append(-torch.cat(log_lik).mean(0))
            sites = {s: torch.cat(v).mean(0) for s, v in kls.items()}
            out["sites"].append(sites)
            out["kl"].append(sum(sites.values()))
            out["loc"].append(None if z_sum is None else z_sum / k)
            bar.update(b)
    locs = out["loc"]
    return _PerImage(
        neg_log_px=torch.cat(out["iwae"]), recon=torch.cat(out["recon"]),
        kl=torch.cat([torch.as_tensor(v, device=dev).expand(len(r)) for v, r in
                      zip(out["kl"], out["recon"])]),
        kl_per_dim=None, z_loc=None if any(v is None for v in locs) else torch.cat(locs),
        discrete=discrete,
        kl_sites={s: torch.cat([d[s] for d in out["sites"]]) for s in out["sites"][0]})


def _enumerated_pass(vae: VAE, x: torch.Tensor, k: int, per: int) -> dict[str, Any]:
    """One batch of `_importance_pass_traced` for a semi-supervised VAE, y summed out: K draws
    of z ~ q(z|x, y) for every class y, ``-log p(x) ≈ -logsumexp_y log (1/K) Σ_k w_yk``."""
    log_w, log_lik, kl_z, e = [], [], [], None
    for j in range(0, k, per):
        e = enumerated_log_probs(vae, x, min(per, k - j))
        log_w.append(e.log_weights)
        log_lik.append(e.log_lik)
        kl_z.append(e.kl_other)
    q = e.log_q_enum.exp()
    lw = torch.cat(log_w, dim=1)
    kl_sites = {"z": (q * torch.cat(kl_z, dim=1).mean(1)).sum(0),
                e.site: (q * (e.log_q_enum - e.log_p_enum)).sum(0)}
    return {"iwae": math.log(k) - torch.logsumexp(lw.flatten(0, 1), dim=0),
            "recon": -(q * torch.cat(log_lik, dim=1).mean(1)).sum(0),
            "kl": kl_sites["z"] + kl_sites[e.site], "loc": None, "sites": kl_sites}


def iwae_bound(vae: VAE, x: torch.Tensor, num_samples: int = 1000, batch_size: int = 100,
               chunk_size: int = 2048, seed: int = 0, progress: bool = False,
               y: torch.Tensor | None = None) -> torch.Tensor:
    """Per-image IWAE estimate of ``-log p(x)`` in nats: ``-log (1/K) Σ_k p(x, z_k) / q(z_k|x)``.

    With z_k ~ q(z|x), the bound log (1/K) Σ_k w_k is below log p(x) in expectation, rises with K
    and reaches it as K → ∞ (Burda et al., 2015); the value returned is its negative, so it is an
    over-estimate of -log p(x) on average. β plays no part: the weights use the true prior.

    The weights are computed here, vectorised over samples and images, rather than with Pyro's
    ``vectorized_importance_weights``: that one sums the log weights over the ``"data"`` plate
    (one weight per joint draw for the whole batch, no per-image reduction), scales the ``"z"``
    site by β, and decodes all K×B latents in one pass. Here each image batch is encoded once,
    K latents per image are drawn, ``log p(x|z)`` comes from
    ``vae.likelihood(vae.decoder(z)).log_prob(x)`` in chunks of at most ``chunk_size`` latents
    (bounded memory; the result does not depend on it), and ``log p(z)``, ``log q(z|x)`` from
    torch ``Normal`` log-densities; ``logsumexp`` over K gives each image's value. That direct
    path is for the Normal(0, I) prior with the diagonal posterior; every other model (mixture,
    VampPrior, flows, two layers, your own) reads ``log p(x, z) - log q(z|x)`` off the Pyro
    traces of the model replayed on K guide draws (`vaekit.traces.site_log_probs`), K in
    chunks of at most ``chunk_size`` latents, under the global RNG seeded by ``seed`` and then
    restored.

    Args:
        vae: The model; evaluated in eval mode, its previous mode restored.
        x: Observations ``[N, C, H, W]`` (e.g. binarized images for Bernoulli).
        num_samples: K, importance samples per image.
        batch_size: Images encoded at once.
        chunk_size: Most latents decoded at once.
        seed: Seeds the draws of z (global RNGs are left as they were).
        progress: Show a progress bar over the images.
        y: Labels ``[N]``, for a conditional VAE.

    Returns:
        A tensor ``[N]`` of per-image estimates; report its mean and standard error.

    Raises:
        ConfigError: for a count below 1.
        DataError: for observations of the wrong shape.
    """
    return _importance_pass(vae, x, num_samples, batch_size, chunk_size, seed,
                            progress, y).neg_log_px


@torch.no_grad()
def kl_per_dim(vae: VAE, x: torch.Tensor, batch_size: int = 1000,
               y: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over images of ``KL(q(z_d|x) || p(z_d))`` for each latent dimension, on the CPU.

    Analytic, for the diagonal Normal q(z|x) and the standard Normal p(z), in eval mode.

    Args:
        vae: The model.
        x: Observations ``[N, C, H, W]``.
        batch_size: Images encoded at once.
        y: Labels ``[N]``, for a conditional VAE.

    Returns:
        A tensor ``[z_dim]`` in nats (its sum is the mean KL per image).

    Raises:
        ConfigError: for another prior or posterior, where the KL does not split by dimension.
    """
    if not is_standard_gaussian(vae):
        raise ConfigError("the KL splits by dimension only for the standard prior with the "
                          "diagonal posterior; use dimension_scores for any model")
    total = torch.zeros(vae.z_dim, dtype=torch.float64)
    with eval_mode(vae):
        for i in range(0, x.shape[0], batch_size):
            loc, scale = vae.qz(x[i : i + batch_size].to(vae.device),
                                None if y is None else y[i : i + batch_size].to(vae.device))
            q = Normal(loc, scale)
            p = Normal(torch.zeros_like(loc), torch.ones_like(scale))
            total += kl_divergence(q, p).sum(0).double().cpu()
    return (total / x.shape[0]).float()


@torch.no_grad()
def dimension_scores(vae: VAE, x: torch.Tensor, batch_size: int = 1000,
                     y: torch.Tensor | None = None) -> tuple[torch.Tensor, str]:
    """How much each latent dimension is used, to rank them: ``(scores [z_dim], what)``.

    The mean KL per dimension (`kl_per_dim`, ``what == "KL"``) where it is analytic; otherwise
    the variance over images of the posterior mean, ``Cov_x(E_q[z_d])`` (``what == "Var"``),
    the statistic of `active_units`. ``y``: the labels ``[N]``, for a conditional VAE.
    """
    if is_standard_gaussian(vae):
        return kl_per_dim(vae, x, batch_size, y), "KL"
    with eval_mode(vae):
        means = torch.cat([vae.encode(x[i : i + batch_size],
                                      None if y is None else y[i : i + batch_size])[0].cpu()
                           for i in range(0, x.shape[0], batch_size)])
    return means.var(0) if means.shape[0] > 1 else torch.zeros(vae.z_dim), "Var"


@dataclass(frozen=True)
class TraversalPlan:
    """What ``vaekit traverse`` sweeps (`traversal_plan`).

    Attributes:
        dims: The latent dimensions, most used first.
        rows: One caption per dimension, e.g. ``"z3  KL 2.41"``.
        base: The point ``[z_dim]`` the other dimensions stay at.
        label: The class every image is decoded as (None: unconditional).
    """

    dims: list[int]
    rows: list[str]
    base: torch.Tensor
    label: int | None


@torch.no_grad()
def traversal_plan(vae: VAE, x: torch.Tensor, y: torch.Tensor | None = None, dims: int = 10,
                   index: int = 0, prior_base: bool = False, label: int | None = None
                   ) -> TraversalPlan:
    """The ``dims`` most used latent dimensions (`dimension_scores` on ``x``) and the base point:
    image ``index``'s posterior mean, or z = 0 (the prior's mean) with ``prior_base``. A
    conditional VAE decodes as ``label``, by default the base image's class (0 with
    ``prior_base``).

    Raises:
        ConfigError: for an ``index`` outside ``x``.
    """
    if not 0 <= index < x.shape[0]:
        raise ConfigError(f"--index {index} is outside the {x.shape[0]} test images; use 0.."
                          f"{x.shape[0] - 1}")
    score, what = dimension_scores(vae, x, y=y)
    order = torch.argsort(score, descending=True)[: min(dims, vae.z_dim)].tolist()
    with eval_mode(vae):
        base = (torch.zeros(vae.z_dim) if prior_base else
                vae.encode(x[index : index + 1], None if y is None else y[index : index + 1])[0][0])
    if vae.num_classes and label is None:
        label = 0 if prior_base or y is None else int(y[index])
    return TraversalPlan(order, [f"z{d}  {what} {score[d]:.2f}" for d in order], base, label)


def active_units(z_loc: torch.Tensor, threshold: float = ACTIVE_UNIT_THRESHOLD) -> int:
    """How many latent dimensions have ``Cov_x(E_q[z_d]) > threshold`` (Burda et al., 2015).

    Args:
        z_loc: Posterior means ``[N, z_dim]`` over a data set (N >= 2).
        threshold: The activity threshold.
    """
    if z_loc.shape[0] < 2:
        return 0
    return int((z_loc.var(dim=0) > threshold).sum())


def bits_per_dim(neg_log_px: float, dims: int, levels: int = 255) -> float:
    """Bits per dimension of 8-bit data ``v`` from a continuous density of ``x = v / levels``.

    Computes ``(neg_log_px / dims + log(levels)) / log(2)``: ``log(levels)`` per dimension is the
    Jacobian of ``x = v / levels``, turning the density of x into a density of the pixel values
    v in 0..255. vaekit scales uint8 images by 1/255 (`vaekit.data.to_unit`), hence 255. No
    dequantization noise is added: the density is read at the data points, as in training, so
    this is not a bound on the discrete log-likelihood and is not comparable with figures from
    uniformly dequantized data (``(v + u) / 256``, which use ``log 256``).

    Args:
        neg_log_px: -log p(x) of one image in nats (e.g. the IWAE estimate).
        dims: Values per image (C·H·W).
        levels: The factor the data were divided by.
    """
    return (neg_log_px / dims + math.log(levels)) / math.log(2)


def _bits_per_dim(vae: VAE, neg_log_px: float, dims: int) -> float | None:
    """Bits/dim where the likelihood's kind says how (see `vaekit.likelihoods.Likelihood.kind`).

    A continuous density converts through the 1/255 scaling of `vaekit.data.to_unit` only when
    the likelihood observes those values as they are; one whose ``targets`` transform them (its
    own rescaling) has another Jacobian, unknown here, so it gets None rather than a wrong value.
    """
    lik = vae.likelihood
    if lik.kind == "discrete":
        return neg_log_px / (dims * math.log(2))
    if lik.kind == "binary" or type(lik).targets is not Likelihood.targets:
        return None
    return bits_per_dim(neg_log_px, dims)


@dataclass(frozen=True)
class Evaluation:
    """What `evaluate` returns; nats per image unless said otherwise, means over the images.

    Attributes:
        n_images: Images evaluated.
        num_samples: K, importance samples per image.
        neg_elbo: -ELBO = ``recon + kl`` (β = 1, the true bound).
        neg_elbo_se: Its standard error over images.
        recon: ``-E_q[log p(x|z)]``, averaged over the K samples of each image.
        kl: ``KL(q(z|x) || p(z))`` summed over the latent sites (see ``kl_sites``).
        beta: The model's β.
        objective: The β-weighted training objective ``recon + beta * kl`` (equal to
            ``neg_elbo`` when β = 1).
        neg_log_px: IWAE estimate of -log p(x) with K samples (an over-estimate on average).
        neg_log_px_se: Its standard error over images.
        kl_per_dim: Mean over images of each latent dimension's KL, where it is analytic (the
            Normal(0, I) prior with the diagonal posterior); None otherwise.
        kl_sites: Mean KL per latent site: closed form where it is exactly the site's ELBO
            term (`vaekit.traces.closed_form_sites`), else the mean of ``log q - log p`` over the
            K draws (e.g. z1 of a two-layer model, whose prior p(z1|z2) depends on a later draw).
        active_units: Dimensions with ``Cov_x(E_q[z_d]) > active_threshold``.
        active_threshold: The threshold used.
        bits_per_dim: `bits_per_dim` of ``neg_log_px`` for continuous likelihoods (e.g. Gaussian)
            that observe 8-bit data scaled by 1/255 as it is; ``NLL / (D ln 2)`` for discrete
            ones (discretized logistic); None for binary ones (Bernoulli) and for a likelihood
            whose ``targets`` transform the data (its Jacobian is not known here).
        codes_used: A VQ-VAE's codes that the images' grids use (None for other models; of
            two levels, the bottom grid's).
        code_perplexity: ``exp`` of the entropy of those codes' frequencies (None likewise).
        neg_elbo_uniform_prior: A VQ-VAE's -ELBO under the uniform prior of its training,
            ``recon + (cells) log K`` over every grid's cells, beside ``neg_elbo`` with its
            prior (None for other models).
        codes_used_top: A VQ-VAE-2's top-grid codes used (None for others).
        code_perplexity_top: Their perplexity (None for others).
        accuracy: A semi-supervised VAE's test accuracy of q(y|x) in percent (given labels;
            None for others); its bounds sum y out.
        clustering_accuracy: The same under the best matching of classes to labels (the
            Hungarian method; what scores a model trained without labels).
    """

    n_images: int
    num_samples: int
    neg_elbo: float
    neg_elbo_se: float
    recon: float
    kl: float
    beta: float
    objective: float
    neg_log_px: float
    neg_log_px_se: float
    kl_per_dim: list[float] | None
    active_units: int
    active_threshold: float
    bits_per_dim: float | None
    kl_sites: dict[str, float]
    codes_used: int | None = None
    code_perplexity: float | None = None
    neg_elbo_uniform_prior: float | None = None
    codes_used_top: int | None = None
    code_perplexity_top: float | None = None
    accuracy: float | None = None
    clustering_accuracy: float | None = None

    def to_dict(self) -> dict[str, object]:
        """The fields as a JSON-ready dict."""
        return asdict(self)


def evaluate(vae: VAE, x_obs: torch.Tensor, num_samples: int = 1000, batch_size: int = 100,
             chunk_size: int = 2048, seed: int = 0,
             active_threshold: float = ACTIVE_UNIT_THRESHOLD, progress: bool = False,
             y: torch.Tensor | None = None) -> Evaluation:
    """Test numbers for a VAE: -ELBO and its parts, the IWAE -log p(x), latent usage, bits/dim.

    One importance-sampling pass (see `iwae_bound`) gives everything: the reconstruction term
    is the mean of ``-log p(x|z_k)`` over the same K draws (lower variance than the single draw
    of `evaluate_elbo`), and the IWAE value is ``>=`` the one-sample-average bound for the same
    draws. The KL of each latent site is in closed form where that is exactly its ELBO term (see
    `elbo_terms`), else the mean of ``log q - log p`` over the K draws, so ``neg_elbo`` is an
    unbiased estimate of the -ELBO for every model.

    Args:
        vae: The model; evaluated in eval mode, its previous mode restored.
        x_obs: Observations ``[N, C, H, W]``, made as in training (e.g. test images binarized
            with `vaekit.likelihoods.TEST_BINARIZATION_SEED`).
        num_samples: K, importance samples per image (1 for a VQ-VAE, whose q is a point mass:
            its K weights are equal, so the IWAE bound is the ELBO).
        batch_size: Images encoded at once.
        chunk_size: Most latents decoded at once (memory bound).
        seed: Seeds the draws of z.
        active_threshold: Variance threshold for `active_units`.
        progress: Show a progress bar over the images.
        y: Labels ``[N]``, for a conditional VAE; for a semi-supervised one they score its
            classifier (`Evaluation.accuracy`) and its bounds sum y out.

    Returns:
        An `Evaluation`.

    Raises:
        ConfigError: for a count below 1.
        DataError: for observations of the wrong shape.
    """
    if getattr(vae, "is_vq", False):  # a point mass: every importance weight is the same
        num_samples = 1
    labels, semi = y, is_semi_supervised(vae)
    if semi:  # the bounds of p(x), y summed out; the labels score the classifier
        y = None
    r = _importance_pass(vae, x_obs, num_samples, batch_size, chunk_size, seed, progress, y)
    n = r.neg_log_px.shape[0]
    neg_elbo = r.recon + r.kl

    def se(v: torch.Tensor) -> float:
        return float(v.std() / math.sqrt(n)) if n > 1 else float("nan")

    nlp = float(r.neg_log_px.mean())
    dims = math.prod(vae.image_shape)
    return Evaluation(
        n_images=n,
        num_samples=num_samples,
        neg_elbo=float(neg_elbo.mean()),
        neg_elbo_se=se(neg_elbo),
        recon=float(r.recon.mean()),
        kl=float(r.kl.mean()),
        beta=vae.beta,
        objective=float((r.recon + vae.beta * r.kl).mean()),
        neg_log_px=nlp,
        neg_log_px_se=se(r.neg_log_px),
        kl_per_dim=None if r.kl_per_dim is None else [float(v) for v in r.kl_per_dim.mean(0)],
        active_units=0 if r.z_loc is None else active_units(r.z_loc, active_threshold),
        active_threshold=active_threshold,
        bits_per_dim=_bits_per_dim(vae, nlp, dims),
        kl_sites={k: float(v.mean()) for k, v in (r.kl_sites or {}).items()},
        **_code_usage(vae, x_obs, batch_size, float(r.recon.mean())),
        **({"accuracy": accuracy(vae, x_obs, labels, batch_size),
            "clustering_accuracy": accuracy(vae, x_obs, labels, batch_size, clusters=True)}
           if semi and labels is not None else {}),
    )


@torch.no_grad()
def _code_usage(vae: VAE, x_obs: torch.Tensor, batch_size: int, recon: float
                ) -> dict[str, Any]:
    """``codes_used``, ``code_perplexity`` (and of two levels the top grid's) and
    ``neg_elbo_uniform_prior`` of a VQ-VAE's grids of ``x_obs`` (else nothing)."""
    if not getattr(vae, "is_vq", False):
        return {}
    k = vae.posterior.quantizer.num_codes
    counts = [torch.zeros(k, dtype=torch.float64) for _ in vae.posterior.quantizers]
    cells = 0
    with eval_mode(vae):
        for i in range(0, x_obs.shape[0], batch_size):
            for total, codes in zip(counts, vae.codes(x_obs[i : i + batch_size])):
                total += torch.bincount(codes.flatten().cpu(), minlength=k)
                cells += codes[0].numel() if i == 0 else 0
    out = {"codes_used": int(counts[0].gt(0).sum()),
           "code_perplexity": perplexity_of_counts(counts[0]),
           "neg_elbo_uniform_prior": recon + cells * math.log(k)}
    if len(counts) == 2:
        out.update(codes_used_top=int(counts[1].gt(0).sum()),
                   code_perplexity_top=perplexity_of_counts(counts[1]))
    return out


@dataclass(frozen=True)
class PixelError:
    """What `pixel_error` returns: the reconstruction error in pixel space.

    Attributes:
        n_images: Images reconstructed.
        squared: Mean over images of the summed squared error ``Σ_pixels (x - x~)^2``.
        squared_se: Its standard error over images.
        per_pixel: ``squared`` divided by the pixels per image (the mean squared error).
    """

    n_images: int
    squared: float
    squared_se: float
    per_pixel: float

    def to_dict(self) -> dict[str, object]:
        """The fields as a JSON-ready dict."""
        return asdict(self)


@torch.no_grad()
def pixel_error(vae: VAE, images: torch.Tensor, batch_size: int = 500,
                y: torch.Tensor | None = None) -> PixelError:
    """The squared error between images in [0, 1] and their reconstructions, the mean image of
    p(x|z) at the mean of q(z|x): a number every model has, a VAE-GAN (whose p(x|z) is a density
    of discriminator features, with no -log p(x)) included.

    Args:
        vae: The model; evaluated in eval mode, its previous mode restored.
        images: uint8 or float images ``[N, C, H, W]``.
        batch_size: Images at once.
        y: Labels ``[N]``, for a conditional VAE.
    """
    from vaekit.data import to_unit

    errors = []
    with eval_mode(vae):
        for i in range(0, images.shape[0], batch_size):
            x = to_unit(images[i:i + batch_size]).to(vae.device)
            lab = None if y is None else y[i:i + batch_size]
            z_mean, _ = vae.encode(x, lab)
            errors.append((vae.decode(z_mean, lab) - x).pow(2).flatten(1).sum(1).cpu())
    e = torch.cat(errors)
    n = e.shape[0]
    return PixelError(n, float(e.mean()), float(e.std() / math.sqrt(n)) if n > 1 else float("nan"),
                      float(e.mean()) / math.prod(images.shape[1:]))

"""The one trace layer: every log-density vaekit trains on or reports is read here, off the
guide's Pyro trace and the model's trace replayed on it.

    t = site_log_probs(vae, x, particles=5)   # a `SiteLogProbs`, each term [5, batch]
    t.log_weights                             # log p(x, z) - log q(z|x) per particle and image
    t.kl("z1")                                # one estimate of KL per particle and image

Works for any model/guide pair whose sample sites lie in the ``"data"`` plate (one value per
image), whatever the prior, posterior or number of latent sites; no site is found by its name.
A site's KL is taken in closed form (``torch.distributions.kl_divergence``) only where that is
exactly the conditional expectation of ``log q - log p`` the ELBO needs (`closed_form_sites`);
elsewhere it is the sample's ``log q - log p``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import pyro
import torch
from pyro import poutine
from pyro.infer import config_enumerate
from pyro.poutine.util import site_is_subsample
from torch.distributions import kl_divergence

from vaekit.errors import ConfigError

__all__ = ["trace_pair", "latent_sites", "closed_form_sites", "site_log_probs", "SiteLogProbs",
           "enumerated_log_probs", "EnumeratedLogProbs", "kl_per_dimension"]


def trace_pair(model: Callable, guide: Callable, *args: torch.Tensor
               ) -> tuple[pyro.poutine.Trace, pyro.poutine.Trace]:
    """The guide's trace and the model's trace replayed on the guide's draws."""
    guide_tr = poutine.trace(guide).get_trace(*args)
    model_tr = poutine.trace(poutine.replay(model, trace=guide_tr)).get_trace(*args)
    return guide_tr, model_tr


def latent_sites(trace: pyro.poutine.Trace) -> list[str]:
    """The names of a trace's unobserved sample sites, in the order the program drew them."""
    return [name for name, site in trace.nodes.items()
            if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)]


def closed_form_sites(guide_tr: pyro.poutine.Trace, model_tr: pyro.poutine.Trace) -> set[str]:
    """The guide's latent sites whose closed-form KL is exactly the ELBO's term.

    A site s qualifies when every latent site the model draws before s was drawn by the guide
    before s too. Then, given the guide's draws before s, both q(s | ...) and p(s | ...) are
    fixed distributions, and ``KL(q || p)`` is the expectation of ``log q(s) - log p(s)`` over
    q's draw of s alone (Rao-Blackwellised, as in Pyro's ``TraceMeanField_ELBO``). Where the
    model conditions s on a site the guide draws later (two layers: p(z1|z2) with z2 ~ q(z2|z1)),
    the closed form at the later draw is not that expectation, and the site is left out.
    A latent the model draws that the guide does not (sampled from the model's own prior)
    disqualifies every site the model draws after it.
    """
    guide_order = latent_sites(guide_tr)
    model_order = latent_sites(model_tr)
    out = set()
    for i, name in enumerate(guide_order):
        if name in model_order and set(model_order[:model_order.index(name)]) <= set(guide_order[:i]):
            out.add(name)
    return out


@dataclass
class SiteLogProbs:
    """Log-densities read off the model's and guide's traces, each ``[particles, batch]``.

    Attributes:
        log_lik: Sum over the observed sites of log p(x|z).
        log_p: Per latent site, log p(z) (the model's density at the guide's draw).
        log_q: Per latent site, log q(z|x).
        kl_closed: Per latent site in `closed_form_sites` whose q and p have a closed-form KL,
            ``KL(q || p)`` given the draws before it.
        values: Per latent site, the draws ``[particles, batch, ...]``.
        dists: Per latent site, ``(q, p)``: the guide's and the model's distributions.
        discrete: The observed sites' support is discrete.
        recorded: Values of the guide's observed sites (``pyro.deterministic`` records, such as
            a VQ-VAE's encoder grid ``"z_e"``), which add nothing to any density.
    """

    log_lik: torch.Tensor
    log_p: dict[str, torch.Tensor]
    log_q: dict[str, torch.Tensor]
    kl_closed: dict[str, torch.Tensor]
    values: dict[str, torch.Tensor]
    dists: dict[str, tuple[torch.distributions.Distribution, torch.distributions.Distribution]]
    discrete: bool
    recorded: dict[str, torch.Tensor]

    @property
    def log_weights(self) -> torch.Tensor:
        """``log p(x, z) - log q(z|x)`` per particle and image."""
        out = self.log_lik
        for site in self.log_q:
            out = out + self.log_p[site] - self.log_q[site]
        return out

    def kl(self, site: str) -> torch.Tensor:
        """An unbiased estimate of the site's KL term per particle and image: the closed form
        where it is exact, else ``log q - log p`` at the draw."""
        if site in self.kl_closed:
            return self.kl_closed[site]
        return self.log_q[site] - self.log_p[site]

    @property
    def kl_sampled(self) -> torch.Tensor:
        """``log q - log p`` at the draws, summed over the latent sites, ``[particles, batch]``
        (the one-sample KL estimate, whatever has a closed form)."""
        return sum((self.log_q[s] - self.log_p[s] for s in self.log_q),
                   torch.zeros_like(self.log_lik))

    @property
    def kl_total(self) -> torch.Tensor:
        """The sum of `kl` over the latent sites, ``[particles, batch]``."""
        return sum((self.kl(s) for s in self.log_q), torch.zeros_like(self.log_lik))


def site_log_probs(vae: torch.nn.Module, x: torch.Tensor, y: torch.Tensor | None = None,
                   particles: int = 1, closed_form: bool = True) -> SiteLogProbs:
    """Run ``vae.guide`` and ``vae.model`` (replayed on the guide's draws) under a plate of
    ``particles`` draws per image, and read every site's log-density off their traces.

    β plays no part (the densities are read unscaled). Uses the global random state; keeps
    the autograd graph (call it under ``torch.no_grad()`` for numbers alone).

    Args:
        vae: Anything with ``model`` and ``guide`` Pyro programs taking ``(x)`` or ``(x, y)``.
        x: Observations ``[batch, ...]``.
        y: Labels ``[batch]``, for a conditional VAE.
        particles: Draws per image.
        closed_form: Also compute `SiteLogProbs.kl_closed` (off: fewer operations, for losses
            that need only the weights).

    Raises:
        ConfigError: for a site whose log-density is not one number per image, or a guide site
            the model does not sample.
    """
    args = (x,) if y is None else (x, y)
    with pyro.settings.context(module_local_params=True), poutine.block(), \
            pyro.plate("particles", particles, dim=-2):
        guide_tr, model_tr = trace_pair(vae.model, vae.guide, *args)
    want = (particles, x.shape[0])

    def per_image(name: str, lp: torch.Tensor) -> torch.Tensor:
        try:
            return lp.expand(want)
        except RuntimeError:
            raise ConfigError(f"the site {name!r} has log-densities of shape {tuple(lp.shape)}, "
                              f"not one per image {want}: vaekit's per-image numbers need "
                              "every sample site inside the model's and guide's 'data' plate"
                              ) from None

    log_lik = x.new_zeros(want)
    discrete = False
    log_p, log_q, kl, values, dists = {}, {}, {}, {}, {}
    guide_latents = latent_sites(guide_tr)
    for name, site in model_tr.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        if site["is_observed"]:
            log_lik = log_lik + per_image(name, site["fn"].log_prob(site["value"]))
            discrete = bool(site["fn"].support.is_discrete)
        elif name in guide_latents:
            log_p[name] = per_image(name, site["fn"].log_prob(site["value"]))
    exact = closed_form_sites(guide_tr, model_tr) if closed_form else set()
    for name in guide_latents:
        site = guide_tr.nodes[name]
        if name not in log_p:
            raise ConfigError(f"the guide samples {name!r}, which the model does not")
        log_q[name] = per_image(name, site["fn"].log_prob(site["value"]))
        values[name] = site["value"]
        dists[name] = (site["fn"], model_tr.nodes[name]["fn"])
        if name in exact:
            try:
                kl[name] = per_image(name, kl_divergence(site["fn"], model_tr.nodes[name]["fn"]))
            except NotImplementedError:  # no closed form for this pair: the sample's value
                pass
    recorded = {name: site["value"] for name, site in guide_tr.nodes.items()
                if site["type"] == "sample" and site["is_observed"]}
    return SiteLogProbs(log_lik, log_p, log_q, kl, values, dists, discrete, recorded)


@dataclass
class EnumeratedLogProbs:
    """Log-densities of a guide with one discrete site (a label ``y``) summed out by Pyro's
    parallel enumeration: every term for each of its C values, ``[C, particles, batch]``.

    Attributes:
        log_weights: ``log p(x, y, z) - log q(z | x, y)`` at each value y, one draw of the
            other latents per particle.
        log_lik: ``log p(x | y, z)``, the observed sites.
        log_q_enum: log q(y | x) of each value, ``[C, batch]``.
        log_p_enum: log p(y) of each value, ``[C, batch]``.
        kl_other: ``log q - log p`` of the other latent sites, summed, ``[C, particles, batch]``.
        site: The enumerated site's name.
    """

    log_weights: torch.Tensor
    log_lik: torch.Tensor
    log_q_enum: torch.Tensor
    log_p_enum: torch.Tensor
    kl_other: torch.Tensor
    site: str

    @property
    def elbo(self) -> torch.Tensor:
        """The ELBO with the discrete site summed out exactly, per particle and image
        ``[particles, batch]``: ``Σ_y q(y|x) (log p(x, y, z_y) - log q(z_y|x, y) - log q(y|x))``."""
        q = self.log_q_enum.exp()[:, None]
        return (q * (self.log_weights - self.log_q_enum[:, None])).sum(0)

    @property
    def log_marginal(self) -> torch.Tensor:
        """The importance-sampling estimate of log p(x) over all particles, ``[batch]``:
        ``logsumexp_y log (1/K) Σ_k p(x, y, z_yk) / q(z_yk | x, y)``, the per-class IWAE
        estimates of log p(x, y) summed over the classes (z_yk ~ q(z|x, y))."""
        k = self.log_weights.shape[1]
        return torch.logsumexp(self.log_weights.flatten(0, 1), dim=0) - math.log(k)


def enumerated_log_probs(vae: torch.nn.Module, x: torch.Tensor, particles: int = 1
                         ) -> EnumeratedLogProbs:
    """Run ``vae.guide`` with its discrete sample site enumerated in parallel
    (``config_enumerate``, ``poutine.enum``) and ``vae.model`` replayed on it, under a plate of
    ``particles`` draws of the other latents per image, and read every site's log-density off
    the two traces (see `EnumeratedLogProbs`). Uses the global random state.

    Raises:
        ConfigError: for a guide without exactly one enumerable site.
    """
    guide = config_enumerate(vae.guide, "parallel", expand=False)
    with pyro.settings.context(module_local_params=True), poutine.block(), \
            pyro.plate("particles", particles, dim=-2):
        guide_tr = poutine.trace(poutine.enum(guide, first_available_dim=-3)).get_trace(x)
        model_tr = poutine.trace(poutine.replay(vae.model, trace=guide_tr)).get_trace(x)
    latents = latent_sites(guide_tr)
    enum = [n for n in latents if guide_tr.nodes[n]["infer"].get("_enumerate_dim") is not None]
    if len(enum) != 1:
        raise ConfigError(f"enumeration here sums out one discrete site of the guide; it has "
                          f"{len(enum)} ({', '.join(enum) or 'none'})")
    site = enum[0]
    c = guide_tr.nodes[site]["value"].shape[0]
    want = (c, particles, x.shape[0])
    log_lik = x.new_zeros(want)
    log_p = {}
    for name, node in model_tr.nodes.items():
        if node["type"] != "sample" or site_is_subsample(node):
            continue
        lp = node["fn"].log_prob(node["value"]).expand(want)
        if node["is_observed"]:
            log_lik = log_lik + lp
        else:
            log_p[name] = lp
    kl_other = x.new_zeros(want)
    for name in latents:
        if name != site:
            node = guide_tr.nodes[name]
            kl_other = kl_other + node["fn"].log_prob(node["value"]).expand(want) - log_p[name]
    node = guide_tr.nodes[site]
    log_q_enum = node["fn"].log_prob(node["value"]).expand(want)[:, 0]
    log_p_enum = log_p[site][:, 0]
    return EnumeratedLogProbs(log_lik + log_p_enum[:, None] - kl_other, log_lik, log_q_enum,
                              log_p_enum, kl_other, site)


def kl_per_dimension(q: torch.distributions.Distribution, p: torch.distributions.Distribution
                     ) -> torch.Tensor:
    """``KL(q_d || p_d)`` for each event dimension of two ``Independent(..., 1)`` distributions
    whose base distributions have a closed form (a diagonal Normal q and p): ``[..., D]``.

    Raises:
        ConfigError: where the KL does not split by dimension in closed form.
    """
    try:
        if not (isinstance(q, torch.distributions.Independent)
                and isinstance(p, torch.distributions.Independent)
                and q.reinterpreted_batch_ndims == p.reinterpreted_batch_ndims == 1):
            raise NotImplementedError
        return kl_divergence(q.base_dist, p.base_dist)
    except NotImplementedError:
        raise ConfigError(f"the KL of {type(q).__name__} against {type(p).__name__} does not "
                          "split by dimension in closed form; use a diagonal Normal posterior "
                          "and prior") from None

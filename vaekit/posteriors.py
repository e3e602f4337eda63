"""Posteriors q(z|x): small modules that turn the encoder's output into the distribution of ``"z"``.

    posterior = get_posterior("iaf:2", z_dim=32)   # or "diagonal", or a Posterior of yours
    qz = posterior(z_loc, z_scale)                 # batch shape [B], event shape [z_dim]
    pyro.sample("z", qz)

The encoder gives ``(z_loc, z_scale)``; `Diagonal` is Normal(z_loc, z_scale), and `IAF` pushes it
through N steps of inverse autoregressive flow conditioned on a context from the encoder
(Kingma et al., 2016), built from ``pyro.distributions.transforms`` and
``pyro.nn.ConditionalAutoRegressiveNN``. Their random masks and permutations are buffers, so a
saved and reloaded model gives exactly the same log q(z|x).
"""

from __future__ import annotations

from typing import Any, ClassVar

import pyro.distributions as dist
import torch
from pyro.distributions.transforms import ConditionalAffineAutoregressive
from pyro.nn import ConditionalAutoRegressiveNN
from torch import nn

from vaekit.errors import ConfigError
from vaekit.quantize import VectorQuantizer
from vaekit.settings import parse_named_count

__all__ = ["Posterior", "Diagonal", "IAF", "VectorQuantized", "POSTERIORS", "get_posterior",
           "parse_posterior"]


class Posterior(nn.Module):
    """Base class of q(z|x). Subclasses implement `forward`.

    Args:
        z_dim: Latent dimension.
    """

    name: ClassVar[str] = "custom"
    has_closed_form: ClassVar[bool] = False
    """True when ``forward`` is a diagonal Normal: KL terms and means are then exact."""

    def __init__(self, z_dim: int) -> None:
        super().__init__()
        self.z_dim = z_dim

    def forward(self, z_loc: torch.Tensor, z_scale: torch.Tensor) -> dist.TorchDistribution:
        """q(z|x) from the encoder's output: batch shape ``z_loc.shape[:-1]``, event ``[z_dim]``."""
        raise NotImplementedError

    @torch.no_grad()
    def moments(self, z_loc: torch.Tensor, z_scale: torch.Tensor,
                num_samples: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and standard deviation of q(z|x) per dimension.

        Exact for a diagonal Normal; otherwise estimated from ``num_samples`` draws.
        """
        if self.has_closed_form:
            return z_loc, z_scale
        z = self(z_loc, z_scale).sample((num_samples,))
        return z.mean(0), z.std(0)

    def config(self) -> dict[str, Any]:
        """Constructor arguments (besides ``z_dim``) that `get_posterior` rebuilds it from."""
        return {}


class Diagonal(Posterior):
    """q(z|x) = Normal(z_loc(x), diag z_scale(x)²), the default."""

    name = "diagonal"
    has_closed_form = True

    def forward(self, z_loc: torch.Tensor, z_scale: torch.Tensor) -> dist.TorchDistribution:
        """See `Posterior.forward`."""
        return dist.Normal(z_loc, z_scale).to_event(1)


class IAF(Posterior):
    """q(z|x): Normal(z_loc, z_scale) pushed through ``steps`` affine autoregressive flows.

    Each step is ``ConditionalAffineAutoregressive`` (the numerically stable variant) around a
    ``ConditionalAutoRegressiveNN`` whose context is ``(z_loc, log z_scale)``; each made-network
    draws its own variable order, kept as buffers. log q(z|x) = log N(z0) - Σ log|det J|, exact.

    Args:
        z_dim: Latent dimension.
        steps: Number of flow steps.
        hidden: Hidden units of each autoregressive network (default ``4 * z_dim``).
    """

    name = "iaf"

    def __init__(self, z_dim: int, steps: int = 2, hidden: int | None = None) -> None:
        super().__init__(z_dim)
        self.steps, self.hidden = steps, hidden or 4 * z_dim
        self.flows = nn.ModuleList([
            ConditionalAffineAutoregressive(
                ConditionalAutoRegressiveNN(z_dim, 2 * z_dim, [self.hidden]), stable=True)
            for _ in range(steps)])

    def forward(self, z_loc: torch.Tensor, z_scale: torch.Tensor) -> dist.TorchDistribution:
        """See `Posterior.forward`."""
        context = torch.cat([z_loc, z_scale.log()], dim=-1)
        base = dist.Normal(z_loc, z_scale).to_event(1)
        return dist.TransformedDistribution(base, [f.condition(context) for f in self.flows])

    def config(self) -> dict[str, Any]:
        """See `Posterior.config`."""
        return {"steps": self.steps, "hidden": self.hidden}


class VectorQuantized(Posterior):
    """The VQ-VAE's q(z|x) (van den Oord et al. 2017): a point mass on the grid of codebook
    vectors nearest to the encoder's grid ``z_e(x)`` ``[batch, D, h, w]``.

    ``forward(z_e)`` is ``Delta(e_c(x))`` with ``c(x)`` the nearest codes (`VectorQuantizer`):
    log q(z|x) = 0 at its draw, so the ELBO is exactly log p(x|z) + log p(z), and the sample
    carries the straight-through gradient to the encoder. In training mode each call updates the
    moving-average codebook (once per step: the objective runs the guide once). With
    ``levels=2`` (the VQ-VAE-2) it holds a second codebook, ``top``, for the top grid:
    ``forward(z_e, level=1)`` snaps to it.

    Args:
        z_dim: D, the size of each code vector (the encoder's output channels).
        k: K, the number of codes (of each codebook).
        decay: The codebooks' moving-average decay (0.99); 0: codebooks trained by their loss.
        levels: 1, or 2 for the VQ-VAE-2's bottom and top codebooks.
    """

    name = "vq"

    def __init__(self, z_dim: int, k: int = 512, decay: float = 0.99, levels: int = 1) -> None:
        super().__init__(z_dim)
        if levels not in (1, 2):
            raise ConfigError(f"a VQ-VAE has 1 or 2 levels of codes, got {levels!r}")
        self.k, self.decay, self.levels = k, decay, levels
        self.quantizer = VectorQuantizer(k, z_dim, decay)
        if levels == 2:
            self.top = VectorQuantizer(k, z_dim, decay)

    @property
    def quantizers(self) -> tuple[VectorQuantizer, ...]:
        """The codebooks, bottom (the only one of one level) first."""
        return (self.quantizer, self.top) if self.levels == 2 else (self.quantizer,)

    def forward(self, z_e: torch.Tensor, z_scale: torch.Tensor | None = None, level: int = 0
                ) -> dist.TorchDistribution:
        """The point mass on the nearest codes' vectors of codebook ``level`` (0: the bottom):
        batch ``[batch]``, event ``[D, h, w]``."""
        return dist.Delta(self.quantizers[level](z_e).quantized, event_dim=z_e.dim() - 1)

    @torch.no_grad()
    def moments(self, z_e: torch.Tensor, z_scale: torch.Tensor | None = None,
                num_samples: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
        """The point mass's value (the nearest codes' vectors) and zero spread; no update."""
        vectors = self.quantizer.lookup(self.quantizer.codes_of(z_e.float()))
        return vectors, torch.zeros_like(vectors)

    def config(self) -> dict[str, Any]:
        """See `Posterior.config`."""
        return {"k": self.k, "decay": self.decay, **({"levels": 2} if self.levels == 2 else {})}


POSTERIORS: dict[str, type[Posterior]] = {"diagonal": Diagonal, "iaf": IAF,
                                          "vq": VectorQuantized}
"""Built-in posteriors by name."""


def parse_posterior(spec: str) -> tuple[str, dict[str, Any]]:
    """``("iaf", {"steps": 2})`` from ``"iaf:2"``; ``"diagonal"``, ``"vq:K"`` alike.

    Raises:
        ConfigError: for a name that is not a built-in posterior or a count below 1.
    """
    parsed = (parse_named_count(spec, "diagonal", ("iaf",), "steps")
              or parse_named_count(spec, "vq", ("vq",), "k"))
    if parsed is not None:
        return parsed
    raise ConfigError(f"bad posterior {spec!r}; use diagonal, iaf:N (N >= 1 flow steps) or vq:K "
                      "(a VQ-VAE with K codes), or a Posterior of your own as package.module:Class")


def get_posterior(spec: str | Posterior, z_dim: int, **kwargs: Any) -> Posterior:
    """A posterior from ``"diagonal"``, ``"iaf:N"``, ``"vq:K"``, a built-in name, each with
    ``kwargs``, or a `Posterior` instance (returned as it is).

    Raises:
        ConfigError: for an unknown posterior or a ``Posterior`` whose ``z_dim`` differs.
    """
    if isinstance(spec, Posterior):
        if spec.z_dim != z_dim:
            raise ConfigError(f"the posterior has z_dim={spec.z_dim} but the VAE {z_dim}")
        return spec
    name, args = (spec, {}) if spec in POSTERIORS else parse_posterior(spec)
    return POSTERIORS[name](z_dim, **{**kwargs, **args})

"""Priors p(z): small modules that give the distribution of the latent site ``"z"``.

    prior = get_prior("mog:10", z_dim=32)      # or "standard", "vamp:500", or a Prior of yours
    pz = prior(batch_size)                     # batch shape [batch_size], event shape [z_dim]
    pyro.sample("z", pz)

Write your own by subclassing `Prior` and implementing ``forward(n)``; any Pyro or torch
distribution with event shape ``[z_dim]`` and a ``log_prob`` that keeps every normalising
constant will do, and vaekit's numbers (the test -ELBO, the IWAE -log p(x)) stay right for it,
since they are computed from the model's and guide's traces.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import pyro.distributions as dist
import torch
from torch import nn
from torch.distributions import constraints

from vaekit.devices import eval_mode
from vaekit.errors import ConfigError
from vaekit.settings import parse_named_count

__all__ = ["Prior", "StandardNormal", "MixtureOfGaussians", "VampPrior", "CodePrior",
           "UniformCodes", "CodeGrid", "PRIORS", "get_prior", "parse_prior"]


class Prior(nn.Module):
    """Base class of p(z). Subclasses implement `forward`.

    Args:
        z_dim: Latent dimension.
    """

    name: ClassVar[str] = "custom"

    def __init__(self, z_dim: int) -> None:
        super().__init__()
        self.z_dim = z_dim

    def forward(self, n: int) -> dist.TorchDistribution:
        """p(z) for ``n`` images: batch shape ``[n]``, event shape ``[z_dim]``."""
        raise NotImplementedError

    def bind(self, encoder: nn.Module) -> None:
        """Called once by `vaekit.VAE` with its encoder (the VampPrior needs it; others ignore it)."""

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` draws of z, reproducible with ``generator`` (a seed drawn from it seeds them)."""
        seed = int(torch.randint(2**62, (1,), generator=generator))
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            return self(n).sample()

    def config(self) -> dict[str, Any]:
        """Constructor arguments (besides ``z_dim``) that `get_prior` rebuilds it from."""
        return {}


class StandardNormal(Prior):
    """p(z) = Normal(0, I), the default; KL terms against it are taken in closed form."""

    name = "standard"

    def __init__(self, z_dim: int) -> None:
        super().__init__(z_dim)
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)  # follows .to(device)

    def forward(self, n: int) -> dist.TorchDistribution:
        """See `Prior.forward`."""
        zeros = self._anchor.new_zeros(n, self.z_dim)
        return dist.Normal(zeros, torch.ones_like(zeros)).to_event(1)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` draws of z ~ N(0, I) from ``generator``."""
        return torch.randn(n, self.z_dim, generator=generator)


class MixtureOfGaussians(Prior):
    """p(z) = Σ_k π_k Normal(μ_k, diag σ_k²), with learnable weights, means and scales.

    Args:
        z_dim: Latent dimension.
        k: Number of components.
    """

    name = "mog"

    def __init__(self, z_dim: int, k: int = 10) -> None:
        super().__init__(z_dim)
        self.k = k
        self.logits = nn.Parameter(torch.zeros(k))
        self.loc = nn.Parameter(torch.randn(k, z_dim))
        self.log_scale = nn.Parameter(torch.zeros(k, z_dim))

    def forward(self, n: int) -> dist.TorchDistribution:
        """See `Prior.forward`: a ``MixtureSameFamily`` of diagonal Normals."""
        mix = dist.Categorical(logits=self.logits.expand(n, self.k))
        comp = dist.Normal(self.loc.expand(n, self.k, self.z_dim),
                           self.log_scale.exp().expand(n, self.k, self.z_dim)).to_event(1)
        return dist.MixtureSameFamily(mix, comp)

    def config(self) -> dict[str, Any]:
        """See `Prior.config`."""
        return {"k": self.k}


class VampPrior(Prior):
    """The VampPrior (Tomczak & Welling, 2018): p(z) = (1/K) Σ_k q(z | u_k).

    ``K`` learnable pseudo-inputs ``u_k`` (images in [0, 1], through a sigmoid) go through the
    VAE's own encoder; the prior is the equal mixture of the diagonal Normals it gives them, with
    every normalising constant kept (``MixtureSameFamily.log_prob``). The encoder runs on them in
    eval mode, so its BatchNorm layers use (and do not update) their running statistics: the
    pseudo-inputs are encoded as a test image is.

    Args:
        z_dim: Latent dimension.
        k: Number of pseudo-inputs.
        image_shape: ``(channels, height, width)`` of the images.
    """

    name = "vamp"

    def __init__(self, z_dim: int, k: int = 500, image_shape: tuple[int, ...] = (1, 28, 28)) -> None:
        super().__init__(z_dim)
        self.k = k
        self.image_shape = tuple(image_shape)
        self.u_logits = nn.Parameter(torch.randn(k, *self.image_shape) * 0.5 - 1.0)
        self._encoder: list[nn.Module] = []  # not a submodule: the guide owns the encoder

    def bind(self, encoder: nn.Module) -> None:
        """See `Prior.bind`."""
        self._encoder[:] = [encoder]

    def components(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loc, scale)`` of q(z|u_k) for the K pseudo-inputs, each ``[K, z_dim]``."""
        if not self._encoder:
            raise ConfigError("the VampPrior needs the encoder: build it inside vaekit.VAE")
        with eval_mode(self._encoder[0]):  # BatchNorm: running statistics, left untouched
            loc, scale = self._encoder[0](torch.sigmoid(self.u_logits))
        return loc.float(), scale.float()

    def forward(self, n: int) -> dist.TorchDistribution:
        """See `Prior.forward`: the equal mixture of q(z|u_k)."""
        loc, scale = self.components()
        mix = dist.Categorical(logits=torch.zeros(n, self.k, device=loc.device))
        comp = dist.Normal(loc.expand(n, self.k, self.z_dim),
                           scale.expand(n, self.k, self.z_dim)).to_event(1)
        return dist.MixtureSameFamily(mix, comp)

    def config(self) -> dict[str, Any]:
        """See `Prior.config`."""
        return {"k": self.k, "image_shape": list(self.image_shape)}


class CodeGrid(dist.TorchDistribution):
    """A distribution over grids of codebook vectors ``[D, h, w]``: codes ``c`` ``[h, w]`` drawn
    from a `CodePrior`, the value their vectors ``e_c``. ``log_prob(z)`` is log p(c) of the codes
    whose vectors ``z`` are (the nearest ones), so it is a probability mass, in nats.

    Args:
        prior: The `CodePrior` whose ``log_prob_codes`` and ``sample_codes`` it uses.
        batch_shape: Its batch shape.
    """

    arg_constraints: ClassVar[dict] = {}
    support = constraints.independent(constraints.real, 3)

    def __init__(self, prior: CodePrior, batch_shape: torch.Size | tuple[int, ...]) -> None:
        self.prior = prior
        super().__init__(torch.Size(batch_shape), torch.Size((prior.z_dim, *prior.grid)),
                         validate_args=False)

    def expand(self, batch_shape: torch.Size | tuple[int, ...], _instance: Any = None
               ) -> CodeGrid:
        """The same distribution with another batch shape."""
        return CodeGrid(self.prior, batch_shape)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """log p(c) of the codes of ``value`` ``[..., D, h, w]``: ``[...]``."""
        codes = self.prior.quantizer.codes_of(value, len(self.prior.grid))
        lp = self.prior.log_prob_codes(codes.reshape(-1, *self.prior.grid))
        return lp.reshape(codes.shape[:-len(self.prior.grid)])

    def sample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> torch.Tensor:
        """Codes drawn from the prior, as their vectors ``[*sample_shape, *batch, D, h, w]``."""
        lead = torch.Size(sample_shape) + self.batch_shape
        codes = self.prior.sample_codes(max(1, math.prod(lead)))[:math.prod(lead)]
        return self.prior.quantizer.lookup(codes, len(self.prior.grid)).reshape(
            *lead, *self.event_shape)


class CodePrior(Prior):
    """Base class of priors over a VQ-VAE's grid of codes (`vaekit.posteriors.VectorQuantized`):
    p(z) is a `CodeGrid`, a distribution over the codebook's vectors. Subclasses implement
    `log_prob_codes` and `sample_codes`; `vaekit.VAE` binds the codebook and the grid's size.

    Args:
        z_dim: D, the size of the code vectors.
        k: K, the number of codes.
    """

    def __init__(self, z_dim: int, k: int = 512) -> None:
        super().__init__(z_dim)
        self.k = k
        self.grid: tuple[int, ...] = ()
        self._quantizer: list[nn.Module] = []  # not a submodule: the posterior owns the codebook
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)

    def bind_codebook(self, quantizer: nn.Module, grid: tuple[int, ...]) -> None:
        """Use the posterior's codebook (`vaekit.quantize.VectorQuantizer`) on grids ``grid``."""
        self._quantizer[:] = [quantizer]
        self.grid = tuple(grid)

    @property
    def quantizer(self) -> nn.Module:
        """The bound codebook."""
        if not self._quantizer:
            raise ConfigError("a prior over codes needs the VQ-VAE's codebook: build it inside "
                              "vaekit.VAE with posterior vq:K")
        return self._quantizer[0]

    def forward(self, n: int) -> dist.TorchDistribution:
        """See `Prior.forward`: a `CodeGrid` of batch shape ``[n]``."""
        return CodeGrid(self, (n,))

    def log_prob_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """log p(c) of code grids ``[n, h, w]``: ``[n]``."""
        raise NotImplementedError

    def sample_codes(self, n: int) -> torch.Tensor:
        """``n`` code grids ``[n, h, w]`` from the global random state."""
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """See `Prior.config`."""
        return {"k": self.k}


class UniformCodes(CodePrior):
    """The VQ-VAE's prior while it trains: every code of every grid cell equally likely,
    log p(c) = -h w log K (the bound's constant "KL" term)."""

    name = "uniform"

    def log_prob_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """See `CodePrior.log_prob_codes`."""
        cells = math.prod(codes.shape[1:])
        return self._anchor.new_full(codes.shape[:1], -cells * math.log(self.k))

    def sample_codes(self, n: int) -> torch.Tensor:
        """See `CodePrior.sample_codes`."""
        return torch.randint(self.k, (n, *self.grid)).to(self._anchor.device)


PRIORS: dict[str, type[Prior]] = {"standard": StandardNormal, "mog": MixtureOfGaussians,
                                  "vamp": VampPrior, "uniform": UniformCodes}
"""Built-in priors by name."""


def parse_prior(spec: str) -> tuple[str, dict[str, Any]]:
    """``("mog", {"k": 10})`` from ``"mog:10"``; ``"standard"``, ``"vamp:K"`` alike.

    Raises:
        ConfigError: for a name that is not a built-in prior or a count below 1.
    """
    parsed = parse_named_count(spec, "standard", ("mog", "vamp"), "k")
    if parsed is not None:
        return parsed
    raise ConfigError(f"bad prior {spec!r}; use standard, mog:K or vamp:K (K >= 1 components), "
                      "or a Prior of your own as package.module:Class")


def get_prior(spec: str | Prior, z_dim: int, image_shape: tuple[int, ...] = (1, 28, 28),
              **kwargs: Any) -> Prior:
    """A prior from ``"standard"``, ``"mog:K"``, ``"vamp:K"``, a registered name with ``kwargs``,
    or a `Prior` instance (returned as it is).

    Raises:
        ConfigError: for an unknown prior or a ``Prior`` whose ``z_dim`` differs.
    """
    if isinstance(spec, Prior):
        if spec.z_dim != z_dim:
            raise ConfigError(f"the prior has z_dim={spec.z_dim} but the VAE {z_dim}")
        return spec
    if spec in PRIORS:
        name, args = spec, dict(kwargs)
    else:
        name, args = parse_prior(spec)
    if name == "vamp":
        args.setdefault("image_shape", tuple(image_shape))
        args["image_shape"] = tuple(args["image_shape"])
    return PRIORS[name](z_dim, **args)


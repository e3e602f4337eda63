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
        prior: The `CodePrior` whose ``log_prob_codes`` and ``sample_codes`` (``level="top"``:
            ``log_prob_top`` and ``sample_top``) it uses.
        batch_shape: Its batch shape.
        level: ``"bottom"`` (the only grid of one level) or ``"top"`` (a VQ-VAE-2's).
        top: For the bottom grid of two levels, the top grid's codes ``[*batch, h', w']`` it is
            conditioned on.
    """

    arg_constraints: ClassVar[dict] = {}
    support = constraints.independent(constraints.real, 3)

    def __init__(self, prior: CodePrior, batch_shape: torch.Size | tuple[int, ...],
                 level: str = "bottom", top: torch.Tensor | None = None) -> None:
        self.prior, self.level, self.top = prior, level, top
        self.quantizer, self.grid = ((prior.top_quantizer, prior.top_grid) if level == "top"
                                     else (prior.quantizer, prior.grid))
        super().__init__(torch.Size(batch_shape), torch.Size((prior.z_dim, *self.grid)),
                         validate_args=False)

    def expand(self, batch_shape: torch.Size | tuple[int, ...], _instance: Any = None
               ) -> CodeGrid:
        """The same distribution with another batch shape."""
        top = None if self.top is None else self.top.expand(
            *batch_shape, *self.top.shape[len(self.batch_shape):])
        return CodeGrid(self.prior, batch_shape, self.level, top)

    def _context(self, lead: torch.Size) -> torch.Tensor | None:
        """The top codes flattened to ``[prod(lead), h', w']`` (None for a top or single grid)."""
        if self.top is None:
            return None
        grid = self.top.shape[len(self.batch_shape):]
        return self.top.expand(*lead, *grid).reshape(-1, *grid)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """log p(c) of the codes of ``value`` ``[..., D, h, w]``: ``[...]``."""
        codes = self.quantizer.codes_of(value, len(self.grid))
        lead = codes.shape[:-len(self.grid)]
        flat = codes.reshape(-1, *self.grid)
        lp = (self.prior.log_prob_top(flat) if self.level == "top"
              else self.prior.log_prob_codes(flat, self._context(lead)))
        return lp.reshape(lead)

    def sample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> torch.Tensor:
        """Codes drawn from the prior, as their vectors ``[*sample_shape, *batch, D, h, w]``."""
        lead = torch.Size(sample_shape) + self.batch_shape
        n = math.prod(lead)
        if self.level == "top":
            codes = self.prior.sample_top(max(1, n))[:n]
        else:
            context = self._context(lead)
            codes = self.prior.sample_codes(max(1, n), context)[:n]
        return self.quantizer.lookup(codes, len(self.grid)).reshape(*lead, *self.event_shape)


class CodePrior(Prior):
    """Base class of priors over a VQ-VAE's grid of codes (`vaekit.posteriors.VectorQuantized`):
    p(z) is a `CodeGrid`, a distribution over the codebook's vectors. Subclasses implement
    `log_prob_codes` and `sample_codes`, and for two levels (the VQ-VAE-2: p(c_top) p(c | c_top))
    `log_prob_top` and `sample_top`; `vaekit.VAE` binds the codebooks and the grids' sizes.

    Args:
        z_dim: D, the size of the code vectors.
        k: K, the number of codes (of each codebook).
        levels: 1, or 2: a prior over a top grid and a bottom grid given it.
    """

    def __init__(self, z_dim: int, k: int = 512, levels: int = 1) -> None:
        super().__init__(z_dim)
        if levels not in (1, 2):
            raise ConfigError(f"a prior over codes has 1 or 2 levels, got {levels!r}")
        self.k, self.levels = k, levels
        self.grid: tuple[int, ...] = ()
        self.top_grid: tuple[int, ...] = ()
        self._quantizers: list[nn.Module] = []  # not submodules: the posterior owns the codebooks
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)

    def bind_codebook(self, quantizer: nn.Module, grid: tuple[int, ...],
                      top: nn.Module | None = None, top_grid: tuple[int, ...] = ()) -> None:
        """Use the posterior's codebook (`vaekit.quantize.VectorQuantizer`) on grids ``grid``
        (and, for two levels, its top codebook on grids ``top_grid``)."""
        if (top is not None) != (self.levels == 2):
            raise ConfigError(f"this prior has {self.levels} level(s) of codes: bind "
                              f"{self.levels} codebook(s)")
        self._quantizers[:] = [quantizer] + ([top] if top is not None else [])
        self.grid, self.top_grid = tuple(grid), tuple(top_grid)

    @property
    def quantizer(self) -> nn.Module:
        """The bound (bottom) codebook."""
        if not self._quantizers:
            raise ConfigError("a prior over codes needs the VQ-VAE's codebook: build it inside "
                              "vaekit.VAE with posterior vq:K")
        return self._quantizers[0]

    @property
    def top_quantizer(self) -> nn.Module:
        """The bound top codebook of two levels."""
        if len(self._quantizers) < 2:
            raise ConfigError("this prior over codes has one level: it has no top codebook")
        return self._quantizers[1]

    def forward(self, n: int) -> dist.TorchDistribution:
        """See `Prior.forward`: a `CodeGrid` of batch shape ``[n]``; of two levels, the top
        grid's (the bottom's is `given`)."""
        return CodeGrid(self, (n,), "top" if self.levels == 2 else "bottom")

    def given(self, z_top: torch.Tensor) -> dist.TorchDistribution:
        """p(z | z_top) of two levels: the bottom grid's `CodeGrid` given the top grid's codes'
        vectors ``z_top`` ``[*batch, D, h', w']``."""
        top = self.top_quantizer.codes_of(z_top, len(self.top_grid))
        return CodeGrid(self, top.shape[:-len(self.top_grid)], "bottom", top)

    @torch.no_grad()
    def sample_levels(self, n: int, generator: torch.Generator | None = None
                      ) -> tuple[torch.Tensor, ...]:
        """``n`` code grids per level, bottom first, reproducible with ``generator`` (a seed
        drawn from it seeds them; one level: what `Prior.sample` draws, as codes)."""
        seed = int(torch.randint(2**62, (1,), generator=generator))
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            if self.levels == 1:
                return (self.sample_codes(n),)
            top = self.sample_top(n)
            return self.sample_codes(n, top), top

    def log_prob_codes(self, codes: torch.Tensor, top: torch.Tensor | None = None
                       ) -> torch.Tensor:
        """log p(c) of code grids ``[n, h, w]`` (of two levels, log p(c | c_top) given the top
        codes ``[n, h', w']``): ``[n]``."""
        raise NotImplementedError

    def sample_codes(self, n: int, top: torch.Tensor | None = None) -> torch.Tensor:
        """``n`` code grids ``[n, h, w]`` (of two levels, given the top codes ``top``) from the
        global random state."""
        raise NotImplementedError

    def log_prob_top(self, codes: torch.Tensor) -> torch.Tensor:
        """log p(c_top) of top code grids ``[n, h', w']`` of two levels: ``[n]``."""
        raise NotImplementedError

    def sample_top(self, n: int) -> torch.Tensor:
        """``n`` top code grids ``[n, h', w']`` of two levels from the global random state."""
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """See `Prior.config`."""
        return {"k": self.k, **({"levels": 2} if self.levels == 2 else {})}


class UniformCodes(CodePrior):
    """The VQ-VAE's prior while it trains: every code of every grid cell equally likely,
    log p(c) = -h w log K (the bound's constant "KL" term; each level's, for two)."""

    name = "uniform"

    def _uniform(self, codes: torch.Tensor) -> torch.Tensor:
        cells = math.prod(codes.shape[1:])
        return self._anchor.new_full(codes.shape[:1], -cells * math.log(self.k))

    def log_prob_codes(self, codes: torch.Tensor, top: torch.Tensor | None = None
                       ) -> torch.Tensor:
        """See `CodePrior.log_prob_codes`."""
        return self._uniform(codes)

    def sample_codes(self, n: int, top: torch.Tensor | None = None) -> torch.Tensor:
        """See `CodePrior.sample_codes`."""
        return torch.randint(self.k, (n, *self.grid)).to(self._anchor.device)

    def log_prob_top(self, codes: torch.Tensor) -> torch.Tensor:
        """See `CodePrior.log_prob_top`."""
        return self._uniform(codes)

    def sample_top(self, n: int) -> torch.Tensor:
        """See `CodePrior.sample_top`."""
        return torch.randint(self.k, (n, *self.top_grid)).to(self._anchor.device)


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


"""Likelihoods p(x|z): small modules that turn the decoder's output into a distribution over images.

    lik = get_likelihood("gaussian", scale=0.1)
    px = lik(decoder(z))            # a Pyro distribution with event_shape (C, H, W)
    pyro.sample("x", px, obs=x)

Add your own by subclassing `Likelihood` and decorating it with `register_likelihood("name")`;
it is then available by name in Python and on the command line (``--likelihood name``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

import pyro.distributions as dist
import torch
from torch import nn
from torch.distributions import constraints

from vaekit.errors import ConfigError, DataError

__all__ = [
    "Likelihood",
    "Bernoulli",
    "ContinuousBernoulli",
    "Gaussian",
    "Laplace",
    "DiscretizedLogistic",
    "LIKELIHOODS",
    "register_likelihood",
    "get_likelihood",
]

LIKELIHOODS: dict[str, type[Likelihood]] = {}
"""The registry: likelihood name -> class."""

_L = TypeVar("_L", bound=type["Likelihood"])


def register_likelihood(name: str) -> Callable[[_L], _L]:
    """Class decorator that adds a `Likelihood` subclass to the registry under ``name``."""

    def add(cls: _L) -> _L:
        cls.name = name
        LIKELIHOODS[name] = cls
        return cls

    return add


def get_likelihood(spec: str | Likelihood, **kwargs: Any) -> Likelihood:
    """Build a likelihood from its registered name (or return ``spec`` if it already is one).

    Args:
        spec: A registered name such as ``"bernoulli"``, or a `Likelihood` instance.
        **kwargs: Constructor arguments, e.g. ``scale=0.1`` for ``"gaussian"``.

    Raises:
        ConfigError: for an unknown name or arguments the likelihood does not take.
    """
    if isinstance(spec, Likelihood):
        if kwargs:
            raise ConfigError("pass likelihood options to the constructor, not with an instance")
        return spec
    if spec not in LIKELIHOODS:
        known = ", ".join(sorted(LIKELIHOODS))
        raise ConfigError(f"unknown likelihood {spec!r}; choose one of: {known}")
    try:
        return LIKELIHOODS[spec](**kwargs)
    except TypeError as e:
        raise ConfigError(f"likelihood {spec!r} does not take these options: {e}") from None


def _check_unit_interval(lik: Likelihood, x: torch.Tensor) -> None:
    """`DataError` unless the images are finite and lie in [0, 1]."""
    Likelihood.check(lik, x)
    lo, hi = float(x.min()), float(x.max())
    if lo < 0 or hi > 1:
        raise DataError(
            f"images lie in [{lo:g}, {hi:g}] but the {lik.name} likelihood needs pixels in "
            "[0, 1]; rescale them (uint8 images are divided by 255 for you)"
        )


class Likelihood(nn.Module):
    """Base class: maps decoder output ``[batch, k*C, H, W]`` to a distribution over images.

    Subclasses implement `forward` and may override `targets` (how [0, 1] images become
    observations), `mean` (the image shown in pictures), `check` and `config`.
    """

    name: ClassVar[str] = ""
    params_per_channel: int = 1
    """How many decoder output channels this likelihood needs per image channel."""
    kind: ClassVar[str] = "continuous"
    """What its numbers are: ``"binary"`` (a probability of binary images), ``"continuous"`` (a
    density of [0, 1] intensities; bits/dim via the 1/255 scaling) or ``"discrete"`` (a
    probability of the 256 levels of 8-bit images; bits/dim = NLL / (D ln 2)). Only numbers of
    the same kind, on the same data, compare."""

    def forward(self, out: torch.Tensor) -> dist.TorchDistribution:
        """Distribution over images, with ``event_shape == (C, H, W)``."""
        raise NotImplementedError

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        """Mean image in [0, 1] for pictures."""
        return self(out).mean.clamp(0, 1)

    def targets(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Observations from images in [0, 1]; the identity unless the likelihood needs otherwise."""
        return x

    def check(self, x: torch.Tensor) -> None:
        """Raise `DataError` if images ``x`` (already scaled to [0, 1]) are not valid inputs."""
        if not torch.isfinite(x).all():
            raise DataError("images contain NaN or infinite values; clean the data set")

    def config(self) -> dict[str, Any]:
        """Constructor arguments that rebuild this likelihood."""
        return {}

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.config().items())


@register_likelihood("bernoulli")
class Bernoulli(Likelihood):
    """Bernoulli pixels parameterised by logits: for binary (or binarized) images.

    Args:
        binarize: If True (default), grayscale training images are binarized afresh each batch
            (``x ~ Bernoulli(pixel)``, dynamic binarization) and the test set once with a fixed
            seed. If False, grayscale intensities are used as targets, as the seed notebook's
            ``BCELoss`` did: the "log-likelihood" is then binary cross-entropy, which is not a
            normalised density on [0, 1], and its values are not comparable with published ones.
    """

    kind = "binary"

    def __init__(self, binarize: bool = True) -> None:
        super().__init__()
        self.binarize = binarize

    def forward(self, out: torch.Tensor) -> dist.TorchDistribution:
        """See `Likelihood.forward`."""
        # With grayscale targets the values are not in Bernoulli's support: skip validation.
        validate = None if self.binarize else False
        return dist.Bernoulli(logits=out, validate_args=validate).to_event(3)

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        """See `Likelihood.mean`."""
        return torch.sigmoid(out)

    def targets(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """See `Likelihood.targets`: a Bernoulli draw per pixel when ``binarize`` is set."""
        return torch.bernoulli(x, generator=generator) if self.binarize else x

    def check(self, x: torch.Tensor) -> None:
        """See `Likelihood.check`: pixels must lie in [0, 1]."""
        _check_unit_interval(self, x)

    def config(self) -> dict[str, Any]:
        """See `Likelihood.config`."""
        return {"binarize": self.binarize}


class _LocScale(Likelihood):
    """Independent location-scale pixels around the decoder output, on [0, 1] intensities.

    ``scale_mode``: ``"fixed"`` (``scale``), ``"global"`` (one learned scale), ``"channel"``
    (one learned scale per image channel; give ``channels``) or ``"pixel"`` (predicted by the
    decoder, which then outputs a location and a scale per pixel; scale =
    softplus(output) + `MIN_SCALE`).
    """

    family: ClassVar[Any] = None
    MIN_SCALE: ClassVar[float] = 1e-3

    def __init__(self, scale: float = 0.1, learn_scale: bool = False,
                 scale_mode: str | None = None, channels: int = 1) -> None:
        super().__init__()
        if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
            raise ConfigError(f"{self.name} scale must be a positive number, got {scale!r}")
        mode = scale_mode or ("global" if learn_scale else "fixed")
        if mode not in ("fixed", "global", "channel", "pixel"):
            raise ConfigError(f"scale_mode must be fixed, global, channel or pixel, got {mode!r}")
        self.scale_mode, self.channels, self._init_scale = mode, channels, float(scale)
        self.learn_scale = mode != "fixed"
        shape = (channels, 1, 1) if mode == "channel" else ()
        log_scale = torch.full(shape, math.log(scale))
        if mode in ("global", "channel"):
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale)
        if mode == "pixel":
            self.params_per_channel = 2
            # softplus(raw) + MIN_SCALE = scale at raw = bias: start near the given scale
            self._bias = math.log(math.expm1(max(scale - self.MIN_SCALE, 1e-6)))

    @property
    def scale(self) -> torch.Tensor:
        """The current scale (fixed, global or per channel; not for ``"pixel"``)."""
        return self.log_scale.exp()

    def _loc_scale(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.scale_mode == "pixel":
            loc, raw = out.chunk(2, dim=-3)
            return loc, nn.functional.softplus(raw + self._bias) + self.MIN_SCALE
        return out, self.scale.expand_as(out)

    def forward(self, out: torch.Tensor) -> dist.TorchDistribution:
        """See `Likelihood.forward`."""
        loc, scale = self._loc_scale(out)
        return self.family(loc, scale).to_event(3)

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        """See `Likelihood.mean`."""
        return self._loc_scale(out)[0].clamp(0, 1)

    def config(self) -> dict[str, Any]:
        """See `Likelihood.config`."""
        cfg: dict[str, Any] = {"scale": self._init_scale, "learn_scale": self.learn_scale}
        if self.scale_mode not in ("fixed", "global"):
            cfg["scale_mode"] = self.scale_mode
        if self.channels != 1:
            cfg["channels"] = self.channels
        return cfg


@register_likelihood("gaussian")
class Gaussian(_LocScale):
    """Independent Normal pixels around the decoder's output, on [0, 1] intensities.

    Args:
        scale: The observation standard deviation (the initial value if learned).
        learn_scale: Learn one global scale (``scale_mode="global"``).
        scale_mode: ``"fixed"``, ``"global"``, ``"channel"`` or ``"pixel"`` (see below).
        channels: Image channels, for ``scale_mode="channel"``.

    ``"pixel"`` has the decoder predict a scale per pixel (softplus, at least 1e-3).
    """

    family = dist.Normal


@register_likelihood("laplace")
class Laplace(_LocScale):
    """Independent Laplace pixels around the decoder's output, on [0, 1] intensities.

    Heavier tails than the Gaussian: its NLL is an L1 reconstruction error, scaled. Arguments as
    for `Gaussian`.
    """

    family = dist.Laplace


@register_likelihood("continuous-bernoulli")
class ContinuousBernoulli(Likelihood):
    """The continuous Bernoulli (Loaiza-Ganem & Cunningham 2019) on [0, 1] intensities.

    The proper density for grayscale pixels that the seed notebook's BCE was not:
    ``p(x|λ) = C(λ) λ^x (1-λ)^(1-x)`` with the normaliser ``C(λ)`` that makes it integrate to 1
    on [0, 1]. The decoder outputs logits of λ. Its mean (the image shown) is not λ but
    ``E[x] = λ/(2λ-1) + 1/(2 artanh(1-2λ))``.
    """

    def forward(self, out: torch.Tensor) -> dist.TorchDistribution:
        """See `Likelihood.forward`."""
        return dist.ContinuousBernoulli(logits=out).to_event(3)

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        """See `Likelihood.mean`."""
        return torch.distributions.ContinuousBernoulli(logits=out).mean.clamp(0, 1)

    def check(self, x: torch.Tensor) -> None:
        """See `Likelihood.check`: pixels must lie in [0, 1]."""
        _check_unit_interval(self, x)


class _EightBit(constraints.Constraint):
    """The 256 values ``k / 255`` of 8-bit images scaled to [0, 1]."""

    is_discrete = True

    def check(self, value: torch.Tensor) -> torch.Tensor:
        k = value * 255
        return (value >= 0) & (value <= 1) & ((k - k.round()).abs() < 1e-3)


class _DiscretizedLogisticDist(dist.TorchDistribution):
    """One logistic per pixel, integrated over the pixel's bin of width 1/255."""

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = _EightBit()
    has_rsample = False

    def __init__(self, loc: torch.Tensor, scale: torch.Tensor, validate_args: bool | None = None):
        self.loc, self.scale = torch.broadcast_tensors(loc, scale)
        super().__init__(self.loc.shape, validate_args=validate_args)

    def expand(self, batch_shape: Any, _instance: Any = None) -> _DiscretizedLogisticDist:
        return _DiscretizedLogisticDist(self.loc.expand(batch_shape), self.scale.expand(batch_shape))

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        half = 0.5 / 255
        inv_s = 1.0 / self.scale
        centered = value - self.loc
        plus, minus = inv_s * (centered + half), inv_s * (centered - half)
        log_cdf_plus = -nn.functional.softplus(-plus)  # log sigmoid(plus), for the 0 bin
        log_sf_minus = -nn.functional.softplus(minus)  # log (1 - sigmoid(minus)), for the 1 bin
        cdf_delta = torch.sigmoid(plus) - torch.sigmoid(minus)
        mid = inv_s * centered  # the density at the bin centre times its width, if delta underflows
        log_mid = mid - self.scale.log() - 2 * nn.functional.softplus(mid) + math.log(1 / 255)
        inner = torch.where(cdf_delta > 1e-5, cdf_delta.clamp_min(1e-12).log(), log_mid)
        return torch.where(value < half, log_cdf_plus,
                           torch.where(value > 1 - half, log_sf_minus, inner))

    @property
    def mean(self) -> torch.Tensor:
        return self.loc.clamp(0, 1)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:  # noqa: B008
        u = torch.rand(self._extended_shape(sample_shape), device=self.loc.device).clamp(1e-6, 1 - 1e-6)
        x = self.loc + self.scale * (u.log() - (-u).log1p())
        return (x.clamp(0, 1) * 255).round() / 255


@register_likelihood("discretized-logistic")
class DiscretizedLogistic(Likelihood):
    """A logistic per pixel, discretized to the 256 levels of 8-bit images (as in PixelCNN++,
    without the mixture).

    Pixel values ``k/255`` own the bin ``[k/255 - 1/510, k/255 + 1/510]``; the bins of 0 and 1
    extend to -∞ and +∞, so the 256 probabilities sum to 1. The decoder predicts a location and
    a scale per pixel (softplus, at least 1e-3). The NLL is in nats over discrete levels, so
    bits/dim = NLL / (D ln 2) with no change of variables.
    """

    kind = "discrete"
    MIN_SCALE: ClassVar[float] = 1e-3

    def __init__(self) -> None:
        super().__init__()
        self.params_per_channel = 2

    def _loc_scale(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, raw = out.chunk(2, dim=-3)
        return loc, nn.functional.softplus(raw - 3.0) + self.MIN_SCALE  # starts near 0.05

    def forward(self, out: torch.Tensor) -> dist.TorchDistribution:
        """See `Likelihood.forward`."""
        return _DiscretizedLogisticDist(*self._loc_scale(out)).to_event(3)

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        """See `Likelihood.mean`."""
        return self._loc_scale(out)[0].clamp(0, 1)

    def targets(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """See `Likelihood.targets`: snapped to the 256 levels."""
        return (x * 255).round() / 255

    def check(self, x: torch.Tensor) -> None:
        """See `Likelihood.check`: pixels must lie in [0, 1]."""
        _check_unit_interval(self, x)

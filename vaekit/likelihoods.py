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

from vaekit.errors import ConfigError, DataError

__all__ = [
    "Likelihood",
    "Bernoulli",
    "Gaussian",
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


class Likelihood(nn.Module):
    """Base class: maps decoder output ``[batch, k*C, H, W]`` to a distribution over images.

    Subclasses implement `forward` and may override `targets` (how [0, 1] images become
    observations), `mean` (the image shown in pictures), `check` and `config`.
    """

    name: ClassVar[str] = ""
    params_per_channel: ClassVar[int] = 1
    """How many decoder output channels this likelihood needs per image channel."""

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
        super().check(x)
        lo, hi = float(x.min()), float(x.max())
        if lo < 0 or hi > 1:
            raise DataError(
                f"images lie in [{lo:g}, {hi:g}] but the Bernoulli likelihood needs pixels in "
                "[0, 1]; rescale them (uint8 images are divided by 255 for you)"
            )

    def config(self) -> dict[str, Any]:
        """See `Likelihood.config`."""
        return {"binarize": self.binarize}


@register_likelihood("gaussian")
class Gaussian(Likelihood):
    """Independent Normal pixels around the decoder's output, on [0, 1] intensities.

    Args:
        scale: The observation standard deviation (the initial value if learned).
        learn_scale: Learn one global scale (as a parameter of this module) instead of fixing it.
    """

    def __init__(self, scale: float = 0.1, learn_scale: bool = False) -> None:
        super().__init__()
        if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
            raise ConfigError(f"Gaussian scale must be a positive number, got {scale!r}")
        self.learn_scale = learn_scale
        log_scale = torch.tensor(math.log(scale))
        if learn_scale:
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale)
        self._init_scale = float(scale)

    @property
    def scale(self) -> torch.Tensor:
        """The current observation standard deviation."""
        return self.log_scale.exp()

    def forward(self, out: torch.Tensor) -> dist.TorchDistribution:
        """See `Likelihood.forward`."""
        return dist.Normal(out, self.scale.expand_as(out)).to_event(3)

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        """See `Likelihood.mean`."""
        return out.clamp(0, 1)

    def config(self) -> dict[str, Any]:
        """See `Likelihood.config`."""
        return {"scale": self._init_scale, "learn_scale": self.learn_scale}

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

from vaekit.data import to_unit
from vaekit.errors import ConfigError, DataError

__all__ = [
    "Likelihood",
    "KINDS",
    "Bernoulli",
    "ContinuousBernoulli",
    "Gaussian",
    "Laplace",
    "DiscretizedLogistic",
    "DiscriminatorFeatures",
    "FeatureNormal",
    "call_detached",
    "LIKELIHOODS",
    "register_likelihood",
    "get_likelihood",
    "TEST_BINARIZATION_SEED",
    "test_observations",
]

TEST_BINARIZATION_SEED = 0
"""The test set's observations (e.g. its binarization) are drawn once with this seed, so test
numbers are comparable across runs and training seeds."""

LIKELIHOODS: dict[str, type[Likelihood]] = {}
"""The registry: likelihood name -> class."""

_L = TypeVar("_L", bound=type["Likelihood"])

KINDS = ("binary", "continuous", "discrete", "features")
"""The values of `Likelihood.kind`."""


def register_likelihood(name: str) -> Callable[[_L], _L]:
    """Class decorator that adds a `Likelihood` subclass to the registry under ``name``."""

    def add(cls: _L) -> _L:
        if cls.kind not in KINDS:
            raise ConfigError(f"likelihood {name!r} has kind {cls.kind!r}; use one of: {', '.join(KINDS)}")
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
    """How many decoder output channels this likelihood needs per image channel (k).

    The decoder then outputs ``k*C`` channels, laid out parameter by parameter: channels
    ``[j*C, (j+1)*C)`` hold parameter ``j`` of image channels ``0..C-1`` (for RGB with a location
    and a scale: ``loc_R, loc_G, loc_B, scale_R, scale_G, scale_B``), i.e.
    ``out.chunk(k, dim=-3)``. vaekit's likelihoods read them so; the decoder is blind to it.
    """
    kind: ClassVar[str] = "continuous"
    """What its numbers are, for evaluation code: which compare, and how to get bits/dim.

    - ``"binary"`` (`Bernoulli`): a probability of binarized images; nats per image compare with
      published binarized-MNIST figures; no bits/dim of 8-bit data.
    - ``"continuous"`` (`Gaussian`, `Laplace`, `ContinuousBernoulli`): a density of intensities
      scaled to [0, 1] (nats can be negative); bits/dim of the 8-bit values through the 1/255
      change of variables, ``(NLL / D + ln 255) / ln 2`` (`vaekit.evaluation.bits_per_dim`).
    - ``"discrete"`` (`DiscretizedLogistic`): a probability of the 256 levels of 8-bit images;
      bits/dim = ``NLL / (D ln 2)``, comparable with published figures for 8-bit images.

    - ``"features"`` (`DiscriminatorFeatures`, the VAE-GAN's): a density of a discriminator's
      features of the image, not of the image: no -log p(x), no bits/dim.

    Only numbers of the same kind, on the same data, compare. The default, ``"continuous"``,
    suits a density on [0, 1]; set it on your own likelihood otherwise.
    """

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


_SCALE_MODES = ("fixed", "global", "channel", "pixel")


class _LocScale(Likelihood):
    """Independent location-scale pixels around the decoder output: the machinery of `Gaussian`,
    `Laplace` and `DiscretizedLogistic`.

    The scale is chosen by ``scale_mode``: ``"fixed"`` (``scale``), ``"global"`` (one learned
    scale), ``"channel"`` (one learned scale per image channel) or ``"pixel"`` (predicted by the
    decoder, which then outputs ``2 * C`` channels: the C locations, then C raw scales, mapped to
    ``softplus(raw + b) + MIN_SCALE`` with ``b`` chosen so that ``raw = 0`` gives ``scale``).
    Learned scales are ``exp(log_scale)`` of a parameter, without a floor.
    """

    family: ClassVar[Any] = None
    """The distribution class, called as ``family(loc, scale)``."""
    default_mode: ClassVar[str] = "fixed"
    """The scale mode when neither ``scale_mode`` nor ``learn_scale`` is given."""
    MIN_SCALE: ClassVar[float] = 1e-3
    """Floor of a predicted (``"pixel"``) scale."""

    def __init__(self, scale: float = 0.1, learn_scale: bool = False,
                 scale_mode: str | None = None, channels: int = 1) -> None:
        super().__init__()
        if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
            raise ConfigError(f"{self.name} scale must be a positive number, got {scale!r}")
        if scale_mode is not None and scale_mode not in _SCALE_MODES:
            raise ConfigError(f"scale_mode must be one of {', '.join(_SCALE_MODES)}, got {scale_mode!r}")
        if scale_mode == "fixed" and learn_scale:
            raise ConfigError("learn_scale=True contradicts scale_mode='fixed'; give one of them")
        if not (isinstance(channels, int) and channels >= 1):
            raise ConfigError(f"channels must be an integer >= 1, got {channels!r}")
        mode = scale_mode or ("global" if learn_scale else self.default_mode)
        self.scale_mode, self.channels, self._init_scale = mode, channels, float(scale)
        self.learn_scale = mode != "fixed"
        log_scale = torch.full((channels, 1, 1) if mode == "channel" else (), math.log(scale))
        if mode in ("global", "channel"):
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale)
        if mode == "pixel":
            self.params_per_channel = 2
            # softplus(0 + bias) + MIN_SCALE = scale: a decoder that starts near 0 starts at `scale`
            self._bias = math.log(math.expm1(max(scale - self.MIN_SCALE, 1e-6)))

    @property
    def scale(self) -> torch.Tensor:
        """The current scale: a scalar, or ``[channels, 1, 1]`` (not used by ``"pixel"``)."""
        return self.log_scale.exp()

    def _loc_scale(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.scale_mode == "pixel":
            loc, raw = out.chunk(2, dim=-3)
            return loc, nn.functional.softplus(raw + self._bias) + self.MIN_SCALE
        if self.scale_mode == "channel" and out.shape[-3] != self.channels:
            raise ConfigError(f"this {self.name} likelihood has one scale per channel for "
                              f"{self.channels} channel(s), but the images have {out.shape[-3]}; "
                              f"build it with channels={out.shape[-3]}")
        return out, self.scale.expand_as(out)

    def forward(self, out: torch.Tensor) -> dist.TorchDistribution:
        """See `Likelihood.forward`."""
        loc, scale = self._loc_scale(out)
        return self.family(loc, scale).to_event(3)

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        """See `Likelihood.mean`: the location, clamped to [0, 1]."""
        return self._loc_scale(out)[0].clamp(0, 1)

    def check(self, x: torch.Tensor) -> None:
        """See `Likelihood.check`: finite, and as many channels as the per-channel scales."""
        super().check(x)
        if self.scale_mode == "channel" and x.dim() >= 3 and x.shape[-3] != self.channels:
            raise DataError(f"the images have {x.shape[-3]} channel(s) but this {self.name} "
                            f"likelihood has scales for {self.channels}; build it with "
                            f"channels={x.shape[-3]}")

    def config(self) -> dict[str, Any]:
        """See `Likelihood.config`: ``scale`` and ``learn_scale``, then what they do not imply."""
        cfg: dict[str, Any] = {"scale": self._init_scale, "learn_scale": self.learn_scale}
        if self.scale_mode != ("global" if self.learn_scale else self.default_mode):
            cfg["scale_mode"] = self.scale_mode
        if self.channels != 1:
            cfg["channels"] = self.channels
        return cfg


@register_likelihood("gaussian")
class Gaussian(_LocScale):
    """Independent Normal pixels around the decoder's output, on [0, 1] intensities.

    Assumes continuous intensities: a density on the real line (mass outside [0, 1] is not
    renormalised), so its nats compare only with other densities on the same [0, 1] scale.

    Args:
        scale: The observation standard deviation (the initial value if learned or predicted).
        learn_scale: Learn one global scale (the same as ``scale_mode="global"``).
        scale_mode: ``"fixed"`` (default), ``"global"``, ``"channel"`` (one learned scale per
            image channel) or ``"pixel"`` (the decoder predicts a scale per pixel, at least
            `MIN_SCALE` = 1e-3 ≈ the standard deviation 1/(255√12) of the rounding to 8 bits,
            so that the density cannot grow without bound on constant pixels, such as MNIST's
            black background).
        channels: Image channels, for ``scale_mode="channel"``.

    Raises:
        ConfigError: for a scale that is not positive, an unknown ``scale_mode``,
            ``learn_scale=True`` with ``scale_mode="fixed"`` or ``channels < 1``.
    """

    kind = "continuous"
    family = dist.Normal


@register_likelihood("laplace")
class Laplace(_LocScale):
    """Independent Laplace pixels around the decoder's output, on [0, 1] intensities.

    Heavier tails than the Gaussian: its NLL is an L1 reconstruction error, scaled. Assumes
    continuous intensities, like `Gaussian`, and takes the same arguments (``scale`` is the
    Laplace scale b, the standard deviation is b√2).
    """

    kind = "continuous"
    family = dist.Laplace


# -- continuous Bernoulli --------------------------------------------------------------------------
def _cb_log_normalizer(eta: torch.Tensor) -> torch.Tensor:
    """``A(η) = log ∫_0^1 exp(η x) dx = log(expm1(η) / η)``, stable for every η (Taylor near 0)."""
    small = eta.abs() < 1e-3
    safe = torch.where(small, torch.ones_like(eta), eta)
    exact = safe.clamp(min=0) + torch.log(-torch.expm1(-safe.abs())) - safe.abs().log()
    return torch.where(small, eta / 2 + eta**2 / 24 - eta**4 / 2880, exact)


def _cb_mean(eta: torch.Tensor) -> torch.Tensor:
    """``A'(η) = 1 / (1 - exp(-η)) - 1 / η``, the mean, stable for every η (Taylor near 0)."""
    small = eta.abs() < 0.1
    safe = torch.where(small, torch.ones_like(eta), eta)
    exact = 1 / -torch.expm1(-safe) - 1 / safe
    return torch.where(small, 0.5 + eta / 12 - eta**3 / 720, exact)


class _ContinuousBernoulliLogits(dist.ContinuousBernoulli):
    """Pyro's `ContinuousBernoulli` with ``log_prob`` and ``mean`` computed from the logits.

    torch computes the normaliser from ``probs = sigmoid(logits)`` clamped to ``[eps, 1 - eps]``:
    in float32, for ``|logits| > 16`` the density then no longer integrates to 1 (0.8 at 20, 0.2
    at 80) and the mean stops at 0.063 / 0.937. Here ``log p(x) = η x - A(η)`` with η the logits
    and `_cb_log_normalizer` (the exponential-family form), which holds for every η.
    Sampling is torch's (inverse CDF from the clamped probs).
    """

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        eta, value = torch.distributions.utils.broadcast_all(self.logits, value)
        return value * eta - _cb_log_normalizer(eta)

    @property
    def mean(self) -> torch.Tensor:
        return _cb_mean(self.logits)


@register_likelihood("continuous-bernoulli")
class ContinuousBernoulli(Likelihood):
    """The continuous Bernoulli (Loaiza-Ganem & Cunningham 2019) on [0, 1] intensities.

    Assumes continuous intensities in [0, 1] (grayscale pixels as they are, not binarized): the
    normalised density that the seed notebook's BCE was not,
    ``p(x|λ) = C(λ) λ^x (1-λ)^(1-x)`` with ``C(λ) = 2 artanh(1 - 2λ) / (1 - 2λ)`` (2 at λ = 1/2).
    The decoder outputs the logits η of λ; the density is computed as ``exp(η x - A(η))``,
    ``A(η) = log((e^η - 1) / η)``, which stays normalised for any logits (torch's own
    implementation does not beyond ``|η| ≈ 16`` in float32). Its mean, the image shown, is not λ
    but ``1 / (1 - e^(-η)) - 1 / η``. On pixels exactly 0 or 1 the density grows without bound as
    ``|η|`` grows, but only like ``log |η|``.
    """

    kind = "continuous"

    def forward(self, out: torch.Tensor) -> dist.TorchDistribution:
        """See `Likelihood.forward`."""
        return _ContinuousBernoulliLogits(logits=out).to_event(3)

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        """See `Likelihood.mean`: the distribution's mean (not λ)."""
        return _cb_mean(out).clamp(0, 1)

    def check(self, x: torch.Tensor) -> None:
        """See `Likelihood.check`: pixels must lie in [0, 1]."""
        _check_unit_interval(self, x)


# -- discretized logistic -------------------------------------------------------------------------
_LEVELS = 256  # of 8-bit images; level k is k / 255 on vaekit's [0, 1] scale (data.to_unit)


class _EightBit(constraints.Constraint):
    """The 256 values ``k / 255`` of 8-bit images scaled to [0, 1]."""

    is_discrete = True
    event_dim = 0

    def check(self, value: torch.Tensor) -> torch.Tensor:
        k = value * (_LEVELS - 1)
        return (value >= 0) & (value <= 1) & ((k - k.round()).abs() < 1e-3)


def _log1mexp(d: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(-d))`` for ``d > 0``, accurate for small and large d (Mächler 2012)."""
    return torch.where(d < math.log(2), torch.log(-torch.expm1(-d)), torch.log1p(-torch.exp(-d)))


class _DiscretizedLogisticDist(dist.TorchDistribution):
    """One logistic per pixel, integrated over the pixel's bin: a distribution over ``k / 255``.

    Level ``k`` (value ``k / 255``) owns ``[(k - ½) / 255, (k + ½) / 255]``; level 0 owns
    ``(-∞, ½ / 255]`` and level 255 ``[254.5 / 255, ∞)``, so the 256 probabilities sum to 1.
    An interior bin's probability ``σ(a) - σ(b)``, with ``a, b = (x ± ½/255 - loc) / scale``, is
    computed as ``log σ(a) + log σ(-b) + log(1 - exp(b - a))``: an identity, not an
    approximation, with no cancellation, so it stays accurate where the CDF difference underflows
    and PixelCNN++ falls back to the density at the bin centre (that fallback is not needed).

    Args:
        loc: Location of the logistic (on the [0, 1] scale), any shape.
        scale: Its scale, positive, broadcastable with ``loc``.
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = _EightBit()
    has_rsample = False

    def __init__(self, loc: torch.Tensor, scale: torch.Tensor, validate_args: bool | None = None):
        self.loc, self.scale = torch.broadcast_tensors(loc, scale)
        super().__init__(self.loc.shape, validate_args=validate_args)

    def expand(self, batch_shape: Any, _instance: Any = None) -> _DiscretizedLogisticDist:
        batch_shape = torch.Size(batch_shape)
        return _DiscretizedLogisticDist(self.loc.expand(batch_shape), self.scale.expand(batch_shape),
                                        validate_args=self._validate_args)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """Log-probability, in nats, of the levels ``value`` (multiples of 1/255 in [0, 1])."""
        if self._validate_args:
            self._validate_sample(value)
        half = 0.5 / (_LEVELS - 1)
        inv_s = 1 / self.scale
        a = (value - self.loc + half) * inv_s  # upper edge of the bin, standardised
        b = (value - self.loc - half) * inv_s  # lower edge
        log_cdf_a = nn.functional.logsigmoid(a)  # level 0: P(X <= a)
        log_sf_b = nn.functional.logsigmoid(-b)  # level 255: P(X > b)
        inner = log_cdf_a + log_sf_b + _log1mexp(2 * half * inv_s)  # exactly log(σ(a) - σ(b))
        return torch.where(value < half, log_cdf_a, torch.where(value > 1 - half, log_sf_b, inner))

    @property
    def mean(self) -> torch.Tensor:
        """``E[x] = Σ_{k=1}^{255} P(level >= k) / 255``, exact (255 sigmoids per pixel)."""
        total = torch.zeros_like(self.loc)
        for k in range(1, _LEVELS):
            total = total + torch.sigmoid((self.loc - (k - 0.5) / (_LEVELS - 1)) / self.scale)
        return total / (_LEVELS - 1)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:  # noqa: B008
        """Levels drawn by rounding logistic draws clamped to [0, 1] (exact for these bins)."""
        shape = self._extended_shape(sample_shape)
        finfo = torch.finfo(self.loc.dtype)
        with torch.no_grad():
            u = torch.rand(shape, dtype=self.loc.dtype, device=self.loc.device)
            u = u.clamp(finfo.tiny, 1 - finfo.eps)
            x = self.loc + self.scale * (u.log() - (-u).log1p())
            return (x.clamp(0, 1) * (_LEVELS - 1)).round() / (_LEVELS - 1)


@register_likelihood("discretized-logistic")
class DiscretizedLogistic(_LocScale):
    """A logistic per pixel, discretized to the 256 levels of 8-bit images (PixelCNN++ and IAF,
    without the mixture).

    Assumes 8-bit pixels: level ``k`` is the value ``k / 255`` on the [0, 1] scale of
    `vaekit.data.to_unit` and owns the bin of width 1/255 around it,
    ``[(k - ½) / 255, (k + ½) / 255]``; the bins of 0 and 255 are open to -∞ and +∞, so the 256
    probabilities sum to 1 (see `_DiscretizedLogisticDist` for the stable computation). Other
    [0, 1] values are rounded to the nearest level by `targets`. The decoder predicts the
    location; the scale is a learned one per channel or predicted per pixel (``"fixed"`` and
    ``"global"`` work too).

    It is a probability, not a density: the NLL is in nats over discrete levels, so
    bits/dim = NLL / (D ln 2), with no change of variables, comparable with published figures
    for 8-bit images.

    Args:
        scale: The logistic scale (the initial value if learned or predicted); the standard
            deviation is ``scale · π / √3``.
        learn_scale: Learn one global scale (the same as ``scale_mode="global"``).
        scale_mode: ``"pixel"`` (default: predicted by the decoder, as in PixelCNN++, at least
            `MIN_SCALE` = e⁻⁷ / 2, PixelCNN++'s floor ``log s >= -7`` on [-1, 1] data moved to
            [0, 1]), ``"channel"`` (one learned scale per image channel, as in IAF), ``"global"``
            or ``"fixed"``.
        channels: Image channels, for ``scale_mode="channel"``.
    """

    kind = "discrete"
    levels: ClassVar[int] = _LEVELS
    """The NLL is in nats over these levels: bits/dim = NLL / (D ln 2)."""
    family = _DiscretizedLogisticDist
    default_mode = "pixel"
    MIN_SCALE = math.exp(-7) / 2

    def __init__(self, scale: float = 0.05, learn_scale: bool = False,
                 scale_mode: str | None = None, channels: int = 1) -> None:
        super().__init__(scale, learn_scale, scale_mode, channels)

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        """See `Likelihood.mean`: the distribution's mean over the 256 levels."""
        return self(out).mean

    def targets(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """See `Likelihood.targets`: [0, 1] images rounded to the nearest of the 256 levels."""
        return (x * (_LEVELS - 1)).round() / (_LEVELS - 1)

    def check(self, x: torch.Tensor) -> None:
        """See `Likelihood.check`: pixels must lie in [0, 1]."""
        super().check(x)
        _check_unit_interval(self, x)


class FeatureNormal(dist.TorchDistribution):
    """``N(f(x) | f(images), I)`` as a distribution over images x: the log-density of an image is
    that of its features ``f(x)`` under a unit Normal centred on the features of ``images``.

    It is not a density on pixels (no change of variables is taken), and it has no pixel noise:
    `sample` returns ``images`` themselves.

    Args:
        images: The decoder's images ``[..., C, H, W]``, the batch shape in front.
        features: Maps ``[N, C, H, W]`` images to ``[N, F]`` features.
    """

    arg_constraints: dict[str, constraints.Constraint] = {}
    support = constraints.independent(constraints.unit_interval, 3)

    def __init__(self, images: torch.Tensor, features: Callable[[torch.Tensor], torch.Tensor],
                 validate_args: bool | None = None) -> None:
        self.images, self.features = images, features
        super().__init__(images.shape[:-3], images.shape[-3:], validate_args=False)

    def expand(self, batch_shape: Any, _instance: Any = None) -> FeatureNormal:
        """The same with ``images`` broadcast to ``batch_shape``."""
        shape = torch.Size(batch_shape) + self.event_shape
        return FeatureNormal(self.images.expand(shape), self.features)

    def _f(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x.reshape(-1, *x.shape[-3:])).reshape(*x.shape[:-3], -1)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """``log N(f(value) | f(images), I)``, summed over the features: ``[batch...]``."""
        return dist.Normal(self._f(self.images), 1.0).log_prob(self._f(value)).sum(-1)

    @property
    def mean(self) -> torch.Tensor:
        """The decoder's images."""
        return self.images

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:  # noqa: B008
        """The decoder's images (there is no pixel noise to draw)."""
        return self.images.detach().expand(torch.Size(sample_shape) + self.images.shape)


def call_detached(module: nn.Module, *args: Any, **kwargs: Any) -> torch.Tensor:
    """``module(*args, **kwargs)`` with its weights detached: gradients reach the inputs only."""
    weights = {name: w.detach() for name, w in module.named_parameters()}
    return torch.func.functional_call(module, weights, args, kwargs)


class _Shared:
    """A reference that is not a submodule and that deep copies (the weight average's copy of
    the VAE) share rather than copy."""

    def __init__(self, obj: nn.Module) -> None:
        self.obj = obj

    def __deepcopy__(self, memo: dict[int, Any]) -> _Shared:
        return self


@register_likelihood("discriminator")
class DiscriminatorFeatures(Likelihood):
    """The VAE-GAN's p(x|z) (Larsen et al. 2016): ``N(D_l(x) | D_l(x~), I)``, a unit Gaussian on
    the features of hidden layer l of a discriminator D, at the decoder's image ``x~ =
    sigmoid(decoder(z))``.

    The discriminator is not part of the VAE: the VAE-GAN objective
    (`vaekit.adversarial.VAEGAN`, what ``objective="elbo"`` trains with this likelihood) owns
    it, trains it against the decoder and `bind`s it here. The features are computed with D's
    weights detached, so the VAE's loss never moves D. Targets are the grayscale images in
    [0, 1] as they are (the discriminator compares them with the decoder's images). -log p(x)
    is not defined: the density is of features, not pixels (``kind = "features"``).

    Args:
        feature_layer: The hidden block l of the discriminator (1-based); default its last
            (Larsen et al.: the third of four layers, the one before the logit).
    """

    kind = "features"

    def __init__(self, feature_layer: int | None = None) -> None:
        super().__init__()
        if feature_layer is not None and not (isinstance(feature_layer, int) and feature_layer >= 1):
            raise ConfigError(f"feature_layer must be an integer >= 1, got {feature_layer!r}")
        self.feature_layer = feature_layer
        self._disc: _Shared | None = None

    def bind(self, discriminator: nn.Module) -> None:
        """Measure reconstructions in ``discriminator``'s features (it must take ``layer=``
        and have ``layers`` hidden blocks, as `vaekit.nets.Discriminator`).

        Raises:
            ConfigError: for a layer the discriminator does not have.
        """
        self.check_layer(int(discriminator.layers))  # type: ignore[arg-type]
        self._disc = _Shared(discriminator)

    def check_layer(self, most: int) -> None:
        """`ConfigError` unless ``feature_layer`` is one of a discriminator's ``most`` blocks."""
        if self.feature_layer is not None and self.feature_layer > most:
            raise ConfigError(f"feature_layer {self.feature_layer} is deeper than the "
                              f"discriminator's {most} hidden blocks; use 1..{most}")

    @property
    def discriminator(self) -> nn.Module | None:
        """The bound discriminator (None until the VAE-GAN objective binds it)."""
        return None if self._disc is None else self._disc.obj

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``D_l(x)`` ``[N, F]`` with D's weights detached (gradients reach ``x`` only)."""
        d = self.discriminator
        if d is None:
            raise ConfigError("this VAE-GAN's discriminator is not loaded: -log p(x) is not "
                              "defined for its feature likelihood; score its samples instead "
                              "(vaekit evaluate RUN --sample-quality --no-bound)")
        layer = self.feature_layer or int(d.layers)  # type: ignore[arg-type]
        return call_detached(d, x.to(next(d.parameters()).dtype), layer=layer)

    def forward(self, out: torch.Tensor) -> dist.TorchDistribution:
        """See `Likelihood.forward`: `FeatureNormal` at ``sigmoid(out)``."""
        return FeatureNormal(torch.sigmoid(out), self.features)

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        """See `Likelihood.mean`: the decoder's image, ``sigmoid(out)``."""
        return torch.sigmoid(out)

    def check(self, x: torch.Tensor) -> None:
        """See `Likelihood.check`: pixels must lie in [0, 1]."""
        _check_unit_interval(self, x)

    def config(self) -> dict[str, Any]:
        """See `Likelihood.config`."""
        return {} if self.feature_layer is None else {"feature_layer": self.feature_layer}


def test_observations(likelihood: Likelihood, images: torch.Tensor,
                      seed: int = TEST_BINARIZATION_SEED) -> torch.Tensor:
    """Observations of test images as the likelihood makes them, drawn once with a fixed seed.

    For Bernoulli this is one binarization of the grayscale images with ``seed``, the same in
    every run and every command, so test numbers compare across runs; a generator of its own
    leaves the global random state alone.

    Args:
        likelihood: The model's likelihood.
        images: uint8 or float images in [0, 1], ``[N, C, H, W]``.
        seed: Seeds the draws.
    """
    return likelihood.targets(to_unit(images), generator=torch.Generator().manual_seed(seed))

"""The VAE as a Pyro model/guide pair around an `Encoder` and a `Decoder`.

    vae = VAE(z_dim=32, likelihood="bernoulli", beta=1.0)
    svi = pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 2e-3}), Trace_ELBO())
    loss = Trace_ELBO()(vae.model, vae.guide)(x)   # or as a torch module, for torch optimizers

``model(x)`` is p(z) p(x|z) and ``guide(x)`` is q(z|x); both are `torch.nn.Module`s whose
``forward`` is the Pyro program, so that ``Trace_ELBO()(vae.model, vae.guide)`` finds every
parameter. β scales the ``"z"`` site in both with ``poutine.scale``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.nn.module import _is_module_local_param_enabled
from torch import nn

from vaekit.errors import ConfigError
from vaekit.likelihoods import Likelihood, get_likelihood
from vaekit.nets import Decoder, Encoder

__all__ = ["Model", "Guide", "VAE"]


def _register(name: str, module: nn.Module) -> None:
    """``pyro.module`` for users of the global param store; a no-op with module-local params."""
    if not _is_module_local_param_enabled():
        pyro.module(name, module)


def _check_beta(beta: float) -> float:
    if not (isinstance(beta, (int, float)) and math.isfinite(beta) and beta >= 0):
        raise ConfigError(
            f"beta must be a number >= 0, got {beta!r}: it weights the KL term "
            "(beta=1 is the plain VAE)"
        )
    return float(beta)


def _kl_weight(beta: float) -> poutine.messenger.Messenger:
    """β on the ``"z"`` site: ``poutine.scale`` (β > 0), or ``poutine.mask`` off for β = 0."""
    return poutine.scale(scale=beta) if beta > 0 else poutine.mask(mask=False)


class Model(nn.Module):
    """p(x, z) = p(z) p(x|z) with p(z) = Normal(0, I) and p(x|z) = likelihood(decoder(z)).

    Args:
        decoder: Maps ``z`` to the likelihood's parameters.
        likelihood: Turns those parameters into a distribution over images.
        z_dim: Latent dimension.
        beta: Weight of the KL term (scales the ``"z"`` site).
    """

    def __init__(self, decoder: nn.Module, likelihood: Likelihood, z_dim: int, beta: float = 1.0):
        super().__init__()
        self.decoder = decoder
        self.likelihood = likelihood
        self.z_dim = z_dim
        self.beta = beta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the generative program, observing images ``x`` (``[batch, C, H, W]``)."""
        _register("decoder", self.decoder)
        _register("likelihood", self.likelihood)
        with pyro.plate("data", x.shape[0]):
            z_loc = x.new_zeros(x.shape[0], self.z_dim)
            z_scale = x.new_ones(x.shape[0], self.z_dim)
            with _kl_weight(self.beta):
                z = pyro.sample("z", dist.Normal(z_loc, z_scale).to_event(1))
            out = self.decoder(z).float()  # float32 likelihood under mixed precision
            return pyro.sample("x", self.likelihood(out), obs=x)


class Guide(nn.Module):
    """q(z|x) = Normal(z_loc(x), z_scale(x)) from the encoder.

    Args:
        encoder: Maps images to ``(z_loc, z_scale)``.
        beta: Weight of the KL term; must equal the model's.
    """

    def __init__(self, encoder: nn.Module, beta: float = 1.0):
        super().__init__()
        self.encoder = encoder
        self.beta = beta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Sample ``z`` for each image in ``x``."""
        _register("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            z_loc, z_scale = self.encoder(x)
            z_loc, z_scale = z_loc.float(), z_scale.float()  # float32 under mixed precision
            with _kl_weight(self.beta):
                return pyro.sample("z", dist.Normal(z_loc, z_scale).to_event(1))


class VAE(nn.Module):
    """A variational autoencoder: ``model``, ``guide`` and helpers to encode, decode and sample.

    Args:
        z_dim: Latent dimension (32 in the seed notebook).
        likelihood: A registered likelihood name or a `Likelihood` instance.
        beta: Weight of the KL term (β-VAE); 1 is the ELBO.
        image_shape: ``(channels, height, width)`` of the images.
        encoder: A network mapping images to ``(z_loc, z_scale)``; default `Encoder`.
        decoder: A network mapping ``z`` to the likelihood's parameters; default `Decoder`.

    Raises:
        ConfigError: for an unknown likelihood, ``beta <= 0``, ``z_dim < 1`` or an image size the
            default networks cannot take.
    """

    def __init__(
        self,
        z_dim: int = 32,
        likelihood: str | Likelihood = "bernoulli",
        beta: float = 1.0,
        image_shape: Sequence[int] = (1, 28, 28),
        encoder: nn.Module | None = None,
        decoder: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if not (isinstance(z_dim, int) and z_dim >= 1):
            raise ConfigError(f"z_dim must be an integer >= 1, got {z_dim!r}")
        beta = _check_beta(beta)
        self.z_dim = z_dim
        self.image_shape = tuple(int(s) for s in image_shape)
        lik = get_likelihood(likelihood)
        out_channels = self.image_shape[0] * lik.params_per_channel
        encoder = encoder if encoder is not None else Encoder(self.image_shape, z_dim)
        decoder = decoder if decoder is not None else Decoder(
            self.image_shape, z_dim, out_channels=out_channels
        )
        self.model = Model(decoder, lik, z_dim, beta)
        self.guide = Guide(encoder, beta)
        self._custom_nets = {"encoder": _net_name(encoder), "decoder": _net_name(decoder)}

    # -- parts ------------------------------------------------------------------------------
    @property
    def encoder(self) -> nn.Module:
        """The network of q(z|x)."""
        return self.guide.encoder

    @property
    def decoder(self) -> nn.Module:
        """The network of p(x|z)."""
        return self.model.decoder

    @property
    def likelihood(self) -> Likelihood:
        """The observation model p(x|z)."""
        return self.model.likelihood

    @property
    def beta(self) -> float:
        """Weight of the KL term; setting it updates model and guide together."""
        return self.model.beta

    @beta.setter
    def beta(self, value: float) -> None:
        self.model.beta = self.guide.beta = _check_beta(value)

    @property
    def device(self) -> torch.device:
        """Device of the parameters."""
        return next(self.parameters()).device

    # -- use --------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(z_loc, z_scale)`` of q(z|x) for images in [0, 1]."""
        return self.encoder(x.to(self.device))

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Mean image of p(x|z), in [0, 1]."""
        return self.likelihood.mean(self.decoder(z.to(self.device)))

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Mean images of ``n`` draws z ~ p(z)."""
        z = torch.randn(n, self.z_dim, generator=generator).to(self.device)
        return self.decode(z)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Decode the posterior mean of each image: ``decode(encode(x)[0])``."""
        return self.decode(self.encode(x)[0])

    # -- persistence ------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """Everything needed to rebuild this VAE with `VAE.from_config` (weights aside)."""
        return {
            "z_dim": self.z_dim,
            "beta": self.beta,
            "image_shape": list(self.image_shape),
            "likelihood": {"name": self.likelihood.name, **self.likelihood.config()},
            "encoder": self._custom_nets["encoder"],
            "decoder": self._custom_nets["decoder"],
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> VAE:
        """Rebuild a VAE (with fresh weights) from `VAE.config` output."""
        cfg = dict(config)
        lik_cfg = dict(cfg.pop("likelihood"))
        for part in ("encoder", "decoder"):
            if cfg.pop(part, None) not in (None, "default"):
                raise ConfigError(
                    f"this run used a custom {part}; rebuild it in Python and pass it to VAE()"
                )
        likelihood = get_likelihood(lik_cfg.pop("name"), **lik_cfg)
        return cls(likelihood=likelihood, **cfg)


def _net_name(net: nn.Module) -> str:
    """``"default"`` for vaekit's own nets, else ``module:Class`` of a custom one."""
    if type(net) in (Encoder, Decoder):
        return "default"
    return f"{type(net).__module__}:{type(net).__qualname__}"

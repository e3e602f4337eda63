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
from torch import nn

from vaekit.building import (
    arguments_from_config,
    arguments_from_spec,
    build_net,
    call_net,
    check_grid_nets,
    check_nets,
    likelihood_id,
    net_name,
    part_config,
    part_spec,
)
from vaekit.errors import ConfigError
from vaekit.likelihoods import Likelihood, get_likelihood
from vaekit.nets import (
    GridDecoder,
    GridEncoder,
    TwoLevelGridDecoder,
    TwoLevelGridEncoder,
    make_classifier,
    make_nets,
)
from vaekit.plugins import import_class
from vaekit.posteriors import Diagonal, Posterior, VectorQuantized, get_posterior, parse_posterior
from vaekit.priors import CodePrior, Prior, StandardNormal, get_prior
from vaekit.settings import MAX_Z_DIM, ModelSpec

__all__ = ["Model", "Guide", "CodeGuide", "TwoLevelCodeModel", "TwoLevelCodeGuide", "VAE",
           "SemiSupervisedModel", "SemiSupervisedGuide", "call_per_label",
           "HierarchicalModel", "HierarchicalGuide", "GaussianLayer"]


def _register(name: str, module: nn.Module) -> None:
    """``pyro.module`` for users of the global param store; a no-op with module-local params."""
    if not pyro.settings.get("module_local_params"):
        pyro.module(name, module)


def _is_vq(posterior: str | Posterior) -> bool:
    """Whether ``posterior`` makes a VQ-VAE (``"vq:K"`` or a `VectorQuantized`)."""
    if isinstance(posterior, Posterior):
        return isinstance(posterior, VectorQuantized)
    try:
        return parse_posterior(posterior)[0] == "vq"
    except ConfigError:
        return False


def _record(name: str, value: torch.Tensor, event_dim: int | None = None) -> torch.Tensor:
    """Record ``value`` ``[batch, ...]`` (``event_dim`` trailing dimensions per image: all but
    the first by default) in the trace as a guide's auxiliary site that adds nothing to any
    density (``pyro.deterministic``, marked auxiliary for Pyro's checks)."""
    with poutine.infer_config(config_fn=lambda msg: {"is_auxiliary": True}):
        return pyro.deterministic(name, value, event_dim=value.dim() - 1 if event_dim is None
                                  else event_dim)


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
    """p(x, z) = p(z) p(x|z) with p(z) = prior (default Normal(0, I)) and p(x|z) =
    likelihood(decoder(z)).

    Args:
        decoder: Maps ``z`` to the likelihood's parameters.
        likelihood: Turns those parameters into a distribution over images.
        z_dim: Latent dimension.
        beta: Weight of the KL term (scales the ``"z"`` site).
        prior: p(z), a `vaekit.priors.Prior` (default `StandardNormal`).
    """

    def __init__(self, decoder: nn.Module, likelihood: Likelihood, z_dim: int, beta: float = 1.0,
                 prior: Prior | None = None):
        super().__init__()
        self.decoder = decoder
        self.likelihood = likelihood
        self.z_dim = z_dim
        self.beta = beta
        self.prior = prior if prior is not None else StandardNormal(z_dim)

    # --8<-- [start:model]
    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Run the generative program, observing images ``x`` (``[batch, C, H, W]``).

        ``y`` (integer labels ``[batch]``) is given to the decoder of a conditional VAE.
        """
        _register("decoder", self.decoder)
        _register("likelihood", self.likelihood)
        _register("prior", self.prior)
        with pyro.plate("data", x.shape[0]):
            with _kl_weight(self.beta):
                z = pyro.sample("z", self.prior(x.shape[0]))
            out = call_net(self.decoder, z, y).float()  # float32 likelihood under mixed precision
            return pyro.sample("x", self.likelihood(out), obs=x)
    # --8<-- [end:model]


class Guide(nn.Module):
    """q(z|x) = posterior(encoder(x)): by default Normal(z_loc(x), z_scale(x)).

    Args:
        encoder: Maps images to ``(z_loc, z_scale)``.
        beta: Weight of the KL term; must equal the model's.
        posterior: q(z|x) from the encoder's output, a `vaekit.posteriors.Posterior` (default
            `Diagonal`).
    """

    def __init__(self, encoder: nn.Module, beta: float = 1.0, posterior: Posterior | None = None):
        super().__init__()
        self.encoder = encoder
        self.beta = beta
        self.posterior = posterior if posterior is not None else Diagonal(encoder.z_dim if hasattr(
            encoder, "z_dim") else 0)

    # --8<-- [start:guide]
    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Sample ``z`` for each image in ``x`` (and label in ``y``, for a conditional VAE)."""
        _register("encoder", self.encoder)
        _register("posterior", self.posterior)
        with pyro.plate("data", x.shape[0]):
            z_loc, z_scale = call_net(self.encoder, x, y)
            z_loc, z_scale = z_loc.float(), z_scale.float()  # float32 under mixed precision
            with _kl_weight(self.beta):
                return pyro.sample("z", self.posterior(z_loc, z_scale))
    # --8<-- [end:guide]


class CodeGuide(nn.Module):
    """The VQ-VAE's q(z|x): the encoder's grid ``z_e(x)`` (recorded as the auxiliary site
    ``"z_e"``, which adds nothing to any density) and the point mass on its nearest codes'
    vectors (`vaekit.posteriors.VectorQuantized`), log q(z|x) = 0.

    Args:
        encoder: Maps images to grids ``[batch, D, h, w]``.
        posterior: The `VectorQuantized` posterior, which owns the codebook.
    """

    def __init__(self, encoder: nn.Module, posterior: VectorQuantized) -> None:
        super().__init__()
        self.encoder, self.posterior = encoder, posterior
        self.beta = 1.0

    # --8<-- [start:code-guide]
    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Draw ``z``, the codes' vectors, for each image in ``x``."""
        _register("encoder", self.encoder)
        _register("posterior", self.posterior)
        with pyro.plate("data", x.shape[0]):
            z_e = _record("z_e", self.encoder(x).float())
            return pyro.sample("z", self.posterior(z_e))
    # --8<-- [end:code-guide]


class TwoLevelCodeModel(Model):
    """The VQ-VAE-2's p(x, z1, z2) = p(z2) p(z1 | z2) p(x | z1, z2): the top grid ``"z2"`` from
    the prior, the bottom grid ``"z1"`` given it (`vaekit.priors.CodePrior.given`), and the
    decoder reads both (``decoder(z1, z2)``).

    Args:
        decoder: Maps ``(z1, z2)`` to the likelihood's parameters.
        likelihood: Turns those parameters into a distribution over images.
        z_dim: D, the size of a code vector.
        prior: A `vaekit.priors.CodePrior` of two levels.
    """

    def __init__(self, decoder: nn.Module, likelihood: Likelihood, z_dim: int,
                 prior: CodePrior) -> None:
        super().__init__(decoder, likelihood, z_dim, 1.0, prior)

    # --8<-- [start:two-level-model]
    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Run the generative program, observing images ``x``."""
        _register("decoder", self.decoder)
        _register("likelihood", self.likelihood)
        _register("prior", self.prior)
        with pyro.plate("data", x.shape[0]):
            z2 = pyro.sample("z2", self.prior(x.shape[0]))
            z1 = pyro.sample("z1", self.prior.given(z2))
            out = self.decoder(z1, z2).float()
            return pyro.sample("x", self.likelihood(out), obs=x)
    # --8<-- [end:two-level-model]


class TwoLevelCodeGuide(CodeGuide):
    """The VQ-VAE-2's q(z1, z2 | x), both point masses: the encoder's top grid ``z_e2(x)``
    snapped to the top codebook gives ``"z2"``; the bottom grid ``z_e1``, made from the
    encoder's features and ``z2`` (``encoder.merge``), snapped to the bottom codebook gives
    ``"z1"``. Both grids are recorded (``"z_e2"``, ``"z_e1"``); log q = 0.

    Args:
        encoder: A `vaekit.nets.TwoLevelGridEncoder` or a net with its ``forward`` and ``merge``.
        posterior: The `VectorQuantized` posterior of two levels, which owns the codebooks.
    """

    # --8<-- [start:two-level-guide]
    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Draw ``z2`` and then ``z1``, the codes' vectors, for each image in ``x``."""
        _register("encoder", self.encoder)
        _register("posterior", self.posterior)
        with pyro.plate("data", x.shape[0]):
            h, z_e2 = self.encoder(x)
            q_z2 = self.posterior(_record("z_e2", z_e2.float()), level=1)
            pyro.sample("z2", q_z2)  # a point mass: its draw is q_z2.v, one per image
            z_e1 = _record("z_e1", self.encoder.merge(h, q_z2.v).float())
            return pyro.sample("z1", self.posterior(z_e1, level=0))
    # --8<-- [end:two-level-guide]


CPU_NET_BATCH = 512
"""Most inputs `call_per_label` gives a net at once on a CPU without gradients (evaluation): the
seed nets' fastest batch there; their outputs do not depend on it."""


def call_per_label(net: nn.Module, inp: torch.Tensor, y: torch.Tensor, event_dim: int) -> Any:
    """``net(inp, y)`` for labels ``y`` that broadcast against ``inp``'s batch dimensions (all
    but its last ``event_dim``): an enumerated ``y`` ``[C, 1]`` with images ``[B, ...]`` runs the
    net on the ``C * B`` pairs, flattened to one batch as a conditional net takes them (on a CPU
    without gradients, `CPU_NET_BATCH` at a time), and gives its outputs back shaped
    ``[C, B, ...]``."""
    lead = inp.shape[:inp.dim() - event_dim]
    batch = torch.broadcast_shapes(y.shape, lead)
    if tuple(batch) == tuple(lead) and y.dim() == 1:  # one label per image: as it is
        return net(inp, y.expand(batch))
    event = inp.shape[inp.dim() - event_dim:]
    flat, labels = inp.expand(*batch, *event).reshape(-1, *event), y.expand(batch).reshape(-1)
    if flat.device.type == "cpu" and not torch.is_grad_enabled() and len(flat) > CPU_NET_BATCH:
        parts = [net(flat[i:i + CPU_NET_BATCH], labels[i:i + CPU_NET_BATCH])
                 for i in range(0, len(flat), CPU_NET_BATCH)]  # the nets' fastest batch
        out = (tuple(torch.cat(o) for o in zip(*parts)) if isinstance(parts[0], tuple)
               else torch.cat(parts))
    else:
        out = net(flat, labels)
    return (tuple(o.reshape(*batch, *o.shape[1:]) for o in out) if isinstance(out, tuple)
            else out.reshape(*batch, *out.shape[1:]))


class SemiSupervisedModel(nn.Module):
    """Kingma et al.'s (2014) M2: p(x, y, z) = p(y) p(z) p(x | z, y), with p(y) uniform over the
    classes; ``y`` is observed for a labelled image and a latent variable for the others.

    Args:
        decoder: Maps ``(z, y)`` to the likelihood's parameters.
        likelihood: Turns those parameters into a distribution over images.
        z_dim: Latent dimension.
        num_classes: Number of classes.
        beta: Weight of the KL term of ``z`` (``y``'s is not weighted).
        prior: p(z).
    """

    def __init__(self, decoder: nn.Module, likelihood: Likelihood, z_dim: int, num_classes: int,
                 beta: float, prior: Prior) -> None:
        super().__init__()
        self.decoder, self.likelihood, self.z_dim, self.beta = decoder, likelihood, z_dim, beta
        self.prior, self.num_classes = prior, num_classes
        self.register_buffer("class_logits", torch.zeros(num_classes))  # p(y) = 1 / C

    # --8<-- [start:m2-model]
    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Run the generative program on images ``x``, observing labels ``y`` if given."""
        for name, part in (("decoder", self.decoder), ("likelihood", self.likelihood),
                           ("prior", self.prior)):
            _register(name, part)
        with pyro.plate("data", x.shape[0]):
            y = pyro.sample("y", dist.Categorical(logits=self.class_logits), obs=y)
            with _kl_weight(self.beta):
                z = pyro.sample("z", self.prior(x.shape[0]))
            out = call_per_label(self.decoder, z, y, 1).float()
            return pyro.sample("x", self.likelihood(out), obs=x)
    # --8<-- [end:m2-model]


class SemiSupervisedGuide(nn.Module):
    """M2's q(y, z | x) = q(y|x) q(z|x, y): the classifier's Categorical q(y|x), drawn only for
    an unlabelled image (for a labelled one ``y`` is given), then q(z|x, y) of the conditional
    encoder. `vaekit.semisupervised.SemiSupervised` sums ``y`` out by Pyro's parallel
    enumeration (``config_enumerate``, ``TraceEnum_ELBO``) rather than drawing it.

    Args:
        encoder: Maps ``(x, y)`` to ``(z_loc, z_scale)``.
        classifier: Maps images to the logits of q(y|x).
        beta: Weight of the KL term of ``z``; must equal the model's.
        posterior: q(z|x, y) from the encoder's output.
    """

    def __init__(self, encoder: nn.Module, classifier: nn.Module, beta: float,
                 posterior: Posterior) -> None:
        super().__init__()
        self.encoder, self.classifier, self.beta, self.posterior = (encoder, classifier, beta,
                                                                    posterior)

    # --8<-- [start:m2-guide]
    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Draw ``y`` (unless given) and ``z`` for each image in ``x``."""
        for name, part in (("encoder", self.encoder), ("classifier", self.classifier),
                           ("posterior", self.posterior)):
            _register(name, part)
        with pyro.plate("data", x.shape[0]):
            if y is None:
                y = pyro.sample("y", dist.Categorical(logits=self.classifier(x).float()))
            z_loc, z_scale = call_per_label(self.encoder, x, y, 3)
            with _kl_weight(self.beta):
                return pyro.sample("z", self.posterior(z_loc.float(), z_scale.float()))
    # --8<-- [end:m2-guide]


class GaussianLayer(nn.Module):
    """A diagonal Normal whose location and scale an MLP computes from its input:
    ``(loc, scale) = MLP(h)``, one hidden layer with ELU.

    Args:
        in_dim: Input size.
        z_dim: Output size (of ``loc`` and ``scale``).
        hidden: Hidden units.
    """

    def __init__(self, in_dim: int, z_dim: int, hidden: int = 256) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ELU(), nn.Linear(hidden, 2 * z_dim))

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loc, scale)`` for ``h`` ``[..., in_dim]``."""
        loc, log_scale = self.net(h).chunk(2, dim=-1)
        return loc, log_scale.clamp(-7, 5).exp()


class HierarchicalModel(nn.Module):
    """Two stochastic layers: p(z2) p(z1|z2) p(x|z1), with p(z2) = prior and
    p(z1|z2) = Normal(`GaussianLayer`(z2)); the decoder reads z1.

    Args:
        decoder: Maps ``z1`` to the likelihood's parameters.
        likelihood: Turns those parameters into a distribution over images.
        z_dim: Size of each latent layer.
        beta: Weight of the KL terms (scales both latent sites).
        prior: p(z2).
    """

    def __init__(self, decoder: nn.Module, likelihood: Likelihood, z_dim: int, beta: float,
                 prior: Prior) -> None:
        super().__init__()
        self.decoder, self.likelihood, self.z_dim, self.beta = decoder, likelihood, z_dim, beta
        self.prior = prior
        self.p_z1 = GaussianLayer(z_dim, z_dim)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Run the generative program, observing images ``x``."""
        for name, part in (("decoder", self.decoder), ("likelihood", self.likelihood),
                           ("prior", self.prior), ("p_z1", self.p_z1)):
            _register(name, part)
        with pyro.plate("data", x.shape[0]):
            with _kl_weight(self.beta):
                z2 = pyro.sample("z2", self.prior(x.shape[0]))
                loc, scale = self.p_z1(z2)
                z1 = pyro.sample("z1", dist.Normal(loc, scale).to_event(1))
            out = call_net(self.decoder, z1, y).float()
            return pyro.sample("x", self.likelihood(out), obs=x)


class HierarchicalGuide(nn.Module):
    """q(z1|x) q(z2|z1): q(z1|x) = posterior(encoder(x)), q(z2|z1) = Normal(`GaussianLayer`(z1)).

    Args:
        encoder: Maps images to ``(z_loc, z_scale)`` of the first layer.
        beta: Weight of the KL terms; must equal the model's.
        posterior: q(z1|x) from the encoder's output.
        z_dim: Size of each latent layer.
    """

    def __init__(self, encoder: nn.Module, beta: float, posterior: Posterior, z_dim: int) -> None:
        super().__init__()
        self.encoder, self.beta, self.posterior = encoder, beta, posterior
        self.q_z2 = GaussianLayer(z_dim, z_dim)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Sample ``z1`` and ``z2`` for each image in ``x``."""
        for name, part in (("encoder", self.encoder), ("posterior", self.posterior),
                           ("q_z2", self.q_z2)):
            _register(name, part)
        with pyro.plate("data", x.shape[0]):
            z_loc, z_scale = call_net(self.encoder, x, y)
            with _kl_weight(self.beta):
                z1 = pyro.sample("z1", self.posterior(z_loc.float(), z_scale.float()))
                loc, scale = self.q_z2(z1)
                return pyro.sample("z2", dist.Normal(loc, scale).to_event(1))


class VAE(nn.Module):
    """A variational autoencoder: ``model``, ``guide`` and helpers to encode, decode and sample.

    Args:
        z_dim: Latent dimension (32 in the seed notebook).
        likelihood: A registered likelihood name or a `Likelihood` instance.
        beta: Weight of the KL term (β-VAE); 1 is the ELBO.
        image_shape: ``(channels, height, width)`` of the images.
        encoder: A network mapping images to ``(z_loc, z_scale)``; default `Encoder`. A class
            (or ``"module:Class"``) is built as ``Class(image_shape, z_dim)``, in a conditional
            VAE as ``Class(image_shape, z_dim, num_classes=K)``.
        decoder: A network mapping ``z`` to the likelihood's parameters; default `Decoder`. A
            class (or ``"module:Class"``) is built as ``Class(image_shape, z_dim, out_channels)``,
            in a conditional VAE as ``Class(image_shape, z_dim, out_channels=C, num_classes=K)``.
        num_classes: Make a conditional VAE, p(x|z, y) q(z|x, y), over this many labels
            (0: unconditional). Its nets take the integer labels ``y`` ``[batch]`` as a second
            argument: ``encoder(x, y)``, ``decoder(z, y)``.
        prior: p(z): ``"standard"`` (default), ``"mog:K"``, ``"vamp:K"`` or a
            `vaekit.priors.Prior`; for a VQ-VAE ``"uniform"`` over its codes (what
            ``"standard"`` means there) or a `vaekit.priors.CodePrior`.
        posterior: q(z|x): ``"diagonal"`` (default), ``"iaf:N"``, ``"vq:K"`` (a VQ-VAE: the
            point mass on the nearest of K codes of a grid, `CodeGuide`, with
            `vaekit.nets.GridEncoder` and `GridDecoder` as default nets and ``z_dim`` the size
            of a code vector) or a `vaekit.posteriors.Posterior`.
        latents: Stochastic layers: 1 (``"z"``) or 2 (`HierarchicalModel`: ``"z2"`` from the
            prior, ``"z1"`` given ``z2``, the decoder reads ``z1``; the posterior is q(z1|x)).
        nets: The network family of the encoder and decoder not given: ``"dcgan"`` (the seed's
            conv nets) or ``"mlp"`` / ``"mlp:H"`` (two fully connected layers of H = 300 units;
            `vaekit.nets.make_nets`).
        codebook_decay: A VQ-VAE's moving-average decay of the codebook (0: learned by the
            codebook loss instead).
        semi_supervised: Kingma et al.'s M2 over ``num_classes`` labels
            (`SemiSupervisedModel`, `SemiSupervisedGuide`): the conditional VAE's nets and a
            classifier q(y|x) (`vaekit.nets.make_classifier` of ``nets``); ``y`` is observed
            where a label is given and a latent variable elsewhere.

    Raises:
        ConfigError: for an unknown likelihood, ``beta < 0``, ``z_dim < 1``, an image size the
            default networks cannot take, or networks whose outputs do not fit the image shape.
    """

    def __init__(
        self,
        z_dim: int = 32,
        likelihood: str | Likelihood = "bernoulli",
        beta: float = 1.0,
        image_shape: Sequence[int] = (1, 28, 28),
        encoder: nn.Module | type | str | None = None,
        decoder: nn.Module | type | str | None = None,
        num_classes: int = 0,
        prior: str | Prior = "standard",
        posterior: str | Posterior = "diagonal",
        latents: int = 1,
        nets: str = "dcgan",
        codebook_decay: float = 0.99,
        semi_supervised: bool = False,
    ) -> None:
        super().__init__()
        if not (isinstance(z_dim, int) and 1 <= z_dim <= MAX_Z_DIM):
            raise ConfigError(f"z_dim must be an integer in 1..{MAX_Z_DIM}, got {z_dim!r}")
        beta = _check_beta(beta)
        self.z_dim = z_dim
        self.image_shape = tuple(int(s) for s in image_shape)
        if not (isinstance(num_classes, int) and num_classes >= 0):
            raise ConfigError(f"num_classes must be an integer >= 0, got {num_classes!r}")
        self.num_classes = num_classes
        lik = get_likelihood(likelihood)
        out_channels = self.image_shape[0] * lik.params_per_channel
        self.nets, self.latents, self.semi_supervised = nets, latents, bool(semi_supervised)
        if semi_supervised and (num_classes < 2 or latents != 1 or _is_vq(posterior)):
            raise ConfigError("the semi-supervised VAE (M2) needs a labelled data set of at "
                              "least 2 classes, one latent layer and a Gaussian-family "
                              "posterior: drop --latents 2 and --posterior vq:K")
        if _is_vq(posterior):
            self._build_vq(lik, posterior, prior, beta, encoder, decoder, out_channels,
                           codebook_decay)
            return
        if isinstance(encoder, (str, type)):
            encoder = build_net(import_class(encoder, "encoder"), "encoder", num_classes,
                                 self.image_shape, z_dim)
        if isinstance(decoder, (str, type)):
            decoder = build_net(import_class(decoder, "decoder"), "decoder", num_classes,
                                 self.image_shape, z_dim, out_channels)
        if encoder is None or decoder is None:
            own_enc, own_dec = make_nets(nets, self.image_shape, z_dim, out_channels, num_classes)
            encoder = own_enc if encoder is None else encoder
            decoder = own_dec if decoder is None else decoder
        self._custom_nets = {"encoder": net_name(encoder, nets),
                             "decoder": net_name(decoder, nets)}
        check_nets(encoder, decoder, self.image_shape, z_dim, out_channels, num_classes)
        prior_mod = get_prior(prior, z_dim, self.image_shape)
        if prior_mod.name == "vamp" and num_classes:
            raise ConfigError("the VampPrior passes pseudo-inputs through the encoder, which in a "
                              "conditional VAE needs labels: use prior standard or mog:K")
        if latents not in (1, 2):
            raise ConfigError(f"latents must be 1 or 2, got {latents!r}")
        if latents == 2 and prior_mod.name == "vamp":
            raise ConfigError("the VampPrior is built on q(z|x) of the encoder, which with two "
                              "latent layers gives z1, not z2: use prior standard or mog:K")
        prior_mod.bind(encoder)
        post_mod = get_posterior(posterior, z_dim)
        if semi_supervised:
            classifier = make_classifier(nets, self.image_shape, num_classes)
            self.model: nn.Module = SemiSupervisedModel(decoder, lik, z_dim, num_classes, beta,
                                                        prior_mod)
            self.guide: nn.Module = SemiSupervisedGuide(encoder, classifier, beta, post_mod)
        elif latents == 2:
            self.model = HierarchicalModel(decoder, lik, z_dim, beta, prior_mod)
            self.guide = HierarchicalGuide(encoder, beta, post_mod, z_dim)
        else:
            self.model = Model(decoder, lik, z_dim, beta, prior_mod)
            self.guide = Guide(encoder, beta, post_mod)

    def _build_vq(self, lik: Likelihood, posterior: str | Posterior, prior: str | Prior,
                  beta: float, encoder: nn.Module | type | str | None,
                  decoder: nn.Module | type | str | None, out_channels: int,
                  decay: float) -> None:
        """The VQ-VAE: `CodeGuide` and `Model` with a prior over the codes; with ``latents=2``
        the VQ-VAE-2, `TwoLevelCodeGuide` and `TwoLevelCodeModel`."""
        if self.num_classes or self.latents not in (1, 2) or beta != 1.0 \
                or lik.name == "discriminator":
            raise ConfigError("a VQ-VAE (posterior vq:K) is unconditional, with one or two "
                              "levels of codes (--latents 1 or 2), beta 1 (log p(codes) is a "
                              "constant, not a KL to weight) and a pixel likelihood: drop "
                              "--conditional, --beta and --likelihood discriminator")
        if isinstance(prior, str) and prior not in ("standard", "uniform"):
            raise ConfigError(f"a VQ-VAE's prior is over its codes: use prior uniform (the "
                              f"default), not {prior!r}; a learned one comes from vaekit fit-prior")
        if not isinstance(prior, (str, CodePrior)):
            raise ConfigError("a VQ-VAE's prior must be a vaekit.priors.CodePrior")
        d, levels = self.z_dim, self.latents
        post_mod = posterior if isinstance(posterior, Posterior) else get_posterior(
            posterior, d, decay=decay, levels=levels)
        if post_mod.levels != levels:
            raise ConfigError(f"the posterior has {post_mod.levels} level(s) of codes but "
                              f"latents is {levels}")
        built = {part: build_net(import_class(net, part), part, 0, self.image_shape, d,
                                 *((out_channels,) if part == "decoder" else ()))
                 for part, net in (("encoder", encoder), ("decoder", decoder))
                 if isinstance(net, (str, type))}
        enc_cls, dec_cls = ((GridEncoder, GridDecoder) if levels == 1
                            else (TwoLevelGridEncoder, TwoLevelGridDecoder))
        encoder = built.get("encoder", encoder) or enc_cls(self.image_shape, d)
        decoder = built.get("decoder", decoder) or dec_cls(self.image_shape, d,
                                                           out_channels=out_channels)
        self._custom_nets = {"encoder": net_name(encoder, "vq"),
                             "decoder": net_name(decoder, "vq")}
        grids = check_grid_nets(encoder, decoder, self.image_shape, d, out_channels, levels)
        prior_mod = prior if isinstance(prior, CodePrior) else get_prior(
            "uniform", d, k=post_mod.k, levels=levels)
        if prior_mod.k != post_mod.k or prior_mod.levels != levels:
            raise ConfigError(f"the prior is over {prior_mod.levels} level(s) of "
                              f"{prior_mod.k} codes but the codebooks are {levels} of {post_mod.k}")
        prior_mod.bind_codebook(post_mod.quantizer, grids[0], getattr(post_mod, "top", None),
                                grids[1] if levels == 2 else ())
        if levels == 1:
            self.model = Model(decoder, lik, d, 1.0, prior_mod)
            self.guide = CodeGuide(encoder, post_mod)
        else:
            self.model = TwoLevelCodeModel(decoder, lik, d, prior_mod)
            self.guide = TwoLevelCodeGuide(encoder, post_mod)

    @property
    def classifier(self) -> nn.Module:
        """The semi-supervised VAE's q(y|x) network (its logits)."""
        if not self.semi_supervised:
            raise ConfigError("only a semi-supervised VAE (semi_supervised=True) has a classifier")
        return self.guide.classifier

    @torch.no_grad()
    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """log q(y|x) of the semi-supervised VAE's classifier, ``[batch, num_classes]``."""
        return torch.log_softmax(self.classifier(x.to(self.device)).float(), dim=-1)

    @property
    def is_vq(self) -> bool:
        """Whether this is a VQ-VAE (posterior ``vq:K``, one or two levels)."""
        return isinstance(self.guide, CodeGuide)

    @torch.no_grad()
    def codes(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """A VQ-VAE's code grids of images ``x``, bottom (the only one of one level) first:
        ``([batch, h, w],)`` or ``([batch, h, w], [batch, h', w'])``; no codebook update."""
        if not self.is_vq:
            raise ConfigError("only a VQ-VAE (posterior vq:K) has codes")
        qs = self.posterior.quantizers
        out = self.encoder(x.to(self.device))
        if self.latents == 1:
            return (qs[0].codes_of(out.float()),)
        h, z_e2 = out
        top = qs[1].codes_of(z_e2.float())
        bottom = qs[0].codes_of(self.encoder.merge(h, qs[1].lookup(top)).float())
        return bottom, top

    def code_likelihood(self, codes: Sequence[torch.Tensor]) -> dist.TorchDistribution:
        """p(x | codes) of a VQ-VAE, for code grids as `codes` gives them, differentiable."""
        vectors = [q.lookup(c.to(self.device)) for q, c in zip(self.posterior.quantizers, codes)]
        return self.likelihood(self.decoder(*vectors).float())

    @torch.no_grad()
    def decode_codes(self, codes: Sequence[torch.Tensor]) -> torch.Tensor:
        """Mean images of p(x | codes) of a VQ-VAE, in [0, 1]."""
        vectors = [q.lookup(c.to(self.device)) for q, c in zip(self.posterior.quantizers, codes)]
        return self.likelihood.mean(self.decoder(*vectors))

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
    def prior(self) -> Prior:
        """p(z)."""
        return self.model.prior

    @property
    def posterior(self) -> Posterior:
        """q(z|x) as a function of the encoder's output."""
        return self.guide.posterior

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
        value = _check_beta(value)
        if self.is_vq and value != 1.0:
            raise ConfigError("a VQ-VAE has no KL term to weight: leave beta at 1")
        self.model.beta = self.guide.beta = value

    @property
    def device(self) -> torch.device:
        """Device of the parameters."""
        return next(self.parameters()).device

    # -- use --------------------------------------------------------------------------------
    def _labels(self, y: torch.Tensor | int | None, n: int) -> torch.Tensor | None:
        if not self.num_classes:
            if y is not None:
                raise ConfigError("labels were given but this VAE is not conditional")
            return None
        if y is None:
            raise ConfigError("this VAE is conditional: pass the labels y")
        y = torch.as_tensor(y, device=self.device).long()
        if y.dim() == 0:
            y = y.expand(n)
        if int(y.min()) < 0 or int(y.max()) >= self.num_classes:
            raise ConfigError(f"labels must lie in 0..{self.num_classes - 1}")
        return y

    def qz(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The encoder's ``(z_loc, z_scale)`` for ``x`` (and ``y``, when conditional), differentiable.

        With the diagonal posterior these are q(z|x)'s mean and standard deviation; with a flow
        they are its base distribution's (``vae.posterior(z_loc, z_scale)`` is q(z|x) itself).
        """
        return call_net(self.encoder, x, self._labels(y, x.shape[0]))

    def _posterior_args(self, out: Any) -> tuple[torch.Tensor, ...]:
        """The encoder's output as the posterior's arguments, in float32: ``(z_loc, z_scale)``,
        or ``(z_e,)`` of a VQ-VAE."""
        return tuple(t.float() for t in (out if isinstance(out, tuple) else (out,)))

    def qz_dist(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dist.TorchDistribution:
        """q(z|x) (q(z|x, y) when conditional) as a distribution, differentiable."""
        return self.posterior(*self._posterior_args(self.qz(x, y)))

    def px(self, z: torch.Tensor, y: torch.Tensor | None = None) -> dist.TorchDistribution:
        """The distribution p(x|z) (p(x|z, y) when conditional) over images, differentiable."""
        return self.likelihood(call_net(self.decoder, z, self._labels(y, z.shape[-2] if z.dim() > 1
                                                                   else 1)).float())

    @torch.no_grad()
    def encode(self, x: torch.Tensor, y: torch.Tensor | int | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and standard deviation of q(z|x) (q(z|x, y) when conditional) per dimension.

        Exact for the diagonal posterior (the encoder's ``(z_loc, z_scale)``); for a flow they are
        estimated from 64 draws of q(z|x) (`vaekit.posteriors.Posterior.moments`); for a VQ-VAE
        the nearest codes' vectors ``[batch, D, h, w]`` (of two levels, the bottom grid's) and
        zeros.
        """
        if self.is_vq and self.latents == 2:  # the bottom grid's codes' vectors
            vectors = self.posterior.quantizer.lookup(self.codes(x)[0])
            return vectors, torch.zeros_like(vectors)
        out = call_net(self.encoder, x.to(self.device), self._labels(y, x.shape[0]))
        return self.posterior.moments(*self._posterior_args(out))

    @torch.no_grad()
    def decode(self, z: torch.Tensor, y: torch.Tensor | int | None = None) -> torch.Tensor:
        """Mean image of p(x|z) (p(x|z, y) when conditional), in [0, 1]."""
        z = z.to(self.device)
        return self.likelihood.mean(call_net(self.decoder, z, self._labels(y, z.shape[0])))

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None,
               y: torch.Tensor | int | None = None) -> torch.Tensor:
        """Mean images of ``n`` draws z ~ p(z), the model's prior (of label ``y``, when
        conditional), reproducible with ``generator``."""
        if self.is_vq and self.latents == 2:  # z2 from p(z2), then z1 from p(z1 | z2)
            return self.decode_codes(self.prior.sample_levels(n, generator))
        z = self.prior.sample(n, generator=generator).to(self.device)
        if self.latents == 2:  # z1 ~ p(z1|z2), drawn with the same generator
            loc, scale = self.model.p_z1(z)
            eps = torch.randn(loc.shape, generator=generator).to(self.device)
            z = loc + scale * eps
        return self.decode(z, y)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, y: torch.Tensor | int | None = None) -> torch.Tensor:
        """Decode the posterior mean of each image: ``decode(encode(x)[0])`` (a VQ-VAE: its
        codes, `decode_codes` of `codes`)."""
        if self.is_vq:
            return self.decode_codes(self.codes(x))
        return self.decode(self.encode(x, y)[0], y)

    # -- persistence ------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """Everything needed to rebuild this VAE with `VAE.from_config` (weights aside)."""
        lik_module = type(self.likelihood).__module__
        plugin = {} if lik_module == "vaekit.likelihoods" else {"likelihood_module": lik_module}
        return {
            **plugin,
            "latents": self.latents,
            "prior": part_config(self.prior, "vaekit.priors"),
            "posterior": part_config(self.posterior, "vaekit.posteriors"),
            "z_dim": self.z_dim,
            "beta": self.beta,
            "image_shape": list(self.image_shape),
            "likelihood": {**likelihood_id(self.likelihood), **self.likelihood.config()},
            "encoder": self._custom_nets["encoder"],
            "decoder": self._custom_nets["decoder"],
            "num_classes": self.num_classes,
            "nets": self.nets,
            **({"semi_supervised": True} if self.semi_supervised else {}),
        }

    @classmethod
    def from_config(cls, config: dict[str, Any], trust_plugins: bool = False) -> VAE:
        """Rebuild a VAE (with fresh weights) from `VAE.config` output.

        A config that names code of its own (a network ``"module:Class"``, or a likelihood that
        a module registers) is code: its modules are imported only if they already are, or with
        ``trust_plugins=True``. Otherwise a `ConfigError` names the module to import (the rules
        are `vaekit.building.arguments_from_config`'s).

        Args:
            config: What `VAE.config` returned (e.g. from a run's ``config.json``).
            trust_plugins: Import the modules the config names.
        """
        return cls(**arguments_from_config(config, trust_plugins))

    @classmethod
    def from_spec(cls, spec: ModelSpec, image_shape: Sequence[int] = (1, 28, 28),
                  num_classes: int = 0, trust_plugins: bool = True) -> VAE:
        """Build the VAE a `ModelSpec` describes, for images of ``image_shape``
        (`vaekit.building.arguments_from_spec`).

        Args:
            spec: The model settings.
            image_shape: ``(channels, height, width)`` of the data.
            num_classes: Labels of the data set; used only when ``spec.conditional``.
            trust_plugins: Import the modules of networks named ``module:Class``; False for a
                spec read from a file (see `VAE.from_config`).
        """
        return cls(**arguments_from_spec(spec, image_shape, num_classes, trust_plugins))

    def spec(self) -> ModelSpec:
        """The `ModelSpec` of this VAE: what ``config.json`` records under ``"model"``.

        Likelihood options that `ModelSpec` has no field for (those of a likelihood you wrote)
        are not in it; ``config.json`` keeps them under ``"vae"`` (`VAE.config`).
        """
        lik = self.likelihood.config()
        fields = ("binarize", "scale", "learn_scale", "scale_mode")
        custom = {k: (None if v == "default" else v) for k, v in self._custom_nets.items()}
        lik_id = likelihood_id(self.likelihood)
        return ModelSpec(likelihood=lik_id.get("class", lik_id.get("name")), beta=self.beta,
                         z_dim=self.z_dim,
                         conditional=self.num_classes > 0 and not self.semi_supervised,
                         semi_supervised=self.semi_supervised, prior=part_spec(self.prior),
                         posterior=part_spec(self.posterior), latents=self.latents,
                         nets=self.nets, **custom,
                         **({"codebook_decay": self.posterior.decay} if self.is_vq else {}),
                         **{k: lik[k] for k in fields if k in lik})



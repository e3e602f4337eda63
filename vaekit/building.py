"""Building a VAE's parts from settings (`ModelSpec`) and from ``config.json`` records, and
recording them again, with the plug-in rules of `vaekit.plugins`.

    kwargs = arguments_from_spec(ModelSpec(prior="mog:10"), image_shape=(1, 28, 28))
    vae = VAE(**kwargs)                      # what VAE.from_spec does
    vae = VAE(**arguments_from_config(vae.config()))

A record that names code of its own (a network, prior, posterior or likelihood ``module:Class``,
or a likelihood a module registers) is code: its module is imported only if it already is, or
with ``trust=True``; otherwise a `ConfigError` names the module to import. Every other problem
(a class whose constructor does not take vaekit's arguments, networks that give the wrong
shapes) is one line naming the part and the contract.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from vaekit.devices import eval_mode
from vaekit.errors import ConfigError
from vaekit.likelihoods import LIKELIHOODS, Likelihood, get_likelihood
from vaekit.nets import (
    ConditionalDecoder,
    ConditionalEncoder,
    Decoder,
    Encoder,
    GridDecoder,
    GridEncoder,
    MLPDecoder,
    MLPEncoder,
    TwoLevelGridDecoder,
    TwoLevelGridEncoder,
)
from vaekit.pixelcnn import PixelCNNPrior
from vaekit.plugins import import_class, import_plugin, is_plugin_name
from vaekit.posteriors import POSTERIORS, Posterior
from vaekit.priors import PRIORS, CodePrior, Prior, VampPrior
from vaekit.settings import ModelSpec

__all__ = ["arguments_from_config", "arguments_from_spec", "build_likelihood", "build_net",
           "call_net", "check_nets", "construct_part", "likelihood_id", "net_name",
           "part_config", "part_from_config", "part_spec"]


CODE_PRIORS = {**PRIORS, "pixelcnn": PixelCNNPrior}
"""The priors a config may name: the built-in ones and the VQ-VAE's learned `PixelCNNPrior`."""


def arguments_from_config(config: dict[str, Any], trust: bool = False) -> dict[str, Any]:
    """The `VAE` constructor's arguments from a `VAE.config` record (fresh parts, no weights).

    Args:
        config: What `VAE.config` returned (e.g. a run's ``config.json`` record).
        trust: Import the modules the record names.
    """
    cfg = dict(config)
    lik_cfg = dict(cfg.pop("likelihood"))
    lik_module = cfg.pop("likelihood_module", None)
    for part in ("encoder", "decoder"):  # "module:Class" of a custom net, imported if allowed
        if cfg.get(part) in (None, "default"):
            cfg.pop(part, None)
        else:
            cfg[part] = import_class(cfg[part], part, trust=trust)
    if "class" in lik_cfg:  # a likelihood class given as module:Class, not registered
        lik_cls = import_class(lik_cfg.pop("class"), "likelihood", trust=trust)
        lik_cfg.pop("name", None)
        cfg["likelihood"] = build_likelihood(lik_cls, lik_cfg)
    else:
        name = lik_cfg.pop("name")
        if name not in LIKELIHOODS and lik_module:
            import_plugin(lik_module, f"the likelihood {name!r}", trust)
        cfg["likelihood"] = get_likelihood(name, **lik_cfg)
    z_dim, image_shape = cfg["z_dim"], tuple(cfg.get("image_shape", (1, 28, 28)))
    cfg["prior"] = part_from_config(cfg.get("prior"), "prior", CODE_PRIORS, trust,
                                    z_dim=z_dim, image_shape=image_shape)
    cfg["posterior"] = part_from_config(cfg.get("posterior"), "posterior", POSTERIORS, trust,
                                        z_dim=z_dim)
    return cfg


def arguments_from_spec(spec: ModelSpec, image_shape: Sequence[int] = (1, 28, 28),
                        num_classes: int = 0, trust: bool = True) -> dict[str, Any]:
    """The `VAE` constructor's arguments for the model a `ModelSpec` describes.

    Args:
        spec: The model settings.
        image_shape: ``(channels, height, width)`` of the data.
        num_classes: Labels of the data set; used only when ``spec.conditional``.
        trust: Import the modules of parts named ``module:Class`` (False for a spec read
            from a file).
    """
    options = spec.likelihood_options()
    if spec.scale_mode == "channel":
        options["channels"] = int(image_shape[0])
    nets = {part: None if name is None else import_class(name, part, trust=trust)
            for part, name in (("encoder", spec.encoder), ("decoder", spec.decoder))}
    prior: str | Prior = spec.prior
    posterior: str | Posterior = spec.posterior
    if is_plugin_name(spec.prior):
        prior = construct_part(import_class(spec.prior, "prior", trust=trust), "prior",
                               spec.z_dim)
    if is_plugin_name(spec.posterior):
        posterior = construct_part(import_class(spec.posterior, "posterior", trust=trust),
                                   "posterior", spec.z_dim)
    if is_plugin_name(spec.likelihood):
        likelihood = build_likelihood(import_class(spec.likelihood, "likelihood", trust=trust),
                                      options)
    else:
        likelihood = get_likelihood(spec.likelihood, **options)
    return dict(z_dim=spec.z_dim, likelihood=likelihood, beta=spec.beta,
                image_shape=tuple(image_shape),
                num_classes=num_classes if spec.conditional or spec.semi_supervised else 0,
                semi_supervised=spec.semi_supervised,
                prior=prior, posterior=posterior, latents=spec.latents, nets=spec.nets,
                codebook_decay=spec.codebook_decay, **nets)


def call_net(net: nn.Module, inp: torch.Tensor, y: torch.Tensor | None) -> Any:
    """``net(inp)``, or ``net(inp, y)`` for the nets of a conditional VAE."""
    return net(inp) if y is None else net(inp, y)


def build_net(cls: type, part: str, num_classes: int, image_shape: tuple[int, ...], z_dim: int,
               out_channels: int | None = None) -> nn.Module:
    """A user's net class built by the documented contract (see `VAE`), or a one-line error.

    Unconditional: ``Class(image_shape, z_dim)`` / ``Class(image_shape, z_dim, out_channels)``;
    conditional: the same with ``out_channels`` by name and ``num_classes=K`` added.
    """
    args: tuple[Any, ...] = (image_shape, z_dim)
    kwargs: dict[str, Any] = {}
    if part == "decoder":
        if num_classes:
            kwargs["out_channels"] = out_channels
        else:
            args += (out_channels,)
    if num_classes:
        kwargs["num_classes"] = num_classes
    shown = ", ".join(["image_shape", "z_dim", *(["out_channels"] if part == "decoder" and
                                                 not num_classes else []),
                       *(f"{k}={v!r}" for k, v in kwargs.items())])
    try:
        return cls(*args, **kwargs)
    except TypeError as e:
        kind = "a conditional " if num_classes else "an "
        raise ConfigError(f"cannot build the {part} {cls.__qualname__}({shown}) ({e}); "
                          f"{kind}{part} class must take these arguments (see vaekit.VAE)"
                          ) from None


def net_name(net: nn.Module, nets: str) -> str:
    """``"default"`` for vaekit's own nets of the family ``nets``, else ``module:Class``."""
    family = ((MLPEncoder, MLPDecoder) if nets.startswith("mlp") else
              (GridEncoder, GridDecoder, TwoLevelGridEncoder, TwoLevelGridDecoder) if nets == "vq"
              else (Encoder, Decoder))
    if type(net) in (*family, ConditionalEncoder, ConditionalDecoder):
        return "default"
    return f"{type(net).__module__}:{type(net).__qualname__}"


def likelihood_id(lik: Likelihood) -> dict[str, str]:
    """``{"name": ...}`` for a registered likelihood, ``{"class": "module:Class"}`` otherwise."""
    if LIKELIHOODS.get(lik.name) is type(lik):
        return {"name": lik.name}
    return {"class": f"{type(lik).__module__}:{type(lik).__qualname__}"}


def build_likelihood(cls: type, options: dict[str, Any]) -> Likelihood:
    """``cls(**options)`` for a likelihood class named as module:Class."""
    if not issubclass(cls, Likelihood):
        raise ConfigError(f"{cls.__module__}:{cls.__qualname__} is not a vaekit Likelihood")
    try:
        return cls(**options)
    except TypeError as e:
        raise ConfigError(f"the likelihood {cls.__qualname__} does not take these options: {e}"
                          ) from None


def part_config(part: Prior | Posterior, builtin_module: str) -> dict[str, Any]:
    """How `VAE.config` records a prior or posterior: its name and arguments, or its class."""
    if type(part).__module__ in (builtin_module, "vaekit.pixelcnn"):
        return {"name": part.name, **part.config()}
    return {"class": f"{type(part).__module__}:{type(part).__qualname__}", **part.config()}


def part_spec(part: Prior | Posterior) -> str:
    """The `ModelSpec` string of a prior or posterior: ``"mog:10"``, ``"iaf:2"``, or its class."""
    if type(part).__module__ not in ("vaekit.priors", "vaekit.posteriors", "vaekit.pixelcnn"):
        return f"{type(part).__module__}:{type(part).__qualname__}"
    count = part.config().get("k", part.config().get("steps"))
    if count is None or isinstance(part, CodePrior):  # a prior over codes has the codebook's K
        return part.name
    return f"{part.name}:{count}"


def part_from_config(cfg: dict[str, Any] | None, part: str, builtin: dict[str, type],
                trust: bool, **kwargs: Any) -> Any:
    """Rebuild a prior or posterior from `part_config` output (None: the default)."""
    if cfg is None:
        return "standard" if part == "prior" else "diagonal"
    cfg = dict(cfg)
    if "class" in cfg:
        cls = import_class(cfg.pop("class"), part, trust=trust)
    else:
        cls = builtin[cfg.pop("name")]
    if "image_shape" in cfg or (cls is VampPrior):
        cfg["image_shape"] = tuple(cfg.get("image_shape", kwargs.get("image_shape")))
    return construct_part(cls, part, kwargs["z_dim"], **cfg)


def construct_part(cls: type, part: str, *args: Any, **kwargs: Any) -> Any:
    """``cls(*args, **kwargs)`` for a prior or posterior, with a one-line error for a class whose
    constructor does not take them."""
    try:
        return cls(*args, **kwargs)
    except TypeError as e:
        shown = ", ".join([*map(repr, args), *(f"{k}={v!r}" for k, v in kwargs.items())])
        raise ConfigError(f"cannot build the {part} {cls.__qualname__}({shown}): {e}; a {part} "
                          f"class is built as Class(z_dim, **config()), see docs/extending.md"
                          ) from None


@torch.no_grad()
def check_nets(encoder: nn.Module, decoder: nn.Module, image_shape: tuple[int, ...], z_dim: int,
                out_channels: int, num_classes: int) -> None:
    """Run both nets once on two blank inputs and check the shapes they give back."""
    how_e, how_d = (" as encoder(x, y)", " as decoder(z, y)") if num_classes else ("", "")
    with eval_mode(encoder, decoder):
        dev = next(encoder.parameters(), torch.empty(0)).device
        y = torch.zeros(2, dtype=torch.long, device=dev) if num_classes else None
        x = torch.zeros(2, *image_shape, device=dev)
        try:
            out = call_net(encoder, x, y)
        except Exception as e:
            raise ConfigError(f"the encoder cannot take {image_shape} images{how_e}: {e}"
                              ) from None
        if not (isinstance(out, tuple) and len(out) == 2
                and all(t.shape == (2, z_dim) for t in out)):
            raise ConfigError(f"the encoder must return (z_loc, z_scale), each [batch, {z_dim}]")
        try:
            img = call_net(decoder, torch.zeros(2, z_dim, device=dev), y)
        except Exception as e:
            raise ConfigError(f"the decoder cannot take z of size {z_dim}{how_d}: {e}") from None
        want = (2, out_channels, *image_shape[1:])
        if tuple(img.shape) != want:
            raise ConfigError(f"the decoder returns {tuple(img.shape)[1:]} per image, expected "
                              f"{want[1:]} for {tuple(image_shape)} images and this likelihood")


def check_grid_nets(encoder: nn.Module, decoder: nn.Module, image_shape: tuple[int, ...],
                    dim: int, out_channels: int, levels: int = 1) -> tuple[tuple[int, ...], ...]:
    """Run a VQ-VAE's nets once on blank inputs, check their shapes, and return the grids'
    sizes, bottom first: the encoder maps images to ``[batch, dim, *grid]``, the decoder such
    grids back to ``[batch, out_channels, H, W]``. Of two levels, the encoder gives
    ``(h, z_e_top)`` with ``z_e_top`` ``[batch, dim, *top_grid]``, ``encoder.merge(h, z_top)``
    the bottom grid, and ``decoder(z_bottom, z_top)`` the images."""
    shape = "(h, [batch, {dim}, h', w']) with a merge(h, z_top) method" if levels == 2 \
        else "a grid [batch, {dim}, h, w]"

    def is_grid(t: Any) -> bool:
        return isinstance(t, torch.Tensor) and t.dim() >= 3 and t.shape[:2] == (2, dim)

    with eval_mode(encoder, decoder):
        dev = next(encoder.parameters(), torch.empty(0)).device
        try:
            out = encoder(torch.zeros(2, *image_shape, device=dev))
            if levels == 2 and isinstance(out, tuple) and len(out) == 2 and is_grid(out[1]):
                grids = (encoder.merge(out[0], torch.zeros_like(out[1])), out[1])
            else:
                grids = (out,)
        except Exception as e:
            raise ConfigError(f"the encoder cannot take {image_shape} images: {e}") from None
        if len(grids) != levels or not all(is_grid(g) for g in grids):
            raise ConfigError(f"a VQ-VAE's encoder must return {shape.format(dim=dim)} (z_dim is "
                              "the size of a code vector)")
        try:
            img = decoder(*(torch.zeros_like(g) for g in grids))
        except Exception as e:
            raise ConfigError(f"the decoder cannot take grids "
                              f"{', '.join(str(tuple(g.shape[1:])) for g in grids)}: {e}"
                              ) from None
        want = (2, out_channels, *image_shape[1:])
        if tuple(img.shape) != want:
            raise ConfigError(f"the decoder returns {tuple(img.shape)[1:]} per image, expected "
                              f"{want[1:]} for {tuple(image_shape)} images and this likelihood")
    return tuple(tuple(g.shape[2:]) for g in grids)

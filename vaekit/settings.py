"""Every setting of a run, declared once: a typed dataclass field with its default, help and checks.

    spec = ModelSpec(z_dim=16, likelihood="gaussian", scale=0.05)
    train = TrainSettings(epochs=20, lr=1e-3)
    train = dataclasses.replace(train, batch_size=128)     # settings are frozen values
    sections = read_settings("runs/mnist/config.json")   # a saved run's settings, checked

Four classes, one per part of a run: `ModelSpec` (what model to build), `DataSpec` (which images),
`TrainSettings` (how to fit it) and `RunOptions` (where the run goes and how it is shown). The
command line's ``vaekit fit`` options, ``config.json`` (``dataclasses.asdict``), ``vaekit fit
--config FILE``, `vaekit.fit` and resume are all derived from these fields: each field's
``metadata`` holds its help text, command-line flag, choices and bounds, and ``__post_init__``
checks every value, naming the field (as Python spells it) in a `ConfigError`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from vaekit.errors import ConfigError

__all__ = [
    "ModelSpec",
    "DataSpec",
    "TrainSettings",
    "RunOptions",
    "SECTIONS",
    "setting",
    "check_fields",
    "field_type",
    "from_mapping",
    "read_settings",
    "replace",
    "parse_beta_schedule",
    "parse_lr_schedule",
    "DEFAULT_VAL",
    "parse_named_count",
]


MAX_Z_DIM = 65536
"""The largest latent dimension vaekit builds (a bound against sizes that would exhaust memory)."""


def setting(default: Any, help: str, *, flag: str | None = None, group: str | None = None,
            choices: tuple[str, ...] | None = None, min: float | None = None,
            max: float | None = None, min_open: bool = False, negatable: bool = False,
            shown_default: str | None = None, flag_value: str | None = None) -> Any:
    """A dataclass field with the metadata the command line and the checks are derived from.

    Args:
        default: The default value.
        help: One or two sentences for ``--help`` and the docs.
        flag: The command-line flag, if not ``--`` + the field name with dashes.
        group: Heading of the option in ``vaekit fit --help`` (default: the class's).
        choices: The allowed values of a string setting.
        min: Smallest allowed value of a number.
        max: Largest allowed value of a number.
        min_open: ``min`` itself is not allowed.
        negatable: A boolean shown as ``--flag/--no-flag`` (else a plain on-switch).
        shown_default: What ``--help`` says the default is, when it depends on other settings.
        flag_value: The value of the flag given alone (a choice that may be given without one).
    """
    meta = {"help": help, "flag": flag, "group": group, "choices": choices, "min": min,
            "max": max, "min_open": min_open, "negatable": negatable,
            "shown_default": shown_default, "flag_value": flag_value}
    return field(default=default, metadata=meta)


def _base_type(tp: Any) -> tuple[type, bool]:
    """``(type, optional)`` of an annotation such as ``int``, ``int | None`` or ``str | None``;
    ``(tuple, False)`` for ``tuple[str, ...]`` (a setting given any number of times)."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    if typing.get_origin(tp) is tuple:
        return tuple, False
    return tp, False


def field_type(cls: type, name: str) -> tuple[type, bool]:
    """``(type, optional)`` of a settings field: ``(int, True)`` for ``int | None``."""
    return _base_type(typing.get_type_hints(cls)[name])


def _type_name(tp: type) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string",
            tuple: "a list of strings"}[tp]


def check_fields(obj: Any) -> None:
    """Check every field of a settings dataclass against its type and metadata.

    Raises:
        ConfigError: naming the first field whose value is not allowed.
    """
    hints = typing.get_type_hints(type(obj))
    for f in fields(obj):
        value = getattr(obj, f.name)
        tp, optional = _base_type(hints[f.name])
        if value is None:
            if optional:
                continue
            raise ConfigError(f"{f.name} must be {_type_name(tp)}, got None")
        if tp is tuple and isinstance(value, list):  # from JSON
            value = tuple(value)
            object.__setattr__(obj, f.name, value)
        ok = (isinstance(value, bool) if tp is bool else
              isinstance(value, int) and not isinstance(value, bool) if tp is int else
              isinstance(value, (int, float)) and not isinstance(value, bool) if tp is float else
              isinstance(value, tuple) and all(isinstance(v, str) for v in value)
              if tp is tuple else isinstance(value, tp))
        if not ok:
            raise ConfigError(f"{f.name} must be {_type_name(tp)}, got {value!r}")
        if tp is tuple:
            bad = [v for v in value if f.metadata.get("choices") and v not in f.metadata["choices"]]
            if bad or len(set(value)) != len(value):
                raise ConfigError(f"{f.name} must be distinct values of "
                                  f"{', '.join(f.metadata.get('choices') or ())}; got {value!r}")
            continue
        if tp is float and not math.isfinite(value):
            raise ConfigError(f"{f.name} must be a finite number, got {value!r}")
        m = f.metadata
        if m.get("choices") and value not in m["choices"]:
            raise ConfigError(f"{f.name} must be one of {', '.join(m['choices'])}; got {value!r}")
        lo, hi = m.get("min"), m.get("max")
        if lo is not None and (value < lo or (m.get("min_open") and value == lo)):
            raise ConfigError(f"{f.name} must be {'>' if m.get('min_open') else '>='} {lo:g}, "
                              f"got {value!r}")
        if hi is not None and value > hi:
            raise ConfigError(f"{f.name} must be <= {hi:g}, got {value!r}")


def parse_named_count(spec: str, plain: str, counted: tuple[str, ...],
                      key: str) -> tuple[str, dict[str, Any]] | None:
    """``(name, {})`` for ``plain``, ``(name, {key: N})`` for ``"name:N"`` with a name in
    ``counted`` and N >= 1, None for anything else (e.g. ``"mog:10"`` -> ``("mog", {"k": 10})``)."""
    name, _, arg = spec.partition(":")
    if name == plain and not arg:
        return name, {}
    if name in counted and re.fullmatch(r"[0-9]{1,9}", arg) and int(arg) >= 1:  # ASCII digits
        return name, {key: int(arg)}
    return None


def parse_lr_schedule(spec: str) -> tuple[str, int]:
    """``(kind, patience)`` of ``"constant"``, ``"cosine"`` or ``"plateau[:PATIENCE]"``.

    Raises:
        ConfigError: for anything else.
    """
    found = parse_named_count(spec, "plateau", ("plateau",), "patience")
    if spec in ("constant", "cosine"):
        return spec, 0
    if found is not None:
        return "plateau", found[1].get("patience", 5)
    raise ConfigError(f"bad lr_schedule {spec!r}; use constant, cosine or plateau[:PATIENCE] "
                      "(PATIENCE >= 1 epochs)")


def parse_beta_schedule(spec: str) -> tuple[str, int, float]:
    """``(kind, steps, ratio)`` of ``"constant"``, ``"linear:STEPS"`` or ``"cyclical:STEPS[:RATIO]"``.

    Raises:
        ConfigError: for anything else.
    """
    kind, *args = spec.split(":")
    try:
        if kind == "constant" and not args:
            return "constant", 0, 0.5
        if kind == "linear" and len(args) == 1 and int(args[0]) >= 0:
            return "linear", int(args[0]), 0.5
        if kind == "cyclical" and len(args) in (1, 2):
            ratio = float(args[1]) if len(args) == 2 else 0.5
            if int(args[0]) >= 1 and 0 < ratio <= 1:
                return "cyclical", int(args[0]), ratio
    except ValueError:
        pass
    raise ConfigError(f"bad beta schedule {spec!r} (beta_schedule); use constant, linear:STEPS or "
                      "cyclical:STEPS[:RATIO] (e.g. cyclical:2000:0.5)")


# -- the four sections of a run -------------------------------------------------------------------
@dataclass(frozen=True)
class ModelSpec:
    """What model to build: the latent space, p(x|z) and its options, β, the networks.

    `vaekit.VAE.from_spec` builds it for a data set's image shape and labels.
    """

    likelihood: str = setting(
        "bernoulli", "p(x|z): bernoulli, continuous-bernoulli, gaussian, laplace, "
        "discretized-logistic, discriminator (the VAE-GAN of Larsen et al. 2016: a Gaussian on "
        "a discriminator's features, trained against it), one you registered, or your own "
        "Likelihood as package.module:Class.")
    binarize: bool | None = setting(
        None, "Bernoulli only: binarize grayscale images each batch (default), or train on "
        "grayscale targets like the seed notebook's BCE (not a proper likelihood).",
        negatable=True)
    scale: float | None = setting(
        None, "Gaussian, Laplace, discretized-logistic: observation scale (initial value if "
        "learned).", min=0, min_open=True, shown_default="0.1; discretized-logistic 0.05")
    learn_scale: bool | None = setting(
        None, "Gaussian, Laplace, discretized-logistic: learn one global scale.")
    scale_mode: str | None = setting(
        None, "Gaussian, Laplace, discretized-logistic: a fixed scale, one learned, one per "
        "channel, or one per pixel predicted by the decoder.",
        choices=("fixed", "global", "channel", "pixel"),
        shown_default="fixed; discretized-logistic pixel")
    feature_layer: int | None = setting(
        None, "discriminator (the VAE-GAN): the discriminator's hidden block whose features "
        "p(x|z) measures (1 = the first).", min=1,
        shown_default="its last hidden block, as in Larsen et al. 2016")
    prior: str = setting("standard", "p(z): standard (Normal(0, I)), mog:K (a mixture of K "
                         "learned Gaussians), vamp:K (VampPrior, K pseudo-inputs) or your own "
                         "Prior as package.module:Class; for a VQ-VAE uniform over its codes "
                         "(what standard means there).")
    posterior: str = setting("diagonal", "q(z|x): diagonal (Normal), iaf:N (N inverse "
                             "autoregressive flow steps), vq:K (a VQ-VAE: the point mass on the "
                             "nearest of K codes of a 7x7 grid of z_dim-vectors for 28x28 images, "
                             "van den Oord et al. 2017), or your own Posterior as "
                             "package.module:Class.")
    codebook_decay: float = setting(
        0.99, "vq:K: the codebook's moving-average decay (0: a codebook learned by the codebook "
        "loss instead).", min=0, max=0.9999)
    latents: int = setting(1, "Stochastic layers: 1 (z) or 2 (z2 from the prior, z1 given z2, "
                           "the decoder reads z1; the posterior is q(z1|x)); with vq:K, 2 is "
                           "the VQ-VAE-2 (a top grid z2 and a bottom grid z1 given it, the "
                           "decoder reads both).", min=1, max=2)
    beta: float = setting(1.0, "Weight of the KL term (β-VAE); 1 is the ELBO.", min=0, max=1e4)
    z_dim: int = setting(32, "Latent dimension.", min=1, max=MAX_Z_DIM)
    conditional: bool = setting(
        False, "A conditional VAE on the data set's labels: p(x|z,y), q(z|x,y).")
    semi_supervised: bool = setting(
        False, "Kingma et al.'s M2 on the data set's labels: a classifier q(y|x) beside "
        "p(x|z,y) and q(z|x,y); y is observed for the --labels labelled images and summed out "
        "by enumeration for the others.")
    nets: str = setting("dcgan", "Encoder and decoder: dcgan (the seed's conv nets) or mlp[:H] "
                        "(two fully connected layers of H units, default 300, as in the "
                        "published MNIST figures).")
    encoder: str | None = setting(
        None, "Your own encoder, package.module:Class, built as Class(image_shape, z_dim) "
        "(--conditional: Class(image_shape, z_dim, num_classes=K), called as encoder(x, y)).")
    decoder: str | None = setting(
        None, "Your own decoder, package.module:Class, built as "
        "Class(image_shape, z_dim, out_channels) (--conditional: Class(image_shape, z_dim, "
        "out_channels=C, num_classes=K), called as decoder(z, y)).")

    def __post_init__(self) -> None:
        check_fields(self)
        for key, names, shown in (("prior", "standard|uniform|pixelcnn|(mog|vamp):[1-9][0-9]*",
                                   "standard, mog:K, vamp:K, uniform"),
                                  ("posterior", "diagonal|vq|(iaf|vq):[1-9][0-9]*",
                                   "diagonal, iaf:N, vq:K")):
            value = getattr(self, key)
            if not re.fullmatch(rf"{names}|[\w.]+:[A-Za-z_][\w.]*", value):
                raise ConfigError(f"bad {key} {value!r}; use {shown} (K, N >= 1) or "
                                  "package.module:Class")
        if self.semi_supervised and self.conditional:
            raise ConfigError("semi_supervised is already conditioned on the labels: drop "
                              "conditional")
        if not re.fullmatch(r"dcgan|mlp(:[1-9][0-9]*)?", self.nets):
            raise ConfigError(f"bad nets {self.nets!r}; use dcgan, mlp or mlp:H (H >= 1)")

    def likelihood_options(self) -> dict[str, Any]:
        """The likelihood's keyword arguments that were set (the others keep its defaults)."""
        return {k: v for k, v in (("binarize", self.binarize), ("scale", self.scale),
                                  ("learn_scale", self.learn_scale),
                                  ("scale_mode", self.scale_mode),
                                  ("feature_layer", self.feature_layer)) if v is not None}


DEFAULT_VAL = 10000
"""Training images held out for validation by default (MNIST's usual 50,000 / 10,000 split)."""


@dataclass(frozen=True)
class DataSpec:
    """Which images: the data set, where it lives, its size and how much of it."""

    dataset: str = setting(
        "mnist", "mnist, fashion-mnist, cifar10 (torchvision), sprites or sprites:small "
        "(dSprites-like 64x64 images with known factors, rendered by vaekit), dsprites:PATH "
        "(DeepMind's .npz) or folder:PATH (any images; one sub-folder per class, or none).",
        flag="--data")
    root: str | None = setting(
        None, "Folder with the data sets (MNIST/raw/*-ubyte ...).", flag="--data-root",
        shown_default="$VAEKIT_DATA, else ~/.cache/vaekit/data")
    download: bool = setting(True, "Download the data set with torchvision when it is missing.",
                             negatable=True)
    image_size: int | None = setting(None, "Resize the images to this size (28, 32 or 64 fit "
                                     "the default networks).", min=1,
                                     shown_default="the data set's own; folders: 32")
    channels: int | None = setting(None, "Convert to grayscale (1) or RGB (3).", min=1, max=3,
                                   shown_default="the data set's own")
    limit_train: int | None = setting(None, "Use only the first N training images (smoke runs).",
                                      min=1)
    limit_test: int | None = setting(None, "Use only the first N test images.", min=1)
    val: int | None = setting(
        None, "Hold out the last N training images for validation: their -ELBO (and IWAE bound "
        "when training IWAE) every epoch, the best checkpoint, early stopping and the LR "
        "plateau follow it; 0: none. "
        "--limit-train limits the images left for training.", min=0,
        shown_default="a sixth, at most 10000; 0 with --limit-train")

    def __post_init__(self) -> None:
        check_fields(self)
        if self.channels not in (None, 1, 3):
            raise ConfigError(f"channels must be 1 (grayscale) or 3 (RGB), got {self.channels!r}")

    def val_size(self, n_images: int) -> int:
        """How many of ``n_images`` training images are held out: ``val``; by default a sixth,
        at most 10000 (MNIST: 10000 of 60000), and none with ``limit_train``."""
        if self.val is not None:
            return self.val
        return 0 if self.limit_train is not None else min(DEFAULT_VAL, n_images // 6)


@dataclass(frozen=True)
class TrainSettings:
    """How to fit: epochs, batch, optimizer, objective, seed, device, checkpoints, precision."""

    epochs: int = setting(10, "Passes over the training data (with --resume: the new total).",
                          min=1)
    batch_size: int = setting(1024, "Images per step.", min=1)
    lr: float = setting(2e-3, "Adam learning rate.", min=0, min_open=True)
    objective: str = setting("elbo", "Training objective: elbo, iwae, capacity, free-bits, "
                             "beta-tc (β-TCVAE, Chen et al. 2018), factor-vae (Kim & Mnih "
                             "2018), dip-vae (Kumar et al. 2018), or "
                             "one registered with vaekit.objectives.register_objective; the "
                             "test -ELBO is reported whatever it is. With --likelihood "
                             "discriminator, elbo is the VAE-GAN's step.")
    beta_schedule: str = setting("constant", "β over steps: constant, linear:STEPS (warm-up) "
                                 "or cyclical:STEPS[:RATIO].")
    iwae_samples: int = setting(5, "K for the iwae objective.", min=1)
    gamma: float = setting(1000.0, "γ of the capacity objective: γ|KL - C|.", min=0, max=1e8)
    capacity: float = setting(25.0, "Final C in nats per image of the capacity objective.",
                              min=0, max=1e6)
    capacity_steps: int = setting(10000, "Steps over which C rises linearly from 0.", min=0)
    free_bits: float = setting(0.5, "λ in nats per latent dimension of the free-bits "
                               "objective.", min=0, max=1e6)
    gan_gamma: float = setting(
        1.0, "VAE-GAN (--likelihood discriminator): Larsen's γ, the weight of the feature "
        "reconstruction against the adversarial terms in the decoder's loss.", min=0,
        min_open=True, max=1e8)
    disc_lr: float = setting(2e-4, "VAE-GAN: the discriminator's Adam learning rate (betas "
                             "0.5, 0.999, as DCGAN's); factor-vae: its discriminator's (betas "
                             "0.5, 0.9; Kim & Mnih: 1e-4).", min=0, min_open=True)
    commitment: float = setting(
        0.25, "VQ-VAE (--posterior vq:K): the weight of the commitment loss "
        "||z_e - sg(e)||^2 (van den Oord et al.'s beta).", min=0, max=1e4)
    labels: int = setting(
        100, "--semi-supervised: labelled training images, drawn class-balanced with --seed "
        "(recorded in RUN/labelled.json); 0: none, an unsupervised mixture VAE scored by "
        "clustering accuracy.", min=0)
    labelled_batch: int = setting(
        100, "--semi-supervised: labelled images added to a step (at most --labels).",
        min=1)
    labelled_every: int = setting(
        1, "--semi-supervised: add the labelled batch to every N-th step (1: every step; Pyro's "
        "example sees its labelled images about once per epoch).", min=1)
    classifier_weight: float = setting(
        46.0, "--semi-supervised: the weight of the classifier's cross-entropy on the labelled "
        "images (Kingma et al.'s alpha per labelled image; 46 as Pyro's M2 example).", min=0,
        max=1e8)
    tc_alpha: float = setting(1.0, "beta-tc: α, the weight of the index-code mutual "
                              "information.", min=0, max=1e4)
    tc_beta: float = setting(6.0, "beta-tc: β, the weight of the total correlation (Chen et "
                             "al.'s dSprites runs: 6).", min=0, max=1e4)
    tc_gamma: float = setting(1.0, "beta-tc: γ, the weight of the dimension-wise KL.", min=0,
                              max=1e4)
    tc_sampling: str = setting("mss", "beta-tc: how the batch estimates the aggregate "
                               "posterior q(z): mss (minibatch stratified sampling) or mws "
                               "(minibatch weighted sampling).", choices=("mss", "mws"))
    factor_gamma: float = setting(35.0, "factor-vae: γ, the weight of the total correlation "
                                  "its discriminator estimates (its Adam learns at "
                                  "--disc-lr).", min=0, max=1e6)
    dip_type: str = setting("i", "dip-vae: which covariance the penalty matches to the "
                            "identity: i, that of the posterior means; ii, that of q(z).",
                            choices=("i", "ii"))
    dip_lambda_od: float = setting(10.0, "dip-vae: λ_od, the weight of the covariance's "
                                   "off-diagonal terms.", min=0, max=1e6)
    dip_lambda_d: float = setting(100.0, "dip-vae: λ_d, the weight of its diagonal terms "
                                  "(Kumar et al.: 10 λ_od for type i, λ_od for ii).", min=0,
                                  max=1e6)
    lr_schedule: str = setting(
        "constant", "Learning rate over training: constant, cosine (from --lr down to --lr-min "
        "over all steps) or plateau[:PATIENCE] (halve it when the validation -ELBO has not "
        "improved for more than PATIENCE epochs, default 5; needs --val).")
    lr_min: float = setting(0.0, "Lowest learning rate of the cosine and plateau schedules.",
                            min=0)
    clip_grad: float = setting(0.0, "Clip the gradients' global norm to this (0: no clipping).",
                               min=0)
    ema: float = setting(0.0, "Decay of an exponential moving average of the weights, which "
                         "is what is validated, tested, saved and loaded (0: none; e.g. 0.999).",
                         min=0)
    patience: int = setting(0, "Early stopping: stop after N epochs without a better "
                            "validation -ELBO (0: never; needs --val).", min=0)
    seed: int = setting(0, "Seeds Pyro, torch, the shuffling and the initial weights.", min=0,
                        max=2**32 - 1)
    device: str = setting("auto", "Where to train; auto picks CUDA when there is a GPU.",
                          choices=("auto", "cpu", "cuda"))
    checkpoint_every: int = setting(0, "Also checkpoint every N steps (0: at the end of each "
                                    "epoch only).", min=0)
    skip_nonfinite: bool = setting(False, "Skip batches whose loss is NaN/inf (counted in "
                                   "metrics.csv) instead of stopping.")
    deterministic: bool = setting(False, "Use deterministic torch algorithms (for GPUs; CPU runs "
                                  "already repeat).")
    channels_last: bool = setting(True, "Channels-last memory format for the networks (faster "
                                  "convolutions).", negatable=True)
    compile: bool = setting(False, "torch.compile the encoder and decoder (worth it on GPUs).")
    amp: str = setting(
        "off", "Mixed precision, bfloat16 autocast for the networks: on; off; or auto, on only "
        "where a probe of a few steps at start-up measures it at least 5% faster than float32 "
        "(on a GPU: where it has bf16). --amp alone is on; a run keeps its decision when it "
        "resumes.", choices=("auto", "on", "off"), flag_value="on")
    sync_batchnorm: bool = setting(False, "With several processes: BatchNorm statistics of the "
                                   "global batch.")

    def __post_init__(self) -> None:
        if isinstance(self.amp, bool):  # a config of vaekit <= 0.1: amp true / false
            object.__setattr__(self, "amp", "on" if self.amp else "off")
        check_fields(self)
        parse_beta_schedule(self.beta_schedule)
        parse_lr_schedule(self.lr_schedule)
        if self.ema >= 1:
            raise ConfigError(f"ema must be below 1 (a decay such as 0.999), got {self.ema!r}")
        if self.lr_min >= self.lr and self.lr_schedule != "constant":
            raise ConfigError(f"lr_min ({self.lr_min:g}) must be below lr ({self.lr:g})")
        if self.beta_schedule != "constant" and self.objective != "elbo":
            raise ConfigError("beta_schedule only applies to the elbo objective")


@dataclass(frozen=True)
class RunOptions:
    """Where the run goes and how it is shown; not needed to repeat its numbers."""

    out: str | None = setting(None, "Run folder.", group="Run folder",
                              shown_default="runs/<timestamp>")
    overwrite: bool = setting(False, "Replace the vaekit run in the --out folder (a folder of "
                              "other files is never touched; never read from a --config file).")
    nproc: int = setting(1, "Train data-parallel in N processes on this machine (as "
                         "torchrun would); --batch-size stays the global batch.", min=1)
    progress: bool = setting(True, "Show a progress bar (the per-epoch lines are printed "
                             "either way).", negatable=True)
    logger: tuple[str, ...] = setting(
        (), "Also log to TensorBoard (RUN/tensorboard) or MLflow; repeat for both. Needs "
        'pip install "vaekit[tracking]".', choices=("tensorboard", "mlflow"),
        group="Tracking")
    mlflow_uri: str | None = setting(
        None, "MLflow tracking URI.", shown_default="sqlite:///<the run folder's parent>/mlflow.db")

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True)
class PriorSettings:
    """The second stage of a VQ-VAE (``vaekit fit-prior``): a `vaekit.pixelcnn.PixelCNNPrior`
    fitted by maximum likelihood to the training images' codes, the VQ-VAE frozen."""

    epochs: int = setting(20, "Passes over the training set's codes.", min=1)
    batch_size: int = setting(128, "Code grids per step.", min=1)
    lr: float = setting(1e-3, "Adam's learning rate.", min=0, min_open=True)
    hidden: int = setting(64, "The PixelCNN's channels.", min=1, max=4096)
    layers: int = setting(5, "The PixelCNN's residual masked blocks.", min=0, max=64)
    seed: int = setting(0, "Seeds the PixelCNN's weights and the order of the grids.", min=0)

    def __post_init__(self) -> None:
        check_fields(self)


SECTIONS: dict[str, type] = {"model": ModelSpec, "data": DataSpec, "train": TrainSettings,
                             "run": RunOptions}
"""The sections of ``config.json`` and of a ``--config`` file, and their classes."""

RESUME_OVERRIDES = ("epochs", "device", "lr", "skip_nonfinite", "checkpoint_every", "clip_grad",
                    "patience")
"""The training settings a resumed run may change; the others come from its ``config.json``."""

RESUME_SETTINGS = (*(("train", k) for k in RESUME_OVERRIDES), ("data", "root"),
                   ("data", "download"), ("run", "progress"), ("run", "nproc"),
                   ("run", "mlflow_uri"))
"""Every ``(section, setting)`` that ``vaekit fit --resume`` accepts."""

_RECORDED = ("vaekit_version", "vae", "data_info")
"""Keys of a run's ``config.json`` that are facts about the run, not settings."""


def from_mapping(cls: type, values: Mapping[str, Any], where: str = "") -> Any:
    """``cls(**values)``, with a one-line `ConfigError` naming an unknown or bad key.

    Args:
        cls: A settings class.
        values: Field values (others keep their defaults).
        where: Prefix for the key in messages (e.g. ``"config.json: train."``).
    """
    known = {f.name for f in fields(cls)}
    for key in values:
        if key not in known:
            raise ConfigError(f"{where}{key} is not a setting; {cls.__name__} has: "
                              f"{', '.join(sorted(known))}")
    try:
        return cls(**values)
    except ConfigError as e:
        raise ConfigError(f"{where}{e}") from None


def read_settings(path: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """The settings in a JSON or TOML file (a run's ``config.json``, or one written by hand).

    The file has up to four sections, ``model``, ``data``, ``train`` and ``run``, each a table
    of that class's fields; a run's recorded facts (``vaekit_version``, ``vae``, ``data_info``)
    are ignored. Every value is checked by building the section's class.

    Returns:
        ``{section: {field: value}}`` as given in the file (checked, not filled with defaults).

    Raises:
        ConfigError: for a missing or unreadable file, an unknown section or key, or a bad value.
    """
    path = Path(path)
    try:
        if path.suffix == ".toml":
            import tomllib

            data = tomllib.loads(path.read_text())
        else:
            data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"no settings file {path}") from None
    except ModuleNotFoundError:
        raise ConfigError(f"{path}: reading TOML needs Python 3.11; use a JSON file") from None
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError, TOMLDecodeError
        raise ConfigError(f"{path} is not valid {path.suffix.lstrip('.').upper() or 'JSON'} "
                          f"({e})") from None
    except RecursionError:
        raise ConfigError(f"{path} is nested too deeply to be a settings file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path} is a folder; give the settings file") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a table of sections: {', '.join(SECTIONS)}")
    out: dict[str, dict[str, Any]] = {}
    for key, values in data.items():
        if key in _RECORDED:
            continue
        if key not in SECTIONS:
            raise ConfigError(f"{path}: unknown section {key!r}; use {', '.join(SECTIONS)}")
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: section {key!r} must be a table of settings")
        from_mapping(SECTIONS[key], values, f"{path}: {key}.")
        out[key] = dict(values)
    return out


def replace(obj: Any, **changes: Any) -> Any:
    """`dataclasses.replace` with a one-line error naming an unknown setting."""
    return from_mapping(type(obj), {**dataclasses.asdict(obj), **changes})

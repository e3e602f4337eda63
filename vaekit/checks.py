"""What `vaekit.train` checks before anything touches the disk, and the message it gives when
the loss stops being finite.

    splits = checked_splits(vae, as_splits(train_x, test_x), settings, world=1)

Every problem is one line that names it and the fix (`ConfigError`, `DataError`).
"""

from __future__ import annotations

import pyro
import torch

from vaekit.data import Splits, to_unit
from vaekit.errors import ConfigError, DataError
from vaekit.model import VAE
from vaekit.objectives import check_objective
from vaekit.semisupervised import labelled_subset
from vaekit.settings import TrainSettings
from vaekit.traces import site_log_probs

__all__ = ["as_splits", "checked_splits", "check_images", "check_labels", "nonfinite_message"]


def as_splits(train: torch.Tensor | Splits, test: torch.Tensor | None,
            train_labels: torch.Tensor | None, test_labels: torch.Tensor | None,
            val: torch.Tensor | None, val_labels: torch.Tensor | None) -> Splits:
    """The data of `fit` and `resume` as one `Splits` (given as one, or as tensors)."""
    if isinstance(train, Splits):
        if any(t is not None for t in (test, train_labels, test_labels, val, val_labels)):
            raise ConfigError("data given as Splits holds the test, validation and label "
                              "tensors too; leave those arguments out")
        return train
    return Splits((train, train_labels), None if val is None else (val, val_labels),
                  None if test is None else (test, test_labels))


def checked_splits(vae: VAE, splits: Splits, s: TrainSettings, world: int) -> Splits:
    """The data and settings checked against each other before anything touches the disk
    (one-line errors); labels dropped for an unconditional VAE."""
    train = splits.train[0]
    if s.batch_size > train.shape[0]:
        raise ConfigError(f"batch_size {s.batch_size} is larger than the {train.shape[0]} "
                          "training images; lower it")
    if s.batch_size % world:
        raise ConfigError(f"batch_size {s.batch_size} does not split over {world} processes; "
                          f"use a multiple of {world}")
    check_objective(vae, s.objective)
    wants_val = [what for what, on in (("patience", s.patience),
                                       ("lr_schedule plateau", s.lr_schedule.startswith("plateau")))
                 if on]
    if wants_val and splits.val is None:
        raise ConfigError(f"{' and '.join(wants_val)} needs validation images: hold some out "
                          "(--val N; val_data in Python)")
    parts = {"training": splits.train, "validation": splits.val, "test": splits.test}
    for what, part in parts.items():
        if part is not None:
            check_images(vae, part[0], what)
            if vae.num_classes:
                check_labels(vae, part[0], part[1], what)
    if getattr(vae, "semi_supervised", False):  # too few images of a class: before the disk
        labelled_subset(splits.train[1], s.labels, s.seed, vae.num_classes)
    if vae.num_classes:
        return splits
    return Splits((train, None), None if splits.val is None else (splits.val[0], None),
                  None if splits.test is None else (splits.test[0], None))


def check_images(vae: VAE, x: torch.Tensor, what: str) -> None:
    """A one-line `DataError` for images `fit` cannot train or test on."""
    if not isinstance(x, torch.Tensor):
        raise DataError(f"{what} images must be a torch.Tensor [N, C, H, W], got "
                        f"{type(x).__name__}; convert them with torch.as_tensor(...)")
    if x.dtype not in (torch.uint8, torch.float32):
        raise DataError(f"{what} images are {x.dtype}; pass uint8 (0..255) or float32 in [0, 1] "
                        "(e.g. x.float())")
    if x.dim() >= 1 and x.shape[0] == 0:
        raise DataError(f"there are no {what} images (the tensor is empty); pass at least one")
    if x.dim() != 4 or tuple(x.shape[1:]) != vae.image_shape:
        raise DataError(
            f"{what} images have shape {tuple(x.shape[1:])} but the model takes {vae.image_shape}; "
            "resize the images or build the VAE with image_shape matching them"
        )
    vae.likelihood.check(to_unit(x))


def check_labels(vae: VAE, x: torch.Tensor, labels: torch.Tensor | None, what: str) -> None:
    """A one-line `DataError` for labels a conditional VAE cannot use."""
    if labels is None or labels.shape != (x.shape[0],):
        raise DataError(f"a conditional VAE needs one integer label per {what} image; pass "
                        f"{what}_labels with shape [{x.shape[0]}]")
    if labels.is_floating_point() or int(labels.min()) < 0 or int(labels.max()) >= vae.num_classes:
        raise DataError(f"{what} labels must be integers in 0..{vae.num_classes - 1}")


def nonfinite_message(vae: VAE, x: torch.Tensor, y: torch.Tensor | None, epoch: int,
                       step: int | None, s: TrainSettings, saved: str | None) -> str:
    """Name where the loss stopped being finite, which term did it, and what to try.

    ``saved`` says which checkpoint is kept (None: no run folder, nothing saved).
    """
    where = f"epoch {epoch}" + (f", step {step}" if step else "")
    site = "the parameters (a previous update)"
    if x.shape[0] and all(torch.isfinite(p).all() for p in vae.parameters()):
        with torch.no_grad(), pyro.validation_enabled(False):
            t = site_log_probs(vae, x, y, 1, closed_form=False)
            recon, kl = t.log_lik.sum(), t.kl_sampled.sum()
        if not torch.isfinite(recon):
            site = "the reconstruction term log p(x|z)"
        elif not torch.isfinite(kl):
            site = "the KL term log q(z|x) - log p(z)"
        elif s.objective != "elbo" or vae.beta > 1e3:
            site = (f"the {s.objective} objective's arithmetic on finite ELBO terms (check its "
                    f"settings: beta {vae.beta:g}, gamma {s.gamma:g}, capacity {s.capacity:g}, "
                    f"free_bits {s.free_bits:g})")
        else:
            site = "a term that was finite when recomputed (a transient fault)"
    return (f"the loss became NaN or infinite in {where}, in {site}; lower the learning rate "
            f"(lr, now {s.lr:g}) or, for a Gaussian likelihood, raise its scale, or skip such "
            "batches (skip_nonfinite)" + (f". {saved}: resume it with a lower lr" if saved else ""))

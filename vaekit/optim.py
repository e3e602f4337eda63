"""What the optimizer does besides Adam's step: the learning-rate schedule and a weight average.

    lr = LearningRate(optimizer, "cosine", lr=1e-3, lr_min=1e-5, total_steps=60000)
    lr.at_step(step)            # cosine: set the rate of this step
    lr.at_epoch_end(val_nelbo)  # plateau: halve it when validation stops improving
    ema = make_ema(vae, 0.999)  # torch's AveragedModel; ema.update_parameters(vae) after a step

Both save and restore their state for an exact resume (`LearningRate.state_dict`, `ema_state`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from vaekit.settings import parse_lr_schedule

__all__ = ["LearningRate", "cosine_lr", "make_ema", "ema_state", "load_ema_state"]

PLATEAU_FACTOR = 0.5
"""What the plateau schedule multiplies the learning rate by."""


def cosine_lr(step: int, total: int, lr: float, lr_min: float) -> float:
    """The cosine schedule (Loshchilov & Hutter, 2017) without restarts: ``lr`` at step 0 down to
    ``lr_min`` at step ``total`` (and after), as ``torch.optim.lr_scheduler.CosineAnnealingLR``."""
    t = min(max(step, 0), total) / max(total, 1)
    return lr_min + (lr - lr_min) * 0.5 * (1 + math.cos(math.pi * t))


class LearningRate:
    """Sets the optimizer's learning rate by a schedule: ``constant``, ``cosine`` or ``plateau``.

    ``cosine`` is a function of the step (a resumed run with more epochs stretches it from where
    it is); ``plateau`` is torch's ``ReduceLROnPlateau`` on the validation -ELBO, with factor
    0.5: the rate is halved when the -ELBO has not improved (by a relative 1e-4) for more than
    PATIENCE epochs in a row.

    Args:
        optimizer: The optimizer whose parameter groups it sets.
        spec: ``"constant"``, ``"cosine"`` or ``"plateau[:PATIENCE]"``.
        lr: The initial (and constant) learning rate.
        lr_min: The lowest rate of ``cosine`` and ``plateau``.
        total_steps: Steps of the whole run (for ``cosine``).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, spec: str, lr: float, lr_min: float,
                 total_steps: int) -> None:
        self.kind, patience = parse_lr_schedule(spec)
        self.optimizer, self.lr, self.lr_min, self.total = optimizer, lr, lr_min, total_steps
        self.plateau = None
        if self.kind == "plateau":
            self.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode="min", factor=PLATEAU_FACTOR, patience=patience, min_lr=lr_min,
                eps=0.0)  # halve any rate (torch's default ignores changes below 1e-8)

    @property
    def current(self) -> float:
        """The learning rate in use."""
        return float(self.optimizer.param_groups[0]["lr"])

    def at_step(self, step: int) -> None:
        """Before step ``step`` (0-based, over the whole run): the cosine schedule's rate."""
        if self.kind == "cosine":
            for group in self.optimizer.param_groups:
                group["lr"] = cosine_lr(step, self.total, self.lr, self.lr_min)

    def at_epoch_end(self, val_neg_elbo: float | None) -> None:
        """After an epoch's validation: the plateau schedule's decision."""
        if self.plateau is not None and val_neg_elbo is not None and math.isfinite(val_neg_elbo):
            self.plateau.step(val_neg_elbo)

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps (the plateau's counters)."""
        return {"plateau": self.plateau.state_dict()} if self.plateau is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `state_dict` output (nothing to do for the stateless schedules)."""
        if self.plateau is not None and state.get("plateau"):
            self.plateau.load_state_dict(state["plateau"])


def make_ema(model: nn.Module, decay: float) -> AveragedModel:
    """An exponential moving average of ``model``'s weights and buffers (torch's
    ``AveragedModel`` with ``get_ema_multi_avg_fn``): ``ema.module`` is a copy of the model,
    updated by ``ema.update_parameters(model)`` as ``w_ema = decay·w_ema + (1 - decay)·w``."""
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def ema_state(ema: AveragedModel) -> dict[str, Any]:
    """The average's weights (a model ``state_dict``) and how many updates it has seen."""
    return {"weights": ema.module.state_dict(), "count": int(ema.n_averaged)}


def load_ema_state(ema: AveragedModel, state: dict[str, Any]) -> None:
    """Restore `ema_state` output."""
    ema.module.load_state_dict(state["weights"])
    ema.n_averaged.fill_(int(state["count"]))

"""The seam of the training step that an objective may own: `Objective`.

    class Critic(Objective):
        def __init__(self, vae):
            super().__init__()
            self.vae = vae
            self.add_auxiliary("critic", nn.Linear(784, 1), lambda p: torch.optim.Adam(p, 1e-4))

        def auxiliary_step(self, x, y, step):
            ...                                       # update the critic after the VAE's step

The loop (`vaekit.session.TrainingState`) builds the auxiliary optimizers, wraps the auxiliary
networks for several processes, and saves and restores them with every checkpoint.
"""

from __future__ import annotations

import torch
import torch.distributed as torch_dist
from torch import nn

__all__ = ["Objective", "summed_over_ranks"]


def summed_over_ranks(sums: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``sums`` (on the CPU) added up over every process of a distributed run (all-reduced on
    ``device``, where the backend needs it); ``sums`` itself in one process."""
    if not (torch_dist.is_available() and torch_dist.is_initialized()):
        return sums.clone()
    total = sums.to(device)
    torch_dist.all_reduce(total)
    return total.cpu()


class Objective(nn.Module):
    """An objective that owns part of the training step: auxiliary networks, their optimizers,
    and updates of its own (a discriminator trained in alternation, a moving-average codebook).

    `forward` is the VAE's loss, summed over the batch, which the loop's optimizer steps on the
    VAE's parameters (with clipping, the weight average, DDP, skipping non-finite steps ...).
    After each step the loop calls `auxiliary_step`, where the objective updates what it owns.
    Auxiliary modules added with `add_auxiliary` are not submodules (the loop's optimizer and
    the VAE's DDP wrapper never see them): the loop moves them to the device, wraps each for DDP
    with `setup`, and saves and restores them and their optimizers with the checkpoint
    (`auxiliary_state`), so a resumed run continues bit for bit.
    """

    def __init__(self) -> None:
        super().__init__()
        self._aux: dict[str, nn.Module] = {}
        self._aux_optimizer_factories: dict[str, object] = {}
        self.aux_optimizers: dict[str, torch.optim.Optimizer] = {}
        self.aux_train: dict[str, nn.Module] = {}

    def add_auxiliary(self, name: str, module: nn.Module, optimizer: object) -> None:
        """Own ``module`` under ``name``, trained by ``optimizer(parameters)`` (a factory such as
        ``lambda p: torch.optim.Adam(p, lr=1e-4)``, called by `setup`)."""
        self._aux[name] = module
        self._aux_optimizer_factories[name] = optimizer

    def auxiliary(self, name: str) -> nn.Module:
        """The auxiliary module ``name`` (unwrapped)."""
        return self._aux[name]

    def setup(self, device: torch.device, wrap: object = None) -> None:
        """Move the auxiliary modules to ``device``, wrap each with ``wrap`` (DDP with several
        processes; `aux_train` holds the wrapped ones) and build their optimizers."""
        for name, module in self._aux.items():
            module.to(device)
            self.aux_train[name] = wrap(module) if callable(wrap) else module
            factory = self._aux_optimizer_factories[name]
            self.aux_optimizers[name] = factory(module.parameters())  # type: ignore[operator]

    def auxiliary_step(self, x: torch.Tensor, y: torch.Tensor | None, step: int) -> None:
        """The objective's own updates after the loop's step ``step`` (0-based, global)."""

    def epoch_metrics(self) -> dict[str, float]:
        """Numbers of the objective's own for this epoch's row of ``metrics.csv`` (the same keys
        every epoch), read once at the epoch's end; none by default."""
        return {}

    def auxiliary_state(self) -> dict[str, object]:
        """Everything the objective owns, for the checkpoint."""
        return {"modules": {n: m.state_dict() for n, m in self._aux.items()},
                "optimizers": {n: o.state_dict() for n, o in self.aux_optimizers.items()}}

    def load_auxiliary_state(self, state: dict[str, object]) -> None:
        """Restore `auxiliary_state` (after `setup`)."""
        modules, optimizers = state["modules"], state["optimizers"]
        for name, module in self._aux.items():
            module.load_state_dict(modules[name])  # type: ignore[index]
        for name, opt in self.aux_optimizers.items():
            opt.load_state_dict(optimizers[name])  # type: ignore[index]

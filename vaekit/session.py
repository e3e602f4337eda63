"""What one training session holds: its position, its data on the device and its training state.

    state = TrainingState(vae, splits, settings, dist, device)   # state.data: on the device
    position = state.restore(saved_position, checkpoint, where="runs/mnist")
    checkpoint = {**state.state_dict(), **dataclasses.asdict(position)}

`TrainingState` builds, for any VAE and objective, everything a checkpoint must hold to resume
exactly: the weights and their optimizer, the learning-rate schedule, the weight average, what
the objective owns (its auxiliary networks and their optimizers, e.g. a discriminator), the
shuffling generator; one `state_dict` / `load_state_dict` pair saves and restores it all.
`Position` is where training stands (epoch, step, running sums, history, random states).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyro
import torch

from vaekit import distributed, plots
from vaekit.checks import nonfinite_message
from vaekit.data import Splits, to_unit
from vaekit.devices import AMP_FASTER, amp_speedup, cpu_bf16_kernels, separate_compile_cache
from vaekit.errors import CheckpointError, TrainingError
from vaekit.evaluation import evaluate_elbo_sharded, iwae_bound_sharded
from vaekit.likelihoods import Likelihood, test_observations
from vaekit.model import VAE
from vaekit.objectives import BetaSchedule, Capacity, Objective, make_objective
from vaekit.optim import LearningRate, ema_state, load_ema_state, make_ema
from vaekit.runs import CODES, CONFUSION, LOSS, RECONSTRUCTIONS, SAMPLES
from vaekit.semisupervised import (
    SemiSupervised,
    accuracy,
    confusion_matrix,
    is_semi_supervised,
    labelled_subset,
    predict,
)
from vaekit.settings import TrainSettings

__all__ = ["Position", "DeviceData", "TrainingState"]


@dataclass
class Position:
    """Where training stands; a checkpoint saves exactly this, beside `TrainingState.state_dict`.

    Attributes:
        epoch: Epochs finished.
        step: Steps finished of the next epoch (0 at an epoch's end).
        total: Sum of the objective over those steps, over all ranks.
        skipped: Non-finite batches skipped in those steps.
        history: The finished epochs' rows of ``metrics.csv``.
        rng: The random states when it was saved: ``torch`` (and ``cuda``) of rank 0, ``ranks``
            (each rank's), and ``shuffle``, the shuffling generator as the epoch started.
    """

    epoch: int = 0
    step: int = 0
    total: float = 0.0
    skipped: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    rng: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_checkpoint(cls, state: dict[str, Any]) -> Position:
        """The position saved in a checkpoint, checked for what resuming relies on.

        Raises:
            KeyError, TypeError, ValueError: naming what is missing or wrong.
        """
        def count(key: str) -> int:
            value = state.get(key, 0)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**40:
                raise ValueError(f"{key} = {str(value)[:40]!r} is not a count")
            return value

        epoch, step, skipped = count("epoch"), count("step"), count("skipped")
        history, rng = state["history"], state["rng"]
        if not (isinstance(history, list) and all(
                isinstance(r, dict) and all(isinstance(v, (int, float)) for v in r.values())
                for r in history)):
            raise TypeError("history is not a list of rows of numbers")
        if [r.get("epoch") for r in history] != list(range(1, epoch + 1)):
            raise ValueError(f"history does not hold epochs 1..{epoch}")
        if not (isinstance(rng, dict) and isinstance(rng.get("shuffle"), torch.Tensor)
                and (isinstance(rng.get("torch"), torch.Tensor) or rng.get("ranks"))):
            raise KeyError("rng (the random states) is incomplete")
        total = state.get("total", 0.0)
        if not isinstance(total, (int, float)):
            raise TypeError("total is not a number")
        return cls(epoch=epoch, step=step, total=float(total), skipped=skipped,
                   history=list(history), rng=rng)


@dataclass
class DeviceData:
    """The data on the training device: the training images (observed per batch by the
    likelihood), the test and validation observations (drawn once, `test_observations`), and
    the images the pictures show (test observations, else 32 training images)."""

    train_x: torch.Tensor
    labels: torch.Tensor | None
    test: tuple[torch.Tensor, torch.Tensor | None] | None
    val: tuple[torch.Tensor, torch.Tensor | None] | None
    show: torch.Tensor
    show_labels: torch.Tensor | None

    @classmethod
    def build(cls, splits: Splits, likelihood: Likelihood, device: torch.device) -> DeviceData:
        """Move ``splits`` to ``device`` (labels too, where there are any)."""
        def observed(part: tuple[torch.Tensor, torch.Tensor | None] | None
                     ) -> tuple[torch.Tensor, torch.Tensor | None] | None:
            if part is None:
                return None
            return (test_observations(likelihood, part[0]).to(device),
                    None if part[1] is None else part[1].to(device))

        train_x = splits.train[0].to(device)
        labels = None if splits.train[1] is None else splits.train[1].to(device)
        test, val = observed(splits.test), observed(splits.val)
        if test is not None:
            show, show_labels = test
        else:  # a fresh observation of the first 32 training images
            show = likelihood.targets(to_unit(train_x[:32]))
            show_labels = None if labels is None else labels[:32]
        return cls(train_x, labels, test, val, show, show_labels)


class TrainingState:
    """The model on the device and everything training updates: the objective, the optimizer,
    the β and learning-rate schedules, the weight average and the objective's own networks.

    Building it seeds each rank's noise (``seed + rank``) and the shuffling generator
    (``seed``, the same on every rank), moves the model to the device (SyncBatchNorm, memory
    format, compilation as the settings say) and the data (`DeviceData`, as ``data``), builds
    the objective, and, with several processes, wraps the objective and its auxiliary networks
    in DistributedDataParallel.

    Args:
        vae: The model (moved to ``device``, set to train mode).
        splits: The checked data.
        settings: The training settings.
        dist: The processes' context.
        device: The training device.
    """

    def __init__(self, vae: VAE, splits: Splits, settings: TrainSettings,
                 dist: distributed.Context, device: torch.device) -> None:
        s = self.settings = settings
        self.vae, self.dist, self.device = vae, dist, device
        pyro.set_rng_seed(s.seed + dist.rank)  # each rank its own noise; the same shuffling
        self.shuffle = torch.Generator().manual_seed(s.seed)
        vae.to(device).train()
        if dist.world > 1 and s.sync_batchnorm:
            distributed.convert_sync_batchnorm(vae, device)
        self.memory_format = torch.channels_last if s.channels_last else torch.contiguous_format
        vae.to(memory_format=self.memory_format)
        if s.compile:
            if device.type == "cpu":
                separate_compile_cache()
            vae.encoder.compile()
            vae.decoder.compile()
        self.data = DeviceData.build(splits, vae.likelihood, device)
        dev, world = device, dist.world
        self.base_beta = vae.beta
        self.beta = BetaSchedule.parse(s.beta_schedule, beta=self.base_beta)
        self.labelled: torch.Tensor | None = None  # a semi-supervised run's labelled images
        self.objective = self._objective(vae, s)
        self.optimizer = torch.optim.Adam(self.objective.parameters(), lr=s.lr)
        # Several processes: DDP averages gradients, so each rank's summed loss is scaled by the
        # world size to give the gradient of the global batch's sum, as one process computes it.
        self.train_fn, wrap = self.objective, None
        if world > 1:
            from torch.nn.parallel import DistributedDataParallel

            def wrap(module: torch.nn.Module) -> torch.nn.Module:
                return DistributedDataParallel(
                    module, device_ids=[dev.index] if dev.type == "cuda" else None)

            self.train_fn = wrap(self.objective)
        # an objective that owns part of the step: its networks and optimizers, wrapped alike
        self.owns_step = isinstance(self.objective, Objective)
        if self.owns_step:
            self.objective.setup(dev, wrap)
        n_train, bs = self.data.train_x.shape[0], s.batch_size
        self.steps = n_train // bs + (1 if n_train % bs >= world else 0)  # a last batch too
        self.lr = LearningRate(self.optimizer, s.lr_schedule, s.lr, s.lr_min,  # small to split:
                               s.epochs * self.steps)                          # dropped
        self.ema = make_ema(vae, s.ema) if s.ema else None
        self.amp = s.amp == "on"  # "auto" is decided by `decide_amp`, at the start or from a
        # checkpoint
        # Checking the loss needs the host: every step on the CPU (free), every 10 steps on a GPU.
        self.check_every = 1 if (dev.type == "cpu" or s.skip_nonfinite) else 10

    def _objective(self, vae: VAE, s: TrainSettings) -> torch.nn.Module:
        """The objective the settings name; for a semi-supervised VAE, `SemiSupervised` on the
        labelled images drawn with the seed (``labelled``: their indices), the loop's own
        batches then unlabelled."""
        if not is_semi_supervised(vae):
            with pyro.settings.context(module_local_params=True):
                return make_objective(vae, s.objective, iwae_samples=s.iwae_samples,
                                      gamma=s.gamma, capacity=s.capacity,
                                      capacity_steps=s.capacity_steps, free_bits=s.free_bits,
                                      gan_gamma=s.gan_gamma, disc_lr=s.disc_lr,
                                      commitment=s.commitment,
                                      dataset_size=self.data.train_x.shape[0],
                                      tc_alpha=s.tc_alpha, tc_beta=s.tc_beta,
                                      tc_gamma=s.tc_gamma, tc_sampling=s.tc_sampling,
                                      factor_gamma=s.factor_gamma, dip_type=s.dip_type,
                                      dip_lambda_od=s.dip_lambda_od,
                                      dip_lambda_d=s.dip_lambda_d)
        labels = self.data.labels
        self.labelled = idx = labelled_subset(labels, s.labels, s.seed, vae.num_classes)
        self.data.labels = None  # the loop's batches are unlabelled: y is summed out
        on = idx.to(labels.device)
        return SemiSupervised(vae, self.data.train_x[on], labels[on], s.labelled_batch,
                              s.classifier_weight, s.seed, idx, s.labelled_every)

    @property
    def model(self) -> VAE:
        """The weights that are evaluated, drawn and saved as the run's model: the average's
        (``ema``), else the trained ones."""
        return self.ema.module if self.ema is not None else self.vae  # type: ignore[return-value]

    def schedule(self, global_step: int) -> None:
        """Set β, the capacity and the learning rate for ``global_step``."""
        if self.beta.kind != "constant":
            self.vae.beta = self.beta(global_step)
        if isinstance(self.objective, Capacity):
            self.objective.set_step(global_step)
        self.lr.at_step(global_step)

    def loss(self, x: torch.Tensor, y: torch.Tensor | None,
             stop: distributed.StopFlag) -> tuple[torch.Tensor, int]:
        """The objective on this rank's batch (NaN on every rank if it is NaN on any), and the
        stop signal every rank agrees on (0: none). ``stop.signum`` is read after the forward
        pass, so a signal that arrives during it stops at this step."""
        try:
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                loss = self.train_fn(x) if y is None else self.train_fn(x, y)
        except ValueError as e:  # validation of a distribution fed NaN
            if "invalid values" not in str(e):
                raise
            loss = torch.tensor(float("nan"), device=self.device)
        signum = stop.signum
        if self.dist.world > 1:  # every rank learns of a signal or a bad loss on any rank
            signum, bad = self.dist.agree(signum, not torch.isfinite(loss))
            if bad:
                loss = loss * float("nan")
        return loss, signum

    def update(self, loss: torch.Tensor, x: torch.Tensor, y: torch.Tensor | None,
               global_step: int) -> bool:
        """Backpropagate ``loss`` and update: the VAE's optimizer (gradients clipped as set),
        the weight average, then the objective's own step. False (weights untouched) when
        ``skip_nonfinite`` finds a non-finite gradient."""
        s, world = self.settings, self.dist.world
        self.optimizer.zero_grad(set_to_none=True)
        (loss * world if world > 1 else loss).backward()
        if s.skip_nonfinite and not self.finite_gradients():
            return False
        if s.clip_grad:
            torch.nn.utils.clip_grad_norm_(self.objective.parameters(), s.clip_grad)
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update_parameters(self.vae)
        if self.owns_step:  # the objective's own updates, after the VAE's
            self.objective.auxiliary_step(x, y, global_step)
        return True

    def decide_amp(self, images: torch.Tensor, y: torch.Tensor | None) -> str | None:
        """Settle bf16 autocast for a fresh run: ``--amp auto`` turns it on where the objective's
        forward and backward on a batch of ``images`` (a copy of the model, the random states
        restored: nothing the run draws changes) is at least `AMP_FASTER` times faster with it
        (on a GPU: where it has bf16; on a CPU without AVX-512 kernels, `cpu_bf16_kernels`:
        never, unmeasured); ``--amp on`` keeps it, measured too. Rank 0 decides for every rank.
        The line to print, if any."""
        s = self.settings
        if s.amp == "off":
            return None
        slow = cpu_bf16_kernels() if self.device.type == "cpu" else None
        if slow and s.amp == "auto":  # nothing to measure: no bf16 kernels to gain from
            self.amp = False
            return f"--amp auto: bf16 autocast off (this CPU's kernels are {slow}, without bf16)"
        if slow:
            return (f"--amp on: bf16 autocast is slower than float32 here (this CPU's kernels "
                    f"are {slow}, without bf16); --amp auto or off would be faster")
        if s.amp == "auto" and self.device.type == "cuda":
            self.amp = bool(torch.cuda.is_bf16_supported())
            return f"--amp auto: bf16 autocast {'on' if self.amp else 'off'} (this GPU " \
                   f"{'has' if self.amp else 'has no'} bf16)"
        import copy

        probe = copy.deepcopy(self.objective)

        def step(amp: bool) -> None:
            probe.zero_grad(set_to_none=True)
            with pyro.settings.context(module_local_params=True), \
                    torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=amp):
                loss = probe(x) if y is None else probe(x, y)
            loss.backward()

        cuda = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):  # the likelihood's observation draws
            x = self.vae.likelihood.targets(to_unit(images)).contiguous(
                memory_format=self.memory_format)
        ratio = amp_speedup(step, self.device)
        if s.amp == "auto":
            self.amp = bool(self.dist.from_main(ratio >= AMP_FASTER))
            return (f"--amp auto: bf16 autocast measured {ratio:.2f}x float32's speed here: "
                    f"{'on' if self.amp else 'off'}")
        if ratio < 1.0:
            return (f"--amp on: bf16 autocast is slower than float32 here ({ratio:.2f}x its "
                    "speed, measured); --amp auto or off would be faster")
        return None

    def finite_gradients(self) -> bool:
        """Whether every gradient is finite (on every rank)."""
        finite = all(bool(torch.isfinite(p.grad).all()) for p in self.objective.parameters()
                     if p.grad is not None)
        if self.dist.world > 1:
            finite = not bool(self.dist.all_max(torch.tensor([float(not finite)])).item())
        return finite

    def finite_weights(self) -> bool:
        """Whether every weight and floating buffer (BatchNorm's statistics too) is finite."""
        return all(bool(torch.isfinite(t).all()) for t in (*self.vae.parameters(),
                   *self.vae.buffers()) if t.is_floating_point())

    def evaluate(self, epoch: int, train_loss: float, saved: str | None) -> dict[str, float]:
        """The epoch's row: the test and validation -ELBO and its parts of `model` (each rank on
        its shard, summed over ranks), and the validation IWAE bound with the training's K when
        the objective is ``iwae``; weights that overflow on these images are a `TrainingError`
        naming the term (``saved``: what the last checkpoint holds, for the message)."""
        s = self.settings
        row: dict[str, float] = {"epoch": epoch, "train_loss": train_loss}
        for split, part in (("test", self.data.test), ("val", self.data.val)):
            if split == "val" and part is None:
                continue  # no validation columns without validation images
            m: dict[str, float] = {}
            if part is not None:
                obs, lab = part
                if is_semi_supervised(self.vae):  # y summed out of the bound; q(y|x) scored
                    row[f"{split}_accuracy"] = accuracy(self.model, obs, lab, s.batch_size,
                                                        clusters=not s.labels)
                    lab = None
                try:
                    m = evaluate_elbo_sharded(self.model, obs, self.dist, s.batch_size, lab)
                except ValueError as e:  # a distribution fed NaN
                    if "invalid values" not in str(e):
                        raise
                    raise TrainingError(nonfinite_message(
                        self.vae, obs[:64], None if lab is None else lab[:64], epoch, None, s,
                        saved)) from None
            for key in ("neg_elbo", "recon", "kl"):
                row[f"{split}_{key}"] = m.get(key, float("nan"))
        if self.owns_step:  # the objective's own numbers (a discriminator's losses ...)
            row.update(self.objective.epoch_metrics())
        if "val_accuracy" in row:  # the semi-supervised run selects on its classifier
            row["val_error"] = 100.0 - row["val_accuracy"]
        if self.data.val is not None and s.objective == "iwae":  # select on the trained bound
            obs, lab = self.data.val
            row["val_neg_iwae"] = iwae_bound_sharded(self.model, obs, self.dist, s.iwae_samples,
                                                     s.batch_size, lab)
        return row

    def pictures(self, folder: Path, history: list[dict[str, float]]) -> Callable[[Any], None]:
        """What draws samples.png, reconstructions.png and loss.png of `model` into ``folder``
        (for `vaekit.runs.RunFolder.write_pictures`)."""
        def draw(_: Any) -> None:
            k, show, labels = self.vae.num_classes, self.data.show, self.data.show_labels
            plots.save_samples(self.model, folder / SAMPLES,
                               labels=torch.arange(64) % k if k else None)
            plots.save_reconstructions(self.model, show[:32], folder / RECONSTRUCTIONS,
                                       labels=None if labels is None else labels[:32])
            plots.save_loss_curve(history, folder / LOSS)
            if self.vae.is_vq:
                plots.save_code_usage(self.model, show, folder / CODES)
            if is_semi_supervised(self.vae) and labels is not None:
                k = self.vae.num_classes
                plots.save_confusion(confusion_matrix(predict(self.model, show), labels, k),
                                     folder / CONFUSION)

        return draw

    def state_dict(self) -> dict[str, Any]:
        """The whole training state but the position: the weights, the optimizer, the learning
        rate schedule, the weight average, and what the objective owns (its networks and their
        optimizers). With `Position` (its random states included) it is the checkpoint."""
        state: dict[str, Any] = {"model": self.vae.state_dict(),
                                 "optimizer": self.optimizer.state_dict(),
                                 "lr_schedule": self.lr.state_dict()}
        if self.ema is not None:
            state["ema"] = ema_state(self.ema)
        if self.owns_step:
            state["objective"] = self.objective.auxiliary_state()
        state["amp"] = self.amp  # the decision of --amp auto, kept by a resumed run
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `state_dict` (the weights are loaded before the state is built); parts a
        checkpoint of an older vaekit lacks keep their fresh values."""
        if "optimizer" in state:
            self.optimizer.load_state_dict(state["optimizer"])
        self.lr.load_state_dict(state.get("lr_schedule") or {})
        if self.ema is not None and state.get("ema"):
            load_ema_state(self.ema, state["ema"])
        if self.owns_step and "objective" in state:
            self.objective.load_auxiliary_state(state["objective"])
        if self.settings.amp == "auto" and isinstance(state.get("amp"), bool):
            self.amp = state["amp"]

    def restore(self, position: Position | None, state: dict[str, Any], where: Any,
                new_lr: bool = False) -> Position:
        """The position to start from: a checkpoint's (its optimizer, schedules, average,
        objective and random states loaded), or the start.

        Args:
            position: The checkpoint's position (None: start).
            state: The rest of the checkpoint.
            where: The run folder, for the messages.
            new_lr: The learning rate was given anew (it replaces the restored one).

        Raises:
            CheckpointError: for a checkpoint that does not fit these settings.
        """
        if position is None:
            return Position(rng={"shuffle": self.shuffle.get_state()})
        try:
            self.load_state_dict(state)
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"the checkpoint in {where} does not fit this run's "
                                  f"settings ({type(e).__name__}: {e})") from None
        if new_lr or "optimizer" not in state:  # a new lr given to resume wins; else the
            for group in self.optimizer.param_groups:  # restored one (where a plateau took it)
                group["lr"] = self.settings.lr
        if position.step >= self.steps and position.step:
            raise CheckpointError(f"the checkpoint in {where} is at step {position.step} of an "
                                  f"epoch of {self.steps} steps; restore it or delete it to "
                                  "start over")
        try:
            self.shuffle.set_state(position.rng["shuffle"])
            self.dist.restore_random_state(position.rng, self.device)
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as e:
            raise CheckpointError(f"the checkpoint in {where} has unusable random states "
                                  f"({type(e).__name__}: {e}); restore it or delete it to start "
                                  "over") from None
        return position

    def snapshot(self, position: Position) -> dict[str, Any] | None:
        """The checkpoint of ``position`` on rank 0 (None on the others), every rank's random
        state in it (a collective call: every rank makes it)."""
        ranks = self.dist.random_states(self.device)
        if not self.dist.main:
            return None
        shuffle = self.shuffle.get_state() if position.step == 0 else position.rng["shuffle"]
        position.rng = {**ranks[0], "shuffle": shuffle, "ranks": ranks}
        return {**self.state_dict(), **dataclasses.asdict(position)}

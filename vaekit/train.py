"""Fit a VAE with SVI: ``Trace_ELBO`` as a torch module, Adam, data kept whole on the device.

    vae = VAE(z_dim=32, likelihood="bernoulli")
    result = fit(vae, train_x, test_x, epochs=10, device="auto", run_dir="runs/mnist")
    result.history[-1]["test_neg_elbo"]

Each epoch shuffles the training tensor by index, turns each batch into observations with the
likelihood (e.g. a fresh binarization) and takes one Adam step on the β-weighted -ELBO. After each
epoch the test -ELBO is computed and, with a ``run_dir``, the checkpoint, ``metrics.csv`` and the
pictures are written (atomically). SIGINT/SIGTERM finish the current step, write a checkpoint and
raise `Interrupted`; `resume` continues a run folder from its last checkpoint, bit for bit on the CPU
of the same machine (other CPU kernels, e.g. AVX2 against AVX-512, round differently).
"""

from __future__ import annotations

import math
import os
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyro
import torch
from pyro import poutine
from tqdm.auto import tqdm

from vaekit import distributed, runs
from vaekit.data import to_unit
from vaekit.devices import resolve_device, separate_compile_cache
from vaekit.errors import CheckpointError, ConfigError, DataError, Interrupted, TrainingError
from vaekit.evaluate import evaluate_elbo
from vaekit.model import VAE
from vaekit.objectives import BetaSchedule, Capacity, make_objective

__all__ = [
    "TrainSettings",
    "FitResult",
    "fit",
    "resume",
    "resolve_device",
    "TEST_BINARIZATION_SEED",
]

TEST_BINARIZATION_SEED = 0
"""The test set's observations (e.g. its binarization) are drawn once with this seed, so test
numbers are comparable across runs and training seeds."""

RUN_FILES = (runs.CONFIG, runs.CHECKPOINT, runs.METRICS, "samples.png", "reconstructions.png",
             "loss.png")


@dataclass(frozen=True)
class TrainSettings:
    """Training settings, recorded in ``config.json`` and checked when built.

    Attributes:
        epochs: Passes over the training data.
        batch_size: Images per step.
        lr: Adam learning rate.
        seed: Seeds Pyro, torch and the shuffling.
        checkpoint_every: Also checkpoint every N steps (0: only at the end of each epoch).
        skip_nonfinite: Skip a batch whose loss is NaN/inf instead of stopping.
        deterministic: Ask torch for deterministic algorithms (for GPUs; the CPU already is).
        channels_last: Keep the networks in channels-last memory format (faster convolutions on
            CPUs and GPUs; the numbers are the same up to float rounding).
        compile: ``torch.compile`` the encoder and decoder (worth it on GPUs; small on CPUs).
        amp: Mixed precision: bfloat16 autocast for the networks, float32 for the likelihood and
            the loss.
        sync_batchnorm: With several processes, normalise with the global batch's statistics.
        objective: ``"elbo"`` (β-weighted ``Trace_ELBO``), ``"iwae"``, ``"capacity"`` or
            ``"free-bits"``; see `vaekit.objectives`.
        beta_schedule: ``"constant"``, ``"linear:STEPS"`` or ``"cyclical:STEPS[:RATIO]"``, towards
            the model's β.
        iwae_samples: K for the IWAE objective.
        gamma: γ of the capacity objective.
        capacity: Final capacity C, nats per image.
        capacity_steps: Steps over which C rises linearly from 0.
        free_bits: λ, nats per latent dimension, of the free-bits objective.
    """

    epochs: int = 10
    batch_size: int = 1024
    lr: float = 2e-3
    seed: int = 0
    checkpoint_every: int = 0
    skip_nonfinite: bool = False
    deterministic: bool = False
    channels_last: bool = True
    compile: bool = False
    amp: bool = False
    sync_batchnorm: bool = False
    objective: str = "elbo"
    beta_schedule: str = "constant"
    iwae_samples: int = 5
    gamma: float = 1000.0
    capacity: float = 25.0
    capacity_steps: int = 10000
    free_bits: float = 0.5

    def __post_init__(self) -> None:
        from vaekit.objectives import OBJECTIVES, BetaSchedule

        if self.objective not in OBJECTIVES:
            raise ConfigError(f"unknown objective {self.objective!r}; choose one of: "
                              + ", ".join(OBJECTIVES))
        BetaSchedule.parse(self.beta_schedule)
        if self.beta_schedule != "constant" and self.objective != "elbo":
            raise ConfigError("a beta schedule only applies to the elbo objective")
        if self.iwae_samples < 1 or self.capacity_steps < 0 or self.free_bits < 0 or self.gamma < 0:
            raise ConfigError("iwae_samples must be >= 1 and gamma, capacity_steps, free_bits >= 0")
        if not (isinstance(self.epochs, int) and self.epochs >= 1):
            raise ConfigError(f"epochs must be an integer >= 1, got {self.epochs!r}")
        if not (isinstance(self.batch_size, int) and self.batch_size >= 1):
            raise ConfigError(f"batch size must be an integer >= 1, got {self.batch_size!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"learning rate must be > 0, got {self.lr!r}")
        if not (isinstance(self.checkpoint_every, int) and self.checkpoint_every >= 0):
            raise ConfigError(f"checkpoint_every must be >= 0, got {self.checkpoint_every!r}")


@dataclass
class FitResult:
    """What `fit` returns.

    Attributes:
        vae: The trained model (on the training device, in eval mode).
        history: One dict per epoch: ``epoch``, ``train_loss`` (mean β-weighted objective per
            image), ``test_neg_elbo``, ``test_recon``, ``test_kl`` (nats per image; NaN without
            test data), ``skipped`` (non-finite batches skipped) and ``seconds``.
        run_dir: The run folder, if one was written.
    """

    vae: VAE
    history: list[dict[str, float]] = field(default_factory=list)
    run_dir: Path | None = None

    @property
    def final(self) -> dict[str, float]:
        """The last epoch's metrics."""
        return self.history[-1]


def fit(
    vae: VAE,
    train_data: torch.Tensor,
    test_data: torch.Tensor | None = None,
    *,
    epochs: int = 10,
    batch_size: int = 1024,
    lr: float = 2e-3,
    device: str | torch.device = "auto",
    seed: int = 0,
    run_dir: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    checkpoint_every: int = 0,
    skip_nonfinite: bool = False,
    deterministic: bool = False,
    channels_last: bool = True,
    compile: bool = False,
    amp: bool = False,
    sync_batchnorm: bool = False,
    objective: str = "elbo",
    beta_schedule: str = "constant",
    iwae_samples: int = 5,
    gamma: float = 1000.0,
    capacity: float = 25.0,
    capacity_steps: int = 10000,
    free_bits: float = 0.5,
    train_labels: torch.Tensor | None = None,
    test_labels: torch.Tensor | None = None,
    progress: bool = True,
    verbose: bool = True,
    data_info: dict[str, Any] | None = None,
) -> FitResult:
    """Train ``vae`` by maximising the (β-weighted) ELBO with ``Trace_ELBO`` and Adam.

    Args:
        vae: The model to train (modified in place).
        train_data: Training images ``[N, C, H, W]``, uint8 or float in [0, 1].
        test_data: Test images for the per-epoch test -ELBO (optional).
        epochs: Passes over the training data.
        batch_size: Images per step.
        lr: Adam learning rate.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        seed: Seeds Pyro, torch and the shuffling (seed the model's construction yourself, with
            ``pyro.set_rng_seed``, for identical initial weights).
        run_dir: Folder for ``config.json``, ``checkpoint.pt``, ``metrics.csv`` and pictures.
        overwrite: Write into a ``run_dir`` that already has files (old run files are removed).
        checkpoint_every: Also checkpoint every N steps (0: only at the end of each epoch).
        skip_nonfinite: Skip batches whose loss is NaN/inf (counted) instead of stopping.
        deterministic: Use deterministic torch algorithms (matters on GPUs).
        channels_last: Channels-last memory format for the networks (default; faster).
        compile: ``torch.compile`` the encoder and decoder.
        amp: bfloat16 autocast for the networks (mixed precision).
        sync_batchnorm: Under ``torchrun``, BatchNorm statistics of the global batch.
        objective: ``"elbo"``, ``"iwae"``, ``"capacity"`` or ``"free-bits"`` (`vaekit.objectives`).
        beta_schedule: ``"constant"``, ``"linear:STEPS"`` or ``"cyclical:STEPS[:RATIO]"``.
        iwae_samples: K for ``objective="iwae"``.
        gamma: γ for ``objective="capacity"``.
        capacity: Final C (nats per image) for ``objective="capacity"``.
        capacity_steps: Steps over which C rises from 0.
        free_bits: λ (nats per latent dimension) for ``objective="free-bits"``.
        train_labels: Integer labels of the training images, for a conditional VAE.
        test_labels: Integer labels of the test images, for a conditional VAE.
        progress: Show a progress bar.
        verbose: Print one line per epoch (train loss, test -ELBO, seconds), flushed at once.
        data_info: Extra facts about the data recorded in ``config.json``.

    Returns:
        A `FitResult` with the trained model and the per-epoch metrics.

    Raises:
        ConfigError: for invalid settings or a run folder that is in the way.
        DataError: for images of the wrong shape or range.
        TrainingError: when the loss stops being finite (the last good checkpoint is kept).
        Interrupted: on SIGINT/SIGTERM, after writing a checkpoint.
    """
    settings = TrainSettings(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                             checkpoint_every=checkpoint_every, skip_nonfinite=skip_nonfinite,
                             deterministic=deterministic, channels_last=channels_last,
                             compile=compile, amp=amp, sync_batchnorm=sync_batchnorm,
                             objective=objective, beta_schedule=beta_schedule,
                             iwae_samples=iwae_samples, gamma=gamma, capacity=capacity,
                             capacity_steps=capacity_steps, free_bits=free_bits)
    return _Trainer(vae, train_data, test_data, settings, device, run_dir, progress,
                    data_info, train_labels, test_labels, verbose).run(overwrite=overwrite)


def resume(
    run_dir: str | os.PathLike[str],
    train_data: torch.Tensor,
    test_data: torch.Tensor | None = None,
    *,
    epochs: int | None = None,
    device: str | torch.device = "auto",
    progress: bool = True,
    verbose: bool = True,
    train_labels: torch.Tensor | None = None,
    test_labels: torch.Tensor | None = None,
) -> FitResult:
    """Continue a run folder from its last checkpoint (model, optimizer, position, RNG state).

    A run killed before its first checkpoint starts again from its seeded initial weights.

    Args:
        run_dir: A folder written by `fit`.
        train_data: The same training images as the original run.
        test_data: The same test images, if the run had them.
        epochs: A new total number of epochs (default: the run's own).
        device: Where to continue.
        progress: Show a progress bar.
        verbose: Print one line per epoch.
        train_labels: The training labels, for a conditional VAE.
        test_labels: The test labels, for a conditional VAE.

    Raises:
        CheckpointError: if the folder or its checkpoint cannot be used.
    """
    config = runs.read_config(run_dir)
    try:
        train = dict(config["train"])
        if epochs is not None:
            train["epochs"] = epochs
        settings = TrainSettings(**train)
        pyro.set_rng_seed(settings.seed)  # the initial weights, as `vaekit fit` builds them
        vae = VAE.from_config(config["model"])
    except (KeyError, TypeError, ConfigError) as e:
        raise CheckpointError(f"{run_dir}/config.json cannot be used to resume ({e})") from None
    state = None
    if (Path(run_dir) / runs.CHECKPOINT).exists():
        state = runs.load_checkpoint(run_dir)
        try:
            vae.load_state_dict(state["model"])
        except (KeyError, RuntimeError) as e:
            raise CheckpointError(
                f"the checkpoint in {run_dir} does not match its config.json "
                f"({type(e).__name__})"
            ) from None
    trainer = _Trainer(vae, train_data, test_data, settings, device, run_dir, progress,
                       config.get("data"), train_labels, test_labels, verbose)
    return trainer.run(resuming=True, state=state)


class _Trainer:
    """The training loop and everything it must save to resume exactly."""

    def __init__(self, vae: VAE, train_data: torch.Tensor, test_data: torch.Tensor | None,
                 settings: TrainSettings, device: str | torch.device,
                 run_dir: str | os.PathLike[str] | None, progress: bool,
                 data_info: dict[str, Any] | None, train_labels: torch.Tensor | None = None,
                 test_labels: torch.Tensor | None = None, verbose: bool = True) -> None:
        # -- check everything before touching the disk --------------------------------------
        if settings.batch_size > train_data.shape[0]:
            raise ConfigError(f"batch size {settings.batch_size} is larger than the "
                              f"{train_data.shape[0]} training images; lower it")
        self.dist, self.dev = distributed.setup(resolve_device(device))
        if settings.batch_size % self.dist.world:
            raise ConfigError(f"batch size {settings.batch_size} does not split over "
                              f"{self.dist.world} processes; use a multiple of {self.dist.world}")
        _check_images(vae, train_data, "training")
        if test_data is not None:
            _check_images(vae, test_data, "test")
        if vae.num_classes:
            _check_labels(vae, train_data, train_labels, "training")
            if test_data is not None:
                _check_labels(vae, test_data, test_labels, "test")
        else:
            train_labels = test_labels = None
        self.train_labels, self.test_labels = train_labels, test_labels
        self.vae, self.s = vae, settings
        self.progress = progress and self.dist.main
        self.verbose = verbose and self.dist.main
        self.run_path = Path(run_dir) if run_dir is not None else None
        self.train_data, self.test_data = train_data, test_data
        self.data_info = data_info or {}

    # -- set-up ---------------------------------------------------------------------------------
    def _prepare_run_dir(self, overwrite: bool, resuming: bool) -> None:
        path = self.run_path
        assert path is not None
        runs.remove_stale_temporaries(path)  # left by a run killed mid-write (none if no folder)
        if not resuming and path.exists() and any(path.iterdir()):
            if not overwrite:
                what = "a vaekit run" if runs.is_run_dir(path) else "not empty"
                raise ConfigError(f"{path} already exists and is {what}; pick another --out, "
                                  "use --resume to continue it, or --overwrite")
            for name in RUN_FILES:
                (path / name).unlink(missing_ok=True)
        config = {"vaekit_version": _version(), "model": self.vae.config(),
                  "train": asdict(self.s), "device": self.dev.type, "data": self.data_info}
        try:
            path.mkdir(parents=True, exist_ok=True)
            runs.write_config(path, config)
        except OSError as e:
            raise ConfigError(f"cannot write the run folder {path} ({e.strerror or e}); "
                              "choose a writable --out") from None

    def run(self, overwrite: bool = False, resuming: bool = False,
            state: dict[str, Any] | None = None) -> FitResult:
        """Train from ``state`` (a checkpoint) or from the start; see `fit`."""
        s, vae, dev = self.s, self.vae, self.dev
        if self.run_path is not None:  # rank 0 writes; its error, if any, stops every rank
            error = None
            if self.dist.main:
                try:
                    self._prepare_run_dir(overwrite, resuming)
                except ConfigError as e:
                    error = str(e)
            error = self.dist.from_main(error)
            if error:
                raise ConfigError(error)
        if s.deterministic:
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False

        # -- seeds, data on the device, the loss as a torch module, the optimizer ---------------
        rank, world = self.dist.rank, self.dist.world
        pyro.set_rng_seed(s.seed + rank)  # each rank its own noise; the same shuffling on all
        self.shuffle = torch.Generator().manual_seed(s.seed)
        vae.to(dev).train()
        if world > 1 and s.sync_batchnorm:
            distributed.convert_sync_batchnorm(vae, dev)
        memory_format = torch.channels_last if s.channels_last else torch.contiguous_format
        vae.to(memory_format=memory_format)
        if s.compile:
            if dev.type == "cpu":
                separate_compile_cache()
            vae.encoder.compile()
            vae.decoder.compile()
        lik = vae.likelihood
        train_x = self.train_data.to(dev)
        test_y = None
        if self.test_data is not None:
            fixed = torch.Generator().manual_seed(TEST_BINARIZATION_SEED)
            test_y = lik.targets(to_unit(self.test_data), generator=fixed).to(dev)
        self.show = test_y if test_y is not None else lik.targets(to_unit(train_x[:32]))
        labels = self.train_labels.to(dev) if self.train_labels is not None else None
        self.test_lab = self.test_labels.to(dev) if self.test_labels is not None else None
        self.show_lab = self.test_lab if test_y is not None else (
            labels[:32] if labels is not None else None)
        base_beta = vae.beta
        schedule = BetaSchedule.parse(s.beta_schedule, beta=base_beta)
        with pyro.settings.context(module_local_params=True):
            loss_fn = make_objective(vae, s.objective, iwae_samples=s.iwae_samples, gamma=s.gamma,
                                     capacity=s.capacity, capacity_steps=s.capacity_steps,
                                     free_bits=s.free_bits)
        self.optimizer = torch.optim.Adam(loss_fn.parameters(), lr=s.lr)
        # Several processes: DDP averages gradients, so each rank's summed loss is scaled by the
        # world size to give the gradient of the global batch's sum, as one process computes it.
        train_fn = loss_fn
        if world > 1:
            from torch.nn.parallel import DistributedDataParallel

            train_fn = DistributedDataParallel(loss_fn, device_ids=[dev.index] if dev.type ==
                                               "cuda" else None)
        self.history: list[dict[str, float]] = []
        start_epoch, start_step, total, skipped = 0, 0, 0.0, 0
        if state is not None:
            self.optimizer.load_state_dict(state["optimizer"])
            self.history = list(state["history"])
            start_epoch, start_step = int(state["epoch"]), int(state.get("step", 0))
            total, skipped = float(state.get("total", 0.0)), int(state.get("skipped", 0))
            _set_rng_state(state["rng"], self.shuffle, dev, rank, world)
            if self.run_path is not None and self.dist.main:  # metrics.csv follows the checkpoint
                (self.run_path / runs.METRICS).unlink(missing_ok=True)
                for row in self.history:
                    runs.append_metrics(self.run_path, row)

        n, bs = train_x.shape[0], s.batch_size
        steps = n // bs + (1 if n % bs >= world else 0)  # a last batch too small to split: dropped
        # Checking the loss needs the host: every step on the CPU (free), every 10 steps on a GPU.
        check_every = 1 if (dev.type == "cpu" or s.skip_nonfinite) else 10
        with _stop_on_signals() as stop:
            for epoch in range(start_epoch + 1, s.epochs + 1):
                # -- one pass over the shuffled training data ---------------------------------
                t0 = time.perf_counter()
                vae.train()
                shuffle_state = self.shuffle.get_state()
                perm = torch.randperm(n, generator=self.shuffle).to(dev)
                acc = torch.tensor(total, device=dev)
                bar = tqdm(total=n, initial=min(start_step * bs, n), desc=f"epoch {epoch}/{s.epochs}",
                           unit="img", unit_scale=True, leave=False, disable=not self.progress,
                           dynamic_ncols=True)
                with pyro.settings.context(module_local_params=True), bar:
                    for step in range(start_step, steps):
                        idx = perm[step * bs : (step + 1) * bs][rank::world]  # this rank's shard
                        x = lik.targets(to_unit(train_x[idx]))
                        x = x.contiguous(memory_format=memory_format)
                        global_step = (epoch - 1) * steps + step
                        if schedule.kind != "constant":
                            vae.beta = schedule(global_step)
                        if isinstance(loss_fn, Capacity):
                            loss_fn.set_step(global_step)
                        try:
                            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=s.amp):
                                loss = (train_fn(x) if labels is None else
                                        train_fn(x, labels[idx]))
                        except ValueError as e:  # validation of a distribution fed NaN
                            if "invalid values" not in str(e):
                                raise
                            loss = torch.tensor(float("nan"), device=dev)
                        if world > 1:  # every rank learns of a signal or a bad loss on any rank
                            flags = torch.tensor([stop.signum, float(not torch.isfinite(loss))])
                            stop.signum, bad = (int(v) for v in self.dist.all_max(flags).tolist())
                            if bad:
                                loss = loss * float("nan")
                        if step % check_every == 0 and not torch.isfinite(loss):
                            if not s.skip_nonfinite:
                                raise TrainingError(_nonfinite_message(
                                    vae, x, None if labels is None else labels[idx], epoch,
                                    step + 1, s))
                            skipped += 1
                            bar.update(x.shape[0])
                            continue
                        self.optimizer.zero_grad(set_to_none=True)
                        (loss * world if world > 1 else loss).backward()
                        self.optimizer.step()
                        acc += loss.detach()
                        bar.update(x.shape[0] * world)
                        if self.progress and step % 10 == 0:
                            bar.set_postfix(loss=f"{loss.item() / x.shape[0]:.2f}")
                        done = step + 1
                        every = s.checkpoint_every and (epoch - 1) * steps + done
                        if stop.signum or (every and every % s.checkpoint_every == 0
                                           and done < steps):
                            self._checkpoint(epoch - 1, done, self.dist.all_sum(acc.clone()).item(),
                                             skipped, shuffle_state)
                        if stop.signum:
                            raise Interrupted(stop.signum, epoch, done, self.run_path)
                train_loss = self.dist.all_sum(acc).item() / n
                if not math.isfinite(train_loss):
                    raise TrainingError(_nonfinite_message(
                        vae, x, None if labels is None else labels[idx], epoch, None, s))

                # -- evaluate, then checkpoint and write the run folder -----------------------
                row: dict[str, float] = {"epoch": epoch, "train_loss": train_loss}
                test = self._evaluate(test_y) if test_y is not None else {}
                for key in ("neg_elbo", "recon", "kl"):
                    row[f"test_{key}"] = test.get(key, float("nan"))
                row["beta"] = vae.beta
                row["skipped"] = skipped
                row["seconds"] = time.perf_counter() - t0
                self.history.append(row)
                if self.run_path is not None:
                    self._checkpoint(epoch, 0, 0.0, 0, self.shuffle.get_state())
                    if self.dist.main:
                        self._write_pictures()
                if self.verbose:
                    tqdm.write(
                        f"epoch {epoch}/{s.epochs}  train loss {train_loss:.2f}  test -ELBO "
                        f"{row['test_neg_elbo']:.2f} nats/image  ({row['seconds']:.1f} s)"
                        + (f"  skipped {skipped} batches" if skipped else "")
                    )
                    sys.stdout.flush()  # shows in a log file (`> log`) as the epoch ends
                start_step, total, skipped = 0, 0.0, 0
                if stop.signum:
                    raise Interrupted(stop.signum, epoch, 0, self.run_path)
        # Hand back the model as `vaekit.load` builds it, so both compute the same numbers.
        vae.beta = base_beta
        vae.to(memory_format=torch.contiguous_format).eval()
        return FitResult(vae=vae, history=self.history, run_dir=self.run_path)

    def _evaluate(self, test_y: torch.Tensor) -> dict[str, float]:
        """Test -ELBO and its parts, each rank on its shard of the test set, summed over ranks."""
        shard = test_y[self.dist.rank :: self.dist.world]
        lab = None if self.test_lab is None else self.test_lab[self.dist.rank :: self.dist.world]
        m = evaluate_elbo(self.vae, shard, self.s.batch_size, lab)
        sums = torch.tensor([m["recon"] * len(shard), m["kl"] * len(shard)], dtype=torch.float64)
        recon, kl = (self.dist.all_sum(sums) / len(test_y)).tolist()
        return {"neg_elbo": recon + kl, "recon": recon, "kl": kl}

    # -- saving ---------------------------------------------------------------------------------
    def _checkpoint(self, epoch: int, step: int, total: float, skipped: int,
                    shuffle_state: torch.Tensor) -> None:
        """Save where training is: ``epoch`` epochs done plus ``step`` steps of the next one."""
        if self.run_path is None:
            return
        own = {"torch": torch.get_rng_state()}
        if self.dev.type == "cuda":
            own["cuda"] = torch.cuda.get_rng_state(self.dev)
        ranks = self.dist.gather(own)  # every rank's random state, for an exact resume
        if not self.dist.main:
            return
        rng = {**ranks[0], "shuffle": shuffle_state, "ranks": ranks}
        try:
            runs.save_checkpoint(self.run_path, {
                "model": self.vae.state_dict(), "optimizer": self.optimizer.state_dict(),
                "epoch": epoch, "step": step, "total": total, "skipped": skipped,
                "history": self.history, "rng": rng,
            })
            if step == 0:
                runs.append_metrics(self.run_path, self.history[-1])
        except OSError as e:
            raise CheckpointError(f"could not write the checkpoint in {self.run_path} "
                                  f"({e.strerror or e}); free space, then --resume") from None

    def _write_pictures(self) -> None:
        from vaekit import plots

        assert self.run_path is not None
        k = self.vae.num_classes
        plots.save_samples(self.vae, self.run_path / "samples.png",
                           labels=torch.arange(64) % k if k else None)
        plots.save_reconstructions(self.vae, self.show[:32], self.run_path / "reconstructions.png",
                                   labels=None if self.show_lab is None else self.show_lab[:32])
        plots.save_loss_curve(self.history, self.run_path / "loss.png")


def _check_images(vae: VAE, x: torch.Tensor, what: str) -> None:
    if x.dim() != 4 or tuple(x.shape[1:]) != vae.image_shape:
        raise DataError(
            f"{what} images have shape {tuple(x.shape[1:])} but the model takes {vae.image_shape}; "
            "resize the images or build the VAE with image_shape matching them"
        )
    vae.likelihood.check(to_unit(x))


def _check_labels(vae: VAE, x: torch.Tensor, labels: torch.Tensor | None, what: str) -> None:
    if labels is None or labels.shape != (x.shape[0],):
        raise DataError(f"a conditional VAE needs one integer label per {what} image; pass "
                        f"{what}_labels with shape [{x.shape[0]}]")
    if labels.is_floating_point() or int(labels.min()) < 0 or int(labels.max()) >= vae.num_classes:
        raise DataError(f"{what} labels must be integers in 0..{vae.num_classes - 1}")


def _nonfinite_message(vae: VAE, x: torch.Tensor, y: torch.Tensor | None, epoch: int,
                       step: int | None, s: TrainSettings) -> str:
    """Name where the loss stopped being finite, which term did it, and what to try."""
    where = f"epoch {epoch}" + (f", step {step}" if step else "")
    site = "the parameters (a previous update)"
    if all(torch.isfinite(p).all() for p in vae.parameters()):
        with torch.no_grad(), poutine.block(), pyro.validation_enabled(False):
            args = (x,) if y is None else (x, y)
            guide_tr = poutine.trace(vae.guide).get_trace(*args)
            model_tr = poutine.trace(poutine.replay(vae.model, trace=guide_tr)).get_trace(*args)
            z = guide_tr.nodes["z"]["value"]
            recon = model_tr.nodes["x"]["fn"].log_prob(x).sum()
            kl = (guide_tr.nodes["z"]["fn"].log_prob(z) - model_tr.nodes["z"]["fn"].log_prob(z)).sum()
        if not torch.isfinite(recon):
            site = "the reconstruction term log p(x|z)"
        elif not torch.isfinite(kl):
            site = "the KL term log q(z|x) - log p(z)"
        else:
            site = "a term that was finite when recomputed (a transient fault)"
    return (f"the loss became NaN or infinite in {where}, in {site}; lower the learning rate "
            f"(now {s.lr:g}) or, for a Gaussian likelihood, raise its scale, or pass "
            "--skip-nonfinite. The last good checkpoint is kept")


class _StopFlag:
    signum: int = 0


class _stop_on_signals:
    """Context manager: SIGINT/SIGTERM set a flag that the loop checks after each step."""

    def __enter__(self) -> _StopFlag:
        self.flag = _StopFlag()
        self.old: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.old[sig] = signal.signal(sig, self._handle)
        return self.flag

    def _handle(self, signum: int, frame: Any) -> None:
        if self.flag.signum:  # a second signal: stop at once
            raise KeyboardInterrupt
        self.flag.signum = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self.old.items():
            signal.signal(sig, handler)


def _set_rng_state(state: dict[str, Any], shuffle: torch.Generator, dev: torch.device,
                   rank: int, world: int) -> None:
    """Restore the random state; each rank its own when the world size is unchanged."""
    shuffle.set_state(state["shuffle"])
    own = state["ranks"][rank] if len(state.get("ranks", [])) == world else state
    if world > 1 and len(state.get("ranks", [])) != world:  # another world size: fresh noise
        own = {"torch": torch.Generator().manual_seed(int(state["torch"][:8].sum()) + rank)
               .get_state()}
    torch.set_rng_state(own["torch"])
    if dev.type == "cuda" and "cuda" in own:
        torch.cuda.set_rng_state(own["cuda"], dev)


def _version() -> str:
    from vaekit import __version__

    return __version__

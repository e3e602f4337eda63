"""Fit a VAE with SVI: ``Trace_ELBO`` as a torch module, Adam, data kept whole on the device.

    vae = VAE(z_dim=32, likelihood="bernoulli")
    result = fit(vae, train_x, test_x, TrainSettings(epochs=10), run_dir="runs/mnist")
    result = fit(vae, train_x, test_x, epochs=10, lr=1e-3)     # or the settings as keywords
    result.history[-1]["test_neg_elbo"]

Each epoch shuffles the training tensor by index, turns each batch into observations with the
likelihood (e.g. a fresh binarization of every batch) and takes one Adam step on the β-weighted
-ELBO (learning-rate schedule, gradient clipping and a weight average as the settings say; see
`vaekit.optim`). After each epoch the validation and test -ELBO are computed (of the averaged
weights, with ``ema``) and, with a ``run_dir``, the checkpoint, ``best.pt`` (the best validation
bound so far: the -ELBO, or the IWAE bound when the objective is ``iwae``), ``metrics.csv``
and the pictures are written (atomically); ``patience`` stops early. SIGINT/SIGTERM finish the
current step, write a checkpoint and raise `Interrupted`; `resume` continues a run folder from its
last checkpoint, bit for bit on the CPU of the same machine (other CPU kernels, e.g. AVX2
against AVX-512, round differently).
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyro
import torch

from vaekit import distributed, plots, runs
from vaekit.data import Splits, load_splits, resolve_data_root, to_unit
from vaekit.devices import deterministic, resolve_device, separate_compile_cache
from vaekit.distributed import stop_on_signals
from vaekit.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    Interrupted,
    PluginError,
    TrainingError,
)
from vaekit.evaluation import evaluate_elbo_sharded, iwae_bound_sharded
from vaekit.likelihoods import TEST_BINARIZATION_SEED, test_observations
from vaekit.model import VAE
from vaekit.objectives import BetaSchedule, Capacity, Objective, check_objective, make_objective
from vaekit.optim import LearningRate, ema_state, load_ema_state, make_ema
from vaekit.plugins import import_plugin
from vaekit.settings import (
    RESUME_OVERRIDES,
    DataSpec,
    ModelSpec,
    RunOptions,
    TrainSettings,
    from_mapping,
)
from vaekit.traces import site_log_probs
from vaekit.tracking import Logger, Reporter, epoch_line, make_loggers

__all__ = [
    "TrainSettings",
    "FitResult",
    "Position",
    "fit",
    "resume",
    "fit_settings",
    "resume_run",
    "TEST_BINARIZATION_SEED",
    "RESUME_OVERRIDES",
]



@dataclass
class FitResult:
    """What `fit` returns.

    Attributes:
        vae: The trained model (on the training device, in eval mode).
        history: One dict per epoch: ``epoch``, ``train_loss`` (mean β-weighted objective per
            image), ``test_neg_elbo``, ``test_recon``, ``test_kl``, ``val_neg_elbo``,
            ``val_recon``, ``val_kl``, and ``val_neg_iwae`` (the IWAE bound with the training's
            K) when the objective is ``iwae`` (nats per image; NaN without test data, absent
            without validation data),
            ``beta``, ``lr``, ``skipped`` (non-finite batches skipped) and ``seconds``.
        run_dir: The run folder, if one was written.
        best_epoch: The epoch with the best validation bound, `runs.validation_key` (None
            without validation data);
            ``vae`` then holds that epoch's weights.
        stopped_early: Whether ``patience`` ended the run before its last epoch.
    """

    vae: VAE
    history: list[dict[str, float]] = field(default_factory=list)
    run_dir: Path | None = None
    best_epoch: int | None = None
    stopped_early: bool = False

    @property
    def final(self) -> dict[str, float]:
        """The last epoch's metrics."""
        return self.history[-1]


@dataclass
class Position:
    """Where training stands; a checkpoint saves exactly this, beside the weights and optimizer.

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


def fit(
    vae: VAE,
    train_data: torch.Tensor | Splits,
    test_data: torch.Tensor | None = None,
    settings: TrainSettings | None = None,
    *,
    run_dir: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    train_labels: torch.Tensor | None = None,
    test_labels: torch.Tensor | None = None,
    val_data: torch.Tensor | None = None,
    val_labels: torch.Tensor | None = None,
    progress: bool = True,
    verbose: bool = True,
    model_spec: ModelSpec | None = None,
    data_spec: DataSpec | None = None,
    data_info: dict[str, Any] | None = None,
    loggers: Sequence[Logger] | None = None,
    **overrides: Any,
) -> FitResult:
    """Train ``vae`` by maximising the (β-weighted) ELBO with ``Trace_ELBO`` and Adam.

    Args:
        vae: The model to train (modified in place). Seed its construction yourself (e.g.
            ``pyro.set_rng_seed``) for identical initial weights.
        train_data: Training images ``[N, C, H, W]``, uint8 or float in [0, 1]; or all the data
            as a `vaekit.data.Splits` (then leave the test, validation and label arguments out).
        test_data: Test images for the per-epoch test -ELBO (optional).
        settings: The `TrainSettings` (default: all defaults).
        run_dir: Folder for ``config.json``, ``checkpoint.pt``, ``metrics.csv`` and pictures.
        overwrite: Write into a ``run_dir`` that already has files (old run files are removed).
        train_labels: Integer labels of the training images, for a conditional VAE.
        test_labels: Integer labels of the test images, for a conditional VAE.
        val_data: Validation images, held out of ``train_data``: their -ELBO every epoch picks
            the best epoch (``best.pt``, the returned model) and drives ``patience`` and the
            ``plateau`` learning-rate schedule.
        val_labels: Integer labels of the validation images, for a conditional VAE.
        progress: Show a progress bar.
        verbose: Print one line per epoch (train loss, test -ELBO, seconds), flushed at once.
        model_spec: The `ModelSpec` that built ``vae``, for ``config.json`` (default:
            ``vae.spec()``).
        data_spec: The `DataSpec` of the data, for ``config.json``.
        data_info: Facts about the data for ``config.json`` (root used, image counts).
        loggers: Experiment trackers (`vaekit.tracking.Logger`), e.g.
            ``[TensorBoardLogger(), MLflowLogger()]`` or your own.
        **overrides: `TrainSettings` fields that replace those of ``settings`` (e.g.
            ``epochs=2, lr=1e-3``).

    Returns:
        A `FitResult` with the trained model and the per-epoch metrics.

    Raises:
        ConfigError: for invalid settings or a run folder that is in the way.
        DataError: for images of the wrong shape or range.
        TrainingError: when the loss stops being finite (the last good checkpoint is kept).
        Interrupted: on SIGINT/SIGTERM, after writing a checkpoint.
    """
    settings = from_mapping(TrainSettings, {**dataclasses.asdict(settings or TrainSettings()),
                                            **overrides})
    run = RunOptions(out=None if run_dir is None else str(run_dir), overwrite=overwrite,
                     progress=progress)
    config = runs.make_config(vae, settings, model_spec, data_spec, run, data_info)
    splits = _splits(train_data, test_data, train_labels, test_labels, val_data, val_labels)
    trainer = _Trainer(vae, splits, settings, run_dir, progress, verbose, loggers)
    return trainer.run(config, overwrite=overwrite)


def resume(
    run_dir: str | os.PathLike[str],
    train_data: torch.Tensor | Splits,
    test_data: torch.Tensor | None = None,
    *,
    progress: bool = True,
    verbose: bool = True,
    train_labels: torch.Tensor | None = None,
    test_labels: torch.Tensor | None = None,
    val_data: torch.Tensor | None = None,
    val_labels: torch.Tensor | None = None,
    trust_plugins: bool = False,
    loggers: Sequence[Logger] | None = None,
    **overrides: Any,
) -> FitResult:
    """Continue a run folder from its last checkpoint (model, optimizer, position, RNG state).

    A run killed before its first checkpoint starts again from its seeded initial weights.

    Args:
        run_dir: A folder written by `fit`.
        train_data: The same training images as the original run (or all its data as a
            `vaekit.data.Splits`).
        test_data: The same test images, if the run had them.
        progress: Show a progress bar.
        verbose: Print one line per epoch.
        train_labels: The training labels, for a conditional VAE.
        test_labels: The test labels, for a conditional VAE.
        val_data: The same validation images, if the run had them.
        val_labels: Their labels, for a conditional VAE.
        trust_plugins: Import the modules the run names (its networks, its likelihood); see
            `vaekit.load`.
        loggers: Experiment trackers, continued where the run stopped (see `fit`).
        **overrides: New values of the settings in `RESUME_OVERRIDES`: ``epochs`` (a new
            total), ``device``, ``patience``, and, to get past a divergence, ``lr`` (replaces
            the learning rate in the restored optimizer too), ``clip_grad``, ``skip_nonfinite``
            and ``checkpoint_every``; None keeps the run's own.

    Raises:
        ConfigError: for a setting that a resumed run cannot change.
        CheckpointError: if the folder or its checkpoint cannot be used.
    """
    changes = {k: v for k, v in overrides.items() if v is not None}
    bad = sorted(set(changes) - set(RESUME_OVERRIDES))
    if bad:
        raise ConfigError(f"{', '.join(bad)} cannot change when resuming: the run's settings come "
                          f"from its config.json (only {', '.join(RESUME_OVERRIDES)} can)")
    config = runs.read_config(run_dir)
    try:
        settings = from_mapping(TrainSettings, {**config["train"], **changes})
        pyro.set_rng_seed(settings.seed)  # the initial weights, as `vaekit fit` builds them
        vae = VAE.from_config(runs.vae_config(config), trust_plugins=trust_plugins)
    except PluginError:  # names the module to import or trust
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as e:  # ConfigError too
        raise CheckpointError(f"{run_dir}/config.json cannot be used to resume ({e})") from None
    position, state = None, {}
    if (Path(run_dir) / runs.CHECKPOINT).exists():
        state = runs.load_checkpoint(run_dir)
        runs.load_weights(vae, state, run_dir)
        try:
            position = Position.from_checkpoint(state)
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"the checkpoint in {run_dir} has no valid training position "
                                  f"({type(e).__name__}: {e}); delete it to start over") from None
    config = {**config, "train": dataclasses.asdict(settings)}
    splits = _splits(train_data, test_data, train_labels, test_labels, val_data, val_labels)
    trainer = _Trainer(vae, splits, settings, run_dir, progress, verbose, loggers)
    trainer.new_lr = "lr" in changes
    return trainer.run(config, resuming=True, position=position, state=state)


def fit_settings(model: ModelSpec, data: DataSpec, train: TrainSettings, run: RunOptions,
                 verbose: bool = True, trust_plugins: bool = True,
                 trusted: Mapping[str, str] | None = None) -> FitResult:
    """Load the data, build the model and fit it, all from settings (what ``vaekit fit`` does).

    The initial weights are seeded with ``train.seed``. The run folder is ``run.out``, or
    ``runs/<timestamp>`` when it is None. With ``trust_plugins=False`` (settings read from a
    file), a network, prior, posterior or likelihood named ``module:Class`` is imported only if
    its module already is, or is one of ``trusted`` (``{field: "module:Class"}`` that the user
    gave themselves, e.g. on the command line).
    """
    for part, name in (trusted or {}).items():
        import_plugin(str(name).partition(":")[0], f"the {part} {name!r}", trust=True)
    splits = load_splits(data)
    loggers = make_loggers(run.logger, run.mlflow_uri)  # a missing library: before anything
    train_x, train_y = splits.train
    pyro.set_rng_seed(train.seed)  # the initial weights too
    vae = VAE.from_spec(model, tuple(train_x.shape[1:]), int(train_y.max()) + 1,
                        trust_plugins=trust_plugins)
    out = Path(run.out) if run.out is not None else runs.default_run_dir()
    info = {"root": str(resolve_data_root(data.root)), "n_train": len(train_x),
            "n_val": 0 if splits.val is None else len(splits.val[0]),
            "n_test": len(splits.test[0])}
    config = runs.make_config(vae, train, model, data, run, info)
    trainer = _Trainer(vae, splits, train, out, run.progress, verbose, loggers)
    return trainer.run(config, overwrite=run.overwrite)


def resume_run(run_dir: str | os.PathLike[str], *, root: str | None = None,
               download: bool | None = None, progress: bool = True, verbose: bool = True,
               trust_plugins: bool = False, mlflow_uri: str | None = None,
               **overrides: Any) -> FitResult:
    """Continue a run folder, loading the data it was trained on (see `resume`).

    Args:
        run_dir: The run folder.
        root: Another data root (default: the run's own).
        download: Download missing data (default: the run's own setting).
        progress: Show a progress bar.
        verbose: Print one line per epoch.
        trust_plugins: Import the modules the run names (see `vaekit.load`).
        mlflow_uri: The MLflow tracking URI the run records, given again: a run folder does not
            choose where its data is sent, so a run logging to MLflow at a URI of its own is
            refused unless this repeats it.
        **overrides: As for `resume`.

    Raises:
        ConfigError: for an MLflow URI that is not repeated, and as `resume` does.
    """
    config = runs.read_config(run_dir)
    if config.get("data") and "val" not in config["data"]:  # a run of vaekit <= 0.1: no split
        config = {**config, "data": {**config["data"], "val": 0}}
    recorded = config.get("run") or {}
    names = tuple(recorded.get("logger") or ())
    uri = recorded.get("mlflow_uri")
    if "mlflow" in names and uri is not None and uri != mlflow_uri:
        raise ConfigError(f"{run_dir} logs to the MLflow server {uri}; a run folder does not "
                          f"choose where its data is sent: resume with --mlflow-uri {uri} "
                          "(mlflow_uri=) to send it there")
    loggers = make_loggers(names, uri)
    splits = load_splits(runs.run_data_spec(config, root=root, download=download))
    return resume(run_dir, splits, progress=progress, verbose=verbose,
                  trust_plugins=trust_plugins, loggers=loggers, **overrides)


class _Trainer:
    """The training loop and everything it must save to resume exactly."""

    def __init__(self, vae: VAE, splits: Splits, settings: TrainSettings,
                 run_dir: str | os.PathLike[str] | None, progress: bool, verbose: bool,
                 loggers: Sequence[Logger] | None = None) -> None:
        # -- check everything before touching the disk --------------------------------------
        _check_images(vae, splits.train[0], "training")
        self.dist, self.dev = distributed.setup(resolve_device(settings.device))
        splits = _checked(vae, splits, settings, self.dist.world)
        (train_data, train_labels) = splits.train
        (test_data, test_labels) = splits.test if splits.test is not None else (None, None)
        (val_data, val_labels) = splits.val if splits.val is not None else (None, None)
        self.vae, self.s = vae, settings
        self.train_data, self.test_data, self.val_data = train_data, test_data, val_data
        self.train_labels, self.test_labels, self.val_labels = train_labels, test_labels, val_labels
        self.report = Reporter(loggers or [], verbose, progress, self.dist.main)  # rank 0
        self.run_path = Path(run_dir) if run_dir is not None else None
        self.folder = runs.RunFolder(self.run_path) if self.run_path is not None else None
        self.best_weights: dict[str, torch.Tensor] | None = None  # this session's best epoch
        self.new_lr = False  # resume was given a learning rate

    # -- the table of contents -------------------------------------------------------------------
    def run(self, config: dict[str, Any], overwrite: bool = False, resuming: bool = False,
            position: Position | None = None,
            state: dict[str, Any] | None = None) -> FitResult:
        """Train from ``position`` (and the rest of checkpoint ``state``) or from the start."""
        self.config = config
        try:
            self._prepare_run_dir(config, overwrite, resuming)
            return self._train(position, state or {})
        except BaseException as e:
            self.report.finish({}, "KILLED" if isinstance(e, (Interrupted, KeyboardInterrupt))
                                 else "FAILED")
            raise
        finally:
            if self.folder is not None:
                self.folder.release()

    def _train(self, position: Position | None, state: dict[str, Any]) -> FitResult:
        with deterministic(self.s.deterministic):
            self._build()
            pos = self._restore(position, state)
            self.stopping = 0  # the signal every rank agreed to stop on (see `_agreed_stop`)
            with stop_on_signals() as self.stop:
                if position is None:
                    self._checkpoint(pos)  # step 0: resume restores these weights, not a seed
                self.report.start(self.config, self.run_path,  # after it: resumable
                                  pos.epoch * self.steps + pos.step, resumed=position is not None)
                while pos.epoch < self.s.epochs and not self._out_of_patience(pos.history):
                    self._train_epoch(pos)
                    self._end_epoch(pos)
                if self.folder is not None and self.dist.main and pos.history and \
                        not self.folder.pictures_complete(pos.epoch):  # killed while
                    self._write_pictures(pos.history)  # drawing them, a full disk: draw again
        return self._finish(pos)

    # -- set-up ---------------------------------------------------------------------------------
    def _prepare_run_dir(self, config: dict[str, Any], overwrite: bool, resuming: bool) -> None:
        """Claim the run folder on rank 0 (`runs.RunFolder.claim`); its error stops every rank."""
        if self.folder is None:
            return
        error = None
        if self.dist.main:
            try:
                self.folder.claim(config, overwrite, resuming)
            except ConfigError as e:
                error = str(e)
        error = self.dist.from_main(error)
        if error:
            raise ConfigError(error)
        if not resuming:  # announced once it is claimed, never before
            self.report.line(f"run folder: {self.folder.path}")

    def _build(self) -> None:
        """Seeds, the model and data on the device, the objective, the optimizer."""
        s, vae, dev = self.s, self.vae, self.dev
        rank, world = self.dist.rank, self.dist.world
        pyro.set_rng_seed(s.seed + rank)  # each rank its own noise; the same shuffling on all
        self.shuffle = torch.Generator().manual_seed(s.seed)
        vae.to(dev).train()
        if world > 1 and s.sync_batchnorm:
            distributed.convert_sync_batchnorm(vae, dev)
        self.memory_format = torch.channels_last if s.channels_last else torch.contiguous_format
        vae.to(memory_format=self.memory_format)
        if s.compile:
            if dev.type == "cpu":
                separate_compile_cache()
            vae.encoder.compile()
            vae.decoder.compile()
        lik = vae.likelihood
        self.train_x = self.train_data.to(dev)
        self.labels = self.train_labels.to(dev) if self.train_labels is not None else None
        self.test_y = self.test_lab = self.val_y = self.val_lab = None
        if self.test_data is not None:
            self.test_y = test_observations(lik, self.test_data).to(dev)
            self.test_lab = self.test_labels.to(dev) if self.test_labels is not None else None
        if self.val_data is not None:
            self.val_y = test_observations(lik, self.val_data).to(dev)
            self.val_lab = self.val_labels.to(dev) if self.val_labels is not None else None
        # the pictures' images: test observations, else 32 training images
        self.show = self.test_y if self.test_y is not None else lik.targets(to_unit(self.train_x[:32]))
        self.show_lab = self.test_lab if self.test_y is not None else (
            self.labels[:32] if self.labels is not None else None)
        self.base_beta = vae.beta
        self.schedule = BetaSchedule.parse(s.beta_schedule, beta=self.base_beta)
        with pyro.settings.context(module_local_params=True):
            self.loss_fn = make_objective(vae, s.objective, iwae_samples=s.iwae_samples,
                                          gamma=s.gamma, capacity=s.capacity,
                                          capacity_steps=s.capacity_steps, free_bits=s.free_bits)
        self.optimizer = torch.optim.Adam(self.loss_fn.parameters(), lr=s.lr)
        # Several processes: DDP averages gradients, so each rank's summed loss is scaled by the
        # world size to give the gradient of the global batch's sum, as one process computes it.
        self.train_fn = self.loss_fn
        wrap = None
        if world > 1:
            from torch.nn.parallel import DistributedDataParallel

            def wrap(module: torch.nn.Module) -> torch.nn.Module:
                return DistributedDataParallel(
                    module, device_ids=[dev.index] if dev.type == "cuda" else None)

            self.train_fn = wrap(self.loss_fn)
        # an objective that owns part of the step: its networks and optimizers, wrapped alike
        self.aux = isinstance(self.loss_fn, Objective)
        if self.aux:
            self.loss_fn.setup(dev, wrap)
        n, bs = self.train_x.shape[0], s.batch_size
        self.steps = n // bs + (1 if n % bs >= world else 0)  # a last batch too small to split: dropped
        self.lr = LearningRate(self.optimizer, s.lr_schedule, s.lr, s.lr_min, s.epochs * self.steps)
        self.ema = make_ema(vae, s.ema) if s.ema else None
        # Checking the loss needs the host: every step on the CPU (free), every 10 steps on a GPU.
        self.check_every = 1 if (dev.type == "cpu" or s.skip_nonfinite) else 10

    def _restore(self, position: Position | None, state: dict[str, Any]) -> Position:
        """The position to start from: a checkpoint's (optimizer, schedule, average and RNG
        too), or the start."""
        if position is None:
            return Position(rng={"shuffle": self.shuffle.get_state()})
        try:
            self.load_state_dict(state)
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"the checkpoint in {self.run_path} does not fit this run's "
                                  f"settings ({type(e).__name__}: {e})") from None
        if self.new_lr or "optimizer" not in state:  # a new lr given to resume wins; else the
            for group in self.optimizer.param_groups:  # restored one (where a plateau took it)
                group["lr"] = self.s.lr
        if position.step >= self.steps and position.step:
            raise CheckpointError(f"the checkpoint in {self.run_path} is at step {position.step} "
                                  f"of an epoch of {self.steps} steps; restore it or delete it "
                                  "to start over")
        try:
            self.shuffle.set_state(position.rng["shuffle"])
            self.dist.restore_random_state(position.rng, self.dev)
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as e:
            raise CheckpointError(f"the checkpoint in {self.run_path} has unusable random states "
                                  f"({type(e).__name__}: {e}); restore it or delete it to start "
                                  "over") from None
        if self.folder is not None and self.dist.main:  # metrics.csv follows the checkpoint
            self.folder.rewrite_metrics(position.history)
        return position

    # -- one epoch --------------------------------------------------------------------------------
    def _train_epoch(self, pos: Position) -> None:
        """One pass over the shuffled training data, from ``pos.step``; moves ``pos`` along."""
        s, vae, dev, lik = self.s, self.vae, self.dev, self.vae.likelihood
        rank, world, bs = self.dist.rank, self.dist.world, s.batch_size
        epoch = pos.epoch + 1
        self.t0 = time.perf_counter()
        vae.train()
        pos.rng["shuffle"] = self.shuffle.get_state()  # this epoch's order, for a resume in it
        n = self.train_x.shape[0]
        perm = torch.randperm(n, generator=self.shuffle).to(dev)
        acc = torch.tensor(pos.total if self.dist.main else 0.0, device=dev)  # summed over ranks
        x, y = self.train_x[:0], None  # for the message if a resumed epoch has no step left
        bar = self.report.bar(n, min(pos.step * bs, n), f"epoch {epoch}/{s.epochs}")
        with pyro.settings.context(module_local_params=True), bar:
            for step in range(pos.step, self.steps):
                # -- the batch: this rank's shard, as the likelihood observes it ----------
                idx = perm[step * bs : (step + 1) * bs][rank::world]
                x = lik.targets(to_unit(self.train_x[idx])).contiguous(
                    memory_format=self.memory_format)
                y = None if self.labels is None else self.labels[idx]
                global_step = pos.epoch * self.steps + step
                # -- the step: schedules, the objective, one update (skipped if not finite)
                if self.schedule.kind != "constant":
                    vae.beta = self.schedule(global_step)
                if isinstance(self.loss_fn, Capacity):
                    self.loss_fn.set_step(global_step)
                self.lr.at_step(global_step)
                loss = self._loss(x, y)
                if step % self.check_every == 0 and not torch.isfinite(loss):
                    if not s.skip_nonfinite:
                        raise TrainingError(_nonfinite_message(vae, x, y, epoch, step + 1, s,
                                                               self._saved))
                    pos.skipped += 1
                    bar.update(x.shape[0])
                    continue
                self.optimizer.zero_grad(set_to_none=True)
                (loss * world if world > 1 else loss).backward()
                if s.skip_nonfinite and not self._finite_gradients():  # a skipped step must
                    pos.skipped += 1                                   # not touch the weights
                    bar.update(x.shape[0] * world)
                    continue
                if s.clip_grad:
                    torch.nn.utils.clip_grad_norm_(self.loss_fn.parameters(), s.clip_grad)
                self.optimizer.step()
                if self.ema is not None:
                    self.ema.update_parameters(vae)
                if self.aux:  # the objective's own updates, after the VAE's
                    self.loss_fn.auxiliary_step(x, y, global_step)
                # -- bookkeeping: the sums, the reports, a checkpoint or a stop if due ----
                acc += loss.detach()
                if self.report.tracking and step % self.check_every == 0:
                    self.report.step(global_step + 1, {
                        "train/loss": loss.item() / x.shape[0], "train/lr": self.lr.current,
                        "train/beta": float(vae.beta)})
                bar.update(x.shape[0] * world)
                if self.report.progress and step % 10 == 0:
                    bar.set_postfix(loss=f"{loss.item() / x.shape[0]:.2f}")
                pos.step = step + 1
                done = pos.epoch * self.steps + pos.step
                every = s.checkpoint_every and done % s.checkpoint_every == 0
                # `self.stopping`, not the flag itself: every rank must take the same branch,
                # and a signal handled after this step's agreement waits for the next step
                if self.stopping or (every and pos.step < self.steps):
                    pos.total = self.dist.all_sum(acc.clone()).item()
                    self._checkpoint(pos)
                if self.stopping:
                    raise Interrupted(self.stopping, epoch, pos.step, self.run_path)
        self.train_loss = self.dist.all_sum(acc).item() / n
        if not math.isfinite(self.train_loss) or not all(  # the last update made them NaN
                bool(torch.isfinite(t).all()) for t in (*vae.parameters(), *vae.buffers())
                if t.is_floating_point()):  # (BatchNorm's running statistics too)
            raise TrainingError(_nonfinite_message(vae, x, y, epoch, None, s, self._saved))

    def _finite_gradients(self) -> bool:
        """Whether every gradient is finite (on every rank)."""
        finite = all(bool(torch.isfinite(p.grad).all()) for p in self.loss_fn.parameters()
                     if p.grad is not None)
        if self.dist.world > 1:
            finite = not bool(self.dist.all_max(torch.tensor([float(not finite)])).item())
        return finite

    def _agreed_stop(self) -> int:
        """The signal that stops training, the same on every rank (0: none so far)."""
        self.stopping = self.dist.agree(self.stop.signum)[0]
        return self.stopping

    def _loss(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """The objective on this rank's batch; NaN on every rank if it is NaN on any. Also
        agrees on whether a signal stops training (`self.stopping`)."""
        dev = self.dev
        try:
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=self.s.amp):
                loss = self.train_fn(x) if y is None else self.train_fn(x, y)
        except ValueError as e:  # validation of a distribution fed NaN
            if "invalid values" not in str(e):
                raise
            loss = torch.tensor(float("nan"), device=dev)
        if self.dist.world > 1:  # every rank learns of a signal or a bad loss on any rank
            self.stopping, bad = self.dist.agree(self.stop.signum, not torch.isfinite(loss))
            if bad:
                loss = loss * float("nan")
        else:
            self.stopping = self.stop.signum
        return loss

    @property
    def _saved(self) -> str | None:
        """What the last checkpoint holds (None: no run folder, or none written yet)."""
        return self.folder.saved if self.folder is not None else None

    @property
    def model(self) -> VAE:
        """The weights that are evaluated, drawn and saved as the run's model: the average's
        (``ema``), else the trained ones."""
        return self.ema.module if self.ema is not None else self.vae  # type: ignore[return-value]

    def _end_epoch(self, pos: Position) -> None:
        """The end of an epoch: evaluate -> select -> save -> report -> stop?

        The ordering rules:
          1. The row is complete (every bound evaluated) before anything is written.
          2. best.pt before the checkpoint of its epoch: a kill between the two redoes the
             epoch, never leaves a checkpoint whose best epoch has no best.pt.
          3. metrics.csv after the checkpoint (`runs.RunFolder.save_checkpoint`): the table never
             holds an epoch the checkpoint does not; resume rewrites it from the checkpoint.
          4. The pictures after the checkpoint, marked complete last: a kill while drawing them
             is redrawn on resume.
          5. The trackers and the console line last, once the epoch is safe on disk.
          6. The stop signal is agreed on by every rank at this one point.
        """
        epoch = pos.epoch + 1
        # -- evaluate ------------------------------------------------------------------------
        row: dict[str, float] = {"epoch": epoch, "train_loss": self.train_loss}
        for split, obs, lab in (("test", self.test_y, self.test_lab),
                                ("val", self.val_y, self.val_lab)):
            if split == "val" and obs is None:
                continue  # no validation columns without validation images
            m = self._evaluate(obs, lab, epoch) if obs is not None else {}
            for key in ("neg_elbo", "recon", "kl"):
                row[f"{split}_{key}"] = m.get(key, float("nan"))
        if self.val_y is not None and self.s.objective == "iwae":  # select on the trained bound
            row["val_neg_iwae"] = self._evaluate_iwae(self.val_y, self.val_lab)
        row.update(beta=self.vae.beta, lr=self.lr.current, skipped=pos.skipped,
                   seconds=time.perf_counter() - self.t0)
        # -- select --------------------------------------------------------------------------
        best = runs.best_validation(pos.history)[1]
        key = runs.validation_key([row])  # val_neg_iwae when training IWAE, else val_neg_elbo
        improved = self.val_y is not None and row[key] < best
        pos.history.append(row)
        pos.epoch, pos.step, pos.total, pos.skipped = epoch, 0, 0.0, 0
        self.lr.at_epoch_end(row.get(key))
        # -- save (rules 2-4) ----------------------------------------------------------------
        if improved:
            self._save_best(epoch, key, row[key])
        self._checkpoint(pos, row)
        if self.folder is not None and self.dist.main:
            self._write_pictures(pos.history)
        # -- report (rule 5) -----------------------------------------------------------------
        pictures = ({"samples": self.run_path / runs.SAMPLES,
                     "reconstructions": self.run_path / runs.RECONSTRUCTIONS}
                    if self.run_path is not None else None)
        self.report.epoch(row, epoch * self.steps,
                          self.train_x.shape[0] / max(row["seconds"], 1e-9), pictures)
        self.report.line(epoch_line(row, self.s.epochs, improved, key, self.s.iwae_samples))
        if self._out_of_patience(pos.history) and epoch < self.s.epochs:
            what = "IWAE bound" if key == "val_neg_iwae" else "-ELBO"
            self.report.line(f"early stop: no better validation {what} in {self.s.patience} "
                             f"epochs (best: epoch {runs.best_validation(pos.history)[0]})")
        # -- stop? (rule 6) ------------------------------------------------------------------
        if self._agreed_stop():
            raise Interrupted(self.stopping, epoch, 0, self.run_path)

    # -- experiment tracking (rank 0) -------------------------------------------------------------
    def _out_of_patience(self, history: list[dict[str, float]]) -> bool:
        """Whether ``patience`` epochs have passed since the best validation -ELBO."""
        if not (self.s.patience and self.val_y is not None and history):
            return False
        return history[-1]["epoch"] - runs.best_validation(history)[0] >= self.s.patience

    def _evaluate(self, obs: torch.Tensor, lab: torch.Tensor | None, epoch: int
                  ) -> dict[str, float]:
        """-ELBO and its parts of `model` on ``obs``, each rank on its shard, summed over ranks;
        weights that overflow on these images are a `TrainingError` naming the term."""
        try:
            return evaluate_elbo_sharded(self.model, obs, self.dist, self.s.batch_size, lab)
        except ValueError as e:  # a distribution fed NaN
            if "invalid values" not in str(e):
                raise
            raise TrainingError(_nonfinite_message(self.vae, obs[:64], None if lab is None
                                                   else lab[:64], epoch, None, self.s,
                                                   self._saved)) from None

    def _evaluate_iwae(self, obs: torch.Tensor, lab: torch.Tensor | None) -> float:
        """The IWAE bound of `model` with the training's K (see `iwae_bound_sharded`)."""
        return iwae_bound_sharded(self.model, obs, self.dist, self.s.iwae_samples,
                                  self.s.batch_size, lab)

    def _save_best(self, epoch: int, key: str, value: float) -> None:
        """Keep `model`'s weights as the best so far: in memory, and as best.pt in the folder."""
        weights = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
        self.best_weights = weights
        if self.folder is not None and self.dist.main:
            self.folder.save_best(weights, epoch, key, value)

    def _finish(self, pos: Position) -> FitResult:
        """Hand back the model as `vaekit.load` builds it, so both compute the same numbers:
        the best validation epoch's weights, else the average's, else the trained ones."""
        best_epoch, best_value = runs.best_validation(pos.history)
        best_epoch = best_epoch if self.val_y is not None else None
        weights = self.best_weights
        if best_epoch and weights is None and self.run_path is not None:  # best before a resume
            weights = runs.load_checkpoint(self.run_path, name=runs.BEST)["model"]
        if weights is None and self.ema is not None:
            weights = self.ema.module.state_dict()
        if weights is not None:
            self.vae.load_state_dict(weights)
        self.vae.beta = self.base_beta
        self.vae.to(memory_format=torch.contiguous_format).eval()
        summary = {k: v for k, v in (pos.history[-1] if pos.history else {}).items()
                   if k.startswith(("test_", "val_", "train_"))}
        if best_epoch:
            summary["best_epoch"] = best_epoch
            summary[f"best_{runs.validation_key(pos.history)}"] = best_value
        self.report.finish(summary, "FINISHED")
        return FitResult(vae=self.vae, history=pos.history, run_dir=self.run_path,
                         best_epoch=best_epoch, stopped_early=pos.epoch < self.s.epochs)

    # -- saving ---------------------------------------------------------------------------------
    def _checkpoint(self, pos: Position, row: dict[str, float] | None = None) -> None:
        """Save ``pos`` with the weights and optimizer (and ``row`` into metrics.csv)."""
        if self.run_path is None:
            self.report.flush()  # nothing to resume from: hand them over now
            return
        ranks = self.dist.random_states(self.dev)  # every rank's, for an exact resume
        if not self.dist.main:
            return
        shuffle = self.shuffle.get_state() if pos.step == 0 else pos.rng["shuffle"]
        pos.rng = {**ranks[0], "shuffle": shuffle, "ranks": ranks}
        self.folder.save_checkpoint({**self.state_dict(), **dataclasses.asdict(pos)}, row)
        self.report.flush()

    def state_dict(self) -> dict[str, Any]:
        """The whole training state but the position: the weights, the optimizer, the learning
        rate schedule, the weight average, and what the objective owns (its networks and their
        optimizers). With `Position` (its random states included) it is the checkpoint."""
        state: dict[str, Any] = {"model": self.vae.state_dict(),
                                 "optimizer": self.optimizer.state_dict(),
                                 "lr_schedule": self.lr.state_dict()}
        if self.ema is not None:
            state["ema"] = ema_state(self.ema)
        if self.aux:
            state["objective"] = self.loss_fn.auxiliary_state()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `state_dict` (the weights are loaded before the trainer is built); parts a
        checkpoint of an older vaekit lacks keep their fresh values."""
        if "optimizer" in state:
            self.optimizer.load_state_dict(state["optimizer"])
        self.lr.load_state_dict(state.get("lr_schedule") or {})
        if self.ema is not None and state.get("ema"):
            load_ema_state(self.ema, state["ema"])
        if self.aux and "objective" in state:
            self.loss_fn.load_auxiliary_state(state["objective"])

    def _write_pictures(self, history: list[dict[str, float]]) -> None:
        """samples.png, reconstructions.png and loss.png (atomically); a full disk is one line."""
        self.folder.write_pictures(lambda _: self._draw(history), int(history[-1]["epoch"]))

    def _draw(self, history: list[dict[str, float]]) -> None:
        assert self.run_path is not None
        k = self.vae.num_classes
        plots.save_samples(self.model, self.run_path / runs.SAMPLES,
                           labels=torch.arange(64) % k if k else None)
        plots.save_reconstructions(self.model, self.show[:32],
                                   self.run_path / runs.RECONSTRUCTIONS,
                                   labels=None if self.show_lab is None else self.show_lab[:32])
        plots.save_loss_curve(history, self.run_path / runs.LOSS)


def _splits(train: torch.Tensor | Splits, test: torch.Tensor | None,
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


def _checked(vae: VAE, splits: Splits, s: TrainSettings, world: int) -> Splits:
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
            _check_images(vae, part[0], what)
            if vae.num_classes:
                _check_labels(vae, part[0], part[1], what)
    if vae.num_classes:
        return splits
    return Splits((train, None), None if splits.val is None else (splits.val[0], None),
                  None if splits.test is None else (splits.test[0], None))


def _check_images(vae: VAE, x: torch.Tensor, what: str) -> None:
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


def _check_labels(vae: VAE, x: torch.Tensor, labels: torch.Tensor | None, what: str) -> None:
    if labels is None or labels.shape != (x.shape[0],):
        raise DataError(f"a conditional VAE needs one integer label per {what} image; pass "
                        f"{what}_labels with shape [{x.shape[0]}]")
    if labels.is_floating_point() or int(labels.min()) < 0 or int(labels.max()) >= vae.num_classes:
        raise DataError(f"{what} labels must be integers in 0..{vae.num_classes - 1}")


def _nonfinite_message(vae: VAE, x: torch.Tensor, y: torch.Tensor | None, epoch: int,
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

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

from vaekit import distributed, runs
from vaekit.checks import as_splits, check_images, checked_splits, nonfinite_message
from vaekit.data import Splits, load_splits, resolve_data_root, to_unit
from vaekit.devices import deterministic, resolve_device
from vaekit.distributed import stop_on_signals
from vaekit.errors import CheckpointError, ConfigError, Interrupted, PluginError, TrainingError
from vaekit.likelihoods import TEST_BINARIZATION_SEED
from vaekit.model import VAE
from vaekit.plugins import import_plugin
from vaekit.session import Position, TrainingState
from vaekit.settings import (
    RESUME_OVERRIDES,
    DataSpec,
    ModelSpec,
    RunOptions,
    TrainSettings,
    from_mapping,
)
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
    splits = as_splits(train_data, test_data, train_labels, test_labels, val_data, val_labels)
    report = Reporter(loggers or [], verbose, progress)
    return train_loop(vae, splits, settings, run_dir, report, config, overwrite=overwrite)


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
    splits = as_splits(train_data, test_data, train_labels, test_labels, val_data, val_labels)
    report = Reporter(loggers or [], verbose, progress)
    return train_loop(vae, splits, settings, run_dir, report, config, position=position,
                      checkpoint=state, new_lr="lr" in changes)


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
    report = Reporter(loggers, verbose, run.progress)
    return train_loop(vae, splits, train, out, report, config, overwrite=run.overwrite)


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


def train_loop(vae: VAE, splits: Splits, s: TrainSettings,
               run_dir: str | os.PathLike[str] | None, report: Reporter, config: dict[str, Any],
               *, overwrite: bool = False, position: Position | None = None,
               checkpoint: dict[str, Any] | None = None, new_lr: bool = False) -> FitResult:
    """The training loop: prepare -> restore -> per epoch (per step: batch -> objective step
    -> bookkeeping), evaluate -> select -> save -> report -> stop? -> finish.

    `fit` and `resume` call it; ``position`` and ``checkpoint`` (a `resume`) continue a run,
    ``new_lr`` replaces the restored learning rate. The ordering rules:
      1. Everything is checked before the disk is touched; rank 0 claims the run folder and
         its error stops every rank.
      2. A fresh run writes a checkpoint before its first step: resume restores those
         weights and random states, not a seed.
      3. A signal stops a step at its end, at the step every rank agrees on (`TrainingState.loss`),
         after a checkpoint of that step.
      4. An epoch's row is complete (every bound evaluated) before anything is written.
      5. best.pt before the checkpoint of its epoch: a kill between the two redoes the
         epoch, never leaves a checkpoint whose best epoch has no best.pt.
      6. metrics.csv after the checkpoint (`runs.RunFolder.save_checkpoint`): the table never
         holds an epoch the checkpoint does not; resume rewrites it from the checkpoint.
      7. The pictures after the checkpoint, marked complete last: a kill while drawing them
         is redrawn on resume (as the loop ends).
      8. The trackers and the console line last, once the epoch is safe on disk.
      9. At an epoch's end the stop signal is agreed on by every rank at one point.
    """
    # -- prepare: check everything before touching the disk (rule 1) -----------------------
    check_images(vae, splits.train[0], "training")
    dist, dev = distributed.setup(resolve_device(s.device))
    splits = checked_splits(vae, splits, s, dist.world)
    report.on_rank(dist.main)  # rank 0 reports for all
    folder = runs.RunFolder(run_dir) if run_dir is not None else None
    run_path = folder.path if folder is not None else None
    try:
        _claim(folder, config, overwrite, position is not None or checkpoint is not None,
               dist, report)
        with deterministic(s.deterministic):
            # -- restore: the state built, then a checkpoint's loaded -----------------------
            t = TrainingState(vae, splits, s, dist, dev)
            data, lik, bs = t.data, vae.likelihood, s.batch_size
            pos = t.restore(position, checkpoint or {}, run_path, new_lr)
            if position is not None and folder is not None and dist.main:
                folder.rewrite_metrics(pos.history)  # metrics.csv follows the checkpoint
            if t.labelled is not None and folder is not None and dist.main:
                folder.write_labelled(t.labelled, splits.train[1][t.labelled])
            best_weights = None  # this session's best epoch, in memory
            with stop_on_signals() as stop:
                if position is None or (s.amp == "auto" and "amp" not in (checkpoint or {})):
                    note = t.decide_amp(data.train_x[:bs], None if data.labels is None
                                        else data.labels[:bs])
                    if note:
                        report.line(note)
                if position is None:
                    _checkpoint(t, pos, folder, report)  # rule 2
                report.start(config, run_path, pos.epoch * t.steps + pos.step,
                             resumed=position is not None)
                while pos.epoch < s.epochs and not _out_of_patience(s, t, pos.history):
                    epoch, t0, n = pos.epoch + 1, time.perf_counter(), data.train_x.shape[0]
                    vae.train()
                    pos.rng["shuffle"] = t.shuffle.get_state()  # this epoch's order
                    perm = torch.randperm(n, generator=t.shuffle).to(dev)
                    acc = torch.tensor(pos.total if dist.main else 0.0, device=dev)  # all ranks'
                    x, y = data.train_x[:0], None  # for the message if no step is left
                    bar = report.bar(n, min(pos.step * bs, n), f"epoch {epoch}/{s.epochs}")
                    with pyro.settings.context(module_local_params=True), bar:
                        for step in range(pos.step, t.steps):
                            # -- the batch: this rank's shard, as the likelihood observes it
                            idx = perm[step * bs : (step + 1) * bs][dist.rank::dist.world]
                            x = lik.targets(to_unit(data.train_x[idx])).contiguous(
                                memory_format=t.memory_format)
                            y = None if data.labels is None else data.labels[idx]
                            global_step = pos.epoch * t.steps + step
                            # -- the objective's step: schedules, loss, update (or a skip)
                            t.schedule(global_step)
                            loss, stopping = t.loss(x, y, stop)
                            if step % t.check_every == 0 and not torch.isfinite(loss):
                                if not s.skip_nonfinite:
                                    raise TrainingError(nonfinite_message(
                                        vae, x, y, epoch, step + 1, s, _saved(folder)))
                                pos.skipped += 1
                                bar.update(x.shape[0])
                                continue
                            if not t.update(loss, x, y, global_step):  # a non-finite gradient
                                pos.skipped += 1
                                bar.update(x.shape[0] * dist.world)
                                continue
                            # -- bookkeeping: sums, reports, a checkpoint or a stop if due
                            acc += loss.detach()
                            if report.tracking and step % t.check_every == 0:
                                report.step(global_step + 1, {
                                    "train/loss": loss.item() / x.shape[0],
                                    "train/lr": t.lr.current, "train/beta": float(vae.beta)})
                            bar.update(x.shape[0] * dist.world)
                            if report.progress and step % 10 == 0:
                                bar.set_postfix(loss=f"{loss.item() / x.shape[0]:.2f}")
                            pos.step = step + 1
                            done = pos.epoch * t.steps + pos.step
                            due = s.checkpoint_every and done % s.checkpoint_every == 0
                            if stopping or (due and pos.step < t.steps):  # rule 3
                                pos.total = dist.all_sum(acc.clone()).item()
                                _checkpoint(t, pos, folder, report)
                            if stopping:
                                raise Interrupted(stopping, epoch, pos.step, run_path)
                    train_loss = dist.all_sum(acc).item() / n
                    if not math.isfinite(train_loss) or not t.finite_weights():  # the last
                        raise TrainingError(nonfinite_message(  # update made them NaN
                            vae, x, y, epoch, None, s, _saved(folder)))
                    # -- evaluate (rule 4) -------------------------------------------------
                    row = t.evaluate(epoch, train_loss, _saved(folder))
                    row.update(beta=vae.beta, lr=t.lr.current, skipped=pos.skipped,
                               seconds=time.perf_counter() - t0)
                    # -- select --------------------------------------------------------------
                    key = runs.validation_key([row])  # val_neg_iwae when training IWAE
                    improved = data.val is not None and row[key] < runs.best_validation(
                        pos.history)[1]
                    pos.history.append(row)
                    pos.epoch, pos.step, pos.total, pos.skipped = epoch, 0, 0.0, 0
                    t.lr.at_epoch_end(row.get(key))
                    # -- save (rules 5-7) ----------------------------------------------------
                    if improved:
                        best_weights = {k: v.detach().to("cpu", copy=True)
                                        for k, v in t.model.state_dict().items()}
                        if folder is not None and dist.main:
                            folder.save_best(best_weights, epoch, key, row[key])
                    _checkpoint(t, pos, folder, report, row)
                    if folder is not None and dist.main:
                        folder.write_pictures(t.pictures(folder.path, pos.history), pos.epoch)
                    # -- report (rule 8) -----------------------------------------------------
                    pictures = None if run_path is None else {
                        "samples": run_path / runs.SAMPLES,
                        "reconstructions": run_path / runs.RECONSTRUCTIONS}
                    report.epoch(row, epoch * t.steps, n / max(row["seconds"], 1e-9), pictures)
                    report.line(epoch_line(row, s.epochs, improved, key, s.iwae_samples))
                    if _out_of_patience(s, t, pos.history) and epoch < s.epochs:
                        what = "IWAE bound" if key == "val_neg_iwae" else "-ELBO"
                        report.line(f"early stop: no better validation {what} in {s.patience} "
                                    f"epochs (best: epoch {runs.best_validation(pos.history)[0]})")
                    # -- stop? (rule 9) ------------------------------------------------------
                    stopping = dist.agree(stop.signum)[0]
                    if stopping:
                        raise Interrupted(stopping, epoch, 0, run_path)
                if folder is not None and dist.main and pos.history and \
                        not folder.pictures_complete(pos.epoch):  # killed while drawing
                    # them, or a full disk: drawn again
                    folder.write_pictures(t.pictures(folder.path, pos.history), pos.epoch)
        # -- finish ---------------------------------------------------------------------------
        return _finish(t, pos, best_weights, run_path, report)
    except BaseException as e:
        report.finish({}, "KILLED" if isinstance(e, (Interrupted, KeyboardInterrupt))
                      else "FAILED")
        raise
    finally:
        if folder is not None:
            folder.release()


def _claim(folder: runs.RunFolder | None, config: dict[str, Any], overwrite: bool,
           resuming: bool, dist: distributed.Context, report: Reporter) -> None:
    """Claim the run folder on rank 0 (`runs.RunFolder.claim`); its error stops every rank."""
    if folder is None:
        return
    error = None
    if dist.main:
        try:
            folder.claim(config, overwrite, resuming)
        except ConfigError as e:
            error = str(e)
    error = dist.from_main(error)
    if error:
        raise ConfigError(error)
    if not resuming:  # announced once it is claimed, never before
        report.line(f"run folder: {folder.path}")


def _saved(folder: runs.RunFolder | None) -> str | None:
    """What the last checkpoint holds (None: no run folder, or none written yet)."""
    return folder.saved if folder is not None else None


def _out_of_patience(s: TrainSettings, t: TrainingState, history: list[dict[str, float]]
                     ) -> bool:
    """Whether ``patience`` epochs have passed since the best validation bound."""
    if not (s.patience and t.data.val is not None and history):
        return False
    return history[-1]["epoch"] - runs.best_validation(history)[0] >= s.patience


def _checkpoint(t: TrainingState, pos: Position, folder: runs.RunFolder | None,
                report: Reporter, row: dict[str, float] | None = None) -> None:
    """Save ``pos`` with the training state (and ``row`` into metrics.csv), then hand the
    buffered step metrics to the trackers."""
    if folder is None:
        report.flush()  # nothing to resume from: hand them over now
        return
    state = t.snapshot(pos)  # every rank's random state: a call on every rank
    if state is not None:
        folder.save_checkpoint(state, row)
        report.flush()


def _finish(t: TrainingState, pos: Position, best_weights: dict[str, torch.Tensor] | None,
            run_path: Path | None, report: Reporter) -> FitResult:
    """Hand back the model as `vaekit.load` builds it, so both compute the same numbers:
    the best validation epoch's weights, else the average's, else the trained ones."""
    vae = t.vae
    best_epoch, best_value = runs.best_validation(pos.history)
    best_epoch = best_epoch if t.data.val is not None else None
    weights = best_weights
    if best_epoch and weights is None and run_path is not None:  # best before a resume
        weights = runs.load_checkpoint(run_path, name=runs.BEST)["model"]
    if weights is None and t.ema is not None:
        weights = t.ema.module.state_dict()
    if weights is not None:
        vae.load_state_dict(weights)
    vae.beta = t.base_beta
    vae.to(memory_format=torch.contiguous_format).eval()
    summary = {k: v for k, v in (pos.history[-1] if pos.history else {}).items()
               if k.startswith(("test_", "val_", "train_"))}
    if best_epoch:
        summary["best_epoch"] = best_epoch
        summary[f"best_{runs.validation_key(pos.history)}"] = best_value
    report.finish(summary, "FINISHED")
    return FitResult(vae=vae, history=pos.history, run_dir=run_path, best_epoch=best_epoch,
                     stopped_early=pos.epoch < t.settings.epochs)

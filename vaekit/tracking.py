"""Experiment tracking: a small `Logger` protocol, and loggers for TensorBoard and MLflow.

    fit(vae, train_x, test_x, run_dir="runs/a", loggers=[TensorBoardLogger(), MLflowLogger()])
    vaekit fit --logger tensorboard --logger mlflow      # the same from the command line

The trainer calls, on rank 0 only: `Logger.start` once (also when a run resumes, with the step
it resumes from), `Logger.log_metrics` for every training step and, at each epoch's end, the
epoch's metrics (the columns of ``metrics.csv`` under ``epoch/``), `Logger.log_images` with the
epoch's sample and reconstruction grids, and `Logger.finish` at the end (status ``FINISHED``) or
when the run stops early (``KILLED`` on an interrupt, ``FAILED`` on an error). Step metrics are
handed over when a checkpoint is written, never before, so that a resumed run, which starts again
from its checkpoint, logs no step twice. Every step number is the global training step.

Both libraries are optional extras: ``pip install "vaekit[tensorboard]"``, ``"vaekit[mlflow]"``
or ``"vaekit[tracking]"`` for both.
"""

from __future__ import annotations

import importlib
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from vaekit.errors import ConfigError

__all__ = ["Logger", "RunInfo", "Trackers", "Reporter", "epoch_line", "TensorBoardLogger",
           "MLflowLogger", "make_loggers", "check_installed", "flat_params", "TRACKING_FILE"]

TRACKING_FILE = "tracking.json"
"""What a run folder records of its trackers (the MLflow run id), so that resume continues them."""

_EXTRAS = {"tensorboard": ("tensorboard", "tensorboard"), "mlflow": ("mlflow", "mlflow")}


@dataclass
class RunInfo:
    """What a logger learns when a run starts.

    Attributes:
        run_dir: The run folder (None for a fit without one).
        name: The run's name: its folder's name.
        params: The settings, flattened: ``{"model.z_dim": 32, "train.lr": 0.002, ...}``.
        tags: ``likelihood``, ``prior``, ``posterior``, ``nets``, ``vaekit_version``.
        step: The global step training starts from (the checkpoint's, when resuming).
        resumed: Whether this continues an earlier start of the same run.
    """

    run_dir: Path | None
    name: str
    params: dict[str, Any] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    step: int = 0
    resumed: bool = False


@runtime_checkable
class Logger(Protocol):
    """What the trainer calls; write your own with these four methods (see the docs)."""

    def start(self, run: RunInfo) -> None:
        """The run starts (or resumes at ``run.step``)."""

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Scalars at a global step: ``train/loss`` ... per step, ``epoch/...`` per epoch."""

    def log_images(self, images: Mapping[str, torch.Tensor], step: int) -> None:
        """Pictures ``[C, H, W]`` in [0, 1] (``samples``, ``reconstructions``) at a step."""

    def finish(self, summary: Mapping[str, float], status: str = "FINISHED") -> None:
        """The run ends: its final and best metrics, and ``FINISHED``, ``KILLED`` or ``FAILED``."""


def _name(logger: Logger) -> str:
    return type(logger).__name__


def _why(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:200]}" + ("..." if len(text) > 200 else "")


class Trackers:
    """The loggers of a run, each call guarded: a tracker is never the reason training stops.

    `start` failing refuses the run up front, in one line. A failure later (a full disk, a
    database that went bad, a server that went away) prints one line, drops that logger and
    lets training go on: ``metrics.csv`` and the checkpoints keep every epoch, whatever the
    tracker lost. `finish` failing never hides the error that ended the run.

    Args:
        loggers: The `Logger` objects (none: every call does nothing).
        warn: Where the one-line messages go (default: print to stderr).
    """

    def __init__(self, loggers: Sequence[Logger] = (), warn: Any = None) -> None:
        import sys

        self.loggers = list(loggers)
        self.warn = warn or (lambda line: print(line, file=sys.stderr, flush=True))

    def __bool__(self) -> bool:
        return bool(self.loggers)

    def start(self, run: RunInfo) -> None:
        """`Logger.start` of each.

        Raises:
            ConfigError: naming the logger that cannot start and why (the others are finished).
        """
        for i, logger in enumerate(self.loggers):
            try:
                logger.start(run)
            except Exception as e:
                self.loggers = self.loggers[:i]  # the ones started: finished as failed
                self.finish({}, "FAILED")
                where = f" (the run folder {run.run_dir} is kept: resume it)" if run.run_dir else ""
                raise ConfigError(f"the {_name(logger)} tracker cannot start ({_why(e)}); fix "
                                  f"its --logger/--mlflow-uri, or leave it out{where}") from None

    def _each(self, what: str, step: int, call: Any) -> None:
        for logger in list(self.loggers):
            try:
                call(logger)
            except Exception as e:
                self.loggers.remove(logger)
                self.warn(f"warning: the {_name(logger)} tracker failed at step {step} "
                          f"({_why(e)}) while logging {what}; training goes on without it "
                          "(metrics.csv and the checkpoints have every epoch)")

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """`Logger.log_metrics` of each; a failing one is dropped with a warning."""
        self._each("metrics", step, lambda lg: lg.log_metrics(metrics, step))

    def log_images(self, images: Mapping[str, torch.Tensor], step: int) -> None:
        """`Logger.log_images` of each; a failing one is dropped with a warning."""
        self._each("pictures", step, lambda lg: lg.log_images(images, step))

    def finish(self, summary: Mapping[str, float], status: str = "FINISHED") -> None:
        """`Logger.finish` of each, once; a failure is one line, never an exception."""
        loggers, self.loggers = self.loggers, []
        for logger in loggers:
            try:
                logger.finish(summary, status)
            except Exception as e:
                self.warn(f"warning: the {_name(logger)} tracker could not finish ({_why(e)}); "
                          "the run folder has everything")


class Reporter:
    """What a fit tells people, on rank 0 only: the progress bar, one console line per epoch,
    and the trackers, whose step metrics wait in a buffer until a checkpoint makes them safe
    (`flush`), so that a resumed run, which starts again from its checkpoint, logs no step twice.

    Args:
        loggers: The experiment trackers (guarded by `Trackers`).
        verbose: Print the epoch lines.
        progress: Show a progress bar.
        main: This is rank 0 (the others report nothing).
    """

    def __init__(self, loggers: Sequence[Logger] = (), verbose: bool = True,
                 progress: bool = True, main: bool = True) -> None:
        self.trackers = Trackers(list(loggers) if main else [])
        self.verbose, self.progress = verbose and main, progress and main
        self.pending: list[tuple[int, dict[str, float]]] = []

    def on_rank(self, main: bool) -> None:
        """Silence this reporter unless ``main`` (rank 0 reports for all)."""
        if not main:
            self.trackers = Trackers([])
            self.verbose = self.progress = False

    @property
    def tracking(self) -> bool:
        """Whether any tracker listens (step metrics are worth computing)."""
        return bool(self.trackers)

    def start(self, config: Mapping[str, Any], run_dir: Path | None, step: int,
              resumed: bool) -> None:
        """Start the trackers with the run's settings and tags (see `Trackers.start`)."""
        if not self.trackers:
            return
        model = config.get("model") or {}
        tags = {k: str(model.get(k)) for k in ("likelihood", "prior", "posterior", "nets")}
        tags["vaekit_version"] = str(config.get("vaekit_version"))
        name = run_dir.name if run_dir is not None else "vaekit"
        self.trackers.start(RunInfo(run_dir, name, flat_params(config), tags, step=step,
                                    resumed=resumed))

    def bar(self, total: int, initial: int, desc: str) -> Any:
        """A progress bar over images (a notebook widget in Jupyter)."""
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=initial, desc=desc, unit="img", unit_scale=True,
                    leave=False, disable=not self.progress, dynamic_ncols=True)

    def line(self, text: str) -> None:
        """One console line, printed and flushed at once (it shows in a log file as it comes)."""
        if self.verbose:
            import sys

            from tqdm.auto import tqdm

            tqdm.write(text)
            sys.stdout.flush()

    def step(self, step: int, metrics: dict[str, float]) -> None:
        """Buffer a training step's metrics (``train/...``) for the trackers."""
        if self.trackers:
            self.pending.append((step, metrics))

    def flush(self) -> None:
        """Hand the buffered step metrics to the trackers (call once a checkpoint is safe)."""
        pending, self.pending = self.pending, []
        for step, metrics in pending:
            self.trackers.log_metrics(metrics, step)

    def epoch(self, row: Mapping[str, float], step: int, images_per_second: float,
              pictures: Mapping[str, Path] | None = None) -> None:
        """The epoch's row of metrics.csv (``epoch/...``) and its pictures, at its last step."""
        if not self.trackers:
            return
        metrics = {f"epoch/{k}": float(v) for k, v in row.items()}
        metrics["epoch/images_per_second"] = images_per_second
        self.trackers.log_metrics(metrics, step)
        if pictures:
            from torchvision.io import read_image

            self.trackers.log_images({k: read_image(str(p))[:3].float() / 255
                                      for k, p in pictures.items()}, step)

    def finish(self, summary: Mapping[str, float], status: str = "FINISHED") -> None:
        """Finish the trackers (each once; never raises)."""
        self.trackers.finish(summary, status)


def epoch_line(row: Mapping[str, float], epochs: int, improved: bool, key: str,
               iwae_samples: int) -> str:
    """The console line of an epoch's row of metrics.csv: train loss, validation bounds (``*``
    on the one that selects ``best.pt``, when it improved), test -ELBO, seconds."""
    mark = " *" if improved else ""
    val = (f"  val -ELBO {row['val_neg_elbo']:.2f}{mark if key == 'val_neg_elbo' else ''}"
           if "val_neg_elbo" in row else "")
    if "val_neg_iwae" in row:
        val += f"  val -IWAE{iwae_samples} {row['val_neg_iwae']:.2f}{mark}"
    if "val_accuracy" in row:
        val += f"  val accuracy {row['val_accuracy']:.2f}%{mark if key == 'val_error' else ''}"
    return (f"epoch {int(row['epoch'])}/{epochs}  train loss {row['train_loss']:.2f}{val}  test "
            f"-ELBO {row['test_neg_elbo']:.2f} nats/image  ({row['seconds']:.1f} s)"
            + (f"  skipped {int(row['skipped'])} batches" if row["skipped"] else ""))


def check_installed(names: Sequence[str]) -> None:
    """Refuse, before anything starts, a logger whose library is not installed.

    Raises:
        ConfigError: naming the pip command that installs it.
    """
    for name in names:
        module, extra = _EXTRAS[name]
        try:
            importlib.import_module(module)
        except ImportError:
            raise ConfigError(f"--logger {name} needs the {module} package, which is not "
                              f'installed: pip install "vaekit[{extra}]"') from None


def make_loggers(names: Sequence[str], mlflow_uri: str | None = None) -> list[Logger]:
    """The loggers of ``RunOptions.logger`` (``"tensorboard"``, ``"mlflow"``), checked."""
    check_installed(names)
    return [TensorBoardLogger() if n == "tensorboard" else MLflowLogger(mlflow_uri) for n in names]


def flat_params(config: Mapping[str, Any]) -> dict[str, Any]:
    """``{"section.key": value}`` of a ``config.json``'s settings sections."""
    out: dict[str, Any] = {}
    for section in ("model", "data", "train", "run"):
        for key, value in (config.get(section) or {}).items():
            out[f"{section}.{key}"] = list(value) if isinstance(value, tuple) else value
    return out


def _tracking_record(run_dir: Path | None) -> dict[str, Any]:
    try:
        return json.loads((run_dir / TRACKING_FILE).read_text()) if run_dir else {}
    except (OSError, ValueError):
        return {}


class TensorBoardLogger:
    """Event files for TensorBoard, with ``torch.utils.tensorboard`` (package ``tensorboard``).

    Scalars and images go to ``RUN/tensorboard`` (or ``log_dir``); at the end the settings are
    written as hparams with the final metrics. A resumed run purges events from its restart
    step on, so no step appears twice.

    Args:
        log_dir: Where to write (default: ``RUN/tensorboard``).
    """

    def __init__(self, log_dir: str | Path | None = None) -> None:
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.writer: Any = None
        self.params: dict[str, Any] = {}

    def start(self, run: RunInfo) -> None:
        """See `Logger.start`."""
        from torch.utils.tensorboard import SummaryWriter

        log_dir = self.log_dir or (run.run_dir / "tensorboard" if run.run_dir else None)
        # Resumed at step S (its checkpoint's): events after S that the stopped run wrote are
        # hidden; S's own are the checkpoint's and stay.
        self.writer = SummaryWriter(log_dir=None if log_dir is None else str(log_dir),
                                    purge_step=run.step + 1 if run.resumed else None)
        self.params = {k: v if isinstance(v, (int, float, str, bool)) else str(v)
                       for k, v in run.params.items()}

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """See `Logger.log_metrics`."""
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)

    def log_images(self, images: Mapping[str, torch.Tensor], step: int) -> None:
        """See `Logger.log_images`."""
        for key, image in images.items():
            self.writer.add_image(key, image, step)

    def finish(self, summary: Mapping[str, float], status: str = "FINISHED") -> None:
        """See `Logger.finish`: hparams with the final metrics (finished runs only)."""
        if self.writer is None:
            return
        if status == "FINISHED":
            self.writer.add_hparams(self.params, {f"hparam/{k}": v for k, v in summary.items()},
                                    run_name=".")
        self.writer.close()


def _check_sqlite_uri(uri: str) -> None:
    """Refuse at once a ``sqlite:///PATH`` that cannot be a database (MLflow would retry for
    minutes): a folder, a missing parent folder, or a file that is not SQLite.

    Raises:
        ConfigError: naming the path and the fix.
    """
    if not uri.startswith("sqlite:///"):  # sqlite:///relative.db, sqlite:////absolute.db
        return
    path = Path(uri.removeprefix("sqlite:///"))
    fix = "give --mlflow-uri sqlite:///FILE.db with FILE.db new or an MLflow database"
    if path.is_dir():
        raise ConfigError(f"the MLflow database {path} is a folder; {fix}")
    if not path.parent.is_dir():
        raise ConfigError(f"the folder of the MLflow database {path} does not exist; {fix}")
    if path.is_file() and path.stat().st_size:
        with open(path, "rb") as f:
            if f.read(16) != b"SQLite format 3\x00":
                raise ConfigError(f"{path} is not an SQLite database; {fix}")


class MLflowLogger:
    """An MLflow run per run folder, through ``mlflow.MlflowClient`` (no server needed).

    Params are the settings, metrics are logged by step, pictures, ``config.json``,
    ``metrics.csv`` and ``best.pt`` (else ``checkpoint.pt``) are artifacts, the run is named
    after the run folder and tagged with the model's parts and vaekit's version. Its id is kept
    in ``RUN/tracking.json``: a resumed run continues the same MLflow run.

    Args:
        tracking_uri: Where MLflow stores runs (default: ``sqlite:///<the run folder's
            parent>/mlflow.db``, e.g. ``runs/mlflow.db``; view with ``mlflow ui
            --backend-store-uri sqlite:///runs/mlflow.db``).
        experiment: The MLflow experiment's name.
    """

    def __init__(self, tracking_uri: str | None = None, experiment: str = "vaekit") -> None:
        self.tracking_uri, self.experiment = tracking_uri, experiment
        self.client: Any = None
        if tracking_uri is not None:  # a URI MLflow cannot use: refused before the run starts
            _check_sqlite_uri(tracking_uri)
            from mlflow import MlflowClient

            try:
                self.client = MlflowClient(tracking_uri=tracking_uri)
            except Exception as e:
                raise ConfigError(f"MLflow cannot use the tracking URI {tracking_uri} "
                                  f"({_why(e)}); give another --mlflow-uri") from None
        self.run_id: str | None = None
        self.run_dir: Path | None = None

    def start(self, run: RunInfo) -> None:
        """See `Logger.start`."""
        from mlflow import MlflowClient
        from mlflow.entities import Param

        self.run_dir = run.run_dir
        uri = self.tracking_uri
        if uri is None:
            parent = (run.run_dir.parent if run.run_dir else Path("runs")).resolve()
            parent.mkdir(parents=True, exist_ok=True)
            uri = f"sqlite:///{parent / 'mlflow.db'}"
        if self.client is None:
            self.client = MlflowClient(tracking_uri=uri)
        known = _tracking_record(run.run_dir).get("mlflow_run_id") if run.resumed else None
        if known is not None:
            self.run_id = known
            self.client.update_run(known, status="RUNNING")
            return
        exp = self.client.get_experiment_by_name(self.experiment)
        exp_id = exp.experiment_id if exp else self.client.create_experiment(self.experiment)
        self.run_id = self.client.create_run(exp_id, run_name=run.name, tags=run.tags).info.run_id
        params = [Param(k, str(v)[:6000]) for k, v in run.params.items()]
        for i in range(0, len(params), 100):
            self.client.log_batch(self.run_id, params=params[i : i + 100])
        if run.run_dir is not None:
            from vaekit.io import atomic_write

            text = json.dumps({**_tracking_record(run.run_dir), "mlflow_run_id": self.run_id,
                               "mlflow_uri": uri}, indent=2) + "\n"
            atomic_write(run.run_dir / TRACKING_FILE, lambda f: f.write(text.encode()))

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """See `Logger.log_metrics`."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        self.client.log_batch(self.run_id, metrics=batch)

    def log_images(self, images: Mapping[str, torch.Tensor], step: int) -> None:
        """See `Logger.log_images`: ``pictures/<name>/step_<step>.png`` artifacts."""
        for key, image in images.items():
            array = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
            self.client.log_image(self.run_id, array, artifact_file=f"pictures/{key}/"
                                  f"step_{step:08d}.png")

    def finish(self, summary: Mapping[str, float], status: str = "FINISHED") -> None:
        """See `Logger.finish`: the run's files as artifacts, then the status."""
        if self.client is None or self.run_id is None:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        if summary:
            self.client.log_batch(self.run_id, metrics=[Metric(f"final/{k}", float(v), now, 0)
                                                        for k, v in summary.items()])
        if self.run_dir is not None:
            for name in ("config.json", "metrics.csv"):
                if (self.run_dir / name).is_file():
                    self.client.log_artifact(self.run_id, str(self.run_dir / name))
            best = self.run_dir / "best.pt"
            model = best if best.is_file() else self.run_dir / "checkpoint.pt"
            if status == "FINISHED" and model.is_file():
                self.client.log_artifact(self.run_id, str(model), artifact_path="model")
        self.client.set_terminated(self.run_id, status=status)

"""The run folder: ``config.json``, ``checkpoint.pt``, ``best.pt``, ``metrics.csv`` and pictures.

    vae = load("runs/mnist")            # the trained VAE (its best epoch), in eval mode
    rows = read_metrics("runs/mnist")   # one dict per epoch

Every file is written atomically (a temporary file in the same folder, fsync, rename), so a run
killed at any moment leaves the previous complete file in place.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Any

import torch

from vaekit.errors import CheckpointError, PluginError
from vaekit.io import atomic_write, remove_stale_temporaries

__all__ = [
    "CONFIG",
    "CHECKPOINT",
    "BEST",
    "METRICS",
    "SAMPLES",
    "RECONSTRUCTIONS",
    "LOSS",
    "CODES",
    "CONFUSION",
    "LABELLED",
    "PRIOR_FOLDER",
    "learned_prior",
    "load_ground_truth",
    "bind_learned_prior",
    "EVALUATION",
    "RUN_FILES",
    "make_config",
    "package_version",
    "vae_config",
    "run_data_spec",
    "load_test_set",
    "write_evaluation",
    "merged_evaluation",
    "best_validation",
    "validation_key",
    "atomic_write",
    "write_config",
    "read_config",
    "save_checkpoint",
    "load_checkpoint",
    "append_metrics",
    "write_metrics",
    "mark_pictures",
    "pictures_epoch",
    "pictures_complete",
    "read_metrics",
    "default_run_dir",
    "is_run_dir",
    "is_vaekit_run",
    "RunFolder",
    "remove_stale_temporaries",
    "load",
    "load_weights",
    "model_checkpoint",
]

CONFIG = "config.json"
CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"
METRICS = "metrics.csv"
SAMPLES = "samples.png"
RECONSTRUCTIONS = "reconstructions.png"
LOSS = "loss.png"
CODES = "codes.png"
CONFUSION = "confusion.png"
LABELLED = "labelled.json"
EVALUATION = "eval.json"
PICTURES_DRAWN = ".pictures.json"
"""Records the epoch whose pictures are all written (a kill while drawing leaves it behind)."""
RUN_FILES = (CONFIG, CHECKPOINT, BEST, METRICS, SAMPLES, RECONSTRUCTIONS, LOSS, CODES,
             CONFUSION, LABELLED, PICTURES_DRAWN)
"""The files a fit writes (and removes first with ``overwrite``)."""
FORMAT = "vaekit-checkpoint"
FORMAT_VERSION = 1


def write_config(run_dir: str | os.PathLike[str], config: dict[str, Any]) -> None:
    """Write ``config.json`` atomically."""
    text = json.dumps(config, indent=2, sort_keys=True) + "\n"
    atomic_write(Path(run_dir) / CONFIG, lambda f: f.write(text.encode()))


def read_config(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Read ``config.json``; `CheckpointError` if it is missing or not valid JSON."""
    path = Path(run_dir) / CONFIG
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{run_dir} is not a vaekit run folder (no {CONFIG})") from None
    except NotADirectoryError:
        raise CheckpointError(f"{run_dir} is a file, not a run folder; give the folder that "
                              f"holds {CONFIG}") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path} is a folder, not vaekit's config file") from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise CheckpointError(f"{path} is corrupt ({_cut(str(e))}); restore it or start a new "
                              "run") from None
    if not isinstance(config, dict) or not all(
            isinstance(config.get(k) or {}, dict) for k in ("model", "data", "train", "run", "vae")):
        raise CheckpointError(f"{path} is not a vaekit config (a JSON object of sections); "
                              "restore it or start a new run")
    return config


def save_checkpoint(run_dir: str | os.PathLike[str], state: dict[str, Any],
                    name: str = CHECKPOINT) -> None:
    """Save a checkpoint (``model``, ``optimizer``, ``epoch`` ...) atomically as ``name``."""
    state = {"format": FORMAT, "format_version": FORMAT_VERSION, **state}
    atomic_write(Path(run_dir) / name, lambda f: torch.save(state, f))


def load_checkpoint(run_dir: str | os.PathLike[str], map_location: Any = "cpu",
                    name: str = CHECKPOINT) -> dict[str, Any]:
    """Load a checkpoint saved by `save_checkpoint`, with a clear error for anything else."""
    path = Path(run_dir) / name
    if not path.exists():
        if name != CHECKPOINT:
            raise CheckpointError(f"no {name} in {run_dir}: the run has no validation epoch yet")
        raise CheckpointError(f"no checkpoint in {run_dir}: the run has not started training yet")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise CheckpointError(
            f"{path} is corrupt or not a vaekit checkpoint ({type(e).__name__}); "
            "delete it to start over, or restore a good copy"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a vaekit checkpoint")
    return state


def append_metrics(run_dir: str | os.PathLike[str], row: dict[str, float]) -> None:
    """Append one epoch's row to ``metrics.csv`` (rewritten atomically with the new row)."""
    path = Path(run_dir) / METRICS
    rows = read_metrics(run_dir) if path.exists() else []
    write_metrics(run_dir, [*rows, row])


def write_metrics(run_dir: str | os.PathLike[str], rows: list[dict[str, float]]) -> None:
    """Write ``metrics.csv`` whole, atomically: these rows, the last one's columns (none: no file).

    A process killed while it runs leaves the old file or the new one, never a part.
    """
    path = Path(run_dir) / METRICS
    if not rows:
        path.unlink(missing_ok=True)
        return
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[-1]), lineterminator="\n",
                            restval="", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, lambda f: f.write(buf.getvalue().encode()))


def mark_pictures(run_dir: str | os.PathLike[str], epoch: int) -> None:
    """Record that every picture of ``epoch`` is written (call after the last one)."""
    text = json.dumps({"epoch": int(epoch)}) + "\n"
    atomic_write(Path(run_dir) / PICTURES_DRAWN, lambda f: f.write(text.encode()))


def pictures_epoch(run_dir: str | os.PathLike[str]) -> int | None:
    """The epoch whose pictures are all in the folder (`mark_pictures`), or None."""
    try:
        epoch = json.loads((Path(run_dir) / PICTURES_DRAWN).read_text()).get("epoch")
    except (OSError, ValueError, AttributeError):
        return None
    return epoch if isinstance(epoch, int) else None


def pictures_complete(run_dir: str | os.PathLike[str], epoch: int) -> bool:
    """Whether the folder holds every picture of ``epoch``, none of them missing or empty."""
    path = Path(run_dir)
    return pictures_epoch(path) == epoch and all(
        (path / f).is_file() and (path / f).stat().st_size for f in (SAMPLES, RECONSTRUCTIONS, LOSS))


def read_metrics(run_dir: str | os.PathLike[str]) -> list[dict[str, float]]:
    """Rows of ``metrics.csv`` as dicts of floats (``epoch`` and ``skipped`` as ints).

    Raises:
        FileNotFoundError: if there is none (no epoch has finished).
        CheckpointError: for a file that is not vaekit's table of numbers.
    """
    path = Path(run_dir) / METRICS
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            header = reader.fieldnames or []
    except (UnicodeDecodeError, csv.Error) as e:
        raise CheckpointError(f"{path} is corrupt ({_cut(str(e))}); restore it, or resume the "
                              "run to rewrite it from the checkpoint") from None
    if rows and "epoch" not in header:
        raise CheckpointError(f"{path} has no header with an epoch column; restore it, or resume "
                              "the run to rewrite it from the checkpoint")

    def number(key: str | None, value: str | None) -> float:
        if key is None:
            raise CheckpointError(f"{path} has a row with more values than columns; restore it")
        if value is None or value == "":  # a column an earlier row did not have (a newer vaekit)
            return math.nan
        try:
            v = float(value)
            return int(v) if key in ("epoch", "skipped") else v
        except (ValueError, OverflowError):
            raise CheckpointError(f"{path}: {_cut(key)} = {_cut(value)!r} is not a number; "
                                  "restore it, or resume the run to rewrite it") from None

    return [{k: number(k, v) for k, v in r.items()} for r in rows]


def _cut(text: str, most: int = 60) -> str:
    """A value short enough for a one-line message."""
    return text if len(text) <= most else text[:most] + f"... ({len(text)} characters)"


def validation_key(history: list[dict[str, float]]) -> str:
    """The metrics column that picks the best epoch: ``val_error`` (100 - the validation
    accuracy of a semi-supervised run's classifier) if any row has it, ``val_neg_iwae`` (the
    validation IWAE bound, written when the run trains the IWAE objective) if any row has it,
    else ``val_neg_elbo``.

    Model selection follows the bound being trained: an IWAE-trained model improves its IWAE
    bound while its ELBO may get worse, so its ELBO would pick the wrong epoch.
    """
    if any(math.isfinite(row.get("val_error", math.nan)) for row in history):
        return "val_error"  # a semi-supervised run: 100 - the validation accuracy
    has_iwae = any(math.isfinite(row.get("val_neg_iwae", math.nan)) for row in history)
    return "val_neg_iwae" if has_iwae else "val_neg_elbo"


def best_validation(history: list[dict[str, float]]) -> tuple[int, float]:
    """The best validation epoch of a run's metrics rows.

    Args:
        history: Rows of metrics.csv (`read_metrics`, or a trainer's history).

    Returns:
        ``(epoch, value)`` of the lowest finite value of `validation_key`'s column; ``(0, inf)``
        when no row has one (a run without validation images).
    """
    key = validation_key(history)
    best = (0, math.inf)
    for row in history:
        v = row.get(key, math.nan)
        if math.isfinite(v) and v < best[1]:
            best = (int(row["epoch"]), v)
    return best


def default_run_dir() -> Path:
    """The run folder of a run given none: ``runs/<YYYYmmdd-HHMMSS>`` of now, with ``-2``,
    ``-3`` ... added while that name is taken (two runs started in the same second)."""
    import time

    base = Path("runs") / time.strftime("%Y%m%d-%H%M%S")
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def is_run_dir(path: str | os.PathLike[str]) -> bool:
    """True if ``path`` holds a ``config.json`` (a run folder, or one that claims to be)."""
    return (Path(path) / CONFIG).is_file()


def is_vaekit_run(path: str | os.PathLike[str]) -> bool:
    """True only for a folder that is provably a vaekit run: a ``config.json`` that vaekit wrote
    (a JSON object of its sections with ``vaekit_version``) and a ``checkpoint.pt``. Only such a
    folder may be overwritten."""
    try:
        config = read_config(path)
    except CheckpointError:
        return False
    return ("vaekit_version" in config and isinstance(config.get("train"), dict)
            and (Path(path) / CHECKPOINT).is_file())


def package_version() -> str:
    """The installed vaekit's version (``0.0.0`` when running from a source tree)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("vaekit")
    except PackageNotFoundError:
        return "0.0.0"


def make_config(vae: VAE, train: TrainSettings, model: ModelSpec | None = None,  # noqa: F821
                data: DataSpec | None = None, run: RunOptions | None = None,  # noqa: F821
                data_info: dict[str, Any] | None = None) -> dict[str, Any]:
    """The content of ``config.json``: the settings, section by section, and the facts of the run.

    ``model``, ``data``, ``train`` and ``run`` are the settings (``dataclasses.asdict``), which
    ``vaekit fit --config`` reads back; ``vae`` is `VAE.config`, what `load` rebuilds the model
    from (image shape, classes, every likelihood option); ``data_info`` records the data root
    used and the image counts.
    """
    from dataclasses import asdict

    return {"vaekit_version": package_version(), "model": asdict(model or vae.spec()),
            "data": asdict(data) if data is not None else None, "train": asdict(train),
            "run": asdict(run) if run is not None else None, "vae": vae.config(),
            "data_info": data_info or {}}


def vae_config(config: dict[str, Any]) -> dict[str, Any]:
    """The `VAE.config` part of a ``config.json`` (``"vae"``; ``"model"`` in runs of vaekit <= 0.1)."""
    return config["vae"] if "vae" in config else config["model"]


def run_data_spec(config: dict[str, Any], **changes: Any) -> DataSpec:  # noqa: F821
    """The `DataSpec` a run was trained on, with ``changes`` (e.g. another ``root``)."""
    from dataclasses import fields

    from vaekit.settings import DataSpec, from_mapping

    recorded = config.get("data") or {}
    known = {f.name for f in fields(DataSpec)}
    values = {k: v for k, v in recorded.items() if k in known}  # runs of vaekit <= 0.1 had more
    return from_mapping(DataSpec, {**values, **{k: v for k, v in changes.items() if v is not None}})


def load_ground_truth(run_dir: str | os.PathLike[str], root: str | None = None) -> Any:
    """The factor grid of a sprites run's data set (`vaekit.sprites.GroundTruth`).

    Raises:
        ConfigError: for a run on another data set.
    """
    from vaekit.data import resolve_data_root
    from vaekit.errors import ConfigError
    from vaekit.sprites import VARIANTS, sprites

    config = read_config(run_dir)
    name = (config.get("data") or {}).get("dataset", "mnist")
    if name not in VARIANTS and not name.startswith("dsprites:"):
        raise ConfigError(f"{run_dir} was trained on {name}, whose factors are not known: the "
                          "disentanglement metrics need a run on --data sprites, sprites:small "
                          "or dsprites:PATH")
    if root is None and not os.environ.get("VAEKIT_DATA"):
        root = (config.get("data_info") or {}).get("root")
    return sprites(name, resolve_data_root(root) / "sprites")


def load_test_set(run_dir: str | os.PathLike[str], vae: VAE, root: str | None = None,  # noqa: F821
                  download: bool = True, limit: int | None = None, *, observations: bool = True
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """The test observations of a run's data set, made as in training, and their labels.

    With ``observations=False``, the test images themselves (uint8 or in [0, 1], as the data set
    gives them) instead: what sample-quality scores compare samples with.

    The data root is ``root`` if given, else ``$VAEKIT_DATA``, else the one the run used (if it
    still exists), else the default cache folder. Bernoulli observations are the test images
    binarized with `vaekit.likelihoods.TEST_BINARIZATION_SEED`, as during training.

    Returns:
        ``(observations, labels)`` on the model's device and on the CPU.

    Raises:
        DataError: if the data cannot be read or its images do not fit the model.
    """
    from vaekit.data import load_data
    from vaekit.errors import DataError
    from vaekit.likelihoods import test_observations

    config = read_config(run_dir)
    if root is None and not os.environ.get("VAEKIT_DATA"):
        recorded = (config.get("data_info") or {}).get("root") or (config.get("data") or {}).get("root")
        root = recorded if recorded and Path(recorded).is_dir() else None
    spec = run_data_spec(config, root=root, download=download, limit_test=limit)
    x, labels = load_data(spec, train=False)
    if tuple(x.shape[1:]) != tuple(vae.image_shape):
        raise DataError(f"this run's model takes {tuple(vae.image_shape)} images but its data "
                        f"set gives {tuple(x.shape[1:])}; use vaekit.evaluate from Python")
    if not observations:
        return x, labels
    return test_observations(vae.likelihood, x).to(vae.device), labels


def evaluation_record(run_dir: str | os.PathLike[str], record: dict[str, Any],
                      checkpoint: str = "auto") -> dict[str, Any]:
    """``record`` with the checkpoint, epoch and step it measured, non-finite numbers as None:
    what `write_evaluation` writes."""
    import math

    name, state, _ = model_checkpoint(run_dir, checkpoint)
    record = {"checkpoint": name, "epoch": int(state["epoch"]),
              "step": int(state.get("step", 0)), **record}
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in record.items()}


def write_evaluation(run_dir: str | os.PathLike[str], record: dict[str, Any],
                     checkpoint: str = "auto", *, complete: bool = False
                     ) -> tuple[Path, dict[str, Any]]:
    """Write ``eval.json`` (atomically), with the checkpoint, epoch and step it measured.

    Non-finite numbers are written as ``null``.

    Args:
        run_dir: The run folder.
        record: The numbers.
        checkpoint: Which weights they measured (see `model_checkpoint`).
        complete: ``record`` is already an `evaluation_record`.

    Returns:
        The file's path and the record written to it.
    """
    if not complete:
        record = evaluation_record(run_dir, record, checkpoint)
    text = json.dumps(record, indent=2) + "\n"
    path = Path(run_dir) / EVALUATION
    atomic_write(path, lambda f: f.write(text.encode()))
    return path, record


def merged_evaluation(run_dir: str | os.PathLike[str], record: dict[str, Any]) -> dict[str, Any]:
    """``record`` (an `evaluation_record`) over the numbers ``eval.json`` already holds for the
    same weights (checkpoint, epoch and step), so evaluating one part does not lose another."""
    try:
        old = json.loads((Path(run_dir) / EVALUATION).read_text())
    except (OSError, ValueError, RecursionError):
        return record
    same = isinstance(old, dict) and all(old.get(k) == record.get(k)
                                         for k in ("checkpoint", "epoch", "step"))
    return {**old, **record} if same else record


def model_checkpoint(run_dir: str | os.PathLike[str], which: str = "auto"
                     ) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """Which weights are the run's model: ``(file name, checkpoint, weights)``.

    ``"best"``: ``best.pt``, the epoch with the best validation bound (`validation_key`). ``"last"``:
    ``checkpoint.pt``, its weight average (``ema``) if it keeps one, else its weights.
    ``"auto"``: best when the run has a ``best.pt``, else last.
    """
    if which not in ("auto", "best", "last"):
        raise CheckpointError(f"checkpoint must be auto, best or last, got {which!r}")
    if which == "best" or (which == "auto" and (Path(run_dir) / BEST).is_file()):
        state = load_checkpoint(run_dir, name=BEST)
        return BEST, state, state.get("model")
    state = load_checkpoint(run_dir)
    ema = state.get("ema")
    weights = ema.get("weights") if isinstance(ema, dict) else state.get("model")
    return CHECKPOINT, state, weights


def load(run_dir: str | os.PathLike[str], device: str = "cpu",
         trust_plugins: bool = False, checkpoint: str = "auto",
         prior: str = "learned") -> VAE:  # noqa: F821
    """Rebuild the trained VAE of a run folder, in eval mode, ready to encode, decode and sample.

    A VQ-VAE whose prior has been fitted (``vaekit fit-prior``, `learned_prior`) comes with that
    prior in place of the uniform one of its training, unless ``prior="trained"``.

    The weights are those of ``checkpoint``: ``"auto"`` (the default) takes ``best.pt``, the
    epoch with the best validation -ELBO, when the run has one, else the last checkpoint's (its
    weight average, with ``ema``); ``"best"`` or ``"last"`` choose (see `model_checkpoint`).

    A run folder whose model names code (your networks as ``module:Class``, a likelihood you
    registered) is code too: those modules are imported only if they already are, or with
    ``trust_plugins=True``; otherwise a `ConfigError` names the module (see `VAE.from_config`).

    Args:
        run_dir: A folder written by `vaekit.fit` / ``vaekit fit``.
        device: Where to put it (``"cpu"``, ``"cuda"`` or ``"auto"``).
        trust_plugins: Import the modules the run names.
        checkpoint: ``"auto"``, ``"best"`` or ``"last"``.
        prior: ``"learned"`` (a VQ-VAE's fitted prior, if any) or ``"trained"``.

    Raises:
        CheckpointError: if the folder, its config or its checkpoint cannot be read or do not match.
    """
    from vaekit.devices import resolve_device
    from vaekit.model import VAE

    config = read_config(run_dir)
    name, _, weights = model_checkpoint(run_dir, checkpoint)
    try:
        vae = VAE.from_config(vae_config(config), trust_plugins=trust_plugins)
    except PluginError:  # names the module to import or trust
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as e:  # ConfigError too
        raise CheckpointError(f"{run_dir}/config.json cannot rebuild the model "
                              f"({type(e).__name__}: {e})") from None
    load_weights(vae, {"model": weights}, run_dir if name == CHECKPOINT else Path(run_dir) / name)
    vae = vae.to(resolve_device(device)).eval()
    fitted = learned_prior(run_dir, vae) if prior == "learned" else None
    if fitted is not None:
        vae.model.prior = fitted
    return vae


PRIOR_FOLDER = "prior"
"""The subfolder of a VQ-VAE's run that holds its learned prior (``vaekit fit-prior``)."""


def learned_prior(run_dir: str | os.PathLike[str], vae: Any) -> Any:
    """The `vaekit.pixelcnn.PixelCNNPrior` fitted to a VQ-VAE run (``RUN/prior``), bound to
    ``vae``'s codebooks, in eval mode on its device; None when none has been fitted."""
    from vaekit.pixelcnn import PixelCNNPrior

    folder = Path(run_dir) / PRIOR_FOLDER
    if not getattr(vae, "is_vq", False) or not (folder / CHECKPOINT).exists():
        return None
    state = load_checkpoint(folder)
    s = state["settings"]
    prior = PixelCNNPrior(vae.z_dim, vae.posterior.k, s["hidden"], s["layers"],
                          vae.posterior.levels)
    prior.load_state_dict(state["prior"])
    return bind_learned_prior(prior, vae).eval()


def bind_learned_prior(prior: Any, vae: Any) -> Any:
    """``prior`` (a `vaekit.priors.CodePrior`) bound to ``vae``'s codebooks and grids, on its
    device."""
    post = vae.posterior
    prior.bind_codebook(post.quantizer, vae.prior.grid, getattr(post, "top", None),
                        vae.prior.top_grid)
    return prior.to(next(vae.parameters()).device)


def load_weights(vae: Any, state: dict[str, Any], run_dir: str | os.PathLike[str]) -> None:
    """Load a checkpoint's ``"model"`` weights into ``vae``, or say which keys do not match.

    Raises:
        CheckpointError: listing the missing and unexpected keys (or the shapes that differ).
    """
    weights = state.get("model") if isinstance(state, dict) else None
    if not isinstance(weights, dict):
        raise CheckpointError(f"the checkpoint in {run_dir} holds no model weights")
    try:
        result = vae.load_state_dict(weights, strict=False)
    except RuntimeError as e:  # shapes that differ
        detail = "; ".join(line.strip() for line in str(e).splitlines()[1:4])
        raise CheckpointError(f"the checkpoint in {run_dir} does not match its config.json: "
                              f"{detail}") from None
    bad = [k for k, v in weights.items() if torch.is_tensor(v) and v.is_floating_point()
           and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(f"the checkpoint in {run_dir} has weights that are NaN or infinite "
                              f"({', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}): the run "
                              "diverged; resume an earlier checkpoint with a lower lr")
    if result.missing_keys or result.unexpected_keys:
        def some(keys: list[str]) -> str:
            return ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")

        raise CheckpointError(
            f"the checkpoint in {run_dir} does not match its config.json: missing keys "
            f"{some(result.missing_keys) or 'none'}; unexpected keys "
            f"{some(result.unexpected_keys) or 'none'}")


class RunFolder:
    """The run folder a fit writes, on rank 0: lock, ``config.json``, checkpoints, ``best.pt``,
    ``metrics.csv`` and pictures, each written whole or not at all, each failure one line.

        folder = RunFolder("runs/a")
        folder.claim(config, overwrite=False, resuming=False)   # lock, check, write config.json
        folder.save_checkpoint(state, row)                       # then metrics.csv gets row
        folder.release()

    The rules: the lock is taken before anything in the folder is touched and held until
    `release` (a second writer is refused with the holder's PID); a folder is overwritten only
    when it is provably a vaekit run (`is_vaekit_run`); ``best.pt`` is written before the
    checkpoint of its epoch, so a kill between the two redoes the epoch; ``metrics.csv`` follows
    the checkpoint (its row is written after the checkpoint, and rewritten whole from the
    checkpoint on resume); the pictures are marked complete only once all are written.

    Args:
        path: The folder.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.lock: Any = None
        self.saved: str | None = None  # what the last checkpoint holds, for messages

    def claim(self, config: dict[str, Any], overwrite: bool = False,
              resuming: bool = False) -> None:
        """Lock the folder, check it may be written, and write ``config.json``.

        Raises:
            ConfigError: the folder is in the way, busy or not writable (nothing is changed).
        """
        from vaekit.errors import ConfigError
        from vaekit.io import FolderBusy, FolderLock, holds_nothing, remove_stale_temporaries

        path = self.path
        try:
            if not resuming and not holds_nothing(path):  # leftovers: e.g. killed mid-config
                if not overwrite:
                    what = "a vaekit run" if is_run_dir(path) else "not empty"
                    raise ConfigError(f"{path} already exists and is {what}; pick another out "
                                      "folder, resume it, or overwrite it")
                if not is_vaekit_run(path):  # the user's own files: never deleted
                    raise ConfigError(f"{path} holds files but is not a vaekit run (no "
                                      "config.json that vaekit wrote with a checkpoint.pt), so "
                                      "overwrite leaves it alone; pick another out folder")
            try:
                self.lock = FolderLock(path).acquire()
            except FolderBusy as e:
                raise ConfigError(str(e)) from None
            remove_stale_temporaries(path)  # a killed writer's
            if not resuming and overwrite:
                for name in RUN_FILES:
                    (path / name).unlink(missing_ok=True)
            write_config(path, {**config, "run": {**(config.get("run") or {}),
                                                  "out": str(path)}})
        except ConfigError:
            self.release()
            raise
        except OSError as e:  # not writable, a name too long for the file system ...
            self.release()
            raise ConfigError(f"cannot write the run folder {path} ({e.strerror or e}); choose "
                              "a writable out folder") from None

    def release(self) -> None:
        """Give the lock back."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def save_checkpoint(self, state: dict[str, Any], row: dict[str, float] | None = None
                        ) -> None:
        """The checkpoint, then ``row`` appended to ``metrics.csv``.

        Raises:
            CheckpointError: one line saying whether an earlier checkpoint is intact.
        """
        try:
            save_checkpoint(self.path, state)
            if row is not None:
                append_metrics(self.path, row)
        except (OSError, RuntimeError) as e:  # torch.save on a full disk: RuntimeError
            kept = ("the previous checkpoint is intact: free space, then resume"
                    if self.saved is not None or (self.path / CHECKPOINT).exists()
                    else "no checkpoint was written yet: free space, then resume (it starts "
                    "from the seeded initial weights)")
            raise CheckpointError(f"could not write the checkpoint in {self.path} "
                                  f"({_reason(e)}); {kept}") from None
        epoch, step = int(state.get("epoch", 0)), int(state.get("step", 0))
        self.saved = (f"The checkpoint after {epoch} epochs and {step} steps is kept in "
                      f"{self.path}" if epoch or step else
                      f"The initial weights are kept in {self.path}")

    def save_best(self, weights: dict[str, Any], epoch: int, key: str, value: float) -> None:
        """``best.pt``: the best validation epoch's weights and its value of ``key``.

        Raises:
            CheckpointError: one line.
        """
        try:
            save_checkpoint(self.path, {"model": weights, "epoch": epoch, "step": 0, key: value},
                            name=BEST)
        except (OSError, RuntimeError) as e:
            raise CheckpointError(f"could not write {BEST} in {self.path} ({_reason(e)}); free "
                                  "space, then resume") from None

    def write_labelled(self, indices: torch.Tensor, labels: torch.Tensor) -> None:
        """``labelled.json``: a semi-supervised run's labelled training images (their indices in
        the training split) and their labels, written atomically.

        Raises:
            CheckpointError: one line (a full disk).
        """
        text = json.dumps({"indices": indices.tolist(), "labels": labels.tolist()})
        try:
            atomic_write(self.path / LABELLED, lambda f: f.write(text.encode()))
        except OSError as e:
            raise CheckpointError(f"could not write {LABELLED} in {self.path} "
                                  f"({e.strerror or e}); free space, then resume") from None

    def rewrite_metrics(self, history: list[dict[str, float]]) -> None:
        """``metrics.csv`` as the checkpoint's history says, whole and at once."""
        write_metrics(self.path, history)

    def pictures_complete(self, epoch: int) -> bool:
        """See `pictures_complete`."""
        return pictures_complete(self.path, epoch)

    def write_pictures(self, draw: Any, epoch: int) -> None:
        """``draw(folder)`` writes the pictures; then they are marked as ``epoch``'s.

        Raises:
            CheckpointError: one line (a full disk), the checkpoint being written already.
        """
        try:
            draw(self.path)
            mark_pictures(self.path, epoch)
        except OSError as e:
            raise CheckpointError(f"could not write the pictures in {self.path} "
                                  f"({e.strerror or e}); the checkpoint is written: free space, "
                                  "then resume") from None


def _reason(e: BaseException) -> str:
    """The first line of an error, or its OS reason."""
    return e.strerror if isinstance(e, OSError) and e.strerror else str(e).splitlines()[0]


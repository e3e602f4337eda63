"""The run folder: ``config.json``, ``checkpoint.pt``, ``metrics.csv`` and pictures.

    vae = load("runs/mnist")            # the trained VAE, in eval mode
    rows = read_metrics("runs/mnist")   # one dict per epoch

Every file is written atomically (a temporary file in the same folder, fsync, rename), so a run
killed at any moment leaves the previous complete file in place.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from vaekit.errors import CheckpointError

__all__ = [
    "CONFIG",
    "CHECKPOINT",
    "METRICS",
    "atomic_write",
    "write_config",
    "read_config",
    "save_checkpoint",
    "load_checkpoint",
    "append_metrics",
    "read_metrics",
    "is_run_dir",
    "remove_stale_temporaries",
    "load",
]

CONFIG = "config.json"
CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.csv"
_TMP_SUFFIX = ".vaekit.tmp"  # marks atomic_write's temporaries, so that only they are cleaned up
FORMAT = "vaekit-checkpoint"
FORMAT_VERSION = 1


def atomic_write(path: str | os.PathLike[str], write: Callable[[io.BufferedWriter], None]) -> None:
    """Write ``path`` through ``write(file)`` into a temporary file, fsync it and rename it."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=_TMP_SUFFIX)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def remove_stale_temporaries(run_dir: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporaries of writes that a killed process never finished.

    `atomic_write` names them ``.<file>.<random>.vaekit.tmp``; the complete file beside each is
    untouched, and no other file matches.
    Call it only while no other process writes into ``run_dir``.

    Returns:
        The paths removed.
    """
    stale = list(Path(run_dir).glob(f".*{_TMP_SUFFIX}"))
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def write_config(run_dir: str | os.PathLike[str], config: dict[str, Any]) -> None:
    """Write ``config.json`` atomically."""
    text = json.dumps(config, indent=2, sort_keys=True) + "\n"
    atomic_write(Path(run_dir) / CONFIG, lambda f: f.write(text.encode()))


def read_config(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Read ``config.json``; `CheckpointError` if it is missing or not valid JSON."""
    path = Path(run_dir) / CONFIG
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{run_dir} is not a vaekit run folder (no {CONFIG})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is corrupt ({e}); restore it or start a new run") from None


def save_checkpoint(run_dir: str | os.PathLike[str], state: dict[str, Any]) -> None:
    """Save a checkpoint (``model``, ``optimizer``, ``epoch`` ...) atomically."""
    state = {"format": FORMAT, "format_version": FORMAT_VERSION, **state}
    atomic_write(Path(run_dir) / CHECKPOINT, lambda f: torch.save(state, f))


def load_checkpoint(run_dir: str | os.PathLike[str], map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint saved by `save_checkpoint`, with a clear error for anything else."""
    path = Path(run_dir) / CHECKPOINT
    if not path.exists():
        raise CheckpointError(f"no checkpoint in {run_dir}: the run has not finished an epoch yet")
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
    rows.append(row)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(row), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, lambda f: f.write(buf.getvalue().encode()))


def read_metrics(run_dir: str | os.PathLike[str]) -> list[dict[str, float]]:
    """Rows of ``metrics.csv`` as dicts of floats (``epoch`` and ``skipped`` as ints)."""
    with open(Path(run_dir) / METRICS, newline="") as f:
        rows = list(csv.DictReader(f))
    return [{k: (int(float(v)) if k in ("epoch", "skipped") else float(v)) for k, v in r.items()}
            for r in rows]


def is_run_dir(path: str | os.PathLike[str]) -> bool:
    """True if ``path`` holds a vaekit ``config.json``."""
    return (Path(path) / CONFIG).is_file()


def load(run_dir: str | os.PathLike[str], device: str = "cpu") -> VAE:  # noqa: F821
    """Rebuild the trained VAE of a run folder, in eval mode, ready to encode, decode and sample.

    Args:
        run_dir: A folder written by `vaekit.fit` / ``vaekit fit``.
        device: Where to put it (``"cpu"``, ``"cuda"`` or ``"auto"``).

    Raises:
        CheckpointError: if the folder, its config or its checkpoint cannot be read or do not match.
    """
    from vaekit.devices import resolve_device
    from vaekit.model import VAE

    config = read_config(run_dir)
    state = load_checkpoint(run_dir)
    try:
        vae = VAE.from_config(config["model"])
        vae.load_state_dict(state["model"])
    except (KeyError, TypeError, RuntimeError) as e:
        raise CheckpointError(
            f"the checkpoint in {run_dir} does not match its config.json ({type(e).__name__}: "
            f"{str(e).splitlines()[0]})"
        ) from None
    return vae.to(resolve_device(device)).eval()

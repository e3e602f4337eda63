"""Compare run folders: the settings that differ, final and best metrics, and their curves.

    table = compare_runs(["runs/a", "runs/b"])   # rows of settings that differ, then metrics
    save_curves(["runs/a", "runs/b"], "compare.png")

Works on run folders alone (``config.json`` and ``metrics.csv``); no tracking server.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vaekit import runs
from vaekit.errors import CheckpointError
from vaekit.tracking import flat_params

__all__ = ["Comparison", "compare_runs", "save_curves"]


@dataclass
class Comparison:
    """What `compare_runs` finds.

    Attributes:
        names: One column name per run (its folder's name, or its path if names repeat).
        settings: ``(setting, values)`` for each setting whose value differs between the runs.
        metrics: ``(metric, values)``: epochs, final train loss, final and best validation
            -ELBO, best validation IWAE bound (IWAE-trained runs), the epoch ``best.pt`` holds,
            final test -ELBO with its reconstruction and KL parts (what a β comparison is
            about), and the IWAE -log p(x) and KL of ``eval.json``.
    """

    names: list[str]
    settings: list[tuple[str, list[Any]]]
    metrics: list[tuple[str, list[float | None]]]

    def rows(self) -> list[list[str]]:
        """The table as text: a header row, then one row per setting and metric."""
        def show(v: Any, metric: bool) -> str:
            if v is None or (isinstance(v, float) and math.isnan(v)):
                return "-"
            if isinstance(v, float):
                return f"{v:.2f}" if metric else f"{v:g}"
            return ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)

        return [["", *self.names],
                *[[k, *(show(v, False) for v in vals)] for k, vals in self.settings],
                *[[k, *(show(v, True) for v in vals)] for k, vals in self.metrics]]


def _rows(run_dir: str | os.PathLike[str]) -> list[dict[str, float]]:
    """A run's metrics rows; none before its first epoch has finished."""
    try:
        return runs.read_metrics(run_dir)
    except FileNotFoundError:
        return []


def _metrics(run_dir: Path) -> dict[str, float | None]:
    rows = _rows(run_dir)
    last = rows[-1] if rows else {}
    epoch, _ = runs.best_validation(rows)  # the epoch best.pt holds

    def lowest(key: str) -> float | None:
        values = [r[key] for r in rows if math.isfinite(r.get(key, math.nan))]
        return min(values) if values else None

    ev: dict[str, Any] = {}
    try:
        import json

        record = json.loads((run_dir / runs.EVALUATION).read_text())
        ev = {k: v for k, v in record.items() if isinstance(v, (int, float))} \
            if isinstance(record, dict) else {}
        quality = record.get("sample_quality") if isinstance(record, dict) else None
        if isinstance(quality, dict) and isinstance(quality.get("fid"), (int, float)):
            ev["fid"] = quality["fid"]
    except (OSError, ValueError, RecursionError):  # no eval.json, or not one vaekit wrote
        pass
    return {"epochs": last.get("epoch"), "final train loss": last.get("train_loss"),
            "final val -ELBO": last.get("val_neg_elbo"), "best val -ELBO": lowest("val_neg_elbo"),
            "best val -IWAE bound": lowest("val_neg_iwae"), "best epoch": epoch or None,
            "final test -ELBO": last.get("test_neg_elbo"),
            "final test reconstruction": last.get("test_recon"),
            "final test KL": last.get("test_kl"),
            "IWAE -log p(x) (eval.json)": ev.get("neg_log_px"),
            "KL (eval.json)": ev.get("kl"), "FID (eval.json)": ev.get("fid")}


def compare_runs(run_dirs: Sequence[str | os.PathLike[str]]) -> Comparison:
    """The settings that differ between runs, and their final and best metrics.

    Raises:
        CheckpointError: if a folder is not a vaekit run.
    """
    paths = [Path(p) for p in run_dirs]
    configs = []
    for p in paths:
        if not runs.is_run_dir(p):
            raise CheckpointError(f"{p} is not a vaekit run folder (no {runs.CONFIG})")
        configs.append(flat_params(runs.read_config(p)))
    names = [p.name for p in paths]
    if len(set(names)) < len(names):
        names = [str(p) for p in paths]
    ignore = {"run.out", "run.progress", "data.root", "run.overwrite"}
    keys = sorted({k for c in configs for k in c} - ignore)
    settings = [(k, [c.get(k) for c in configs]) for k in keys
                if len({repr(c.get(k)) for c in configs}) > 1]
    found = [_metrics(p) for p in paths]
    metrics = [(k, [f[k] for f in found]) for k in found[0]]
    metrics = [(k, v) for k, v in metrics if any(x is not None for x in v)]
    return Comparison(names, settings, metrics)


def save_curves(run_dirs: Sequence[str | os.PathLike[str]], path: str | os.PathLike[str],
                names: Sequence[str] | None = None) -> Path:
    """One picture of the runs' curves overlaid (`vaekit.plots.save_curves`)."""
    from vaekit.plots import save_curves as draw

    labels = list(names) if names else [Path(p).name for p in run_dirs]
    return draw({label: _rows(p) for label, p in zip(labels, run_dirs)}, path)

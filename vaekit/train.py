"""Fit a VAE with SVI: ``Trace_ELBO`` as a torch module, Adam, data kept whole on the device.

    vae = VAE(z_dim=32, likelihood="bernoulli")
    result = fit(vae, train_x, test_x, epochs=10, device="auto", run_dir="runs/mnist")
    result.history[-1]["test_neg_elbo"]

Each epoch shuffles the training tensor by index, turns each batch into observations with the
likelihood (e.g. a fresh binarization) and takes one Adam step on the β-weighted -ELBO. After each
epoch the test -ELBO is computed and, with a ``run_dir``, the checkpoint, ``metrics.csv`` and the
pictures are written (atomically). `resume` continues a run folder from its last checkpoint.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyro
import torch
from pyro.infer import Trace_ELBO
from tqdm.auto import tqdm

from vaekit import runs
from vaekit.data import to_unit
from vaekit.errors import ConfigError, DataError, TrainingError
from vaekit.evaluate import evaluate_elbo
from vaekit.model import VAE

__all__ = ["FitResult", "fit", "resume", "resolve_device", "TEST_BINARIZATION_SEED"]

TEST_BINARIZATION_SEED = 0
"""The test set's observations (e.g. its binarization) are drawn once with this seed, so test
numbers are comparable across runs and training seeds."""


@dataclass
class FitResult:
    """What `fit` returns.

    Attributes:
        vae: The trained model (on the training device, in eval mode).
        history: One dict per epoch: ``epoch``, ``train_loss`` (mean β-weighted objective per
            image), ``test_neg_elbo``, ``test_recon``, ``test_kl`` (nats per image; NaN without
            test data) and ``seconds``.
        run_dir: The run folder, if one was written.
    """

    vae: VAE
    history: list[dict[str, float]] = field(default_factory=list)
    run_dir: Path | None = None

    @property
    def final(self) -> dict[str, float]:
        """The last epoch's metrics."""
        return self.history[-1]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` picks CUDA when available, else the CPU; ``"cuda"`` without a GPU is an error."""
    name = str(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for but no GPU is available; use 'cpu' or 'auto'")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use 'auto', 'cpu' or 'cuda'") from None


def _check_settings(epochs: int, batch_size: int, lr: float, n_train: int) -> None:
    if not (isinstance(epochs, int) and epochs >= 1):
        raise ConfigError(f"epochs must be an integer >= 1, got {epochs!r}")
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise ConfigError(f"batch size must be an integer >= 1, got {batch_size!r}")
    if batch_size > n_train:
        raise ConfigError(
            f"batch size {batch_size} is larger than the {n_train} training images; lower it"
        )
    if not (math.isfinite(lr) and lr > 0):
        raise ConfigError(f"learning rate must be > 0, got {lr!r}")


def _check_images(vae: VAE, x: torch.Tensor, what: str) -> None:
    if x.dim() != 4 or tuple(x.shape[1:]) != vae.image_shape:
        raise DataError(
            f"{what} images have shape {tuple(x.shape[1:])} but the model takes {vae.image_shape}; "
            "resize the images or build the VAE with image_shape matching them"
        )
    vae.likelihood.check(to_unit(x))


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
    progress: bool = True,
    data_info: dict[str, Any] | None = None,
    _checkpoint: dict[str, Any] | None = None,
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
        seed: Seeds Pyro, torch and the shuffling.
        run_dir: Folder for ``config.json``, ``checkpoint.pt``, ``metrics.csv`` and pictures.
        overwrite: Allow writing into a ``run_dir`` that already has files.
        progress: Show a progress bar and print one line per epoch.
        data_info: Extra facts about the data recorded in ``config.json``.

    Returns:
        A `FitResult` with the trained model and the per-epoch metrics.

    Raises:
        ConfigError: for invalid settings or a run folder that is in the way.
        DataError: for images of the wrong shape or range.
        TrainingError: when the loss stops being finite.
    """
    # -- check everything before touching the disk ------------------------------------------
    _check_settings(epochs, batch_size, lr, train_data.shape[0])
    dev = resolve_device(device)
    _check_images(vae, train_data, "training")
    if test_data is not None:
        _check_images(vae, test_data, "test")
    run_path = Path(run_dir) if run_dir is not None else None
    if run_path is not None and _checkpoint is None:
        if run_path.exists() and any(run_path.iterdir()) and not overwrite:
            raise ConfigError(f"{run_path} already exists and is not empty; pick another --out")

    # -- set up: seeds, data on the device, the loss as a torch module, the optimizer --------
    pyro.set_rng_seed(seed)
    shuffle = torch.Generator().manual_seed(seed)
    vae.to(dev).train()
    lik = vae.likelihood
    train_x = train_data.to(dev)
    test_y = None
    if test_data is not None:
        fixed = torch.Generator().manual_seed(TEST_BINARIZATION_SEED)
        test_y = lik.targets(to_unit(test_data), generator=fixed).to(dev)
    with pyro.settings.context(module_local_params=True):
        loss_fn = Trace_ELBO(max_plate_nesting=1)(vae.model, vae.guide)
        optimizer = torch.optim.Adam(loss_fn.parameters(), lr=lr)
    history: list[dict[str, float]] = []
    start = 0
    if _checkpoint is not None:
        optimizer.load_state_dict(_checkpoint["optimizer"])
        history = list(_checkpoint["history"])
        start = int(_checkpoint["epoch"])
        _set_rng_state(_checkpoint["rng"], shuffle, dev)

    config = {
        "vaekit_version": _version(),
        "model": vae.config(),
        "train": {"epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed},
        "device": dev.type,
        "data": data_info or {},
    }
    if run_path is not None:
        run_path.mkdir(parents=True, exist_ok=True)
        runs.write_config(run_path, config)
        if _checkpoint is not None:  # metrics.csv follows the checkpoint, whatever happened after
            (run_path / runs.METRICS).unlink(missing_ok=True)
            for row in history:
                runs.append_metrics(run_path, row)

    n = train_x.shape[0]
    steps = math.ceil(n / batch_size)
    for epoch in range(start + 1, epochs + 1):
        # -- one pass over the shuffled training data -----------------------------------------
        t0 = time.perf_counter()
        vae.train()
        perm = torch.randperm(n, generator=shuffle).to(dev)
        total = torch.zeros((), device=dev)
        bar = tqdm(total=n, desc=f"epoch {epoch}/{epochs}", unit="img", unit_scale=True,
                   leave=False, disable=not progress, dynamic_ncols=True)
        with pyro.settings.context(module_local_params=True), bar:
            for step in range(steps):
                x = lik.targets(to_unit(train_x[perm[step * batch_size : (step + 1) * batch_size]]))
                try:
                    loss = loss_fn(x)
                except ValueError as e:  # validation of a distribution given NaN parameters
                    if "invalid values" not in str(e):
                        raise
                    _raise_non_finite(epoch, step + 1, lr)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += loss.detach()
                bar.update(x.shape[0])
                if progress and step % 10 == 0:
                    bar.set_postfix(loss=f"{loss.item() / x.shape[0]:.2f}")
        train_loss = total.item() / n
        if not math.isfinite(train_loss):
            _raise_non_finite(epoch, None, lr)

        # -- evaluate, then checkpoint and write the run folder -------------------------------
        row: dict[str, float] = {"epoch": epoch, "train_loss": train_loss}
        test = evaluate_elbo(vae, test_y, batch_size) if test_y is not None else {}
        for key in ("neg_elbo", "recon", "kl"):
            row[f"test_{key}"] = test.get(key, float("nan"))
        row["seconds"] = time.perf_counter() - t0
        history.append(row)
        if run_path is not None:
            _write_epoch(run_path, vae, optimizer, history, shuffle, dev,
                         test_y if test_y is not None else lik.targets(to_unit(train_x[:32])))
        if progress:
            tqdm.write(
                f"epoch {epoch}/{epochs}  train loss {train_loss:.2f}  "
                f"test -ELBO {row['test_neg_elbo']:.2f} nats/image  ({row['seconds']:.1f} s)"
            )
    vae.eval()
    return FitResult(vae=vae, history=history, run_dir=run_path)


def resume(
    run_dir: str | os.PathLike[str],
    train_data: torch.Tensor,
    test_data: torch.Tensor | None = None,
    *,
    epochs: int | None = None,
    device: str | torch.device = "auto",
    progress: bool = True,
) -> FitResult:
    """Continue a run folder from its last checkpoint (model, optimizer, epoch and RNG state).

    Args:
        run_dir: A folder written by `fit`.
        train_data: The same training images as the original run.
        test_data: The same test images, if the run had them.
        epochs: A new total number of epochs (default: the run's own).
        device: Where to continue.
        progress: Show progress.

    Raises:
        CheckpointError: if the folder or its checkpoint cannot be used.
    """
    config = runs.read_config(run_dir)
    state = runs.load_checkpoint(run_dir)
    vae = runs.load(run_dir, device="cpu").train()
    train = config["train"]
    return fit(
        vae, train_data, test_data,
        epochs=epochs or train["epochs"], batch_size=train["batch_size"], lr=train["lr"],
        device=device, seed=train["seed"], run_dir=run_dir, progress=progress,
        data_info=config.get("data"), _checkpoint=state,
    )


def _raise_non_finite(epoch: int, step: int | None, lr: float) -> None:
    where = f"epoch {epoch}" + (f", step {step}" if step else "")
    raise TrainingError(
        f"the loss became NaN or infinite in {where}; lower the learning rate (now {lr:g}) or, "
        "for a Gaussian likelihood, raise its scale. The last good checkpoint is kept"
    )


def _write_epoch(run_path: Path, vae: VAE, optimizer: torch.optim.Optimizer,
                 history: list[dict[str, float]], shuffle: torch.Generator, dev: torch.device,
                 show: torch.Tensor) -> None:
    from vaekit import plots

    runs.save_checkpoint(run_path, {
        "model": vae.state_dict(),
        "optimizer": optimizer.state_dict(),
        "epoch": int(history[-1]["epoch"]),
        "history": history,
        "rng": _get_rng_state(shuffle, dev),
    })
    runs.append_metrics(run_path, history[-1])
    plots.save_samples(vae, run_path / "samples.png")
    plots.save_reconstructions(vae, show[:32], run_path / "reconstructions.png")
    plots.save_loss_curve(history, run_path / "loss.png")


def _get_rng_state(shuffle: torch.Generator, dev: torch.device) -> dict[str, torch.Tensor]:
    state = {"torch": torch.get_rng_state(), "shuffle": shuffle.get_state()}
    if dev.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(dev)
    return state


def _set_rng_state(state: dict[str, torch.Tensor], shuffle: torch.Generator,
                   dev: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    shuffle.set_state(state["shuffle"])
    if dev.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], dev)


def _version() -> str:
    from vaekit import __version__

    return __version__

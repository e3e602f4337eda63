"""The ``vaekit`` command line: a thin layer that turns options into calls to the library.

    vaekit fit --likelihood bernoulli --epochs 10 --out runs/mnist
    vaekit fit --resume runs/mnist --epochs 20
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import click

# Heavy imports (torch, pyro) happen inside the commands so that `vaekit --help` stays fast.

BUILTIN_LIKELIHOODS = ("bernoulli", "continuous-bernoulli", "gaussian", "laplace",
                       "discretized-logistic")


class LikelihoodName(click.ParamType):
    """A likelihood registered in `vaekit.likelihoods.LIKELIHOODS`, checked when used."""

    name = "likelihood"

    def convert(self, value: Any, param: Any, ctx: Any) -> str:
        from vaekit.likelihoods import LIKELIHOODS

        if value not in LIKELIHOODS:
            self.fail(f"unknown likelihood {value!r}; choose one of: {', '.join(sorted(LIKELIHOODS))}",
                      param, ctx)
        return str(value)

    def shell_complete(self, ctx: Any, param: Any, incomplete: str) -> list[Any]:
        from click.shell_completion import CompletionItem

        from vaekit.likelihoods import LIKELIHOODS

        return [CompletionItem(n) for n in sorted(LIKELIHOODS) if n.startswith(incomplete)]


def _is_main_rank() -> bool:
    """False in the ranks > 0 of a torchrun job: they neither print nor write."""
    return os.environ.get("RANK", "0") == "0"


def _fail(message: str, code: int = 2) -> None:
    """Print a one-line error (once, on rank 0) and exit (2: bad input, 1: training failed)."""
    if _is_main_rank():
        click.echo(f"Error: {message}", err=True)
    sys.exit(code)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="vaekit", prog_name="vaekit")
def cli() -> None:
    """vaekit: variational autoencoders written as Pyro programs."""


# Options that --resume takes from the run's config.json instead.
_MODEL_OPTIONS = ("likelihood", "binarize", "scale", "learn_scale", "beta", "z_dim",
                  "batch_size", "lr", "seed", "limit_train", "limit_test", "out", "overwrite",
                  "checkpoint_every", "skip_nonfinite", "deterministic", "channels_last",
                  "compile_nets", "amp", "sync_batchnorm", "objective", "beta_schedule",
                  "iwae_samples", "gamma", "capacity", "capacity_steps", "free_bits",
                  "conditional", "encoder_spec", "decoder_spec", "scale_mode", "dataset",
                  "image_size", "channels")


@cli.command()
@click.option("--likelihood", type=LikelihoodName(), default="bernoulli", show_default=True,
              help="p(x|z): " + ", ".join(BUILTIN_LIKELIHOODS) + " or one you registered.")
@click.option("--binarize/--no-binarize", default=None,
              help="Bernoulli only: binarize grayscale images each batch (default), or train on "
                   "grayscale targets like the seed notebook's BCE (not a proper likelihood).")
@click.option("--scale", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Gaussian, Laplace, discretized-logistic: observation scale (initial value "
                   "if learned). [default: 0.1; discretized-logistic 0.05]")
@click.option("--learn-scale", is_flag=True, default=None,
              help="Gaussian, Laplace, discretized-logistic: learn one global scale.")
@click.option("--scale-mode", type=click.Choice(["fixed", "global", "channel", "pixel"]),
              default=None, help="Gaussian, Laplace, discretized-logistic: a fixed scale, one "
                                 "learned, one per channel, or one per pixel predicted by the "
                                 "decoder. [default: fixed; discretized-logistic pixel]")
@click.option("--data", "dataset", default="mnist", show_default=True,
              help="mnist, fashion-mnist, cifar10 (torchvision) or folder:PATH (any images; "
                   "one sub-folder per class, or none).")
@click.option("--image-size", type=click.Choice(["28", "32", "64"]), default=None,
              help="Resize the images. [default: the data set's own; folders: 32]")
@click.option("--channels", type=click.Choice(["1", "3"]), default=None,
              help="Convert to grayscale (1) or RGB (3). [default: the data set's own]")
@click.option("--beta", type=click.FloatRange(min=0), default=1.0,
              show_default=True, help="Weight of the KL term (β-VAE); 1 is the ELBO.")
@click.option("--objective", type=click.Choice(["elbo", "iwae", "capacity", "free-bits"]),
              default="elbo", show_default=True,
              help="Training objective; the test -ELBO is reported whatever it is.")
@click.option("--beta-schedule", default="constant", show_default=True,
              help="β over steps: constant, linear:STEPS (warm-up) or cyclical:STEPS[:RATIO].")
@click.option("--iwae-samples", type=click.IntRange(min=1), default=5, show_default=True,
              help="K for --objective iwae.")
@click.option("--gamma", type=click.FloatRange(min=0), default=1000.0, show_default=True,
              help="γ for --objective capacity: γ|KL - C|.")
@click.option("--capacity", type=click.FloatRange(min=0), default=25.0, show_default=True,
              help="Final C in nats per image for --objective capacity.")
@click.option("--capacity-steps", type=click.IntRange(min=0), default=10000, show_default=True,
              help="Steps over which C rises linearly from 0.")
@click.option("--free-bits", type=click.FloatRange(min=0), default=0.5, show_default=True,
              help="λ in nats per latent dimension for --objective free-bits.")
@click.option("--z-dim", type=click.IntRange(min=1), default=32, show_default=True,
              help="Latent dimension.")
@click.option("--conditional", is_flag=True, default=False,
              help="A conditional VAE on the digit labels: p(x|z,y), q(z|x,y).")
@click.option("--encoder", "encoder_spec", default=None,
              help="Your own encoder, package.module:Class, built as Class(image_shape, z_dim).")
@click.option("--decoder", "decoder_spec", default=None,
              help="Your own decoder, package.module:Class, built as "
                   "Class(image_shape, z_dim, out_channels).")
@click.option("--epochs", type=click.IntRange(min=1), default=10, show_default=True,
              help="Passes over the training data (with --resume: the new total).")
@click.option("--batch-size", type=click.IntRange(min=1), default=1024, show_default=True,
              help="Images per step.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=2e-3,
              show_default=True, help="Adam learning rate.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
              show_default=True, help="Where to train; auto picks CUDA when there is a GPU.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seeds Pyro, torch and the shuffling.")
@click.option("--data-root", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder with MNIST/raw/*-ubyte. [default: $VAEKIT_DATA, else "
                   "~/.cache/vaekit/data]")
@click.option("--download/--no-download", default=True, show_default=True,
              help="Download MNIST with torchvision when it is missing.")
@click.option("--limit-train", type=click.IntRange(min=1), default=None,
              help="Use only the first N training images (smoke runs).")
@click.option("--limit-test", type=click.IntRange(min=1), default=None,
              help="Use only the first N test images.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Run folder. [default: runs/<timestamp>]")
@click.option("--overwrite", is_flag=True, default=False,
              help="Write into an --out folder that already has files.")
@click.option("--resume", "resume_dir", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="Continue this run folder from its last checkpoint.")
@click.option("--checkpoint-every", type=click.IntRange(min=0), default=0, show_default=True,
              help="Also checkpoint every N steps (0: at the end of each epoch only).")
@click.option("--skip-nonfinite", is_flag=True, default=False,
              help="Skip batches whose loss is NaN/inf (counted in metrics.csv) instead of "
                   "stopping.")
@click.option("--deterministic", is_flag=True, default=False,
              help="Use deterministic torch algorithms (for GPUs; CPU runs already repeat).")
@click.option("--channels-last/--no-channels-last", default=True, show_default=True,
              help="Channels-last memory format for the networks (faster convolutions).")
@click.option("--compile", "compile_nets", is_flag=True, default=False,
              help="torch.compile the encoder and decoder (worth it on GPUs).")
@click.option("--amp", is_flag=True, default=False,
              help="Mixed precision: bfloat16 autocast for the networks.")
@click.option("--nproc", type=click.IntRange(min=1), default=1, show_default=True,
              help="Train data-parallel in N processes on this machine (runs torchrun); "
                   "--batch-size stays the global batch.")
@click.option("--sync-batchnorm", is_flag=True, default=False,
              help="With several processes: BatchNorm statistics of the global batch.")
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="Show a progress bar (the per-epoch lines are printed either way).")
@click.pass_context
def fit(ctx: click.Context, likelihood: str, binarize: bool | None, scale: float | None,
        learn_scale: bool | None, scale_mode: str | None, dataset: str, image_size: str | None,
        channels: str | None, beta: float, objective: str, beta_schedule: str,
        iwae_samples: int, gamma: float, capacity: float, capacity_steps: int, free_bits: float,
        z_dim: int, conditional: bool, encoder_spec: str | None, decoder_spec: str | None,
        epochs: int, batch_size: int, lr: float, device: str, seed: int,
        data_root: Path | None, download: bool,
        limit_train: int | None, limit_test: int | None, out: Path | None, overwrite: bool,
        resume_dir: Path | None, checkpoint_every: int, skip_nonfinite: bool, deterministic: bool,
        channels_last: bool, compile_nets: bool, amp: bool, nproc: int, sync_batchnorm: bool,
        progress: bool) -> None:
    """Fit a VAE to MNIST with SVI and write a run folder.

    The run folder holds config.json, checkpoint.pt, metrics.csv (one row per epoch),
    samples.png, reconstructions.png and loss.png.
    """
    import pyro

    from vaekit.data import load_dataset, resolve_data_root
    from vaekit.devices import resolve_device
    from vaekit.errors import Interrupted, TrainingError, VaekitError
    from vaekit.likelihoods import get_likelihood
    from vaekit.model import VAE
    from vaekit.runs import read_config
    from vaekit.train import fit as fit_vae
    from vaekit.train import resume as resume_fit

    t0 = time.perf_counter()
    if nproc > 1 and "LOCAL_RANK" not in os.environ:  # launch torchrun with the same options
        from vaekit.distributed import launch

        argv = _without_option(sys.argv[1:], "--nproc")
        if out is None and resume_dir is None:  # every rank must agree on the folder
            argv += ["--out", str(Path("runs") / time.strftime("%Y%m%d-%H%M%S"))]
        sys.exit(launch(nproc, argv))
    try:
        resolve_device(device)
        if resume_dir is not None:
            given = [p.opts[0] for p in ctx.command.params if p.name in _MODEL_OPTIONS
                     and ctx.get_parameter_source(p.name) == click.core.ParameterSource.COMMANDLINE]
            if given:
                raise click.UsageError(
                    f"{', '.join(given)} cannot be combined with --resume: the run's settings "
                    "come from its config.json (only --epochs, --device and data options can)"
                )
            data = read_config(resume_dir).get("data", {})
            limit_train, limit_test = data.get("limit_train"), data.get("limit_test")
            dataset = data.get("dataset", "mnist")
            image_size, channels = data.get("image_size"), data.get("channels")
        root = resolve_data_root(data_root)
        size, chans = (int(image_size) if image_size else None), (int(channels) if channels else None)
        train_x, train_y = load_dataset(dataset, root, train=True, download=download,
                                        limit=limit_train, size=size, channels=chans)
        test_x, test_y = load_dataset(dataset, root, train=False, download=download,
                                      limit=limit_test, size=size, channels=chans)
        if resume_dir is None:
            kwargs = {k: v for k, v in {"binarize": binarize, "scale": scale,
                                         "learn_scale": learn_scale, "scale_mode": scale_mode
                                         }.items() if v is not None}
            if scale_mode == "channel":
                kwargs["channels"] = int(train_x.shape[1])
            pyro.set_rng_seed(seed)  # the initial weights too
            vae = VAE(z_dim=z_dim, likelihood=get_likelihood(likelihood, **kwargs), beta=beta,
                      image_shape=tuple(train_x.shape[1:]), encoder=encoder_spec,
                      decoder=decoder_spec,
                      num_classes=int(train_y.max()) + 1 if conditional else 0)
        if resume_dir is not None:
            if _is_main_rank():
                click.echo(f"resuming {resume_dir}")
            given_epochs = ctx.get_parameter_source("epochs") == click.core.ParameterSource.COMMANDLINE
            result = resume_fit(resume_dir, train_x, test_x, epochs=epochs if given_epochs else None,
                                device=device, progress=progress, train_labels=train_y,
                                test_labels=test_y)
        else:
            out = out or Path("runs") / time.strftime("%Y%m%d-%H%M%S")
            if _is_main_rank():
                click.echo(f"run folder: {out}")
            info = {"dataset": dataset, "root": str(root), "limit_train": limit_train,
                    "limit_test": limit_test, "n_train": len(train_x), "n_test": len(test_x),
                    "image_size": size, "channels": chans}
            result = fit_vae(vae, train_x, test_x, epochs=epochs, batch_size=batch_size, lr=lr,
                             device=device, seed=seed, run_dir=out, overwrite=overwrite,
                             checkpoint_every=checkpoint_every, skip_nonfinite=skip_nonfinite,
                             deterministic=deterministic, channels_last=channels_last,
                             compile=compile_nets, amp=amp, sync_batchnorm=sync_batchnorm,
                             objective=objective, beta_schedule=beta_schedule,
                             iwae_samples=iwae_samples, gamma=gamma, capacity=capacity,
                             capacity_steps=capacity_steps, free_bits=free_bits,
                             train_labels=train_y, test_labels=test_y, progress=progress,
                             data_info=info)
    except Interrupted as e:
        _fail(str(e), code=128 + e.signum)
    except TrainingError as e:
        _fail(str(e), code=1)
    except VaekitError as e:
        _fail(str(e))
    except KeyboardInterrupt:  # a second Ctrl-C while the checkpoint was being written
        _fail(f"interrupted; continue from the last complete checkpoint with: "
              f"vaekit fit --resume {resume_dir or out}", code=130)
    final = result.final
    if _is_main_rank():
        click.echo(
            f"done: {len(result.history)} epochs, test -ELBO {final['test_neg_elbo']:.2f} "
            f"nats/image, {time.perf_counter() - t0:.0f} s; run folder: {result.run_dir}"
        )


# -- evaluate and look: commands on a finished run folder ---------------------------------------
EVAL_FILE = "eval.json"


def _run_command(f: Any) -> Any:
    """The RUN_DIR argument and the --device option shared by the commands on a run folder."""
    f = click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
                     show_default=True, help="Where to run the model.")(f)
    return click.argument("run_dir", type=click.Path(path_type=Path))(f)


def _out_option(f: Any) -> Any:
    return click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
                        help="Folder for the PNG files. [default: RUN_DIR]")(f)


def _data_options(f: Any) -> Any:
    """--data-root and --download/--no-download, for the commands that read the test set."""
    f = click.option("--download/--no-download", default=True, show_default=True,
                     help="Download MNIST with torchvision when it is missing.")(f)
    return click.option("--data-root", type=click.Path(file_okay=False, path_type=Path),
                        default=None,
                        help="Folder with MNIST/raw/*-ubyte. [default: $VAEKIT_DATA, else the "
                             "run's own data root, else ~/.cache/vaekit/data]")(f)


class _UserErrors:
    """Context manager: vaekit errors and file-system errors become one line and exit code 2."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, e: Any, tb: Any) -> bool:
        from vaekit.errors import VaekitError

        if isinstance(e, VaekitError):
            _fail(str(e))
        if isinstance(e, OSError):
            _fail(f"cannot use {e.filename or 'a file'} ({e.strerror or e}); check the path, "
                  "its permissions and free space, or choose another --out")
        return False


def _open_run(run_dir: Path, device: str, conditional_ok: bool = True) -> Any:
    """The run's VAE in eval mode (`vaekit.load`)."""
    from vaekit.errors import ConfigError
    from vaekit.runs import load

    vae = load(run_dir, device=device)
    if vae.num_classes and not conditional_ok:
        raise ConfigError("this command does not support conditional runs yet; use sample, "
                          "reconstruct or evaluate, or vaekit.VAE.decode(z, y) in Python")
    return vae


def _test_set(vae: Any, run_dir: Path, data_root: Path | None, download: bool,
              limit: int | None) -> tuple[Any, Any]:
    """MNIST test observations made as in training (fixed binarization seed), and labels."""
    import os

    import torch

    from vaekit.data import load_dataset, resolve_data_root, to_unit
    from vaekit.errors import DataError
    from vaekit.runs import read_config
    from vaekit.train import TEST_BINARIZATION_SEED

    data = read_config(run_dir).get("data", {})
    if data_root is None and not os.environ.get("VAEKIT_DATA"):
        recorded = data.get("root")
        data_root = Path(recorded) if recorded and Path(recorded).is_dir() else None
    x, labels = load_dataset(data.get("dataset", "mnist"), resolve_data_root(data_root),
                             train=False, download=download, limit=limit,
                             size=data.get("image_size"), channels=data.get("channels"))
    if tuple(x.shape[1:]) != tuple(vae.image_shape):
        raise DataError(f"this run's model takes {tuple(vae.image_shape)} images but its data "
                        f"set gives {tuple(x.shape[1:])}; use vaekit.evaluate from Python")
    fixed = torch.Generator().manual_seed(TEST_BINARIZATION_SEED)
    x_obs = vae.likelihood.targets(to_unit(x), generator=fixed)
    return x_obs.to(vae.device), labels


def _out_dir(run_dir: Path, out: Path | None) -> Path:
    folder = out if out is not None else run_dir
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _check_index(name: str, index: int, n: int) -> None:
    if not 0 <= index < n:
        raise click.BadParameter(f"{index} is not a test image index; use 0 to {n - 1}",
                                 param_hint=name)


@cli.command()
@_run_command
@click.option("--num-samples", type=click.IntRange(min=1), default=1000, show_default=True,
              help="K, importance samples per image for the IWAE estimate of -log p(x).")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Evaluate only the first N test images. [default: all 10,000]")
@click.option("--batch-size", type=click.IntRange(min=1), default=100, show_default=True,
              help="Images encoded at once.")
@click.option("--chunk-size", type=click.IntRange(min=1), default=2048, show_default=True,
              help="Most latents decoded at once (bounds memory).")
@_data_options
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seeds the importance samples.")
@click.option("--progress/--no-progress", "progress", default=True, show_default=True,
              help="Show a progress bar over the test images.")
def evaluate(run_dir: Path, device: str, num_samples: int, limit: int | None, batch_size: int,
             chunk_size: int, data_root: Path | None, download: bool, seed: int,
             progress: bool) -> None:
    """Test numbers of a run: -ELBO, its parts, the IWAE -log p(x), active units, bits/dim.

    Observations are made as in training (Bernoulli: the test set binarized with a fixed seed).
    Prints a table and writes eval.json into RUN_DIR.
    """
    import json
    import math

    import torch

    from vaekit.evaluate import evaluate as evaluate_vae
    from vaekit.runs import atomic_write

    t0 = time.perf_counter()
    with _UserErrors():
        vae = _open_run(run_dir, device).to(memory_format=torch.channels_last)  # faster convs
        x_obs, labels = _test_set(vae, run_dir, data_root, download, limit)
        r = evaluate_vae(vae, x_obs, num_samples=num_samples, batch_size=batch_size,
                         chunk_size=chunk_size, seed=seed, progress=progress,
                         y=labels if vae.num_classes else None)
        seconds = time.perf_counter() - t0
        record = {"run_dir": str(run_dir), "likelihood": vae.likelihood.name, "z_dim": vae.z_dim,
                  "limit": limit, "seed": seed, "device": str(vae.device), **r.to_dict(),
                  "seconds": seconds}
        record = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                  for k, v in record.items()}
        text = json.dumps(record, indent=2) + "\n"
        atomic_write(run_dir / EVAL_FILE, lambda f: f.write(text.encode()))

    kl = sorted(enumerate(r.kl_per_dim), key=lambda t: -t[1])
    top = ", ".join(f"z{d} {v:.2f}" for d, v in kl[:8]) + (" ..." if len(kl) > 8 else "")
    bpd = f"{r.bits_per_dim:.3f}" if r.bits_per_dim is not None else "n/a (binary likelihood)"
    rows = [
        ("-ELBO", f"{r.neg_elbo:.2f} ± {r.neg_elbo_se:.2f}"),
        ("  reconstruction -log p(x|z)", f"{r.recon:.2f}"),
        ("  KL(q(z|x) || p(z))", f"{r.kl:.2f}"),
        (f"β-objective recon + {r.beta:g}·KL", f"{r.objective:.2f}"),
        (f"IWAE -log p(x), K={r.num_samples}", f"{r.neg_log_px:.2f} ± {r.neg_log_px_se:.2f}"),
        ("bits/dim", bpd),
        (f"active units (Cov > {r.active_threshold:g})", f"{r.active_units} of {vae.z_dim}"),
        ("KL per dimension, largest", top),
    ]
    click.echo(f"{run_dir}: {r.n_images} test images, nats per image (± standard error)")
    for name, value in rows:
        click.echo(f"  {name:<34} {value}")
    click.echo(f"wrote {run_dir / EVAL_FILE} ({seconds:.1f} s)")


@cli.command()
@_run_command
@click.option("--n", "n", type=click.IntRange(min=1), default=64, show_default=True,
              help="How many samples.")
@click.option("--nrow", type=click.IntRange(min=1), default=8, show_default=True,
              help="Images per row.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds the draws of z.")
@click.option("--label", type=click.IntRange(min=0), default=None,
              help="Conditional runs: draw this class. [default: the classes in turn]")
@_out_option
def sample(run_dir: Path, device: str, n: int, nrow: int, seed: int, label: int | None,
           out: Path | None) -> None:
    """Mean images of draws z ~ p(z): writes sample.png."""
    import torch

    from vaekit import plots
    from vaekit.errors import ConfigError

    with _UserErrors():
        vae = _open_run(run_dir, device)
        k = vae.num_classes
        if label is not None and not k:
            raise ConfigError("--label needs a conditional run (vaekit fit --conditional)")
        if label is not None and label >= k:
            raise ConfigError(f"--label must be below {k}, the number of classes")
        labels = (label if label is not None else torch.arange(n) % k) if k else None
        path = plots.save_samples(vae, _out_dir(run_dir, out) / "sample.png", n=n, seed=seed,
                                  nrow=nrow, labels=labels)
    click.echo(f"wrote {path}")


@cli.command()
@_run_command
@click.option("--n", "n", type=click.IntRange(min=1), default=32, show_default=True,
              help="How many test images.")
@click.option("--start", type=click.IntRange(min=0), default=0, show_default=True,
              help="Index of the first test image.")
@click.option("--per-row", type=click.IntRange(min=1), default=16, show_default=True,
              help="Images per row (originals and reconstructions alternate by row).")
@_data_options
@_out_option
def reconstruct(run_dir: Path, device: str, n: int, start: int, per_row: int,
                data_root: Path | None, download: bool, out: Path | None) -> None:
    """Test observations and their reconstructions in alternating rows: writes reconstruct.png."""
    from vaekit import plots

    with _UserErrors():
        vae = _open_run(run_dir, device)
        x_obs, labels = _test_set(vae, run_dir, data_root, download, start + n)
        _check_index("--start", start, x_obs.shape[0])
        path = plots.save_reconstructions(
            vae, x_obs[start : start + n], _out_dir(run_dir, out) / "reconstruct.png",
            per_row=per_row, labels=labels[start : start + n].to(vae.device) if vae.num_classes
            else None)
    click.echo(f"wrote {path}")


@cli.command()
@_run_command
@click.option("--pair", "pairs", type=(click.IntRange(min=0), click.IntRange(min=0)),
              multiple=True, default=((0, 1), (2, 3), (4, 5)), show_default=True,
              help="Two test image indices I J; repeat for more rows.")
@click.option("--steps", type=click.IntRange(min=2), default=10, show_default=True,
              help="Decoded points between (and including) the two posterior means.")
@_data_options
@_out_option
def interpolate(run_dir: Path, device: str, pairs: tuple[tuple[int, int], ...], steps: int,
                data_root: Path | None, download: bool, out: Path | None) -> None:
    """Decode the straight line between two test images' posterior means: writes interpolate.png.

    Each row: image I, the decoded path, image J.
    """
    from vaekit import plots

    with _UserErrors():
        vae = _open_run(run_dir, device, conditional_ok=False)
        x_obs, _ = _test_set(vae, run_dir, data_root, download, None)
        for i, j in pairs:
            _check_index("--pair", i, x_obs.shape[0])
            _check_index("--pair", j, x_obs.shape[0])
        path = plots.save_interpolations(vae, [(x_obs[i], x_obs[j]) for i, j in pairs],
                                         _out_dir(run_dir, out) / "interpolate.png", steps=steps)
    click.echo(f"wrote {path}")


@cli.command()
@_run_command
@click.option("--dims", type=click.IntRange(min=1), default=10, show_default=True,
              help="How many latent dimensions, those with the largest KL first.")
@click.option("--index", type=click.IntRange(min=0), default=0, show_default=True,
              help="Test image whose posterior mean is the base point.")
@click.option("--prior-base", is_flag=True, default=False,
              help="Start from z = 0 (the prior mean) instead of a test image.")
@click.option("--steps", type=click.IntRange(min=2), default=11, show_default=True,
              help="Images per row.")
@click.option("--span", type=click.FloatRange(min=0, min_open=True), default=3.0,
              show_default=True, help="Sweep each dimension over [-span, span].")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Test images used to rank the dimensions by KL. [default: all]")
@_data_options
@_out_option
def traverse(run_dir: Path, device: str, dims: int, index: int, prior_base: bool, steps: int,
             span: float, limit: int | None, data_root: Path | None, download: bool,
             out: Path | None) -> None:
    """Sweep one latent dimension per row, ranked by mean KL on the test set: writes traverse.png.

    The other dimensions stay at the base point.
    """
    import torch

    from vaekit import plots

    with _UserErrors():
        vae = _open_run(run_dir, device, conditional_ok=False)
        x_obs, _ = _test_set(vae, run_dir, data_root, download, limit)
        _check_index("--index", index, x_obs.shape[0])
        kl = _kl_per_dim(vae, x_obs)
        order = torch.argsort(kl, descending=True)[: min(dims, vae.z_dim)].tolist()
        base = torch.zeros(vae.z_dim) if prior_base else vae.encode(x_obs[index : index + 1])[0][0]
        labels = [f"z{d}  KL {kl[d]:.2f}" for d in order]
        path = plots.save_traversals(vae, base, order, _out_dir(run_dir, out) / "traverse.png",
                                     steps=steps, span=span, labels=labels)
    click.echo(f"wrote {path} (rows: {', '.join(f'z{d}' for d in order)})")


def _kl_per_dim(vae: Any, x_obs: Any, batch_size: int = 1000) -> Any:
    """Mean over images of KL(q(z_d|x) || p(z_d)) per latent dimension, as a CPU tensor."""
    import torch
    from torch.distributions import Normal, kl_divergence

    total = torch.zeros(vae.z_dim)
    for i in range(0, x_obs.shape[0], batch_size):
        loc, scale = vae.encode(x_obs[i : i + batch_size])
        total += kl_divergence(Normal(loc, scale), Normal(0.0, 1.0)).sum(0).cpu()
    return total / x_obs.shape[0]


@cli.command("latent-map")
@_run_command
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Plot only the first N test images. [default: all]")
@click.option("--grid", type=click.IntRange(min=2), default=20, show_default=True,
              help="Images per side of the manifold picture (z_dim == 2 only).")
@_data_options
@_out_option
def latent_map(run_dir: Path, device: str, limit: int | None, grid: int, data_root: Path | None,
               download: bool, out: Path | None) -> None:
    """Test images' posterior means coloured by digit: writes latent_map.png.

    2-D latent spaces are drawn as they are, larger ones on their first two principal
    components. For z_dim == 2 it also writes manifold.png, the images decoded on a grid of
    Normal quantiles.
    """
    import torch

    from vaekit import plots

    with _UserErrors():
        vae = _open_run(run_dir, device, conditional_ok=False)
        x_obs, labels = _test_set(vae, run_dir, data_root, download, limit)
        folder = _out_dir(run_dir, out)
        z = torch.cat([vae.encode(x_obs[i : i + 1000])[0].cpu()
                       for i in range(0, x_obs.shape[0], 1000)])
        points, explained = plots.project_2d(z)
        if explained is None:
            axes = ("z0", "z1") if vae.z_dim == 2 else ("z0", "")
            title = f"posterior means of {len(z)} test images"
        else:
            axes = (f"PC1 ({explained[0]:.0%} of variance)", f"PC2 ({explained[1]:.0%})")
            title = f"posterior means of {len(z)} test images, PCA of z_dim={vae.z_dim}"
        written = [plots.save_latent_map(points, labels, folder / "latent_map.png", axes, title)]
        if vae.z_dim == 2:
            written.append(plots.save_manifold(vae, folder / "manifold.png", n=grid))
    for path in written:
        click.echo(f"wrote {path}")


def _without_option(argv: list[str], name: str) -> list[str]:
    """``argv`` without ``name VALUE`` / ``name=VALUE``."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == name:
            skip = True
        elif not a.startswith(name + "="):
            out.append(a)
    return out


def main() -> None:
    """Entry point for ``python -m vaekit``."""
    cli()

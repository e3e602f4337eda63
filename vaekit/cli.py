"""The ``vaekit`` command line: a thin layer that turns options into calls to the library.

    vaekit fit --likelihood bernoulli --epochs 10 --out runs/mnist
    vaekit fit --resume runs/mnist --epochs 20
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click

# Heavy imports (torch, pyro) happen inside the commands so that `vaekit --help` stays fast.

BUILTIN_LIKELIHOODS = ("bernoulli", "gaussian")


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


def _fail(message: str, code: int = 2) -> None:
    """Print a one-line error and exit (2: bad input, 1: training failed)."""
    click.echo(f"Error: {message}", err=True)
    sys.exit(code)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="vaekit", prog_name="vaekit")
def cli() -> None:
    """vaekit: variational autoencoders written as Pyro programs."""


# Options that --resume takes from the run's config.json instead.
_MODEL_OPTIONS = ("likelihood", "binarize", "scale", "learn_scale", "beta", "z_dim",
                  "batch_size", "lr", "seed", "limit_train", "limit_test", "out", "overwrite",
                  "checkpoint_every", "skip_nonfinite", "deterministic")


@cli.command()
@click.option("--likelihood", type=LikelihoodName(), default="bernoulli", show_default=True,
              help="p(x|z): " + ", ".join(BUILTIN_LIKELIHOODS) + " or one you registered.")
@click.option("--binarize/--no-binarize", default=None,
              help="Bernoulli only: binarize grayscale images each batch (default), or train on "
                   "grayscale targets like the seed notebook's BCE (not a proper likelihood).")
@click.option("--scale", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Gaussian only: observation standard deviation (initial value if learned). "
                   "[default: 0.1]")
@click.option("--learn-scale", is_flag=True, default=None,
              help="Gaussian only: learn one global observation scale.")
@click.option("--beta", type=click.FloatRange(min=0, min_open=True), default=1.0,
              show_default=True, help="Weight of the KL term (β-VAE); 1 is the ELBO.")
@click.option("--z-dim", type=click.IntRange(min=1), default=32, show_default=True,
              help="Latent dimension.")
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
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="Show a progress bar.")
@click.pass_context
def fit(ctx: click.Context, likelihood: str, binarize: bool | None, scale: float | None,
        learn_scale: bool | None, beta: float, z_dim: int, epochs: int, batch_size: int,
        lr: float, device: str, seed: int, data_root: Path | None, download: bool,
        limit_train: int | None, limit_test: int | None, out: Path | None, overwrite: bool,
        resume_dir: Path | None, checkpoint_every: int, skip_nonfinite: bool, deterministic: bool,
        progress: bool) -> None:
    """Fit a VAE to MNIST with SVI and write a run folder.

    The run folder holds config.json, checkpoint.pt, metrics.csv (one row per epoch),
    samples.png, reconstructions.png and loss.png.
    """
    import pyro

    from vaekit.data import load_mnist, resolve_data_root
    from vaekit.errors import Interrupted, TrainingError, VaekitError
    from vaekit.likelihoods import get_likelihood
    from vaekit.model import VAE
    from vaekit.runs import read_config
    from vaekit.train import fit as fit_vae
    from vaekit.train import resolve_device
    from vaekit.train import resume as resume_fit

    t0 = time.perf_counter()
    try:
        resolve_device(device)
        if resume_dir is not None:
            given = [f"--{n.replace('_', '-')}" for n in _MODEL_OPTIONS
                     if ctx.get_parameter_source(n) == click.core.ParameterSource.COMMANDLINE]
            if given:
                raise click.UsageError(
                    f"{', '.join(given)} cannot be combined with --resume: the run's settings "
                    "come from its config.json (only --epochs, --device and data options can)"
                )
            data = read_config(resume_dir).get("data", {})
            limit_train, limit_test = data.get("limit_train"), data.get("limit_test")
        else:
            kwargs = {k: v for k, v in {"binarize": binarize, "scale": scale,
                                         "learn_scale": learn_scale}.items() if v is not None}
            pyro.set_rng_seed(seed)  # the initial weights too
            vae = VAE(z_dim=z_dim, likelihood=get_likelihood(likelihood, **kwargs), beta=beta)
        root = resolve_data_root(data_root)
        train_x, _ = load_mnist(root, train=True, download=download, limit=limit_train)
        test_x, _ = load_mnist(root, train=False, download=download, limit=limit_test)
        if resume_dir is not None:
            click.echo(f"resuming {resume_dir}")
            given_epochs = ctx.get_parameter_source("epochs") == click.core.ParameterSource.COMMANDLINE
            result = resume_fit(resume_dir, train_x, test_x, epochs=epochs if given_epochs else None,
                                device=device, progress=progress)
        else:
            out = out or Path("runs") / time.strftime("%Y%m%d-%H%M%S")
            click.echo(f"run folder: {out}")
            info = {"dataset": "mnist", "root": str(root), "limit_train": limit_train,
                    "limit_test": limit_test, "n_train": len(train_x), "n_test": len(test_x)}
            result = fit_vae(vae, train_x, test_x, epochs=epochs, batch_size=batch_size, lr=lr,
                             device=device, seed=seed, run_dir=out, overwrite=overwrite,
                             checkpoint_every=checkpoint_every, skip_nonfinite=skip_nonfinite,
                             deterministic=deterministic, progress=progress, data_info=info)
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
    click.echo(
        f"done: {len(result.history)} epochs, test -ELBO {final['test_neg_elbo']:.2f} nats/image, "
        f"{time.perf_counter() - t0:.0f} s; run folder: {result.run_dir}"
    )


def main() -> None:
    """Entry point for ``python -m vaekit``."""
    cli()

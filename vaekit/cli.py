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
        import re

        from vaekit.likelihoods import LIKELIHOODS

        if re.fullmatch(r"[\w.]+:[A-Za-z_][\w.]*", str(value)):  # package.module:Class
            return str(value)
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


_MOST = 800
"""The longest error line printed (a value from a file can be any size)."""


def _fail(message: str, code: int = 2) -> None:
    """Print a one-line error (once, on rank 0) and exit (2: bad input, 1: training failed)."""
    message = " ".join(message.split("\n"))
    if len(message) > _MOST:
        message = message[:_MOST] + f"... ({len(message) - _MOST} more characters cut)"
    if _is_main_rank():
        click.echo(f"Error: {message}", err=True)
    sys.exit(code)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="vaekit", prog_name="vaekit")
def cli() -> None:
    """vaekit: variational autoencoders written as Pyro programs."""


def main() -> None:
    """The ``vaekit`` command: `cli`, with Ctrl-C at any moment (imports, data loading, a rank's
    start-up) one line and exit code 130, as an interrupted ``vaekit fit`` gives."""
    try:
        try:
            code = cli.main(standalone_mode=False)
        except (click.exceptions.Abort, KeyboardInterrupt):  # Abort: click's form of the latter
            _fail("interrupted", code=130)
    except SystemExit as e:
        if e.code == 130:  # os._exit: an interrupt caught inside an import (torch's, say) can
            sys.stdout.flush()  # be raised again as the interpreter shuts down, turning the
            sys.stderr.flush()  # code into a death by SIGINT; every file written is whole
            os._exit(130)
        raise
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    sys.exit(code if isinstance(code, int) else 0)


_TRUST_HELP = ("Import the modules that the run names (its own networks or likelihood). A run "
               "folder with plug-ins is code: without this, only modules already imported are "
               "used.")


# -- vaekit fit: its options are generated from the settings classes ------------------------------
_SECTION_TITLES = {"model": "Model", "data": "Data", "train": "Training", "run": "Run"}


def _setting_option(section: str, cls: type, f: Any) -> click.Option:
    """The click option of one settings field: flag, type, bounds, default and help from it."""
    from vaekit.settings import field_type

    m = f.metadata
    tp, _ = field_type(cls, f.name)
    flag = m.get("flag") or "--" + f.name.replace("_", "-")
    name = f"{section}__{f.name}"
    help_text = m["help"]
    if m.get("shown_default"):
        help_text += f" [default: {m['shown_default']}]"
    help_text += f" [config: {section}.{f.name}]"
    kw: dict[str, Any] = {"default": f.default, "help": help_text,
                          "show_default": f.default is not None and not m.get("shown_default")}
    if tp is tuple:  # given any number of times: --logger a --logger b
        return click.Option([flag, name], multiple=True, type=click.Choice(m["choices"]),
                            **{**kw, "show_default": False})
    if tp is bool:
        if m.get("negatable"):
            return click.Option([f"{flag}/--no-{flag[2:]}", name], **kw)
        return click.Option([flag, name], is_flag=True, **{**kw, "show_default": False})
    if f.name == "likelihood":
        kw["type"] = LikelihoodName()
    elif m.get("choices"):
        kw["type"] = click.Choice(m["choices"])
        if m.get("flag_value"):  # --amp alone means --amp on
            kw.update(is_flag=False, flag_value=m["flag_value"])
    elif tp is int:
        bounded = m.get("min") is not None or m.get("max") is not None
        kw["type"] = click.IntRange(min=m.get("min"), max=m.get("max")) if bounded else int
    elif tp is float:
        kw["type"] = click.FloatRange(min=m.get("min"), max=m.get("max"),
                                      min_open=m.get("min_open", False))
    else:
        kw["type"] = str
    return click.Option([flag, name], **kw)


class _SettingsCommand(click.Command):
    """``vaekit fit``: options grouped by settings class in ``--help``."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        from vaekit.settings import SECTIONS

        groups: dict[str, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            section = (param.name or "").partition("__")[0]
            title = (f"{_SECTION_TITLES[section]} options ({SECTIONS[section].__name__})"
                     if section in SECTIONS else "Other options")
            groups.setdefault(title, []).append(record)
        for title, records in groups.items():
            with formatter.section(title):
                formatter.write_dl(records)


def _resume_flags() -> str:
    """The flags of `vaekit.settings.RESUME_SETTINGS`, for the help."""
    from dataclasses import fields

    from vaekit.settings import RESUME_SETTINGS, SECTIONS

    flags = {(sec, f.name): f.metadata.get("flag") or "--" + f.name.replace("_", "-")
             for sec, cls in SECTIONS.items() for f in fields(cls)}
    return ", ".join(flags[key] for key in RESUME_SETTINGS)


def _settings_options(f: Any) -> Any:
    """Add one option per field of every settings class to the ``fit`` command."""
    from dataclasses import fields

    from vaekit.settings import SECTIONS

    for section, cls in reversed(SECTIONS.items()):
        for fld in reversed(fields(cls)):
            f.__click_params__ = [*getattr(f, "__click_params__", []),
                                  _setting_option(section, cls, fld)]
    return f


@cli.command(cls=_SettingsCommand)
@_settings_options
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Read the settings from this JSON or TOML file (a run's "
              "config.json, or one you wrote, with sections model, data, train, run); options "
              "given here override it.")
@click.option("--resume", "resume_dir", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="Continue this run folder from its last checkpoint (its "
              "settings come from its config.json; only " + _resume_flags() + " may be given).")
@click.option("--trust-plugins", is_flag=True, default=False, help=_TRUST_HELP.replace(
    "the run names", "the resumed run or the --config file names"))
@click.pass_context
def fit(ctx: click.Context, config_file: Path | None, resume_dir: Path | None,
        trust_plugins: bool, **values: Any) -> None:
    """Fit a VAE with SVI and write a run folder.

    The run folder holds config.json, checkpoint.pt, metrics.csv (one row per epoch),
    samples.png, reconstructions.png and loss.png. Every option is a setting of one section of
    config.json (shown as [config: section.name]); --config reads them from a file.
    """
    from vaekit.errors import ConfigError, Interrupted, TrainingError, VaekitError
    from vaekit.plugins import PLUGIN_FIELDS, is_plugin_name
    from vaekit.settings import RESUME_OVERRIDES, RESUME_SETTINGS, SECTIONS, from_mapping, read_settings

    t0 = time.perf_counter()
    given: dict[str, dict[str, Any]] = {k: {} for k in SECTIONS}
    for key, value in values.items():
        source = ctx.get_parameter_source(key)
        if source in (click.core.ParameterSource.COMMANDLINE, click.core.ParameterSource.ENVIRONMENT):
            section, _, name = key.partition("__")
            given[section][name] = value
    try:
        from_file = read_settings(config_file) if config_file is not None else {}
        from_file, run_note = _file_run_section(ctx, from_file, given, config_file)
    except click.UsageError as e:
        _fail(e.format_message())
    except VaekitError as e:
        _fail(_with_flags(ctx, str(e)))
    nproc = given["run"].get("nproc", from_file.get("run", {}).get("nproc", 1))
    try:
        if resume_dir is not None:
            bad = [_flag(ctx, sec, k) for sec, vals in given.items() for k in vals
                   if (sec, k) not in RESUME_SETTINGS] + (["--config"] if config_file else [])
            if bad:
                raise click.UsageError(
                    f"{', '.join(bad)} cannot be combined with --resume: the run's settings "
                    "come from its config.json (only "
                    f"{', '.join(_flag(ctx, sec, k) for sec, k in RESUME_SETTINGS)} can)")
        if nproc > 1 and "LOCAL_RANK" not in os.environ:  # launch the ranks with the same options
            from vaekit.distributed import relaunch

            sys.exit(relaunch(nproc, sys.argv[1:], out=None if resume_dir is not None or
                              "out" in given["run"] else from_file["run"]["out"]))
        if resume_dir is not None:
            from vaekit.train import resume_run

            if _is_main_rank():
                click.echo(f"resuming {resume_dir}")
            result = resume_run(resume_dir, root=given["data"].get("root"),
                                download=given["data"].get("download"),
                                progress=given["run"].get("progress", True),
                                mlflow_uri=given["run"].get("mlflow_uri"),
                                **{k: given["train"].get(k) for k in RESUME_OVERRIDES},
                                trust_plugins=trust_plugins)
        else:
            from vaekit.train import fit_settings

            specs = {sec: from_mapping(cls, {**from_file.get(sec, {}), **given[sec]},
                                       f"{config_file}: {sec}." if sec in from_file else "")
                     for sec, cls in SECTIONS.items()}
            if run_note and _is_main_rank():
                click.echo(run_note)
            # plug-ins named by a file are its code; those named here, the user's own request
            named_here = {k: given["model"][k] for k in PLUGIN_FIELDS
                          if is_plugin_name(given["model"].get(k))}
            named_by_file = any(is_plugin_name(from_file.get("model", {}).get(k))
                                and k not in given["model"] for k in PLUGIN_FIELDS)
            result = fit_settings(specs["model"], specs["data"], specs["train"], specs["run"],
                                  trust_plugins=trust_plugins or not named_by_file,
                                  trusted=named_here)
    except Interrupted as e:
        _fail(str(e), code=128 + e.signum)
    except TrainingError as e:
        _fail(str(e), code=1)
    except ConfigError as e:
        _fail(_with_flags(ctx, str(e)))
    except VaekitError as e:
        _fail(str(e))
    except RuntimeError as e:  # a collective failed: another rank went away
        from vaekit.distributed import LAUNCHED, lost_a_rank

        if os.environ.get("WORLD_SIZE", "1") == "1" or not lost_a_rank(e):
            raise
        if os.environ.get(LAUNCHED):  # the launcher names the rank that died
            sys.exit(1)
        _fail(f"lost contact with another rank ({' '.join(str(e).split())[:200]}); see its "
              "own message, then resume the run", code=1)
    except KeyboardInterrupt:  # during start-up, or a second Ctrl-C while checkpointing
        from vaekit.runs import is_run_dir

        target = resume_dir or given["run"].get("out") or from_file.get("run", {}).get("out")
        if target is not None and is_run_dir(target):
            _fail(f"interrupted; continue from the last complete checkpoint with: "
                  f"vaekit fit --resume {target}", code=130)
        _fail("interrupted before the run folder was written; nothing to resume", code=130)
    final = result.final
    if _is_main_rank():
        click.echo(
            f"done: {len(result.history)} epochs, test -ELBO {final['test_neg_elbo']:.2f} "
            f"nats/image, {time.perf_counter() - t0:.0f} s; run folder: {result.run_dir}"
        )


def _file_run_section(ctx: click.Context, from_file: dict[str, dict[str, Any]],
                      given: dict[str, dict[str, Any]], config_file: Path | None
                      ) -> tuple[dict[str, dict[str, Any]], str | None]:
    """The settings file's ``run`` section as the user's orders allow, and a note to print.

    Where a run goes, whether it overwrites and where its data is sent are the user's flags,
    never a file's: ``run.overwrite`` from a file is not read; ``run.out`` is a default name,
    used when that folder is free (else a fresh ``runs/<timestamp>``); ``run.mlflow_uri`` is
    refused unless ``--mlflow-uri`` gives the same. Without ``--out`` the folder is chosen
    here, once, so that every rank of ``--nproc`` uses the same one.
    """
    from vaekit.io import holds_nothing
    from vaekit.runs import default_run_dir

    def _free(path: Path) -> bool:
        try:
            return holds_nothing(path)
        except OSError:  # not readable: not free
            return False

    run = dict(from_file.get("run", {}))
    run.pop("overwrite", None)
    note = None
    uri = run.pop("mlflow_uri", None)
    loggers = given["run"].get("logger") or run.get("logger") or ()
    if uri is not None and "mlflow" in loggers and given["run"].get("mlflow_uri") != uri:
        raise click.UsageError(f"{config_file} names the MLflow server {uri}; a file does not "
                               "choose where a run's data is sent: give --mlflow-uri "
                               f"{uri} to send it there, or another --mlflow-uri")
    if "out" not in given["run"] and "LOCAL_RANK" not in os.environ:
        wanted = run.pop("out", None)
        if wanted is not None and _free(Path(wanted)):
            run["out"] = wanted
        else:
            run["out"] = str(default_run_dir())
            if wanted is not None:
                note = (f"{config_file} names the run folder {wanted}, which is in use: this "
                        "run gets a folder of its own")
    else:
        run.pop("out", None)
    return {**from_file, "run": run}, note


def _flag(ctx: click.Context, section: str, name: str) -> str:
    """The command-line flag of a setting."""
    for param in ctx.command.params:
        if param.name == f"{section}__{name}":
            return param.opts[0]
    return name


def _with_flags(ctx: click.Context, message: str) -> str:
    """A library message that names a setting as Python spells it (``batch_size``), with the
    flag that sets it added: ``batch_size (--batch-size)``."""
    import re

    from vaekit.settings import SECTIONS

    match = re.match(r"^(?:[^:]*: )?(?:(\w+)\.)?(\w+) ", message)
    if match:
        sections = [match.group(1)] if match.group(1) in SECTIONS else list(SECTIONS)
        for section in sections:
            flag = _flag(ctx, section, match.group(2))
            if flag.startswith("--"):
                start, end = match.span(2)
                return f"{message[:end]} ({flag}){message[end:]}"
    return message


# -- evaluate and look: commands on a finished run folder ---------------------------------------
def _remember_trust(ctx: click.Context, param: Any, value: bool) -> bool:
    ctx.meta["vaekit.trust_plugins"] = value
    return value


def _remember_checkpoint(ctx: click.Context, param: Any, value: str) -> str:
    ctx.meta["vaekit.checkpoint"] = value
    return value


def _run_command(f: Any) -> Any:
    """RUN_DIR, --device, --checkpoint and --trust-plugins, shared by the commands on a run."""
    f = click.option("--trust-plugins", is_flag=True, default=False, expose_value=False,
                     callback=_remember_trust, help=_TRUST_HELP)(f)
    f = click.option("--checkpoint", type=click.Choice(["auto", "best", "last"]), default="auto",
                     show_default=True, expose_value=False, callback=_remember_checkpoint,
                     help="Which weights: best (best.pt, the best validation epoch), last "
                          "(checkpoint.pt; its weight average with --ema); auto: best if the "
                          "run has it.")(f)
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


_SEED = click.IntRange(min=0, max=2**32 - 1)
"""A seed, within what every RNG vaekit seeds accepts (as `TrainSettings.seed`)."""
_MOST_IMAGES = 100_000
"""The most images one picture command draws (a bound against an out-of-memory request)."""


class _FiniteFloat(click.FloatRange):
    """A `click.FloatRange` that also refuses NaN and infinities."""

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        import math

        rv = super().convert(value, param, ctx)
        if not math.isfinite(rv):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return rv


_OUT_FIX = "check the path, its permissions and free space, or choose another --out"


class _UserErrors:
    """Context manager: vaekit errors and file-system errors become one line and exit code 2;
    Ctrl-C, one line and exit code 130 (as for ``vaekit fit``).

    Args:
        fix: What to suggest for a file-system error.
    """

    def __init__(self, fix: str = "check the path, its permissions and free space") -> None:
        self.fix = fix

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, e: Any, tb: Any) -> bool:
        from vaekit.errors import VaekitError

        if isinstance(e, VaekitError):
            _fail(str(e))
        if isinstance(e, OSError):
            _fail(f"cannot use {e.filename or 'a file'} ({e.strerror or e}); {self.fix}")
        if isinstance(e, KeyboardInterrupt):
            _fail("interrupted", code=130)
        return False


def _open_run(run_dir: Path, device: str) -> Any:
    """The run's VAE in eval mode (`vaekit.load`)."""
    from vaekit.runs import load

    meta = click.get_current_context().meta
    return load(run_dir, device=device, trust_plugins=meta.get("vaekit.trust_plugins", False),
                checkpoint=meta.get("vaekit.checkpoint", "auto"))


def _test_set(vae: Any, run_dir: Path, data_root: Path | None, download: bool,
              limit: int | None, observations: bool = True) -> tuple[Any, Any]:
    """The run's test observations (made as in training), or its test images, and labels:
    `vaekit.runs.load_test_set`."""
    from vaekit.runs import load_test_set

    return load_test_set(run_dir, vae, None if data_root is None else str(data_root), download,
                         limit, observations=observations)


def _label_option(text: str) -> Any:
    """``--label`` of a picture command: the class a conditional run decodes as."""
    return click.option("--label", type=click.IntRange(min=0), default=None,
                        help=f"Conditional runs: {text}")


def _check_label(vae: Any, label: int | None) -> int | None:
    """``label``, checked against the run: refused for an unconditional run or out of range."""
    from vaekit.errors import ConfigError

    if label is not None and not vae.num_classes:
        raise ConfigError("--label needs a conditional run (vaekit fit --conditional)")
    if label is not None and label >= vae.num_classes:
        raise ConfigError(f"--label must be below {vae.num_classes}, the number of classes")
    return label


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
@click.option("--num-samples", type=click.IntRange(min=1, max=10**7), default=1000, show_default=True,
              help="K, importance samples per image for the IWAE estimate of -log p(x).")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Evaluate only the first N test images. [default: all 10,000]")
@click.option("--batch-size", type=click.IntRange(min=1, max=10**6), default=100, show_default=True,
              help="Images encoded at once.")
@click.option("--chunk-size", type=click.IntRange(min=1, max=10**7), default=2048, show_default=True,
              help="Most latents decoded at once (bounds memory).")
@_data_options
@click.option("--seed", type=_SEED, default=0, show_default=True,
              help="Seeds the importance samples.")
@click.option("--progress/--no-progress", "progress", default=True, show_default=True,
              help="Show a progress bar over the test images.")
@click.option("--bound/--no-bound", "bound", default=True, show_default=True,
              help="Measure the -ELBO, its parts and the IWAE -log p(x).")
@click.option("--sample-quality", is_flag=True, default=False,
              help="Also score samples of the prior against the test images: FID, KID, precision "
                   "and recall in the reference digit classifier's features (not comparable with "
                   "Inception FIDs).")
@click.option("--quality-samples", type=click.IntRange(min=10, max=10**7), default=10_000,
              show_default=True, help="--sample-quality: samples drawn (and test images compared).")
@click.option("--disentanglement", "disentangle", is_flag=True, default=False,
              help="Also score the posterior means against the known factors of a sprites run: "
                   "the beta-VAE and FactorVAE scores, MIG, DCI and SAP.")
@click.option("--metric-points", type=click.IntRange(min=20, max=10**6), default=2000,
              show_default=True, help="--disentanglement: images drawn from the factor grid for "
                                      "MIG, DCI and SAP (a quarter as many votes for the scores).")
def evaluate(run_dir: Path, device: str, num_samples: int, limit: int | None, batch_size: int,
             chunk_size: int, data_root: Path | None, download: bool, seed: int,
             progress: bool, bound: bool, sample_quality: bool, quality_samples: int,
             disentangle: bool, metric_points: int) -> None:
    """Test numbers of a run: -ELBO, its parts, the IWAE -log p(x), active units, bits/dim; with
    --sample-quality, FID, KID, precision and recall of its samples; with --disentanglement, the
    five disentanglement metrics of a sprites run.

    Observations are made as in training (Bernoulli: the test set binarized with a fixed seed).
    Prints a table and writes eval.json into RUN_DIR (numbers it holds for the same weights and
    not measured again are kept).
    """
    import torch

    from vaekit.errors import ConfigError
    from vaekit.runs import evaluation_record, merged_evaluation, write_evaluation

    if not (bound or sample_quality or disentangle):
        raise click.UsageError("--no-bound leaves nothing to measure; add --sample-quality or "
                               "--disentanglement")
    t0 = time.perf_counter()
    with _UserErrors():
        vae = _open_run(run_dir, device).to(memory_format=torch.channels_last)  # faster convs
        record = {"run_dir": str(run_dir), "likelihood": vae.likelihood.name, "z_dim": vae.z_dim,
                  "limit": limit, "seed": seed, "device": str(vae.device)}
        images, labels = _test_set(vae, run_dir, data_root, download, limit, observations=False)
        features = vae.likelihood.kind == "features"  # a VAE-GAN: no -log p(x)
        if features and bound:
            click.echo("-log p(x) is not defined for a VAE-GAN (its p(x|z) is a density of "
                       "discriminator features): measuring the pixel reconstruction error and "
                       "the sample quality instead")
            sample_quality = True
        if sample_quality and len(images) < quality_samples:  # checked before any work
            raise ConfigError(f"--quality-samples {quality_samples} is more than the "
                              f"{len(images)} test images; pass at most {len(images)}")
        if bound and features:
            from vaekit.evaluation import pixel_error

            pe = pixel_error(vae, images, y=labels if vae.num_classes else None)
            record["pixel_error"] = pe.to_dict()
        elif bound:
            from vaekit.evaluation import evaluate as evaluate_vae
            from vaekit.likelihoods import test_observations

            x_obs = test_observations(vae.likelihood, images).to(vae.device)
            r = evaluate_vae(vae, x_obs, num_samples=num_samples, batch_size=batch_size,
                             chunk_size=chunk_size, seed=seed, progress=progress,
                             y=labels if vae.num_classes else None)
            record.update(r.to_dict())
        if sample_quality:
            from vaekit.quality import sample_quality as score_samples

            q = score_samples(vae, images[:quality_samples], n=quality_samples, seed=seed)
            record["sample_quality"] = q.to_dict()
        if disentangle:
            from vaekit.disentanglement import disentanglement, representation
            from vaekit.runs import load_ground_truth

            truth = load_ground_truth(run_dir, None if data_root is None else str(data_root))
            dis = disentanglement(truth, representation(vae), n_points=metric_points,
                                  n_votes=max(metric_points // 4, 10),
                                  generator=torch.Generator().manual_seed(seed))
            record["disentanglement"] = dis.to_dict()
            traversal = _factor_traversals(vae, truth, run_dir, seed)
        record["seconds"] = seconds = time.perf_counter() - t0
        which = click.get_current_context().meta.get("vaekit.checkpoint", "auto")
        measured = merged_evaluation(run_dir, evaluation_record(run_dir, record, checkpoint=which))

    click.echo(f"{run_dir} ({measured['checkpoint']}, epoch {measured['epoch']})")
    if bound and features:
        click.echo(f"  {pe.n_images} test images, reconstruction at the mean of q(z|x)")
        click.echo(f"  {'squared error per image':<34} {pe.squared:.3f} ± {pe.squared_se:.3f}")
        click.echo(f"  {'mean squared error per pixel':<34} {pe.per_pixel:.5f}")
    elif bound:
        _print_bound(vae, r)
        if r.neg_elbo_uniform_prior is not None and vae.prior.name != "uniform":
            click.echo(f"  {'-ELBO with the uniform prior':<34} {r.neg_elbo_uniform_prior:.2f}")
    if sample_quality:
        _print_sample_quality(q)
    if disentangle:
        click.echo(f"  disentanglement of the mean of q(z|x) against the {len(truth.sizes)} "
                   f"factors of {truth.name} ({dis.n_points} images; {dis.active_dims} "
                   "active dimensions)")
        for name, value in (("beta-VAE score", dis.beta_vae), ("FactorVAE score", dis.factor_vae),
                            ("MIG", dis.mig), ("DCI disentanglement", dis.dci_disentanglement),
                            ("DCI completeness", dis.dci_completeness),
                            ("DCI informativeness", dis.dci_informativeness), ("SAP", dis.sap),
                            ("modularity", dis.modularity)):
            click.echo(f"  {name:<34} {value:.4f}")
        click.echo(f"  wrote {traversal}: a row per active dimension, named by the factor it "
                   "shares the most information with")
    with _UserErrors("the numbers above are not saved: make the run folder writable and "
                     "evaluate again"):
        path, _ = write_evaluation(run_dir, measured, complete=True)
    click.echo(f"wrote {path} ({seconds:.1f} s)")


def _factor_traversals(vae: Any, truth: Any, run_dir: Path, seed: int) -> Path:
    """``RUN/traversals.png``: each dimension of q(z|x)'s mean with variance above 0.05 (all, if
    none), by variance, swept around the mean code of a random image, its row named by the
    factor it shares the most information with (`vaekit.disentanglement.factor_of_dims`)."""
    import torch

    from vaekit.disentanglement import factor_of_dims, representation
    from vaekit.plots import save_traversals
    from vaekit.sprites import FACTORS

    gen = torch.Generator().manual_seed(seed)
    factors = truth.sample_factors(2000, gen)
    codes = representation(vae)(truth.images_of(factors))
    named = factor_of_dims(codes.numpy(), factors.numpy(), FACTORS)
    var = codes.var(0)
    order = [int(d) for d in torch.argsort(var, descending=True) if var[d] > 0.05] or \
        list(range(codes.shape[1]))
    rows = [f"z{d} {named[d][0]} {named[d][1]:.2f}" for d in order[:10]]
    return save_traversals(vae, codes[0], order[:10], run_dir / "traversals.png", labels=rows)


def _print_sample_quality(q: Any) -> None:
    """The table of `vaekit.quality.SampleQuality`."""
    click.echo(f"  {q.n_fake} samples of the prior against {q.n_real} test images, in the reference "
               "digit classifier's features (± standard error)")
    rows = [("FID", f"{q.fid:.3f} ± {q.fid_se:.3f}"), ("KID", f"{q.kid:.4f} ± {q.kid_se:.4f}"),
            (f"precision (k={q.k})", f"{q.precision:.4f} ± {q.precision_se:.4f}"),
            (f"recall (k={q.k})", f"{q.recall:.4f} ± {q.recall_se:.4f}")]
    if q.label_accuracy is not None:
        rows.append(("asked label = classified label", f"{q.label_accuracy:.4f} ± "
                                                       f"{q.label_accuracy_se:.4f}"))
    for name, value in rows:
        click.echo(f"  {name:<34} {value}")


def _print_bound(vae: Any, r: Any) -> None:
    """The table of `vaekit.evaluation.Evaluation`."""
    kl = sorted(enumerate(r.kl_per_dim or []), key=lambda t: -t[1])
    top = (", ".join(f"z{d} {v:.2f}" for d, v in kl[:8]) + (" ..." if len(kl) > 8 else "")
           if kl else "n/a (two latent layers: z1's KL has no closed form)" if vae.latents == 2
           else f"n/a (no closed form for prior {vae.spec().prior}, "
                f"posterior {vae.spec().posterior})")
    bpd = (f"{r.bits_per_dim:.3f}" if r.bits_per_dim is not None else
           "n/a (binary likelihood)" if vae.likelihood.kind == "binary" else
           "n/a (the likelihood's targets transform the data)")
    rows = [
        ("-ELBO", f"{r.neg_elbo:.2f} ± {r.neg_elbo_se:.2f}"),
        ("  reconstruction -log p(x|z)", f"{r.recon:.2f}"),
        ("  KL(q(z|x) || p(z))" if r.codes_used is None else
         f"  KL = -log p(codes), {vae.spec().prior}", f"{r.kl:.2f}"),
        *[(f"    site {site}", f"{value:.2f}") for site, value in r.kl_sites.items()
          if len(r.kl_sites) > 1],
        (f"β-objective recon + {r.beta:g}·KL", f"{r.objective:.2f}"),
        (f"IWAE -log p(x), K={r.num_samples}", f"{r.neg_log_px:.2f} ± {r.neg_log_px_se:.2f}"),
        ("bits/dim", bpd),
        *([] if r.accuracy is not None else  # M2: z is drawn per class
          [(f"active units{' of z1' if vae.latents == 2 else ''} (Cov > "
            f"{r.active_threshold:g})", f"{r.active_units} of {vae.z_dim}"),
           ("KL per dimension, largest", top)] if r.codes_used is None else
          [("codes used" + (" (bottom)" if r.codes_used_top is not None else ""),
            f"{r.codes_used} of {vae.posterior.k}, perplexity {r.code_perplexity:.1f}"),
           *([("codes used (top)", f"{r.codes_used_top} of {vae.posterior.k}, perplexity "
                                   f"{r.code_perplexity_top:.1f}")]
             if r.codes_used_top is not None else [])]),
        *([("test accuracy of q(y|x)", f"{r.accuracy:.2f}%"),
           ("  clustering accuracy", f"{r.clustering_accuracy:.2f}% (best matching)")]
          if r.accuracy is not None else []),
    ]
    click.echo(f"  {r.n_images} test images, nats per image (± standard error)"
               + ("; y summed out of the bounds" if r.accuracy is not None else ""))
    for name, value in rows:
        click.echo(f"  {name:<34} {value}")


@cli.command()
@_run_command
@click.option("--n", "n", type=click.IntRange(min=1, max=_MOST_IMAGES), default=64, show_default=True,
              help="How many samples.")
@click.option("--nrow", type=click.IntRange(min=1, max=_MOST_IMAGES), default=8, show_default=True,
              help="Images per row.")
@click.option("--seed", type=_SEED, default=0, show_default=True, help="Seeds the draws of z.")
@_label_option("draw this class. [default: the classes in turn]")
@click.option("--temperature", type=click.FloatRange(min=0, min_open=True), default=1.0,
              show_default=True, help="A VQ-VAE with a learned prior (vaekit fit-prior): divide "
                                      "its logits by this (below 1: likelier, less varied codes).")
@_out_option
def sample(run_dir: Path, device: str, n: int, nrow: int, seed: int, label: int | None,
           temperature: float, out: Path | None) -> None:
    """Mean images of draws z ~ p(z): writes sample.png."""
    import torch

    from vaekit import plots

    with _UserErrors(_OUT_FIX):
        vae = _open_run(run_dir, device)
        k = vae.num_classes
        label = _check_label(vae, label)
        labels = (label if label is not None else torch.arange(n) % k) if k else None
        if temperature != 1.0:
            if not hasattr(vae.prior, "temperature"):
                raise click.UsageError("--temperature needs a VQ-VAE with a learned prior: run "
                                       f"vaekit fit-prior {run_dir} first")
            vae.prior.temperature = temperature
        path = plots.save_samples(vae, _out_dir(run_dir, out) / "sample.png", n=n, seed=seed,
                                  nrow=nrow, labels=labels)
    click.echo(f"wrote {path}")


@cli.command()
@_run_command
@click.option("--n", "n", type=click.IntRange(min=1, max=_MOST_IMAGES), default=32, show_default=True,
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

    with _UserErrors(_OUT_FIX):
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
@click.option("--steps", type=click.IntRange(min=2, max=1000), default=10, show_default=True,
              help="Decoded points between (and including) the two posterior means.")
@_label_option("decode every path as this class. [default: each row's image I's class]")
@_data_options
@_out_option
def interpolate(run_dir: Path, device: str, pairs: tuple[tuple[int, int], ...], steps: int,
                label: int | None, data_root: Path | None, download: bool,
                out: Path | None) -> None:
    """Decode the straight line between two test images' posterior means: writes interpolate.png.

    Each row: image I, the decoded path, image J. In a conditional run each image is encoded
    with its own label and the path is decoded as one class (--label, else image I's).
    """
    from vaekit import plots

    with _UserErrors(_OUT_FIX):
        vae = _open_run(run_dir, device)
        label = _check_label(vae, label)
        x_obs, y = _test_set(vae, run_dir, data_root, download, None)
        for i, j in pairs:
            _check_index("--pair", i, x_obs.shape[0])
            _check_index("--pair", j, x_obs.shape[0])
        path = plots.save_interpolations(
            vae, [(x_obs[i], x_obs[j]) for i, j in pairs],
            _out_dir(run_dir, out) / "interpolate.png", steps=steps,
            labels=[(int(y[i]), int(y[j])) for i, j in pairs] if vae.num_classes else None,
            path_label=label)
    click.echo(f"wrote {path}")


@cli.command()
@_run_command
@click.option("--dims", type=click.IntRange(min=1, max=1000), default=10, show_default=True,
              help="How many latent dimensions, those with the largest KL first.")
@click.option("--index", type=click.IntRange(min=0), default=0, show_default=True,
              help="Test image whose posterior mean is the base point.")
@click.option("--prior-base", is_flag=True, default=False,
              help="Start from z = 0 (the prior mean) instead of a test image.")
@click.option("--steps", type=click.IntRange(min=2, max=1000), default=11, show_default=True,
              help="Images per row.")
@click.option("--span", type=_FiniteFloat(min=0, max=1e6, min_open=True), default=3.0,
              show_default=True, help="Sweep each dimension over [-span, span].")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Test images used to rank the dimensions by KL. [default: all]")
@_label_option("decode every image as this class. [default: the base image's class; "
               "with --prior-base, 0]")
@_data_options
@_out_option
def traverse(run_dir: Path, device: str, dims: int, index: int, prior_base: bool, steps: int,
             span: float, limit: int | None, label: int | None, data_root: Path | None,
             download: bool, out: Path | None) -> None:
    """Sweep one latent dimension per row, ranked by mean KL on the test set: writes traverse.png.

    The other dimensions stay at the base point. In a conditional run the test images are
    encoded with their labels and every image is decoded as one class (--label).
    """
    from vaekit import plots
    from vaekit.evaluation import traversal_plan

    with _UserErrors(_OUT_FIX):
        vae = _open_run(run_dir, device)
        label = _check_label(vae, label)
        x_obs, y = _test_set(vae, run_dir, data_root, download, limit)
        _check_index("--index", index, x_obs.shape[0])
        plan = traversal_plan(vae, x_obs, y if vae.num_classes else None, dims, index,
                              prior_base, label)
        path = plots.save_traversals(vae, plan.base, plan.dims,
                                     _out_dir(run_dir, out) / "traverse.png", steps=steps,
                                     span=span, labels=plan.rows, label=plan.label)
    shown = "" if plan.label is None else f", class {plan.label}"
    click.echo(f"wrote {path} (rows: {', '.join(f'z{d}' for d in plan.dims)}{shown})")


@cli.command("latent-map")
@_run_command
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Plot only the first N test images. [default: all]")
@click.option("--grid", type=click.IntRange(min=2, max=1000), default=20, show_default=True,
              help="Images per side of the manifold picture (z_dim == 2 only).")
@_label_option("the class the manifold picture is decoded as. [default: 0]")
@_data_options
@_out_option
def latent_map(run_dir: Path, device: str, limit: int | None, grid: int, label: int | None,
               data_root: Path | None, download: bool, out: Path | None) -> None:
    """Test images' posterior means coloured by digit: writes latent_map.png.

    2-D latent spaces are drawn as they are, larger ones on their first two principal
    components. For z_dim == 2 it also writes manifold.png, the images decoded on a grid of
    Normal quantiles. A conditional run encodes each image with its label, so the map shows
    what z holds besides the class.
    """
    from vaekit import plots

    with _UserErrors(_OUT_FIX):
        vae = _open_run(run_dir, device)
        label = _check_label(vae, label)
        x_obs, labels = _test_set(vae, run_dir, data_root, download, limit)
        written = plots.draw_latent_map(vae, x_obs, labels, _out_dir(run_dir, out), grid, label)
    for path in written:
        click.echo(f"wrote {path}")


@cli.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("compare.png"),
              show_default=True, help="The picture of the curves overlaid.")
def compare(run_dirs: tuple[Path, ...], out: Path) -> None:
    """Compare run folders: a table of the settings that differ and the final and best metrics,
    and a picture of their -ELBO curves (from config.json and metrics.csv alone)."""
    from vaekit.comparison import compare_runs, save_curves

    with _UserErrors(_OUT_FIX):
        table = compare_runs(run_dirs)
        path = save_curves(run_dirs, out, names=table.names)
    rows = table.rows()
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        click.echo("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                             for i, (c, w) in enumerate(zip(r, widths))).rstrip())
    if not table.settings:
        click.echo("(the runs' settings are the same)")
    click.echo(f"wrote {path}")


def _prior_options(f: Any) -> Any:
    """One option per field of `vaekit.settings.PriorSettings`."""
    from dataclasses import fields

    from vaekit.settings import PriorSettings

    for fld in reversed(fields(PriorSettings)):
        f.__click_params__ = [*getattr(f, "__click_params__", []),
                              _setting_option("prior", PriorSettings, fld)]
    return f


@cli.command("fit-prior")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
              show_default=True, help="Where to run the model.")
@click.option("--data-root", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder with the run's data set. [default: $VAEKIT_DATA, else the run's]")
@_prior_options
def fit_prior(run_dir: Path, device: str, data_root: Path | None, **options: Any) -> None:
    """Fit a VQ-VAE run's learned prior: a PixelCNN over its code grids, by maximum likelihood on
    the training images' codes, the VQ-VAE frozen. Writes RUN_DIR/prior/ (checkpoint.pt and
    metrics.csv each epoch; the same command resumes it); then vaekit sample and evaluate use it.
    """
    from vaekit.prior_fit import fit_prior as run_fit_prior
    from vaekit.settings import PriorSettings

    with _UserErrors():
        settings = PriorSettings(**{k.partition("__")[2]: v for k, v in options.items()})
        result = run_fit_prior(run_dir, settings, data_root=None if data_root is None else
                               str(data_root), device=device)
    last = result.history[-1] if result.history else {}
    click.echo(f"done: prior of {run_dir}, test -log p(codes) "
               f"{last.get('test_nll', float('nan')):.2f}, test -ELBO "
               f"{last.get('test_neg_elbo', float('nan')):.2f} nats/image; {result.folder}")

"""vaekit: variational autoencoders written as Pyro programs.

    import vaekit
    vae = vaekit.VAE(z_dim=32, likelihood="bernoulli", beta=1.0)
    result = vaekit.fit(vae, train_x, test_x, vaekit.TrainSettings(epochs=10), device="auto")

The names below are imported when first used (PEP 562), so that ``vaekit --help`` and a Ctrl-C
during start-up do not wait for torch and Pyro.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_WHERE = {
    "VAE": "model", "Model": "model", "Guide": "model",
    "Encoder": "nets", "Decoder": "nets",
    "Likelihood": "likelihoods", "get_likelihood": "likelihoods",
    "register_likelihood": "likelihoods",
    "fit": "train", "resume": "train", "FitResult": "train",
    "TrainSettings": "settings", "ModelSpec": "settings", "DataSpec": "settings",
    "RunOptions": "settings",
    "load": "runs", "load_mnist": "data",
    "elbo_terms": "evaluation", "evaluate_elbo": "evaluation", "evaluate": "evaluation",
    "iwae_bound": "evaluation", "Evaluation": "evaluation",
    "VaekitError": "errors", "ConfigError": "errors", "DataError": "errors",
    "CheckpointError": "errors", "TrainingError": "errors",
}

__all__ = [
    "VAE", "Model", "Guide", "Encoder", "Decoder",
    "Likelihood", "likelihoods", "get_likelihood", "register_likelihood",
    "fit", "resume", "FitResult", "TrainSettings", "ModelSpec", "DataSpec", "RunOptions",
    "load", "load_mnist", "elbo_terms", "evaluate_elbo",
    "evaluate", "iwae_bound", "Evaluation",
    "VaekitError", "ConfigError", "DataError", "CheckpointError", "TrainingError",
    "runs", "__version__",
]

if TYPE_CHECKING:  # what the names are, for type checkers and editors
    from vaekit import likelihoods, runs
    from vaekit.data import load_mnist
    from vaekit.errors import CheckpointError, ConfigError, DataError, TrainingError, VaekitError
    from vaekit.evaluation import Evaluation, elbo_terms, evaluate, evaluate_elbo, iwae_bound
    from vaekit.likelihoods import Likelihood, get_likelihood, register_likelihood
    from vaekit.model import VAE, Guide, Model
    from vaekit.nets import Decoder, Encoder
    from vaekit.runs import load
    from vaekit.settings import DataSpec, ModelSpec, RunOptions, TrainSettings
    from vaekit.train import FitResult, fit, resume


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(f"vaekit.{_WHERE[name]}"), name)
    elif name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            value = version("vaekit")
        except PackageNotFoundError:
            value = "0.0.0"  # a source tree, as `vaekit.runs.package_version` says
    else:  # a submodule: vaekit.priors, vaekit.runs ... as after `import vaekit.priors`
        try:
            value = importlib.import_module(f"vaekit.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"vaekit.{name}":
                raise
            raise AttributeError(f"module 'vaekit' has no attribute {name!r}") from None
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)

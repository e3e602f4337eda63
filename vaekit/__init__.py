"""vaekit: variational autoencoders written as Pyro programs.

    import vaekit
    vae = vaekit.VAE(z_dim=32, likelihood="bernoulli", beta=1.0)
    result = vaekit.fit(vae, train_x, test_x, vaekit.TrainSettings(epochs=10), device="auto")
"""

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

__version__ = runs.package_version()

__all__ = [
    "VAE", "Model", "Guide", "Encoder", "Decoder",
    "Likelihood", "likelihoods", "get_likelihood", "register_likelihood",
    "fit", "resume", "FitResult", "TrainSettings", "ModelSpec", "DataSpec", "RunOptions",
    "load", "load_mnist", "elbo_terms", "evaluate_elbo",
    "evaluate", "iwae_bound", "Evaluation",
    "VaekitError", "ConfigError", "DataError", "CheckpointError", "TrainingError",
    "__version__",
]

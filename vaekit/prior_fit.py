"""The VQ-VAE's second stage: a PixelCNN prior fitted by maximum likelihood to the codes of the
training images, the VQ-VAE frozen (van den Oord et al. 2017, section 4).

    result = fit_prior("runs/vq", PriorSettings(epochs=20))   # writes runs/vq/prior/
    vae = vaekit.load("runs/vq")                               # now with the learned prior
    vae.prior.temperature = 0.8; vae.sample(16)

The codes are those of the images as the likelihood observes test images (Bernoulli: binarized
with the fixed test seed), computed once. Each epoch shuffles the grids with a generator seeded
by (seed, epoch), takes Adam steps on the mean -log p(c) and writes ``prior/checkpoint.pt``
(the PixelCNN, Adam's state, the epoch) and a row of ``prior/metrics.csv`` atomically, so a run
stopped at any point resumes from its last epoch to the same weights. The numbers are nats per
image: ``train_nll`` and ``test_nll`` (-log p(c) of the codes), and ``test_neg_elbo``, the test
-ELBO with the learned prior, -log p(x|c) - log p(c).
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vaekit import runs
from vaekit.data import load_splits
from vaekit.devices import resolve_device
from vaekit.errors import ConfigError
from vaekit.likelihoods import test_observations
from vaekit.model import VAE
from vaekit.pixelcnn import PixelCNNPrior
from vaekit.settings import PriorSettings

__all__ = ["fit_prior", "PriorFitResult", "grid_codes"]


@dataclass
class PriorFitResult:
    """What `fit_prior` returns: the prior (eval mode), one dict per epoch, and its folder."""

    prior: PixelCNNPrior
    history: list[dict[str, float]] = field(default_factory=list)
    folder: Path | None = None


@torch.no_grad()
def grid_codes(vae: VAE, x_obs: torch.Tensor, batch_size: int = 500
               ) -> tuple[torch.Tensor, ...]:
    """The code grids of observations ``x_obs`` under a VQ-VAE (eval mode), per level, bottom
    first: ``([N, h, w],)`` or ``([N, h, w], [N, h', w'])``."""
    out = [vae.codes(x_obs[i : i + batch_size]) for i in range(0, x_obs.shape[0], batch_size)]
    return tuple(torch.cat(level) for level in zip(*out))


@torch.no_grad()
def _recon(vae: VAE, x_obs: torch.Tensor, codes: tuple[torch.Tensor, ...],
           batch_size: int = 500) -> torch.Tensor:
    """-log p(x|c) per image at the images' own codes."""
    return torch.cat([-vae.code_likelihood([c[i : i + batch_size] for c in codes]).log_prob(
        x_obs[i : i + batch_size]) for i in range(0, x_obs.shape[0], batch_size)])


def _log_prob(prior: PixelCNNPrior, codes: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """log p(c) per image of every level: log p(c) or log p(c_top) + log p(c | c_top)."""
    if len(codes) == 1:
        return prior.log_prob_codes(codes[0])
    return prior.log_prob_top(codes[1]) + prior.log_prob_codes(codes[0], codes[1])


def _nll(prior: PixelCNNPrior, codes: tuple[torch.Tensor, ...], batch_size: int) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([-_log_prob(prior, tuple(c[i : i + batch_size] for c in codes))
                          for i in range(0, codes[0].shape[0], batch_size)])


def fit_prior(run_dir: str | os.PathLike[str], settings: PriorSettings | None = None, *,
              data_root: str | None = None, device: str = "cpu", verbose: bool = True,
              images: tuple[torch.Tensor, torch.Tensor] | None = None,
              **overrides: Any) -> PriorFitResult:
    """Fit (or resume fitting) the PixelCNN prior of the VQ-VAE run in ``run_dir``.

    A folder that already has ``prior/checkpoint.pt`` continues from it, with its recorded
    settings and the ``epochs`` asked for now.

    Args:
        run_dir: A VQ-VAE's run folder.
        settings: The `PriorSettings` (``overrides`` replace fields of it).
        data_root: Where the run's data set lives (default ``$VAEKIT_DATA``, else the run's).
        device: Where to fit.
        verbose: Print a line per epoch.
        images: ``(train, test)`` images to take instead of the run's data set (a run fitted
            from tensors in Python records no data set of its own).

    Raises:
        ConfigError: for a run that is not a VQ-VAE, or settings the recorded prior differs in.

    Stopped at any point (Ctrl-C), ``prior/`` holds the last finished epoch, whole.
    """
    s = dataclasses.replace(settings or PriorSettings(), **overrides)
    vae = runs.load(run_dir, device=device, prior="trained")
    if not vae.is_vq:
        raise ConfigError(f"{run_dir} is not a VQ-VAE (posterior vq:K): only a VQ-VAE has a "
                          "prior to fit after training")
    folder = Path(run_dir) / runs.PRIOR_FOLDER
    folder.mkdir(exist_ok=True)
    dev = resolve_device(device)
    start, history, state = 0, [], None
    if (folder / runs.CHECKPOINT).exists():
        state = runs.load_checkpoint(folder)
        recorded = PriorSettings(**{**state["settings"], "epochs": s.epochs})
        if recorded != s:
            changed = ", ".join(f"{k} {v}" for k, v in state["settings"].items()
                                if k != "epochs" and getattr(s, k) != v)
            raise ConfigError(f"{folder} holds a prior fitted with {changed}: resume with those "
                              "settings, or delete the folder to start again")
        start, history = state["epoch"], state["history"]
    torch.manual_seed(s.seed)
    prior = runs.bind_learned_prior(PixelCNNPrior(vae.z_dim, vae.posterior.k, s.hidden,
                                                  s.layers, vae.posterior.levels), vae)
    opt = torch.optim.Adam(prior.parameters(), lr=s.lr)
    if state is not None:
        prior.load_state_dict(state["prior"])
        opt.load_state_dict(state["optimizer"])
    config = runs.read_config(run_dir)
    if images is None:
        root = data_root or os.environ.get("VAEKIT_DATA")
        splits = load_splits(runs.run_data_spec(config, root=root, download=False))
        images = (splits.train[0], splits.test[0])
    train = grid_codes(vae, test_observations(vae.likelihood, images[0]).to(dev))
    test_x = test_observations(vae.likelihood, images[1]).to(dev)
    test = grid_codes(vae, test_x)
    recon = _recon(vae, test_x, test)
    for epoch in range(start, s.epochs):
        t0 = time.perf_counter()
        prior.train()
        n_train = train[0].shape[0]
        order = torch.randperm(n_train,
                               generator=torch.Generator().manual_seed(s.seed * 100003 + epoch))
        total = 0.0
        for i in range(0, n_train, s.batch_size):
            idx = order[i : i + s.batch_size].to(dev)
            batch = tuple(level[idx] for level in train)
            loss = -_log_prob(prior, batch).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * idx.shape[0]
        prior.eval()
        nll = _nll(prior, test, s.batch_size)
        row = {"epoch": epoch + 1, "train_nll": total / n_train,
               "test_nll": float(nll.mean()), "test_neg_elbo": float((recon + nll).mean()),
               "seconds": time.perf_counter() - t0}
        history.append(row)
        runs.save_checkpoint(folder, {"prior": prior.state_dict(),
                                      "optimizer": opt.state_dict(), "epoch": epoch + 1,
                                      "history": history,
                                      "settings": dataclasses.asdict(s)})
        runs.write_metrics(folder, history)
        if verbose:
            print(f"prior epoch {epoch + 1}/{s.epochs}  train -log p(c) "
                  f"{row['train_nll']:.2f}  test -log p(c) {row['test_nll']:.2f}  test -ELBO "
                  f"{row['test_neg_elbo']:.2f} nats/image  ({row['seconds']:.1f} s)",
                  flush=True)
    return PriorFitResult(prior.eval(), history, folder)

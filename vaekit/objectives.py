"""Training objectives: the β-ELBO (with β schedules), IWAE, the capacity objective, free bits.

    obj = make_objective(vae, "iwae", iwae_samples=5)
    loss = obj(x)                          # differentiable, summed over the batch
    schedule = BetaSchedule.parse("cyclical:2000")
    vae.beta = schedule(step)

Each objective is a `torch.nn.Module` over the VAE's own Pyro ``model`` and ``guide``: the β-ELBO
is ``Trace_ELBO()(model, guide)``; the others trace the same two programs and combine their
sites' log-densities. Whatever the objective, `vaekit.fit` reports the true test ELBO beside it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from pyro.infer import Trace_ELBO
from torch import nn

from vaekit.adversarial import VAEGAN, check_vae_gan, is_vae_gan
from vaekit.auxiliary import Objective
from vaekit.errors import ConfigError
from vaekit.factor_vae import FactorVAE
from vaekit.model import VAE
from vaekit.settings import parse_beta_schedule
from vaekit.traces import kl_per_dimension, site_log_probs
from vaekit.vqvae import VQTraining, is_vq

__all__ = ["OBJECTIVES", "BetaSchedule", "make_objective", "check_objective", "IWAE", "Capacity",
           "FreeBits", "BetaTC", "DIPVAE", "FactorVAE", "Objective", "VAEGAN", "VQTraining",
           "register_objective", "objective_names"]

OBJECTIVES = ("elbo", "iwae", "capacity", "free-bits", "beta-tc", "factor-vae", "dip-vae")
"""vaekit's own objectives; `register_objective` adds yours."""


_REGISTERED: dict[str, type] = {}


def register_objective(name: str) -> object:
    """Class decorator: make an objective of yours available as ``objective=name`` (and
    ``--objective name``), built as ``Class(vae)``. Import its module before fitting or resuming.

    Raises:
        ConfigError: for a name that vaekit's own objectives use.
    """
    if name in OBJECTIVES:
        raise ConfigError(f"the objective name {name!r} is vaekit's own; choose another")

    def add(cls: type) -> type:
        _REGISTERED[name] = cls
        return cls

    return add


def objective_names() -> tuple[str, ...]:
    """Every objective name that `make_objective` builds: vaekit's and the registered ones."""
    return (*OBJECTIVES, *_REGISTERED)


@dataclass(frozen=True)
class BetaSchedule:
    """β as a function of the training step.

    Attributes:
        kind: ``"constant"``, ``"linear"`` (warm-up from 0 to β over ``steps``) or ``"cyclical"``
            (Fu et al. 2019: each cycle of ``steps`` rises linearly from 0 to β over its first
            ``ratio`` and stays at β for the rest).
        beta: The final (or constant) β.
        steps: Warm-up length or cycle length, in steps.
        ratio: Rising part of each cycle.
    """

    kind: str = "constant"
    beta: float = 1.0
    steps: int = 0
    ratio: float = 0.5

    def __call__(self, step: int) -> float:
        """β at ``step`` (0-based)."""
        if self.kind == "constant" or self.steps <= 0:
            return self.beta
        if self.kind == "linear":
            return self.beta * min(1.0, step / self.steps)
        phase = (step % self.steps) / self.steps
        return self.beta * min(1.0, phase / self.ratio)

    @classmethod
    def parse(cls, spec: str, beta: float = 1.0) -> BetaSchedule:
        """From ``"constant"``, ``"linear:STEPS"`` or ``"cyclical:STEPS[:RATIO]"``."""
        kind, steps, ratio = parse_beta_schedule(spec)
        return cls(kind, beta, steps, ratio)


class IWAE(nn.Module):
    """The importance-weighted bound (Burda et al. 2015) with K samples, as a loss.

    Both programs run once under an outer ``pyro.plate("particles", K)``; per image,
    ``log w_k = log p(x, z_k) - log q(z_k|x)`` and the loss is ``-Σ_images logsumexp_k log w_k
    + N log K``. Pyro's ``RenyiELBO(alpha=0)`` computes the same bound but only through its own
    ``loss_and_grads`` (no differentiable loss for torch optimizers or DDP), so it is done here.
    K = 1 is the ELBO. β must be 1 (the bound has no KL weight).
    """

    def __init__(self, vae: VAE, num_samples: int = 5) -> None:
        super().__init__()
        if num_samples < 1:
            raise ConfigError(f"IWAE needs at least 1 sample, got {num_samples}")
        self.vae, self.k = vae, num_samples

    def log_weights(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """``log p(x, z_k) - log q(z_k|x)`` for each sample and image: ``[K, N]``, summed over
        every sample site of the two programs (any prior, posterior or number of latents)."""
        return site_log_probs(self.vae, x, y, self.k, closed_form=False).log_weights

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The negative IWAE bound, summed over the batch."""
        log_w = self.log_weights(x, y)
        return -(torch.logsumexp(log_w, dim=0) - math.log(self.k)).sum()


class Capacity(nn.Module):
    """Burgess et al. (2018): ``recon + γ |KL - C|`` with C rising linearly to ``c_max`` nats.

    KL is ``KL(q(z|x) || p(z))`` per image, summed over the latent sites, read off the traces
    (in closed form where that is exact, `vaekit.traces.closed_form_sites`).
    Call `set_step` before each step to move C.
    """

    def __init__(self, vae: VAE, gamma: float = 1000.0, c_max: float = 25.0,
                 steps: int = 10000) -> None:
        super().__init__()
        self.vae, self.gamma, self.c_max, self.steps = vae, gamma, c_max, steps
        self.c = 0.0

    def set_step(self, step: int) -> None:
        """Move C to its value at ``step``."""
        self.c = self.c_max * min(1.0, step / self.steps) if self.steps > 0 else self.c_max

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The capacity objective, summed over the batch."""
        t = site_log_probs(self.vae, x, y)
        recon = -t.log_lik[0]
        kl = t.kl_total[0]
        return (recon + self.gamma * (kl - self.c).abs()).sum()


class FreeBits(nn.Module):
    """Kingma et al. (2016): ``recon + Σ_d max(λ, KL_d)``, KL_d averaged over the batch.

    Dimensions whose KL is below λ nats get no gradient pushing it lower, which keeps latent
    units from collapsing early.
    """

    def __init__(self, vae: VAE, lam: float = 0.5) -> None:
        super().__init__()
        self.vae, self.lam = vae, lam

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The free-bits objective, summed over the batch."""
        t = site_log_probs(self.vae, x, y, closed_form=False)
        recon = -t.log_lik.sum()
        kl_d = sum(kl_per_dimension(q, p).mean((0, 1)) for q, p in t.dists.values())  # [z_dim]
        return recon + x.shape[0] * kl_d.clamp_min(self.lam).sum()


class BetaTC(nn.Module):
    """β-TCVAE (Chen et al. 2018): the ELBO's KL split into index-code mutual information, total
    correlation and dimension-wise KL, weighted ``α MI + β TC + γ dimKL``.

    Per image, with z ~ q(z|x) read off the traces,
    ``MI = log q(z|x) - log q(z)``, ``TC = log q(z) - Σ_d log q(z_d)``,
    ``dimKL = Σ_d log q(z_d) - log p(z)`` (their sum is the ELBO's ``log q(z|x) - log p(z)``),
    the aggregate posterior q(z) = (1/N) Σ_n q(z|x_n) and its marginals estimated on the batch
    of M images: ``log q(z_i) ≈ logsumexp_j (log w_ij + log q(z_i|x_j))``. ``"mss"`` is Chen et
    al.'s minibatch stratified sampling (their ``log_importance_weight_matrix``); ``"mws"``
    minibatch weighted sampling with weights ``1/N`` for the image's own term and
    ``(N - 1) / (N (M - 1))`` for the others, which sum to 1 (Chen et al.'s code weighs every
    term ``1 / (N M)``, which puts every log-density ``log N`` lower: the same gradients, a TC
    off by ``(D - 1) log N``). Needs the diagonal posterior and the Normal(0, I) prior.

    Args:
        vae: The model (β 1).
        dataset_size: N, the training images.
        alpha: Weight of the mutual information.
        beta: Weight of the total correlation.
        gamma: Weight of the dimension-wise KL.
        sampling: ``"mss"`` or ``"mws"``.
    """

    def __init__(self, vae: VAE, dataset_size: int, alpha: float = 1.0, beta: float = 6.0,
                 gamma: float = 1.0, sampling: str = "mss") -> None:
        super().__init__()
        if sampling not in ("mss", "mws"):
            raise ConfigError(f"tc_sampling must be mss or mws, got {sampling!r}")
        if dataset_size < 2:
            raise ConfigError("the beta-tc objective needs at least 2 training images")
        self.vae, self.n = vae, int(dataset_size)
        self.alpha, self.beta, self.gamma, self.sampling = alpha, beta, gamma, sampling

    def log_weights(self, m: int, device: torch.device) -> torch.Tensor:
        """``log w`` ``[M, M]``: row i weighs the batch's images for the estimate at z_i."""
        n = self.n
        if m < 2:
            raise ConfigError("the beta-tc objective estimates q(z) on the batch: use batches "
                              "of at least 2 images")
        if self.sampling == "mws":
            w = torch.full((m, m), (n - 1) / (n * (m - 1)), device=device)
            w.fill_diagonal_(1.0 / n)
        else:  # Chen et al.'s stratified weights
            k = m - 1
            w = torch.full((m, m), 1.0 / k, device=device)
            w.view(-1)[::k + 1] = 1.0 / n
            w.view(-1)[1::k + 1] = (n - k) / (n * k)
            w[k - 1, 0] = (n - k) / (n * k)
        return w.log()

    def decomposition(self, x: torch.Tensor, y: torch.Tensor | None = None
                      ) -> dict[str, torch.Tensor]:
        """``log_lik``, ``mi``, ``tc`` and ``dim_kl`` per image of the batch ``x``."""
        t = site_log_probs(self.vae, x, y, closed_form=False)
        q, _ = t.dists["z"]
        loc = q.base_dist.loc.reshape(-1, x.shape[0], self.vae.z_dim)[0]
        scale = q.base_dist.scale.expand(q.base_dist.loc.shape).reshape(-1,
                                                                          *loc.shape)[0]
        z = t.values["z"].reshape(-1, x.shape[0], self.vae.z_dim)[0]
        pair = torch.distributions.Normal(loc[None], scale[None]).log_prob(z[:, None])  # i, j, d
        log_w = self.log_weights(x.shape[0], x.device)
        log_qz = torch.logsumexp(log_w + pair.sum(-1), dim=1)
        log_qz_dims = torch.logsumexp(log_w[:, :, None] + pair, dim=1).sum(-1)
        log_q, log_p = t.log_q["z"][0], t.log_p["z"][0]
        return {"log_lik": t.log_lik[0], "mi": log_q - log_qz, "tc": log_qz - log_qz_dims,
                "dim_kl": log_qz_dims - log_p}

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """``-(log p(x|z) - α MI - β TC - γ dimKL)``, summed over the batch."""
        d = self.decomposition(x, y)
        return -(d["log_lik"] - self.alpha * d["mi"] - self.beta * d["tc"]
                 - self.gamma * d["dim_kl"]).sum()


class DIPVAE(nn.Module):
    """DIP-VAE (Kumar et al. 2018): the -ELBO plus a penalty that pushes the covariance of the
    aggregate posterior toward the identity, ``λ_od Σ_{i≠j} C_ij² + λ_d Σ_i (C_ii - 1)²``.

    On the batch of M images with q(z|x_m) = N(μ_m, diag σ_m²), type ``"i"`` penalises
    C = Cov_m[μ_m] and type ``"ii"`` C = Cov_m[μ_m] + diag(mean_m σ_m²), the covariance of
    q(z) itself (both with the 1/M of disentanglement_lib's ``compute_covariance_z_mean``).
    disentanglement_lib adds the penalty to the loss averaged over the batch; vaekit's losses
    are summed over it, so the penalty counts M times: the same gradients per image. μ and σ
    are read off the guide's trace; the -ELBO is the single-draw ``log p(x|z) - log q + log p``.
    Needs the diagonal posterior and the Normal(0, I) prior.

    Args:
        vae: The model (β 1).
        kind: ``"i"`` or ``"ii"``.
        lambda_od: λ_od, the weight of the off-diagonal terms.
        lambda_d: λ_d, the weight of the diagonal terms (Kumar et al.: 10 λ_od for type i,
            λ_od for type ii).
    """

    def __init__(self, vae: VAE, kind: str = "i", lambda_od: float = 10.0,
                 lambda_d: float = 100.0) -> None:
        super().__init__()
        if kind not in ("i", "ii"):
            raise ConfigError(f"dip_type must be i or ii, got {kind!r}")
        self.vae, self.kind = vae, kind
        self.lambda_od, self.lambda_d = float(lambda_od), float(lambda_d)

    def covariance(self, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """C ``[D, D]`` of the batch's posterior means ``loc`` and scales ``scale`` ``[M, D]``."""
        centred = loc - loc.mean(0)
        cov = centred.t() @ centred / loc.shape[0]
        return cov if self.kind == "i" else cov + torch.diag(scale.pow(2).mean(0))

    def penalty(self, cov: torch.Tensor) -> torch.Tensor:
        """``λ_od Σ_{i≠j} C_ij² + λ_d Σ_i (C_ii - 1)²``."""
        diag = torch.diagonal(cov)
        off = cov - torch.diag(diag)
        return self.lambda_od * off.pow(2).sum() + self.lambda_d * (diag - 1).pow(2).sum()

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """``Σ_m -ELBO_m + M × penalty``."""
        t = site_log_probs(self.vae, x, y, closed_form=False)
        q, _ = t.dists["z"]
        m = x.shape[0]
        loc = q.base_dist.loc.reshape(-1, m, self.vae.z_dim)[0]
        scale = q.base_dist.scale.expand(q.base_dist.loc.shape).reshape(-1, m,
                                                                          self.vae.z_dim)[0]
        neg_elbo = (-t.log_lik[0] + t.kl_total[0]).sum()
        return neg_elbo + m * self.penalty(self.covariance(loc, scale))


def check_objective(vae: VAE, name: str) -> None:
    """Refuse an objective that cannot work with the VAE's prior, posterior and layers.

    The capacity and free-bits objectives use the KL in closed form (per image; per dimension for
    free bits), which is exactly the ELBO's KL term for the diagonal posterior with the
    Normal(0, I) prior and one latent layer only: with two layers, p(z1|z2) depends on z2,
    which the guide draws after z1, so z1's KL has no closed form.

    Raises:
        ConfigError: naming the reason.
    """
    if name not in objective_names():
        raise ConfigError(f"unknown objective {name!r}; choose one of: "
                          f"{', '.join(objective_names())} (your own: register_objective, and "
                          "import its module first)")
    if is_vae_gan(vae) and name != "elbo":
        raise ConfigError(f"the {name} objective cannot train the discriminator of the "
                          "VAE-GAN (--likelihood discriminator): leave --objective at elbo, "
                          "which trains it with its adversarial terms")
    if is_vae_gan(vae):
        check_vae_gan(vae)
    if getattr(vae, "semi_supervised", False) and name != "elbo":
        raise ConfigError(f"the {name} objective does not sum out the semi-supervised VAE's "
                          "labels: leave --objective at elbo, which trains M2 with y "
                          "enumerated")
    if is_vq(vae) and name != "elbo":
        raise ConfigError(f"the {name} objective does not train a VQ-VAE's codes (its encoder "
                          "learns through the straight-through gradient and the commitment "
                          "loss): leave --objective at elbo")
    if name not in ("capacity", "free-bits", "beta-tc", "dip-vae"):
        return
    use = "use objective elbo or iwae"
    if vae.latents != 1 or vae.num_classes:
        raise ConfigError(f"the {name} objective needs one latent layer z of an unconditional "
                          f"VAE, which a second latent layer or a label is not (p(z1|z2) depends "
                          f"on z2, drawn after z1): {use}, or --latents 1 without --conditional")
    spec = vae.spec()
    if (type(vae.model.prior).__name__ != "StandardNormal"
            or type(vae.guide.posterior).__name__ != "Diagonal"):
        why = {"beta-tc": "a factorised q(z|x) and p(z) to split the KL by dimension",
               "dip-vae": "a diagonal q(z|x) and the Normal(0, I) prior, whose identity "
                          "covariance it matches q(z)'s to"}.get(
            name, "the closed-form KL of the standard prior with the diagonal posterior")
        raise ConfigError(f"the {name} objective needs {why}; this model has prior "
                          f"{spec.prior} and posterior {spec.posterior}: {use}")


def make_objective(vae: VAE, name: str = "elbo", *, iwae_samples: int = 5, gamma: float = 1000.0,
                   capacity: float = 25.0, capacity_steps: int = 10000,
                   free_bits: float = 0.5, gan_gamma: float = 1.0,
                   disc_lr: float = 2e-4, commitment: float = 0.25,
                   dataset_size: int | None = None, tc_alpha: float = 1.0, tc_beta: float = 6.0,
                   tc_gamma: float = 1.0, tc_sampling: str = "mss",
                   factor_gamma: float = 35.0, dip_type: str = "i", dip_lambda_od: float = 10.0,
                   dip_lambda_d: float = 100.0) -> nn.Module:
    """The loss module for an objective name (see `OBJECTIVES`).

    Args:
        vae: The model.
        name: ``"elbo"`` (β-weighted ``Trace_ELBO``; for the VAE-GAN's likelihood,
            `vaekit.adversarial.VAEGAN`; for a VQ-VAE, `vaekit.vqvae.VQTraining`), ``"iwae"``,
            ``"capacity"`` or ``"free-bits"``.
        iwae_samples: K for ``"iwae"``.
        gamma: γ for ``"capacity"``.
        capacity: The final C (nats per image) for ``"capacity"``.
        capacity_steps: Steps over which C rises from 0.
        free_bits: λ (nats per latent dimension) for ``"free-bits"``.
        gan_gamma: Larsen's γ for the VAE-GAN.
        disc_lr: The VAE-GAN discriminator's learning rate.
        commitment: The VQ-VAE's commitment weight.
        dataset_size: N, the training images (``"beta-tc"``).
        tc_alpha: α of ``"beta-tc"``.
        tc_beta: β of ``"beta-tc"``.
        tc_gamma: γ of ``"beta-tc"``.
        tc_sampling: ``"mss"`` or ``"mws"`` for ``"beta-tc"``.
        factor_gamma: γ of ``"factor-vae"`` (`vaekit.factor_vae.FactorVAE`, whose
            discriminator learns at ``disc_lr``).
        dip_type: ``"i"`` or ``"ii"`` for ``"dip-vae"`` (`DIPVAE`).
        dip_lambda_od: λ_od of ``"dip-vae"``.
        dip_lambda_d: λ_d of ``"dip-vae"``.

    Raises:
        ConfigError: for an unknown name or settings that do not fit it.
    """
    if name == "elbo" and is_vae_gan(vae):
        return VAEGAN(vae, gan_gamma, disc_lr)
    if name == "elbo" and is_vq(vae):
        return VQTraining(vae, commitment)
    if is_vq(vae):
        check_objective(vae, name)
    if name == "elbo":
        return Trace_ELBO(max_plate_nesting=1)(vae.model, vae.guide)
    if name in _REGISTERED:
        return _REGISTERED[name](vae)
    if name not in OBJECTIVES:
        raise ConfigError(f"unknown objective {name!r}; choose one of: "
                          f"{', '.join(objective_names())} (your own: register_objective, and "
                          "import its module first)")
    if vae.beta != 1.0:
        raise ConfigError(f"the {name} objective has no β; leave beta at 1 (got {vae.beta:g})")
    check_objective(vae, name)
    if name == "iwae":
        return IWAE(vae, iwae_samples)
    if name == "capacity":
        return Capacity(vae, gamma, capacity, capacity_steps)
    if name == "factor-vae":
        return FactorVAE(vae, factor_gamma, disc_lr)
    if name == "dip-vae":
        return DIPVAE(vae, dip_type, dip_lambda_od, dip_lambda_d)
    if name == "beta-tc":
        if dataset_size is None:
            raise ConfigError("the beta-tc objective needs the number of training images "
                              "(dataset_size)")
        return BetaTC(vae, dataset_size, tc_alpha, tc_beta, tc_gamma, tc_sampling)
    return FreeBits(vae, free_bits)

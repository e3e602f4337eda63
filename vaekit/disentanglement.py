"""Disentanglement metrics of a representation against known factors of variation.

    truth = sprites("sprites:small")
    rep = representation(vae)                            # images -> mean of q(z|x)
    scores = disentanglement(truth, rep, generator=torch.Generator().manual_seed(0))
    mig(codes, factors)                                  # or any metric on codes you have

Each metric follows its paper's definition and, where the paper leaves a choice open,
google-research/disentanglement_lib's (the reference implementation of Locatello et al. 2019):

- β-VAE score (Higgins et al. 2017): the accuracy of a logistic regression that tells from the
  mean absolute difference of the codes of ``batch`` pairs of images which factor the pairs share.
- FactorVAE score (Kim & Mnih 2018): codes divided by their global standard deviation; for
  ``batch`` images sharing one factor, the dimension of least variance votes for that factor; the
  accuracy of the majority-vote classifier. Dimensions of global variance below 0.05 are dropped
  (disentanglement_lib's ``prune_dims``).
- MIG (Chen et al. 2018): per factor, the gap between the two largest mutual informations of a
  code dimension with it, divided by the factor's entropy; the codes discretized into 20
  equal-width bins per dimension, as disentanglement_lib does.
- DCI (Eastwood & Williams 2018): the importances of gradient-boosted trees
  (``sklearn.ensemble.GradientBoostingClassifier`` with its defaults, as disentanglement_lib)
  predicting each factor from the codes; disentanglement and completeness are one minus the
  entropies of the importances per code and per factor, weighted; informativeness is the trees'
  test accuracy.
- SAP (Kumar et al. 2018): per factor, the gap between the two best test accuracies of a linear
  SVM (``LinearSVC(C=0.01, class_weight="balanced")``) on one code dimension.

Scores of codes that carry nothing (constant) are 0, never NaN. The sample counts default to
fewer than disentanglement_lib's (it uses 10,000 training points): see each function.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch

from vaekit.devices import eval_mode
from vaekit.errors import ConfigError
from vaekit.likelihoods import test_observations
from vaekit.model import VAE
from vaekit.sprites import GroundTruth

__all__ = ["representation", "beta_vae_score", "factor_vae_score", "mig", "dci", "sap", "modularity",
           "disentanglement", "Disentanglement", "mutual_information", "factor_of_dims"]

Representation = Callable[[torch.Tensor], torch.Tensor]


def _sklearn() -> object:
    try:
        import sklearn  # noqa: F401
        from sklearn import ensemble, linear_model, metrics, svm
    except ImportError:
        raise ConfigError('the disentanglement metrics need scikit-learn: pip install '
                          '"vaekit[metrics]"') from None
    return ensemble, linear_model, metrics, svm


def representation(vae: VAE, batch_size: int = 500) -> Representation:
    """The mean of q(z|x) of images (uint8 or in [0, 1]), observed as the likelihood observes
    test images, as ``[N, z_dim]`` on the CPU, in eval mode."""
    @torch.no_grad()
    def rep(images: torch.Tensor) -> torch.Tensor:
        out = []
        with eval_mode(vae):
            for i in range(0, len(images), batch_size):
                x = test_observations(vae.likelihood, images[i:i + batch_size]).to(vae.device)
                out.append(vae.encode(x)[0].flatten(1).float().cpu())
        return torch.cat(out)

    return rep


def _codes(truth: GroundTruth, rep: Representation, factors: torch.Tensor) -> np.ndarray:
    return rep(truth.images_of(factors)).numpy().astype(np.float64)


def beta_vae_score(truth: GroundTruth, rep: Representation, n_train: int = 1000,
                   n_eval: int = 500, batch: int = 64,
                   generator: torch.Generator | None = None) -> dict[str, float]:
    """The β-VAE score: train and eval accuracy (in [0, 1]) of the logistic regression on
    ``n_train`` / ``n_eval`` points, each from ``batch`` pairs (disentanglement_lib: 10,000 /
    5,000 points of 64 pairs)."""
    _, linear_model, _, _ = _sklearn()

    def points(n: int) -> tuple[np.ndarray, np.ndarray]:
        feats, labels = [], []
        for _ in range(n):
            k = int(torch.randint(len(truth.sizes), (1,), generator=generator))
            a, b = truth.sample_factors(batch, generator), truth.sample_factors(batch, generator)
            b[:, k] = a[:, k]
            feats.append(np.abs(_codes(truth, rep, a) - _codes(truth, rep, b)).mean(0))
            labels.append(k)
        return np.stack(feats), np.array(labels)

    x_train, y_train = points(n_train)
    x_eval, y_eval = points(n_eval)
    if len(set(y_train.tolist())) < 2:
        return {"train_accuracy": 0.0, "eval_accuracy": 0.0}
    model = linear_model.LogisticRegression(max_iter=1000).fit(x_train, y_train)
    return {"train_accuracy": float(model.score(x_train, y_train)),
            "eval_accuracy": float(model.score(x_eval, y_eval))}


def factor_vae_score(truth: GroundTruth, rep: Representation, n_variance: int = 5000,
                     n_train: int = 1000, n_eval: int = 500, batch: int = 64,
                     generator: torch.Generator | None = None) -> dict[str, float]:
    """The FactorVAE score: train and eval accuracy of the majority-vote classifier on
    ``n_train`` / ``n_eval`` votes of ``batch`` images each, the global variances from
    ``n_variance`` images (disentanglement_lib: 10,000 / 5,000 votes, 10,000 images); 0 when no
    dimension varies. Also ``active``, the dimensions kept."""
    codes = _codes(truth, rep, truth.sample_factors(n_variance, generator))
    variance = codes.var(0, ddof=1)
    active = variance > 0.05
    if not active.any():
        return {"train_accuracy": 0.0, "eval_accuracy": 0.0, "active": 0}
    scale = np.sqrt(variance)

    def votes(n: int) -> np.ndarray:
        counts = np.zeros((codes.shape[1], len(truth.sizes)), dtype=np.int64)
        for _ in range(n):
            k = int(torch.randint(len(truth.sizes), (1,), generator=generator))
            f = truth.sample_factors(batch, generator)
            f[:, k] = f[0, k]
            local = (_codes(truth, rep, f) / scale).var(0, ddof=1)
            d = int(np.flatnonzero(active)[np.argmin(local[active])])
            counts[d, k] += 1
        return counts

    train, evaluation = votes(n_train), votes(n_eval)
    classifier = train.argmax(1)
    return {"train_accuracy": float(train.max(1).sum() / max(train.sum(), 1)),
            "eval_accuracy": float(evaluation[np.arange(len(classifier)), classifier].sum()
                                   / max(evaluation.sum(), 1)),
            "active": int(active.sum())}


def _discretize(codes: np.ndarray, bins: int) -> np.ndarray:
    """Each dimension into ``bins`` equal-width bins of its range (disentanglement_lib's
    ``_histogram_discretize``)."""
    out = np.zeros(codes.shape, dtype=np.int64)
    for d in range(codes.shape[1]):
        edges = np.histogram(codes[:, d], bins)[1]
        out[:, d] = np.digitize(codes[:, d], edges[:-1])
    return out


def mutual_information(codes: np.ndarray, factors: np.ndarray, bins: int = 20
                       ) -> np.ndarray:
    """``I(code_d; factor_k) / H(factor_k)`` ``[D, F]`` of codes discretized as for MIG (0 for
    a factor that does not vary)."""
    _, _, metrics, _ = _sklearn()
    discrete = _discretize(np.asarray(codes, dtype=np.float64), bins)
    factors = np.asarray(factors)
    out = np.zeros((discrete.shape[1], factors.shape[1]))
    for k in range(factors.shape[1]):
        entropy = metrics.mutual_info_score(factors[:, k], factors[:, k])
        if entropy > 0:
            out[:, k] = [metrics.mutual_info_score(discrete[:, d], factors[:, k]) / entropy
                         for d in range(discrete.shape[1])]
    return out


def factor_of_dims(codes: np.ndarray, factors: np.ndarray, names: tuple[str, ...],
                   bins: int = 20) -> list[tuple[str, float]]:
    """For each code dimension, the factor it shares the most normalised mutual information
    with and that information: ``[(name, I / H), ...]`` (``("-", 0.0)`` for none)."""
    m = mutual_information(codes, factors, bins)
    return [(names[int(row.argmax())], float(row.max())) if row.max() > 0 else ("-", 0.0)
            for row in m]


def mig(codes: np.ndarray, factors: np.ndarray, bins: int = 20) -> float:
    """The mutual information gap of codes ``[N, D]`` against factor indices ``[N, F]``, averaged
    over the factors that vary (in [0, 1])."""
    _, _, metrics, _ = _sklearn()
    codes, factors = np.asarray(codes, dtype=np.float64), np.asarray(factors)
    discrete = _discretize(codes, bins)
    gaps = []
    for k in range(factors.shape[1]):
        entropy = metrics.mutual_info_score(factors[:, k], factors[:, k])
        if entropy <= 0:
            continue
        m = sorted((metrics.mutual_info_score(discrete[:, d], factors[:, k])
                    for d in range(codes.shape[1])), reverse=True) + [0.0]
        gaps.append((m[0] - m[1]) / entropy)
    return float(np.mean(gaps)) if gaps else 0.0


def modularity(codes: np.ndarray, factors: np.ndarray, bins: int = 20) -> float:
    """Ridgeway & Mozer's (2018) modularity of codes ``[N, D]`` against factor indices
    ``[N, F]``, as disentanglement_lib computes it: with m_dk the mutual information (nats) of
    code dimension d, discretized as for MIG, with factor k, and θ_d = max_k m_dk, dimension d
    scores ``1 - Σ_{k ≠ argmax} m_dk² / (θ_d² (F - 1))`` (1: it carries one factor only); a
    dimension that carries nothing scores 0; the mean over dimensions (in [0, 1])."""
    _, _, metrics, _ = _sklearn()
    discrete = _discretize(np.asarray(codes, dtype=np.float64), bins)
    factors = np.asarray(factors)
    if factors.shape[1] < 2:
        return 0.0
    m = np.array([[metrics.mutual_info_score(discrete[:, d], factors[:, k])
                   for k in range(factors.shape[1])] for d in range(discrete.shape[1])])
    sq = np.square(m)
    top = sq.max(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        score = 1.0 - (sq.sum(1) - top) / (top * (factors.shape[1] - 1))
    score[top <= 0] = 0.0
    return float(np.mean(score))


def _entropy_complement(p: np.ndarray, base: int) -> float:
    """``1 - H(p) / log(base)`` of weights ``p`` (normalised here); 0 for all-zero weights."""
    total = p.sum()
    if total <= 0 or base < 2:
        return 0.0
    q = p / total
    q = q[q > 0]
    return float(1 + (q * np.log(q)).sum() / math.log(base))


def dci(codes_train: np.ndarray, factors_train: np.ndarray, codes_test: np.ndarray,
        factors_test: np.ndarray) -> dict[str, float]:
    """DCI disentanglement, completeness and informativeness (test accuracy) of codes, from
    gradient-boosted trees per factor (disentanglement_lib: 10,000 training and 5,000 test
    points). Also ``informativeness_train``."""
    ensemble, _, _, _ = _sklearn()
    d, f = codes_train.shape[1], factors_train.shape[1]
    importance = np.zeros((d, f))
    train_acc, test_acc = [], []
    for k in range(f):
        if len(np.unique(factors_train[:, k])) < 2:
            continue
        model = ensemble.GradientBoostingClassifier(random_state=0)
        model.fit(codes_train, factors_train[:, k])
        importance[:, k] = np.abs(model.feature_importances_)
        train_acc.append(model.score(codes_train, factors_train[:, k]))
        test_acc.append(model.score(codes_test, factors_test[:, k]))
    total = importance.sum()
    if total <= 0:
        disent = complete = 0.0
    else:
        disent = sum(_entropy_complement(importance[i], f) * importance[i].sum() / total
                     for i in range(d))
        complete = sum(_entropy_complement(importance[:, k], d) * importance[:, k].sum() / total
                       for k in range(f))
    return {"disentanglement": float(disent), "completeness": float(complete),
            "informativeness": float(np.mean(test_acc)) if test_acc else 0.0,
            "informativeness_train": float(np.mean(train_acc)) if train_acc else 0.0}


def sap(codes_train: np.ndarray, factors_train: np.ndarray, codes_test: np.ndarray,
        factors_test: np.ndarray) -> float:
    """The SAP score: per factor, the gap between the two best test accuracies of a linear SVM
    on one code dimension, averaged over the factors that vary."""
    _, _, _, svm = _sklearn()
    d = codes_train.shape[1]
    gaps = []
    for k in range(factors_train.shape[1]):
        if len(np.unique(factors_train[:, k])) < 2:
            continue
        scores = []
        for i in range(d):
            x_tr, x_te = codes_train[:, i:i + 1], codes_test[:, i:i + 1]
            if np.ptp(x_tr) == 0:  # a constant dimension predicts nothing
                scores.append(0.0)
                continue
            model = svm.LinearSVC(C=0.01, class_weight="balanced").fit(x_tr, factors_train[:, k])
            scores.append(float(model.score(x_te, factors_test[:, k])))
        top = sorted(scores, reverse=True) + [0.0]
        gaps.append(top[0] - top[1])
    return float(np.mean(gaps)) if gaps else 0.0


@dataclass
class Disentanglement:
    """The five metrics of one representation, and the modularity score (what ``vaekit
    evaluate --disentanglement`` saves), each in [0, 1]."""

    beta_vae: float
    factor_vae: float
    mig: float
    dci_disentanglement: float
    dci_completeness: float
    dci_informativeness: float
    sap: float
    modularity: float
    active_dims: int
    n_points: int

    def to_dict(self) -> dict[str, float]:
        """The fields as a JSON-ready dict."""
        return asdict(self)


def disentanglement(truth: GroundTruth, rep: Representation, n_points: int = 2000,
                    n_votes: int = 500, generator: torch.Generator | None = None
                    ) -> Disentanglement:
    """All five metrics and the modularity: MIG, DCI, SAP and modularity on ``n_points``
    training and ``n_points // 2`` test images drawn uniformly from the grid; the β-VAE and
    FactorVAE scores on ``n_votes`` training and ``n_votes // 2`` evaluation points (their eval
    accuracies are reported)."""
    gen = generator or torch.Generator().manual_seed(0)
    f_train = truth.sample_factors(n_points, gen)
    f_test = truth.sample_factors(n_points // 2, gen)
    c_train, c_test = _codes(truth, rep, f_train), _codes(truth, rep, f_test)
    d = dci(c_train, f_train.numpy(), c_test, f_test.numpy())
    fv = factor_vae_score(truth, rep, n_train=n_votes, n_eval=n_votes // 2, generator=gen)
    return Disentanglement(
        beta_vae=beta_vae_score(truth, rep, n_votes, n_votes // 2, generator=gen)[
            "eval_accuracy"],
        factor_vae=fv["eval_accuracy"], mig=mig(c_train, f_train.numpy()),
        dci_disentanglement=d["disentanglement"], dci_completeness=d["completeness"],
        dci_informativeness=d["informativeness"],
        sap=sap(c_train, f_train.numpy(), c_test, f_test.numpy()),
        modularity=modularity(c_train, f_train.numpy()), active_dims=fv["active"],
        n_points=n_points)

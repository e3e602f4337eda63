"""Sample quality: FID, KID, precision and recall of a model's samples against real images.

Every score compares two sets of images in the features of vaekit's shipped reference classifier
(`vaekit.features`), not Inception-v3: the numbers are comparable between vaekit runs on every
machine, **not** with Inception-feature FIDs in papers.

* FID (Heusel et al., 2017) and KID (Bińkowski et al., 2018) are torchmetrics'
  `FrechetInceptionDistance` and `KernelInceptionDistance`, given the features (their feature
  extractor is the identity here, so the features are computed once).
* Precision and recall are Kynkäänniemi et al. (2019): a sample is precise when it lies inside the
  k-nearest-neighbour ball of some real image; a real image is recalled when it lies inside the ball
  of some sample (k = 3, Euclidean distance in the features).

Standard errors: FID's is the standard deviation over bootstrap resamples of both feature sets
(features fixed); KID's is the standard error of its mean over disjoint subsets (each subset's MMD²
estimate is unbiased and the subsets independent); precision's, recall's and the classifier
accuracy's are binomial, with the k-NN balls held fixed.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .errors import ConfigError
from .features import DigitFeatures, load_digit_features

if TYPE_CHECKING:
    from .model import VAE

_MISSING = ("sample-quality scores need torchmetrics and scipy; install them with "
            "pip install 'vaekit[quality]'")


@dataclass
class SampleQuality:
    """Sample-quality scores of one set of images against real ones (± standard errors)."""

    n_fake: int
    n_real: int
    fid: float
    fid_se: float
    kid: float
    kid_se: float
    precision: float
    precision_se: float
    recall: float
    recall_se: float
    k: int
    #: Conditional models: the reference classifier's accuracy on samples of asked labels.
    label_accuracy: float | None = None
    label_accuracy_se: float | None = None

    def to_dict(self) -> dict[str, float | int | None]:
        """The scores as a JSON-ready dict."""
        return asdict(self)


class _GivenFeatures(nn.Module):
    """The identity, posing as torchmetrics' feature extractor for features computed beforehand."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return f


def _torchmetrics():
    try:
        from torchmetrics.image.fid import FrechetInceptionDistance
        from torchmetrics.image.kid import KernelInceptionDistance
    except ImportError:
        raise ConfigError(_MISSING) from None
    return FrechetInceptionDistance, KernelInceptionDistance


@torch.no_grad()
def _batched(fn: Any, net: nn.Module, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """``fn`` of ``images`` in batches on ``net``'s device, joined on the CPU."""
    dev = next(net.parameters()).device
    return torch.cat([fn(images[i:i + batch_size].to(dev)).cpu()
                      for i in range(0, len(images), batch_size)])


def image_features(images: torch.Tensor, net: DigitFeatures | None = None,
                   batch_size: int = 500) -> torch.Tensor:
    """The reference classifier's features of ``images`` (``[N, C, H, W]``, in [0, 1] or uint8).

    Returns:
        float64 ``[N, 128]`` on the CPU.
    """
    net = net or load_digit_features()
    return _batched(net, net, images, batch_size).double()


def fid(real: torch.Tensor, fake: torch.Tensor) -> float:
    """The Fréchet distance between Gaussians fitted to two feature sets (torchmetrics' FID)."""
    fid_cls, _ = _torchmetrics()
    metric = fid_cls(feature=_GivenFeatures(real.shape[1]), normalize=True)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    return float(metric.compute())


def kid(real: torch.Tensor, fake: torch.Tensor, subset_size: int = 1000, subsets: int = 100,
        seed: int = 0) -> tuple[float, float]:
    """KID (torchmetrics' unbiased MMD² with the cubic polynomial kernel) and its standard error.

    The estimate is torchmetrics' mean over ``subsets`` random subsets of ``subset_size`` per set;
    the standard error is that of the mean over the disjoint subsets the sets split into.
    """
    _, kid_cls = _torchmetrics()
    size = min(subset_size, len(real), len(fake))

    def score(r: torch.Tensor, f: torch.Tensor, n: int) -> torch.Tensor:
        metric = kid_cls(feature=_GivenFeatures(real.shape[1]), subsets=n, subset_size=size,
                         normalize=True)
        metric.update(r, real=True)
        metric.update(f, real=False)
        return metric.compute()[0]

    with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
        warnings.filterwarnings("ignore", "Metric `Kernel Inception Distance` will save")
        torch.manual_seed(seed)
        estimate = float(score(real, fake, subsets))
        parts = min(len(real), len(fake)) // size
        split = torch.stack([score(real[i * size:(i + 1) * size], fake[i * size:(i + 1) * size], 1)
                             for i in range(parts)])
    se = float(split.std() / math.sqrt(parts)) if parts > 1 else float("nan")
    return estimate, se


def _knn_radii(f: torch.Tensor, k: int, chunk: int = 2048) -> torch.Tensor:
    """Distance from each row of ``f`` to its k-th nearest other row."""
    if len(f) <= k:
        raise ConfigError(f"precision and recall with k={k} need more than {k} images per set")
    return torch.cat([torch.cdist(f[i:i + chunk], f).kthvalue(k + 1, dim=1).values
                      for i in range(0, len(f), chunk)])


def _inside(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor,
            chunk: int = 2048) -> torch.Tensor:
    """Whether each point lies in at least one ball (centre, radius)."""
    return torch.cat([(torch.cdist(points[i:i + chunk], centres) <= radii).any(1)
                      for i in range(0, len(points), chunk)])


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> tuple[float, float]:
    """Kynkäänniemi et al.'s improved precision and recall of ``fake`` against ``real`` features."""
    precision = _inside(fake, real, _knn_radii(real, k)).double().mean()
    recall = _inside(real, fake, _knn_radii(fake, k)).double().mean()
    return float(precision), float(recall)


def _binomial_se(p: float, n: int) -> float:
    return math.sqrt(max(p * (1 - p), 0.0) / n)


def compare_features(real: torch.Tensor, fake: torch.Tensor, *, k: int = 3, bootstrap: int = 20,
                     kid_subset_size: int = 1000, seed: int = 0) -> SampleQuality:
    """All scores of ``fake`` against ``real`` features (float64 ``[N, D]``), with standard errors.

    Args:
        real: Features of the real images.
        fake: Features of the generated images.
        k: Neighbours of precision's and recall's balls.
        bootstrap: Resamples for FID's standard error (0: none, reported as NaN).
        kid_subset_size: Images per set in each KID subset.
        seed: Seeds KID's subsets and the bootstrap, so the scores repeat.
    """
    real, fake = real.double(), fake.double()
    g = torch.Generator().manual_seed(seed)
    value = fid(real, fake)
    boots = [fid(real[torch.randint(len(real), (len(real),), generator=g)],
                 fake[torch.randint(len(fake), (len(fake),), generator=g)]) for _ in range(bootstrap)]
    fid_se = float(torch.tensor(boots).std()) if bootstrap > 1 else float("nan")
    kid_value, kid_se = kid(real, fake, subset_size=kid_subset_size, seed=seed)
    p, r = precision_recall(real, fake, k)
    return SampleQuality(n_fake=len(fake), n_real=len(real), fid=value, fid_se=fid_se, kid=kid_value,
                         kid_se=kid_se, precision=p, precision_se=_binomial_se(p, len(fake)),
                         recall=r, recall_se=_binomial_se(r, len(real)), k=k)


def compare_images(real: torch.Tensor, fake: torch.Tensor, *, net: DigitFeatures | None = None,
                   **options: Any) -> SampleQuality:
    """All scores of image set ``fake`` against image set ``real`` (see `compare_features`)."""
    net = net or load_digit_features()
    return compare_features(image_features(real, net), image_features(fake, net), **options)


@torch.no_grad()
def model_samples(vae: VAE, n: int, *, seed: int = 0, batch_size: int = 500
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``n`` mean images of draws from the model's prior, reproducible with ``seed``.

    Conditional models are asked for the labels ``0, 1, ..., C-1, 0, 1, ...`` in turn.

    Returns:
        ``(images on the CPU, asked labels or None)``.
    """
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % vae.num_classes if vae.num_classes else None
    images = []
    for i in range(0, n, batch_size):
        m = min(batch_size, n - i)
        y = None if labels is None else labels[i:i + m]
        images.append(vae.sample(m, generator=g, y=y).float().cpu())
    return torch.cat(images), labels


@torch.no_grad()
def sample_quality(vae: VAE, real: torch.Tensor, *, n: int = 10_000, seed: int = 0,
                   batch_size: int = 500, **options: Any) -> SampleQuality:
    """Scores of ``n`` samples of ``vae``'s prior against the real images ``real`` (e.g. the test set).

    Works for any vaekit model with a ``sample`` method; for conditional models it also reports
    the reference classifier's accuracy on the samples (the asked label against the predicted one).

    Args:
        vae: The model.
        real: Real images ``[N, C, H, W]`` in [0, 1] (or uint8), N > ``k``.
        n: How many samples to draw.
        seed: Seeds the samples, KID's subsets and the bootstrap.
        batch_size: Images drawn and featurized at once.
        **options: Passed to `compare_features` (``k``, ``bootstrap``, ``kid_subset_size``).
    """
    net = load_digit_features(vae.device)
    was_training = vae.training
    vae.eval()
    try:
        fake, labels = model_samples(vae, n, seed=seed, batch_size=batch_size)
    finally:
        vae.train(was_training)
    fake_features = image_features(fake, net, batch_size)
    scores = compare_features(image_features(real, net, batch_size), fake_features, seed=seed, **options)
    if labels is not None:  # the classifier's head on the features already computed
        pred = _batched(lambda f: net.head(f).argmax(1), net, fake_features.float(), batch_size)
        scores.label_accuracy = float((pred == labels).double().mean())
        scores.label_accuracy_se = _binomial_se(scores.label_accuracy, n)
    return scores


@torch.no_grad()
def classifier_accuracy(images: torch.Tensor, labels: torch.Tensor, net: DigitFeatures | None = None,
                        batch_size: int = 500) -> float:
    """The reference classifier's accuracy on ``images`` with true ``labels``."""
    net = net or load_digit_features()
    pred = _batched(lambda x: net.logits(x).argmax(1), net, images, batch_size)
    return float((pred == labels.cpu()).double().mean())

"""The semi-supervised VAE's training step (Kingma et al. 2014, M2) and its classification numbers.

    vae = VAE(num_classes=10, semi_supervised=True)        # q(y|x), q(z|x,y), p(x|z,y), p(y)
    idx = labelled_subset(train_y, 100, seed=0)             # 10 labelled images per class
    obj = SemiSupervised(vae, train_x[idx], train_y[idx])   # what --semi-supervised trains
    loss = obj(x)                                           # the batch x unlabelled, y summed out

Each step's loss is the negative of Kingma et al.'s objective on two batches: the unlabelled
batch's ELBO with y summed out exactly by Pyro's parallel enumeration (``TraceEnum_ELBO`` over
the guide under ``config_enumerate``: for every class y, one draw z ~ q(z|x, y), weighted by
q(y|x), plus the entropy of q(y|x)), and a batch of the labelled images, where y is observed in
both programs (``Trace_ELBO``: nothing is enumerated), with the classifier's cross-entropy on
them times ``weight`` (their α). Labels 0: no labelled term, a mixture VAE whose classes are
clusters (`clustering_accuracy`).
"""

from __future__ import annotations

import torch
import torch.distributed as torch_dist
from pyro.infer import Trace_ELBO, TraceEnum_ELBO, config_enumerate

from vaekit.auxiliary import Objective, summed_over_ranks
from vaekit.data import to_unit
from vaekit.errors import ConfigError, DataError
from vaekit.model import VAE

__all__ = ["SemiSupervised", "labelled_subset", "predict", "accuracy", "clustering_accuracy",
           "confusion_matrix", "is_semi_supervised"]


def is_semi_supervised(vae: object) -> bool:
    """Whether the VAE is the semi-supervised M2 (``semi_supervised=True``)."""
    return bool(getattr(vae, "semi_supervised", False))


def labelled_subset(labels: torch.Tensor, n: int, seed: int, num_classes: int | None = None
                    ) -> torch.Tensor:
    """Indices of ``n`` labelled images drawn class-balanced: ``n // C`` of each class (the
    first ``n % C`` classes one more), each class's drawn uniformly without replacement by a
    generator seeded with ``seed``; sorted.

    Raises:
        DataError: for a class with fewer images than it needs.
    """
    labels = labels.cpu()
    c = num_classes or int(labels.max()) + 1
    gen = torch.Generator().manual_seed(seed)
    picked = []
    for k in range(c):
        members = (labels == k).nonzero().flatten()
        want = n // c + (1 if k < n % c else 0)
        if want > members.numel():
            raise DataError(f"--labels {n} needs {want} images of class {k}, which has "
                            f"{members.numel()}; use fewer labels")
        picked.append(members[torch.randperm(members.numel(), generator=gen)[:want]])
    return torch.cat(picked).sort().values


class SemiSupervised(Objective):
    """M2's loss on a batch: ``-ELBO(x)`` of the unlabelled images with y enumerated, plus
    ``-ELBO(x_l, y_l) + weight * CE(q(y|x_l), y_l)`` of ``batch`` labelled images; summed.

    Args:
        vae: A semi-supervised VAE.
        images: The labelled images (on the training device, as the data set stores them).
        labels: Their labels.
        batch: Labelled images per step (all of them when there are fewer).
        weight: The cross-entropy's weight per labelled image.
        seed: Seeds the draw of each step's labelled batch.
        indices: The labelled images' indices in the training set, saved with the checkpoint
            (a resumed run must draw the same ones).
        every: Add the labelled batch to every ``every``-th step only (1: every step).

    Raises:
        ConfigError: for another VAE or a negative weight.
    """

    def __init__(self, vae: VAE, images: torch.Tensor, labels: torch.Tensor, batch: int = 100,
                 weight: float = 46.0, seed: int = 0, indices: torch.Tensor | None = None,
                 every: int = 1) -> None:
        super().__init__()
        if not is_semi_supervised(vae):
            raise ConfigError("the semi-supervised objective needs --semi-supervised")
        if not weight >= 0:
            raise ConfigError(f"classifier_weight must be >= 0, got {weight!r}")
        self.vae, self.weight, self.batch, self.every = vae, float(weight), int(batch), int(every)
        self.steps = 0  # forward calls so far: which steps see a labelled batch
        self.images, self.labels = images, labels
        self.indices = indices if indices is not None else torch.arange(len(labels))
        self.draws = torch.Generator().manual_seed(seed)
        self.enumerated = TraceEnum_ELBO(max_plate_nesting=1)
        self._enumerated_guide = config_enumerate(vae.guide, "parallel", expand=False)
        self.labelled = Trace_ELBO(max_plate_nesting=1)
        self._epoch = torch.zeros(3, dtype=torch.float64)  # Σ cross-entropy, Σ right, images

    # --8<-- [start:m2-loss]
    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The loss of the unlabelled batch ``x`` and a labelled batch, summed over images."""
        model, guide = self.vae.model, self.vae.guide
        loss = self.enumerated.differentiable_loss(model, self._enumerated_guide, x)
        self.steps += 1
        if len(self.labels) and (self.steps - 1) % self.every == 0:
            x_l, y_l = self._labelled_batch(x)
            logits = self.vae.classifier(x_l).float()
            ce = torch.nn.functional.cross_entropy(logits, y_l, reduction="sum")
            loss = loss + self.labelled.differentiable_loss(model, guide, x_l, y_l) \
                + self.weight * ce
            self._count(ce.detach(), (logits.argmax(-1) == y_l).sum(), len(y_l))
        return loss
    # --8<-- [end:m2-loss]

    def labelled_indices(self) -> torch.Tensor:
        """The next step's labelled batch (positions in ``labels``), this rank's share of it:
        every rank draws the same batch and takes every world-size-th image, so the ranks'
        summed losses count each labelled image once, as one process does."""
        n = len(self.labels)
        idx = (torch.arange(n) if n <= self.batch
               else torch.randperm(n, generator=self.draws)[:self.batch])
        if torch_dist.is_available() and torch_dist.is_initialized():
            idx = idx[torch_dist.get_rank()::torch_dist.get_world_size()]
        return idx

    def _labelled_batch(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """This step's labelled images, observed as the likelihood observes training images."""
        idx = self.labelled_indices().to(self.labels.device)
        x_l = self.vae.likelihood.targets(to_unit(self.images[idx])).to(x.dtype)
        fmt = torch.channels_last if x.dim() == 4 and not x.is_contiguous() else \
            torch.contiguous_format  # as the loop lays out its batches
        return x_l.contiguous(memory_format=fmt), self.labels[idx]

    @torch.no_grad()
    def _count(self, ce: torch.Tensor, right: torch.Tensor, n: int) -> None:
        self._epoch += torch.tensor([float(ce), float(right), float(n)], dtype=torch.float64)

    def epoch_metrics(self) -> dict[str, float]:
        """The epoch's mean cross-entropy and accuracy (percent) of the classifier on the
        labelled batches it trained on, summed over the ranks (none with no labels); the sums
        start again."""
        ce, right, n = summed_over_ranks(self._epoch, self.labels.device).tolist()
        self._epoch.zero_()
        if not len(self.labels):
            return {}
        n = max(n, 1.0)
        return {"labelled_ce": ce / n, "labelled_accuracy": 100.0 * right / n}

    def auxiliary_state(self) -> dict[str, object]:
        """The labelled images' indices, the labelled batches' generator and the epoch's sums."""
        return {**super().auxiliary_state(), "labelled": self.indices.clone(),
                "draws": self.draws.get_state(), "epoch_sums": self._epoch.clone(),
                "steps": self.steps}

    def load_auxiliary_state(self, state: dict[str, object]) -> None:
        """Restore `auxiliary_state`; a checkpoint of other labelled images is refused.

        Raises:
            ValueError: when the checkpoint's labelled images are not this run's.
        """
        super().load_auxiliary_state(state)
        saved = state.get("labelled")
        if saved is not None and not torch.equal(saved.cpu(), self.indices.cpu()):  # type: ignore[union-attr]
            raise ValueError("its labelled images are not the ones this run's seed draws")
        if "draws" in state:
            self.draws.set_state(state["draws"])  # type: ignore[arg-type]
        if "epoch_sums" in state:
            self._epoch = state["epoch_sums"].clone()  # type: ignore[union-attr]
        self.steps = int(state.get("steps", 0))  # type: ignore[arg-type]


@torch.no_grad()
def predict(vae: VAE, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """The most probable class under q(y|x) of each image, ``[N]`` on the CPU (eval mode).

    Raises:
        DataError: for integer images (pass observations, as the model was trained on).
    """
    if not x.is_floating_point():
        raise DataError(f"q(y|x) takes observations, got {x.dtype} images; pass "
                        "vaekit.likelihoods.test_observations(vae.likelihood, images)")
    was = vae.training
    vae.eval()
    try:
        return torch.cat([vae.classify(x[i:i + batch_size]).argmax(-1).cpu()
                          for i in range(0, len(x), batch_size)])
    finally:
        vae.train(was)


def confusion_matrix(pred: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Counts ``[true class, predicted class]``, ``[C, C]``."""
    return torch.bincount(y.cpu() * num_classes + pred.cpu(),
                          minlength=num_classes ** 2).reshape(num_classes, num_classes)


def clustering_accuracy(pred: torch.Tensor, y: torch.Tensor, num_classes: int) -> float:
    """Accuracy in percent under the best one-to-one matching of clusters to classes (the
    Hungarian method, ``scipy.optimize.linear_sum_assignment`` on the confusion matrix)."""
    try:
        from scipy.optimize import linear_sum_assignment
    except ImportError:
        raise ConfigError('the clustering accuracy needs scipy: pip install "vaekit[metrics]"'
                          ) from None
    counts = confusion_matrix(pred, y, num_classes).numpy()
    rows, cols = linear_sum_assignment(counts, maximize=True)
    return 100.0 * float(counts[rows, cols].sum()) / max(len(y), 1)


def accuracy(vae: VAE, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000,
             clusters: bool = False) -> float:
    """Test accuracy in percent of q(y|x)'s most probable class; with ``clusters`` (a model
    trained without labels), under the best matching of its classes to the labels.

    Raises:
        DataError: for labels that do not match the images.
    """
    if y is None or len(y) != len(x):
        raise DataError("accuracy needs one label per image")
    pred = predict(vae, x, batch_size)
    if clusters:
        return clustering_accuracy(pred, y, vae.num_classes)
    return 100.0 * float((pred == y.cpu()).double().mean())

"""Pictures of a VAE as PNG files: samples, reconstructions, the training curve, interpolations,
latent traversals, a map of the latent space and the decoded manifold of a 2-D latent space.

    save_samples(vae, "samples.png")
    save_reconstructions(vae, test_x[:32], "reconstructions.png")
    save_traversals(vae, z_loc[0], dims=[3, 0, 7], path="traverse.png")
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torchvision.utils import make_grid, save_image

from vaekit.devices import eval_mode
from vaekit.errors import ConfigError
from vaekit.io import atomic_write
from vaekit.model import VAE

__all__ = [
    "show_images",
    "Picture",
    "save_confusion",
    "save_analogies",
    "save_samples",
    "save_reconstructions",
    "save_loss_curve",
    "save_interpolations",
    "save_traversals",
    "project_2d",
    "save_latent_map",
    "save_manifold",
]


class Picture:
    """A matplotlib figure that a notebook shows inline (``_repr_png_``) without pyplot or a
    file; ``figure`` is the figure, `save` writes it."""

    def __init__(self, figure: Any) -> None:
        self.figure = figure

    def _repr_png_(self) -> bytes:
        import io

        buf = io.BytesIO()
        self.figure.savefig(buf, format="png")
        return buf.getvalue()

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the picture as a PNG, atomically."""
        return _save_png(path, lambda f: self.figure.savefig(f, format="png"))


def show_images(images: torch.Tensor, nrow: int = 8, title: str | None = None,
                size: float = 4.0) -> Picture:
    """A `Picture` of a grid of images ``[N, C, H, W]`` in [0, 1] (the seed notebook's
    ``show_tensor_images``): a notebook cell that returns it shows it inline, and nothing is
    written to disk."""
    from matplotlib.figure import Figure

    grid = make_grid(images.detach().float().cpu().clamp(0, 1), nrow=nrow, padding=2,
                     pad_value=1.0)
    fig = Figure(figsize=(size, size * grid.shape[1] / grid.shape[2]), dpi=100)
    ax = fig.add_axes((0, 0, 1, 0.93 if title else 1))
    ax.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)
    return Picture(fig)


def save_samples(vae: VAE, path: str | os.PathLike[str], n: int = 64, seed: int = 0,
                 nrow: int = 8, labels: torch.Tensor | int | None = None) -> Path:
    """Save a grid of mean images decoded from ``n`` draws of the prior (seeded), ``nrow`` a row.

    ``labels`` (one per image, or one for all) is needed for a conditional VAE.
    """
    with eval_mode(vae):
        images = vae.sample(n, generator=torch.Generator().manual_seed(seed), y=labels)
    return _save_grid(images, path, nrow=nrow)


def save_reconstructions(
    vae: VAE, x: torch.Tensor, path: str | os.PathLike[str], per_row: int = 16,
    labels: torch.Tensor | None = None,
) -> Path:
    """Save originals and their reconstructions in alternating rows (``labels``: if conditional)."""
    with eval_mode(vae):
        recon = vae.reconstruct(x, labels).cpu()
    x = x.cpu().float()
    rows = []
    for i in range(0, x.shape[0], per_row):
        rows += [x[i : i + per_row], recon[i : i + per_row]]
    return _save_grid(torch.cat(rows), path, nrow=per_row)


def save_loss_curve(history: Sequence[dict[str, float]], path: str | os.PathLike[str]) -> Path:
    """Plot the training objective, the test and (if any) validation -ELBO (and validation IWAE
    bound) per epoch."""
    plt = _pyplot()
    epochs = [r["epoch"] for r in history]
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=100)
    ax.plot(epochs, [r["train_loss"] for r in history], "o-", label="train loss (objective)")
    ax.plot(epochs, [r["test_neg_elbo"] for r in history], "s-", label="test -ELBO")
    _plot_val(ax, history, "^--", label="validation -ELBO")
    _plot_val(ax, history, "v:", key="val_neg_iwae", label="validation -IWAE bound")
    ax.set_xlabel("epoch")
    ax.set_ylabel("nats per image")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return _save_fig(fig, path)


def save_curves(histories: Mapping[str, Sequence[Mapping[str, float]]],
                path: str | os.PathLike[str]) -> Path:
    """Several runs' curves overlaid: test -ELBO per epoch (solid) and validation -ELBO
    (dashed), one colour per run.

    Args:
        histories: ``{name: rows of metrics.csv}``.
        path: The PNG to write.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4), dpi=100)
    for label, rows in histories.items():
        epochs = [r["epoch"] for r in rows]
        (line,) = ax.plot(epochs, [r["test_neg_elbo"] for r in rows], "-", label=f"{label} test")
        _plot_val(ax, rows, "--", color=line.get_color(), label=f"{label} val")
    ax.set_xlabel("epoch")
    ax.set_ylabel("-ELBO, nats per image")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save_fig(fig, path)


def _plot_val(ax: Any, rows: Sequence[Mapping[str, float]], fmt: str, key: str = "val_neg_elbo",
              **style: Any) -> None:
    """A validation column per epoch on ``ax``, if the rows have any."""
    if any(math.isfinite(r.get(key, math.nan)) for r in rows):
        ax.plot([r["epoch"] for r in rows], [r.get(key, math.nan) for r in rows], fmt, **style)


# -- looking inside: interpolations, traversals, the latent map, the manifold ------------------
def _pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_png(path: str | os.PathLike[str], write: Callable[[BinaryIO], None]) -> Path:
    """Write a PNG atomically, so an interrupted command leaves no half-written picture."""
    atomic_write(path, write)
    return Path(path)


def _save_grid(images: torch.Tensor, path: str | os.PathLike[str], nrow: int,
               padding: int = 2) -> Path:
    grid = make_grid(images.detach().cpu().float(), nrow=nrow, padding=padding, pad_value=0.5)
    return _save_png(path, lambda f: save_image(grid, f, format="png"))


@torch.no_grad()
def save_interpolations(vae: VAE, pairs: Sequence[tuple[torch.Tensor, torch.Tensor]],
                        path: str | os.PathLike[str], steps: int = 10,
                        labels: Sequence[tuple[int, int]] | None = None,
                        path_label: int | None = None) -> Path:
    """One row per pair of images: the first image, ``steps`` decodings along the straight line
    between their posterior means (both ends included), the second image.

    Args:
        vae: The model.
        pairs: Pairs of images ``[C, H, W]`` in [0, 1] (e.g. test observations).
        path: The PNG to write.
        steps: Decoded points per row (>= 2).
        labels: Conditional VAE: the labels of the two images of each pair (to encode them).
        path_label: Conditional VAE: the label the path is decoded with (default: each pair's
            first image's label), so that a row morphs style at a fixed class.
    """
    if vae.num_classes and labels is None:
        raise ConfigError("a conditional VAE needs the labels of the images to interpolate")
    with eval_mode(vae):
        t = torch.linspace(0, 1, steps, device=vae.device)[:, None]
        rows = []
        for i, (a, b) in enumerate(pairs):
            ya = yp = None
            if labels is not None:
                ya = torch.tensor(labels[i])
                yp = labels[i][0] if path_label is None else path_label
            z = vae.encode(torch.stack([a, b]).float(), ya)[0]
            path_images = vae.decode((1 - t) * z[0] + t * z[1], yp).cpu()
            rows += [a[None].cpu().float(), path_images, b[None].cpu().float()]
    return _save_grid(torch.cat(rows), path, nrow=steps + 2)


@torch.no_grad()
def save_traversals(vae: VAE, z: torch.Tensor, dims: Sequence[int], path: str | os.PathLike[str],
                    steps: int = 11, span: float = 3.0, labels: Sequence[str] | None = None,
                    label: int | None = None) -> Path:
    """One row per latent dimension: ``z`` with that dimension swept over ``[-span, span]``.

    Args:
        vae: The model.
        z: The base latent ``[z_dim]`` (e.g. an image's posterior mean, or zeros).
        dims: The dimensions to sweep, one row each, in this order.
        path: The PNG to write.
        steps: Images per row.
        span: The sweep's half-width, in prior standard deviations.
        labels: A label per row, written left of it (default ``z<d>``).
        label: Conditional VAE: the class every image is decoded as.
    """
    with eval_mode(vae):
        values = torch.linspace(-span, span, steps, device=vae.device)
        rows = []
        for d in dims:
            zs = z.to(vae.device).float().repeat(steps, 1)
            zs[:, d] = values
            rows.append(vae.decode(zs, label).cpu())
    grid = make_grid(torch.cat(rows), nrow=steps, padding=2, pad_value=0.5)
    labels = list(labels) if labels is not None else [f"z{d}" for d in dims]
    plt = _pyplot()
    h, w = grid.shape[1:]
    scale, margin, dpi = 2, 150, 100  # pixels: image at 2x, a left margin for the labels
    fig = plt.figure(figsize=((w * scale + margin) / dpi, (h * scale + 40) / dpi), dpi=dpi)
    ax = fig.add_axes((margin / (w * scale + margin), 0, w * scale / (w * scale + margin),
                       h * scale / (h * scale + 40)))
    ax.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest", vmin=0, vmax=1)
    cell = (h - 2) / len(labels)
    ax.set_yticks([2 + cell * (i + 0.5) for i in range(len(labels))], labels, fontsize=8)
    ax.set_xticks([2 + (w - 2) / steps * (i + 0.5) for i in (0, steps // 2, steps - 1)],
                  [f"{-span:g}", "0", f"{span:g}"], fontsize=8)
    ax.tick_params(length=0)
    ax.xaxis.tick_top()
    for spine in ax.spines.values():
        spine.set_visible(False)
    return _save_fig(fig, path)


@torch.no_grad()
def save_code_usage(vae: VAE, x: torch.Tensor, path: str | os.PathLike[str],
                    grids: int = 8) -> Path:
    """A VQ-VAE's codes on images ``x``: how often each code is used (sorted, log scale; of two
    levels, a curve per grid), and the code grids of the first ``grids`` images, each cell
    coloured by its code (of two levels, the bottom grids above their top grids)."""
    k = vae.posterior.quantizer.num_codes
    with eval_mode(vae):
        levels = [c.cpu() for c in vae.codes(x.to(vae.device))]
    plt = _pyplot()
    fig = plt.figure(figsize=(9, 3), dpi=80)
    ax = fig.add_axes((0.07, 0.18, 0.4, 0.7))
    names = ["bottom", "top"] if len(levels) == 2 else [None]
    for codes, name in zip(levels, names):
        counts = torch.bincount(codes.flatten(), minlength=k).double()
        used = counts[counts > 0].sort(descending=True).values
        label = f"{name}: {len(used)} of {k} used" if name else f"{len(used)} of {k} used"
        ax.step(range(len(used)), used.numpy(), where="mid", label=label)
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.set_xlabel("codes by use")
    ax.set_ylabel(f"cells of {x.shape[0]} images")
    n = min(grids, levels[0].shape[0])
    rows = len(levels)
    for i in range(n):
        for r, codes in enumerate(levels):
            row = (i // 4) * rows + r
            height = 0.8 / (2 * rows)
            sub = fig.add_axes((0.52 + (i % 4) * 0.12, 0.88 - (row + 1) * height - row * 0.02,
                                0.11, height))
            sub.imshow(codes[i].numpy(), cmap="tab20", vmin=0, vmax=k - 1,
                       interpolation="nearest")
            sub.set_axis_off()
    return _save_fig(fig, path)


def save_confusion(counts: torch.Tensor, path: str | os.PathLike[str]) -> Path:
    """A confusion matrix ``[true, predicted]`` of counts as a picture, each cell's count
    printed, the accuracy in the title."""
    c = counts.shape[0]
    plt = _pyplot()
    fig = plt.figure(figsize=(4.2, 4), dpi=80)
    ax = fig.add_axes((0.14, 0.12, 0.8, 0.78))
    ax.imshow(counts.numpy(), cmap="Blues")
    for i in range(c):
        for j in range(c):
            ax.text(j, i, str(int(counts[i, j])), ha="center", va="center", fontsize=6,
                    color="white" if counts[i, j] > counts.max() / 2 else "black")
    right = float(counts.diag().sum()) / max(float(counts.sum()), 1.0)
    ax.set_title(f"accuracy {100 * right:.2f}% of {int(counts.sum())}", fontsize=9)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_xticks(range(c))
    ax.set_yticks(range(c))
    return _save_fig(fig, path)


@torch.no_grad()
def save_analogies(vae: VAE, x: torch.Tensor, path: str | os.PathLike[str]) -> Path:
    """Kingma et al.'s analogies of a semi-supervised VAE: one row per image of ``x``, the image
    and then its style, the mean of q(z|x, y) at the classifier's class y, decoded as every
    class."""
    with eval_mode(vae):
        x = x.to(vae.device)
        y = vae.classify(x).argmax(-1)
        z = vae.encode(x, y)[0]
        c = vae.num_classes
        rows = [torch.stack([x[i].float(), *vae.decode(z[i].expand(c, -1),
                                                       torch.arange(c, device=vae.device))])
                for i in range(len(x))]
    grid = make_grid(torch.cat(rows).cpu(), nrow=c + 1, padding=2, pad_value=1.0)
    return _save_png(path, lambda f: save_image(grid, f, format="png"))


def _save_fig(fig: Any, path: str | os.PathLike[str]) -> Path:
    try:
        return _save_png(path, lambda f: fig.savefig(f, format="png"))
    finally:
        _pyplot().close(fig)


def project_2d(z: torch.Tensor) -> tuple[torch.Tensor, list[float] | None]:
    """Two coordinates per row of ``z`` ``[N, z_dim]`` for a scatter plot.

    Returns:
        ``(points [N, 2], explained)``: ``z`` itself when ``z_dim == 2`` (``explained`` None);
        for ``z_dim == 1``, ``z`` against zeros; otherwise the projection on the first two
        principal components (SVD of the centred ``z``) and the share of variance of each.
    """
    z = z.detach().cpu().float()
    if z.shape[1] == 2:
        return z, None
    if z.shape[1] == 1:
        return torch.cat([z, torch.zeros_like(z)], dim=1), None
    centred = z - z.mean(0)
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)
    var = s**2
    explained = (var[:2] / var.sum().clamp_min(1e-12)).tolist()
    points = centred @ vh[:2].T
    if points.shape[1] < 2:  # a single image has one component: the second axis is zero
        points = torch.cat([points, torch.zeros(points.shape[0], 2 - points.shape[1])], dim=1)
        explained += [0.0] * (2 - len(explained))
    return points, explained


def save_latent_map(points: torch.Tensor, labels: torch.Tensor, path: str | os.PathLike[str],
                    axis_labels: tuple[str, str] = ("z0", "z1"), title: str = "") -> Path:
    """Scatter plot of 2-D points (e.g. from `project_2d`) coloured by class label.

    Args:
        points: ``[N, 2]`` coordinates.
        labels: ``[N]`` integer labels (digits 0-9 for MNIST).
        path: The PNG to write (600x540 pixels).
        axis_labels: Names of the two axes.
        title: A title for the plot.
    """
    plt = _pyplot()
    pts, lab = points.detach().cpu().numpy(), labels.detach().cpu().numpy()
    fig, ax = plt.subplots(figsize=(6, 5.4), dpi=100)
    classes = sorted({int(v) for v in lab})
    cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    colour = {c: cmap(i % cmap.N) for i, c in enumerate(classes)}
    # One scatter in a fixed random order, so that no class is painted over all the others.
    order = torch.randperm(len(lab), generator=torch.Generator().manual_seed(0)).numpy()
    size = min(20.0, max(3.0, 3e4 / max(len(lab), 1)))  # bigger points when there are few
    ax.scatter(pts[order, 0], pts[order, 1], s=size, alpha=0.6, linewidths=0,
               c=[colour[int(v)] for v in lab[order]])
    for c in classes:  # legend entries
        ax.scatter([], [], s=3, color=colour[c], label=str(c))
    ax.set_xlabel(axis_labels[0])
    ax.set_ylabel(axis_labels[1])
    if title:
        ax.set_title(title, fontsize=10)
    ax.legend(markerscale=4, fontsize=8, loc="center left", bbox_to_anchor=(1, 0.5), frameon=False)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save_fig(fig, path)


@torch.no_grad()
def save_manifold(vae: VAE, path: str | os.PathLike[str], n: int = 20,
                  label: int | None = None) -> Path:
    """The decoded manifold of a 2-D latent space: mean images on an ``n x n`` grid of z.

    The grid is ``Φ⁻¹`` of ``n`` evenly spaced probabilities in ``(0, 1)`` on each axis, so equal
    prior mass lies between neighbours (Kingma & Welling, 2014). ``z0`` grows to the right and
    ``z1`` upwards.

    Args:
        vae: A model with ``z_dim == 2``.
        path: The PNG to write.
        n: Images per side.
        label: Conditional VAE: the class every image is decoded as.

    Raises:
        ConfigError: if ``z_dim != 2``.
    """
    if vae.z_dim != 2:
        raise ConfigError(f"the manifold picture needs a 2-D latent space, this model has "
                          f"z_dim={vae.z_dim}; use the latent map or traversals instead")
    q = torch.distributions.Normal(0.0, 1.0).icdf(torch.linspace(0.5 / n, 1 - 0.5 / n, n))
    z1, z0 = torch.meshgrid(q.flip(0), q, indexing="ij")  # rows top to bottom: z1 decreasing
    with eval_mode(vae):
        images = vae.decode(torch.stack([z0.reshape(-1), z1.reshape(-1)], dim=1), label)
    return _save_grid(images, path, nrow=n, padding=0)


def draw_latent_map(vae: VAE, x: torch.Tensor, labels: torch.Tensor,
                    folder: str | os.PathLike[str], grid: int = 20, label: int | None = None,
                    batch_size: int = 1000) -> list[Path]:
    """What ``vaekit latent-map`` draws: ``latent_map.png`` (the posterior means of ``x``
    coloured by ``labels``, on their first two principal components when z_dim > 2) and, for
    z_dim == 2, ``manifold.png`` (`save_manifold`, decoded as class ``label``).

    A conditional VAE encodes each image with its label. Returns the paths written.
    """
    y = labels if vae.num_classes else None
    if vae.num_classes and label is None:
        label = 0
    with torch.no_grad(), eval_mode(vae):
        z = torch.cat([vae.encode(x[i : i + batch_size],
                                  None if y is None else y[i : i + batch_size])[0].cpu()
                       for i in range(0, x.shape[0], batch_size)])
    points, explained = project_2d(z)
    if explained is None:
        axes = ("z0", "z1") if vae.z_dim == 2 else ("z0", "")
        title = f"posterior means of {len(z)} test images"
    else:
        axes = (f"PC1 ({explained[0]:.0%} of variance)", f"PC2 ({explained[1]:.0%})")
        title = f"posterior means of {len(z)} test images, PCA of z_dim={vae.z_dim}"
    folder = Path(folder)
    written = [save_latent_map(points, labels, folder / "latent_map.png", axes, title)]
    if vae.z_dim == 2:
        written.append(save_manifold(vae, folder / "manifold.png", n=grid, label=label))
    return written


"""The picture commands on real tiny run folders: each writes PNGs of the expected size that are
not blank, into the run folder or --out, without touching the files `vaekit fit` wrote."""

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from matplotlib.image import imread

import vaekit
from vaekit import plots
from vaekit.cli import cli
from vaekit.errors import ConfigError

# Enough steps (128, a few seconds) for the decoder to draw digits rather than a uniform grey.
SMOKE = ["--limit-train", "4096", "--limit-test", "128", "--batch-size", "64", "--epochs", "2",
         "--lr", "3e-3", "--no-progress", "--device", "cpu", "--no-download"]
DATA = ["--device", "cpu", "--no-download"]


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory, mnist_root):
    """Two real run folders from ``vaekit fit``: ``z2`` (z_dim 2) and ``z3`` (z_dim 3)."""
    folder = tmp_path_factory.mktemp("pictures")
    mp = pytest.MonkeyPatch()
    mp.setenv("VAEKIT_DATA", str(mnist_root))
    mp.chdir(folder)
    try:
        for z in (2, 3):
            res = CliRunner().invoke(cli, ["fit", "--out", f"z{z}", "--z-dim", str(z), *SMOKE])
            assert res.exit_code == 0, res.output
    finally:
        mp.undo()
    return folder


@pytest.fixture
def runner(monkeypatch, mnist_root, tmp_path):
    monkeypatch.setenv("VAEKIT_DATA", str(mnist_root))
    monkeypatch.chdir(tmp_path)
    return CliRunner()


def check_png(path, width, height):
    """The PNG exists, has this many pixels and is not a constant (blank or saturated) image."""
    assert path.is_file(), path
    image = imread(path)
    assert image.shape[:2] == (height, width)
    rgb = image[..., :3]
    assert rgb.std() > 0.05, f"{path.name} is nearly constant"
    assert 0.02 < rgb.mean() < 0.98
    return rgb


def check_scatter(path, min_colours=8):
    """A 600x540 scatter plot with coloured points of at least ``min_colours`` hues (the digits)."""
    assert path.is_file(), path
    rgb = imread(path)[..., :3]
    assert rgb.shape[:2] == (540, 600)
    colourful = rgb.max(-1) - rgb.min(-1) > 0.3  # saturated pixels: the points and the legend
    assert colourful.mean() > 0.005, f"{path.name} shows almost no points"
    hues = {tuple(v) for v in (rgb[colourful] * 4).round().astype(int)}
    assert len(hues) >= min_colours


def grid(n, nrow, size=28, pad=2):
    """Pixel size (width, height) of a torchvision make_grid of n images."""
    rows = -(-n // nrow)
    return nrow * (size + pad) + pad, rows * (size + pad) + pad


def test_sample_writes_its_own_png_and_leaves_fit_pictures_alone(runs_dir, runner):
    run = runs_dir / "z3"
    before = (run / "samples.png").read_bytes()
    res = runner.invoke(cli, ["sample", str(run), "--n", "16", "--nrow", "4", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert res.output.strip() == f"wrote {run / 'sample.png'}"
    check_png(run / "sample.png", *grid(16, 4))
    assert (run / "samples.png").read_bytes() == before
    res = runner.invoke(cli, ["sample", str(run), "--out", "pics", "--seed", "1"])
    assert res.exit_code == 0, res.output
    check_png(runner_path("pics/sample.png"), *grid(64, 8))
    assert (run / "sample.png").read_bytes() != runner_path("pics/sample.png").read_bytes()


def runner_path(p):
    from pathlib import Path

    return Path.cwd() / p


def test_reconstruct(runs_dir, runner):
    res = runner.invoke(cli, ["reconstruct", str(runs_dir / "z3"), "--n", "8", "--per-row", "4",
                              "--start", "3", "--out", "pics", *DATA])
    assert res.exit_code == 0, res.output
    check_png(runner_path("pics/reconstruct.png"), *grid(16, 4))  # 8 originals + 8 reconstructions


def test_interpolate(runs_dir, runner):
    res = runner.invoke(cli, ["interpolate", str(runs_dir / "z3"), "--pair", "0", "1", "--pair",
                              "2", "3", "--steps", "5", "--out", "pics", *DATA])
    assert res.exit_code == 0, res.output
    check_png(runner_path("pics/interpolate.png"), *grid(14, 7))  # rows: image, 5 steps, image

    res = runner.invoke(cli, ["interpolate", str(runs_dir / "z3"), "--pair", "0", "10000", *DATA])
    assert res.exit_code == 2 and "10000 is not a test image index" in res.output


def test_traverse_orders_rows_by_kl(runs_dir, runner):
    run = runs_dir / "z3"
    res = runner.invoke(cli, ["traverse", str(run), "--dims", "2", "--steps", "5", "--limit", "200",
                              "--out", "pics", *DATA])
    assert res.exit_code == 0, res.output
    w, h = grid(10, 5)
    check_png(runner_path("pics/traverse.png"), 2 * w + 150, 2 * h + 40)  # 2x images + labels
    # The rows named are the two dimensions of largest mean KL on those 200 images.
    vae = vaekit.load(run)
    x, _ = vaekit.load_mnist(train=False, download=False, limit=200)
    x = vae.likelihood.targets(vaekit.data.to_unit(x), generator=torch.Generator().manual_seed(0))
    loc, scale = vae.encode(x)
    kl = (0.5 * (loc**2 + scale**2 - 1 - 2 * scale.log())).mean(0)
    top = torch.argsort(kl, descending=True)[:2].tolist()
    assert f"(rows: z{top[0]}, z{top[1]})" in res.output

    res = runner.invoke(cli, ["traverse", str(run), "--dims", "9", "--prior-base", "--out", "all",
                              *DATA])  # more dims than z_dim: all three
    assert res.exit_code == 0, res.output
    w, h = grid(33, 11)
    check_png(runner_path("all/traverse.png"), 2 * w + 150, 2 * h + 40)


def test_latent_map_2d_writes_the_manifold_too(runs_dir, runner):
    res = runner.invoke(cli, ["latent-map", str(runs_dir / "z2"), "--grid", "5", "--limit", "300",
                              "--out", "pics", *DATA])
    assert res.exit_code == 0, res.output
    check_scatter(runner_path("pics/latent_map.png"))
    check_png(runner_path("pics/manifold.png"), 5 * 28, 5 * 28)
    assert res.output.count("wrote") == 2


def test_latent_map_pca_for_larger_latent_spaces(runs_dir, runner):
    res = runner.invoke(cli, ["latent-map", str(runs_dir / "z3"), "--limit", "300", "--out", "pics",
                              *DATA])
    assert res.exit_code == 0, res.output
    check_scatter(runner_path("pics/latent_map.png"))
    assert not runner_path("pics/manifold.png").exists()


@pytest.mark.parametrize("command", ["evaluate", "sample", "reconstruct", "interpolate",
                                     "traverse", "latent-map"])
def test_bad_run_folder_is_one_line_exit_2(runner, tmp_path, command):
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{}")
    for folder, message in (("empty", "not a vaekit run folder"), ("nope", "not a vaekit run"),
                            ("broken", "no checkpoint")):
        res = runner.invoke(cli, [command, folder, "--device", "cpu"])
        assert res.exit_code == 2, res.output
        assert res.output.startswith("Error: ") and res.output.count("\n") == 1
        assert message in res.output
    assert not any(p.suffix == ".png" for p in tmp_path.rglob("*"))


def test_help_shows_defaults(runner):
    for command in ("evaluate", "sample", "reconstruct", "interpolate", "traverse", "latent-map"):
        out = runner.invoke(cli, [command, "--help"]).output
        assert "RUN_DIR" in out and "[default:" in out


# -- the plotting functions themselves ------------------------------------------------------------
def test_project_2d():
    z = torch.randn(500, 3, generator=torch.Generator().manual_seed(0)) * torch.tensor([3.0, 1, 0.1])
    points, explained = plots.project_2d(z)
    assert points.shape == (500, 2) and explained is not None
    assert explained[0] > 0.85 > explained[1] > 0.05 and sum(explained) <= 1
    assert points.mean(0).abs().max() < 1e-4
    assert torch.equal(plots.project_2d(z[:, :2])[0], z[:, :2]) and plots.project_2d(z[:, :2])[1] is None
    assert plots.project_2d(z[:, :1])[0].shape == (500, 2)


def test_manifold_needs_two_latent_dimensions(tmp_path):
    with pytest.raises(ConfigError, match="2-D latent space"):
        plots.save_manifold(vaekit.VAE(z_dim=3), tmp_path / "m.png")
    vae = vaekit.VAE(z_dim=2).train()
    plots.save_manifold(vae, tmp_path / "m.png", n=4)
    assert vae.training and imread(tmp_path / "m.png").shape[:2] == (112, 112)
    assert not np.isnan(imread(tmp_path / "m.png")).any()


def test_projection_of_a_single_point_has_two_axes():
    points, explained = plots.project_2d(torch.randn(1, 5))
    assert points.shape == (1, 2) and len(explained) == 2

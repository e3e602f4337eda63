"""The documentation site builds with `mkdocs build --strict`, shows what it should, and what it
tells a reader to type exists: Python blocks are included from the examples (which
test_examples.py runs), command lines name real commands and options, transcripts match."""

import math
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import click
import pytest

import vaekit
from vaekit import likelihoods
from vaekit.cli import cli

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md"))


def _blocks(text: str, lang: str) -> list[str]:
    """The contents of the fenced code blocks of a language (with or without a title)."""
    found = re.findall(rf"^```{lang}( [^\n]*)?\n(.*?)^```", text, flags=re.S | re.M)
    return [body for _, body in found]


def test_site_builds_strict(tmp_path):
    site = tmp_path / "site"
    p = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert p.returncode == 0, p.stderr[-3000:]
    for page in ("installation", "quickstart", "concepts", "extending", "scaling", "cli",
                 "benchmarks", "changelog", "api", "api/model", "api/likelihoods", "api/errors"):
        assert (site / page / "index.html").is_file(), page

    def html(page: str) -> str:
        return (site / page / "index.html").read_text()

    home = html("")
    assert 'src="img/samples.png"' in home and 'src="img/reconstructions.png"' in home
    assert all(png.stat().st_size < 200_000 for png in (site / "img").glob("*.png"))
    assert 'src="../img/beta_sweep.png"' in html("extending")
    cli_page = html("cli")
    for command in ["fit", *cli.commands]:  # every command, and the options of fit
        assert f"vaekit {command}" in cli_page, command
    for option in ("--likelihood", "--beta", "--resume", "--out"):
        assert option in cli_page, option
    assert "register_likelihood" in html("api/likelihoods") and "iwae_bound" in html("api/evaluation")
    assert "GlobalBatchNorm2d" in html("api/distributed")
    concepts = html("concepts")
    assert 'class="arithmatex"' in concepts and "poutine.scale" in concepts
    assert "\\mathcal L(x)" in concepts  # the ELBO's TeX reaches MathJax unmangled
    extending = html("extending")
    for included in ("StudentT", "MLPEncoder", "own_program", "traversal_grid", "examples/my_vaekit.py"):
        assert included in extending, included


def test_python_blocks_are_included_from_files():
    """Python a reader would paste comes from files the tests run (examples) or import (vaekit),
    and every example is shown somewhere."""
    included = set()
    for page in PAGES:
        for block in _blocks(page.read_text(), "python"):
            assert block.strip().startswith("--8<--"), f"{page.name}: {block[:60]!r}"
            path = block.split('"')[1].split(":")[0]
            assert path.startswith(("examples/", "vaekit/")), path
            included.add(path)
    examples = {f"examples/{p.name}" for p in (ROOT / "examples").glob("*.py")}
    assert examples <= included, examples - included


def _command_lines():
    """(page, tokens) of each `vaekit ...` (or `python examples/my_vaekit.py ...`) in bash blocks."""
    for page in PAGES + [ROOT / "README.md"]:
        for block in _blocks(page.read_text(), "bash"):
            for line in block.replace("\\\n", " ").splitlines():
                for part in re.split(r"&&|;", re.sub(r"(^|\s)#.*", "", line)):  # no comments
                    tokens = shlex.split(part)
                    for i, tok in enumerate(tokens):
                        if tok == "vaekit" and (i == 0 or tokens[i - 1] == "-m") \
                                or tok == "examples/my_vaekit.py":
                            yield page.name, tokens[i + 1:]
                            break


def test_command_lines_in_the_docs_parse(monkeypatch):
    """Each command and option the docs show exists and takes the values shown."""
    # examples/my_vaekit.py adds "student-t"; only its name matters for parsing
    monkeypatch.setitem(likelihoods.LIKELIHOODS, "student-t", likelihoods.Likelihood)
    seen = set()
    for page, args in _command_lines():
        if not args or args[0].startswith("-"):
            assert args in ([], ["--version"], ["--help"]), (page, args)
            continue
        command = cli.get_command(click.Context(cli), args[0])
        assert command is not None, f"{page}: no command vaekit {args[0]}"
        seen.add(args[0])
        if "--help" in args:
            continue
        try:
            command.make_context(args[0], args[1:])  # parses and converts, runs nothing
        except click.ClickException as e:
            pytest.fail(f"{page}: vaekit {shlex.join(args)}: {e.format_message()}")
    assert {"fit", "evaluate", "sample"} <= seen


def test_transcripts_match_the_cli(tmp_path):
    """A ```text block that starts with `$ vaekit ...` shows what that command prints."""
    found = 0
    for page in PAGES:
        for block in _blocks(page.read_text(), "text"):
            if not block.startswith("$ vaekit "):
                continue
            command, *shown = block.strip().splitlines()
            run = "from vaekit.cli import cli; cli(prog_name='vaekit')"
            p = subprocess.run([sys.executable, "-c", run, *shlex.split(command)[2:]],
                               cwd=tmp_path, capture_output=True, text=True, timeout=120)
            assert (p.stdout + p.stderr).strip().splitlines() == shown, page.name
            found += 1
    assert found


def test_reference_covers_the_package():
    """Every built-in likelihood is in the table of Concepts; every public name and module has
    its place in the API reference."""
    concepts = (DOCS / "concepts.md").read_text()
    builtin = [n for n, c in likelihoods.LIKELIHOODS.items() if c.__module__ == "vaekit.likelihoods"]
    for name in builtin:
        assert f"| `{name}`" in concepts, name
    index = (DOCS / "api" / "index.md").read_text()
    for name in vaekit.__all__:
        assert f"`{name}`" in index, name
    modules = {p.stem for p in (ROOT / "vaekit").glob("*.py")} - {"__init__", "__main__", "cli"}
    assert modules == {p.stem for p in (DOCS / "api").glob("*.md")} - {"index"}
    for m in modules:
        assert (DOCS / "api" / f"{m}.md").read_text().strip() == f"::: vaekit.{m}"


def test_the_readme_plain_pyro_block_runs_as_written(mnist_root):
    """The README's SVI block, pasted after `vaekit.load` of a run (eval mode) with `load_mnist`'s
    uint8 images: one finite step, and BatchNorm's running statistics move (training mode)."""
    import pyro
    import torch

    block = next(b for b in _blocks((ROOT / "README.md").read_text(), "python") if "SVI(" in b)
    train_x, _ = vaekit.load_mnist(mnist_root, train=True, download=False, limit=256)
    assert train_x.dtype == torch.uint8
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    vae = vaekit.VAE(z_dim=4).eval()  # as vaekit.load returns it
    before = [b.clone() for n, b in vae.named_buffers() if n.endswith("running_mean")]
    scope = {"vae": vae, "train_x": train_x}
    exec(compile(block, "README.md", "exec"), scope)
    assert math.isfinite(scope["loss"]) and scope["loss"] > 0
    after = [b for n, b in vae.named_buffers() if n.endswith("running_mean")]
    assert before and any(not torch.equal(a, b) for a, b in zip(before, after))

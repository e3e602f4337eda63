"""The documentation site builds with `mkdocs build --strict` and shows what it should."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_site_builds_strict(tmp_path):
    site = tmp_path / "site"
    p = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert p.returncode == 0, p.stderr[-3000:]
    pages = {"index", "installation", "quickstart", "concepts", "extending", "scaling", "cli",
             "api", "benchmarks", "changelog"}
    for page in pages - {"index"}:
        assert (site / page / "index.html").is_file(), page
    cli = (site / "cli" / "index.html").read_text()
    for command in ("vaekit fit", "vaekit evaluate", "vaekit sample", "--likelihood", "--resume"):
        assert command in cli, command
    api = (site / "api" / "index.html").read_text()
    for name in ("register_likelihood", "VAE", "fit", "iwae_bound", "GlobalBatchNorm2d"):
        assert name in api, name
    concepts = (site / "concepts" / "index.html").read_text()
    assert "arithmatex" in concepts and "poutine.scale" in concepts
    extending = (site / "extending" / "index.html").read_text()
    assert "register_likelihood" in extending and "MLPEncoder" in extending  # examples included
    home = (site / "index.html").read_text()
    assert 'src="img/samples.png"' in home and (site / "img" / "samples.png").is_file()


def test_no_pasteable_python_that_is_not_included_or_tested():
    """Python blocks in the docs are snippet includes of files the tests run or import."""
    for page in (ROOT / "docs").glob("*.md"):
        for block in re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S):
            assert block.strip().startswith("--8<--"), f"{page.name}: {block[:60]!r}"

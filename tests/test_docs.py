"""The documentation users read: the notebook runs, the CLI reference matches the parser, the site builds."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_quickstart_notebook_runs_top_to_bottom(tmp_path):
    """Executed in a fresh kernel (its runs go to a temporary folder); every cell must run, and the graded
    table and the plot must come out."""
    nbformat = pytest.importorskip("nbformat", reason="nbformat is not installed: pip install 'stitch[notebook]'")
    nbclient = pytest.importorskip("nbclient", reason="nbclient is not installed: pip install 'stitch[notebook]'")
    notebook = nbformat.read(ROOT / "notebooks" / "quickstart.ipynb", as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    text = "".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", "")) for o in outputs)
    assert "as submitted" in text and "PairedEmbeddings(4500 captions" in text
    assert any("image/png" in o.get("data", {}) for o in outputs)  # the figure shows inline
    assert (tmp_path / "runs" / "notebook-submission" / "README.md").exists()  # the run's model card


def test_the_cli_reference_is_the_parser_s_own_help():
    done = subprocess.run([sys.executable, str(ROOT / "docs" / "cli_reference.py"), "--check"], capture_output=True)
    assert done.returncode == 0, "docs/reference/cli.md is stale: run python docs/cli_reference.py"


def _mkdocs_build(folder: Path, site: Path) -> subprocess.CompletedProcess:
    """``mkdocs build --strict`` of the project in ``folder``. Not ``-q``: quiet mode drops the warnings
    before strict mode counts them, so a broken link would pass."""
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )


def test_the_documentation_site_builds_strictly(tmp_path):
    pytest.importorskip("mkdocs", reason="mkdocs is not installed: pip install 'stitch[docs]'")
    pytest.importorskip("mkdocstrings", reason="mkdocstrings is not installed: pip install 'stitch[docs]'")
    done = _mkdocs_build(ROOT, tmp_path / "site")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "WARNING" not in done.stderr, done.stderr[-3000:]
    api_page = (tmp_path / "site" / "reference" / "api" / "index.html").read_text()
    assert "<code>Run</code>" in api_page and ":class:" not in api_page and ":func:" not in api_page


def test_the_strict_build_fails_on_a_broken_link(tmp_path):
    """A copy of the site builds; the same copy with one link to a page that does not exist does not, and
    the error names the missing target."""
    pytest.importorskip("mkdocs", reason="mkdocs is not installed: pip install 'stitch[docs]'")
    pytest.importorskip("mkdocstrings", reason="mkdocstrings is not installed: pip install 'stitch[docs]'")
    copy = tmp_path / "project"
    shutil.copytree(ROOT / "docs", copy / "docs")
    shutil.copy(ROOT / "mkdocs.yml", copy / "mkdocs.yml")
    intact = _mkdocs_build(copy, tmp_path / "intact")
    assert intact.returncode == 0, intact.stderr[-3000:]
    assert (tmp_path / "intact" / "guide" / "usage" / "index.html").exists()

    page = copy / "docs" / "guide" / "usage.md"
    page.write_text(page.read_text() + "\nSee [the missing page](no-such-page.md).\n")
    broken = _mkdocs_build(copy, tmp_path / "broken")
    assert broken.returncode != 0, "a link to a missing page passed the strict build"
    assert "guide/usage.md" in broken.stderr and "no-such-page.md" in broken.stderr, broken.stderr[-3000:]
    assert "Aborted with 1 warnings in strict mode" in broken.stdout + broken.stderr, broken.stderr[-3000:]


def test_no_page_speaks_of_how_the_project_is_made():
    """The product speaks of the product: no issue numbers or development narrative in what users read."""
    pages = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").rglob("*.md"))]
    words = ("issue 1", "issue 2", "session", " lent ", "tried this")
    found = [f"{p.name}: {w!r}" for p in pages for w in words if w in p.read_text().lower()]
    # in the source, "session" is ONNX Runtime's word; the rest must not appear
    sources = sorted((ROOT / "src").rglob("*.py"))
    found += [f"{p.name}: {w!r}" for p in sources for w in words[:2] + words[3:] if w in p.read_text().lower()]
    assert not found, found

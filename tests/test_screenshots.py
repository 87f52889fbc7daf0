"""The screenshots of the documentation: the site builds, the quickstart notebook runs, Chromium renders each
page and the executed notebook, the PNGs are real."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "docs" / "screenshots.py"
SITE_PAGES = ("site_home.png", "site_api.png", "site_cli.png", "site_examples.png")
NOTEBOOK_PNG = "notebook_quickstart.png"
# from stitch.train's docstring (src/stitch/api.py): the API page shows the docstrings, not only the names
TRAIN_DOCSTRING = "the folder holds everything to reopen it"


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory):
    if not shutil.which("chromium") or not shutil.which("chromedriver"):
        pytest.skip("Debian chromium and chromium-driver are not installed (.ci/run installs them)")
    pytest.importorskip("selenium", reason="selenium is not installed: pip install -e '.[test]'")
    pytest.importorskip("mkdocs", reason="mkdocs is not installed: pip install -e '.[docs]'")
    pytest.importorskip("mkdocstrings", reason="mkdocstrings is not installed: pip install -e '.[docs]'")
    pytest.importorskip("PIL", reason="Pillow is not installed: pip install pillow")
    for module in ("nbclient", "nbconvert", "ipykernel"):
        pytest.importorskip(module, reason=f"{module} is not installed: pip install -e '.[notebook]'")
    folder = tmp_path_factory.mktemp("screenshots")
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(folder / "images"), "--site", str(folder / "site")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return folder


def test_each_page_is_a_1280_pixel_wide_png_with_something_on_it(screenshots):
    from PIL import Image

    names = sorted(p.name for p in (screenshots / "images").glob("*.png"))
    assert set(names) == {*SITE_PAGES, NOTEBOOK_PNG}
    for name in names:
        with Image.open(screenshots / "images" / name) as image:
            assert image.format == "PNG" and image.width == 1280 and 0 < image.height <= 1400, name
            colours = image.convert("RGB").getcolors(maxcolors=1 << 16)
        assert colours is None or len(colours) > 16, f"{name} is (nearly) one colour: the page did not render"
        assert (screenshots / "images" / name).stat().st_size < 400_000, name


def test_the_api_page_shows_the_docstrings(screenshots):
    page = (screenshots / "site" / "reference" / "api" / "index.html").read_text(encoding="utf-8")
    assert TRAIN_DOCSTRING in page


def test_the_notebook_page_is_the_executed_notebook(screenshots):
    """What was screenshotted holds the notebook's outputs: the graded table's lines and the inline plot."""
    page = (screenshots / "site" / "_notebook_quickstart.html").read_text(encoding="utf-8")
    assert "stitch in a notebook" in page and "PairedEmbeddings(4500 captions" in page
    assert "as submitted  text-&gt;image, full, as submitted" in page  # the scorings table printed
    assert "data:image/png;base64," in page  # the training curve, inline


def test_the_committed_screenshots_are_pngs_of_the_same_width(screenshots):
    done = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (ROOT / "docs" / "images" / NOTEBOOK_PNG).exists()

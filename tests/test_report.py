"""The HTML report: self-contained, complete, and rendered with its images in headless Chromium."""

from __future__ import annotations

import re

import pytest

from browser import headless_chromium, save_screenshot
from conftest import FLICKR, SHARED, need
from stitch import api
from stitch.apps.cli import main


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    data = api.load(need(FLICKR))
    root = tmp_path_factory.mktemp("report")
    api.train(
        data,
        None,
        out=root / "run",
        progress=False,
        overrides=["optim.epochs=2", "model.hidden=256", "inference.bank_size=2000"],
    )
    out = root / "report.html"
    assert (
        main(
            [
                "report",
                "--run",
                str(root / "run"),
                "--data",
                str(FLICKR),
                "--images",
                str(SHARED / "data" / "flickr8k" / "images"),
                "--projection",
                "pca",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    return out


def test_report_has_every_section_and_no_external_resources(report):
    text = report.read_text()
    for heading in (
        "Retrieval",
        "Training curves",
        "Rank histogram",
        "Map of the scoring space",
        "Best queries",
        "Worst queries",
        "Config",
        "As submitted",
    ):
        assert f">{heading}<" in text, heading
    assert "as a grader scores a submission" in text  # the graded table names its scoring
    assert "gallery of 1000 images" in text and "99 seeded random" in text
    sources = re.findall(r"src='([^']*)'", text)
    assert len(sources) > 20 and all(s.startswith("data:image/") for s in sources)
    assert "class=true" in text  # the true image is marked in the grids
    assert main(["report", "--run", str(report.parent / "run"), "--data", str(FLICKR), "--out", str(report)]) == 2


def test_report_renders_in_headless_chromium(report):
    with headless_chromium(height=3000) as browser:
        browser.get(report.as_uri())
        loaded = browser.execute_script("return [...document.images].map(i => i.complete && i.naturalWidth > 0)")
        assert len(loaded) > 20 and all(loaded)
        assert save_screenshot(browser, "report.png").stat().st_size > 10_000

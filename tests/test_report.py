"""The HTML report: self-contained, complete, and rendered with its images in headless Chromium."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from conftest import FLICKR, SHARED, need
from stitch import api
from stitch.cli import main

ARTIFACTS = Path(__file__).parent / "artifacts"


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
    ):
        assert f">{heading}<" in text, heading
    assert "gallery of 1000 images" in text and "99 seeded random" in text
    sources = re.findall(r"src='([^']*)'", text)
    assert len(sources) > 20 and all(s.startswith("data:image/") for s in sources)
    assert "class=true" in text  # the true image is marked in the grids
    assert main(["report", "--run", str(report.parent / "run"), "--data", str(FLICKR), "--out", str(report)]) == 2


def test_report_renders_in_headless_chromium(report):
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver_path:
        pytest.skip("Debian chromium and chromium-driver are not installed (.ci/run installs them)")
    webdriver = pytest.importorskip("selenium.webdriver")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--window-size=1200,3000",
    ):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=webdriver.ChromeService(executable_path=driver_path), options=options)
    try:
        browser.get(report.as_uri())
        loaded = browser.execute_script("return [...document.images].map(i => i.complete && i.naturalWidth > 0)")
        assert len(loaded) > 20 and all(loaded)
        ARTIFACTS.mkdir(exist_ok=True)
        browser.save_screenshot(str(ARTIFACTS / "report.png"))
        assert (ARTIFACTS / "report.png").stat().st_size > 10_000
    finally:
        browser.quit()

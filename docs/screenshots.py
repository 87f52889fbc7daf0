"""Screenshots of the documentation as it renders: the site's pages and the quickstart notebook, as PNGs.

    python docs/screenshots.py                 # build the site, serve it locally, write docs/images/*.png
    python docs/screenshots.py --out DIR       # write the PNGs elsewhere (--site DIR keeps the built site)
    python docs/screenshots.py --check         # retake them in a temporary folder; the committed PNGs must
                                               # exist, be PNGs and have the same width (fonts differ across
                                               # machines, so the pixels are not compared)

Needs mkdocs with the ``[docs]`` extra, selenium and Debian's ``chromium`` and ``chromium-driver``. The
notebook is executed in a fresh kernel (nbclient, in a temporary folder; about 15 seconds) and rendered with
nbconvert (both in the ``[notebook]`` extra); without them its PNG is skipped, saying so, and ``--check``
fails. Each PNG is 1280 pixels wide, cut to the first 1400 pixels of the page and reduced to a 256-colour
palette.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "docs" / "images"
NOTEBOOK = ROOT / "notebooks" / "quickstart.ipynb"
WIDTH, HEIGHT = 1280, 1400
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# the site's pages: file name -> path under the site root
PAGES = {
    "site_home.png": "",
    "site_api.png": "reference/api/",
    "site_cli.png": "reference/cli/",
    "site_examples.png": "guide/examples/",
}
NOTEBOOK_IMAGE = "notebook_quickstart.png"
NOTEBOOK_TIMEOUT_S = 600  # per cell


class Missing(RuntimeError):
    """A tool the screenshots need is not installed."""


def build_site(site: Path) -> Path:
    """``mkdocs build --strict`` of this repository into ``site``."""
    try:
        import mkdocs  # noqa: F401
    except ImportError as error:
        raise Missing("mkdocs is not installed: pip install -e '.[docs]'") from error
    done = subprocess.run(  # not -q: quiet mode drops the warnings (broken links) before strict mode counts them
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    if done.returncode != 0:
        raise RuntimeError(f"mkdocs build failed:\n{done.stderr[-3000:]}")
    return site


def render_notebook(notebook: Path, html: Path) -> Path | None:
    """The notebook executed top to bottom in a fresh kernel (in a temporary folder, so its runs do not stay)
    and written as nbconvert's HTML page, outputs and figures included; None when nbconvert or nbclient is
    not installed."""
    try:
        import nbclient
        import nbconvert
        import nbformat
    except ImportError:
        return None
    node = nbformat.read(notebook, as_version=4)
    with tempfile.TemporaryDirectory() as scratch:
        resources = {"metadata": {"path": scratch}}
        nbclient.NotebookClient(node, timeout=NOTEBOOK_TIMEOUT_S, kernel_name="python3", resources=resources).execute()
    body, _ = nbconvert.HTMLExporter().from_notebook_node(node)
    html.write_text(body, encoding="utf-8")
    return html


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass


@contextmanager
def serve(folder: Path):
    """``folder`` served over HTTP on a free local port, in a thread; yields the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", _free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@contextmanager
def headless_chromium():
    """Debian's headless Chromium through selenium, its viewport WIDTH x HEIGHT at one pixel per CSS pixel."""
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver_path:
        raise Missing("Debian chromium and chromium-driver are not installed")
    try:
        from selenium import webdriver
    except ImportError as error:
        raise Missing("selenium is not installed: pip install selenium") from error
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
        f"--window-size={WIDTH},{HEIGHT}",
    ):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=webdriver.ChromeService(executable_path=driver_path), options=options)
    try:  # the viewport itself WIDTH x HEIGHT (the window's size would include its frame)
        metrics = {"width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": False}
        browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
        yield browser
    finally:
        browser.quit()


def _shoot(browser, url: str, path: Path) -> Path:
    browser.get(url)
    browser.execute_script("return document.fonts ? document.fonts.ready.then(() => true) : true")
    browser.save_screenshot(str(path))
    _crop_and_optimise(path)
    return path


def _crop_and_optimise(path: Path) -> None:
    """Cut to WIDTH x at most HEIGHT pixels and store as a 256-colour palette PNG (when Pillow is there)."""
    try:
        from PIL import Image
    except ImportError:
        return
    with Image.open(path) as shot:
        image = shot.convert("RGB")
    if image.width != WIDTH or image.height > HEIGHT:
        image = image.crop((0, 0, min(WIDTH, image.width), min(HEIGHT, image.height)))
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def take(out: Path, site: Path | None = None) -> tuple[list[Path], list[str]]:
    """Build the site (into ``site``, or a temporary folder), serve it, and write the PNGs into ``out``.
    Returns the PNGs written and one line for each that was skipped."""
    out.mkdir(parents=True, exist_ok=True)
    written, skipped = [], []
    with tempfile.TemporaryDirectory() as scratch:
        site = build_site(site if site is not None else Path(scratch) / "site")
        notebook = render_notebook(NOTEBOOK, site / "_notebook_quickstart.html")
        with serve(site) as url, headless_chromium() as browser:
            for name, page in PAGES.items():
                if not (site / page / "index.html").is_file():  # a screenshot of a 404 page is no use
                    raise RuntimeError(f"the built site has no page {page or '/'} (mkdocs.yml's nav changed?)")
                written.append(_shoot(browser, url + page, out / name))
            if notebook is None:
                skipped.append(f"{NOTEBOOK_IMAGE}: nbconvert or nbclient is missing (pip install -e '.[notebook]')")
            else:
                written.append(_shoot(browser, url + notebook.name, out / NOTEBOOK_IMAGE))
    return written, skipped


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's header; ValueError when the file is not a PNG."""
    head = path.read_bytes()[:24]
    if len(head) < 24 or head[:8] != PNG_SIGNATURE or head[12:16] != b"IHDR":
        raise ValueError(f"{path} is not a PNG")
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def check(images: Path = IMAGES) -> list[str]:
    """Retake the screenshots in a temporary folder; what is wrong with the committed ones, one line each."""
    problems = []
    with tempfile.TemporaryDirectory() as scratch:
        fresh, skipped = take(Path(scratch))
        problems += [f"cannot retake {line}" for line in skipped]
        for path in fresh:
            committed = images / path.name
            shown = committed.relative_to(ROOT) if committed.is_relative_to(ROOT) else committed
            if not committed.exists():
                problems.append(f"{shown} is missing")
                continue
            try:
                width, _ = png_size(committed)
            except ValueError:
                problems.append(f"{shown} is not a PNG")
                continue
            if width != png_size(path)[0]:
                problems.append(f"{shown} is {width} px wide, not {png_size(path)[0]}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=IMAGES, help="folder for the PNGs (default docs/images)")
    parser.add_argument("--site", type=Path, help="build the site here and keep it (default: a temporary folder)")
    parser.add_argument("--check", action="store_true", help="verify the committed PNGs instead of writing them")
    args = parser.parse_args(argv)
    try:
        if args.check:
            problems = check(args.out)
            for line in problems:
                print(line, file=sys.stderr)
            if problems:
                print("the screenshots are stale: run python docs/screenshots.py", file=sys.stderr)
            return 1 if problems else 0
        written, skipped = take(args.out, args.site)
    except Missing as error:
        print(f"screenshots: {error}", file=sys.stderr)
        return 2
    for path in written:
        print(f"{path} ({path.stat().st_size // 1024} KB)")
    for line in skipped:
        print(f"skipped {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The example notebooks in examples/: each runs top to bottom on the real data in ../shared, shows what it
says it shows, stops at its guard without that data, and stays paired with its percent-format script."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest

from conftest import SHARED, need

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
NOTEBOOKS = ("competition_walkthrough", "search_service")


def _execute(name: str, workdir: Path, shared: Path):
    """Run ``examples/NAME.ipynb`` in a fresh kernel inside ``workdir`` (its runs go there), reading the data
    from ``shared``; the executed notebook and its text outputs, stdout and rich reprs."""
    nbformat = pytest.importorskip("nbformat", reason="nbformat is not installed: pip install 'stitch[notebook]'")
    nbclient = pytest.importorskip("nbclient", reason="nbclient is not installed: pip install 'stitch[notebook]'")
    notebook = nbformat.read(EXAMPLES / f"{name}.ipynb", as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("STITCH_SHARED", str(shared))  # the kernel inherits it: the notebook's data folder
        client.execute()
    return notebook, _text(notebook)


def _outputs(notebook) -> list:
    return [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]


def _text(notebook) -> str:
    parts = []
    for output in _outputs(notebook):
        if output.get("name") == "stdout":
            parts.append(output.get("text", ""))
        data = output.get("data", {})
        parts.append(str(data.get("text/plain", "")) + "\n" + str(data.get("text/html", "")) + "\n")
    return "".join(parts)


def _number(text: str, pattern: str) -> float:
    found = re.search(pattern, text)
    assert found, f"no line matching {pattern!r} in the notebook's output"
    return float(found.group(1))


def test_the_competition_walkthrough_grades_its_csv_to_the_printed_figure(tmp_path):
    """The AML sample: the submission CSV has the sample's layout, one row per test caption in order, and the
    dev CSV re-scored by hand (unit vector against unit raw image) gives the MRR@20 stitch printed."""
    need(SHARED / "formats" / "aml2025")
    notebook, text = _execute("competition_walkthrough", tmp_path, SHARED)

    printed = _number(text, r"graded MRR@20 from stitch\.evaluate: ([0-9.e-]+)")
    rescored = _number(text, r"re-scored MRR@20 from the CSV: +([0-9.e-]+)")
    assert rescored == pytest.approx(printed, abs=1e-6)
    random_mrr = 0.1  # MRR@20 of a random ranking of 48 images is about 0.075
    assert random_mrr < printed <= 1
    assert "the CSV grades to the figure stitch printed" in text
    assert "aml2025, as submitted (240 queries, gallery of 48 images)" in text  # the graded report, labelled
    assert "<table>" in text  # the report shows as a table

    with open(tmp_path / "runs" / "submission.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    test_ids = np.load(SHARED / "formats" / "aml2025" / "test.clean.npz")["captions/ids"]
    assert rows[0] == ["id", "embedding"] and [r[0] for r in rows[1:]] == [str(i) for i in test_ids]
    assert f"{len(test_ids)} rows (the sample shows the first 5), 1024 floats a row" in text
    assert (tmp_path / "runs" / "aml-submission" / "model.safetensors").exists()  # the run stayed in the workdir


def test_the_search_service_notebook_searches_shows_pictures_and_serves(tmp_path):
    """Flickr8k: a ridge run, a saved dev index, typed sentences searched, a grid of pictures, and the
    in-process service answering GET /search with 200 and k hits, the same the searcher found."""
    need(SHARED / "data" / "flickr8k" / "flickr8k.npz")
    for module in ("fastapi", "httpx", "sentence_transformers"):
        pytest.importorskip(module, reason=f"{module} is not installed: pip install -e '.[serve,encode]' httpx")
    notebook, text = _execute("search_service", tmp_path, SHARED)

    assert "text->image, full (5000 queries, gallery of 1000 images): R@1 0.120  MRR 0.235" in text
    assert "runs/flickr-dev-index: 1000 pictures, exact index" in text
    assert "cosine to the stored embeddings: [1. 1. 1.]" in text
    assert re.search(r"GET /search\?q='a dog runs on the beach'&k=5 -> 200, 5 hits", text)
    assert len(re.findall(r"^  [1-5]\. \S+\.jpg  0\.\d{3}  /images/\S+\.jpg$", text, flags=re.M)) == 5
    assert "-> 200, image/jpeg" in text  # the first hit's picture is served
    assert "the service answers as the searcher does" in text
    assert any("image/png" in o.get("data", {}) for o in _outputs(notebook))  # the grid of thumbnails
    assert (tmp_path / "runs" / "flickr-dev-index").is_dir()


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_without_the_shared_data_a_notebook_stops_at_its_guard(tmp_path, name):
    """No data: the guard cell stops the notebook with one line naming the missing folder; nothing after it runs."""
    pytest.importorskip("nbformat", reason="nbformat is not installed: pip install 'stitch[notebook]'")
    nbclient = pytest.importorskip("nbclient", reason="nbclient is not installed: pip install 'stitch[notebook]'")
    with pytest.raises(nbclient.exceptions.CellExecutionError) as stopped:
        _execute(name, tmp_path, tmp_path / "no-shared-folder")
    assert stopped.value.ename == "MissingData" and "is absent: this walkthrough needs" in stopped.value.evalue


def _script_cells(path: Path) -> list[tuple[str, str]]:
    """The cells of a jupytext percent script: ``(kind, source)``, markdown with its ``# `` prefixes removed."""
    lines = path.read_text().splitlines()
    if lines and lines[0] == "# ---":  # the YAML header jupytext keeps the notebook's metadata in
        lines = lines[lines.index("# ---", 1) + 1 :]
    cells: list[tuple[str, list[str]]] = []
    for line in lines:
        if line.startswith("# %%"):
            cells.append(("markdown" if "[markdown]" in line else "code", []))
        elif cells:
            kind, body = cells[-1]
            if kind == "markdown":
                line = "" if line == "#" else line.removeprefix("# ")
            body.append(line)
    return [(kind, "\n".join(body).strip("\n")) for kind, body in cells]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_each_notebook_is_its_percent_script(name):
    """examples/NAME.py is the notebook as a jupytext percent script (``jupytext --sync examples/*.ipynb``
    keeps them equal): the same cells, the same sources, so reviewing and linting the script covers the
    notebook."""
    nbformat = pytest.importorskip("nbformat", reason="nbformat is not installed: pip install 'stitch[notebook]'")
    notebook = nbformat.read(EXAMPLES / f"{name}.ipynb", as_version=4)
    script = EXAMPLES / f"{name}.py"
    assert notebook.metadata.get("jupytext", {}).get("formats") == "ipynb,py:percent"
    cells = [(cell.cell_type, cell.source) for cell in notebook.cells]
    assert cells == _script_cells(script)
    assert not any(cell.get("outputs") for cell in notebook.cells), "notebooks are kept without outputs"

"""The model card's "Scored on other data" section: ``stitch evaluate --update-card`` adds one row per data
file, split, protocol and scoring, replaces it when evaluated again, and leaves the rest of the card alone."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from conftest import write_flickr_like
from stitch.apps.cli import main
from stitch.retrieval.evaluate import DirectionReport
from stitch.training.card import SCORES_HEADING, add_scores
from stitch.training.run import RunError

SHOWN = ("recall@1", "recall@5", "recall@10", "mrr")


@pytest.fixture(scope="module")
def ridge_run(tmp_path_factory, small_data):
    """A ridge run trained by the CLI on a file with train, dev and test images."""
    folder = tmp_path_factory.mktemp("card")
    split = small_data.image_split.copy()
    split[np.flatnonzero(split == "dev")[:20]] = "test"
    data_file = write_flickr_like(folder / "data.npz", small_data, images__split=split)
    run = folder / "ridge"
    assert main(["train", "--data", str(data_file), "--out", str(run), "--recipe", "ridge", "--quiet"]) == 0
    return run, data_file


def _rows(card: str) -> list[list[str]]:
    section = card[card.index(f"\n{SCORES_HEADING}\n") :]
    lines = [line for line in section.splitlines() if line.startswith("| ")]
    assert lines[0].startswith("| data | split | protocol | scoring | queries | gallery | recall@1"), lines[0]
    return [[c.strip() for c in re.split(r"(?<!\\)\|", line[1:-1])] for line in lines[1:]]


def _evaluate(run, data_file, split, *extra, capsys) -> dict:
    argv = ["evaluate", "--run", str(run), "--data", str(data_file), "--split", split, "--json", "--update-card"]
    capsys.readouterr()
    assert main([*argv, *extra]) == 0
    return json.loads(capsys.readouterr().out)


def test_update_card_adds_one_row_per_data_split_protocol_and_scoring(ridge_run, capsys):
    run, data_file = ridge_run
    card = run / "README.md"
    own_part = card.read_text()
    assert SCORES_HEADING not in own_part

    first = _evaluate(run, data_file, "dev", capsys=capsys)
    again = _evaluate(run, data_file, "dev", capsys=capsys)
    text = card.read_text()
    assert text.startswith(own_part)  # the card's own part is kept as it was
    (row,) = _rows(text)  # evaluated twice: still one row
    assert row[:4] == [str(data_file), "dev", "full", "cosine"]
    assert row[4:6] == [str(first["queries"]), f"{first['gallery']} images"]
    assert row[6:] == [f"{first[k]:.4f}" for k in SHOWN] == [f"{again[k]:.4f}" for k in SHOWN]

    test = _evaluate(run, data_file, "test", capsys=capsys)
    rows = _rows(card.read_text())
    assert [r[1] for r in rows] == ["dev", "test"]
    assert rows[1][6:] == [f"{test[k]:.4f}" for k in SHOWN]
    assert test["gallery"] == 20 and rows[1][5] == "20 images"

    graded = _evaluate(run, data_file, "dev", "--as-submitted", capsys=capsys)
    rows = _rows(card.read_text())
    assert [(r[1], r[3]) for r in rows] == [("dev", "cosine"), ("test", "cosine"), ("dev", "as submitted")]
    assert rows[2][6:] == [f"{graded[k]:.4f}" for k in SHOWN]
    assert card.read_text().startswith(own_part)
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]  # written atomically, nothing left


def test_update_card_says_where_it_wrote(ridge_run, capsys):
    run, data_file = ridge_run
    argv = ["evaluate", "--run", str(run), "--data", str(data_file), "--split", "dev", "--update-card"]
    capsys.readouterr()
    assert main(argv) == 0
    assert f"model card updated: {run / 'README.md'}" in capsys.readouterr().out


def _report(mrr: float) -> DirectionReport:
    metrics = {"recall@1": 0.1, "recall@5": 0.2, "recall@10": 0.3, "mrr": mrr}
    return DirectionReport("full+isoftmax", "text->image", 50, 250, metrics, {})


def test_a_folder_stitch_did_not_train_is_refused(tmp_path):
    (tmp_path / "README.md").write_text("# someone's notes\n")
    with pytest.raises(RunError, match="config.json"):
        add_scores(tmp_path, "data.npz", "dev", [_report(0.5)])
    assert (tmp_path / "README.md").read_text() == "# someone's notes\n"


def test_a_card_that_is_a_link_is_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "elsewhere.md").write_text("# not the card\n")
    (tmp_path / "README.md").symlink_to(tmp_path / "elsewhere.md")
    with pytest.raises(RunError, match="not a plain file"):
        add_scores(tmp_path, "data.npz", "dev", [_report(0.5)])
    assert (tmp_path / "elsewhere.md").read_text() == "# not the card\n"


def test_rows_round_trip_and_later_sections_are_kept(tmp_path):
    """A path with a ``|`` stays one cell and is matched again; a section after the scores stays after them."""
    (tmp_path / "config.json").write_text("{}")
    card = tmp_path / "README.md"
    card.write_text("# stitch run: x\n\nown text\n")
    add_scores(tmp_path, "odd|name.npz", None, [_report(0.5)])
    card.write_text(card.read_text() + "\n## Notes\n\nkept\n")
    add_scores(tmp_path, "odd|name.npz", None, [_report(0.25)], merged_texts=False)
    add_scores(tmp_path, "odd|name.npz", None, [_report(0.75)], merged_texts=True)
    text = card.read_text()
    assert text.startswith("# stitch run: x\n\nown text\n\n## Scored on other data\n")
    assert text.endswith("\n## Notes\n\nkept\n")
    rows = _rows(text)
    assert [(r[0], r[1], r[3], r[-1]) for r in rows] == [
        ("odd\\|name.npz", "every image", "isoftmax", "0.2500"),
        ("odd\\|name.npz", "every image", "isoftmax, identical texts merged", "0.7500"),
    ]


def test_the_aml2025_mrr_is_its_cut_form(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    metrics = {"recall@1": 0.1, "recall@5": 0.2, "recall@10": 0.3, "recall@20": 0.4, "mrr@20": 0.125}
    report = DirectionReport("aml2025", "text->image", 50, 250, metrics, {}, scoring="as submitted")
    add_scores(tmp_path, "data.npz", "dev", [report])
    (row,) = _rows((tmp_path / "README.md").read_text())
    assert row == [
        "data.npz",
        "dev",
        "aml2025",
        "as submitted",
        "250",
        "50 images",
        "0.1000",
        "0.2000",
        "0.3000",
        "0.1250",
    ]
    assert (tmp_path / "README.md").read_text().startswith("# stitch run: ")  # a folder without a card gets one

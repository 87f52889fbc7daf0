"""A run folder's model card (``README.md``): what the run is, what it scored under which protocol, how to use.

A colleague without stitch at hand can read what a folder holds, as a sentence-transformers model folder
says what it is. The figures are the final dev tables the trainer printed, each named with its protocol;
``stitch evaluate --update-card`` adds a section of figures on other data (:func:`add_scores`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from stitch.io.atomic import atomic_write_text
from stitch.retrieval.evaluate import DirectionReport, describe_protocol
from stitch.training.run import CARD, CONFIG, Run, RunError

SHOWN = ("recall@1", "recall@5", "recall@10", "mrr")


def card_text(run: Run, reports: list[DirectionReport], plain: dict, graded: DirectionReport | None, how: str) -> str:
    """The card's Markdown."""
    config, head = run.config, reports[0]
    rows = [_row(f"own scoring ({head.protocol})", head.metrics)]
    if head.protocol != "full":
        rows.append(_row("plain cosine in the run's space", plain))
    if graded is not None:
        rows.append(_row("as submitted (a grader's cosine with raw images)", graded.metrics))
    submit = (
        "`stitch predict --run THIS --queries test.npz --out submission.csv` writes one vector per caption; "
        + ("a grader ranks it exactly as the model does." if run.model.exact_submission else
           "it is the direction closest to the model's own ranking (approximate for this model kind).")
        if run.model.has_image_space
        else "This model kind scores in a learnt shared space: it has no image-space vector to submit or export."
    )  # fmt: skip
    lines = [
        f"# stitch run: {run.name}",
        "",
        f"A `{config.model.name}` model translating {run.info.text_dim}-d captions for "
        f"{run.info.image_dim}-d images, trained with the `{config.loss.name}` loss; it scores with "
        f"`{config.inference.rerank}` by default. Data: {run.info.meta.get('data') or 'in memory'}; split: {how}.",
        "",
        f"Dev, {describe_protocol('full', head.gallery, head.gallery_kind)} ({head.queries} queries):",
        "",
        "| scoring | " + " | ".join(SHOWN) + " |",
        "|---|" + "---|" * len(SHOWN),
        *rows,
        "",
        *_self_learning(run.info.meta.get("self_learning")),
        "## Use it",
        "",
        "```bash",
        "stitch evaluate --run THIS --data DATA --split dev        # the tables above, on your data",
        "stitch search --run THIS --index-dir INDEX --queries QUERIES",
        "```",
        "",
        submit,
        "",
        "```python",
        "import stitch",
        "run = stitch.open('THIS')        # Run: .model .config .metrics .scorer()",
        "```",
        "",
        "Files: `model.safetensors` (weights), `config.json` (the full config, dimensions, split), `metrics.csv`",
        "(one row per epoch, after one per self-learning round when trained with unpaired pools), `summary.json`,",
        "`bank.safetensors` (training captions for hubness-aware scoring).",
        "Weights are safetensors, configs JSON; `checkpoint.pt` (resume state) loads with `weights_only=True`,",
        "so opening the folder runs no code from it.",
        "",
    ]
    return "\n".join(lines).replace("THIS", str(run.path) if run.path is not None else "RUN")


def _row(name: str, metrics: dict) -> str:
    return f"| {name} | " + " | ".join(_figure(metrics, k) for k in SHOWN) + " |"


def _self_learning(record: dict | None) -> list[str]:
    """The pools a run drew pseudo-pairs from, each round's count and precision, and for a learnt recipe how
    many pseudo-pairs joined its batches at which weight."""
    if not record:
        return []
    lines = [f"Self-learning on {record['pools']}; pseudo-pairs per round:", "", "| round | pseudo-pairs | precision |"]
    lines.append("|---|---|---|")
    for row in record["rounds"][1:]:
        known = row["precision"] is not None
        precision = f"{row['precision']:.3f}" if known else "unknown (the pools' links are not known)"
        lines.append(f"| {row['round']} | {row['pseudo_pairs']} | {precision} |")
    batches = record.get("in_batches")
    if batches:
        lines += ["", f"The last round's {batches['pseudo_pairs']} pseudo-pairs joined the training batches, each "
                  f"weighted {batches['weight']:g} against a pair; the network started from the closed-form map "
                  "of the pairs and those pseudo-pairs."]  # fmt: skip
    return [*lines, ""]


SCORES_HEADING = "## Scored on other data"
_CELL_SPLIT = re.compile(r"(?<!\\)\|")


def add_scores(
    run_path: str | Path, data: str, split: str | None, reports: list[DirectionReport], merged_texts: bool = False
) -> Path:
    """Add the text->image figures of ``reports`` (one :func:`stitch.evaluate` call on ``data``, the path as
    given, and ``split``, None for every image) to the run folder's model card, under "Scored on other data".

    One row per (data, split, protocol, scoring): evaluating the same again replaces its row, in place. The
    rest of the card is kept as it is; the card is written atomically. Only a folder stitch trained (it
    holds ``config.json``) takes the section; a card that is a link is refused. Returns the card's path.
    """
    folder = Path(run_path)
    if not (folder / CONFIG).is_file():
        raise RunError(f"{folder} has no {CONFIG}: not a run folder stitch trained, so its card is not updated")
    card = folder / CARD
    if card.is_symlink() or (card.exists() and not card.is_file()):
        raise RunError(f"{card} is not a plain file: the card is not updated")
    text = card.read_text(encoding="utf-8") if card.exists() else f"# stitch run: {folder.name}\n"
    head = reports[0]
    base, _, rerank = head.protocol.partition("+")
    scoring = head.scoring or rerank or "cosine"
    if merged_texts:
        scoring += ", identical texts merged"
    key = [_cell(c) for c in (os.path.normpath(data), split or "every image", base, scoring)]
    row = [*key, str(head.queries), f"{head.gallery} {head.gallery_kind}"]
    row += [_figure(head.metrics, k) for k in SHOWN]
    before, rows, after = _split_scores(text)
    for i, old in enumerate(rows):
        if old[:4] == key:
            rows[i] = row
            break
    else:
        rows.append(row)
    atomic_write_text(card, before + _scores_section(rows) + after)
    return card


def _figure(metrics: dict, key: str) -> str:
    """``metrics[key]``, or the protocol's cut form of it (aml2025 reports ``mrr@20``), to four places."""
    cut = [name for name in metrics if name.startswith(f"{key}@")] if key == "mrr" else []
    name = key if key in metrics else (cut[0] if cut else None)
    return "" if name is None else f"{metrics[name]:.4f}"


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _split_scores(text: str) -> tuple[str, list[list[str]], str]:
    """The card before the scores section, the section's rows (cells as written) and the card after it."""
    start = text.find(f"\n{SCORES_HEADING}\n")
    if start == -1:
        gap = "" if text.endswith("\n\n") else "\n" if text.endswith("\n") else "\n\n"  # a blank line, then it
        return text + gap, [], ""
    end = text.find("\n## ", start + len(SCORES_HEADING) + 2)
    section, after = (text[start:], "") if end == -1 else (text[start:end], text[end:])
    rows = []
    for line in section.splitlines()[1:]:
        if line.startswith("| ") and line.endswith(" |"):
            cells = [c.strip() for c in _CELL_SPLIT.split(line[1:-1])]
            if len(cells) == 6 + len(SHOWN) and cells[:2] != ["data", "split"]:
                rows.append(cells)
    return text[: start + 1], rows, after


def _scores_section(rows: list[list[str]]) -> str:
    header = ["data", "split", "protocol", "scoring", "queries", "gallery", *SHOWN]
    return "\n".join(
        [
            SCORES_HEADING,
            "",
            "Text->image figures of `stitch evaluate --update-card`, one row per data file, split, protocol and\n"
            "scoring (evaluating the same again replaces its row; under aml2025 the MRR is cut at rank 20):",
            "",
            "| " + " | ".join(header) + " |",
            "|---" * len(header) + "|",
            *("| " + " | ".join(cells) + " |" for cells in rows),
            "",
        ]
    )

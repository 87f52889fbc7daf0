"""A run folder's model card (``README.md``): what the run is, what it scored under which protocol, how to use.

A colleague without stitch at hand can read what a folder holds, as a sentence-transformers model folder
says what it is. The figures are the final dev tables the trainer printed, each named with its protocol.
"""

from __future__ import annotations

from stitch.retrieval.evaluate import DirectionReport, describe_protocol
from stitch.training.run import Run

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
        "(one row per epoch), `summary.json`, `bank.safetensors` (training captions for hubness-aware scoring).",
        "Weights are safetensors, configs JSON; `checkpoint.pt` (resume state) loads with `weights_only=True`,",
        "so opening the folder runs no code from it.",
        "",
    ]
    return "\n".join(lines).replace("THIS", str(run.path) if run.path is not None else "RUN")


def _row(name: str, metrics: dict) -> str:
    return f"| {name} | " + " | ".join(f"{metrics[k]:.4f}" if k in metrics else "" for k in SHOWN) + " |"


def _self_learning(record: dict | None) -> list[str]:
    """The pools a self-learning run drew pseudo-pairs from, and each round's count and precision."""
    if not record:
        return []
    lines = [f"Self-learning on {record['pools']}; pseudo-pairs per round:", "", "| round | pseudo-pairs | precision |"]
    lines.append("|---|---|---|")
    for row in record["rounds"][1:]:
        known = row["precision"] is not None
        precision = f"{row['precision']:.3f}" if known else "unknown (the pools' links are not known)"
        lines.append(f"| {row['round']} | {row['pseudo_pairs']} | {precision} |")
    return [*lines, ""]

"""Leaderboard files: markdown and CSV tables with protocol and gallery size, and a bar plot."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from stitch.io.atomic import atomic_write, atomic_write_text
from stitch.outputs.plots import new_figure

COLUMNS = (
    "method",
    "reference",
    "R@1",
    "R@5",
    "R@10",
    "MRR",
    "R@1 +IS",
    "MRR +IS",
    "R@1 submitted",
    "MRR submitted",
    "train_s",
)


def to_markdown(rows: list[dict], protocol: str) -> str:
    lines = [
        f"Protocol: {protocol}. `+IS`: the same run scored with inverted softmax at its learnt temperature "
        "(query bank: training captions). `submitted`: what a competition grader gives the run's `stitch predict` "
        "vectors (cosine with the raw image embeddings); empty for runs that cannot be submitted.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for row in rows:
        cells = [_cell(row.get(c, ""), c) for c in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _cell(value, column: str) -> str:
    return f"{value:.3f}" if isinstance(value, float) and column != "train_s" else str(value)


def to_csv(rows: list[dict], protocol: str) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[*COLUMNS, "protocol", "gallery", "queries"], extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({**row, "protocol": protocol})
    return buffer.getvalue()


def bar_plot(rows: list[dict], path: Path, title: str) -> None:
    names = [r["method"] for r in rows][::-1]
    plain = [r["MRR"] for r in rows][::-1]
    rescored = [r["MRR +IS"] for r in rows][::-1]
    fig = new_figure(figsize=(8, 0.45 * len(rows) + 1.2))
    ax = fig.subplots()
    ys = range(len(names))
    ax.barh([y + 0.2 for y in ys], plain, height=0.4, label="cosine", color="#4c72b0")
    ax.barh([y - 0.2 for y in ys], rescored, height=0.4, label="+ inverted softmax", color="#dd8452")
    ax.set_yticks(list(ys), names)
    ax.set_xlabel("MRR")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="lower right")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))


def write_leaderboard(rows: list[dict], out_dir: Path, protocol: str) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "markdown": out_dir / "leaderboard.md",
        "csv": out_dir / "leaderboard.csv",
        "plot": out_dir / "leaderboard.png",
    }
    atomic_write_text(paths["markdown"], to_markdown(rows, protocol))
    atomic_write_text(paths["csv"], to_csv(rows, protocol))
    bar_plot(rows, paths["plot"], protocol)
    return paths

"""``stitch report``: one self-contained HTML page showing what a run learned.

The config; metric tables for both protocols and directions; training curves (loss, dev MRR,
temperature); for a run trained with unpaired pools, its pseudo-pairs and their precision per
self-learning round; the rank histogram; a t-SNE/PCA map of translated captions against images; and, with a
thumbnail folder, retrieval grids for the best and the worst queries with the true image marked.
Figures and thumbnails are embedded as data URIs, so the file can be mailed or opened offline.
"""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stitch.io.atomic import atomic_write_text, ensure_writable, safe_member
from stitch.io.progress import Steps

STYLE = """
body{font-family:system-ui,sans-serif;margin:0 auto;max-width:1100px;padding:0 24px 48px;color:#222}
h1{margin-top:28px}h2{border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:36px}
table{border-collapse:collapse;margin:8px 0 16px}td,th{border:1px solid #ddd;padding:4px 10px;text-align:right}
th:first-child,td:first-child{text-align:left}caption{text-align:left;font-weight:600;padding:4px 0}
pre{background:#f6f6f4;padding:12px;overflow:auto;font-size:12px}img.fig{max-width:100%}
.grid{display:flex;gap:8px;align-items:flex-start;margin:6px 0 18px}.cap{font-size:14px;margin:10px 0 4px}
.cell{width:150px;font-size:11px;text-align:center}
.cell img{width:150px;height:110px;object-fit:cover;border:3px solid #fff}
.cell img.true{border-color:#2a9d3a}.muted{color:#777;font-size:13px}
"""


def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _thumb(folder: Path, name: str) -> str | None:
    """A small JPEG data URI of ``folder/name``; names from data files are checked like the service does."""
    from PIL import Image

    try:
        path = safe_member(folder, name)
    except ValueError:
        return None
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            im.thumbnail((220, 220))
            buffer = io.BytesIO()
            im.save(buffer, format="JPEG", quality=80)
    except (OSError, ValueError):
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def _metrics_table(reports) -> str:
    from stitch.retrieval.evaluate import describe_protocol

    keys = ["recall@1", "recall@5", "recall@10", "recall@50", "mrr", "ndcg@10", "median_rank", "mean_rank"]
    rows = []
    for r in reports:
        cells = "".join(f"<td>{r.metrics[k]:.4f}</td>" if k in r.metrics else "<td></td>" for k in keys)
        protocol = html.escape(describe_protocol(r.protocol, r.gallery, r.gallery_kind, r.scoring))
        label = f"{r.direction}<br><span class=muted>{protocol}; {r.queries} queries</span>"
        rows.append(f"<tr><td>{label}</td>{cells}</tr>")
        rand = "".join(f"<td>{r.random[k]:.4f}</td>" if k in r.random else "<td></td>" for k in keys)
        rows.append(f"<tr class=muted><td>random</td>{rand}</tr>")
    head = "".join(f"<th>{k}</th>" for k in keys)
    return f"<table><tr><th>direction, protocol</th>{head}</tr>{''.join(rows)}</table>"


def _rounds(rows: list[dict]) -> str | None:
    """The self-learning rounds of ``metrics.csv``: a table of pseudo-pairs and precision per round and, with
    two or more rounds, a plot of both."""
    from stitch.training.run import round_rows_of

    rounds = round_rows_of(rows)
    if not rounds:
        return None
    cells = []
    for r in rounds:
        precision = r.get("pseudo_precision")
        shown = f"{precision:.4f}" if isinstance(precision, (int, float)) else "unknown"
        cells.append(f"<tr><td>{int(r['round'])}</td><td>{int(r['pseudo_pairs'])}</td><td>{shown}</td></tr>")
    table = f"<table><tr><th>round</th><th>pseudo-pairs</th><th>precision</th></tr>{''.join(cells)}</table>"
    note = (
        "<p class=muted>Precision: the share of a round's pseudo-pairs whose image is the caption's own, known "
        "only when both pools come from one paired file (never used to fit). A learnt recipe trains on the last "
        "round's pseudo-pairs.</p>"
    )
    return "<h2>Pseudo-pairs per self-learning round</h2>" + table + note + _rounds_plot(rounds)


def _rounds_plot(rounds: list[dict]) -> str:
    if len(rounds) < 2:
        return ""
    from stitch.outputs.plots import new_figure

    fig = new_figure(figsize=(6.8, 2.8))
    left, right = fig.subplots(1, 2)
    numbers = [int(r["round"]) for r in rounds]
    left.plot(numbers, [r["pseudo_pairs"] for r in rounds], marker="o")
    left.set_title("pseudo-pairs", fontsize=10)
    known = [(n, r["pseudo_precision"]) for n, r in zip(numbers, rounds) if r.get("pseudo_precision") is not None]
    if known:
        right.plot(*zip(*known), marker="o", color="#dd8452")
    right.set_title("precision" if known else "precision (unknown)", fontsize=10)
    for ax in (left, right):
        ax.set_xlabel("round")
    fig.tight_layout()
    return f"<img class=fig src='{_png(fig)}' alt='pseudo-pairs and precision per round'>"


def _curves(rows: list[dict]) -> str | None:
    from stitch.training.run import epoch_rows

    history = epoch_rows(rows)
    if not history or all(r.get("train_loss") in (None, "") for r in history):
        return None
    from stitch.outputs.plots import new_figure
    from stitch.training.callbacks import SCORED_MRR_PREFIX, scored_mrr_key

    keys = [k for k in ("train_loss", "dev_mrr", "dev_recall@1", "temperature") if k in history[0]]
    fig = new_figure(figsize=(3.4 * len(keys), 2.8))
    axes = fig.subplots(1, len(keys))
    axes = np.atleast_1d(axes)
    epochs = [int(r["epoch"]) for r in history]
    scored = scored_mrr_key(history[0])  # dev MRR under the run's own scoring
    for ax, key in zip(axes, keys):
        ax.plot(epochs, [float(r[key]) for r in history], marker="o", markersize=3, label="cosine")
        if key == "dev_mrr" and scored:
            label = scored[len(SCORED_MRR_PREFIX) :]
            ax.plot(epochs, [float(r[scored]) for r in history], marker="o", markersize=3, label=label)
            ax.legend(fontsize=8)
        ax.set_title(key, fontsize=10)
        ax.set_xlabel("epoch")
    fig.tight_layout()
    return _png(fig)


def _rank_histogram(ranks: np.ndarray, gallery: int) -> str:
    from stitch.outputs.plots import new_figure

    fig = new_figure(figsize=(6.5, 2.8))
    ax = fig.subplots()
    bins = np.unique(np.geomspace(1, gallery + 1, 30).astype(int))
    ax.hist(ranks, bins=bins, color="#4c72b0")
    ax.set_xscale("log")
    ax.set_xlabel("rank of the true image (log scale)")
    ax.set_ylabel("queries")
    ax.set_title(f"text->image ranks, gallery {gallery}", fontsize=10)
    fig.tight_layout()
    return _png(fig)


def _map(queries: np.ndarray, gallery: np.ndarray, projection: str, seed: int) -> str:
    from stitch.outputs.plots import new_figure, project_2d

    points = project_2d(np.concatenate([queries, gallery]), projection, seed)
    fig = new_figure(figsize=(6.5, 5.5))
    ax = fig.subplots()
    ax.scatter(points[len(queries) :, 0], points[len(queries) :, 1], s=10, c="#dd8452", label="images", alpha=0.7)
    ax.scatter(
        points[: len(queries), 0], points[: len(queries), 1], s=6, c="#4c72b0", label="translated captions", alpha=0.6
    )
    ax.legend(frameon=False)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"{projection.upper()} of the scoring space", fontsize=10)
    return _png(fig)


def _grids(title: str, rows: np.ndarray, ranks, topk, texts, names, relevant: list, images_dir: Path) -> str:
    """Each query's top k; every relevant image is framed green, and the best-ranked one is added after the
    top k when none made it."""
    parts = [f"<h3>{html.escape(title)}</h3>"]
    for row in rows:
        items, best = relevant[row]
        text = html.escape(str(texts[row])) if texts is not None else f"query {row}"
        what = "true image" if len(items) == 1 else f"first of {len(items)} relevant images"
        parts.append(f"<div class=cap>“{text}” — {what} at rank {int(ranks[row])}</div><div class=grid>")
        shown = list(topk[row])
        if not set(items) & set(shown):
            shown.append(best)
        for position, item in enumerate(shown):
            uri = _thumb(images_dir, str(names[item]))
            mark = " class=true" if item in items else ""
            label = f"#{position + 1}" if position < len(topk[row]) else f"true (#{int(ranks[row])})"
            img = f"<img{mark} src='{uri}' alt='{html.escape(str(names[item]))}'>" if uri else "(missing)"
            parts.append(f"<div class=cell>{img}<br>{label}</div>")
        parts.append("</div>")
    return "".join(parts)


def _reports(q, g, target, scorer) -> tuple[list, list, list]:
    """The run's own table, plain cosine beside it when it rescores, and kaggle100 where it applies."""
    from stitch.retrieval.evaluate import evaluate_embeddings

    own = evaluate_embeddings(q, g, target.relevant, scorer=scorer)
    plain = evaluate_embeddings(q, g, target.relevant, scorer=scorer.plain()) if scorer.rescorer else []
    single = target.n_images >= 100 and target.relevance is None  # kaggle100 has one true item per query
    kaggle = evaluate_embeddings(q, g, target.relevant, "kaggle100", scorer=scorer) if single else []
    return own, plain, kaggle


def _first_ranks(q_s, g_s, target, scorer) -> np.ndarray:
    """Rank of each caption's first relevant image under the run's scoring (the histogram's values)."""
    from stitch.retrieval.evaluate import text_to_image_link_ranks
    from stitch.retrieval.metrics import first_ranks
    from stitch.retrieval.ranks import DEFAULT_CHUNK

    links = text_to_image_link_ranks(q_s, g_s, target.relevant, DEFAULT_CHUNK, scorer.similarity, scorer.adjust)
    return first_ranks(links, target.relevant)


@dataclass(frozen=True)
class ReportOptions:
    """What the page shows: the split scored (None: all the data), the images folder of the example grids
    (None: no grids), how many examples with how many retrieved images each, and the 2-D map's projection
    and seed."""

    split: str | None = "dev"
    images_dir: str | Path | None = None
    projection: str = "tsne"
    n_examples: int = 4
    k: int = 5
    seed: int = 0
    progress: bool = True  # a line (or a bar) per step: scoring, as submitted, curves, map, examples


def build_report(
    run,
    data_path: str | Path,
    out: str | Path,
    options: ReportOptions | None = None,
    force: bool = False,
    **settings: Any,
) -> Path:
    """One self-contained HTML page of a run on ``data_path`` (or its split), under the run's own scoring:
    the tables, histogram, map and example grids all come from one fitted :class:`Scorer`. ``settings`` are
    :class:`ReportOptions`' fields by name (``split="test"``), applied over ``options``."""
    from stitch import api

    options = replace(options or ReportOptions(), **settings)
    split, images_dir = options.split, options.images_dir

    opened = api.open(run)  # before anything is written: a bad run leaves no half-made output
    out = ensure_writable(out, force)
    step = Steps("report", 5 if images_dir is not None else 4, options.progress)
    data = api.load(data_path)
    target = data.select(split)
    step(f"scoring {target.n_captions} captions against {target.n_images} images")
    scorer = opened.scorer()
    q, g = scorer.embed_queries(target.captions), scorer.embed_gallery(target.images)
    scorer.fit(g)
    own, plain, kaggle = _reports(q, g, target, scorer)
    q_s, g_s = scorer.prepare_queries(q), scorer.prepare_gallery(g)
    ranks = _first_ranks(q_s, g_s, target, scorer)
    title = html.escape(opened.name)
    step("as submitted, as a grader scores it")
    sections = [
        f"<h1>stitch report — {title}</h1>",
        f"<p class=muted>data {html.escape(str(data_path))}, split {html.escape(str(split))}: "
        f"{target.n_captions} captions, {target.n_images} images, scored with {html.escape(scorer.name)}. "
        "Ranks are pessimistic on ties.</p>",
        "<h2>Retrieval</h2>" + _metrics_table(own),
    ]
    if plain:
        sections.append("<p class=muted>The same run scored with plain cosine:</p>" + _metrics_table(plain[:1]))
    if kaggle:
        sections.append(_metrics_table(kaggle))
    sections.append(_submission_section(opened, data, split))
    step("training curves and rank histogram")
    sections += _training_sections(opened.metrics, ranks, target.n_images)
    step(f"map of the scoring space ({options.projection})")
    sections.append(_map_section(opened.model, q, g, target, options.projection, options.seed))
    if images_dir is not None and target.image_names is not None:
        step("retrieval examples")
        scores = torch.cat([scorer.scores(q_s[i : i + 1024], g_s) for i in range(0, len(q_s), 1024)])
        sections.append(_examples(scores, ranks, target, Path(images_dir), options.n_examples, options.k))
    sections.append(f"<h2>Config</h2><pre>{html.escape(json.dumps(opened.config.to_dict(), indent=2))}</pre>")
    page = (
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>stitch report — {title}"
        f"</title><style>{STYLE}</style></head><body>{''.join(sections)}</body></html>"
    )
    atomic_write_text(out, page)
    step.close()
    return out


def _training_sections(metrics: list[dict], ranks: np.ndarray, n_images: int) -> list[str]:
    """The training curves, the self-learning rounds (when the run had pools) and the rank histogram."""
    sections = []
    curves = _curves(metrics)
    if curves:
        sections.append(f"<h2>Training curves</h2><img class=fig src='{curves}' alt='training curves'>")
    rounds = _rounds(metrics)
    if rounds:
        sections.append(rounds)
    histogram = _rank_histogram(ranks, n_images)
    sections.append(f"<h2>Rank histogram</h2><img class=fig src='{histogram}' alt='rank histogram'>")
    return sections


def _submission_section(opened, data, split) -> str:
    """What a competition grader gives the run's submission (its `predict` vectors against the raw images),
    or why the run cannot be submitted."""
    from stitch import api

    if not opened.model.has_image_space:
        return "<h2>As submitted</h2><p class=muted>This run has no image-space predictions: it cannot be submitted."
    graded = api.evaluate(opened, data, split=split, as_submitted=True, allow_train_overlap=True)
    exact = "exactly" if opened.model.exact_submission else "as close as one vector can to how"
    note = f"<p class=muted><code>stitch predict</code> vectors scored as a grader scores them: they rank {exact} "
    note += "the model ranks.</p>"
    return "<h2>As submitted</h2>" + note + _metrics_table(graded)


def _map_section(model, q, g, target, projection: str, seed: int) -> str:
    rng = np.random.default_rng(seed)
    shown_images = np.sort(rng.choice(target.n_images, min(300, target.n_images), replace=False))
    caption_rows = np.flatnonzero(np.isin(target.caption_image, shown_images))[:600]
    flat_q = model.single_vector(q)
    figure = _map(flat_q[caption_rows].numpy(), g[shown_images].numpy(), projection, seed)
    return f"<h2>Map of the scoring space</h2><img class=fig src='{figure}' alt='map'>"


def _examples(scores: torch.Tensor, ranks: np.ndarray, target, images_dir: Path, n_examples: int, k: int) -> str:
    """Grids of the best (widest margin at rank 1) and the worst queries under the run's scoring."""
    topk = scores.topk(k, dim=1).indices.numpy()
    links = target.relevant
    best_relevant = _best_relevant(scores, links)
    true = scores.gather(1, torch.as_tensor(best_relevant)[:, None]).squeeze(1)
    margin = (true - scores.topk(2, dim=1).values[:, 1]).numpy()
    best = np.argsort(-np.where(ranks == 1, margin, -np.inf), kind="stable")[:n_examples]
    worst = np.argsort(-ranks, kind="stable")[:n_examples]
    relevant = {int(row): (links.row(row).tolist(), int(best_relevant[row])) for row in np.concatenate([best, worst])}
    texts, names = target.caption_texts, target.image_names
    return (
        "<h2>Retrieval examples</h2><p class=muted>Green border: a relevant image.</p>"
        + _grids("Best queries", best, ranks, topk, texts, names, relevant, images_dir)
        + _grids("Worst queries", worst, ranks, topk, texts, names, relevant, images_dir)
    )


def _best_relevant(scores: torch.Tensor, links) -> np.ndarray:
    """Per query, its relevant image with the highest score (the one whose rank the histogram shows)."""
    linked = scores[torch.as_tensor(links.link_queries), torch.as_tensor(links.items)].numpy()
    order = np.lexsort((-linked, links.link_queries))  # within each query, the highest score first
    return links.items[order][links.indptr[:-1]]

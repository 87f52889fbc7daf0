"""Retrieval evaluation under a named protocol, every figure labelled with gallery and query counts."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from stitch.data.relevance import Relevance
from stitch.errors import UsageError
from stitch.registries import PROTOCOLS
from stitch.retrieval.metrics import (
    random_baseline,
    random_baseline_relevance,
    random_truncated,
    rank_metrics,
    relevance_metrics,
    truncated_metrics,
)
from stitch.retrieval.ranks import (
    DEFAULT_CHUNK,
    check_chunk,
    cosine_ready,
    dot,
    image_to_text_link_ranks,
    relevant_ranks,
    sampled_candidate_ranks,
    text_to_image_ranks,
)
from stitch.retrieval.scorer import Scorer


@dataclass
class DirectionReport:
    """Metrics of one retrieval direction under one protocol."""

    protocol: str
    direction: str
    gallery: int
    queries: int
    metrics: dict[str, float]
    random: dict[str, float]
    gallery_kind: str = "images"
    train_overlap: int = 0  # evaluated queries that are training captions of the run (allowed knowingly)
    scoring: str = ""  # AS_SUBMITTED when the figures grade submitted vectors against raw images

    def label(self) -> str:
        scored = f", {self.scoring}" if self.scoring else ""
        return (
            f"{self.direction}, {self.protocol}{scored} ({self.queries} queries, gallery of {self.gallery} "
            f"{self.gallery_kind})"
        )

    def to_dict(self) -> dict:
        return asdict(self)

    def to_frame(self):
        """The figures as a pandas DataFrame (metric, model, random), named by the report's label."""
        try:
            import pandas as pd
        except ModuleNotFoundError as err:
            raise UsageError("to_frame needs pandas: pip install pandas") from err
        rows = [(key, value, self.random.get(key)) for key, value in self.metrics.items()]
        frame = pd.DataFrame(rows, columns=["metric", "model", "random"]).set_index("metric")
        frame.attrs["label"] = self.label()
        return frame

    def _repr_html_(self) -> str:
        """A notebook shows the report as a table under its protocol line."""
        import html

        described = describe_protocol(self.protocol, self.gallery, self.gallery_kind, self.scoring)
        cells = "".join(
            f"<tr><td>{html.escape(k)}</td><td>{v:.4f}</td><td>{_random_cell(self.random.get(k))}</td></tr>"
            for k, v in self.metrics.items()
        )
        return (
            f"<p><b>{html.escape(self.label())}</b>: {html.escape(described)}</p>"
            f"<table><tr><th>metric</th><th>model</th><th>random</th></tr>{cells}</table>"
        )


def _random_cell(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


AS_SUBMITTED = "as submitted"
"""The scoring of a grader: unit submitted vector against unit raw image embedding (``retrieval.graded``)."""


def describe_protocol(protocol: str, gallery: int, gallery_kind: str = "images", scoring: str = "") -> str:
    base, _, rerank = protocol.partition("+")
    cutoff = PROTOCOLS.tag(base, "cutoff", 0)
    if cutoff:
        text = f"whole gallery of {gallery} {gallery_kind}, recall@1/5/10/20 and MRR cut at rank {cutoff} (AML-2025)"
    elif base == "full":
        text = f"full gallery of {gallery} {gallery_kind}"
    else:
        text = f"true item + {PROTOCOLS.tag(base, 'candidates', 100) - 1} seeded random other {gallery_kind} (Kaggle)"
    if scoring == AS_SUBMITTED:
        return text + ", as a grader scores a submission: cosine of the submitted vector with the raw image"
    return text + (f", rescored with {rerank} (bank: training queries)" if rerank else ", cosine scores")


def text_to_image_link_ranks(q_s, g_s, relevance: Relevance, chunk: int, similarity, adjust) -> np.ndarray:
    """The pessimistic rank of every relevant item of every query (one per query: the fast path). Rows are
    independent (rescorers are fitted on the bank, not on the evaluated queries), so query shards can be
    ranked apart and their ranks concatenated."""
    if relevance.is_single:
        return text_to_image_ranks(q_s, g_s, relevance.items, chunk, similarity, adjust)
    return relevant_ranks(q_s, g_s, relevance, chunk, similarity, adjust)


def _text_to_image(q_s, g_s, relevance: Relevance, chunk: int, similarity, adjust) -> tuple[dict, dict]:
    """Metrics and chance level from the rank of every relevant item."""
    ranks = text_to_image_link_ranks(q_s, g_s, relevance, chunk, similarity, adjust)
    return relevance_metrics(ranks, relevance), random_baseline_relevance(relevance.counts, len(g_s))


def full_protocol(q, g, relevance: Relevance, scorer: Scorer | None, chunk: int, seed: int) -> list[DirectionReport]:
    """Every query against the whole gallery, both directions (image->text when every image has captions)."""
    tag = _tag("full", scorer)
    q_s, g_s, similarity, adjust = _prepared(q, g, scorer)
    t2i, random = _text_to_image(q_s, g_s, relevance, chunk, similarity, adjust)
    if relevance.is_single and (scorer is None or scorer.model.vectors_per_query == 1):
        true = g[torch.as_tensor(relevance.items, device=g.device)]
        t2i["mean_l2"] = float(torch.linalg.vector_norm(q.reshape(len(q), -1) - true, dim=1).mean())
    reports = [DirectionReport(tag, "text->image", len(g), len(q), t2i, random)]
    if len(np.unique(relevance.items)) == len(g):  # image->text needs every gallery image to have a caption
        reports.append(_image_to_text(q, g, relevance, chunk, similarity))
    return reports


def _image_to_text(q, g, relevance: Relevance, chunk: int, similarity) -> DirectionReport:
    """Each image against all captions, every caption relevant to it counting: hit@K (any in the top K)
    and recall@K (the share of them in the top K) differ here."""
    ranks, by_image = image_to_text_link_ranks(g, q, relevance, chunk, similarity)
    i2t, random = relevance_metrics(ranks, by_image), random_baseline_relevance(by_image.counts, len(q))
    return DirectionReport("full", "image->text", len(q), len(g), i2t, random, "captions")


def text_to_image_metrics(q, g, relevance: Relevance, scorer: Scorer, chunk: int = DEFAULT_CHUNK) -> dict[str, float]:
    """Text->image metrics over the full gallery under a fitted ``scorer`` (the trainer's dev metric)."""
    q_s, g_s = scorer.prepare_queries(q), scorer.prepare_gallery(g)
    return _text_to_image(q_s, g_s, as_relevance(relevance, len(g)), chunk, scorer.similarity, scorer.adjust)[0]


def kaggle_protocol(q, g, relevance: Relevance, scorer: Scorer | None, chunk: int, seed: int) -> list[DirectionReport]:
    """Each query against its true image plus 99 seeded random others (the AML competition)."""
    if not relevance.is_single:
        raise UsageError("kaggle100 draws one true item and 99 others: it needs one relevant item per query")
    n = PROTOCOLS.tag("kaggle100", "candidates")
    q_s, g_s, similarity, adjust = _prepared(q, g, scorer)
    ranks = sampled_candidate_ranks(q_s, g_s, relevance.items, n, seed, chunk, similarity, adjust)
    metrics = rank_metrics(ranks, ks=(1, 5, 10))
    return [
        DirectionReport(_tag("kaggle100", scorer), "text->image", n, len(q), metrics, random_baseline(n, (1, 5, 10)))
    ]


def aml2025_protocol(q, g, relevance: Relevance, scorer: Scorer | None, chunk: int, seed: int) -> list[DirectionReport]:
    """The AML-2025 Kaggle evaluation: every query against the whole gallery, recall@1/5/10/20 and MRR
    truncated at rank 20 (ties pessimistic)."""
    if not relevance.is_single:
        raise UsageError("aml2025 ranks one true image per query: it needs one relevant item per query")
    cutoff = PROTOCOLS.tag("aml2025", "cutoff")
    q_s, g_s, similarity, adjust = _prepared(q, g, scorer)
    ranks = text_to_image_ranks(q_s, g_s, relevance.items, chunk, similarity, adjust)
    ks = (1, 5, 10, 20)
    metrics, random = truncated_metrics(ranks, ks, cutoff), random_truncated(len(g), ks, cutoff)
    return [DirectionReport(_tag("aml2025", scorer), "text->image", len(g), len(q), metrics, random)]


def _prepared(q, g, scorer: Scorer | None):
    """``(queries, gallery, similarity, adjust)`` as ``scorer`` ranks them (plain cosine without one)."""
    if scorer is None:
        return q, g, dot, None
    return scorer.prepare_queries(q), scorer.prepare_gallery(g), scorer.similarity, scorer.adjust


def _tag(protocol: str, scorer: Scorer | None) -> str:
    return protocol if scorer is None or scorer.rescorer is None else f"{protocol}+{scorer.name}"


def as_relevance(relevance: Relevance | np.ndarray, n_gallery: int) -> Relevance:
    """A caption->image index (one relevant item per query) or a relation, as a relation."""
    return relevance if isinstance(relevance, Relevance) else Relevance.from_owner(relevance, n_gallery)


def evaluate_embeddings(
    queries: np.ndarray | torch.Tensor,
    gallery: np.ndarray | torch.Tensor,
    relevance: Relevance | np.ndarray,
    protocol: str = "full",
    chunk: int = DEFAULT_CHUNK,
    seed: int = 0,
    device: str | torch.device = "cpu",
    scorer: Scorer | None = None,
) -> list[DirectionReport]:
    """Metrics of query embeddings against gallery embeddings (both in the scoring space) under a protocol.

    Without a ``scorer`` the scores are cosines of single vectors. A fitted ``scorer`` supplies the model's
    similarity and its rescoring of text->image; image->text is always scored without rescoring.
    """
    run_protocol = PROTOCOLS.get(protocol, "protocol")
    check_chunk(chunk)
    q, g = cosine_ready(queries, device), cosine_ready(gallery, device)
    relevance = as_relevance(relevance, len(g))
    if relevance.n_queries != len(q) or relevance.n_items != len(g):
        raise UsageError(
            f"relevance relates {relevance.n_queries} queries to {relevance.n_items} items; got {len(q)} and {len(g)}"
        )
    if scorer is not None and not scorer.fitted:
        scorer.fit(g)
    return run_protocol(q, g, relevance, scorer, chunk, seed)


def format_reports(reports: list[DirectionReport]) -> str:
    """A plain-text table: one column per direction/protocol, baseline alongside."""
    keys = [f"{name}@{k}" for name in ("hit", "recall") for k in (1, 5, 10, 20, 50)]
    keys += ["mrr", "mrr@20", "ndcg@10", "map@10", "r_precision", "mean_recall", "median_rank", "mean_rank", "mean_l2"]
    lines = []
    for report in reports:
        shown = [k for k in keys if not _same_as_recall(report.metrics, k)]
        described = describe_protocol(report.protocol, report.gallery, report.gallery_kind, report.scoring)
        lines.append(f"{report.label()}: {described}")
        lines.append(f"  {'metric':<12} {'model':>10} {'random':>10}")
        for key in shown:
            if key in report.metrics:
                rand = report.random.get(key)
                rand_s = f"{rand:>10.4f}" if rand is not None else f"{'':>10}"
                lines.append(f"  {key:<12} {report.metrics[key]:>10.4f} {rand_s}")
        if any(k.startswith("hit@") for k in shown) and any(k.startswith("recall@") for k in shown):
            lines.append(RECALL_LEGEND)
    return "\n".join(lines)


# when a query has several relevant items (an image's captions), the two figures differ; say which is which
RECALL_LEGEND = (
    "  hit@K: share of queries with a relevant item in their top K (what is usually called recall@K); "
    "recall@K: share of each query's relevant items found in its top K"
)


SCORING_KEYS = ("recall@1", "recall@5", "recall@10", "mrr")


def format_scorings(reports: dict[str, DirectionReport], model=None) -> str:
    """One text->image table with a column per named scoring (``own``, ``cosine``, ``as submitted``), so what
    a submission keeps of the model is read in one place; ``model`` adds whether its submission is exact."""
    first = next(iter(reports.values()))
    names = {"own": f"own ({first.protocol.partition('+')[2] or 'cosine'})", "cosine": "cosine (run's space)"}
    header = "  " + f"{'metric':<10}" + "".join(f"{names.get(k, k):>22}" for k in reports)
    lines = [
        f"text->image by scoring, {first.protocol.partition('+')[0]} ({first.queries} queries, gallery of "
        f"{first.gallery} {first.gallery_kind}):",
        header,
    ]
    keys = [k for k in first.metrics if k in SCORING_KEYS or k.startswith("mrr@")]
    for key in keys:
        lines.append(
            "  " + f"{key:<10}" + "".join(f"{r.metrics.get(key, float('nan')):>22.4f}" for r in reports.values())
        )
    if AS_SUBMITTED not in reports:
        lines.append("  as submitted: this run has no image-space predictions (it cannot be submitted)")
    elif model is not None:
        exact = "exactly the model's cosine ranking" if model.exact_submission else "the closest one vector gets"
        lines.append(f"  as submitted = `stitch predict` vectors ranked by cosine with raw images: {exact}")
    return "\n".join(lines)


def _same_as_recall(metrics: dict[str, float], key: str) -> bool:
    """``hit@K`` rows are left out of a table where every hit@K equals recall@K (one relevant item)."""
    if not key.startswith("hit@"):
        return False
    hits = [k for k in metrics if k.startswith("hit@")]
    return all(metrics[k] == metrics.get("recall@" + k[4:]) for k in hits)


def summary_json(reports: list[DirectionReport]) -> dict:
    """One flat object for the first (text->image) report, the others nested under their label."""
    head = reports[0]
    out = {
        **head.metrics,
        "gallery": head.gallery,
        "queries": head.queries,
        "protocol": f"{head.direction}, "
        + describe_protocol(head.protocol, head.gallery, head.gallery_kind, head.scoring),
        "random": head.random,
    }
    for extra in reports[1:]:
        out[extra.direction] = {**extra.metrics, "gallery": extra.gallery, "queries": extra.queries}
    return out

"""Retrieval evaluation under a named protocol, every figure labelled with gallery and query counts."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from stitch.registries import PROTOCOLS
from stitch.retrieval.metrics import random_baseline, rank_metrics
from stitch.retrieval.ranks import (
    DEFAULT_CHUNK,
    check_chunk,
    cosine_ready,
    dot,
    image_to_text_ndcg,
    image_to_text_ranks,
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

    def label(self) -> str:
        return (
            f"{self.direction}, {self.protocol} ({self.queries} queries, gallery of {self.gallery} {self.gallery_kind})"
        )

    def to_dict(self) -> dict:
        return asdict(self)


def describe_protocol(protocol: str, gallery: int, gallery_kind: str = "images") -> str:
    base, _, rerank = protocol.partition("+")
    if base == "full":
        text = f"full gallery of {gallery} {gallery_kind}"
    else:
        text = f"true item + {PROTOCOLS.tag(base, 'candidates', 100) - 1} seeded random other {gallery_kind} (Kaggle)"
    return text + (f", rescored with {rerank} (bank: training queries)" if rerank else ", cosine scores")


def full_protocol(q, g, caption_image, scorer: Scorer | None, chunk: int, seed: int) -> list[DirectionReport]:
    """Every query against the whole gallery, both directions (image->text when every image has captions)."""
    similarity = dot if scorer is None else scorer.similarity
    adjust = None if scorer is None else scorer.adjust
    tag = _tag("full", scorer)
    q_s, g_s = (q, g) if scorer is None else (scorer.prepare_queries(q), scorer.prepare_gallery(g))
    t2i = rank_metrics(text_to_image_ranks(q_s, g_s, caption_image, chunk, similarity, adjust))
    if scorer is None or scorer.model.vectors_per_query == 1:
        true = g[torch.as_tensor(caption_image, device=g.device)]
        t2i["mean_l2"] = float(torch.linalg.vector_norm(q.reshape(len(q), -1) - true, dim=1).mean())
    reports = [DirectionReport(tag, "text->image", len(g), len(q), t2i, random_baseline(len(g)))]
    if len(np.unique(caption_image)) == len(g):  # image->text needs every gallery image to have a caption
        i2t = rank_metrics(image_to_text_ranks(g, q, caption_image, chunk, similarity))
        i2t["ndcg@10"] = image_to_text_ndcg(g, q, caption_image, 10, chunk, similarity)
        random = _i2t_random(caption_image, len(q))
        reports.append(DirectionReport("full", "image->text", len(q), len(g), i2t, random, "captions"))
    return reports


def text_to_image_metrics(q, g, caption_image, scorer: Scorer, chunk: int = DEFAULT_CHUNK) -> dict[str, float]:
    """Text->image metrics over the full gallery under a fitted ``scorer`` (the trainer's dev metric)."""
    q_s, g_s = scorer.prepare_queries(q), scorer.prepare_gallery(g)
    return rank_metrics(text_to_image_ranks(q_s, g_s, caption_image, chunk, scorer.similarity, scorer.adjust))


def kaggle_protocol(q, g, caption_image, scorer: Scorer | None, chunk: int, seed: int) -> list[DirectionReport]:
    """Each query against its true image plus 99 seeded random others (the AML competition)."""
    n = PROTOCOLS.tag("kaggle100", "candidates")
    similarity = dot if scorer is None else scorer.similarity
    adjust = None if scorer is None else scorer.adjust
    q_s, g_s = (q, g) if scorer is None else (scorer.prepare_queries(q), scorer.prepare_gallery(g))
    ranks = sampled_candidate_ranks(q_s, g_s, caption_image, n, seed, chunk, similarity, adjust)
    metrics = rank_metrics(ranks, ks=(1, 5, 10))
    return [
        DirectionReport(_tag("kaggle100", scorer), "text->image", n, len(q), metrics, random_baseline(n, (1, 5, 10)))
    ]


def _tag(protocol: str, scorer: Scorer | None) -> str:
    return protocol if scorer is None or scorer.rescorer is None else f"{protocol}+{scorer.name}"


def evaluate_embeddings(
    queries: np.ndarray | torch.Tensor,
    gallery: np.ndarray | torch.Tensor,
    caption_image: np.ndarray,
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
    caption_image = np.asarray(caption_image, dtype=np.int64)
    if scorer is not None and not scorer.fitted:
        scorer.fit(g)
    return run_protocol(q, g, caption_image, scorer, chunk, seed)


def _i2t_random(caption_image: np.ndarray, n_captions: int) -> dict[str, float]:
    """Chance level of image->text when an image has r relevant captions among N, exactly.

    The best relevant position k of a random order has survival P(k > j) = prod_{i<j} (N-r-i)/(N-i).
    """
    pmf = np.zeros(n_captions + 1)
    per_image = np.bincount(caption_image)
    for r, count in zip(*np.unique(per_image[per_image > 0], return_counts=True)):
        j = np.arange(n_captions - r + 1)
        survival = np.concatenate([[1.0], np.cumprod((n_captions - r - j) / (n_captions - j))])[: n_captions - r + 2]
        pmf[1 : n_captions - r + 2] += count * (survival[:-1] - survival[1:])
    pmf /= pmf.sum()
    k = np.arange(n_captions + 1)
    cdf = np.cumsum(pmf)
    out = {f"recall@{K}": float(cdf[min(K, n_captions)]) for K in (1, 5, 10, 50)}
    out["mrr"] = float((pmf[1:] / k[1:]).sum())
    out["median_rank"] = float(np.searchsorted(cdf, 0.5))
    out["mean_rank"] = float((pmf * k).sum())
    return out


def format_reports(reports: list[DirectionReport]) -> str:
    """A plain-text table: one column per direction/protocol, baseline alongside."""
    keys = ["recall@1", "recall@5", "recall@10", "recall@50", "mrr", "ndcg@10", "median_rank", "mean_rank", "mean_l2"]
    lines = []
    for report in reports:
        lines.append(f"{report.label()}: {describe_protocol(report.protocol, report.gallery, report.gallery_kind)}")
        lines.append(f"  {'metric':<12} {'model':>10} {'random':>10}")
        for key in keys:
            if key in report.metrics:
                rand = report.random.get(key)
                rand_s = f"{rand:>10.4f}" if rand is not None else f"{'':>10}"
                lines.append(f"  {key:<12} {report.metrics[key]:>10.4f} {rand_s}")
    return "\n".join(lines)


def summary_json(reports: list[DirectionReport]) -> dict:
    """One flat object for the first (text->image) report, the others nested under their label."""
    head = reports[0]
    out = {
        **head.metrics,
        "gallery": head.gallery,
        "queries": head.queries,
        "protocol": f"{head.direction}, {describe_protocol(head.protocol, head.gallery, head.gallery_kind)}",
        "random": head.random,
    }
    for extra in reports[1:]:
        out[extra.direction] = {**extra.metrics, "gallery": extra.gallery, "queries": extra.queries}
    return out

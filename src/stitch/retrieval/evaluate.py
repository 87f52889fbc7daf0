"""Retrieval evaluation under a named protocol, every figure labelled with gallery and query counts."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from stitch.retrieval.hubness import Rescorer
from stitch.retrieval.metrics import random_baseline, rank_metrics
from stitch.retrieval.ranks import (
    DEFAULT_CHUNK,
    cosine_ready,
    image_to_text_ndcg,
    image_to_text_ranks,
    sampled_candidate_ranks,
    text_to_image_ranks,
)

PROTOCOLS = ("full", "kaggle100")


@dataclass
class DirectionReport:
    """Metrics of one retrieval direction under one protocol."""

    protocol: str
    direction: str
    gallery: int
    queries: int
    metrics: dict[str, float]
    random: dict[str, float]

    def label(self) -> str:
        return f"{self.direction}, {self.protocol} ({self.queries} queries, gallery {self.gallery})"

    def to_dict(self) -> dict:
        return asdict(self)


def describe_protocol(protocol: str, gallery: int) -> str:
    base, _, rerank = protocol.partition("+")
    text = (
        f"full gallery of {gallery} images" if base == "full" else "true image + 99 seeded random other images (Kaggle)"
    )
    return text + (f", rescored with {rerank} (bank: training queries)" if rerank else "")


def rescored_space(
    q: torch.Tensor,
    g: torch.Tensor,
    rescorer: Rescorer | None,
    query_bank: np.ndarray | torch.Tensor | None,
    gallery_bank: np.ndarray | torch.Tensor | None = None,
    device: str | torch.device = "cpu",
):
    """Fit ``rescorer`` on its banks; return the queries, gallery and score adjustment to rank with
    (``q``, ``g`` and None for plain cosine)."""
    if rescorer is None or rescorer.name == "none":
        return q, g, None
    if q.ndim == 3 and rescorer.name in ("center", "whiten"):
        raise ValueError(f"{rescorer.name} transforms single query vectors; use model.aggregation=mean")
    if query_bank is None:
        raise ValueError(f"rerank {rescorer.name!r} needs a query bank (e.g. the translated training captions)")
    g_bank = None if gallery_bank is None else cosine_ready(gallery_bank, device)
    rescorer.fit(cosine_ready(query_bank, device), g, g_bank)
    return rescorer.queries(q), rescorer.gallery(g), (lambda start, scores: rescorer.adjust(scores))


def evaluate_embeddings(
    queries: np.ndarray | torch.Tensor,
    gallery: np.ndarray | torch.Tensor,
    caption_image: np.ndarray,
    protocol: str = "full",
    chunk: int = DEFAULT_CHUNK,
    seed: int = 0,
    device: str | torch.device = "cpu",
    rescorer: Rescorer | None = None,
    query_bank: np.ndarray | torch.Tensor | None = None,
    gallery_bank: np.ndarray | torch.Tensor | None = None,
) -> list[DirectionReport]:
    """Text->image (and, for the full protocol, image->text) metrics in the scoring space.

    A ``rescorer`` (hubness-aware scoring, fitted on ``query_bank``) changes text->image scores;
    image->text is always reported with plain cosine scores.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose from {PROTOCOLS}")
    q = cosine_ready(queries, device)
    g = cosine_ready(gallery, device)
    caption_image = np.asarray(caption_image, dtype=np.int64)
    q_scored, g_scored, scorer = rescored_space(q, g, rescorer, query_bank, gallery_bank, device)
    tag = protocol if scorer is None else f"{protocol}+{rescorer.name}"
    if protocol == "kaggle100":
        ranks = sampled_candidate_ranks(
            q_scored, g_scored, caption_image, n_candidates=100, seed=seed, chunk=chunk, scorer=scorer
        )
        metrics = rank_metrics(ranks, ks=(1, 5, 10))
        return [DirectionReport(tag, "text->image", 100, len(q), metrics, random_baseline(100, ks=(1, 5, 10)))]
    ranks = text_to_image_ranks(q_scored, g_scored, caption_image, chunk=chunk, scorer=scorer)
    t2i = rank_metrics(ranks)
    if q.ndim == 2:
        true = g[torch.as_tensor(caption_image, device=g.device)]
        t2i["mean_l2"] = float(torch.linalg.vector_norm(q - true, dim=1).mean())
    reports = [DirectionReport(tag, "text->image", len(g), len(q), t2i, random_baseline(len(g)))]
    described = np.unique(caption_image)
    if len(described) == len(g):  # image->text needs every gallery image to have a caption
        i2t_ranks = image_to_text_ranks(g, q, caption_image, chunk=chunk)
        i2t = rank_metrics(i2t_ranks)
        i2t["ndcg@10"] = image_to_text_ndcg(g, q, caption_image, k=10, chunk=chunk)
        reports.append(
            DirectionReport(protocol, "image->text", len(q), len(g), i2t, _i2t_random(caption_image, len(q)))
        )
    return reports


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
        lines.append(f"{report.label()}: {describe_protocol(report.protocol, report.gallery)}")
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
        "protocol": f"{head.direction}, {describe_protocol(head.protocol, head.gallery)}",
        "random": head.random,
    }
    for extra in reports[1:]:
        out[extra.direction] = {**extra.metrics, "gallery": extra.gallery, "queries": extra.queries}
    return out

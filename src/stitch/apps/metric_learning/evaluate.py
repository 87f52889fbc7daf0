"""How well a space separates classes, scored with the library's retrieval pieces.

Held-out items are the queries and training items the references (a query is never its own reference);
every reference of a query's class is relevant to it (a class-level :class:`~stitch.data.Relevance`), so
precision@1 and MAP@R are the retrieval metrics' ``hit@1`` and ``map@r`` (cosine, pessimistic ties). kNN
classification and regression ask an exact :class:`~stitch.retrieval.index.GalleryIndex` of the references.
"""

from __future__ import annotations

import numpy as np

from stitch.apps.metric_learning.data import LabelledVectors
from stitch.data import DataError
from stitch.data.relevance import Relevance
from stitch.retrieval.index import build_index, knn_classify, knn_regress
from stitch.retrieval.metrics import relevance_metrics
from stitch.retrieval.ranks import cosine_ready, relevant_ranks


def class_relevance(query_labels: np.ndarray, reference_labels: np.ndarray) -> Relevance:
    """Each query relevant to every reference sharing its label; a query label no reference has is an error
    (its query could retrieve nothing)."""
    query_labels, reference_labels = np.asarray(query_labels), np.asarray(reference_labels)
    order = np.argsort(reference_labels, kind="stable")
    classes, starts, counts = np.unique(reference_labels[order], return_index=True, return_counts=True)
    if len(classes) == 0:
        raise DataError("no references to retrieve")
    place = np.minimum(np.searchsorted(classes, query_labels), len(classes) - 1)
    missing = classes[place] != query_labels
    if missing.any():
        raise DataError(f"query labels with no reference of their class: {np.unique(query_labels[missing]).tolist()}")
    members = [order[starts[c] : starts[c] + counts[c]] for c in place]
    return Relevance.from_lists(members, len(reference_labels))


def score_space(
    references: np.ndarray, reference_data: LabelledVectors, queries: np.ndarray, query_data: LabelledVectors, k: int
) -> dict[str, float]:
    """precision@1, MAP@R and kNN accuracy of ``queries`` (rows of ``query_data``) against ``references``
    (rows of ``reference_data``) in one space, plus the kNN position error when the data have targets."""
    relevance = class_relevance(query_data.labels, reference_data.labels)
    ranks = relevant_ranks(cosine_ready(queries), cosine_ready(references), relevance)
    retrieval = relevance_metrics(ranks, relevance)
    index = build_index(references)
    predicted = knn_classify(index, reference_data.labels, queries, k)
    out = {
        "precision@1": retrieval["hit@1"],
        "map@r": retrieval["map@r"],
        f"knn{k}_accuracy": float(np.mean(predicted == query_data.labels)),
    }
    if reference_data.targets is not None and query_data.targets is not None:
        position = knn_regress(index, reference_data.targets, queries, k)
        error = np.linalg.norm(position - np.asarray(query_data.targets, dtype=np.float64), axis=1)
        out[f"knn{k}_position_error"] = float(error.mean())
    return out

"""Hubness-aware scoring: a few gallery items are everyone's nearest neighbour after translation.

Each method is a :class:`Rescorer`. ``fit`` sees a bank of (translated) queries that are not the test
queries — the training captions — and, for DBNorm, a bank of gallery-side items; then ``queries`` /
``gallery`` transform embeddings and ``adjust`` rewrites a chunk of query x gallery scores. All inputs
are L2-normalised rows in the scoring space (a query may be a slot set, scored by its best slot).
Only rank order per query matters, so per-query constants are dropped.

- ``csls``: cross-domain similarity local scaling (Lample et al., 2018): ``2 s - r_bank(g)``, where
  ``r_bank(g)`` is g's mean similarity to its k nearest bank queries.
- ``is``: inverted softmax (Smith et al., 2017): ``beta s - log sum_{q' in bank} exp(beta s(q', g))``.
- ``qbnorm``: QB-Norm with dynamic inverted softmax (Bogolin et al., 2022): the inverted softmax is
  applied only to queries whose raw top-1 item is a hub (top-1 of some bank query).
- ``dbnorm``: dual-bank inverted softmax (Wang et al., 2023): the query-bank normaliser plus a
  gallery-bank normaliser ``log sum_{g' in gallery bank} exp(beta s(g', g))``.
- ``center`` / ``whiten``: subtract the bank mean from queries (and gallery mean from gallery), or
  ZCA-whiten queries with the bank covariance, then re-normalise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from stitch.registries import RESCORERS
from stitch.retrieval.ranks import DEFAULT_CHUNK, dot


def _column_stat(
    bank: torch.Tensor,
    gallery: torch.Tensor,
    reduce,
    chunk: int = DEFAULT_CHUNK,
    bank_is_gallery: bool = False,
    similarity=dot,
) -> torch.Tensor:
    """Per-gallery statistic over bank similarities, computed in gallery chunks (memory bank x chunk).

    When the bank is the gallery itself, an item's similarity to itself is left out.
    """
    parts = []
    for i in range(0, len(gallery), chunk):
        scores = similarity(bank, gallery[i : i + chunk])
        if bank_is_gallery:
            cols = torch.arange(scores.shape[1], device=scores.device)
            scores[i + cols, cols] = float("-inf")
        parts.append(reduce(scores))
    return torch.cat(parts)


class Rescorer:
    """Identity scoring; subclasses set ``scale`` and a per-gallery-item ``offset`` in ``fit``."""

    name = "none"
    scale = 1.0
    offset: torch.Tensor | None = None

    def fit(
        self, query_bank: torch.Tensor, gallery: torch.Tensor, gallery_bank: torch.Tensor | None = None, similarity=dot
    ):
        """Learn gallery statistics from a bank of queries that are not the evaluated ones.

        ``similarity(queries, gallery)`` is the model's score (a query may be a slot set)."""
        return self

    def queries(self, q: torch.Tensor) -> torch.Tensor:
        return q

    def gallery(self, g: torch.Tensor) -> torch.Tensor:
        return g

    def adjust(self, scores: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
        """Rewrite scores of full gallery rows, or of candidate items ``ids`` (same shape as scores)."""
        if self.offset is None:
            return scores
        offset = self.offset[None, :] if ids is None else self.offset[ids]
        return self.scale * scores - offset


class CSLS(Rescorer):
    name = "csls"
    scale = 2.0

    def __init__(self, k: int = 10) -> None:
        self.k = k

    def fit(self, query_bank, gallery, gallery_bank=None, similarity=dot):
        k = min(self.k, len(query_bank))
        self.offset = _column_stat(
            query_bank, gallery, lambda s: s.topk(k, dim=0).values.mean(0), similarity=similarity
        )
        return self


class InvertedSoftmax(Rescorer):
    name = "is"

    def __init__(self, beta: float = 20.0) -> None:
        self.beta = self.scale = beta

    def fit(self, query_bank, gallery, gallery_bank=None, similarity=dot):
        self.log_norm = _column_stat(
            query_bank, gallery, lambda s: torch.logsumexp(self.beta * s, dim=0), similarity=similarity
        )
        self.offset = self.log_norm
        return self


class QBNorm(InvertedSoftmax):
    name = "qbnorm"

    def __init__(self, beta: float = 20.0, top_k: int = 1) -> None:
        super().__init__(beta)
        self.top_k = top_k

    def fit(self, query_bank, gallery, gallery_bank=None, similarity=dot):
        super().fit(query_bank, gallery, similarity=similarity)
        hubs = torch.zeros(len(gallery), dtype=torch.bool, device=gallery.device)
        for i in range(0, len(query_bank), DEFAULT_CHUNK):
            top = similarity(query_bank[i : i + DEFAULT_CHUNK], gallery).topk(self.top_k, dim=1).indices
            hubs[top.flatten()] = True
        self.activation = hubs
        return self

    def adjust(self, scores, ids=None):
        best = scores.argmax(dim=1)
        top1 = best if ids is None else ids.gather(1, best[:, None]).squeeze(1)
        hit = self.activation[top1]
        return torch.where(hit[:, None], super().adjust(scores, ids), self.beta * scores)


class DBNorm(InvertedSoftmax):
    name = "dbnorm"

    def __init__(self, beta: float = 20.0, gallery_weight: float = 0.5) -> None:
        super().__init__(beta)
        self.gallery_weight = gallery_weight

    def fit(self, query_bank, gallery, gallery_bank=None, similarity=dot):
        super().fit(query_bank, gallery, similarity=similarity)
        bank = gallery if gallery_bank is None else gallery_bank
        self.log_norm_gallery = _column_stat(
            bank, gallery, lambda s: torch.logsumexp(self.beta * s, dim=0), bank_is_gallery=gallery_bank is None
        )
        self.offset = self.log_norm + self.gallery_weight * self.log_norm_gallery
        return self


class Center(Rescorer):
    name = "center"

    def fit(self, query_bank, gallery, gallery_bank=None, similarity=dot):
        self.query_mean = query_bank.mean(0)
        self.gallery_mean = (gallery if gallery_bank is None else gallery_bank).mean(0)
        return self

    def queries(self, q):
        return F.normalize(q - self.query_mean, dim=1)

    def gallery(self, g):
        return F.normalize(g - self.gallery_mean, dim=1)


class Whiten(Center):
    name = "whiten"

    def __init__(self, eps: float = 1e-2) -> None:
        self.eps = eps

    def fit(self, query_bank, gallery, gallery_bank=None, similarity=dot):
        super().fit(query_bank, gallery, gallery_bank)
        centred = (query_bank - self.query_mean).double()
        cov = centred.T @ centred / max(1, len(centred) - 1)
        vals, vecs = torch.linalg.eigh(cov)
        scale = (vals.clamp(min=0) + self.eps * vals.mean()).rsqrt()
        self.whitener = ((vecs * scale) @ vecs.T).float()
        return self

    def queries(self, q):
        return F.normalize((q - self.query_mean) @ self.whitener, dim=1)


def build_rescorer(name: str, **params) -> Rescorer:
    """A rescorer by its registry name, with parameters such as ``k`` (csls) or ``beta`` (is/qbnorm/dbnorm),
    each checked: a bad value is an error naming it, never a NaN score later."""
    cls = RESCORERS.get(name, "rerank")
    try:
        rescorer = cls(**params)
    except TypeError as err:
        raise ValueError(f"bad parameters for rerank {name!r}: {err}") from err
    for key, value in params.items():
        _check_param(name, key, value)
    rescorer.params = dict(params)
    return rescorer


def _check_param(name: str, key: str, value) -> None:
    bounds = {"beta": (1e-6, 1e4), "k": (1, 10**6), "top_k": (1, 10**6), "gallery_weight": (0, 10), "eps": (1e-12, 1e3)}
    low, high = bounds.get(key, (None, None))
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if low is not None and (not is_number or not low <= value <= high):
        raise ValueError(f"rerank {name} parameter {key} must be a number in [{low}, {high}], got {value!r}")
    if key in ("k", "top_k") and int(value) != value:
        raise ValueError(f"rerank {name} parameter {key} must be a whole number, got {value!r}")


def configured_rescorer(name: str, params: dict | None, inference=None, temperature: float | None = None) -> Rescorer:
    """A rescorer with a run's defaults filled in: β of IS/QB-Norm/DBNorm = the configured β, else
    1 / the learnt temperature, else 20; k of CSLS from the config. ``inference`` is an InferenceConfig."""
    params = dict(params or {})
    if RESCORERS.tag(name, "beta") and "beta" not in params:
        configured = inference.beta if inference is not None else 0.0
        params["beta"] = configured or (1.0 / temperature if temperature else 20.0)
    if RESCORERS.tag(name, "k") and "k" not in params and inference is not None:
        params["k"] = inference.k
    return build_rescorer(name, **params)

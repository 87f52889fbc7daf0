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

import logging
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

from stitch.bounds import Bound, check
from stitch.errors import UsageError
from stitch.registries import RESCORERS
from stitch.retrieval.index import IndexFileError
from stitch.retrieval.ranks import DEFAULT_CHUNK, dot

logger = logging.getLogger(__name__)

GalleryChunks = Callable[[], Iterator[torch.Tensor]]  # yields the gallery's unit rows in order, chunk by chunk
FIT_IN_MEMORY_ROWS = 1_000_000  # a rescorer without a chunk-wise fit gathers the gallery up to this many rows
DBNORM_WARN_ROWS = 200_000  # dbnorm's gallery-bank normaliser reads the gallery once per chunk: quadratic


def one_chunk(gallery: torch.Tensor) -> GalleryChunks:
    """A gallery held in memory, given as a single chunk."""
    return lambda: iter((gallery,))


# the shape of a saved statistic: "n" = one per gallery item, "d" = one per dimension of the scoring space
StateSpec = tuple[str, tuple[str, ...]]  # (dtype kind: "f" float or "b" bool, shape symbols)
PER_ITEM: StateSpec = ("f", ("n",))
PER_DIM: StateSpec = ("f", ("d",))


class Rescorer:
    """Identity scoring; subclasses set ``scale`` and a per-gallery-item ``offset`` in ``fit``.

    ``state`` names the tensors ``fit`` sets (what is saved beside an index): a restored rescorer takes
    exactly these, checked by :func:`restore_state`, never whatever a file holds."""

    name = "none"
    scale = 1.0
    offset: torch.Tensor | None = None
    state: dict[str, StateSpec] = {}

    def fit(
        self, query_bank: torch.Tensor, gallery: torch.Tensor, gallery_bank: torch.Tensor | None = None, similarity=dot
    ):
        """Learn gallery statistics from a bank of queries that are not the evaluated ones.

        ``similarity(queries, gallery)`` is the model's score (a query may be a slot set)."""
        return self

    def fit_stream(
        self, bank: torch.Tensor, gallery: GalleryChunks, similarity, n: int, gallery_bank: torch.Tensor | None = None
    ):
        """:meth:`fit` on a gallery of ``n`` rows given chunk by chunk (``gallery()`` yields its unit rows in
        order and may be called again). This default gathers the gallery (a gallery given whole is used as it
        is) and refuses to gather more than ``FIT_IN_MEMORY_ROWS`` rows; the rescorers of stitch compute
        their statistics chunk by chunk instead."""
        chunks = []
        for _, chunk in _counted(gallery, n):
            if chunks and n > FIT_IN_MEMORY_ROWS:
                raise UsageError(
                    f"rerank {self.name!r} has no chunk-wise fit and the gallery has {n:,} images (more than "
                    f"{FIT_IN_MEMORY_ROWS:,} to gather in memory): use --rerank is, csls, qbnorm, center or none"
                )
            chunks.append(chunk)
        whole = chunks[0] if len(chunks) == 1 else torch.cat(chunks)
        return self.fit(bank, whole, gallery_bank, similarity=similarity)

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


class ChunkwiseRescorer(Rescorer):
    """A rescorer whose statistics are computed a gallery chunk at a time: :meth:`fit_stream` is the one
    implementation, and ``fit`` on a gallery in memory is ``fit_stream`` on a single chunk."""

    def fit(self, query_bank, gallery, gallery_bank=None, similarity=dot):
        return self.fit_stream(query_bank, one_chunk(gallery), similarity, len(gallery), gallery_bank)

    def fit_stream(self, bank, gallery, similarity, n, gallery_bank=None):
        raise NotImplementedError


class CSLS(ChunkwiseRescorer):
    name = "csls"
    scale = 2.0
    state = {"offset": PER_ITEM}

    def __init__(self, k: int = 10) -> None:
        self.k = k

    def fit_stream(self, bank, gallery, similarity, n, gallery_bank=None):
        k = min(self.k, len(bank))
        self.offset = _column_stat(bank, gallery, lambda s: s.topk(k, dim=0).values.mean(0), n, similarity)
        return self


class InvertedSoftmax(ChunkwiseRescorer):
    name = "is"
    state = {"log_norm": PER_ITEM, "offset": PER_ITEM}

    def __init__(self, beta: float = 20.0) -> None:
        self.beta = self.scale = beta

    def fit_stream(self, bank, gallery, similarity, n, gallery_bank=None):
        self.log_norm = _column_stat(bank, gallery, self._log_sum_exp, n, similarity)
        self.offset = self.log_norm
        return self

    def _log_sum_exp(self, scores: torch.Tensor) -> torch.Tensor:
        return torch.logsumexp(self.beta * scores, dim=0)


class QBNorm(InvertedSoftmax):
    name = "qbnorm"
    state = {**InvertedSoftmax.state, "activation": ("b", ("n",))}

    def __init__(self, beta: float = 20.0, top_k: int = 1) -> None:
        super().__init__(beta)
        self.top_k = top_k

    def fit_stream(self, bank, gallery, similarity, n, gallery_bank=None):
        super().fit_stream(bank, gallery, similarity, n)
        self.activation = _hubs(bank, gallery, similarity, self.top_k, n)
        return self

    def adjust(self, scores, ids=None):
        best = scores.argmax(dim=1)
        top1 = best if ids is None else ids.gather(1, best[:, None]).squeeze(1)
        hit = self.activation[top1]
        return torch.where(hit[:, None], super().adjust(scores, ids), self.beta * scores)


class DBNorm(InvertedSoftmax):
    name = "dbnorm"
    state = {**InvertedSoftmax.state, "log_norm_gallery": PER_ITEM}

    def __init__(self, beta: float = 20.0, gallery_weight: float = 0.5) -> None:
        super().__init__(beta)
        self.gallery_weight = gallery_weight

    def fit_stream(self, bank, gallery, similarity, n, gallery_bank=None):
        """The gallery bank is ``gallery_bank``, or else the gallery itself (each item's own similarity left
        out: every chunk of the gallery against every chunk, quadratic)."""
        super().fit_stream(bank, gallery, similarity, n)
        if gallery_bank is None:
            self.log_norm_gallery = _self_log_norm(gallery, self.beta, n)
        else:
            self.log_norm_gallery = _column_stat(gallery_bank, gallery, self._log_sum_exp, n)
        self.offset = self.log_norm + self.gallery_weight * self.log_norm_gallery
        return self


class Center(ChunkwiseRescorer):
    name = "center"
    state = {"query_mean": PER_DIM, "gallery_mean": PER_DIM}

    def fit_stream(self, bank, gallery, similarity, n, gallery_bank=None):
        self.query_mean = bank.mean(0)
        self.gallery_mean = _gallery_mean(gallery, n) if gallery_bank is None else gallery_bank.mean(0)
        return self

    def queries(self, q):
        return F.normalize(q - self.query_mean, dim=1)

    def gallery(self, g):
        return F.normalize(g - self.gallery_mean, dim=1)


class Whiten(Center):
    name = "whiten"
    state = {**Center.state, "whitener": ("f", ("d", "d"))}

    def __init__(self, eps: float = 1e-2) -> None:
        self.eps = eps

    def fit_stream(self, bank, gallery, similarity, n, gallery_bank=None):
        super().fit_stream(bank, gallery, similarity, n, gallery_bank)
        centred = (bank - self.query_mean).double()
        cov = centred.T @ centred / max(1, len(centred) - 1)
        vals, vecs = torch.linalg.eigh(cov)
        scale = (vals.clamp(min=0) + self.eps * vals.mean()).rsqrt()
        self.whitener = ((vecs * scale) @ vecs.T).float()
        return self

    def queries(self, q):
        return F.normalize((q - self.query_mean) @ self.whitener, dim=1)


# -- gallery statistics, a chunk at a time --------------------------------------------------------
def _counted(gallery: GalleryChunks, n: int) -> Iterator[tuple[int, torch.Tensor]]:
    """``(first row, chunk)`` of every chunk of the gallery, counted against ``n``."""
    start = 0
    for chunk in gallery():
        if start + len(chunk) > n:
            start += len(chunk)
            break
        yield start, chunk
        start += len(chunk)
    if start != n:
        raise IndexFileError(f"the gallery gave {start} rows, expected {n} (did it change while it was read?)")


def _column_stat(bank: torch.Tensor, gallery: GalleryChunks, reduce, n: int, similarity=dot) -> torch.Tensor:
    """Per-gallery-item statistic ``reduce`` over the item's bank similarities (memory bank x DEFAULT_CHUNK),
    written into one tensor of ``n`` allocated first (a list of small parts between large temporaries
    fragments the heap: it grew with n)."""
    out = None
    for start, chunk in _counted(gallery, n):
        for i in range(0, len(chunk), DEFAULT_CHUNK):
            part = reduce(similarity(bank, chunk[i : i + DEFAULT_CHUNK]))
            out = part.new_empty(n) if out is None else out
            out[start + i : start + i + len(part)] = part
    return bank.new_empty(0) if out is None else out


def _hubs(bank: torch.Tensor, gallery: GalleryChunks, similarity, top_k: int, n: int) -> torch.Tensor:
    """Items among the ``top_k`` of some bank query (QB-Norm's activation set), by a running top-k."""
    best_scores = best_ids = None
    for start, chunk in _counted(gallery, n):
        for i in range(0, len(chunk), DEFAULT_CHUNK):
            part = chunk[i : i + DEFAULT_CHUNK]
            top = similarity(bank, part).topk(min(top_k, len(part)), dim=1)
            ids = top.indices + start + i
            if best_scores is None:
                best_scores, best_ids = top.values, ids
            else:
                scores, both = torch.cat([best_scores, top.values], 1), torch.cat([best_ids, ids], 1)
                keep = scores.topk(min(top_k, scores.shape[1]), dim=1).indices
                best_scores, best_ids = scores.gather(1, keep), both.gather(1, keep)
    hubs = torch.zeros(n, dtype=torch.bool, device=bank.device)
    if best_ids is not None:
        hubs[best_ids.flatten()] = True
    return hubs


def _self_log_norm(gallery: GalleryChunks, beta: float, n: int) -> torch.Tensor:
    """``log sum_{g' != g} exp(beta g'.g)`` per item (DBNorm's gallery bank = the gallery): every chunk of
    columns against every chunk of rows, accumulated; memory DEFAULT_CHUNK x chunk."""
    out = None
    for col_start, cols in _counted(gallery, n):
        if out is None:
            out = cols.new_empty(n)
            _warn_quadratic(n, len(cols))
        total = cols.new_full((len(cols),), float("-inf"))
        for row_start, rows in _counted(gallery, n):
            for i in range(0, len(rows), DEFAULT_CHUNK):
                block = dot(rows[i : i + DEFAULT_CHUNK], cols)
                first = row_start + i
                own = torch.arange(len(cols), device=cols.device) + col_start - first  # each column's own row
                inside = (own >= 0) & (own < len(block))
                block[own[inside], torch.nonzero(inside).flatten()] = float("-inf")
                total = torch.logaddexp(total, torch.logsumexp(beta * block, dim=0))
        out[col_start : col_start + len(cols)] = total
    return torch.empty(0) if out is None else out


def _warn_quadratic(n: int, chunk: int) -> None:
    if n > DBNORM_WARN_ROWS and chunk < n:
        logger.warning(
            "dbnorm's gallery-bank normaliser compares every pair of the %d gallery images (%d passes over it)",
            n,
            -(-n // chunk),
        )


def _gallery_mean(gallery: GalleryChunks, n: int) -> torch.Tensor:
    """The mean gallery row, summed in float64 on the CPU (not every accelerator has it)."""
    total, device = None, None
    for _, chunk in _counted(gallery, n):
        for i in range(0, len(chunk), DEFAULT_CHUNK):
            part = chunk[i : i + DEFAULT_CHUNK].detach().cpu().double().sum(0)
            total = part if total is None else total + part
        device = chunk.device
    return (total / n).float().to(device)


def build_rescorer(name: str, **params) -> Rescorer:
    """A rescorer by its registry name, with parameters such as ``k`` (csls) or ``beta`` (is/qbnorm/dbnorm),
    each checked: a bad value is an error naming it, never a NaN score later."""
    cls = RESCORERS.get(name, "rerank")
    try:
        rescorer = cls(**params)
    except TypeError as err:
        raise UsageError(f"bad parameters for rerank {name!r}: {err}") from err
    for key, value in params.items():
        _check_param(name, key, value)
    rescorer.params = dict(params)
    return rescorer


# the bounded rescorer parameters (a parameter named here is checked whichever rescorer takes it)
RERANK_BOUNDS = {
    "beta": Bound(1e-6, 1e4),
    "k": Bound(1, 10**6, integer=True),
    "top_k": Bound(1, 10**6, integer=True),
    "gallery_weight": Bound(0, 10),
    "eps": Bound(1e-12, 1e3),
}


def _check_param(name: str, key: str, value) -> None:
    if key in RERANK_BOUNDS:
        check(f"rerank {name} parameter {key}", value, RERANK_BOUNDS[key], UsageError, noun="a number")


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


def restore_state(rescorer: Rescorer, saved: dict[str, torch.Tensor], where: str, n: int | None = None) -> Rescorer:
    """Set a fitted rescorer's statistics from saved tensors after checking them against its ``state``:
    exactly its keys, the dtype and shapes it writes (``n`` gallery items when given) and finite values. A
    file is untrusted: setting any key it holds would let ``scale=-1`` silently invert the ranking."""
    expected = type(rescorer).state
    unknown, missing = sorted(set(saved) - set(expected)), sorted(set(expected) - set(saved))
    if unknown or missing:
        raise IndexFileError(
            f"{where}: rerank {rescorer.name} state has unknown key(s) {unknown} and lacks {missing}; "
            f"it holds exactly {sorted(expected)} (rebuild the index)"
        )
    sizes: dict[str, int] = {} if n is None else {"n": n}
    for key in sorted(saved):
        _check_state(saved[key], expected[key], sizes, f"{where}: rerank {rescorer.name} key {key!r}")
    for key, value in saved.items():
        setattr(rescorer, key, value)
    return rescorer


def _check_state(value: object, spec: StateSpec, sizes: dict[str, int], where: str) -> None:
    """One saved statistic: a tensor of the kind and shape ``spec`` says (symbols agreeing across keys), finite."""
    kind, symbols = spec
    if not isinstance(value, torch.Tensor):
        raise IndexFileError(f"{where} must be a tensor, got {type(value).__name__}")
    is_kind = value.dtype == torch.bool if kind == "b" else value.dtype.is_floating_point
    if not is_kind or value.ndim != len(symbols):
        want = f"{len(symbols)}-d {'bool' if kind == 'b' else 'float'} tensor"
        raise IndexFileError(f"{where} must be a {want}, got {value.dtype} {tuple(value.shape)}")
    for symbol, size in zip(symbols, value.shape):
        if sizes.setdefault(symbol, size) != size:
            raise IndexFileError(f"{where} has shape {tuple(value.shape)}; expected {sizes[symbol]} along {symbol!r}")
    if kind == "f" and not torch.isfinite(value).all():
        row = int(torch.nonzero(~torch.isfinite(value.reshape(len(value), -1)).all(1))[0])
        raise IndexFileError(f"{where} holds NaN/Inf (row {row}); rebuild the index")

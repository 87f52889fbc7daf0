"""Search a gallery index with caption embeddings, through a run's :class:`Scorer`.

The rescorer's gallery statistics are fitted when the index is built (they are properties of the
gallery and a bank of training queries) and saved beside it, so search time only pays for the
candidate rescoring. An index records the run it was built for (``run_id``, a content hash of the
weights and config) and refuses to answer for another run.

A query made of several vectors (a set head's slots, scored by the best slot) is searched one vector
at a time and the candidates merged by their best score: an item in the true top k under max-scoring
is in the top k of its best vector, so with an exact index the merge is exact.

A gallery is read as a :class:`GalleryImages` (:func:`gallery_images`: pairs in memory are one shard,
pairs on disk memory-mapped shards), a chunk of rows at a time: the rescorer's statistics are fitted
chunk-wise (:meth:`Scorer.fit_stream`, the same code as :meth:`Scorer.fit` on the whole gallery) and the
index is built from the embedded chunks (:func:`~stitch.retrieval.index.build_index_from`), so building
an index never holds the gallery, only the index.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from stitch.data.errors import DataError
from stitch.data.pairs import Pairs
from stitch.data.shards import CHUNK_ROWS, Shard
from stitch.data.texts import as_texts
from stitch.errors import UsageError
from stitch.io.atomic import atomic_write, atomic_write_text
from stitch.io.untrusted import read_json, regular_file
from stitch.retrieval.hubness import Rescorer, build_rescorer, restore_state
from stitch.retrieval.index import GalleryIndex, IndexFileError, build_index_from, check_request, load_index
from stitch.retrieval.ranks import check_chunk
from stitch.retrieval.scorer import Scorer

logger = logging.getLogger(__name__)

RERANK_FILE = "rerank.safetensors"
RERANK_META = "rerank.json"


def save_rescorer(rescorer: Rescorer, folder: Path) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().clone() for k, v in vars(rescorer).items() if isinstance(v, torch.Tensor)}
    if state:
        atomic_write(folder / RERANK_FILE, lambda tmp: save_file(state, str(tmp)))
    atomic_write_text(folder / RERANK_META, json.dumps({"name": rescorer.name, "params": rescorer.params}))


def load_rescorer(folder: Path, n: int | None = None) -> Rescorer | None:
    """The rescorer saved beside an index (None if none), checked like untrusted input: ``rerank.json``
    holds exactly a name and parameters within :func:`build_rescorer`'s bounds, and the saved statistics
    exactly the rescorer's keys, shapes (``n`` gallery items) and finite values."""
    meta_path = folder / RERANK_META
    if not meta_path.exists():
        return None
    meta = read_json(meta_path, IndexFileError)
    if not isinstance(meta, dict) or set(meta) != {"name", "params"} or not isinstance(meta["params"], dict):
        raise IndexFileError(f'{meta_path} is corrupt: expected {{"name": ..., "params": {{...}}}}, got {meta!r}')
    try:
        rescorer = build_rescorer(meta["name"], **meta["params"])
    except (KeyError, TypeError, ValueError) as err:
        raise IndexFileError(f"{meta_path} is corrupt: {err}") from err
    state: dict[str, torch.Tensor] = {}
    if (folder / RERANK_FILE).exists():
        from safetensors.torch import load_file

        path = regular_file(folder / RERANK_FILE, error=IndexFileError)
        try:
            state = load_file(str(path))
        except Exception as err:  # safetensors raises its own error types for a corrupt header
            raise IndexFileError(f"{path} cannot be read: {err}") from err
    return restore_state(rescorer, state, str(folder / RERANK_FILE), n)


# -- the gallery, read a chunk at a time -------------------------------------------------------------
@dataclass
class GalleryImages:
    """The images of a gallery as shard views read a chunk at a time, with one name per image.

    Each shard's ``image_rows`` are the gallery's rows of it (None: all), in gallery order; rows are read
    through :meth:`Shard.read_images` (float32, checked finite, a NaN named with its shard and row)."""

    shards: list[Shard]
    names: np.ndarray
    source: str = ""
    starts: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        sizes = [shard.n_images for shard in self.shards]
        self.starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        if len(self.names) != self.starts[-1]:
            raise DataError(f"{len(self.names)} names for {self.starts[-1]} gallery images")

    @classmethod
    def from_arrays(cls, images: np.ndarray, names: np.ndarray | None = None) -> GalleryImages:
        """A gallery over an image matrix (names default to the row numbers)."""
        images = np.asarray(images)
        if images.ndim != 2 or not len(images):
            raise DataError(f"gallery images must be a non-empty rows x dims matrix, got shape {images.shape}")
        shard = Shard(np.empty((0, 1), np.float32), images, np.empty(0, np.int64), name="gallery")
        names = as_texts(np.arange(len(images)) if names is None else names, "gallery names")
        return cls([shard], names)

    def __len__(self) -> int:
        return int(self.starts[-1])

    @property
    def image_dim(self) -> int:
        return self.shards[0].images.shape[1]

    def image_chunks(self, chunk: int = CHUNK_ROWS) -> Iterator[np.ndarray]:
        """Every image of the gallery in order, float32, at most ``chunk`` rows a read."""
        for shard in self.shards:
            try:
                yield from shard.image_chunks(chunk)
            except DataError as err:
                raise self._named(err) from err

    def take(self, positions: np.ndarray, chunk: int = CHUNK_ROWS) -> Iterator[np.ndarray]:
        """The images at sorted gallery ``positions``, at most ``chunk`` rows a read."""
        positions = np.asarray(positions, dtype=np.int64)
        bounds = np.searchsorted(positions, self.starts)
        for k, shard in enumerate(self.shards):
            mine = positions[bounds[k] : bounds[k + 1]] - self.starts[k]
            for start in range(0, len(mine), chunk):
                try:
                    yield shard.read_images(shard.image_rows_at(mine[start : start + chunk]))
                except DataError as err:
                    raise self._named(err) from err

    def _named(self, err: DataError) -> DataError:
        """The error of a shard read, with the gallery's source in front."""
        return DataError(f"{self.source}: {err}" if self.source else str(err))


def gallery_images(data: Pairs, split: str | None = None) -> GalleryImages:
    """The images of ``data`` (or of its split ``split``, by the ``image_split`` column) as a gallery.

    Items are named by the ``image_names`` column when there is one, else by their global row numbers in
    ``data`` (so a split's items keep the numbers they have in the whole file). The images stay where they
    are: in memory, or memory-mapped shards read a chunk at a time."""
    shards, columns, source = data.image_shards()
    names, split_of = columns.get("image_names"), columns.get("image_split")
    if split is not None and split_of is None:
        raise DataError(f"this data has no split column, so split {split!r} does not exist")
    views, item_names = [], []
    for k, shard in enumerate(shards):
        rows = None if split is None else np.flatnonzero(np.asarray(split_of[k]) == split)
        if rows is not None and not len(rows):
            continue
        views.append(replace(shard, image_rows=rows))
        picked = np.arange(len(shard.images)) if rows is None else rows
        item_names.append(names[k][picked] if names is not None else as_texts(shard.image_offset + picked))
    if not views:
        found = sorted(set().union(*(np.unique(np.asarray(v)).tolist() for v in split_of)))
        raise DataError(f"split {split!r} not found; the data has {found}")
    return GalleryImages(views, np.concatenate(item_names), source)


# -- the index -------------------------------------------------------------------------------------
@dataclass
class _ScoredGallery:
    """The gallery in the scorer's space, embedded and prepared a chunk at a time (a VectorSource)."""

    scorer: Scorer
    gallery: GalleryImages
    chunk: int

    @property
    def dim(self) -> int:
        return self.scorer.model.space_dim

    def __len__(self) -> int:
        return len(self.gallery)

    def embedded(self) -> Iterator[torch.Tensor]:
        for images in self.gallery.image_chunks(self.chunk):
            yield self.scorer.embed_gallery(images)

    def _prepared(self, images: np.ndarray) -> np.ndarray:
        return self.scorer.prepare_gallery(self.scorer.embed_gallery(images)).cpu().numpy()

    def chunks(self) -> Iterator[np.ndarray]:
        for images in self.gallery.image_chunks(self.chunk):
            yield self._prepared(images)

    def take(self, rows: np.ndarray) -> np.ndarray:
        parts = [self._prepared(images) for images in self.gallery.take(rows, self.chunk)]
        return np.concatenate(parts) if parts else np.empty((0, self.dim), np.float32)


def index_gallery(
    scorer: Scorer,
    gallery: GalleryImages,
    kind: str = "exact",
    params: dict | None = None,
    seed: int = 0,
    chunk: int = CHUNK_ROWS,
) -> GalleryIndex:
    """Index ``gallery`` in the scorer's space, fitting its rescorer on the gallery first; both read the
    gallery ``chunk`` rows at a time. ``seed`` picks the IVF training sample."""
    chunk = check_chunk(chunk)
    params = dict(params or {})
    check_request(kind, params, len(gallery), scorer.model.space_dim)  # before any work
    scored = _ScoredGallery(scorer, gallery, chunk)
    scorer.fit_stream(scored.embedded, len(gallery))
    return build_index_from(scored, kind, gallery.names, seed=seed, **params)


def build_gallery_index(
    scorer: Scorer, images: np.ndarray, names: np.ndarray | None, kind: str = "exact", params: dict | None = None
) -> GalleryIndex:
    """Index gallery images (a matrix) in the scorer's space, fitting its rescorer on the gallery first."""
    return index_gallery(scorer, GalleryImages.from_arrays(images, names), kind, params)


def save_gallery_index(folder: str | Path, index: GalleryIndex, scorer: Scorer, run_id: str, force: bool) -> Path:
    """Write the index, the fitted rescorer and the id of the run it belongs to."""
    index.meta = {**index.meta, "run_id": run_id}
    folder = index.save(folder, force=force)
    for stale in (RERANK_META, RERANK_FILE):
        (folder / stale).unlink(missing_ok=True)
    if scorer.rescorer is not None:
        save_rescorer(scorer.rescorer, folder)
    return folder


@dataclass
class Hit:
    name: str
    score: float
    row: int


class Searcher:
    """Translated queries -> ranked gallery items, through an index and the run's scorer."""

    def __init__(self, scorer: Scorer, index: GalleryIndex, candidates: int = 100) -> None:
        if not scorer.fitted:
            raise UsageError("the scorer must be fitted on the indexed gallery")
        self.scorer, self.model = scorer, scorer.model.eval()
        if index.dim != self.model.space_dim:
            raise IndexFileError(
                f"the index holds {index.dim}-d vectors but the run scores in {self.model.space_dim}-d"
            )
        if candidates < 1:
            raise UsageError(f"candidates must be at least 1, got {candidates}")
        self.index, self.candidates = index, candidates

    @classmethod
    def open(cls, model, index_dir: str | Path, run_id: str, candidates: int = 100) -> Searcher:
        """A searcher over a saved index; refuses an index built for another run."""
        index_dir = Path(index_dir)
        index = load_index(index_dir)
        built_for = index.meta.get("run_id")
        if built_for != run_id:
            raise IndexFileError(
                f"{index_dir} was built for another run ({built_for or 'unrecorded'}), not this one ({run_id}); "
                "rebuild it with `stitch index build` for this run"
            )
        rescorer = load_rescorer(index_dir, len(index))
        # the rescorer's gallery statistics were saved with the index
        return cls(Scorer(model, rescorer, fitted=True), index, candidates)

    @property
    def rescorer(self) -> Rescorer | None:
        return self.scorer.rescorer

    @property
    def text_dim(self) -> int:
        return self.model.text_dim

    @torch.no_grad()
    def translate(self, captions: np.ndarray) -> torch.Tensor:
        """Raw caption embeddings -> prepared queries in the scoring space (checked first)."""
        captions = np.asarray(captions, dtype=np.float32)
        if captions.ndim == 1:
            captions = captions[None, :]
        if captions.ndim != 2 or captions.shape[1] != self.text_dim:
            raise UsageError(f"query embeddings must have {self.text_dim} dimensions, got shape {captions.shape}")
        if not np.isfinite(captions).all():
            raise UsageError("query embeddings contain NaN/Inf (after conversion to float32)")
        return self.scorer.prepare_queries(self.scorer.embed_queries(captions))

    def search(self, captions: np.ndarray, k: int = 10) -> list[list[Hit]]:
        """Top ``k`` gallery items for each caption embedding row."""
        q = self.translate(captions)
        k = max(1, min(int(k), len(self.index)))
        depth = min(len(self.index), max(self.candidates, k)) if self.scorer.rescores_candidates else k
        vectors = self.model.query_vectors(q)
        raw, ids = self.index.search(vectors.reshape(-1, vectors.shape[-1]).cpu().numpy(), depth)
        raw, ids = _best_per_item(raw.reshape(len(q), -1), ids.reshape(len(q), -1))
        cand = torch.as_tensor(ids, dtype=torch.long)
        scores = torch.as_tensor(raw)
        if self.scorer.rescores_candidates:
            scores = self.scorer.adjust(scores, cand.clamp(min=0))
        scores = scores.masked_fill(cand < 0, float("-inf"))  # FAISS pads missing hits with -1
        top = scores.topk(min(k, scores.shape[1]), dim=1)
        picked = cand.gather(1, top.indices).numpy()
        return [
            [Hit(str(self.index.names[i]), float(s), int(i)) for s, i in zip(row_s, row_i) if i >= 0]
            for row_s, row_i in zip(top.values.numpy(), picked)
        ]


def _best_per_item(scores: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Merge candidates found by several vectors of a query: each item once, with its best score."""
    if (ids >= 0).all() and _rows_unique(ids):
        return scores, ids
    out_s = np.full(scores.shape, -np.inf, dtype=np.float32)
    out_i = np.full(ids.shape, -1, dtype=np.int64)
    for row, (s, i) in enumerate(zip(scores, ids)):
        keep = i >= 0
        items, where = np.unique(i[keep], return_inverse=True)
        best = np.full(len(items), -np.inf, dtype=np.float32)
        np.maximum.at(best, where, s[keep])
        out_s[row, : len(items)], out_i[row, : len(items)] = best, items
    return out_s, out_i


def _rows_unique(ids: np.ndarray) -> bool:
    ordered = np.sort(ids, axis=1)
    return bool((ordered[:, 1:] != ordered[:, :-1]).all())

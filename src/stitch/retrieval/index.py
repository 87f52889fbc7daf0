"""Nearest-neighbour indexes over a gallery in the scoring space (inner product of unit vectors).

``exact`` is a chunked torch matmul (no extra dependency); ``flat``, ``ivf``, ``hnsw`` and ``ivfpq``
are FAISS indexes (``pip install faiss-cpu``), imported only when used. What a kind is - its settings and
their bounds, its ``faiss.index_factory`` string, its search-time parameters, whether it trains - is its
entry in ``stitch.registries.INDEX_KINDS`` (:mod:`stitch.retrieval.index_kinds`); this module builds, saves,
loads and searches any of them the same way. An index folder holds ``index.json`` (format, kind,
parameters, factory string, dimension, item names) plus the vectors (``vectors.safetensors`` for exact) or
the FAISS file (``index.faiss``); loading one never unpickles anything, and never hands FAISS a string read
from a file (the stored factory string must be the one the kind and its parameters make).

Every kind is built from a :class:`VectorSource`: rows produced chunk by chunk (an array in memory, or a
gallery on disk embedded a chunk at a time), so building never holds the gallery, only the index:

- ``ivf``/``ivfpq`` (the kinds that train) train their coarse quantizer (and PQ codebooks) on a seeded
  sample of :func:`train_sample_size` rows, ``min(n, max(64 nlist, 64 * 2**nbits for ivfpq), TRAIN_SAMPLE_CAP)``
  (FAISS wants at least 39 points per centroid and subsamples above 256), read chunk-wise; ``nlist`` is
  lowered to ``sample // 39`` when the sample is smaller than that. Then the vectors are added in chunks.
- ``exact`` fills its stored matrix chunk by chunk; ``flat``/``hnsw`` add chunk by chunk (HNSW inserts
  each chunk into the graph). These kinds, IVF-Flat and IVF-PQ with ``refine_factor`` > 0 hold every
  vector in full (4 bytes a dimension) - that is what they are. A build whose index would not fit is
  refused before any work (:func:`check_index_fits`: the estimated index size against
  ``MEMORY_SHARE`` of this machine's RAM), pointing at ``ivfpq`` with ``refine_factor=0``, whose PQ
  codes take ``m * nbits / 8`` bytes a vector.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from stitch.data.texts import as_texts
from stitch.errors import StitchError
from stitch.io.atomic import atomic_write, atomic_write_text
from stitch.io.untrusted import read_json_object, regular_file
from stitch.registries import INDEX_KINDS
from stitch.retrieval.index_kinds import PARAM_BOUNDS as PARAM_BOUNDS  # the bounds of every setting, re-exported
from stitch.retrieval.index_kinds import IndexKind

# each kind's parameters and their defaults, as its registry entry (the one place kinds are named) states them
DEFAULT_PARAMS = {kind: dict(INDEX_KINDS.get(kind).defaults) for kind in INDEX_KINDS.names()}
# 2: index.json records its "format" and the FAISS "factory" string; 1 (no "format" key) recorded neither
INDEX_FORMAT = 2
TRAIN_PER_LIST = 64  # IVF training rows per list (FAISS: at least 39, subsamples above 256)
TRAIN_SAMPLE_CAP = 1 << 19  # most rows an IVF/IVF-PQ training sample holds (524,288: 1 GiB at 512-d)
MIN_PER_LIST = 39  # fewer training rows per centroid and FAISS k-means warns; nlist is lowered to keep this
CHUNK = 8192  # rows added to an index at a time
MEMORY_SHARE = 0.8  # an index estimated above this share of the machine's RAM is refused before building

logger = logging.getLogger(__name__)


class IndexFileError(StitchError, ValueError):
    """An index folder is missing, corrupt, or does not fit the query."""


def _unit(x: np.ndarray | torch.Tensor) -> np.ndarray:
    tensor = torch.as_tensor(np.asarray(x, dtype=np.float32))
    return F.normalize(tensor, dim=1).numpy()


class VectorSource(Protocol):
    """The rows an index is built from, never all in memory at once.

    ``chunks()`` yields every row in order, float32, a chunk at a time, and may be called more than once;
    ``take(rows)`` returns the rows at sorted positions ``rows`` (a training sample), reading chunk-wise.
    Rows need not be unit length: the index normalises them."""

    dim: int

    def __len__(self) -> int: ...

    def chunks(self) -> Iterator[np.ndarray]: ...

    def take(self, rows: np.ndarray) -> np.ndarray: ...


@dataclass
class ArrayRows:
    """A :class:`VectorSource` over an array in memory (or a memory-mapped one)."""

    matrix: np.ndarray
    chunk: int = CHUNK

    @property
    def dim(self) -> int:
        return self.matrix.shape[1]

    def __len__(self) -> int:
        return len(self.matrix)

    def chunks(self) -> Iterator[np.ndarray]:
        for start in range(0, len(self.matrix), self.chunk):
            yield np.asarray(self.matrix[start : start + self.chunk], dtype=np.float32)

    def take(self, rows: np.ndarray) -> np.ndarray:
        return np.asarray(self.matrix[rows], dtype=np.float32)


@dataclass
class GalleryIndex:
    """An index of one kind over named gallery items; ``store`` is what its backend keeps (the unit vectors
    of ``exact``, a FAISS index) and only that backend reads it."""

    kind: str
    dim: int
    names: np.ndarray
    params: dict = field(default_factory=dict)
    store: object | None = None
    meta: dict = field(default_factory=dict)  # what the caller records with it (e.g. the run it indexes)

    def __len__(self) -> int:
        return len(self.names)

    @property
    def factory(self) -> str | None:
        """The ``faiss.index_factory`` string of this index (None for ``exact``): its kind's, from the
        parameters and what the build chose (recorded in ``meta``)."""
        kind = kind_of(self.kind)
        return kind.factory(kind.built_from(self.params, self.meta, IndexFileError))

    def search(self, queries: np.ndarray, k: int = 10, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (scores, row ids) per query, best first."""
        queries = np.asarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise IndexFileError(f"queries must be (n, {self.dim}), got {queries.shape}")
        if not np.isfinite(queries).all():
            raise IndexFileError("queries contain NaN/Inf")
        return backend(self.kind).search(self.store, _unit(queries), min(k, len(self)), chunk)

    def save(self, folder: str | Path, force: bool = False) -> Path:
        folder = Path(folder)
        if (folder / "index.json").exists() and not force:
            raise FileExistsError(f"{folder} already holds an index; pass --force to replace it")
        folder.mkdir(parents=True, exist_ok=True)
        store = backend(self.kind)
        store.save(self.store, folder / store.file)
        meta = {
            "format": INDEX_FORMAT,
            "kind": self.kind,
            "dim": self.dim,
            "params": self.params,
            "factory": self.factory,
            "names": [str(n) for n in self.names],
            "meta": self.meta,
        }
        atomic_write_text(folder / "index.json", json.dumps(meta))
        return folder


def kind_of(kind: str) -> IndexKind:
    """The registry entry of an index kind (an unknown one is refused, naming the kinds)."""
    try:
        return INDEX_KINDS.get(kind, "index kind")
    except ValueError as err:
        raise IndexFileError(str(err)) from err


def backend(kind: str):
    """What keeps and searches an index of this kind: the unit vectors (``exact``) or a FAISS index."""
    return STORES[kind_of(kind).store]


def build_index(
    gallery: np.ndarray, kind: str = "exact", names: np.ndarray | None = None, seed: int = 0, **params
) -> GalleryIndex:
    """Index the rows of ``gallery`` (normalised here) for inner-product search."""
    gallery = np.asarray(gallery, dtype=np.float32)
    if gallery.ndim != 2 or len(gallery) == 0:
        raise IndexFileError(f"gallery must be a non-empty 2-D array, got shape {gallery.shape}")
    return build_index_from(ArrayRows(gallery), kind, names, seed=seed, **params)


def build_index_from(
    source: VectorSource, kind: str = "exact", names: np.ndarray | None = None, seed: int = 0, **params
) -> GalleryIndex:
    """Index the rows of ``source`` chunk by chunk (see the module notes); ``seed`` picks the IVF training
    sample. Names default to the row numbers."""
    n, dim = len(source), int(source.dim)
    merged = check_request(kind, params, n, dim)
    names = as_texts(np.arange(n) if names is None else names, "gallery names")
    if len(names) != n:
        raise IndexFileError(f"{len(names)} names for {n} gallery rows")
    store, built = backend(kind).build(kind_of(kind), source, merged, seed)
    return GalleryIndex(kind, dim, names, merged, store, meta=built)


def _unit_chunks(source: VectorSource, n: int, dim: int) -> Iterator[tuple[int, np.ndarray]]:
    """``(first row, unit rows)`` of every chunk, checked finite and counted against ``n``."""
    start = 0
    for rows in source.chunks():
        yield start, _checked(rows, dim, f"gallery rows from {start}")
        start += len(rows)
        if start > n:
            break
    if start != n:
        raise IndexFileError(f"the gallery gave {start} rows, expected {n} (did it change while it was read?)")


def _checked(rows: np.ndarray, dim: int, where: str) -> np.ndarray:
    """Unit float32 rows, C-contiguous (as FAISS takes them); a wrong shape or NaN/Inf is an error."""
    rows = np.asarray(rows, dtype=np.float32)
    if rows.ndim != 2 or rows.shape[1] != dim:
        raise IndexFileError(f"{where} have shape {rows.shape}, expected (n, {dim})")
    bad = np.flatnonzero(~np.isfinite(rows).all(axis=1))
    if len(bad):
        raise IndexFileError(f"gallery contains NaN/Inf: {where}, {len(bad)} row(s) from position {bad[0]}")
    return np.ascontiguousarray(_unit(rows))


def train_sample_size(n: int, kind: str, params: dict) -> int:
    """Rows an index of a kind that trains fits on: ``min(n, 64 * centroids, TRAIN_SAMPLE_CAP)``, where
    ``centroids`` is its largest k-means (``nlist``; for ``ivfpq`` also ``2**nbits`` a PQ sub-vector).

    64 per list sits in FAISS's range (it warns below 39 points per centroid, subsamples above 256). The cap
    bounds the sample's memory whatever the gallery (``nlist`` is then lowered to ``sample // 39``)."""
    return _sample_size(n, kind_of(kind), params)


def _sample_size(n: int, kind: IndexKind, params: dict) -> int:
    return int(min(n, TRAIN_PER_LIST * kind.centroids(params), TRAIN_SAMPLE_CAP))


def training_rows(n: int, size: int, seed: int) -> np.ndarray:
    """The sorted rows of a seeded sample of ``size`` of ``n`` (all of them when ``size >= n``)."""
    if size >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size, replace=False))


def index_bytes(kind: str, n: int, dim: int, params: dict) -> int:
    """About how many bytes of RAM the built index holds (vectors, codes, ids, graph links)."""
    return kind_of(kind).nbytes(n, dim, params)


def physical_memory() -> int | None:
    """Bytes of RAM of this machine, or None where the platform does not say."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


def check_index_fits(kind: str, n: int, dim: int, params: dict) -> None:
    """Refuse, before any work, an index estimated above ``MEMORY_SHARE`` of the machine's RAM."""
    ram = physical_memory()
    need = index_bytes(kind, n, dim, params)
    if ram is None or need <= MEMORY_SHARE * ram:
        return
    pq = {**DEFAULT_PARAMS["ivfpq"], "refine_factor": 0}
    gib = 2**30
    raise IndexFileError(
        f"a {kind} index of {n:,} {dim}-d vectors needs about {need / gib:.1f} GiB of RAM, more than "
        f"{MEMORY_SHARE:.0%} of this machine's {ram / gib:.1f} GiB: {kind} keeps every vector in full. Use "
        f"--kind ivfpq --param refine_factor=0 (PQ codes, about {index_bytes('ivfpq', n, dim, pq) / gib:.1f} GiB "
        "with m=32, nbits=8; pick m dividing the dimension)"
    )


def check_request(kind: str, params: dict, n: int, dim: int) -> dict:
    """Check the kind, its parameters and the size (non-empty; the index fits in RAM, see
    :func:`check_index_fits`) before any work; the parameters with the kind's defaults filled in."""
    entry = kind_of(kind)  # an unknown kind is refused here, naming the kinds
    entry.check_settings(kind, params, IndexFileError)
    if n == 0 or dim == 0:
        raise IndexFileError(f"gallery must be a non-empty 2-D array, got shape ({n}, {dim})")
    merged = {**DEFAULT_PARAMS[kind], **params}
    entry.check_dim(dim, merged, IndexFileError)
    check_index_fits(kind, n, dim, merged)
    return merged


def _faiss_index(kind: IndexKind, source: VectorSource, p: dict, seed: int) -> tuple[object, dict]:
    """The FAISS index ``faiss.index_factory`` makes from the kind's factory string, trained first on a
    seeded sample when the kind trains, then filled chunk by chunk; and what the build chose (training
    rows, seed, and the settings the sample could carry: IVF lists), recorded with it."""
    import faiss

    n, d = len(source), int(source.dim)
    built, sample = {}, None
    if kind.trains:
        size = _sample_size(n, kind, p)
        chosen = kind.fit_to_sample(p, size, MIN_PER_LIST)  # FAISS wants ~39 points per centroid
        for key in (key for key in chosen if chosen[key] != p[key]):
            logger.info("index: %s=%s for %d training rows (asked for %s)", key, chosen[key], size, p[key])
        rows = training_rows(n, size, seed)
        sample = _checked(source.take(rows), d, f"the training sample of {len(rows)} rows (seed {seed})")
        if len(sample) != len(rows):
            raise IndexFileError(f"the gallery gave {len(sample)} training rows, expected {len(rows)}")
        built, p = {"train_rows": int(size), "train_seed": int(seed), **chosen}, {**p, **chosen}
    index = faiss.index_factory(d, kind.factory(p), faiss.METRIC_INNER_PRODUCT)
    kind.prepare(index, p)
    if sample is not None:
        index.train(sample)
        del sample
    _set_search_parameters(index, kind, p)
    for _, rows in _unit_chunks(source, n, d):
        index.add(rows)
    return index, built


def _set_search_parameters(index, kind: IndexKind, settings: dict) -> None:
    import faiss

    space = faiss.ParameterSpace()
    for name, value in kind.search_parameters(settings).items():
        space.set_index_parameter(index, name, value)


# the keys of index.json a format has (``meta`` may be left out); format 1 had no "format" and no "factory"
INDEX_META_KEYS = ("format", "kind", "dim", "params", "factory", "names", "meta")
_FORMAT_KEYS = {1: ("kind", "dim", "params", "names", "meta"), 2: INDEX_META_KEYS}


def load_index(folder: str | Path) -> GalleryIndex:
    """A saved index, checked like untrusted input: ``index.json`` against the schema ``save`` writes (or
    format 1's, which had no factory string) and the bounds a build uses, its factory string against the one
    its kind and parameters make, the stored index against that string, the vectors finite (a NaN would rank
    first), only regular files opened."""
    folder = Path(folder)
    meta_path = folder / "index.json"
    if not meta_path.exists():
        raise IndexFileError(f"{folder} is not an index folder: index.json is missing")
    index, settings = _read_index_meta(meta_path)
    store = backend(index.kind)
    index.store = store.load(folder / store.file, kind_of(index.kind), len(index), index.dim, settings)
    return index


def _read_index_meta(path: Path) -> tuple[GalleryIndex, dict]:
    """The index ``index.json`` describes (no store yet) and the settings it was built with; any key, type
    or value a build would not write is refused in one line naming the file and the key."""
    meta = _index_json(path)
    kind, dim, params, names, extra = (meta.get(key, {}) for key in ("kind", "dim", "params", "names", "meta"))
    if not isinstance(kind, str) or kind not in DEFAULT_PARAMS:
        raise IndexFileError(f"{path}: kind must be one of {sorted(DEFAULT_PARAMS)}, got {kind!r}")
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise IndexFileError(f"{path}: dim must be a whole number >= 1, got {dim!r}")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise IndexFileError(f"{path}: names must be a non-empty list of strings, got {_short(names)}")
    if not isinstance(params, dict) or not isinstance(extra, dict):
        raise IndexFileError(f"{path}: params and meta must be JSON objects, got {_short(params)}, {_short(extra)}")
    entry, params = kind_of(kind), {**DEFAULT_PARAMS[kind], **params}
    try:
        entry.check_settings(kind, params, IndexFileError)
        settings = entry.built_from(params, extra, IndexFileError)
    except IndexFileError as err:
        raise IndexFileError(f"{path}: {err}") from err
    index = GalleryIndex(kind, dim, np.array(names), params, meta=extra)
    if "factory" in meta and meta["factory"] != entry.factory(settings):
        # never handed to FAISS: a string the kind and settings do not make is refused
        raise IndexFileError(
            f"{path}: factory {_short(meta['factory'])} is not what kind {kind!r} with these parameters makes "
            f"({entry.factory(settings)!r}); rebuild the index (stitch index build)"
        )
    return index, settings


def _index_json(path: Path) -> dict:
    """``index.json`` read as untrusted JSON: an object with the keys of its format (1 when it names none)."""
    meta = read_json_object(path, IndexFileError)
    version = meta.get("format", 1)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise IndexFileError(f"{path}: format must be a whole number >= 1, got {_short(version)}")
    if version > INDEX_FORMAT:
        raise IndexFileError(
            f"{path}: index format {version} is newer than this stitch reads ({INDEX_FORMAT}); upgrade stitch"
        )
    keys = _FORMAT_KEYS[version]
    unknown = sorted(set(meta) - set(keys))
    missing = [key for key in keys if key not in meta and key != "meta"]
    if unknown or missing:
        raise IndexFileError(
            f"{path} is corrupt: unknown key(s) {unknown}, missing key(s) {missing} (index format {version})"
        )
    return meta


def _short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _load_vectors(path: Path, n: int, dim: int) -> np.ndarray:
    """The exact index's (n, dim) float vectors, every row finite (the row in the file is named)."""
    from safetensors.numpy import load_file

    regular_file(path, error=IndexFileError)
    try:
        vectors = load_file(str(path))["vectors"]
    except Exception as err:
        raise IndexFileError(f"{path} cannot be read: {err}") from err
    if vectors.shape != (n, dim) or vectors.dtype.kind != "f":
        raise IndexFileError(f"{path}: vectors {vectors.dtype} {vectors.shape} do not match {n} names x {dim} dims")
    _refuse_non_finite(vectors, 0, path)
    return vectors


def _refuse_non_finite(rows: np.ndarray, start: int, path: Path) -> None:
    bad = np.flatnonzero(~np.isfinite(rows).all(axis=1))
    if len(bad):
        raise IndexFileError(
            f"{path}: vector row {start + int(bad[0])} holds NaN/Inf ({len(bad)} such row(s) from there); "
            "rebuild the index (stitch index build)"
        )


def _check_faiss_finite(index, path: Path) -> None:
    """Reconstruct every stored vector (and an IVF index's centroids) a chunk at a time and refuse NaN/Inf."""
    import faiss

    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None:
        _finite_rows(index, index.ntotal, path)
        return
    _finite_rows(ivf.quantizer, ivf.nlist, path)
    ivf.make_direct_map()  # lets reconstruct find a vector by its id
    try:
        _finite_rows(index, index.ntotal, path)
    finally:
        ivf.set_direct_map_type(faiss.DirectMap.NoMap)


def _finite_rows(index, n: int, path: Path) -> None:
    import faiss

    for start in range(0, n, CHUNK):
        # FAISS's C call into a numpy buffer: its Python wrapper returns torch tensors once any library has
        # imported faiss.contrib.torch_utils (pytorch-metric-learning does), and NaN checks would misread them
        rows = np.empty((min(CHUNK, n - start), index.d), dtype=np.float32)
        index.reconstruct_n_c(start, len(rows), faiss.swig_ptr(rows))
        _refuse_non_finite(rows, start, path)


def _structure(index) -> tuple:
    """What a FAISS index is, as far as a factory string decides: dimension, metric, exact re-rank or not,
    graph or not, and its inverted lists (count, code bytes a vector)."""
    import faiss

    ivf = faiss.try_extract_index_ivf(index)
    lists = None if ivf is None else (int(ivf.nlist), int(ivf.code_size))
    return (
        int(index.d),
        int(index.metric_type),
        isinstance(index, faiss.IndexRefine),
        isinstance(index, faiss.IndexHNSW),
        lists,
    )


class ExactBackend:
    """``exact``: the gallery's unit vectors in memory, searched by a chunked matmul (no dependency)."""

    file = "vectors.safetensors"

    def build(self, kind: IndexKind, source: VectorSource, params: dict, seed: int) -> tuple[np.ndarray, dict]:
        n, dim = len(source), int(source.dim)
        vectors = np.empty((n, dim), dtype=np.float32)
        for start, rows in _unit_chunks(source, n, dim):
            vectors[start : start + len(rows)] = rows
        return vectors, {}

    def search(self, vectors: np.ndarray, q: np.ndarray, k: int, chunk: int) -> tuple[np.ndarray, np.ndarray]:
        gallery = torch.as_tensor(vectors)
        scores, ids = [], []
        for start in range(0, len(q), chunk):
            top = (torch.as_tensor(q[start : start + chunk]) @ gallery.T).topk(k, dim=1)
            scores.append(top.values.numpy())
            ids.append(top.indices.numpy())
        return np.concatenate(scores), np.concatenate(ids)

    def save(self, vectors: np.ndarray, path: Path) -> None:
        from safetensors.numpy import save_file

        atomic_write(path, lambda tmp: save_file({"vectors": vectors}, str(tmp)))

    def load(self, path: Path, kind: IndexKind, n: int, dim: int, settings: dict) -> np.ndarray:
        return _load_vectors(path, n, dim)


class FaissBackend:
    """Every kind with a factory string: a FAISS inner-product index (``pip install 'stitch[index]'``)."""

    file = "index.faiss"

    def build(self, kind: IndexKind, source: VectorSource, params: dict, seed: int) -> tuple[object, dict]:
        return _faiss_index(kind, source, params, seed)

    def search(self, index, q: np.ndarray, k: int, chunk: int) -> tuple[np.ndarray, np.ndarray]:
        return index.search(q, k)

    def save(self, index, path: Path) -> None:
        import faiss

        atomic_write(path, lambda tmp: faiss.write_index(index, str(tmp)))

    def load(self, path: Path, kind: IndexKind, n: int, dim: int, settings: dict):
        """The FAISS file, checked: its size against ``index.json``, its structure against the factory
        string the kind and ``settings`` (those it was built with) make, every stored vector finite; then
        the kind's search-time parameters are set."""
        import faiss

        path = regular_file(path, error=IndexFileError)
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as err:
            raise IndexFileError(f"{path} cannot be read: {err}") from err
        if index.ntotal != n or index.d != dim:
            raise IndexFileError(f"index has {index.ntotal} x {index.d}, names/meta say {n} x {dim}")
        factory = kind.factory(settings)
        if _structure(index) != _structure(faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)):
            raise IndexFileError(
                f"{path} does not hold the {factory} index index.json describes; rebuild the index (stitch index build)"
            )
        _check_faiss_finite(index, path)
        _set_search_parameters(index, kind, settings)
        return index


STORES = {"vectors": ExactBackend(), "faiss": FaissBackend()}  # what each kind's ``store`` names


def knn_classify(index: GalleryIndex, labels: np.ndarray, queries: np.ndarray, k: int = 5) -> np.ndarray:
    """Majority label of the ``k`` nearest gallery items (ties: the label of the nearer item)."""
    labels = np.asarray(labels)
    if len(labels) != len(index):
        raise IndexFileError(f"{len(labels)} labels for {len(index)} indexed items")
    _, ids = index.search(queries, k)
    return majority_vote(labels[ids])


def majority_vote(neighbour_labels: np.ndarray) -> np.ndarray:
    """Most frequent label per row of neighbours (nearest first); ties go to the nearer label."""
    out = []
    for row in neighbour_labels:
        values, first, counts = np.unique(row, return_index=True, return_counts=True)
        best = np.flatnonzero(counts == counts.max())
        out.append(values[best[np.argmin(first[best])]])
    return np.array(out)


def knn_regress(index: GalleryIndex, targets: np.ndarray, queries: np.ndarray, k: int = 5) -> np.ndarray:
    """Mean target of the ``k`` nearest gallery items (e.g. positions, as in image-based localisation)."""
    targets = np.asarray(targets, dtype=np.float64)
    if len(targets) != len(index):
        raise IndexFileError(f"{len(targets)} targets for {len(index)} indexed items")
    _, ids = index.search(queries, k)
    return targets[ids].mean(axis=1)

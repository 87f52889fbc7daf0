"""Nearest-neighbour indexes over a gallery in the scoring space (inner product of unit vectors).

``exact`` is a chunked torch matmul (no extra dependency); ``flat``, ``ivf``, ``hnsw`` and ``ivfpq``
are FAISS indexes (``pip install faiss-cpu``), imported only when used. An index folder holds
``index.json`` (kind, parameters, dimension, item names) plus the vectors (``vectors.safetensors``
for exact) or the FAISS file (``index.faiss``); loading one never unpickles anything.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from stitch.io.atomic import atomic_write, atomic_write_text
from stitch.registries import INDEX_KINDS

DEFAULT_PARAMS = {
    "exact": {},
    "flat": {},
    "ivf": {"nlist": 1024, "nprobe": 32},
    "hnsw": {"m": 32, "ef_construction": 200, "ef_search": 128},
    "ivfpq": {"nlist": 1024, "nprobe": 32, "m": 32, "nbits": 8, "refine_factor": 10},
}
# inclusive bounds of every parameter: FAISS takes out-of-range values and overflows or eats the memory
PARAM_BOUNDS = {
    "nlist": (1, 1 << 20),
    "nprobe": (1, 1 << 20),
    "m": (2, 512),
    "ef_construction": (1, 1 << 16),
    "ef_search": (1, 1 << 16),
    "nbits": (1, 16),
    "refine_factor": (0, 1000),
}


class IndexFileError(ValueError):
    """An index folder is missing, corrupt, or does not fit the query."""


def _unit(x: np.ndarray | torch.Tensor) -> np.ndarray:
    tensor = torch.as_tensor(np.asarray(x, dtype=np.float32))
    return F.normalize(tensor, dim=1).numpy()


@dataclass
class GalleryIndex:
    kind: str
    dim: int
    names: np.ndarray
    params: dict = field(default_factory=dict)
    vectors: np.ndarray | None = None  # exact only
    faiss_index: object | None = None
    meta: dict = field(default_factory=dict)  # what the caller records with it (e.g. the run it indexes)

    def __len__(self) -> int:
        return len(self.names)

    def search(self, queries: np.ndarray, k: int = 10, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (scores, row ids) per query, best first."""
        queries = np.asarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise IndexFileError(f"queries must be (n, {self.dim}), got {queries.shape}")
        if not np.isfinite(queries).all():
            raise IndexFileError("queries contain NaN/Inf")
        k = min(k, len(self))
        q = _unit(queries)
        if self.kind == "exact":
            gallery = torch.as_tensor(self.vectors)
            scores, ids = [], []
            for start in range(0, len(q), chunk):
                top = (torch.as_tensor(q[start : start + chunk]) @ gallery.T).topk(k, dim=1)
                scores.append(top.values.numpy())
                ids.append(top.indices.numpy())
            return np.concatenate(scores), np.concatenate(ids)
        scores, ids = self.faiss_index.search(q, k)
        return scores, ids

    def save(self, folder: str | Path, force: bool = False) -> Path:
        folder = Path(folder)
        if (folder / "index.json").exists() and not force:
            raise FileExistsError(f"{folder} already holds an index; pass --force to replace it")
        folder.mkdir(parents=True, exist_ok=True)
        if self.kind == "exact":
            from safetensors.numpy import save_file

            atomic_write(folder / "vectors.safetensors", lambda tmp: save_file({"vectors": self.vectors}, str(tmp)))
        else:
            import faiss

            atomic_write(folder / "index.faiss", lambda tmp: faiss.write_index(self.faiss_index, str(tmp)))
        meta = {
            "kind": self.kind,
            "dim": self.dim,
            "params": self.params,
            "names": [str(n) for n in self.names],
            "meta": self.meta,
        }
        atomic_write_text(folder / "index.json", json.dumps(meta))
        return folder


def build_index(gallery: np.ndarray, kind: str = "exact", names: np.ndarray | None = None, **params) -> GalleryIndex:
    """Index the rows of ``gallery`` (normalised here) for inner-product search."""
    try:
        INDEX_KINDS.check(kind, "index kind")
    except ValueError as err:
        raise IndexFileError(str(err)) from err
    _check_params(kind, params)
    gallery = np.asarray(gallery, dtype=np.float32)
    if gallery.ndim != 2 or len(gallery) == 0:
        raise IndexFileError(f"gallery must be a non-empty 2-D array, got shape {gallery.shape}")
    if not np.isfinite(gallery).all():
        raise IndexFileError("gallery contains NaN/Inf")
    names = np.arange(len(gallery)).astype(str) if names is None else np.asarray(names).astype(str)
    if len(names) != len(gallery):
        raise IndexFileError(f"{len(names)} names for {len(gallery)} gallery rows")
    merged = {**DEFAULT_PARAMS[kind], **params}
    vectors = _unit(gallery)
    if kind == "exact":
        return GalleryIndex(kind, gallery.shape[1], names, merged, vectors=vectors)
    return GalleryIndex(kind, gallery.shape[1], names, merged, faiss_index=_faiss_index(kind, vectors, merged))


def _check_params(kind: str, params: dict) -> None:
    unknown = set(params) - set(DEFAULT_PARAMS[kind])
    if unknown:
        raise IndexFileError(
            f"unknown parameter(s) {sorted(unknown)} for {kind}; valid: {sorted(DEFAULT_PARAMS[kind])}"
        )
    for key, value in params.items():
        low, high = PARAM_BOUNDS[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise IndexFileError(f"index parameter {key} must be a whole number, got {value!r}")
        if not low <= value <= high:
            raise IndexFileError(f"index parameter {key} must be in [{low}, {high}], got {value}")


def _faiss_index(kind: str, vectors: np.ndarray, p: dict):
    import faiss

    d = vectors.shape[1]
    metric = faiss.METRIC_INNER_PRODUCT
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, int(p["m"]), metric)
        index.hnsw.efConstruction = int(p["ef_construction"])
        index.hnsw.efSearch = int(p["ef_search"])
    else:
        nlist = max(1, min(int(p["nlist"]), len(vectors) // 39))  # FAISS wants ~39 points per centroid
        quantizer = faiss.IndexFlatIP(d)
        if kind == "ivf":
            index = faiss.IndexIVFFlat(quantizer, d, nlist, metric)
        else:
            if d % int(p["m"]):
                raise IndexFileError(f"ivfpq needs the dimension ({d}) divisible by m ({p['m']})")
            index = faiss.IndexIVFPQ(quantizer, d, nlist, int(p["m"]), int(p["nbits"]), metric)
        sample = (
            vectors
            if len(vectors) <= 64 * nlist  # k-means sample: 64 points per list
            else vectors[np.random.default_rng(0).choice(len(vectors), 64 * nlist, replace=False)]
        )
        index.train(sample)
        index.nprobe = min(int(p["nprobe"]), nlist)
        if kind == "ivfpq" and int(p["refine_factor"]) > 0:
            index = faiss.IndexRefineFlat(index)  # re-rank k x refine_factor PQ candidates exactly
            index.k_factor = float(p["refine_factor"])
    index.add(vectors)
    return index


def load_index(folder: str | Path) -> GalleryIndex:
    folder = Path(folder)
    meta_path = folder / "index.json"
    if not meta_path.exists():
        raise IndexFileError(f"{folder} is not an index folder: index.json is missing")
    try:
        meta = json.loads(meta_path.read_text())
        kind, dim, names, params = meta["kind"], int(meta["dim"]), np.array(meta["names"]), meta["params"]
        extra = dict(meta.get("meta", {}))
    except (KeyError, ValueError, TypeError) as err:
        raise IndexFileError(f"{meta_path} is corrupt: {err}") from err
    if kind == "exact":
        from safetensors.numpy import load_file

        try:
            vectors = load_file(str(folder / "vectors.safetensors"))["vectors"]
        except Exception as err:
            raise IndexFileError(f"{folder / 'vectors.safetensors'} cannot be read: {err}") from err
        if vectors.shape != (len(names), dim):
            raise IndexFileError(f"vectors {vectors.shape} do not match {len(names)} names x {dim} dims")
        return GalleryIndex(kind, dim, names, params, vectors=vectors, meta=extra)
    import faiss

    try:
        index = faiss.read_index(str(folder / "index.faiss"))
    except RuntimeError as err:
        raise IndexFileError(f"{folder / 'index.faiss'} cannot be read: {err}") from err
    if index.ntotal != len(names) or index.d != dim:
        raise IndexFileError(f"index has {index.ntotal} x {index.d}, names/meta say {len(names)} x {dim}")
    _restore_search_params(index, kind, params)
    return GalleryIndex(kind, dim, names, params, faiss_index=index, meta=extra)


def _restore_search_params(index, kind: str, params: dict) -> None:
    import faiss

    if kind == "hnsw":
        index.hnsw.efSearch = int(params["ef_search"])
    elif kind in ("ivf", "ivfpq"):
        ivf = faiss.extract_index_ivf(index)
        ivf.nprobe = min(int(params["nprobe"]), ivf.nlist)
        if kind == "ivfpq" and isinstance(index, faiss.IndexRefine):
            index.k_factor = float(params["refine_factor"])


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

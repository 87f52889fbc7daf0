"""Search a gallery index with caption embeddings, through a run's :class:`Scorer`.

The rescorer's gallery statistics are fitted when the index is built (they are properties of the
gallery and a bank of training queries) and saved beside it, so search time only pays for the
candidate rescoring. An index records the run it was built for (``run_id``, a content hash of the
weights and config) and refuses to answer for another run.

A query made of several vectors (a set head's slots, scored by the best slot) is searched one vector
at a time and the candidates merged by their best score: an item in the true top k under max-scoring
is in the top k of its best vector, so with an exact index the merge is exact.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from stitch.io.atomic import atomic_write, atomic_write_text
from stitch.retrieval.hubness import Rescorer, build_rescorer
from stitch.retrieval.index import GalleryIndex, IndexFileError, build_index, load_index
from stitch.retrieval.scorer import Scorer

RERANK_FILE = "rerank.safetensors"
RERANK_META = "rerank.json"


def save_rescorer(rescorer: Rescorer, folder: Path) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().clone() for k, v in vars(rescorer).items() if isinstance(v, torch.Tensor)}
    if state:
        atomic_write(folder / RERANK_FILE, lambda tmp: save_file(state, str(tmp)))
    atomic_write_text(folder / RERANK_META, json.dumps({"name": rescorer.name, "params": rescorer.params}))


def load_rescorer(folder: Path) -> Rescorer | None:
    meta_path = folder / RERANK_META
    if not meta_path.exists():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        rescorer = build_rescorer(meta["name"], **meta["params"])
    except (KeyError, TypeError, ValueError) as err:
        raise IndexFileError(f"{meta_path} is corrupt: {err}") from err
    if (folder / RERANK_FILE).exists():
        from safetensors.torch import load_file

        for key, value in load_file(str(folder / RERANK_FILE)).items():
            setattr(rescorer, key, value)
    return rescorer


def build_gallery_index(
    scorer: Scorer, images: np.ndarray, names: np.ndarray | None, kind: str = "exact", params: dict | None = None
) -> GalleryIndex:
    """Index gallery images in the scorer's space, fitting its rescorer on the gallery first."""
    gallery = scorer.embed_gallery(images)
    scorer.fit(gallery)
    return build_index(scorer.prepare_gallery(gallery).cpu().numpy(), kind, names=names, **(params or {}))


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
            raise ValueError("the scorer must be fitted on the indexed gallery")
        self.scorer, self.model = scorer, scorer.model.eval()
        if index.dim != self.model.space_dim:
            raise IndexFileError(
                f"the index holds {index.dim}-d vectors but the run scores in {self.model.space_dim}-d"
            )
        if candidates < 1:
            raise ValueError(f"candidates must be at least 1, got {candidates}")
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
        rescorer = load_rescorer(index_dir)
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
            raise ValueError(f"query embeddings must have {self.text_dim} dimensions, got shape {captions.shape}")
        if not np.isfinite(captions).all():
            raise ValueError("query embeddings contain NaN/Inf (after conversion to float32)")
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

"""Search a run's gallery index with caption embeddings, optionally with hubness-aware rescoring.

The rescorer's gallery statistics are fitted when the index is built (they are properties of the
gallery and a bank of training queries) and saved beside it, so search time only pays for the
candidate rescoring.
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
from stitch.retrieval.ranks import cosine_ready

RERANK_FILE = "rerank.safetensors"
RERANK_META = "rerank.json"


def rescorer_state(rescorer: Rescorer) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in vars(rescorer).items() if isinstance(v, torch.Tensor)}


def save_rescorer(rescorer: Rescorer, folder: Path) -> None:
    from safetensors.torch import save_file

    state = rescorer_state(rescorer)
    if state:
        atomic_write(folder / RERANK_FILE, lambda tmp: save_file(state, str(tmp)))
    atomic_write_text(folder / RERANK_META, json.dumps({"name": rescorer.name, "params": rescorer.params}))


def load_rescorer(folder: Path) -> Rescorer | None:
    meta_path = folder / RERANK_META
    if not meta_path.exists():
        return None
    meta = json.loads(meta_path.read_text())
    rescorer = build_rescorer(meta["name"], **meta["params"])
    if (folder / RERANK_FILE).exists():
        from safetensors.torch import load_file

        for key, value in load_file(str(folder / RERANK_FILE)).items():
            setattr(rescorer, key, value)
    return rescorer


def build_gallery_index(
    gallery: np.ndarray,
    names: np.ndarray | None,
    kind: str = "exact",
    params: dict | None = None,
    rescorer: Rescorer | None = None,
    query_bank: np.ndarray | None = None,
) -> tuple[GalleryIndex, Rescorer | None]:
    """Index gallery embeddings (scoring space); fit the rescorer on the query bank first when given."""
    vectors = cosine_ready(gallery)
    if rescorer is not None:
        if query_bank is None:
            raise ValueError(f"rerank {rescorer.name!r} needs a bank of training queries")
        rescorer.fit(cosine_ready(query_bank), vectors)
        vectors = rescorer.gallery(vectors)
    return build_index(vectors.numpy(), kind, names=names, **(params or {})), rescorer


@dataclass
class Hit:
    name: str
    score: float
    row: int


class Searcher:
    """Translated queries -> ranked gallery items, through an index and an optional rescorer."""

    def __init__(self, model, index: GalleryIndex, rescorer: Rescorer | None = None, candidates: int = 100) -> None:
        self.model = model.eval()
        with torch.no_grad():
            space_dim = model.embed_queries(torch.zeros(1, model.text_dim)).shape[1]
        if index.dim != space_dim:
            raise IndexFileError(f"the index holds {index.dim}-d vectors but the run scores in {space_dim}-d")
        self.index = index
        self.rescorer = rescorer
        self.candidates = candidates

    @classmethod
    def open(cls, run_dir: str | Path, index_dir: str | Path, candidates: int = 100) -> Searcher:
        from stitch.training import load_model

        model, _ = load_model(run_dir)
        index_dir = Path(index_dir)
        return cls(model, load_index(index_dir), load_rescorer(index_dir), candidates)

    @property
    def text_dim(self) -> int:
        return self.model.text_dim

    @torch.no_grad()
    def translate(self, captions: np.ndarray) -> torch.Tensor:
        captions = np.asarray(captions, dtype=np.float32)
        if captions.ndim == 1:
            captions = captions[None, :]
        if captions.shape[1] != self.text_dim:
            raise ValueError(f"query embeddings must have {self.text_dim} dimensions, got {captions.shape[1]}")
        if not np.isfinite(captions).all():
            raise ValueError("query embeddings contain NaN/Inf")
        q = cosine_ready(self.model.embed_queries(torch.as_tensor(captions)))
        return q if self.rescorer is None else self.rescorer.queries(q)

    def search(self, captions: np.ndarray, k: int = 10) -> list[list[Hit]]:
        """Top ``k`` gallery items for each caption embedding row."""
        q = self.translate(captions)
        k = max(1, min(k, len(self.index)))
        if self.rescorer is None or self.rescorer.offset is None:
            scores, ids = self.index.search(q.numpy(), k)
        else:
            depth = min(len(self.index), max(self.candidates, k))
            raw, cand = self.index.search(q.numpy(), depth)
            cand_t = torch.as_tensor(cand, dtype=torch.long)
            adjusted = self.rescorer.adjust(torch.as_tensor(raw), cand_t.clamp(min=0))
            adjusted = adjusted.masked_fill(cand_t < 0, float("-inf"))  # FAISS pads missing hits with -1
            top = adjusted.topk(k, dim=1)
            scores, ids = top.values.numpy(), cand_t.gather(1, top.indices).numpy()
        return [
            [Hit(str(self.index.names[i]), float(s), int(i)) for s, i in zip(row_s, row_i) if i >= 0]
            for row_s, row_i in zip(scores, ids)
        ]

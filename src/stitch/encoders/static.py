"""A static query encoder: one learnt vector per token, averaged (model2vec), distilled from a
sentence-transformers model. It encodes a query in microseconds instead of milliseconds; its space is
not the teacher's, so a run must be trained on captions it encoded (``stitch encode --from-data``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from stitch.errors import UsageError


class StaticTextEncoder:
    """``encode(texts) -> (n, d) float32``, L2-normalised, from a model2vec folder (``static:PATH``)."""

    def __init__(self, path: str | Path) -> None:
        from model2vec import StaticModel

        path = Path(path)
        if not (path / "model.safetensors").is_file():
            raise UsageError(f"{path} is not a static encoder folder (stitch distill-encoder writes one)")
        self.model = StaticModel.from_pretrained(str(path))
        self.spec = f"static:{path}"
        self.dim = int(self.model.dim)

    @classmethod
    def from_spec(cls, spec: str, device: str = "cpu", precision: str = "fp32") -> StaticTextEncoder:
        if precision != "fp32":
            raise UsageError("a static encoder has one precision (fp32); drop --text-precision")
        return cls(spec.split(":", 1)[1])

    def encode(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        rows = np.asarray(self.model.encode(list(texts), show_progress_bar=False), dtype=np.float32)
        norms = np.linalg.norm(rows, axis=1, keepdims=True)
        return rows / np.maximum(norms, 1e-12)


def distill_encoder(teacher: str, out: str | Path, pca_dims: int = 256, force: bool = False) -> Path:
    """Distil a static encoder from a sentence-transformers ``teacher`` spec (``minilm``, ``st:PATH``) into
    ``out``, offline; written beside ``out`` and moved into place when complete."""
    from model2vec.distill import distill

    from stitch.encoders.text import _resolve_text_path

    out = Path(out)
    if out.exists() and not force:
        raise FileExistsError(f"{out} already exists; pass --force to replace it")
    if not 2 <= pca_dims <= 4096:
        raise UsageError(f"pca dims must be in [2, 4096], got {pca_dims}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model = distill(model_name=str(_resolve_text_path(teacher)), pca_dims=pca_dims)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(str(staging))
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out

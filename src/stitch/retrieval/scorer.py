"""How a run ranks a gallery: the model's own similarity, optionally rescored against a query bank.

One :class:`Scorer` serves the trainer's dev metric, ``evaluate``, index build and search, the service
and the report, so a figure printed anywhere is the figure of the same scoring. Get one from a run
(``run.scorer()``); :meth:`Scorer.fit` learns the gallery statistics a rescorer needs (from a gallery
in memory, or given chunk by chunk: :meth:`Scorer.fit_stream`).
"""

from __future__ import annotations

import numpy as np
import torch

from stitch.errors import StateError, UsageError
from stitch.registries import RESCORERS
from stitch.retrieval.hubness import GalleryChunks, Rescorer, configured_rescorer, one_chunk
from stitch.retrieval.ranks import DEFAULT_CHUNK, cosine_ready
from stitch.translators import Translator, embed_rows


class Scorer:
    """``model``'s similarity, plus ``rescorer`` fitted on ``bank`` (raw training captions, never the
    evaluated queries) when one is configured."""

    def __init__(
        self,
        model: Translator,
        rescorer: Rescorer | None = None,
        bank: np.ndarray | None = None,
        device: str | torch.device = "cpu",
        chunk: int = DEFAULT_CHUNK,
        fitted: bool = False,
    ) -> None:
        """``fitted=True``: the rescorer already holds its gallery statistics (restored with an index)."""
        if rescorer is not None and rescorer.name == "none":
            rescorer = None
        if rescorer is not None and bank is None and not fitted:
            raise UsageError(
                f"rerank {rescorer.name!r} needs a query bank of training captions: this run has none; "
                "pass bank= or use rerank='none'"
            )
        if rescorer is not None and RESCORERS.tag(rescorer.name, "single_vector") and model.vectors_per_query > 1:
            raise UsageError(f"{rescorer.name} transforms single query vectors; use model.aggregation=mean")
        self.model, self.rescorer, self.device, self.chunk = model, rescorer, device, chunk
        self.bank = None if bank is None else np.asarray(bank, dtype=np.float32)
        self.fitted = fitted or rescorer is None

    @classmethod
    def configured(
        cls,
        model: Translator,
        rerank: str,
        params: dict | None = None,
        inference=None,
        temperature: float | None = None,
        bank: np.ndarray | None = None,
        device: str | torch.device = "cpu",
    ) -> Scorer:
        """The scoring named ``rerank`` with a run's defaults (β = 1/learnt temperature, k, ...)."""
        rescorer = None if rerank == "none" else configured_rescorer(rerank, params, inference, temperature)
        return cls(model, rescorer, bank, device)

    @property
    def name(self) -> str:
        """``cosine`` or the rescorer's registry name (``is``, ``csls``, ...)."""
        return "cosine" if self.rescorer is None else self.rescorer.name

    def plain(self) -> Scorer:
        """The same model scored with its plain similarity (for side-by-side tables)."""
        return Scorer(self.model, None, None, self.device, self.chunk)

    # -- embeddings ------------------------------------------------------------------------------
    def embed_queries(self, captions: np.ndarray, what: str = "translated queries") -> torch.Tensor:
        """Unit query vectors (or unit slot sets) in the scoring space; NaN/Inf is an error."""
        rows = embed_rows(self.model.embed_queries, np.asarray(captions, np.float32), self.device, what=what)
        return self.model.normalize_queries(rows)

    def embed_gallery(self, images: np.ndarray) -> torch.Tensor:
        rows = embed_rows(self.model.embed_gallery, np.asarray(images, np.float32), self.device, what="gallery")
        return cosine_ready(rows, self.device)

    # -- fitting and scoring ---------------------------------------------------------------------
    def fit(self, gallery: torch.Tensor, gallery_bank: torch.Tensor | None = None) -> Scorer:
        """Learn the rescorer's gallery statistics (unit ``gallery`` rows) from the translated bank."""
        return self.fit_stream(one_chunk(gallery), len(gallery), gallery_bank)

    def fit_stream(self, gallery: GalleryChunks, n: int, gallery_bank: torch.Tensor | None = None) -> Scorer:
        """:meth:`fit` on a gallery of ``n`` rows given chunk by chunk (``gallery()`` yields its unit rows in
        order and may be called again): the same statistics, computed by the rescorer's own
        :meth:`~stitch.retrieval.hubness.Rescorer.fit_stream`, without holding the gallery."""
        if self.rescorer is not None:
            bank = self.embed_queries(self.bank, what="translated query bank")
            g_bank = None if gallery_bank is None else cosine_ready(gallery_bank, self.device)
            self.rescorer.fit_stream(bank, gallery, self.model.score, n, g_bank)
        self.fitted = True
        return self

    def prepare_queries(self, queries: torch.Tensor) -> torch.Tensor:
        return queries if self.rescorer is None else self.rescorer.queries(queries)

    def prepare_gallery(self, gallery: torch.Tensor) -> torch.Tensor:
        return gallery if self.rescorer is None else self.rescorer.gallery(gallery)

    def similarity(self, queries: torch.Tensor, gallery: torch.Tensor) -> torch.Tensor:
        return self.model.score(queries, gallery)

    def adjust(self, scores: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
        """Rescore full rows of ``scores`` (or candidate items ``ids``); plain scores pass through."""
        if not self.fitted:
            raise StateError("Scorer.fit(gallery) must run before scores are adjusted")
        return scores if self.rescorer is None else self.rescorer.adjust(scores, ids)

    @property
    def rescores_candidates(self) -> bool:
        """Whether search must rescore index candidates (a per-item offset), not just re-embed."""
        return self.rescorer is not None and self.rescorer.offset is not None

    def scores(self, queries: torch.Tensor, gallery: torch.Tensor) -> torch.Tensor:
        """Final scores of prepared queries against the prepared gallery."""
        return self.adjust(self.similarity(queries, gallery))

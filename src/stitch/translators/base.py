"""The one contract every model of stitch keeps (translators, dual heads, set heads, ensembles).

A :class:`Translator` embeds queries (captions) and gallery items (images) into a scoring space and
says how a query scores an item. Retrieval, indexing, the service and the report only talk to this
contract, so a query made of several vectors (a slot set) or a model without image-space predictions
(dual heads) needs no special case outside its own class.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from stitch.errors import ModelOutputError, UsageError
from stitch.registries import IMAGE_TARGETS
from stitch.translators.moments import PairMoments
from stitch.translators.space import Standardizer


def check_target(target: str) -> str:
    """``target`` if it names an image-space output (:data:`IMAGE_TARGETS`), else a ValueError naming it."""
    if target not in IMAGE_TARGETS:
        raise UsageError(f"target must be one of {list(IMAGE_TARGETS)}, got {target!r}")
    return target


class NonFiniteError(ModelOutputError):
    """A model produced NaN or Inf: the numbers after it would be silently wrong."""


def check_finite(x: torch.Tensor, what: str) -> torch.Tensor:
    """``x`` unchanged, or a :class:`NonFiniteError` naming ``what`` and how many rows are bad."""
    if not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x.reshape(len(x), -1))).any(dim=1).sum()) if x.ndim else 1
        raise NonFiniteError(f"{what} holds NaN/Inf in {bad} of {len(x) if x.ndim else 1} rows")
    return x


class Translator(nn.Module):
    """Queries and gallery items into one scoring space; cosine-style scores between them.

    Subclasses implement ``embed_queries`` and ``embed_gallery``; the rest has defaults that fit a
    model whose query is one vector. ``space`` z-scores raw image features with train statistics.
    """

    #: whether ``to_image_space`` gives predictions in the raw image-feature space (submissions)
    has_image_space: bool = True
    #: vectors per query: 1, or K for a set of K slots scored by its best slot
    vectors_per_query: int = 1

    def __init__(self, text_dim: int, image_dim: int) -> None:
        super().__init__()
        self.text_dim, self.image_dim = text_dim, image_dim
        self.space = Standardizer(image_dim)

    # -- the two sides -------------------------------------------------------------------------
    def embed_queries(self, captions: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def embed_gallery(self, images: torch.Tensor) -> torch.Tensor:
        return self.space(images)

    @property
    def query_dim(self) -> int:
        """Dimension of a raw query (the caption embedding the model takes)."""
        return self.text_dim

    @property
    def gallery_dim(self) -> int:
        """Dimension of a raw gallery item (the image feature the model takes)."""
        return self.image_dim

    @property
    def space_dim(self) -> int:
        """Dimension of the scoring space (per vector of ``embed_queries`` and ``embed_gallery``)."""
        return self.image_dim

    # -- scoring -------------------------------------------------------------------------------
    def normalize_queries(self, queries: torch.Tensor) -> torch.Tensor:
        """Unit rows, so a dot product is a cosine (slot sets: unit slots)."""
        return F.normalize(queries.float(), dim=-1)

    def query_vectors(self, queries: torch.Tensor) -> torch.Tensor:
        """Queries as (n, V, d) vector sets; an item's score is its best vector's (``score``)."""
        return queries.reshape(len(queries), self.vectors_per_query, -1)

    def score(self, queries: torch.Tensor, gallery: torch.Tensor) -> torch.Tensor:
        """(n, g) scores of normalised queries against normalised gallery rows."""
        if self.vectors_per_query == 1:
            return queries.reshape(len(queries), -1) @ gallery.T
        return torch.einsum("nkd,gd->nkg", self.query_vectors(queries), gallery).max(dim=1).values

    def single_vector(self, queries: torch.Tensor) -> torch.Tensor:
        """One unit vector per query (the mean direction of a set), for maps and per-query transforms."""
        vectors = self.query_vectors(queries)
        return vectors[:, 0] if vectors.shape[1] == 1 else F.normalize(vectors.mean(dim=1), dim=-1)

    # -- submissions ---------------------------------------------------------------------------
    #: whether a grader's ranking of the ``direction`` output (cosine with raw images) is the model's own
    #: cosine ranking, exactly; otherwise it is the closest submittable vector (see each family)
    exact_submission: bool = False
    #: whether training ends by folding a hubness bias into the query (``stitch.training.hub_bias``)
    folds_hub_bias: bool = False

    def to_image_space(self, captions: torch.Tensor, target: str = "direction") -> torch.Tensor:
        """Vectors in the raw image-feature space, what a submission holds.

        ``direction`` (the default): the vector a competition grader, which ranks raw image embeddings by
        cosine, ranks as the model does. ``point``: the regression point, the predicted image feature itself
        (its cosine ranking is not the model's when the run scores in a z-scored space)."""
        raise self._no_image_space()

    def raw_direction(self, queries: torch.Tensor) -> torch.Tensor:
        """The raw image-space vectors that rank raw images as ``queries`` (this model's unit queries) rank its
        gallery: what a submission of them holds."""
        raise self._no_image_space()

    def _no_image_space(self) -> UsageError:
        return UsageError(
            f"this run ({type(self).__name__}) scores in a learnt shared space: it has no image-space "
            "predictions for a submission; use a translator recipe (ridge, procrustes, mlp, resmlp, set)"
        )

    # -- training hooks (no-ops unless a model needs them) -------------------------------------
    @classmethod
    def from_config(cls, model_cfg, text_dim: int, image_dim: int) -> Translator:
        raise NotImplementedError

    def initialise(self, moments: PairMoments, model_cfg) -> None:
        """Fit what is closed-form from the statistics of (caption, target) pairs, the targets being each
        caption's image features in the model's space (one pass over the data, in RAM or on disk)."""

    def training_queries(self, captions: torch.Tensor) -> torch.Tensor:
        """What the loss sees for a batch of captions (by default the scoring-space queries)."""
        return self.embed_queries(captions)

    def after_step(self) -> None:
        """Called after every optimiser step (e.g. to update momentum copies)."""

"""Predicted vectors scored the way a competition grader scores a submission.

A grader sees only the submitted vector ``p`` of each query and ranks the **raw** image embeddings ``x`` of
its gallery by ``unit(p) . unit(x)``. Nothing of the run's own scoring (its space, its rescoring) reaches
it, so this module takes vectors and raw images only: a figure from here is the figure a leaderboard
would print for the same file.
"""

from __future__ import annotations

import numpy as np
import torch

from stitch.data.relevance import Relevance
from stitch.retrieval.evaluate import AS_SUBMITTED, DirectionReport, evaluate_embeddings
from stitch.retrieval.ranks import DEFAULT_CHUNK


def graded_reports(
    predictions: np.ndarray | torch.Tensor,
    images: np.ndarray | torch.Tensor,
    relevance: Relevance | np.ndarray,
    protocol: str = "full",
    chunk: int = DEFAULT_CHUNK,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> list[DirectionReport]:
    """Text->image metrics of ``predictions`` (one vector per query) against raw ``images`` under ``protocol``
    (``full``, ``kaggle100`` or ``aml2025``): unit rows, cosine, ties pessimistic, labelled as submitted."""
    reports = evaluate_embeddings(predictions, images, relevance, protocol, chunk, seed, device)
    graded = [r for r in reports if r.direction == "text->image"]  # a grader ranks images for captions only
    for report in graded:
        report.scoring = AS_SUBMITTED
        report.metrics.pop("mean_l2", None)  # a distance between unit vectors says nothing a grader measures
    return graded

"""A hubness bias a submission can carry: inverted softmax, made linear in the unit raw image.

Inverted softmax lowers every gallery item by ``log sum_b exp(beta * s(b, x)) / beta`` over a bank of
training queries, so items close to many queries (hubs) stop winning every ranking. A grader scores only
``unit(p) . unit(x)``, so a per-image offset can travel in the submitted vector only if it is linear in
``unit(x)``: ``w . unit(x)``. :func:`fit_hub_bias` fits ``w`` by ridge regression of the training images'
offsets on their unit vectors; a graded model subtracts it from its unit query, and
``(unit(q) - w) . unit(x)`` is exactly what the grader ranks.
"""

from __future__ import annotations

import numpy as np
import torch

from stitch.retrieval.scorer import Scorer
from stitch.training.run import Run

MAX_IMAGES = 50_000  # training images the bias is fitted on (the first ones: enough for a d-dim fit)
RIDGE = 1e-3  # relative to the mean eigenvalue of the images' second moment


def fit_hub_bias(run: Run, images, device, weight: float) -> np.ndarray:
    """``weight`` times the vector ``w`` whose ``w . unit(x)`` best matches the inverted-softmax offset of each
    training image ``x`` (``images``: chunks of raw training images), at the run's learnt temperature."""
    scorer = Scorer.configured(run.model, "is", None, run.config.inference, run.temperature, run.bank, device)
    rows = np.concatenate(list(_first_rows(images, MAX_IMAGES)))
    gallery = scorer.embed_gallery(rows)
    scorer.fit(gallery)
    rescorer = scorer.rescorer
    offset = (rescorer.offset / rescorer.scale).double().cpu().numpy()
    units = gallery.double().cpu().numpy()
    # a constant offset changes no ranking: fit the centred offsets (the rows of unit vectors are not centred,
    # so w may carry any part of the constant; it is the same for every image either way)
    second = units.T @ units
    alpha = RIDGE * np.trace(second) / len(second)
    w = np.linalg.solve(second + alpha * np.eye(len(second)), units.T @ (offset - offset.mean()))
    return weight * w


def _first_rows(chunks, limit: int):
    """Chunks of rows until ``limit`` rows have been given (the last one cut)."""
    taken = 0
    for chunk in chunks:
        if taken >= limit:
            return
        yield chunk[: limit - taken]
        taken += len(chunk[: limit - taken])


def fold_hub_bias(run: Run, images, device) -> None:
    """Fit the bias of a model that folds one (``folds_hub_bias``) and set it, if ``model.hub_bias`` > 0."""
    weight = run.config.model.hub_bias
    if not run.model.folds_hub_bias or not weight:
        return
    with torch.no_grad():
        run.model.set_hub_bias(torch.as_tensor(fit_hub_bias(run, images, device, weight)))

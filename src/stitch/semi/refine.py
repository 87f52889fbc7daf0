"""Self-learning as a step of training: after the closed-form fit on the pairs, the map is refitted on
pseudo-pairs drawn among the unpaired pools (or, with no pairs, started from matched pool structures) and
set into the model in the model's own image space.

Self-learning works in its own z-scored image space (statistics of the seed and pool images); its map is
carried to the raw image space (``y = z * s + m``) and the model carries it into its own space, exactly,
so nothing is refitted twice.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from stitch.semi.pools import UnpairedPools
from stitch.semi.self_learning import SelfLearning, SelfLearningResult, self_learn
from stitch.semi.unpaired import align_unpaired

logger = logging.getLogger(__name__)


def refine_map(
    model: object,
    seed_pairs: tuple[np.ndarray, np.ndarray] | None,
    pools: UnpairedPools,
    config: object,
) -> list[dict]:
    """Refit ``model``'s linear map (a :class:`SelfLearningTranslator`) with self-learning and return the
    log, one row per round (pseudo-pairs, precision when the pools' links are known, seconds).

    ``seed_pairs`` are raw (captions, images), one row per caption-image link; None (or
    ``semi.use_pairs=false``) is the zero-pair mode. ``config`` is the training config (its ``semi`` and
    ``model`` sections and ``seed``)."""
    semi, model_cfg = config.semi, config.model
    settings = SelfLearning(
        rounds=semi.rounds,
        method=model_cfg.init,
        alpha=model_cfg.ridge_alpha,
        matcher=semi.matcher,
        pseudo_weight=semi.pseudo_weight,
        threshold=semi.threshold,
        max_pairs=semi.max_pairs or None,
        k=semi.k,
        pool_sample=semi.pool_sample or None,
        seed=config.seed,
    )
    if seed_pairs is None or not semi.use_pairs:
        result = align_unpaired(pools.captions, pools.images, settings, semi.clusters, pools.truth)
    else:
        result = self_learn(seed_pairs[0], seed_pairs[1], pools.captions, pools.images, settings, pools.truth)
    model.set_raw_map(*raw_map(result))
    for row in result.log[1:]:
        logger.info(
            "self-learning round %d: %d pseudo-pairs%s",
            row["round"],
            row["pseudo_pairs"],
            "" if math.isnan(row["precision"]) else f", precision {row['precision']:.3f}",
        )
    return [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()} for row in result.log]


def raw_map(result: SelfLearningResult) -> tuple[np.ndarray, np.ndarray]:
    """``(weight, bias)`` of the result's map into the raw image space: ``y = z * s + m``."""
    return result.weight * result.std[None, :], result.bias * result.std + result.mean

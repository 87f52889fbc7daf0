"""Self-learning as a step of training: after the closed-form fit on the pairs, the map is refitted on
pseudo-pairs drawn among the unpaired pools (or, with no pairs, started from matched pool structures) and
set into the model in the model's own image space.

Self-learning works in its own z-scored image space (statistics of the seed and pool images); its map is
carried to the raw image space (``y = z * s + m``) and the model carries it into its own space, exactly,
so nothing is refitted twice.

Learnt recipes (a network trained by gradient) take the pools another way: :func:`training_pairs` runs the
same rounds and hands over the last round's pseudo-pairs, which join the training batches at
``semi.pseudo_weight``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace

import numpy as np

from stitch.errors import UsageError
from stitch.semi.pools import UnpairedPools
from stitch.semi.pseudo import PseudoPairs
from stitch.semi.self_learning import SelfLearning, SelfLearningResult, self_learn
from stitch.semi.unpaired import align_unpaired

logger = logging.getLogger(__name__)


def settings_of(config: object) -> SelfLearning:
    """The self-learning a training config asks for (its ``semi`` and ``model`` sections and ``seed``)."""
    semi, model_cfg = config.semi, config.model
    return SelfLearning(
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
    semi, settings = config.semi, settings_of(config)
    if seed_pairs is None or not semi.use_pairs:
        result = align_unpaired(pools.captions, pools.images, settings, semi.clusters, pools.truth)
    else:
        result = self_learn(seed_pairs[0], seed_pairs[1], pools.captions, pools.images, settings, pools.truth)
    model.set_raw_map(*raw_map(result))
    return _said(result.log)


def _said(log: list[dict]) -> list[dict]:
    """The rounds logged (one line each), NaN figures as None (JSON and CSV hold no NaN)."""
    for row in log[1:]:
        logger.info(
            "self-learning round %d: %d pseudo-pairs%s",
            row["round"],
            row["pseudo_pairs"],
            "" if math.isnan(row["precision"]) else f", precision {row['precision']:.3f}",
        )
    return [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()} for row in log]


@dataclass(frozen=True)
class TrainingPairs:
    """Pseudo-pairs that join a learnt recipe's batches: raw caption and image rows (row-aligned), the image
    pool row of each (its identity: captions paired with one image share it), the weight of a pair against
    a real pair, the self-learning rounds that drew them, and the whole caption pool (the neighbourhood
    regulariser samples it)."""

    captions: np.ndarray
    images: np.ndarray
    image_rows: np.ndarray
    weight: float
    rounds: list[dict]
    pool: np.ndarray

    def __len__(self) -> int:
        return len(self.captions)


def training_pairs(seed_pairs: tuple[np.ndarray, np.ndarray], pools: UnpairedPools, config: object) -> TrainingPairs:
    """The pseudo-pairs of the last of ``semi.rounds`` self-learning rounds (at least one: round 1 draws them
    with the closed-form start's translation, each later round with the map refitted on the previous
    round's), for training batches at ``semi.pseudo_weight``; and every round's log.

    ``seed_pairs`` are the raw training pairs, one row per caption-image link."""
    if not config.semi.use_pairs:
        raise UsageError("semi.use_pairs=false (the zero-pair mode) is a mode of model.name=self-learning only")
    settings = settings_of(config)
    settings = replace(settings, rounds=max(settings.rounds, 1))
    result = self_learn(seed_pairs[0], seed_pairs[1], pools.captions, pools.images, settings, pools.truth)
    pairs: PseudoPairs = result.pairs
    return TrainingPairs(
        pools.captions[pairs.rows].astype(np.float32),
        pools.images[pairs.cols].astype(np.float32),
        np.asarray(pairs.cols, dtype=np.int64),
        float(config.semi.pseudo_weight),
        _said(result.log),
        pools.captions,
    )


def raw_map(result: SelfLearningResult) -> tuple[np.ndarray, np.ndarray]:
    """``(weight, bias)`` of the result's map into the raw image space: ``y = z * s + m``."""
    return result.weight * result.std[None, :], result.bias * result.std + result.mean

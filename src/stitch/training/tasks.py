"""Training tasks: a model together with the loss that trains it (open_clip's ``TrainingTask``).

Which losses a model can train with is a tag of its task in :data:`stitch.registries.TASKS`; the task
builds the loss, adds the auxiliary terms its model family needs, and computes one training step.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from stitch.losses import LossSettings, NeighbourhoodLoss, build_loss
from stitch.losses.base import weighted_mean
from stitch.losses.pairs import same_label
from stitch.losses.set_losses import global_discrimination, intra_set_diversity, mmd_rbf, uniformity
from stitch.registries import LOSSES, MODELS, TASKS
from stitch.training.distill import ScoreDistillation
from stitch.training.distributed import Distributed
from stitch.translators import Translator


class Task(nn.Module):
    """``training_step(captions, labels, images, ref_labels) -> loss`` for one batch; batches with unpaired
    pools add a weight per caption (pseudo-pairs count ``semi.pseudo_weight``) and a sample of the caption
    pool, whose neighbourhoods the regulariser ``semi.neighbour_weight`` keeps when mapped."""

    def __init__(
        self, model: Translator, config, world: Distributed | None = None, teacher: Translator | None = None
    ) -> None:
        super().__init__()
        self.model, self.config = model, config
        self.world = world or Distributed()
        self.loss = self.build_loss(config.loss)
        self.distill = None if teacher is None else ScoreDistillation.from_config(teacher, config.loss)
        self.neighbour = NeighbourhoodLoss.from_config(config.semi) if config.semi.neighbour_weight else None

    @staticmethod
    def for_config(
        model: Translator, config, world: Distributed | None = None, teacher: Translator | None = None
    ) -> Task:
        """The task of the configured model kind (registry tag ``task``); ``teacher``: a run distilled from."""
        return TASKS.get(MODELS.tag(config.model.name, "task"))(model, config, world, teacher)

    def build_loss(self, lc) -> nn.Module:
        """The loss of the config's ``loss`` section, its settings read once; a memory queue only for a loss
        with negatives (a queue holds negatives: none to hold otherwise)."""
        settings = LossSettings.from_section(lc)
        if LOSSES.tag(lc.name, "kind") != "pair":
            settings = replace(settings, queue_size=0)
        return build_loss(settings, dim=self.model.space_dim)

    @property
    def needs_aligned_targets(self) -> bool:
        """Regression losses compare each caption with its own image row, not a deduplicated batch."""
        return LOSSES.tag(self.config.loss.name, "kind") == "regression"

    def training_step(self, captions, labels, images, ref_labels, weights=None, pool_captions=None) -> torch.Tensor:
        """The batch's loss. ``captions`` are this rank's share; ``labels``, ``images`` and ``ref_labels`` are the
        whole batch's, and every rank's translated captions are gathered (with gradients) before the loss.
        ``weights`` (one per caption) weigh the loss's rows; ``pool_captions`` feed the neighbourhood term."""
        if self.config.optim.mixup_alpha:
            captions, labels, images, ref_labels = self.mixup(captions, labels, images, ref_labels)
        local, gallery = self.model.training_queries(captions), self.model.embed_gallery(images)
        queries = self.world.gather(local)
        weighted = {} if weights is None else {"weights": weights}
        loss = self.loss(queries.float(), labels, None, gallery.float(), ref_labels, **weighted)
        own = self.world.local_rows(labels)
        if self.config.loss.mse_weight:
            targets = gallery[torch.searchsorted(ref_labels, _own_image(own))]
            squared = (local.float() - targets.float()).pow(2).mean(dim=-1)
            loss = loss + self.config.loss.mse_weight * weighted_mean(squared, weights)
        if self.distill is not None:
            loss = loss + self.distill(captions, images, local, gallery)
        if self.neighbour is not None and pool_captions is not None:
            loss = loss + self.neighbour(pool_captions, self.model.training_queries(pool_captions))
        return loss + self.auxiliary_loss(captions, local, images, gallery, own, ref_labels)

    def mixup(self, captions, labels, images, ref_labels):
        """Embedding mixup: each caption, and its image, mixed with a random partner's at one Beta(a, a)
        weight per batch. A mixed pair's positive is its own mixed image; a pair of images ``(i, j)`` gets
        label ``i * 2^31 + j`` so equal mixtures share a label (also in the memory queue) and no other does."""
        own = _own_image(labels)
        alpha = self.config.optim.mixup_alpha
        weight = float(torch.distributions.Beta(alpha, alpha).sample())
        partner = torch.randperm(len(own)).to(own.device)  # every rank draws the same (seeded alike)
        everyone = self.world.gather(captions.detach())  # raw inputs: partners may live on another rank
        mixed = weight * everyone + (1 - weight) * everyone[partner]
        targets = images[torch.searchsorted(ref_labels, own)]
        mixed_labels = own * MIXED_LABEL_BASE + own[partner]
        ids, first = _first_of_each(mixed_labels)
        mixed_images = (weight * targets + (1 - weight) * targets[partner])[first]
        return self.world.local_rows(mixed), mixed_labels, mixed_images, ids

    def set_progress(self, fraction: float) -> None:
        """Called after each optimiser step with the share of training done: steps the temperature schedule
        (cosine from ``loss.temperature`` to ``loss.final_temperature``)."""
        final = self.config.loss.final_temperature
        if final:
            start = self.config.loss.temperature
            self.loss.set_temperature(final + (start - final) * 0.5 * (1 + math.cos(math.pi * min(fraction, 1.0))))

    def forward(self, captions, labels, images, ref_labels, weights=None, pool_captions=None) -> torch.Tensor:
        """One training step (what DDP calls)."""
        return self.training_step(captions, labels, images, ref_labels, weights, pool_captions)

    @property
    def weighs_rows(self) -> bool:
        """Whether the loss can weigh its rows (pseudo-pairs need it)."""
        return bool(self.loss.supports_weights)

    def auxiliary_loss(self, captions, queries, images, gallery, labels, ref_labels) -> torch.Tensor:
        return captions.new_zeros(())

    def after_step(self) -> None:
        self.model.after_step()

    def extra_state(self) -> dict[str, float]:
        """Scalars worth logging per epoch (a learnt temperature)."""
        return self.loss.extra_state()

    @property
    def temperature(self) -> float | None:
        return self.extra_state().get("temperature")


MIXED_LABEL_BASE = 2**31  # image ids stay below it, so i * base + j names the mixture of images i and j


def _own_image(labels: torch.Tensor) -> torch.Tensor:
    """Each caption's own image id (the first of its label row when it has several relevant images)."""
    return labels if labels.dim() == 1 else labels[:, 0]


def _first_of_each(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted distinct values and the first row holding each."""
    ids, inverse = torch.unique(values, return_inverse=True)
    rows = torch.arange(len(values), device=values.device)
    first = torch.full((len(ids),), len(values), device=values.device).scatter_reduce(0, inverse, rows, "amin")
    return ids, first


class TranslateTask(Task):
    """Translated captions against (z-scored) images."""


class DualTask(Task):
    """Dual towers; with momentum towers, ALBEF/BLIP momentum distillation: cross-entropy of the online
    similarities against the momentum towers' soft targets mixed with the hard multi-positive targets."""

    def auxiliary_loss(self, captions, queries, images, gallery, labels, ref_labels) -> torch.Tensor:
        mc = self.config.model
        if self.model.momentum <= 0 or not mc.distill_weight:
            return captions.new_zeros(())
        scale = 1.0 / mc.distill_temperature
        with torch.no_grad():
            tq, tg = (F.normalize(x, dim=1) for x in self.model.momentum_embeddings(captions, images))
            soft = (scale * tq @ tg.T).softmax(dim=1)
            hard = same_label(labels, ref_labels).float()
            target = 0.5 * soft + 0.5 * hard / hard.sum(1, keepdim=True).clamp(min=1)
        logits = scale * F.normalize(queries, dim=1) @ F.normalize(gallery, dim=1).T
        return mc.distill_weight * -(target * logits.log_softmax(dim=1)).sum(1).mean()


class SetTask(Task):
    """Slot sets with the weighted set regularisers (intra-set diversity, global discrimination, MMD,
    uniformity)."""

    def auxiliary_loss(self, captions, queries, images, gallery, labels, ref_labels) -> torch.Tensor:
        w = self.config.model
        total = captions.new_zeros(())
        if not (w.diversity_weight or w.global_weight or w.mmd_weight or w.uniformity_weight):
            return total
        slots, global_vec = self.model.slot_embeddings(captions)
        if w.diversity_weight:
            total = total + w.diversity_weight * intra_set_diversity(slots, w.diversity_margin)
        if w.global_weight:
            total = total + w.global_weight * global_discrimination(slots, global_vec, w.global_margin)
        if w.mmd_weight:
            mean = F.normalize(slots.mean(dim=1), dim=-1)[:256]
            total = total + w.mmd_weight * mmd_rbf(mean, F.normalize(gallery, dim=-1)[:256])
        if w.uniformity_weight:
            total = total + w.uniformity_weight * uniformity(slots.reshape(-1, slots.shape[-1])[:512])
        return total

"""Distillation from a teacher run: the student matches the teacher's score distribution over the batch.

A fusion of runs in different spaces ranks better than any one translator but cannot be submitted (it has
no single image-space vector). Training a submittable student to reproduce, for every caption of a
batch, the teacher's softmax over the batch's images (KL divergence, at one temperature for both) moves
what the fusion knows into one vector. The teacher is any opened run (a fusion, an ensemble, a translator):
it is scored through the :class:`~stitch.translators.Translator` contract only, frozen.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from stitch.translators import Translator


class ScoreDistillation(nn.Module):
    """``weight * KL(teacher || student)`` of text->image softmaxes over a batch's images at ``temperature``."""

    def __init__(self, teacher: Translator, weight: float, temperature: float) -> None:
        super().__init__()
        self.teacher = teacher.eval().requires_grad_(False)
        self.weight, self.temperature = weight, temperature

    @classmethod
    def from_config(cls, teacher: Translator, c) -> ScoreDistillation:
        """The term of training's ``loss`` section ``c`` (``teacher_weight``, ``teacher_temperature``)."""
        return cls(teacher, c.teacher_weight, c.teacher_temperature)

    def train(self, mode: bool = True) -> ScoreDistillation:
        """The student's modules follow ``mode``; the teacher stays in eval mode (no dropout in its targets)."""
        super().train(mode)
        self.teacher.eval()
        return self

    def forward(
        self, captions: torch.Tensor, images: torch.Tensor, queries: torch.Tensor, gallery: torch.Tensor
    ) -> torch.Tensor:
        """``captions``/``images``: the raw batch; ``queries``/``gallery``: the student's embeddings of them."""
        with torch.no_grad():
            teacher_q = self.teacher.normalize_queries(self.teacher.embed_queries(captions.float()))
            teacher_g = F.normalize(self.teacher.embed_gallery(images.float()).float(), dim=-1)
            target = (self.teacher.score(teacher_q, teacher_g) / self.temperature).softmax(dim=1)
        student_q = F.normalize(queries.float().reshape(len(queries), -1), dim=-1)
        logits = student_q @ F.normalize(gallery.float(), dim=-1).T / self.temperature
        return self.weight * F.kl_div(logits.log_softmax(dim=1), target, reduction="batchmean")

"""Distillation from a teacher run (``loss.teacher``): the KL term and its wiring into training."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from stitch import api
from stitch.training.distill import ScoreDistillation


@pytest.fixture(scope="module")
def teacher_run(small_data, tmp_path_factory):
    run = tmp_path_factory.mktemp("teacher") / "ridge"
    api.train(small_data, None, out=run, overrides=["model.name=ridge"], progress=False)
    return run


def test_kl_is_zero_when_the_student_scores_as_the_teacher_and_positive_otherwise(teacher_run, small_data):
    teacher = api.open(teacher_run).model
    captions = torch.as_tensor(small_data.captions[:40])
    images = torch.as_tensor(small_data.images[:30])
    term = ScoreDistillation(teacher, weight=2.0, temperature=0.05)
    same = term(captions, images, teacher.embed_queries(captions), teacher.embed_gallery(images))
    assert float(same) == pytest.approx(0.0, abs=1e-5)
    shuffled = teacher.embed_queries(captions)[torch.randperm(40, generator=torch.Generator().manual_seed(0))]
    other = term(captions, images, shuffled, teacher.embed_gallery(images))
    # the same KL written out: sum p_t (log p_t - log p_s), mean over captions, times the weight
    with torch.no_grad():
        t = F.normalize(teacher.embed_queries(captions), dim=1) @ F.normalize(teacher.embed_gallery(images), dim=1).T
        s = F.normalize(shuffled, dim=1) @ F.normalize(teacher.embed_gallery(images), dim=1).T
        p_t, log_p_s = (t / 0.05).softmax(1), (s / 0.05).log_softmax(1)
        expected = 2.0 * (p_t * (p_t.log() - log_p_s)).sum(1).mean()
    assert float(other) == pytest.approx(float(expected), rel=1e-4) and float(other) > 0.1


def test_a_student_distilled_from_a_teacher_moves_toward_its_scores(teacher_run, small_data, tmp_path):
    """The same graded student, trained with a heavy distillation weight, ends closer to its teacher's score
    distributions on dev captions (the KL the term minimises, measured on data it never trained on)."""
    base = ["model.name=graded", "model.hidden=32", "optim.epochs=6", "optim.batch_size=64", "optim.lr=3e-3"]
    base += ["loss.queue_size=0", "inference.rerank=none", "model.hub_bias=0", "patience=10"]
    students = {}
    for name, extra in (("alone", []), ("taught", [f"loss.teacher={teacher_run}", "loss.teacher_weight=50"])):
        api.train(small_data, None, out=tmp_path / name, overrides=[*base, *extra], progress=False)
        students[name] = api.open(tmp_path / name).model
    assert api.open(tmp_path / "taught").config.loss.teacher == str(teacher_run)
    dev = small_data.split("dev")
    captions, images = torch.as_tensor(dev.captions), torch.as_tensor(dev.images)
    term = ScoreDistillation(api.open(teacher_run).model, weight=1.0, temperature=0.05)
    with torch.no_grad():
        kl = {
            n: float(term(captions, images, m.embed_queries(captions), m.embed_gallery(images)))
            for n, m in students.items()
        }
    # without the term the two runs train identically (same seed) and their KL would be equal
    assert kl["taught"] < kl["alone"] - 0.03, kl


def test_a_teacher_of_other_dimensions_is_refused(small_data, tmp_path):
    from stitch.data import make_synthetic

    other = make_synthetic(n_images=60, captions_per_image=2, text_dim=12, image_dim=40, latent_dim=4, seed=2)
    api.train(other, None, out=tmp_path / "other", overrides=["model.name=ridge"], progress=False)
    with pytest.raises(ValueError, match="the teacher .* takes 12-d captions"):
        overrides = [f"loss.teacher={tmp_path / 'other'}"]
        api.train(small_data, None, out=tmp_path / "s", overrides=overrides, progress=False)

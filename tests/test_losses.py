"""Losses against pytorch-metric-learning where it has the same loss, else against brute force."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning import losses as pml_losses

from stitch.losses import CosineLoss, InfoNCELoss, LossSettings, MemoryQueue, MSELoss, build_loss
from stitch.training.config import LossConfig, load_config


def test_one_direction_infonce_equals_pml_ntxent_with_one_positive_per_row():
    torch.manual_seed(0)
    q, r = torch.randn(16, 8), torch.randn(16, 8)
    labels = torch.arange(16)
    ours = InfoNCELoss(temperature=0.1, learnable=False, symmetric=False)(q, labels, None, r, labels)
    # a distinct ref_labels tensor: pml treats `ref_labels is labels` as self-comparison
    theirs = pml_losses.NTXentLoss(temperature=0.1)(q, labels, None, r, labels.clone())
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5)


def brute_multi_positive(q, r, labels, ref_labels, scale):
    sims = scale * F.normalize(q, dim=1) @ F.normalize(r, dim=1).T

    def direction(s, rows, cols):
        terms = []
        for i in range(len(rows)):
            pos = [j for j in range(len(cols)) if rows[i] == cols[j]]
            if not pos:
                continue
            num = sum(math.exp(s[i][j]) for j in pos)
            den = sum(math.exp(s[i][j]) for j in range(len(cols)))
            terms.append(-math.log(num / den))
        return sum(terms) / len(terms)

    s = sims.tolist()
    st = sims.T.tolist()
    return (
        direction(s, labels.tolist(), ref_labels.tolist()) + direction(st, ref_labels.tolist(), labels.tolist())
    ) / 2


def test_multi_positive_symmetric_infonce_matches_brute_force():
    torch.manual_seed(1)
    labels = torch.tensor([0, 0, 1, 2, 2, 2, 3])
    ref_labels = torch.tensor([0, 1, 2, 3])
    q, r = torch.randn(7, 5), torch.randn(4, 5)
    loss = InfoNCELoss(temperature=0.2, learnable=False)(q, labels, None, r, ref_labels)
    assert loss.item() == pytest.approx(brute_multi_positive(q, r, labels, ref_labels, 5.0), rel=1e-5)


def test_captions_of_one_image_are_not_negatives_of_each_other():
    # two captions of image 0 identical to each other and to the image: loss ignores their similarity
    q = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    r = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    loss = InfoNCELoss(temperature=0.01, learnable=False)(q, torch.tensor([0, 0, 1]), None, r, torch.tensor([0, 1]))
    assert loss.item() < 1e-6


def test_temperature_is_learnt_and_gradients_flow():
    loss_fn = InfoNCELoss(temperature=0.07)
    q = torch.randn(8, 4, requires_grad=True)
    loss_fn(q, torch.arange(8), None, torch.randn(8, 4), torch.arange(8)).backward()
    assert loss_fn.log_scale.grad is not None and q.grad is not None
    assert loss_fn.extra_state()["temperature"] == pytest.approx(0.07, rel=1e-5)
    frozen = InfoNCELoss(temperature=0.07, learnable=False)
    assert not frozen.log_scale.requires_grad


def test_regression_losses():
    torch.manual_seed(0)
    p, t = torch.randn(10, 6), torch.randn(10, 6)
    assert MSELoss()(p, None, None, t).item() == pytest.approx(((p - t) ** 2).mean().item(), rel=1e-6)
    cos = sum(float(p[i] @ t[i] / (p[i].norm() * t[i].norm())) for i in range(10)) / 10
    assert CosineLoss()(p, None, None, t).item() == pytest.approx(1 - cos, rel=1e-5)
    with pytest.raises(ValueError, match="row-aligned"):
        MSELoss()(p, None, None, t[:5])


def test_build_loss_rejects_unknown_names():
    assert isinstance(build_loss("cosine"), CosineLoss)
    with pytest.raises(ValueError, match="loss.name must be one of"):
        build_loss("hinge")


def test_build_loss_takes_one_settings_object_or_a_name_with_its_fields_as_keywords():
    torch.manual_seed(2)
    x, y = torch.randn(12, 6), torch.arange(12) // 3
    fields = {"margin": 0.3, "miner": "hardest", "norm_weight": 0.1}
    by_settings = build_loss(LossSettings("triplet", **fields))
    by_name = build_loss("triplet", **fields)
    replaced = build_loss(LossSettings("triplet"), **fields)
    assert by_settings(x, y).item() == by_name(x, y).item() == replaced(x, y).item()
    with pytest.raises(TypeError, match="marign"):
        build_loss("triplet", marign=0.3)


def test_loss_settings_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        LossSettings("infonce").temperature = 0.1


def test_every_loss_setting_is_read_by_name_from_the_training_loss_section():
    """``from_section`` reads training's ``loss`` section field by field: a setting added to one and not the
    other fails here, not at the first training run."""
    names = {f.name for f in dataclasses.fields(LossSettings)}
    assert names <= {f.name for f in dataclasses.fields(LossConfig)}
    section = LossConfig(name="siglip", temperature=0.2, queue_size=32, hard_negatives=4, symmetric=False)
    settings = LossSettings.from_section(section)
    assert all(getattr(settings, name) == getattr(section, name) for name in names)


def test_the_task_builds_its_loss_from_the_loss_section_once():
    from stitch.training.tasks import Task
    from stitch.translators import build_model

    config = load_config(None, ["loss.temperature=0.1", "loss.queue_size=32", "model.hidden=8"])
    loss = Task.for_config(build_model(config.model, 4, 3), config).loss
    assert isinstance(loss, MemoryQueue) and loss.size == 32 and loss.bank.shape == (32, 3)
    assert isinstance(loss.loss, InfoNCELoss) and loss.loss.temperature == pytest.approx(0.1)
    # a queue holds negatives: a regression loss trains without one, whatever loss.queue_size says
    config = load_config(None, ["loss.name=mse", "loss.queue_size=32", "model.hidden=8"])
    assert isinstance(Task.for_config(build_model(config.model, 4, 3), config).loss, MSELoss)

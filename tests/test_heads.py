"""Dual heads, set-prediction heads and Sinkhorn: math checks and end-to-end training on small data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from stitch import api
from stitch.losses.sinkhorn import set_similarity, sinkhorn
from stitch.retrieval.ranks import text_to_image_ranks
from stitch.training.config import ModelConfig
from stitch.translators import DualEncoder, SetPredictionHead, build_model

# a scaled-down model: 64 hidden units want less dropout than the default recipe's 0.535 on 3072
FAST = ["model.hidden=64", "model.dropout=0.1", "optim.batch_size=128", "optim.lr=2e-3", "optim.epochs=8", "patience=8"]


def chance_mrr(data):
    n = int((data.image_split == "dev").sum())
    return (np.log(n) + 0.58) / n


@pytest.mark.parametrize("n", [3, 6])
def test_sinkhorn_plan_is_doubly_stochastic(n):
    scores = torch.randn(4, n, n, generator=torch.Generator().manual_seed(n))  # seeded: no flaky draws
    plan = sinkhorn(scores, temperature=0.3, iters=1000)
    assert torch.allclose(plan.sum(-1), torch.ones(4, n), atol=1e-4)
    assert torch.allclose(plan.sum(-2), torch.ones(4, n), atol=1e-4)


def test_sinkhorn_tends_to_the_hungarian_assignment():
    torch.manual_seed(0)
    scores = torch.randn(6, 6, dtype=torch.float64)
    plan = sinkhorn(scores, temperature=1e-3, iters=2000)
    rows, cols = linear_sum_assignment(-scores.numpy())
    hungarian = torch.zeros(6, 6, dtype=torch.float64)
    hungarian[rows, cols] = 1
    assert torch.allclose(plan, hungarian, atol=1e-3)


def test_set_similarity_with_one_target_is_the_mean_slot_similarity():
    slots = torch.nn.functional.normalize(torch.randn(5, 4, 8), dim=-1)
    target = torch.nn.functional.normalize(torch.randn(5, 1, 8), dim=-1)
    expected = (slots @ target.transpose(-1, -2)).squeeze(-1).mean(-1)
    assert torch.allclose(set_similarity(slots, target), expected, atol=1e-5)


def test_winner_slot_ranks_match_brute_force():
    torch.manual_seed(1)
    q = torch.nn.functional.normalize(torch.randn(20, 3, 5), dim=-1)
    g = torch.nn.functional.normalize(torch.randn(9, 5), dim=-1)
    owner = np.random.default_rng(0).integers(0, 9, 20)
    best = torch.stack([(q[i] @ g.T).max(0).values for i in range(20)])
    expected = [(best[i] >= best[i, owner[i]]).sum().item() for i in range(20)]
    head = SetPredictionHead(4, 5, slots=3)  # its score: the best slot
    assert list(text_to_image_ranks(q, g, owner, chunk=7, similarity=head.score)) == expected


@pytest.mark.parametrize(
    "tower",
    ["linear", "mlp", "align", "attention", "crossattn"],
)
def test_dual_heads_learn(small_data, tower):
    extra = ["model.shared_dim=32"]
    result = api.train(
        small_data,
        None,
        overrides=[*FAST, *extra, "model.name=dual", f"model.text_tower={tower}", f"model.image_tower={tower}"],
        progress=False,
    )
    assert result.dev_metrics["mrr"] > 4 * chance_mrr(small_data)


@pytest.mark.parametrize("loss", ["siglip", "triplet", "contrastive"])
def test_other_losses_train_dual_heads(small_data, loss):
    overrides = [*FAST, "model.name=dual", "model.shared_dim=32", f"loss.name={loss}"]
    if loss == "triplet":
        overrides.append("loss.miner=semihard")
    result = api.train(small_data, None, overrides=overrides, progress=False)
    assert result.dev_metrics["mrr"] > 3 * chance_mrr(small_data)


def test_memory_queue_with_hard_negatives_trains(small_data):
    overrides = [*FAST, "loss.queue_size=512", "loss.hard_negatives=64", "optim.batch_size=32"]
    result = api.train(small_data, None, overrides=overrides, progress=False)
    assert result.dev_metrics["mrr"] > 4 * chance_mrr(small_data)


def test_blip_momentum_towers_follow_the_online_towers_by_ema():
    model = DualEncoder(4, 6, 3, "linear", "linear", 8, 0.0, momentum=0.9)
    with torch.no_grad():
        model.text_tower.weight.add_(1.0)
    before = model.text_momentum.weight.clone()
    model.after_step()
    expected = 0.9 * before + 0.1 * model.text_tower.weight
    assert torch.allclose(model.text_momentum.weight, expected)
    assert not model.text_momentum.weight.requires_grad


def test_blip_heads_train_with_distillation(small_data):
    overrides = [*FAST, "model.name=dual", "model.shared_dim=32", "model.momentum=0.99", "model.distill_weight=0.4"]
    result = api.train(small_data, None, overrides=overrides, progress=False)
    assert result.dev_metrics["mrr"] > 4 * chance_mrr(small_data)


@pytest.mark.parametrize("loss", ["set-triplet", "set-infonce"])
@pytest.mark.parametrize("aggregation", ["winner", "mean"])
def test_set_head_learns(small_data, loss, aggregation):
    overrides = [
        *(o for o in FAST if not o.startswith("model.dropout=")),  # a set head has slot_dropout, not dropout
        "model.name=set",
        f"loss.name={loss}",
        f"model.aggregation={aggregation}",
        "model.slots=3",
        "model.diversity_weight=0.1",
        "model.global_weight=0.1",
        "model.mmd_weight=0.01",
        "model.uniformity_weight=0.01",
    ]
    result = api.train(small_data, None, overrides=overrides, progress=False)
    ridge = api.train(small_data, None, overrides=["model.name=ridge"], progress=False)
    assert result.dev_metrics["mrr"] > 0.8 * ridge.dev_metrics["mrr"]
    pred = api.predict(result, small_data.captions[:5])
    assert pred.shape == (5, small_data.image_dim) and np.isfinite(pred).all()


def test_slot_dropout_never_drops_every_slot():
    model = build_model(ModelConfig(name="set", slots=2, slot_dropout=0.99, hidden=8), 4, 6).train()
    slots, _ = model.slot_embeddings(torch.randn(200, 4))
    assert (slots.abs().sum(-1) > 0).any(dim=1).all()


def test_dual_heads_have_no_submission(small_data):
    result = api.train(
        small_data, None, overrides=["model.name=dual", "model.shared_dim=16", "optim.epochs=1"], progress=False
    )
    with pytest.raises(ValueError, match="shared space"):
        api.predict(result, small_data.captions[:3])


def test_config_pairs_set_losses_with_set_heads():
    from stitch.training import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"model.name=resmlp trains with loss.name in \['mse'.*got 'set-triplet'"):
        load_config(None, ["loss.name=set-triplet"])
    with pytest.raises(ConfigError, match=r"model.name=set trains with loss.name in \['set-triplet', 'set-infonce'\]"):
        load_config(None, ["model.name=set", "loss.name=infonce"])
    with pytest.raises(ConfigError, match=r"model.name=dual trains with loss.name in \['infonce'"):
        load_config(None, ["model.name=dual", "loss.name=mse"])


def test_batch_set_similarity_equals_pairwise_set_similarity():
    from stitch.losses.set_losses import batch_set_similarity

    slots = torch.nn.functional.normalize(torch.randn(4, 3, 8), dim=-1)
    images = torch.nn.functional.normalize(torch.randn(5, 8), dim=-1)
    got = batch_set_similarity(slots, images, 0.2, 10, True)
    for b in range(4):
        for m in range(5):
            assert got[b, m].item() == pytest.approx(
                set_similarity(slots[b : b + 1], images[m : m + 1, None])[0].item(), abs=1e-5
            )

"""Classic losses and miners against pytorch-metric-learning; SigLIP and the queue against brute force."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import miners as pml_miners
from pytorch_metric_learning import regularizers as pml_reg

from stitch.losses import (
    BatchHardMiner,
    ContrastiveLoss,
    DistanceWeightedMiner,
    EmbeddingNormRegularizer,
    InfoNCELoss,
    MemoryQueue,
    SigLIPLoss,
    TripletMarginLoss,
    TripletMiner,
    build_loss,
)


def batch(seed=0, n=24, d=8, classes=5):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randint(0, classes, (n,), generator=g)


def ref_batch(seed=1, n=10, d=8, classes=5):
    return batch(seed, n, d, classes)


def as_set(indices):
    return sorted(zip(*[t.tolist() for t in indices]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_contrastive_matches_pml(seed):
    x, y = batch(seed)
    ours = ContrastiveLoss(pos_margin=0.1, neg_margin=0.9)(x, y)
    theirs = pml_losses.ContrastiveLoss(pos_margin=0.1, neg_margin=0.9)(x, y)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5)


def test_contrastive_with_ref_matches_pml():
    (x, y), (r, ry) = batch(0), ref_batch()
    ours = ContrastiveLoss()(x, y, None, r, ry)
    theirs = pml_losses.ContrastiveLoss()(x, y, None, r, ry.clone())
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5)


@pytest.mark.parametrize("seed", [0, 3])
def test_triplet_all_matches_pml(seed):
    x, y = batch(seed)
    ours = TripletMarginLoss(margin=0.2)(x, y)
    theirs = pml_losses.TripletMarginLoss(margin=0.2)(x, y)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5)


@pytest.mark.parametrize("kind", ["all", "hard", "semihard"])
def test_triplet_miner_matches_pml(kind):
    x, y = batch(4)
    ours = TripletMiner(margin=0.3, kind=kind)(x, y)
    theirs = pml_miners.TripletMarginMiner(margin=0.3, type_of_triplets=kind)(x, y)
    assert as_set(ours) == as_set(theirs)
    loss_ours = TripletMarginLoss(margin=0.3)(x, y, ours)
    loss_theirs = pml_losses.TripletMarginLoss(margin=0.3)(x, y, theirs)
    assert loss_ours.item() == pytest.approx(loss_theirs.item(), rel=1e-5)


def test_batch_hard_miner_matches_pml():
    x, y = batch(5)
    ours = BatchHardMiner()(x, y)
    theirs = pml_miners.BatchHardMiner()(x, y)
    assert as_set(ours) == as_set(theirs)


def test_batch_hard_miner_with_ref_matches_pml():
    (x, y), (r, ry) = batch(6), ref_batch(7, n=15)
    ours = BatchHardMiner()(x, y, r, ry)
    theirs = pml_miners.BatchHardMiner()(x, y, r, ry.clone())
    assert as_set(ours) == as_set(theirs)


def test_infonce_without_ref_matches_pml_ntxent_for_pairs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 6, generator=g)
    y = torch.arange(8).repeat(2)  # every item has exactly one positive
    ours = InfoNCELoss(temperature=0.1, learnable=False)(x, y)
    theirs = pml_losses.NTXentLoss(temperature=0.1)(x, y)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5)


def test_norm_regularizer_matches_pml():
    x, _ = batch(0)
    assert EmbeddingNormRegularizer()(x).item() == pytest.approx(pml_reg.LpRegularizer()(x).item(), rel=1e-6)


def test_distance_weighted_miner_returns_valid_triplets_weighted_toward_far_negatives():
    x, y = batch(0, n=64, d=16, classes=4)
    a, p, n = DistanceWeightedMiner(seed=0)(x, y)
    assert len(a) > 0
    assert (y[a] == y[p]).all() and (y[a] != y[n]).all() and (a != p).all()
    # in high dimensions 1/q(d) grows fast toward small d: sampled negatives are nearer than uniform ones
    from stitch.losses.pairs import distance_matrix

    dist = distance_matrix(x, x)
    picked = dist[a, n].mean()
    uniform = dist[(y[:, None] != y[None, :])].mean()
    assert picked < uniform
    assert (dist[a, n] < 1.4).all()


def dense_siglip(q, r, labels, ref_labels, scale, bias):
    logits = scale * F.normalize(q, dim=1) @ F.normalize(r, dim=1).T + bias
    z = (labels[:, None] == ref_labels[None, :]).float() * 2 - 1
    total = 0.0
    for i in range(len(q)):
        for j in range(len(r)):
            total += -math.log(1 / (1 + math.exp(-float(z[i, j] * logits[i, j]))))
    return total / len(q)


def test_siglip_chunked_equals_dense_value_and_gradients():
    (x, y), (r, ry) = batch(0, n=12), ref_batch(1, n=9)
    loss = SigLIPLoss(temperature=0.2, bias=-2.0, chunk=4)
    assert loss(x, y, None, r, ry).item() == pytest.approx(dense_siglip(x, r, y, ry, 5.0, -2.0), rel=1e-5)
    x1 = x.clone().requires_grad_(True)
    loss(x1, y, None, r, ry).backward()
    big = SigLIPLoss(temperature=0.2, bias=-2.0, chunk=1000)
    x2 = x.clone().requires_grad_(True)
    big(x2, y, None, r, ry).backward()
    assert torch.allclose(x1.grad, x2.grad, atol=1e-6)
    assert torch.allclose(loss.bias.grad, big.bias.grad, atol=1e-6)


def test_memory_queue_adds_past_references_as_negatives():
    base = InfoNCELoss(temperature=0.1, learnable=False)
    queue = MemoryQueue(base, dim=8, size=6).train()
    (x1, _), (r1, _) = batch(0, n=4), ref_batch(1, n=4)
    first = torch.arange(4) + 100
    queue(x1, first, None, r1, first)  # fills the memory with 4 entries labelled 100..103
    assert int(queue.filled) == 4
    (x2, y2), (r2, _) = batch(2, n=5), ref_batch(3, n=5)
    got = queue(x2, y2, None, r2, y2)
    expected = base(x2, y2, None, torch.cat([r2, r1]), torch.cat([y2, first]))
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    assert int(queue.filled) == 6 and int(queue.cursor) == 3  # FIFO wrap-around


def test_memory_queue_top_k_hard_negatives():
    base = InfoNCELoss(temperature=0.1, learnable=False, symmetric=False)
    queue = MemoryQueue(base, dim=8, size=50, hard_negatives=1).train()
    mem, mem_y = batch(5, n=20)
    queue.enqueue(mem, mem_y + 100)
    x, y = batch(6, n=3)
    r, ry = x.clone(), y.clone()
    sims = F.normalize(x, dim=1) @ F.normalize(mem, dim=1).T
    hard = sims.argmax(1).unique()
    expected = base(x, y, None, torch.cat([r, mem[hard]]), torch.cat([ry, mem_y[hard] + 100]))
    queue.eval()
    assert queue(x, y, None, r, ry).item() == pytest.approx(expected.item(), rel=1e-6)


def test_build_loss_composes_miner_queue_and_norm():
    loss = build_loss("triplet", miner="hardest", norm_weight=0.1)
    x, y = batch(0)
    expected = TripletMarginLoss(margin=0.2)(x, y, BatchHardMiner()(x, y)) + 0.1 * x.norm(dim=1).mean()
    assert loss(x, y).item() == pytest.approx(expected.item(), rel=1e-5)
    assert isinstance(build_loss("infonce", queue_size=64, dim=8), MemoryQueue)
    with pytest.raises(ValueError, match="memory queue"):
        build_loss("mse", queue_size=64, dim=8)

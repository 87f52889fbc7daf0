"""The training ingredients of the competition write-ups, each checked on what it promises: mixup interpolates
pairs, the filter drops the stated fraction (the noisy pairs first), the grouped sampler keeps an image's
captions together, hard batches hold look-alike images, the temperature follows its schedule, and the MSE term
is the loss plus the stated weight times the squared error."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from stitch import api
from stitch.data import make_synthetic
from stitch.training.batching import CaptionBatches
from stitch.training.config import ConfigError, load_config
from stitch.training.filtering import consistency_scores, drop_least_consistent
from stitch.training.tasks import MIXED_LABEL_BASE, Task
from stitch.translators import build_model
from stitch.translators.moments import PairMoments

SHAPE = {"n_images": 400, "captions_per_image": 3, "text_dim": 16, "image_dim": 24, "latent_dim": 6}


def test_mixup_interpolates_captions_and_their_images_with_one_weight():
    config = load_config(None, ["optim.mixup_alpha=0.6", "model.name=mlp", "model.hidden=8"])
    task = Task.for_config(build_model(config.model, 4, 3), config)
    captions = torch.randn(6, 4)
    labels = torch.tensor([0, 0, 1, 2, 2, 3])
    ref_labels, images = torch.tensor([0, 1, 2, 3]), torch.randn(4, 3)
    torch.manual_seed(5)
    weight = float(torch.distributions.Beta(0.6, 0.6).sample())
    partner = torch.randperm(6)
    torch.manual_seed(5)
    mixed, mixed_labels, mixed_images, ids = task.mixup(captions, labels, images, ref_labels)
    assert torch.allclose(mixed, weight * captions + (1 - weight) * captions[partner])
    assert torch.equal(mixed_labels, labels * MIXED_LABEL_BASE + labels[partner])
    for row in range(6):  # each mixed caption's positive is the same mixture of the two images
        target = mixed_images[ids == mixed_labels[row]][0]
        assert torch.allclose(target, weight * images[labels[row]] + (1 - weight) * images[labels[partner[row]]])
    assert len(ids) == len(set(mixed_labels.tolist())) and 0 < weight < 1


def test_the_mse_term_adds_its_weight_times_the_squared_error_to_the_own_image():
    torch.manual_seed(0)
    plain = load_config(None, ["model.name=mlp", "model.hidden=8", "model.dropout=0", "loss.queue_size=0"])
    weighted = load_config(None, ["model.name=mlp", "model.hidden=8", "model.dropout=0", "loss.queue_size=0",
                                  "loss.mse_weight=0.5"])  # fmt: skip
    model = build_model(plain.model, 4, 3)
    captions, labels = torch.randn(5, 4), torch.tensor([0, 2, 2, 3, 0])
    ref_labels, images = torch.tensor([0, 2, 3]), torch.randn(3, 3)
    base = Task.for_config(model, plain).training_step(captions, labels, images, ref_labels)
    total = Task.for_config(model, weighted).training_step(captions, labels, images, ref_labels)
    own = model.embed_gallery(images)[torch.tensor([0, 1, 1, 2, 0])]
    expected = base + 0.5 * (model.training_queries(captions) - own).pow(2).mean()
    assert torch.allclose(total, expected, atol=1e-6) and not torch.allclose(total, base)


def test_the_filter_drops_the_stated_fraction_noisy_pairs_first():
    data = make_synthetic(**SHAPE, caption_noise=0.3)
    rng = np.random.default_rng(0)
    noisy = rng.choice(data.n_captions, data.n_captions // 10, replace=False)
    captions = data.captions.copy()
    captions[noisy] = rng.permutation(captions)[: len(noisy)]  # 10% of captions describe another picture
    data = type(data)(captions, data.images, data.caption_image)
    shards = data.shards()
    moments = PairMoments.of_chunks(shards.pair_chunks())
    scores = consistency_scores(shards, moments, lambda y: y, ridge_alpha=1.0)
    kept, how = drop_least_consistent(shards, scores, 0.1)
    assert kept.n_captions == data.n_captions - round(0.1 * data.n_captions)
    dropped = np.setdiff1d(np.arange(data.n_captions), kept.shards[0].rows)
    assert len(np.intersect1d(dropped, noisy)) > 0.8 * len(noisy)  # the planted noise goes first
    assert "dropped 120 of 1,200 training pairs (10.0%)" in how


def test_a_filtered_run_records_what_it_dropped(tmp_path):
    data = make_synthetic(**SHAPE)
    result = api.train(data, None, out=tmp_path / "run", overrides=["optim.epochs=1", "model.hidden=16",
                       "filter_fraction=0.25"], progress=False)  # fmt: skip
    train_captions = result.run.info.meta["train_captions"]
    assert f"dropped {round(0.25 * train_captions)} of {train_captions}" in result.run.info.meta["filtered"]


def test_grouped_batches_keep_the_captions_of_an_image_together():
    data = make_synthetic(**SHAPE)
    batches = CaptionBatches(data.shards(), 60, seed=1, sampler="grouped")
    for _, labels, _, _ in batches.epoch():
        labels = labels.tolist()
        inner = {image for image in labels if image not in (labels[0], labels[-1])}  # cut images sit at the ends
        assert all(labels.count(image) == 3 for image in inner)
        runs = [labels[i] for i in range(len(labels)) if i == 0 or labels[i] != labels[i - 1]]
        assert len(runs) == len(set(runs))  # each image's captions are contiguous
    random = [len(set(b[1].tolist())) for b in CaptionBatches(data.shards(), 60, seed=1).epoch()]
    assert np.mean(random) > 40  # a random batch of 60 spreads over many more images than grouped's ~20


def test_hard_batches_hold_images_more_alike_than_random_ones():
    data = make_synthetic(**SHAPE)

    def mean_similarity(sampler: str) -> float:
        sims = []
        for _, _, images, _ in CaptionBatches(data.shards(), 30, seed=2, sampler=sampler).epoch():
            unit = torch.nn.functional.normalize(images, dim=1)
            sim = unit @ unit.T
            sims.append(float((sim.sum() - sim.diagonal().sum()) / (len(sim) ** 2 - len(sim))))
        return float(np.mean(sims))

    assert mean_similarity("hard") > mean_similarity("random") + 0.1


def test_the_temperature_follows_its_cosine_schedule():
    overrides = ["loss.learnable_temperature=false", "loss.temperature=0.1", "loss.final_temperature=0.02"]
    config = load_config(None, ["model.name=mlp", "model.hidden=8", *overrides])
    task = Task.for_config(build_model(config.model, 4, 3), config)
    seen = {}
    for fraction in (0.0, 0.5, 1.0):
        task.set_progress(fraction)
        seen[fraction] = task.temperature
    assert seen[0.0] == pytest.approx(0.1, rel=1e-5) and seen[1.0] == pytest.approx(0.02, rel=1e-5)
    assert seen[0.5] == pytest.approx(0.02 + 0.08 * 0.5 * (1 + math.cos(math.pi / 2)), rel=1e-5)


def test_ingredients_that_cannot_apply_are_refused():
    with pytest.raises(ConfigError, match="learnable_temperature=false"):
        load_config(None, ["loss.final_temperature=0.02"])
    with pytest.raises(ConfigError, match="contrastive loss"):
        load_config(None, ["loss.name=mse", "optim.mixup_alpha=0.5"])
    with pytest.raises(ConfigError, match="optim.sampler must be one of"):
        load_config(None, ["optim.sampler=clustered"])

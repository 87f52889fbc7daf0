"""Splits are by image: no image, and so no caption of it, is on both sides."""

from __future__ import annotations

import numpy as np
import pytest

from stitch.data import DataError, kfold_by_image, make_synthetic, random_image_split, train_dev_split
from stitch.data.dataset import PairedEmbeddings


def _image_keys(data):
    return {tuple(np.round(row, 5)) for row in data.images}


def test_file_split_column_is_used(small_data):
    train, dev, how = train_dev_split(small_data)
    assert how == "the file's split column"
    assert train.n_images == int((small_data.image_split == "train").sum())
    assert not _image_keys(train) & _image_keys(dev)


def test_seeded_split_without_a_split_column(small_data):
    bare = PairedEmbeddings(small_data.captions, small_data.images, small_data.caption_image)
    train, dev, how = train_dev_split(bare, dev_fraction=0.2, seed=3)
    assert "seeded" in how
    assert dev.n_images == 60 and train.n_images == 240
    assert train.n_captions + dev.n_captions == bare.n_captions
    assert not _image_keys(train) & _image_keys(dev)
    again = train_dev_split(bare, dev_fraction=0.2, seed=3)[1]
    assert np.array_equal(again.images, dev.images)
    other = train_dev_split(bare, dev_fraction=0.2, seed=4)[1]
    assert not np.array_equal(other.images, dev.images)


def test_captions_follow_their_image(small_data):
    _, dev, _ = train_dev_split(small_data)
    # every caption's embedding in dev must come from an image that is in dev, matched by owner
    rows = np.where(small_data.image_split == "dev")[0]
    for cap, img in zip(dev.captions[:50], dev.caption_image[:50]):
        original = np.where((small_data.captions == cap).all(1))[0][0]
        assert small_data.caption_image[original] == rows[img]


def test_random_split_fractions_and_errors():
    parts = random_image_split(1000, {"dev": 0.1, "test": 0.2}, seed=0)
    assert (len(parts["dev"]), len(parts["test"]), len(parts["train"])) == (100, 200, 700)
    assert len(np.unique(np.concatenate(list(parts.values())))) == 1000
    with pytest.raises(DataError, match="leave room for train"):
        random_image_split(100, {"dev": 0.6, "test": 0.5})


def test_kfold_holds_out_each_image_once(small_data):
    held = []
    for train, dev in kfold_by_image(small_data, k=4, seed=0):
        assert not _image_keys(train) & _image_keys(dev)
        held.append(dev.n_images)
    assert sum(held) == small_data.n_images
    with pytest.raises(DataError):
        next(kfold_by_image(small_data, k=1))


def test_a_split_column_without_dev_never_trains_on_its_test_images():
    data = make_synthetic(n_images=200, captions_per_image=2, text_dim=8, image_dim=8, latent_dim=4)
    split = np.where(np.arange(200) < 150, "train", "test")
    tagged = type(data)(data.captions, data.images, data.caption_image, image_split=split)
    train, dev, how = tagged.holdout(0.2, seed=1)
    assert "of the file's train images" in how
    assert train.n_images + dev.n_images == 150  # the 50 test images are in neither part
    test_images = _image_keys(tagged.split("test"))
    assert not test_images & _image_keys(dev)
    assert not test_images & {tuple(np.round(row, 5)) for chunk in train.image_chunks() for row in chunk}
    renamed = type(data)(data.captions, data.images, data.caption_image,
                         image_split=np.where(split == "test", "validation", "train"))  # fmt: skip
    _, dev, how = renamed.holdout()
    assert how == "the file's split column" and dev.n_images == 50


def test_folds_keep_every_caption_with_all_its_images():
    from stitch.data.splits import image_folds

    data = make_synthetic(
        n_images=240, captions_per_image=3, text_dim=8, image_dim=8, latent_dim=4, shared_fraction=0.2
    )
    links = data.relevant
    assert (links.counts > 1).any()  # some captions are relevant to several images
    folds = image_folds(data, k=4, seed=3)
    per_link = folds[links.items]
    first = per_link[links.indptr[:-1]]
    assert (per_link == np.repeat(first, links.counts)).all()  # a caption's images share one fold
    sizes = np.bincount(folds, minlength=4)
    assert sizes.sum() == 240 and sizes.min() > 0.2 * 240
    assert (image_folds(data, k=4, seed=3) == folds).all() and not (image_folds(data, k=4, seed=4) == folds).all()

"""Pairs in memory and on disk keep one contract (``stitch.data.Pairs``): the same members with the same
parameters, so training, evaluation and indexing take either without asking which."""

from __future__ import annotations

import inspect

import numpy as np

from stitch import api
from stitch.data import PairedEmbeddings, Pairs, make_synthetic
from stitch.data.sharded import ShardedPairs


def test_both_holders_have_every_member_with_the_same_parameters():
    members = [n for n in vars(Pairs) if not n.startswith("_")]
    assert {"holdout", "select", "to_memory", "in_memory", "image_shards"} <= set(members)
    for name in members:
        mine = getattr(PairedEmbeddings, name)
        theirs = getattr(ShardedPairs, name)
        assert isinstance(mine, property) == isinstance(theirs, property), name
        if not isinstance(mine, property):
            assert list(inspect.signature(mine).parameters) == list(inspect.signature(theirs).parameters), name


def test_the_same_pairs_answer_the_same_in_memory_and_on_disk(tmp_path):
    data = make_synthetic(n_images=60, captions_per_image=2, text_dim=8, image_dim=12, latent_dim=4, seed=1)
    folder = api.convert(_npz(data, tmp_path), tmp_path / "sharded", shard_rows=40, dtype="float32")
    disk = api.load(folder)
    assert isinstance(data, Pairs) and isinstance(disk, Pairs)
    assert data.in_memory and not disk.in_memory
    for name in ("n_captions", "n_images", "text_dim", "image_dim"):
        assert getattr(data, name) == getattr(disk, name), name
    assert data.split_names() == disk.split_names()
    np.testing.assert_allclose(disk.to_memory().captions, data.captions)
    np.testing.assert_allclose(disk.select("dev").images, data.select("dev").images)
    (got_train, got_dev, got_how), (train, dev, how) = disk.holdout_rows(0.2, 3), data.holdout_rows(0.2, 3)
    np.testing.assert_array_equal(got_train, train)
    np.testing.assert_array_equal(got_dev, dev)
    assert got_how == how
    rows = np.array([5, 1, 7])
    np.testing.assert_allclose(np.sort(disk.take_images(rows).images, 0), np.sort(data.take_images(rows).images, 0))
    assert data.to_memory() is data


def _npz(data: PairedEmbeddings, tmp_path) -> str:
    path = tmp_path / "pairs.npz"
    np.savez(
        path,
        **{"captions/embeddings": data.captions, "captions/image_index": data.caption_image,
           "images/embeddings": data.images, "images/split": data.image_split},
    )  # fmt: skip
    return str(path)

"""Stitch's sharded layout: written whole-image shards, opened memory-mapped, split and streamed exactly as
the same pairs in memory, with bad shards named."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from stitch import api
from stitch.data import DataError, load_pairs, make_synthetic
from stitch.data.sharded import MANIFEST, ShardedPairs, open_sharded, write_sharded
from stitch.data.shards import Shard
from stitch.training.batching import CaptionBatches


def _pairs(**kw):
    shape = {"n_images": 300, "captions_per_image": 3, "text_dim": 12, "image_dim": 20, "latent_dim": 5}
    return make_synthetic(**{**shape, **kw})


def _as_sharded(data) -> ShardedPairs:
    columns = {"image_split": [data.image_split]} if data.image_split is not None else {}
    return ShardedPairs([Shard(data.captions, data.images, data.caption_image)], columns)


def test_written_shards_hold_whole_images_and_read_back_equal(tmp_path):
    data = _pairs()
    folder = write_sharded(_as_sharded(data), tmp_path / "shards", shard_rows=100, dtype="float32")
    opened = load_pairs(folder)
    manifest = json.loads((folder / MANIFEST).read_text())
    sizes = [entry["captions"] for entry in manifest["shards"]]
    assert sizes == [99] * 9 + [9]  # at most 100 captions a shard, whole images (3 captions each)
    assert all(entry["captions"] == 3 * entry["images"] for entry in manifest["shards"])
    assert isinstance(opened.shards[0].captions, np.memmap)
    back = opened.to_memory()
    assert np.array_equal(back.captions, data.captions) and np.array_equal(back.images, data.images)
    assert np.array_equal(back.caption_image, data.caption_image)
    assert np.array_equal(back.image_split, data.image_split)


def test_float16_shards_round_to_half_precision_only(tmp_path):
    data = _pairs()
    back = open_sharded(write_sharded(_as_sharded(data), tmp_path / "s", dtype="float16")).to_memory()
    assert np.array_equal(back.captions, data.captions.astype(np.float16).astype(np.float32))
    assert (tmp_path / "s" / "00000.captions.npy").stat().st_size < data.captions.nbytes * 0.6


def test_holdout_and_batches_equal_the_in_memory_path(tmp_path):
    """One shard on disk draws the very batches of the same pairs in RAM (same split, permutation, labels)."""
    data = _pairs()
    data = type(data)(data.captions, data.images, data.caption_image)  # no split column: seeded split
    sharded = open_sharded(write_sharded(_as_sharded(data), tmp_path / "s", dtype="float32"))
    mem_train, mem_dev, mem_how = data.holdout(0.2, seed=4)
    disk_train, disk_dev, disk_how = sharded.holdout(0.2, seed=4)
    assert mem_how == disk_how and np.array_equal(mem_dev.images, disk_dev.images)
    assert np.array_equal(mem_dev.captions, disk_dev.captions)
    assert (mem_train.n_captions, mem_train.n_images) == (disk_train.n_captions, disk_train.n_images)
    mem = CaptionBatches(mem_train, 64, seed=2)
    disk = CaptionBatches(disk_train, 64, seed=2)
    for a, b in zip(mem.epoch(), disk.epoch()):
        assert torch.equal(a[0], b[0]) and torch.equal(a[2], b[2])
        # labels differ only by numbering (train images renumbered vs global ids) and keep their order
        assert torch.equal(torch.argsort(a[1]), torch.argsort(b[1])) and len(a[3]) == len(b[3])


def test_several_shards_visit_every_train_caption_once_per_pass(tmp_path):
    data = _pairs()
    sharded = open_sharded(write_sharded(_as_sharded(data), tmp_path / "s", shard_rows=90, dtype="float32"))
    train, _, _ = sharded.holdout(0.1, seed=0)
    batches = CaptionBatches(train, 50, seed=0, drop_last=False)
    seen = torch.cat([captions for captions, *_ in batches.epoch()])
    assert len(seen) == train.n_captions
    assert len(torch.unique(seen, dim=0)) == train.n_captions  # each once
    for _, labels, images, ids in CaptionBatches(train, 50, seed=1).epoch():
        assert torch.equal(images, torch.as_tensor(data.images[ids.numpy()]))  # global ids name the right rows
        assert set(labels.tolist()) == set(ids.tolist())


@pytest.mark.parametrize("sampler", ["random", "grouped", "hard"])
def test_resumed_stream_draws_the_batches_of_the_uninterrupted_one(tmp_path, sampler):
    data = _pairs()
    train = open_sharded(write_sharded(_as_sharded(data), tmp_path / "s", shard_rows=90)).holdout(0.1)[0]
    whole = CaptionBatches(train, 32, seed=3, samples_per_epoch=200, sampler=sampler)
    first = [b[0] for b in whole.epoch()]
    state = whole.get_state()
    rest = [b[0] for _ in range(5) for b in whole.epoch()]  # several epochs, across pass boundaries
    again = CaptionBatches(train, 32, seed=3, samples_per_epoch=200, sampler=sampler)
    again.set_state(state)
    assert len(first) == 6
    assert all(torch.equal(a, b) for a, b in zip(rest, [b[0] for _ in range(5) for b in again.epoch()]))


def test_training_on_a_sharded_folder_matches_training_in_memory(tmp_path):
    data = _pairs()
    folder = write_sharded(_as_sharded(data), tmp_path / "s", dtype="float32")
    overrides = ["optim.epochs=2", "model.hidden=32", "optim.batch_size=64"]
    in_memory = api.train(data, None, overrides=overrides, progress=False)
    on_disk = api.train(api.load(folder), None, overrides=overrides, progress=False)
    assert on_disk.dev_metrics == pytest.approx(in_memory.dev_metrics, abs=1e-6)
    for (name, a), b in zip(in_memory.model.state_dict().items(), on_disk.model.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5), name


def test_bad_shards_are_named(tmp_path):
    data = _pairs()
    folder = write_sharded(_as_sharded(data), tmp_path / "s", shard_rows=300, dtype="float32")
    first = np.load(folder / "00000.captions.npy")
    np.save(folder / "00001.captions.npy", first[:10])  # shorter than the manifest says
    with pytest.raises(DataError, match="shard 00001 captions has 10 rows but the manifest says 300"):
        open_sharded(folder)
    np.save(folder / "00001.captions.npy", np.zeros((300, 7), np.float32))  # another dimension
    with pytest.raises(DataError, match="text dimension 7 differs"):
        open_sharded(folder)
    broken = first.copy()
    broken[17, 3] = np.nan
    np.save(folder / "00001.captions.npy", broken)
    opened = open_sharded(folder)
    with pytest.raises(DataError, match=r"shard 1 \(00001\) captions hold NaN/Inf values in 1 row\(s\): 17"):
        opened.to_memory()
    owner = np.load(folder / "00002.caption_image.npy")
    owner[5] = 999
    np.save(folder / "00002.caption_image.npy", owner)
    with pytest.raises(DataError, match=r"shard 2 \(00002\): caption->image index out of range \[0, 100\)"):
        open_sharded(folder)
    (folder / MANIFEST).write_text("{")
    with pytest.raises(DataError, match="not valid JSON"):
        open_sharded(folder)


def test_writing_never_replaces_a_folder_unasked_and_leaves_nothing_half_written(tmp_path):
    data = _pairs()
    folder = write_sharded(_as_sharded(data), tmp_path / "s")
    with pytest.raises(FileExistsError):
        write_sharded(_as_sharded(data), folder)
    bad = data.captions.copy()
    bad[250] = np.inf
    broken = ShardedPairs([Shard(bad, data.images, data.caption_image)])
    with pytest.raises(DataError, match="250"):
        write_sharded(broken, tmp_path / "t")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]  # no half-written folder, no temporary


def test_small_input_shards_merge_into_output_shards_in_order(tmp_path):
    data = _pairs()
    pieces = []
    for lo, hi in ((0, 10), (10, 150), (150, 300)):  # three input files of whole images
        rows = np.flatnonzero((data.caption_image >= lo) & (data.caption_image < hi))
        pieces.append(Shard(data.captions[rows], data.images[lo:hi], data.caption_image[rows] - lo))
    folder = write_sharded(ShardedPairs(pieces), tmp_path / "s", shard_rows=500, dtype="float32")
    manifest = json.loads((folder / MANIFEST).read_text())
    assert [e["captions"] for e in manifest["shards"]] == [498, 402]  # packed across input files, whole images
    back = open_sharded(folder).to_memory()
    assert np.array_equal(back.captions, data.captions) and np.array_equal(back.caption_image, data.caption_image)


def test_force_replaces_only_a_sharded_folder(tmp_path):
    data = _pairs()
    folder = write_sharded(_as_sharded(data), tmp_path / "s", dtype="float32")
    smaller = type(data)(data.captions[:30], data.images[:10], data.caption_image[:30])
    write_sharded(ShardedPairs.of(smaller), folder, force=True)
    assert open_sharded(folder).n_captions == 30 and sorted(p.name for p in tmp_path.iterdir()) == ["s"]
    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "thesis.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a stitch sharded folder"):
        write_sharded(ShardedPairs.of(smaller), mine, force=True)
    assert (mine / "thesis.txt").read_text() == "keep me"

"""Index build from a sharded folder on disk: the same index as from the pairs in memory, built chunk by chunk,
with the right names and split, and clear errors for a broken shard."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch

from stitch import api
from stitch.apps.cli import main
from stitch.data import DataError, load_pairs, make_synthetic
from stitch.data.sharded import ShardedPairs, write_sharded
from stitch.data.shards import Shard
from stitch.retrieval import index as index_module
from stitch.retrieval.index import IndexFileError, load_index, train_sample_size
from stitch.retrieval.scorer import Scorer
from stitch.retrieval.search import Searcher, gallery_images
from stitch.training import open_run

needs_faiss = pytest.mark.skipif(
    importlib.util.find_spec("faiss") is None, reason="faiss is not installed (pip install faiss-cpu)"
)


def _sharded(data, folder, names: bool = True, dtype: str = "float32", shard_rows: int = 700):
    columns = {"image_split": [data.image_split]}
    if names:
        columns["image_names"] = [data.image_names]
    pairs = ShardedPairs([Shard(data.captions, data.images, data.caption_image)], columns)
    write_sharded(pairs, folder, shard_rows=shard_rows, dtype=dtype)
    return load_pairs(folder)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """1,500 images (2 captions each) in memory and as 5 float32 shards, and a ridge run trained on them."""
    root = tmp_path_factory.mktemp("shards")
    data = make_synthetic(n_images=1500, captions_per_image=2, text_dim=24, image_dim=32, latent_dim=8, seed=3)
    api.train(data, None, out=root / "run", overrides=["model.name=ridge"], progress=False)
    sharded = _sharded(data, root / "shards")
    assert len(sharded.shards) >= 4 and sharded.shards[0].images.dtype == np.float32
    return root, data, sharded


def _queries(run_dir, data):
    """The dev captions translated into the run's scoring space, as the index is searched."""
    scorer = open_run(run_dir).scorer()
    return scorer.embed_queries(data.split("dev").captions).numpy()


def _gallery_vectors(run_dir, images):
    """The gallery embedded in memory in one go, as the index stores it (unit rows)."""
    with torch.no_grad():
        return open_run(run_dir).scorer().embed_gallery(images).numpy()


# -- (1) sharded == in memory ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kind, params",
    [
        ("exact", {}),
        pytest.param("flat", {}, marks=needs_faiss),
        pytest.param("ivf", {"nlist": 16, "nprobe": 3}, marks=needs_faiss),
    ],
)
def test_sharded_index_equals_the_in_memory_one(setup, kind, params):
    root, data, sharded = setup
    run = root / "run"
    _, in_memory, scorer_mem = api.gallery_index(run, data, kind=kind, params=params, seed=7)
    _, on_disk, scorer_disk = api.gallery_index(run, sharded, kind=kind, params=params, seed=7, chunk=97)
    queries = _queries(run, data)
    scores_mem, ids_mem = in_memory.search(queries, 10)
    scores_disk, ids_disk = on_disk.search(queries, 10)
    assert np.array_equal(ids_mem, ids_disk)
    assert np.allclose(scores_mem, scores_disk, atol=1e-5)
    assert np.array_equal(in_memory.names, on_disk.names) and on_disk.names[3] == "synthetic3.jpg"
    if kind == "ivf":
        assert on_disk.meta["train_rows"] == train_sample_size(len(data.images), "ivf", on_disk.params) == 1024
        assert on_disk.meta["train_rows"] < len(data.images)  # a real sample, picked by the seed
    # the rescorer's statistics (inverted softmax, the run's default) agree, so the searchers rank alike
    assert scorer_disk.rescorer.name == "is"
    assert torch.allclose(scorer_mem.rescorer.offset, scorer_disk.rescorer.offset, atol=1e-5)
    hits_mem = Searcher(scorer_mem, in_memory).search(data.split("dev").captions[:50], k=5)
    hits_disk = Searcher(scorer_disk, on_disk).search(data.split("dev").captions[:50], k=5)
    assert [[h.name for h in row] for row in hits_mem] == [[h.name for h in row] for row in hits_disk]
    if kind == "exact":  # exact is brute force over the gallery embedded in one go
        truth = queries @ _gallery_vectors(run, data.images).T
        assert np.array_equal(ids_disk, np.argsort(-truth, axis=1, kind="stable")[:, :10])


@pytest.mark.parametrize("rerank", ["is", "csls", "qbnorm", "dbnorm", "center", "whiten"])
def test_chunkwise_rescorer_statistics_equal_the_in_memory_fit(setup, rerank):
    root, data, _ = setup
    run = open_run(root / "run")
    whole, chunked = run.scorer(rerank), run.scorer(rerank)
    gallery = whole.embed_gallery(data.images)
    whole.fit(gallery)
    chunked.fit_stream(lambda: iter(torch.split(gallery, 211)), len(gallery))  # chunks across DEFAULT_CHUNK
    state = {k: v for k, v in vars(whole.rescorer).items() if isinstance(v, torch.Tensor)}
    assert state and chunked.fitted
    for key, value in state.items():
        other = getattr(chunked.rescorer, key)
        assert other.shape == value.shape, key
        if value.dtype == torch.bool:
            assert torch.equal(other, value), key
        else:
            assert torch.allclose(other, value, atol=1e-5, rtol=1e-5), key


# -- (2) IVF-PQ recall -------------------------------------------------------------------------------
@needs_faiss
@pytest.mark.parametrize("refine, floor", [(10, 0.95), (0, 0.90)])
def test_ivfpq_from_shards_finds_the_true_nearest_neighbour(setup, refine, floor):
    root, data, sharded = setup
    run = root / "run"
    params = {"nlist": 16, "nprobe": 4, "m": 8, "nbits": 8, "refine_factor": refine}
    _, index, _ = api.gallery_index(run, sharded, kind="ivfpq", params=params, chunk=128)
    queries = _queries(run, data)
    nearest = np.argmax(queries @ _gallery_vectors(run, data.images).T, axis=1)  # exact brute force
    _, ids = index.search(queries, 10)
    recall_at_10 = np.mean([n in row for n, row in zip(nearest, ids)])
    # measured 0.980 with the exact re-rank (the misses are in unprobed lists: nprobe 4 of 16) and 0.969 on
    # PQ codes alone (614 dev queries, 1,500 images); the floors leave room for FAISS versions
    assert recall_at_10 >= floor, recall_at_10


# -- (3) the build reads a chunk at a time -----------------------------------------------------------
@pytest.mark.parametrize(
    "kind, params",
    [
        ("exact", {}),
        pytest.param("hnsw", {"m": 8}, marks=needs_faiss),
        pytest.param("ivfpq", {"nlist": 8, "m": 8, "nbits": 6}, marks=needs_faiss),
    ],
)
def test_the_build_never_reads_more_than_a_chunk(setup, monkeypatch, tmp_path, kind, params):
    root, data, sharded = setup
    reads, embedded = [], []
    read_images, embed_gallery = Shard.read_images, Scorer.embed_gallery

    def counting_read(self, rows):
        reads.append(len(rows))
        return read_images(self, rows)

    def counting_embed(self, images):
        embedded.append(len(images))
        return embed_gallery(self, images)

    def no_gathering(*args, **kwargs):
        raise AssertionError("the gallery was gathered into memory")

    monkeypatch.setattr(Shard, "read_images", counting_read)
    monkeypatch.setattr(Scorer, "embed_gallery", counting_embed)
    monkeypatch.setattr(ShardedPairs, "gather", no_gathering)
    monkeypatch.setattr(ShardedPairs, "to_memory", no_gathering)
    chunk = 50
    out = api.build_index(root / "run", sharded, tmp_path / "idx", kind=kind, params=params, chunk=chunk)
    n = len(data.images)
    assert max(reads) <= chunk and max(embedded) <= chunk
    # every image is read (a pass fits the rescorer, one adds the vectors; ivfpq also reads its sample)
    assert sum(reads) >= 2 * n and len(reads) >= 2 * n // chunk
    index = load_index(out)
    assert len(index) == n and index.meta["run_id"] == open_run(root / "run").run_id


def test_an_index_that_cannot_fit_in_ram_is_refused_before_any_work(setup, monkeypatch, tmp_path):
    root, _, sharded = setup
    monkeypatch.setattr(index_module, "physical_memory", lambda: 100_000)  # 1500 x 32 float32 = 192 kB
    monkeypatch.setattr(Shard, "read_images", lambda *a: pytest.fail("read the gallery before refusing"))
    with pytest.raises(IndexFileError, match=r"exact index of 1,500 32-d vectors.*--kind ivfpq"):
        api.build_index(root / "run", sharded, tmp_path / "idx", kind="exact")


# -- (4) names and splits ----------------------------------------------------------------------------
def test_names_and_split_selection(setup, tmp_path):
    root, data, sharded = setup
    dev_rows = np.flatnonzero(data.image_split == "dev")
    gallery = gallery_images(sharded, "dev")
    assert len(gallery) == len(dev_rows)
    assert list(gallery.names) == [f"synthetic{i}.jpg" for i in dev_rows]
    assert np.array_equal(np.concatenate(list(gallery.image_chunks(64))), data.images[dev_rows])
    # without a names column: global row numbers (in the whole data), from disk and from memory alike
    unnamed = _sharded(data, tmp_path / "unnamed", names=False)
    assert list(gallery_images(unnamed, "dev").names) == [str(i) for i in dev_rows]
    assert list(gallery_images(unnamed).names) == [str(i) for i in range(len(data.images))]
    in_memory = type(data)(data.captions, data.images, data.caption_image, image_split=data.image_split)
    assert list(gallery_images(in_memory, "dev").names) == [str(i) for i in dev_rows]
    with pytest.raises(DataError, match=r"split 'test' not found; the data has \['dev', 'train'\]"):
        gallery_images(sharded, "test")
    # the CLI: stitch index build --data FOLDER --split dev
    out = tmp_path / "cli-idx"
    args = ["index", "build", "--run", str(root / "run"), "--data", str(tmp_path / "unnamed")]
    assert main([*args, "--split", "dev", "--kind", "exact", "--out", str(out)]) == 0
    assert list(load_index(out).names) == [str(i) for i in dev_rows]
    captions = data.captions[data.caption_image == dev_rows[0]]
    hits = api.open_searcher(root / "run", index_dir=out).search(captions, k=3)
    assert all(h.name in {str(i) for i in dev_rows} for h in hits[0])


# -- (5) broken shards -------------------------------------------------------------------------------
def test_a_truncated_shard_file_is_named(setup, tmp_path, capsys):
    root, data, _ = setup
    _sharded(data, tmp_path / "cut")
    file = tmp_path / "cut" / "00002.images.npy"
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    with pytest.raises(DataError, match="00002.images.npy"):
        load_pairs(tmp_path / "cut")
    args = ["index", "build", "--run", str(root / "run"), "--data", str(tmp_path / "cut"), "--out", str(tmp_path / "i")]
    assert main(args) == 2
    assert "00002.images.npy" in capsys.readouterr().err and not (tmp_path / "i").exists()


def test_a_nan_image_row_is_named_with_its_shard(setup, tmp_path):
    root, data, _ = setup
    _sharded(data, tmp_path / "nan", dtype="float16")
    images = np.load(tmp_path / "nan" / "00003.images.npy", mmap_mode="r+")
    images[5, 2] = np.nan
    images.flush()
    del images
    sharded = load_pairs(tmp_path / "nan")
    with pytest.raises(DataError, match=r"shard 00003: images hold NaN/Inf values in 1 row\(s\): 5"):
        api.build_index(root / "run", sharded, tmp_path / "idx", kind="exact", chunk=64)
    assert not (tmp_path / "idx").exists()
    manifest = json.loads((tmp_path / "nan" / "stitch-shards.json").read_text())
    assert manifest["dtype"] == "float16"

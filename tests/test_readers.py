"""Readers on the real sample layouts, and a bad-input test for each failure a reader must catch."""

from __future__ import annotations

import pickle
import zipfile

import numpy as np
import pytest
import torch

from conftest import write_flickr_like
from stitch.data import DataError, PairedEmbeddings, load_pairs, load_queries, read_npy_triplet
from stitch.data.readers import labels_to_relevance

# --- the real layouts ---------------------------------------------------------------------------


def test_flickr_npz_reads_with_its_split(flickr_path):
    data = load_pairs(flickr_path)
    assert (data.n_captions, data.text_dim) == (35455, 384)
    assert (data.n_images, data.image_dim) == (7091, 1024)
    assert sorted(data.split_names()) == ["dev", "train"]
    dev = data.split("dev")
    assert dev.n_images == 1000 and dev.n_captions == 5000
    # each caption still points at its own image after re-indexing
    names = data.image_names[data.caption_image]
    stems = np.array([cid.split("#")[0] for cid in data.caption_ids])
    assert all(n.startswith(s) for n, s in zip(names[:500], stems[:500]))
    dev_names = dev.image_names[dev.caption_image]
    dev_stems = np.array([cid.split("#")[0] for cid in dev.caption_ids])
    assert all(n.startswith(s) for n, s in zip(dev_names, dev_stems))


def test_aml_npz_label_matrix_becomes_the_index(formats_dir):
    path = formats_dir / "aml2025" / "train.npz"
    data = load_pairs(path)
    raw = np.load(path, allow_pickle=False)
    assert np.array_equal(data.caption_image, raw["captions/label"].argmax(1))
    assert data.n_images == raw["images/embeddings"].shape[0]
    assert data.caption_texts[0] == raw["captions/text"][0]


def test_label_streaming_in_small_chunks_equals_argmax(formats_dir):
    path = formats_dir / "aml2025" / "train.npz"
    dense = np.load(path, allow_pickle=False)["captions/label"]
    for chunk in (1, 7, 100_000):
        relevance = labels_to_relevance(path, chunk_rows=chunk)
        assert np.array_equal(relevance.link_queries, np.nonzero(dense)[0])
        assert np.array_equal(relevance.items, np.nonzero(dense)[1])


def test_aml_test_file_reads_as_queries(formats_dir):
    queries = load_queries(formats_dir / "aml2025" / "test.clean.npz")
    assert len(queries) == 300 and queries.embeddings.shape[1] == 384
    assert queries.ids is not None and queries.texts is not None


def test_pt_layout_loads_without_unpickling_code(formats_dir):
    data = load_pairs(formats_dir / "challenge_pt" / "train.pt")
    raw = np.load(formats_dir / "aml2025" / "train.npz", allow_pickle=False)
    assert data.n_captions == 1200 and data.n_images == 240
    assert np.allclose(data.captions, raw["captions/embeddings"])
    queries = load_queries(formats_dir / "challenge_pt" / "test.pt")
    assert queries.embeddings.shape == (300, 384)


def test_npy_triplet(tmp_path, small_data):
    for name, arr in (("c", small_data.captions), ("i", small_data.images), ("x", small_data.caption_image)):
        np.save(tmp_path / f"{name}.npy", arr)
    data = read_npy_triplet(tmp_path / "c.npy", tmp_path / "i.npy", tmp_path / "x.npy")
    assert np.array_equal(data.caption_image, small_data.caption_image)


# --- bad input: each failure named in the issue --------------------------------------------------


def test_missing_keys_are_listed(tmp_path, small_data):
    path = write_flickr_like(tmp_path / "d.npz", small_data, images__embeddings=None)
    with pytest.raises(DataError, match=r"keys found: .*captions/embeddings"):
        load_pairs(path)


def test_pt_missing_keys_are_listed(tmp_path):
    torch.save({"caption_embd": torch.zeros(3, 4)}, tmp_path / "x.pt")
    with pytest.raises(DataError, match=r"missing key\(s\) \['img_embd', 'caption2img_idx'\]"):
        load_pairs(tmp_path / "x.pt")


def test_index_length_mismatch(tmp_path, small_data):
    path = write_flickr_like(tmp_path / "d.npz", small_data, captions__image_index=small_data.caption_image[:-1])
    with pytest.raises(DataError, match="one image row per caption"):
        load_pairs(path)


def test_nan_rows_are_counted_and_named(tmp_path, small_data):
    captions = small_data.captions.copy()
    captions[[4, 9], 0] = np.nan
    captions[11, 2] = np.inf
    path = write_flickr_like(tmp_path / "d.npz", small_data, captions__embeddings=captions)
    with pytest.raises(DataError, match=r"NaN/Inf values in 3 row\(s\): 4, 9, 11"):
        load_pairs(path)


def test_index_out_of_range(tmp_path, small_data):
    index = small_data.caption_image.copy()
    index[5] = small_data.n_images
    index[6] = -1
    path = write_flickr_like(tmp_path / "d.npz", small_data, captions__image_index=index)
    with pytest.raises(DataError, match=r"out of range \[0, 300\) in 2 row\(s\): 5, 6"):
        load_pairs(path)


def test_images_without_captions(small_data):
    keep = small_data.caption_image != 7
    with pytest.raises(DataError, match=r"images without captions: 1 row\(s\): 7"):
        PairedEmbeddings(small_data.captions[keep], small_data.images, small_data.caption_image[keep])
    ok = PairedEmbeddings(
        small_data.captions[keep], small_data.images, small_data.caption_image[keep], allow_images_without_captions=True
    )
    assert ok.n_images == 300


def test_empty_sets(small_data):
    with pytest.raises(DataError, match="empty"):
        PairedEmbeddings(np.zeros((0, 24), np.float32), small_data.images, np.zeros(0, np.int64))
    with pytest.raises(DataError, match="empty"):
        PairedEmbeddings(small_data.captions, np.zeros((0, 40), np.float32), small_data.caption_image)
    with pytest.raises(DataError, match="empty set of images"):
        small_data.subset_images(np.array([], dtype=np.int64))


def test_dimension_mismatch_between_run_and_data(tmp_path, small_data):
    from stitch import api
    from stitch.data import make_synthetic

    result = api.train(small_data, None, overrides=["model.name=ridge"], progress=False)
    other = make_synthetic(n_images=50, text_dim=30, image_dim=40, seed=2)
    with pytest.raises(ValueError, match="translates 24-d captions, but the data has 30-d"):
        api.evaluate(result, other)


def test_unknown_split_names_the_ones_present(small_data):
    with pytest.raises(DataError, match=r"split 'test' not found; the data has \['dev', 'train'\]"):
        small_data.split("test")


@pytest.mark.parametrize("cut", [0.3, 0.9])
def test_truncated_npz(tmp_path, small_data, cut):
    path = write_flickr_like(tmp_path / "d.npz", small_data)
    blob = path.read_bytes()
    path.write_bytes(blob[: int(len(blob) * cut)])
    with pytest.raises(DataError, match="truncated or corrupt"):
        load_pairs(path)


def test_truncated_pt(tmp_path, formats_dir):
    blob = (formats_dir / "challenge_pt" / "train.pt").read_bytes()
    (tmp_path / "t.pt").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError, match="truncated"):
        load_pairs(tmp_path / "t.pt")


def test_truncated_npy(tmp_path, small_data):
    np.save(tmp_path / "c.npy", small_data.captions)
    blob = (tmp_path / "c.npy").read_bytes()
    (tmp_path / "c.npy").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError, match="truncated"):
        load_queries(tmp_path / "c.npy")


def test_pickled_payloads_are_refused(tmp_path):
    class Boom:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(tmp_path / "evil.pt", "wb") as handle:
        pickle.dump({"caption_embd": Boom()}, handle)
    with pytest.raises(DataError, match="safely"):
        load_queries(tmp_path / "evil.pt")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="pickled"):
        load_queries(tmp_path / "obj.npy")


def test_label_matrix_rows_may_mark_several_images_but_not_none(tmp_path, small_data):
    labels = np.zeros((6, 4), dtype=bool)
    labels[np.arange(6), [0, 1, 2, 3, 0, 1]] = True
    labels[3, 2] = True  # two images for caption 3
    arrays = {"captions/embeddings": np.ones((6, 3), np.float32), "images/embeddings": np.ones((4, 5), np.float32)}
    np.savez(tmp_path / "a.npz", **arrays, **{"captions/label": labels})
    data = load_pairs(tmp_path / "a.npz")
    assert data.relevant.row(3).tolist() == [2, 3] and data.caption_image[3] == 2
    assert [data.relevant.row(i).tolist() for i in (0, 1, 2, 4, 5)] == [[0], [1], [2], [0], [1]]
    labels[4] = False  # caption 4 marks nothing
    np.savez(tmp_path / "b.npz", **arrays, **{"captions/label": labels})
    with pytest.raises(DataError, match="row 4 marks no image"):
        load_pairs(tmp_path / "b.npz")


def test_compressed_label_matrix_streams_too(tmp_path):
    rng = np.random.default_rng(0)
    index = rng.integers(0, 9, size=50)
    labels = np.eye(9, dtype=bool)[index]
    np.savez_compressed(tmp_path / "a.npz", **{"captions/label": labels})
    relevance = labels_to_relevance(tmp_path / "a.npz", chunk_rows=8)
    assert relevance.is_single and np.array_equal(relevance.items, index)
    with zipfile.ZipFile(tmp_path / "a.npz") as archive:
        assert archive.getinfo("captions/label.npy").compress_type == zipfile.ZIP_DEFLATED


def test_unknown_format(tmp_path):
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="unknown format"):
        load_pairs(tmp_path / "x.csv")
    with pytest.raises(DataError, match="no such file"):
        load_pairs(tmp_path / "nope.npz")


def test_an_npy_array_named_npz_is_named_not_a_crash(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((3, 4), dtype=np.float32))
    (tmp_path / "x.npy").rename(tmp_path / "x.npz")
    with pytest.raises(DataError, match="one .npy array, not an npz archive"):
        load_pairs(tmp_path / "x.npz")


def test_every_format_is_recognised_by_the_one_table_load_pairs_dispatches_through(tmp_path, formats_dir, small_data):
    """``load_pairs`` and ``detect_layout`` read one ordered table (stitch.data.formats.FORMATS), so a path
    is one format for both; an npz with neither key set is no format and named by its keys."""
    from stitch.data.formats import FORMATS, LAYOUTS, detect_format
    from stitch.data.layouts import detect_layout
    from stitch.data.query_items import write_query_items
    from stitch.data.sharded import ShardedPairs, write_sharded

    write_flickr_like(tmp_path / "flickr.npz", small_data)
    write_query_items(small_data, tmp_path / "qi")
    write_sharded(ShardedPairs.of(small_data), tmp_path / "shards", shard_rows=50, dtype="float32")
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    expected = {
        tmp_path / "flickr.npz": "flickr-npz",
        formats_dir / "aml2025" / "train.npz": "aml-npz",
        formats_dir / "challenge_pt" / "train.pt": "pt",
        tmp_path / "qi": "query-items",
        tmp_path / "shards": "sharded",
        tmp_path / "other.npz": None,
    }
    assert {path: detect_format(path) for path in expected} == expected
    assert all(detect_layout(path) is None for path in expected)
    assert set(LAYOUTS) == {"clip-retrieval", "table", "hf-datasets"} and set(LAYOUTS) < set(FORMATS.names())
    with pytest.raises(DataError, match=r"not a paired file; .*keys found: \['a'\]"):
        load_pairs(tmp_path / "other.npz")


@pytest.mark.parametrize("value", [0.5, -1.0, np.nan, 2.0])
def test_label_values_other_than_0_and_1_are_refused(tmp_path, value):
    labels = np.eye(4, dtype=np.float32)[[0, 1, 2, 3, 0]]
    labels[3, 3] = value  # row 3 keeps one mark, but the mark is not 1
    np.savez(
        tmp_path / "a.npz",
        **{"captions/embeddings": np.ones((5, 3)), "images/embeddings": np.ones((4, 2)), "captions/label": labels},
    )
    with pytest.raises(DataError, match="row 3 holds .* at column 3; labels must be 0 or 1"):
        load_pairs(tmp_path / "a.npz")


def test_a_label_matrix_wider_than_the_image_list_is_refused(tmp_path):
    labels = np.eye(6, dtype=bool)[[0, 1, 2, 3, 0]]  # 6 columns, 4 images
    np.savez(
        tmp_path / "a.npz",
        **{"captions/embeddings": np.ones((5, 3)), "images/embeddings": np.ones((4, 2)), "captions/label": labels},
    )
    with pytest.raises(DataError, match="6 image columns but the file holds 4 images"):
        load_pairs(tmp_path / "a.npz")


def test_timedelta_embeddings_are_refused(tmp_path):
    from stitch.data import PairedEmbeddings

    with pytest.raises(DataError, match="must be real numbers, got dtype timedelta64"):
        PairedEmbeddings(
            captions=np.ones((2, 3), dtype="timedelta64[s]"), images=np.ones((2, 3)), caption_image=np.array([0, 1])
        )


def test_pt_tensors_in_reduced_precision_load_and_sparse_or_meta_ones_are_named(tmp_path):
    import torch

    base = {
        "caption_embd": torch.randn(4, 3),
        "img_embd": torch.randn(2, 5),
        "caption2img_idx": torch.tensor([0, 1, 0, 1]),
    }
    torch.save({**base, "caption_embd": base["caption_embd"].bfloat16()}, tmp_path / "bf16.pt")
    data = load_pairs(tmp_path / "bf16.pt")
    assert data.captions.dtype == np.float32
    assert np.allclose(data.captions, base["caption_embd"].bfloat16().float().numpy())
    torch.save({**base, "img_embd": base["img_embd"].to_sparse()}, tmp_path / "sparse.pt")
    with pytest.raises(DataError, match="'img_embd' is a torch.sparse_coo tensor"):
        load_pairs(tmp_path / "sparse.pt")
    torch.save({**base, "img_embd": torch.empty(2, 5, device="meta")}, tmp_path / "meta.pt")
    with pytest.raises(DataError, match="meta tensor|cannot be loaded safely"):
        load_pairs(tmp_path / "meta.pt")

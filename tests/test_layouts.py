"""The layouts embeddings come in — clip-retrieval folders, Parquet/Arrow tables, ``datasets`` save_to_disk
folders — read as sharded pairs equal to the pairs written, memory-mapped or zero-copy where promised, with bad
input named by file and row or key."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc
import pyarrow.parquet as pq
import pytest

from stitch.data import DataError, load_pairs, make_synthetic
from stitch.data.layouts import ChunkedRows, detect_layout, open_layout, read_hf_datasets, read_table
from stitch.data.sharded import open_sharded, write_sharded

FLICKR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "flickr8k" / "flickr8k.npz"
BOUNDS = (0, 14, 30, 40)  # image ranges of the shards written (3 captions an image: 42, 48 and 30 rows)
KEY = "image_path"


def _pairs(n_images: int = 40, seed: int = 0):
    return make_synthetic(n_images=n_images, captions_per_image=3, text_dim=12, image_dim=20, latent_dim=4, seed=seed)


def _rows(data, lo: int = 0, hi: int | None = None, dtype=np.float32) -> dict:
    """One row per caption of images ``lo:hi``: its embedding, its image's (repeated), key, text and split."""
    hi = data.n_images if hi is None else hi
    rows = np.flatnonzero((data.caption_image >= lo) & (data.caption_image < hi))
    owner = data.caption_image[rows]
    texts = data.caption_texts if data.caption_texts is not None else data.caption_ids
    return {
        "text_emb": data.captions[rows].astype(dtype),
        "img_emb": data.images[owner].astype(dtype),
        KEY: data.image_names[owner],
        "caption": texts[rows],
        "split": data.image_split[owner],
    }


def _spans(bounds):
    return list(zip(bounds[:-1], bounds[1:]))


def _embeddings(matrix: np.ndarray, fixed: bool) -> pa.Array:
    values = pa.array(matrix.ravel())
    if fixed:
        return pa.FixedSizeListArray.from_arrays(values, matrix.shape[1])
    return pa.ListArray.from_arrays(pa.array(np.arange(len(matrix) + 1, dtype=np.int32) * matrix.shape[1]), values)


def _table(rows: dict, fixed: bool = False, names=("text_emb", "img_emb")) -> pa.Table:
    columns = {names[0]: _embeddings(rows["text_emb"], fixed), names[1]: _embeddings(rows["img_emb"], fixed)}
    return pa.table({**columns, **{k: rows[k] for k in (KEY, "caption", "split")}})


def _write_ipc(path: Path, table: pa.Table, stream: bool = False, batch: int = 10) -> None:
    with pa.OSFile(str(path), "wb") as sink:
        writer = (pa.ipc.new_stream if stream else pa.ipc.new_file)(sink, table.schema)
        writer.write_table(table, max_chunksize=batch)
        writer.close()


def _write_clip(folder: Path, data, dtype=np.float32, bounds=BOUNDS) -> Path:
    for sub in ("img_emb", "text_emb", "metadata"):
        (folder / sub).mkdir(parents=True)
    for i, (lo, hi) in enumerate(_spans(bounds)):
        rows = _rows(data, lo, hi, dtype)
        np.save(folder / "img_emb" / f"img_emb_{i}.npy", rows["img_emb"])
        np.save(folder / "text_emb" / f"text_emb_{i}.npy", rows["text_emb"])
        meta = pa.table({k: rows[k] for k in (KEY, "caption", "split")})
        pq.write_table(meta, folder / "metadata" / f"metadata_{i}.parquet")
    return folder


def _write_tables(folder: Path, data, suffix: str, dtype=np.float32, fixed=False, stream=False, bounds=BOUNDS) -> Path:
    """One file per shard; Parquet row groups and Arrow record batches of 10 rows (several per file)."""
    folder.mkdir()
    for i, (lo, hi) in enumerate(_spans(bounds)):
        table = _table(_rows(data, lo, hi, dtype), fixed)
        if suffix == ".parquet":
            pq.write_table(table, folder / f"part-{i}.parquet", row_group_size=10)
        else:
            _write_ipc(folder / f"part-{i}{suffix}", table, stream)
    return folder


def _write_hf(folder: Path, data, dtype=np.float32, num_shards: int = 4) -> Path:
    import datasets

    datasets.disable_progress_bars()
    datasets.Dataset.from_dict(_rows(data, dtype=dtype)).save_to_disk(str(folder), num_shards=num_shards)
    return folder


def _assert_same(back, data, dtype=np.float32) -> None:
    """Read-back pairs equal the source (rounded to ``dtype`` as written), keys as image names."""
    assert np.array_equal(back.captions, data.captions.astype(dtype).astype(np.float32))
    assert np.array_equal(back.images, data.images.astype(dtype).astype(np.float32))
    assert np.array_equal(back.caption_image, data.caption_image)
    assert np.array_equal(back.image_split, data.image_split)
    assert np.array_equal(back.image_names, data.image_names)
    texts = data.caption_texts if data.caption_texts is not None else data.caption_ids
    assert np.array_equal(back.caption_texts, texts)


def _arrow_backed(block: np.ndarray) -> bool:
    """True when ``block`` is a view of memory pyarrow owns (the mapped file), not a numpy copy."""
    base = block
    while isinstance(base, np.ndarray):
        if base.flags.owndata:
            return False
        base = base.base
    return isinstance(base, (pa.Array, pa.Buffer))


def _rewrite_metadata(folder: Path, i: int, change) -> None:
    path = folder / "metadata" / f"metadata_{i}.parquet"
    columns = pq.read_table(path).to_pydict()
    change(columns)
    pq.write_table(pa.table(columns), path)


# --- clip-retrieval ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_clip_retrieval_folder_groups_captions_by_key_and_stays_memory_mapped(tmp_path, dtype):
    data = _pairs()
    folder = _write_clip(tmp_path / "clip", data, dtype)
    assert detect_layout(folder) == "clip-retrieval"
    opened = open_layout(folder, image_key=KEY)
    assert len(opened.shards) == 3 and opened.n_images == data.n_images  # one image per key
    assert [s.name for s in opened.shards][1] == "img_emb_1.npy+text_emb_1.npy"
    for shard in opened.shards:
        assert isinstance(shard.captions, np.memmap) and shard.captions.dtype == dtype
        assert shard.images.dtype == dtype
    _assert_same(opened.to_memory(), data, dtype)


def test_clip_retrieval_without_key_makes_every_row_an_image(tmp_path):
    data = _pairs()
    opened = open_layout(_write_clip(tmp_path / "clip", data))
    assert opened.n_images == opened.n_captions == data.n_captions
    assert all(isinstance(s.images, np.memmap) for s in opened.shards)  # no grouping: nothing gathered
    back = opened.to_memory()
    assert np.array_equal(back.caption_image, np.arange(data.n_captions))
    assert np.array_equal(back.images, data.images[data.caption_image])
    assert np.array_equal(back.image_split, data.image_split[data.caption_image])
    assert back.image_names is None


def _drop_text_1(folder):
    (folder / "text_emb" / "text_emb_1.npy").unlink()


def _extra_metadata_7(folder):
    shutil.copy(folder / "metadata" / "metadata_2.parquet", folder / "metadata" / "metadata_7.parquet")


def _short_metadata_1(folder):
    _rewrite_metadata(folder, 1, lambda columns: [values.pop() for values in columns.values()])


def _narrow_text_2(folder):
    path = folder / "text_emb" / "text_emb_2.npy"
    np.save(path, np.load(path)[:, :10])


def _integer_images_1(folder):
    path = folder / "img_emb" / "img_emb_1.npy"
    np.save(path, np.load(path).astype(np.int32))


def _truncated_text_0(folder):
    path = folder / "text_emb" / "text_emb_0.npy"
    path.write_bytes(path.read_bytes()[:1000])


def _key_in_shards_0_and_1(folder):
    _rewrite_metadata(folder, 1, lambda columns: columns[KEY].__setitem__(0, "synthetic0.jpg"))


def _metadata_rotated_by_one_row_0(folder):
    """The key column one row out of step with the embeddings: captions would pair with the wrong image."""

    def rotate(columns):
        for name in columns:
            columns[name] = columns[name][1:] + columns[name][:1]

    _rewrite_metadata(folder, 0, rotate)


def _split_flips_within_image_0(folder):
    def flip(columns):
        columns["split"][1] = "dev" if columns["split"][0] == "train" else "train"

    _rewrite_metadata(folder, 0, flip)


@pytest.mark.parametrize(
    "damage, options, expected",
    [
        (_drop_text_1, {}, ["shard 1", "text_emb/text_emb_1.npy missing", "text_emb has [0, 2]"]),
        (_extra_metadata_7, {}, ["shard 7", "img_emb/img_emb_7.npy", "text_emb/text_emb_7.npy", "[0, 1, 2, 7]"]),
        (_short_metadata_1, {}, ["shard 1", "metadata/metadata_1.parquet has 47", "text_emb/text_emb_1.npy has 48"]),
        (
            _narrow_text_2,
            {},
            ["img_emb_2.npy+text_emb_2.npy has text dimension 10", "img_emb_0.npy+text_emb_0.npy has 12"],
        ),
        (_integer_images_1, {}, ["img_emb_1.npy", "int32"]),
        (_truncated_text_0, {}, ["text_emb_0.npy", "truncated"]),
        (None, {"image_key": "url"}, ["metadata_0.parquet", "'url'", f"['{KEY}', 'caption', 'split']"]),
        (
            _key_in_shards_0_and_1,
            {"image_key": KEY},
            ["key 'synthetic0.jpg' appears", "img_emb_0.npy+", "img_emb_1.npy+"],
        ),
        (
            _metadata_rotated_by_one_row_0,
            {"image_key": KEY},
            ["img_emb_0.npy+", "share image key", "hold different image embeddings"],
        ),
        (
            _split_flips_within_image_0,
            {"image_key": KEY},
            ["img_emb_0.npy+", "image 'synthetic0.jpg' is in split", "at row 0", "at row 1"],
        ),
    ],
)
def test_clip_retrieval_errors_name_the_shard_and_what_differs(tmp_path, damage, options, expected):
    folder = _write_clip(tmp_path / "clip", _pairs())
    if damage is not None:
        damage(folder)
    with pytest.raises(DataError) as err:
        open_layout(folder, **options)
    for words in expected:
        assert words in str(err.value)


# --- Parquet / Arrow -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "suffix, fixed, stream, dtype",
    [
        (".parquet", False, False, np.float32),
        (".parquet", True, False, np.float16),
        (".arrow", True, False, np.float16),
        (".arrow", False, True, np.float32),
    ],
)
def test_tables_read_back_one_shard_per_file(tmp_path, suffix, fixed, stream, dtype):
    data = _pairs()
    folder = _write_tables(tmp_path / "t", data, suffix, dtype, fixed, stream)
    assert detect_layout(folder) == "table" and detect_layout(folder / f"part-0{suffix}") == "table"
    opened = open_layout(folder, image_key=KEY)
    assert [s.name for s in opened.shards] == [f"part-{i}{suffix}" for i in range(3)]
    for shard in opened.shards:
        assert shard.captions.dtype == dtype
        if suffix == ".parquet":  # decoded into memory, row groups joined into one array
            assert isinstance(shard.captions, np.ndarray)
        else:  # several record batches: one zero-copy view of the mapped file each
            assert isinstance(shard.captions, ChunkedRows) and len(shard.captions.blocks) > 1
            assert all(_arrow_backed(block) for block in shard.captions.blocks)
    _assert_same(opened.to_memory(), data, dtype)


def test_a_single_table_file_is_one_zero_copy_view(tmp_path):
    data = _pairs()
    path = tmp_path / "pairs.arrow"
    _write_ipc(path, _table(_rows(data), fixed=True), batch=10_000)
    opened = read_table(path)  # no key: every row an image
    shard = opened.shards[0]
    assert isinstance(shard.captions, np.ndarray) and _arrow_backed(shard.captions) and _arrow_backed(shard.images)
    assert np.array_equal(opened.to_memory().captions, data.captions)


def _ragged(rows):
    table = _table(rows)
    values = rows["text_emb"].ravel()
    offsets = np.arange(len(rows["text_emb"]) + 1, dtype=np.int32) * 12
    offsets[6:] += 1  # row 5 gets 13 values
    values = np.concatenate([values, [0.0]]).astype(np.float32)
    return table.set_column(0, "text_emb", pa.ListArray.from_arrays(pa.array(offsets), pa.array(values)))


def _nulls(rows):
    table = _table(rows)
    text = table.column("text_emb").combine_chunks().to_pylist()
    text[2] = text[4] = None
    return table.set_column(0, "text_emb", pa.array(text, type=pa.list_(pa.float32())))


def _integers(rows):
    return _table({**rows, "text_emb": rows["text_emb"].astype(np.int32)})


def _renamed(rows):
    return _table(rows, names=("t", "i"))


def _narrow(rows):
    return _table({**rows, "text_emb": rows["text_emb"][:, :10]})


@pytest.mark.parametrize(
    "suffix, damage, which, expected",
    [
        (".parquet", _ragged, 1, ["part-1.parquet", "row 5 has 13 values", "have 12"]),
        (".arrow", _nulls, 0, ["part-0.arrow", "null embeddings", "2 row(s): 2, 4"]),
        (".parquet", _integers, 2, ["part-2.parquet", "'text_emb'", "int32"]),
        (".arrow", _renamed, 0, ["part-0.arrow", "['text_emb', 'text_embedding']", "['t', 'i', 'image_path'"]),
        (".parquet", _narrow, 2, ["part-2.parquet has text dimension 10", "part-0.parquet has 12"]),
    ],
)
def test_table_errors_name_the_file_and_rows(tmp_path, suffix, damage, which, expected):
    data = _pairs()
    folder = _write_tables(tmp_path / "t", data, suffix)
    table = damage(_rows(data, *_spans(BOUNDS)[which]))
    path = folder / f"part-{which}{suffix}"
    pq.write_table(table, path) if suffix == ".parquet" else _write_ipc(path, table)
    with pytest.raises(DataError) as err:
        open_layout(folder)
    for words in expected:
        assert words in str(err.value)


def test_column_names_default_to_either_spelling_or_are_given(tmp_path):
    data = _pairs()
    folder = tmp_path / "t"
    folder.mkdir()
    rows = _rows(data)
    pq.write_table(_table(rows, names=("text_embedding", "image_embedding")), folder / "a.parquet")
    assert np.array_equal(open_layout(folder).to_memory().captions, data.captions)
    pq.write_table(_table(rows, names=("t", "i")), folder / "a.parquet")
    opened = open_layout(folder, text_column="t", image_column="i", image_key=KEY)
    _assert_same(opened.to_memory(), data)
    with pytest.raises(DataError, match=r"has no column 'emb'; columns found: \['t', 'i'"):
        open_layout(folder, text_column="emb", image_column="i")


def test_missing_pyarrow_says_which_extra_to_install(tmp_path, monkeypatch):
    folder = _write_tables(tmp_path / "t", _pairs(), ".arrow")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'stitch\[ondisk\]'"):
        read_table(folder)


# --- Hugging Face datasets -------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_datasets_folder_reads_zero_copy_one_shard_per_arrow_file(tmp_path, dtype):
    data = _pairs(n_images=700)  # 1050 rows a file: datasets writes record batches of 1000 rows
    folder = _write_hf(tmp_path / "hf", data, dtype, num_shards=2)
    assert detect_layout(folder) == "hf-datasets"
    before = pa.total_allocated_bytes()
    opened = open_layout(folder, image_key=KEY)
    assert pa.total_allocated_bytes() - before < data.captions.nbytes // 8  # the embeddings were not copied
    assert [s.name for s in opened.shards] == ["data-00000-of-00002.arrow", "data-00001-of-00002.arrow"]
    for shard in opened.shards:
        assert isinstance(shard.captions, ChunkedRows) and len(shard.captions.blocks) == 2
        assert shard.captions.dtype == dtype and all(_arrow_backed(b) for b in shard.captions.blocks)
    _assert_same(opened.to_memory(), data, dtype)


def test_datasets_key_split_across_arrow_files_is_named(tmp_path):
    folder = _write_hf(tmp_path / "hf", _pairs(), num_shards=3)  # 40 rows a file: image 13 has rows 39-41
    with pytest.raises(DataError) as err:
        open_layout(folder, image_key=KEY)
    for words in ("key 'synthetic13.jpg' appears", "data-00000-of-00003.arrow", "data-00001-of-00003.arrow"):
        assert words in str(err.value)


def test_dataset_dict_splits_become_the_image_split(tmp_path):
    import datasets

    data = _pairs()
    parts = {}
    for name in ("train", "dev"):
        part = data.split(name)
        parts[name] = datasets.Dataset.from_dict({k: v for k, v in _rows(part).items() if k != "split"})
    datasets.DatasetDict(parts).save_to_disk(str(tmp_path / "dd"))
    opened = open_layout(tmp_path / "dd", image_key=KEY)
    assert opened.split_names() == ["dev", "train"]
    assert opened.shards[0].name == "train/data-00000-of-00001.arrow"
    dev = opened.holdout()[1]
    expected = data.split("dev")
    assert np.array_equal(dev.captions, expected.captions) and np.array_equal(dev.images, expected.images)
    assert np.array_equal(dev.caption_image, expected.caption_image)
    only_dev = read_hf_datasets(tmp_path / "dd", image_key=KEY, splits=["dev"])
    assert only_dev.n_images == expected.n_images and only_dev.split_names() == ["dev"]
    with pytest.raises(DataError, match=r"no split\(s\) \['test'\]; the DatasetDict has \['train', 'dev'\]"):
        read_hf_datasets(tmp_path / "dd", splits=["test"])


# --- all layouts -----------------------------------------------------------------------------------------


def test_detect_layout_knows_none_of_the_others(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "pairs.npz").write_bytes(b"")
    assert detect_layout(tmp_path / "empty") is None and detect_layout(tmp_path / "pairs.npz") is None
    assert detect_layout(tmp_path / "absent") is None
    with pytest.raises(DataError, match="not a known embedding layout"):
        open_layout(tmp_path / "empty")


@pytest.mark.parametrize("layout", ["clip", "arrow", "hf"])
def test_conversion_to_stitch_shards_round_trips(tmp_path, layout):
    data = _pairs()
    writers = {
        "clip": lambda out: _write_clip(out, data),
        "arrow": lambda out: _write_tables(out, data, ".arrow", stream=True),
        "hf": lambda out: _write_hf(out, data),
    }
    source = writers[layout](tmp_path / "in")
    out = write_sharded(open_layout(source, image_key=KEY), tmp_path / "out", shard_rows=25, dtype="float32")
    _assert_same(open_sharded(out).to_memory(), data)


def test_chunked_rows_index_like_the_joined_array():
    rng = np.random.default_rng(0)
    blocks = [rng.standard_normal((n, 3)).astype(np.float16) for n in (4, 1, 6)]
    joined, rows = np.concatenate(blocks), ChunkedRows(blocks)
    assert rows.shape == (11, 3) and len(rows) == 11 and rows.dtype == np.float16
    for index in (np.array([10, 0, 4, 5, 4]), np.array([-1, -11]), slice(2, 9, 3), joined[:, 0] > 0, []):
        assert np.array_equal(rows[index], joined[index])
    assert np.array_equal(rows[7], joined[7]) and np.array_equal(np.asarray(rows, dtype=np.float32), joined)
    with pytest.raises(IndexError):
        rows[np.array([11])]


def test_flickr8k_in_every_layout_converts_to_the_same_holdout(tmp_path):
    if not FLICKR.exists():
        pytest.skip(f"{FLICKR} is absent: the shared data folder must sit beside the repo as ../shared")
    data = load_pairs(FLICKR)
    train, dev, _ = data.holdout()
    thirds = (0, data.n_images // 3, 2 * data.n_images // 3, data.n_images)
    folders = {
        "clip": _write_clip(tmp_path / "clip", data, bounds=thirds),
        "parquet": _write_tables(tmp_path / "parquet", data, ".parquet", fixed=True, bounds=thirds),
        "hf": _write_hf(tmp_path / "hf", data, num_shards=1),  # datasets cuts files by rows, not by image
    }
    for name, folder in folders.items():
        out = write_sharded(open_layout(folder, image_key=KEY), tmp_path / f"{name}.shards", dtype="float32")
        disk_train, disk_dev, how = open_sharded(out).holdout()
        assert how == "the file's split column"
        for field in ("captions", "images", "caption_image", "image_names", "image_split", "caption_texts"):
            assert np.array_equal(getattr(disk_dev, field), getattr(dev, field)), (name, field)
        assert (disk_train.n_captions, disk_train.n_images) == (train.n_captions, train.n_images)


@pytest.mark.parametrize(
    "damage, expected", [("delete", "missing (state.json lists it)"), ("cut", "truncated or corrupt")]
)
def test_datasets_folder_with_a_lost_or_cut_arrow_file_names_it(tmp_path, damage, expected):
    folder = _write_hf(tmp_path / "hf", _pairs(), num_shards=4)
    path = folder / "data-00002-of-00004.arrow"
    if damage == "delete":
        path.unlink()
    else:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataError, match="data-00002-of-00004.arrow") as err:
        open_layout(folder)
    assert expected in str(err.value)


@pytest.mark.slow
def test_flickr8k_round_trip_convert_train_evaluate_gives_the_npz_metrics(tmp_path):
    """Each layout -> `stitch convert` (float16, the default) -> train -> evaluate on dev: the metrics of the
    npz within 0.002, for a closed-form map and a learnt one streamed from the shards."""
    from stitch import api

    if not FLICKR.exists():
        pytest.skip(f"{FLICKR} is absent: the shared data folder must sit beside the repo as ../shared")
    data = load_pairs(FLICKR)
    thirds = (0, data.n_images // 3, 2 * data.n_images // 3, data.n_images)
    folders = {
        "clip": _write_clip(tmp_path / "clip", data, bounds=thirds),
        "parquet": _write_tables(tmp_path / "parquet", data, ".parquet", fixed=True, bounds=thirds),
        "hf": _write_hf(tmp_path / "hf", data, num_shards=1),
    }
    recipes = {
        "ridge": ["model.name=ridge"],
        "mlp": ["model.name=mlp", "model.hidden=256", "optim.epochs=1", "inference.bank_size=2000"],
    }

    def dev_metrics(source, recipe: str) -> tuple[float, float]:
        result = api.train(api.load(source), None, overrides=recipes[recipe], progress=False)
        report = api.evaluate(result, api.load(source), split="dev", rerank="none")[0].metrics
        return report["recall@1"], report["mrr"]

    expected = {recipe: dev_metrics(FLICKR, recipe) for recipe in recipes}
    for name, folder in folders.items():
        converted = api.convert(folder, tmp_path / f"{name}.shards", image_key=KEY)
        for recipe in recipes:
            got = dev_metrics(converted, recipe)
            assert np.allclose(got, expected[recipe], atol=0.002), (name, recipe, got, expected[recipe])

"""Fuzzing the folders stitch reads: a manifest or metadata file duplicated, reordered, retyped or pointed
outside its folder gives either one clear line (a DataError naming the file) or exactly the clean folder's
metrics — never a different number. The metric here is computed independently of stitch: a fixed linear
map, cosine against every image, the reciprocal rank of each caption's own image."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stitch.data import DataError, load_pairs, make_synthetic
from stitch.data.sharded import MANIFEST, ShardedPairs, write_sharded

KEY = "image_path"
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _pairs():
    return make_synthetic(n_images=30, captions_per_image=3, text_dim=8, image_dim=10, latent_dim=4, seed=3)


def metrics(folder: Path, **options) -> tuple[float, float, int]:
    """(MRR, R@1, gallery size) of a fixed map over what stitch read from ``folder``."""
    data = load_pairs(folder, **options)
    data = data.to_memory() if hasattr(data, "to_memory") else data
    w = np.random.default_rng(0).standard_normal((data.captions.shape[1], data.images.shape[1]))
    pred = data.captions.astype(np.float64) @ w
    pred /= np.linalg.norm(pred, axis=1, keepdims=True)
    gallery = data.images.astype(np.float64) / np.linalg.norm(data.images, axis=1, keepdims=True)
    sims = pred @ gallery.T
    own = sims[np.arange(len(pred)), data.caption_image]
    ranks = 1 + (sims > own[:, None]).sum(axis=1)
    return float(np.mean(1 / ranks)), float(np.mean(ranks == 1)), len(gallery)


def same_or_one_line(mutated: Path, clean: tuple, **options) -> None:
    try:
        got = metrics(mutated, **options)
    except DataError as err:
        message = str(err)
        assert "\n" not in message and message.strip(), f"not one line: {message!r}"
        assert str(mutated) in message or any(p.name in message for p in mutated.rglob("*")), message
        return
    assert got[2] == clean[2] and np.allclose(got[:2], clean[:2], rtol=0, atol=1e-9), (got, clean)


@pytest.fixture(scope="module")
def sharded_folder(tmp_path_factory) -> tuple[Path, tuple]:
    data = _pairs()
    folder = write_sharded(ShardedPairs.of(data), tmp_path_factory.mktemp("clean") / "pairs", shard_rows=24)
    return folder, metrics(folder)


def _junk() -> st.SearchStrategy:
    return st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-3, 10**6),
        st.floats(allow_nan=True),
        st.text(max_size=8),
        st.sampled_from(["../x", "/etc/passwd", "00000/../00001", "00001", "nul\x00", "captions"]),
        st.lists(st.integers(0, 3), max_size=3),
    )


MANIFEST_EDITS = st.one_of(
    st.tuples(st.just("duplicate_shard"), st.integers(0, 10)),
    st.tuples(st.just("reorder_shards"), st.randoms(use_true_random=False)),
    st.tuples(st.just("drop_shard"), st.integers(0, 10)),
    st.tuples(st.just("retype_shard"), st.integers(0, 10), st.sampled_from(["name", "captions", "images"]), _junk()),
    st.tuples(st.just("retype_top"), st.sampled_from(["version", "columns", "encoders", "shards", "format"]), _junk()),
    st.tuples(st.just("unknown_top"), st.text(min_size=1, max_size=6), _junk()),
    st.tuples(st.just("columns"), st.lists(st.sampled_from(["caption_ids", "image_names", "image_split", "x"]))),
    st.tuples(st.just("repeat_key"), st.sampled_from(["version", "shards", "columns"])),
)


def _edit_manifest(path: Path, edit: tuple) -> None:
    text = path.read_text()
    manifest = json.loads(text)
    shards, kind = manifest["shards"], edit[0]
    editable = isinstance(shards, list) and shards and all(isinstance(s, dict) for s in shards)
    if kind.endswith(("_shard", "_shards")) and not editable:  # an earlier edit retyped the list
        return
    if kind == "duplicate_shard":
        shards.insert(edit[1] % (len(shards) + 1), dict(shards[edit[1] % len(shards)]))
    elif kind == "reorder_shards":
        edit[1].shuffle(shards)
    elif kind == "drop_shard":
        shards.pop(edit[1] % len(shards))
    elif kind == "retype_shard":
        shards[edit[1] % len(shards)][edit[2]] = edit[3]
    elif kind in ("retype_top", "unknown_top"):
        manifest[edit[1]] = edit[2]
    elif kind == "columns":
        manifest["columns"] = edit[1]
    elif kind == "repeat_key":
        body = json.dumps(manifest)
        value = json.dumps(manifest[edit[1]])
        path.write_text(body[:-1] + f', "{edit[1]}": {value}' + "}")  # the same key again, same value
        return
    path.write_text(json.dumps(manifest))


@FUZZ
@given(edits=st.lists(MANIFEST_EDITS, min_size=1, max_size=3))
def test_a_mutated_manifest_is_refused_in_one_line_or_scores_the_same(sharded_folder, edits):
    clean_folder, clean = sharded_folder
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "pairs"
        shutil.copytree(clean_folder, folder)
        for edit in edits:
            _edit_manifest(folder / MANIFEST, edit)
        same_or_one_line(folder, clean)


# -- clip-retrieval metadata ---------------------------------------------------------------------------------


def _write_clip(folder: Path, data) -> Path:
    for sub in ("img_emb", "text_emb", "metadata"):
        (folder / sub).mkdir(parents=True)
    for i, (lo, hi) in enumerate([(0, 12), (12, 30)]):
        rows = np.flatnonzero((data.caption_image >= lo) & (data.caption_image < hi))
        owner = data.caption_image[rows]
        np.save(folder / "img_emb" / f"img_emb_{i}.npy", data.images[owner])
        np.save(folder / "text_emb" / f"text_emb_{i}.npy", data.captions[rows])
        meta = {KEY: data.image_names[owner].tolist(), "caption": [f"c{r}" for r in rows]}
        meta["split"] = data.image_split[owner].tolist()
        pq.write_table(pa.table(meta), folder / "metadata" / f"metadata_{i}.parquet")
    return folder


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory) -> tuple[Path, tuple]:
    folder = _write_clip(tmp_path_factory.mktemp("clip") / "clip", _pairs())
    return folder, metrics(folder, image_key=KEY)


METADATA_EDITS = st.one_of(
    st.tuples(st.just("rotate"), st.integers(0, 1), st.integers(1, 5)),
    st.tuples(st.just("swap"), st.integers(0, 1), st.integers(0, 40), st.integers(0, 40)),
    st.tuples(st.just("duplicate_row"), st.integers(0, 1), st.integers(0, 40)),
    st.tuples(st.just("drop_row"), st.integers(0, 1), st.integers(0, 40)),
    st.tuples(st.just("retype_key"), st.integers(0, 1), st.sampled_from(["int", "null", "float"])),
    st.tuples(st.just("reorder_columns"), st.integers(0, 1)),
    st.tuples(st.just("rename_file"), st.integers(0, 1), st.sampled_from(["img_emb_01.npy", "img_emb_1.npy.bak"])),
    st.tuples(st.just("copy_key_from_other_shard"), st.integers(0, 40)),
)


def _edit_metadata(folder: Path, edit: tuple) -> None:
    kind, shard = edit[0], edit[1]
    path = folder / "metadata" / f"metadata_{shard % 2}.parquet"
    columns = pq.read_table(path).to_pydict()
    n = len(columns[KEY])
    if kind == "rotate":
        columns[KEY] = columns[KEY][edit[2] :] + columns[KEY][: edit[2]]
    elif kind == "swap":
        i, j = edit[2] % n, edit[3] % n
        columns[KEY][i], columns[KEY][j] = columns[KEY][j], columns[KEY][i]
    elif kind == "duplicate_row":
        i = edit[2] % n
        columns = {k: v[: i + 1] + v[i:] for k, v in columns.items()}
    elif kind == "drop_row":
        i = edit[2] % n
        columns = {k: v[:i] + v[i + 1 :] for k, v in columns.items()}
    elif kind == "retype_key":
        columns[KEY] = {"int": list(range(n)), "null": [None] * n, "float": [float(i) for i in range(n)]}[edit[2]]
    elif kind == "reorder_columns":
        columns = dict(reversed(list(columns.items())))
    elif kind == "rename_file":
        source = folder / "img_emb" / f"img_emb_{shard % 2}.npy"
        if source.exists():
            shutil.copy(source, folder / "img_emb" / edit[2])
        return
    elif kind == "copy_key_from_other_shard":
        other = pq.read_table(folder / "metadata" / f"metadata_{1 - shard % 2}.parquet").to_pydict()[KEY]
        columns[KEY][edit[1] % n] = other[0]
    try:
        table = pa.table(columns)
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # a mix of types a Parquet column cannot hold
        return
    pq.write_table(table, path)


@FUZZ
@given(edits=st.lists(METADATA_EDITS, min_size=1, max_size=3))
def test_mutated_clip_retrieval_metadata_is_refused_in_one_line_or_scores_the_same(clip_folder, edits):
    clean_folder, clean = clip_folder
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "clip"
        shutil.copytree(clean_folder, folder)
        for edit in edits:
            _edit_metadata(folder, edit)
        same_or_one_line(folder, clean, image_key=KEY)


def test_a_manifest_that_leaves_out_a_shard_the_folder_holds_is_refused(sharded_folder, tmp_path):
    """Found by the fuzz above: dropping a shard's entry dropped its pairs (30 images scored as 22)."""
    folder = shutil.copytree(sharded_folder[0], tmp_path / "pairs")
    _edit_manifest(folder / MANIFEST, ("drop_shard", 0))
    with pytest.raises(DataError, match=r"does not list shard files the folder holds \(00000\.caption_image\.npy"):
        load_pairs(folder)


def test_a_key_column_naming_captions_is_refused(clip_folder, tmp_path):
    """Found by the fuzz above: a key unique per row made each caption its own image (30 images scored as 54)."""
    folder = shutil.copytree(clip_folder[0], tmp_path / "clip")
    _edit_metadata(folder, ("retype_key", 0, "int"))
    with pytest.raises(DataError, match=r"rows 0 and 1 hold the same image embedding under keys '0' and '1'"):
        load_pairs(folder, image_key=KEY)

"""Texts stitch holds and writes take memory and disk in proportion to their total size: one very long caption
among many rows costs its own length, not rows x its length; the offset files are checked when read back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stitch.data import DataError, make_synthetic
from stitch.data.layouts import open_layout
from stitch.data.sharded import MANIFEST, ShardedPairs, open_sharded, write_sharded
from stitch.data.texts import TEXT, OffsetTexts, as_texts, write_texts

KEY = "image_path"


def test_offset_texts_round_trip_unicode_and_empty_rows(tmp_path):
    values = ["", "a dog", "café — naïve ☕", "x" * 5000, ""]
    write_texts(tmp_path, "col", values)
    back = OffsetTexts.open(tmp_path, "col", len(values))
    assert back[np.arange(len(values))].tolist() == values
    assert back[np.array([3, 1])].tolist() == [values[3], values[1]]
    assert np.asarray(back).tolist() == values
    utf8 = np.load(tmp_path / "col.utf8.npy")
    assert utf8.nbytes == sum(len(v.encode()) for v in values)  # the bytes of the texts, nothing padded


def test_decreasing_offsets_are_named_with_the_file_and_row(tmp_path):
    write_texts(tmp_path, "col", ["aa", "bb", "cc"])
    offsets = np.load(tmp_path / "col.offsets.npy")
    offsets[2] = 1  # row 1 would end before it starts
    np.save(tmp_path / "col.offsets.npy", offsets)
    with pytest.raises(DataError, match=r"col\.offsets\.npy: offsets must run .* decreasing at 1 row\(s\): 1"):
        OffsetTexts.open(tmp_path, "col", 3)


def test_offsets_past_the_bytes_and_wrong_counts_are_refused(tmp_path):
    write_texts(tmp_path, "col", ["aa", "bb"])
    with pytest.raises(DataError, match=r"expected 4 int64 offsets"):
        OffsetTexts.open(tmp_path, "col", 3)
    np.save(tmp_path / "col.utf8.npy", np.frombuffer(b"aab", np.uint8))  # truncated by one byte
    with pytest.raises(DataError, match=r"without decreasing \(they run 0 to 4\)"):
        OffsetTexts.open(tmp_path, "col", 2)


def test_a_row_that_is_not_utf8_is_named(tmp_path):
    write_texts(tmp_path, "col", ["ok", "no"])
    np.save(tmp_path / "col.utf8.npy", np.frombuffer(b"ok\xff\xfe", np.uint8))
    texts = OffsetTexts.open(tmp_path, "col", 2)
    assert texts[np.array([0])].tolist() == ["ok"]
    with pytest.raises(DataError, match=r"col\.offsets\.npy: row 1 is not valid UTF-8"):
        texts[np.array([1])]


def test_texts_held_in_memory_are_variable_width():
    long = "w" * 100_000
    held = as_texts([long] + ["short"] * 999)
    assert held.dtype == TEXT and held[0] == long
    fixed_width_bytes = 1000 * len(long) * 4
    assert held.nbytes < fixed_width_bytes / 1000  # StringDType keeps 16 bytes a row plus the long text apart


def _long_caption_folder(folder: Path, length: int) -> tuple[Path, str]:
    data = make_synthetic(n_images=60, captions_per_image=3, text_dim=8, image_dim=10, latent_dim=4, seed=0)
    for sub in ("img_emb", "text_emb", "metadata"):
        (folder / sub).mkdir(parents=True)
    owner = data.caption_image
    captions = [f"caption {i}" for i in range(data.n_captions)]
    long = "".join(chr(0x61 + (i % 26)) for i in range(length))
    captions[7] = long
    np.save(folder / "img_emb" / "img_emb_0.npy", data.images[owner])
    np.save(folder / "text_emb" / "text_emb_0.npy", data.captions)
    meta = {KEY: data.image_names[owner].tolist(), "caption": captions, "split": data.image_split[owner].tolist()}
    pq.write_table(pa.table(meta), folder / "metadata" / "metadata_0.parquet")
    return folder, long


def test_a_very_long_caption_converts_to_files_of_its_own_size(tmp_path):
    """Fixed-width strings would write rows x 4 x the longest caption (180 x 800 kB = 144 MB here)."""
    folder, long = _long_caption_folder(tmp_path / "clip", 200_000)
    opened = open_layout(folder, image_key=KEY)
    out = write_sharded(opened, tmp_path / "out")
    written = sum(p.stat().st_size for p in out.iterdir() if "caption_texts" in p.name)
    assert written < 200_000 + 180 * 20 + 1024  # the texts' bytes, offsets and two headers
    back = open_sharded(out).to_memory()
    assert back.caption_texts[7] == long and back.caption_texts.dtype == TEXT
    assert back.caption_texts[8] == "caption 8"


def test_a_version_1_folder_with_numpy_string_columns_still_reads(tmp_path):
    data = make_synthetic(n_images=20, captions_per_image=2, text_dim=6, image_dim=8, latent_dim=3, seed=1)
    out = write_sharded(ShardedPairs.of(data), tmp_path / "out")
    manifest = json.loads((out / MANIFEST).read_text())
    for entry in manifest["shards"]:
        for column in manifest["columns"]:
            stem = f"{entry['name']}.{column}"
            values = OffsetTexts.open(
                out,
                stem,
                len(np.load(out / f"{entry['name']}.caption_image.npy"))
                if column in ("caption_ids", "caption_texts")
                else entry["images"],
            )
            np.save(out / f"{stem}.npy", np.array(np.asarray(values).tolist(), dtype=str))
            (out / f"{stem}.offsets.npy").unlink()
            (out / f"{stem}.utf8.npy").unlink()
    manifest["version"] = 1
    (out / MANIFEST).write_text(json.dumps(manifest))
    back = open_sharded(out).to_memory()
    assert back.caption_ids.tolist() == data.caption_ids.tolist()
    assert back.image_split.tolist() == data.image_split.tolist()

"""Every folder stitch reads is untrusted input (issue 24): a tampered layout is refused in one line naming the
file and the entry — never a silently wrong metric, a read outside the folder, a hang, or a deleted file."""

from __future__ import annotations

import json
import os
import threading

import numpy as np
import pytest

from stitch.data import DataError, make_synthetic
from stitch.data.sharded import MANIFEST, ShardedPairs, open_sharded, write_sharded


def _pairs(**kw):
    shape = {"n_images": 60, "captions_per_image": 2, "text_dim": 8, "image_dim": 6, "latent_dim": 4}
    return make_synthetic(**{**shape, **kw})


@pytest.fixture
def sharded(tmp_path):
    """A stitch sharded folder of three shards (40 captions each)."""
    return write_sharded(ShardedPairs.of(_pairs()), tmp_path / "s", shard_rows=40, dtype="float32")


def _edit_manifest(folder, change) -> None:
    manifest = json.loads((folder / MANIFEST).read_text())
    change(manifest)
    (folder / MANIFEST).write_text(json.dumps(manifest))


def _fifo(path) -> None:
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this platform")
    path.unlink(missing_ok=True)
    os.mkfifo(path)


def _within(seconds: float, call):
    """``call()``'s exception, failing the test if it blocks (a FIFO opened for reading waits for a writer)."""
    caught: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as err:  # noqa: BLE001 - handed to the test
            caught.append(err)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        pytest.fail(f"blocked for more than {seconds} s")
    return caught[0] if caught else None


# -- 1. duplicates that would silently change the metrics --------------------------------------------------


MANIFEST_EDITS = {
    "shard listed twice": (lambda m: m["shards"].append(dict(m["shards"][0])), r"shard '00000' is listed twice"),
    "rows as a string": (lambda m: m["shards"][0].update(captions="40"), r"shard 00000 captions must be a whole"),
    "columns a number": (lambda m: m.update(columns=5), r"columns must be a list"),
    "unknown column": (lambda m: m.update(columns=["caption_ids", "secret"]), r"columns must be a list"),
    "encoders a number": (lambda m: m.update(encoders=5), r"encoders must be a JSON object"),
}


@pytest.mark.parametrize("case", sorted(MANIFEST_EDITS))
def test_a_tampered_manifest_is_refused_naming_it(sharded, case):
    change, message = MANIFEST_EDITS[case]
    _edit_manifest(sharded, change)
    with pytest.raises(DataError, match=message) as err:
        open_sharded(sharded)
    assert MANIFEST in str(err.value) and "\n" not in str(err.value)


def test_a_manifest_repeating_a_json_key_is_refused(sharded):
    text = (sharded / MANIFEST).read_text()
    (sharded / MANIFEST).write_text(text.replace('"version": 1', '"version": 1, "version": 1', 1))
    with pytest.raises(DataError, match=rf"{MANIFEST}: key 'version' appears twice"):
        open_sharded(sharded)


# -- 2. paths stay inside the folder; only regular files are opened ----------------------------------------


def test_a_shard_symlinked_out_of_the_folder_is_refused(sharded, tmp_path):
    outside = tmp_path / "elsewhere.npy"
    np.save(outside, np.zeros((40, 8), np.float32))
    (sharded / "00001.captions.npy").unlink()
    (sharded / "00001.captions.npy").symlink_to(outside)
    with pytest.raises(DataError, match=r"entry '00001.captions.npy' resolves outside"):
        open_sharded(sharded)


def test_a_fifo_in_place_of_a_shard_is_refused_not_waited_on(sharded):
    _fifo(sharded / "00001.images.npy")
    err = _within(10, lambda: open_sharded(sharded))
    assert isinstance(err, DataError) and "FIFO" in str(err) and "00001.images.npy" in str(err)


def test_a_fifo_in_place_of_the_manifest_is_refused_not_waited_on(sharded):
    _fifo(sharded / MANIFEST)
    err = _within(10, lambda: open_sharded(sharded))
    assert isinstance(err, DataError) and "FIFO" in str(err) and MANIFEST in str(err)


# -- 3. --force never deletes what stitch did not write ----------------------------------------------------


def test_force_refuses_a_folder_holding_a_file_stitch_did_not_write(sharded):
    (sharded / "thesis.tex").write_text("four years of work")
    with pytest.raises(FileExistsError, match=r"holds files stitch did not write \(thesis.tex\); give an empty"):
        write_sharded(ShardedPairs.of(_pairs()), sharded, force=True)
    assert (sharded / "thesis.tex").read_text() == "four years of work"
    assert open_sharded(sharded).n_captions == 120  # the old output is untouched too


def test_force_refuses_a_folder_whose_only_stitch_file_is_a_manifest_name(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / MANIFEST).write_text("{}")
    (folder / "thesis.tex").write_text("keep me")
    with pytest.raises(FileExistsError, match="does not validate"):
        write_sharded(ShardedPairs.of(_pairs()), folder, force=True)
    assert (folder / "thesis.tex").read_text() == "keep me"


def test_force_still_replaces_its_own_folder_and_leaves_nothing_behind(sharded, tmp_path):
    smaller = _pairs(n_images=10)
    write_sharded(ShardedPairs.of(smaller), sharded, force=True)
    assert open_sharded(sharded).n_captions == 20
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]

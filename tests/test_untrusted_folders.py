"""Every folder stitch reads is untrusted input: a tampered layout is refused in one line naming the
file and the entry — never a silently wrong metric, a read outside the folder, a hang, or a deleted file."""

from __future__ import annotations

import json
import os
import threading

import numpy as np
import pytest

from stitch.data import DataError, make_synthetic
from stitch.data.sharded import MANIFEST, VERSION, ShardedPairs, open_sharded, write_sharded


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
    (sharded / MANIFEST).write_text(text.replace(f'"version": {VERSION}', f'"version": {VERSION}, "version": 1', 1))
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


# -- layouts stitch reads but did not write ------------------------------------------------------------------


def _clip_folder(folder, data):
    """A clip-retrieval folder (no metadata) of two shards, one image-caption pair a row."""
    for sub in ("img_emb", "text_emb"):
        (folder / sub).mkdir(parents=True)
    owner = data.caption_image
    for i, rows in enumerate(np.array_split(np.arange(data.n_captions), 2)):
        np.save(folder / "img_emb" / f"img_emb_{i}.npy", data.images[owner[rows]])
        np.save(folder / "text_emb" / f"text_emb_{i}.npy", data.captions[rows])
    return folder


def test_two_spellings_of_one_clip_retrieval_shard_number_are_refused_naming_both(tmp_path):
    from stitch.data.layouts import open_layout

    folder = _clip_folder(tmp_path / "clip", _pairs())
    assert open_layout(folder).n_captions == 120
    np.save(folder / "img_emb" / "img_emb_01.npy", np.load(folder / "img_emb" / "img_emb_1.npy"))
    with pytest.raises(DataError, match=r"img_emb_01.npy and img_emb_1.npy are both shard 1"):
        open_layout(folder)


def test_a_fifo_in_place_of_a_clip_retrieval_shard_is_refused_not_waited_on(tmp_path):
    from stitch.data.layouts import open_layout

    folder = _clip_folder(tmp_path / "clip", _pairs())
    _fifo(folder / "text_emb" / "text_emb_1.npy")
    err = _within(10, lambda: open_layout(folder))
    assert isinstance(err, DataError) and "FIFO" in str(err) and "text_emb_1.npy" in str(err)


@pytest.fixture
def hf_folder(tmp_path):
    """A datasets save_to_disk folder of two Arrow files, written with pyarrow alone (as ``datasets`` lays it out)."""
    pa = pytest.importorskip("pyarrow")
    import pyarrow.ipc  # noqa: F401

    data = _pairs()
    folder = tmp_path / "hf"
    folder.mkdir()
    owner = data.caption_image
    names = []
    for i, rows in enumerate(np.array_split(np.arange(data.n_captions), 2)):
        table = pa.table(
            {
                "text_emb": [list(map(float, v)) for v in data.captions[rows]],
                "img_emb": [list(map(float, v)) for v in data.images[owner[rows]]],
            }
        )
        names.append(f"data-0000{i}-of-00002.arrow")
        with pa.OSFile(str(folder / names[-1]), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
    state = {"_data_files": [{"filename": n} for n in names], "_fingerprint": "x", "_split": None}
    (folder / "state.json").write_text(json.dumps(state))
    return folder


def _edit_state(folder, change) -> None:
    state = json.loads((folder / "state.json").read_text())
    change(state["_data_files"])
    (folder / "state.json").write_text(json.dumps(state))


def _sibling(folder) -> str:
    sibling = folder.parent / "sibling"
    sibling.mkdir()
    (sibling / "data-00000-of-00001.arrow").write_bytes((folder / "data-00000-of-00002.arrow").read_bytes())
    return "../sibling/data-00000-of-00001.arrow"


STATE_EDITS = {
    "one file twice": (lambda f, files: files.append(dict(files[0])), r"'data-00000-of-00002.arrow' is listed twice"),
    "a sibling's file": (lambda f, files: files.append({"filename": _sibling(f)}), r"resolves outside"),
    "an absolute path": (lambda f, files: files.append({"filename": "/etc/passwd"}), r"'/etc/passwd' resolves outside"),
    "a number": (lambda f, files: files.append({"filename": 5}), r"entry 5 is not a file name"),
}


@pytest.mark.parametrize("case", sorted(STATE_EDITS))
def test_a_tampered_datasets_state_json_is_refused_naming_the_entry(hf_folder, case):
    from stitch.data.layouts import open_layout

    assert open_layout(hf_folder).n_captions == 120
    change, message = STATE_EDITS[case]
    _edit_state(hf_folder, lambda files: change(hf_folder, files))
    with pytest.raises(DataError, match=message) as err:
        open_layout(hf_folder)
    assert "state.json" in str(err.value)


def test_a_datasets_file_symlinked_out_of_the_folder_is_refused(hf_folder, tmp_path):
    from stitch.data.layouts import open_layout

    moved = tmp_path / "moved.arrow"
    (hf_folder / "data-00001-of-00002.arrow").rename(moved)
    (hf_folder / "data-00001-of-00002.arrow").symlink_to(moved)
    with pytest.raises(DataError, match=r"state.json: entry 'data-00001-of-00002.arrow' resolves outside"):
        open_layout(hf_folder)


def test_a_dataset_dict_listing_a_split_twice_is_refused(hf_folder, tmp_path):
    from stitch.data.layouts import open_layout

    root = tmp_path / "dd"
    root.mkdir()
    hf_folder.rename(root / "train")
    (root / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "train"]}))
    with pytest.raises(DataError, match=r"dataset_dict.json: split 'train' is listed twice"):
        open_layout(root)
    (root / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "../hf"]}))
    with pytest.raises(DataError, match=r"dataset_dict.json: entry '../hf' resolves outside"):
        open_layout(root)


def test_a_query_line_repeating_a_key_is_refused_naming_file_line_and_key(tmp_path):
    from stitch.data.query_items import read_query_items, write_query_items

    data = make_synthetic(n_images=20, captions_per_image=2, text_dim=8, image_dim=8, latent_dim=4, shared_fraction=0.3)
    folder = write_query_items(data, tmp_path / "qi")
    lines = (folder / "queries.jsonl").read_text().splitlines()
    first = json.loads(lines[2])
    other = json.loads(lines[0])["item_ids"]
    lines[2] = lines[2][:-1] + ', "item_ids": ' + json.dumps(other) + "}"
    assert json.loads(lines[2])["item_ids"] == other != first["item_ids"]  # json alone keeps the last silently
    (folder / "queries.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"queries.jsonl: line 3: key 'item_ids' appears twice"):
        read_query_items(folder)


def test_a_fifo_in_place_of_query_embeddings_is_refused_not_waited_on(tmp_path):
    from stitch.data.query_items import read_query_items, write_query_items

    data = make_synthetic(n_images=20, captions_per_image=2, text_dim=8, image_dim=8, latent_dim=4, shared_fraction=0.3)
    folder = write_query_items(data, tmp_path / "qi")
    _fifo(folder / "query_embeddings.npy")
    err = _within(10, lambda: read_query_items(folder))
    assert isinstance(err, DataError) and "FIFO" in str(err) and "query_embeddings.npy" in str(err)


# -- 5. tuning spaces are validated whole, before any trial -----------------------------------------------

LR = {"type": "float", "low": 1.0e-4, "high": 3.0e-3, "log": True}
SPACE_EDITS = {
    "typo logg": ({"params": {"optim.lr": {**LR, "logg": True}}}, r"param optim.lr: unknown key\(s\) \['logg'\]"),
    "typo stepp": (
        {"params": {"model.hidden": {"type": "int", "low": 32, "high": 64, "stepp": 5}}},
        r"param model.hidden: unknown key\(s\) \['stepp'\]",
    ),
    "baseline a string": ({"baseline": "false"}, r"baseline must be true or false .* got 'false'"),
    "log a string": ({"params": {"optim.lr": {**LR, "log": "false"}}}, r"param optim.lr: log must be true or false"),
    "low above high": ({"params": {"optim.lr": {**LR, "low": 0.1, "high": 0.01}}}, r"low 0.1 is above high 0.01"),
    "log with low 0": ({"params": {"optim.lr": {**LR, "low": 0.0}}}, r"a log scale needs low > 0, got 0.0"),
    "step 0": (
        {"params": {"model.hidden": {"type": "int", "low": 32, "high": 64, "step": 0}}},
        r"param model.hidden: step must be a whole number >= 1, got 0",
    ),
    "int bounds not whole": (
        {"params": {"model.hidden": {"type": "int", "low": 32.5, "high": 64}}},
        r"param model.hidden: low must be a finite whole number, got 32.5",
    ),
    "unknown objective": ({"objective": "mmr"}, r"objective must be one of \[.*'mrr'.*\], got 'mmr'"),
    "lower-is-better objective": ({"objective": "median_rank"}, r"'median_rank' is lower-is-better"),
    "params a list": ({"params": [{"optim.lr": LR}]}, r"params must be a mapping of config key -> spec, got list"),
    "startup_trials a string": ({"startup_trials": "10"}, r"startup_trials must be a whole number >= 1, got '10'"),
    "choices a string": (
        {"params": {"model.name": {"type": "categorical", "choices": "mlp"}}},
        r"param model.name: choices must be a list",
    ),
    "a list, not a mapping": ([{"params": {}}], r"a search space is a mapping of settings, got list"),
}


@pytest.mark.parametrize("case", sorted(SPACE_EDITS))
def test_a_bad_tuning_space_is_refused_in_one_line_before_any_trial(tmp_path, case):
    import yaml

    from stitch.apps.tuning import load_space
    from stitch.training import ConfigError

    edit, message = SPACE_EDITS[case]
    body = edit if isinstance(edit, list) else {"params": {"optim.lr": LR}, **edit}
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(body))
    with pytest.raises(ConfigError, match=message) as err:
        load_space(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_a_good_tuning_space_still_loads_with_yaml_1_1_exponents(tmp_path):
    from stitch.apps.tuning import load_space

    path = tmp_path / "space.yaml"
    path.write_text("baseline: false\nparams:\n  optim.lr: {type: float, low: 1e-4, high: 3e-3, log: true}\n")
    space = load_space(path)
    assert space.baseline is False and space.params["optim.lr"]["low"] == "1e-4"  # YAML 1.1: a string


def test_convert_force_in_the_cli_keeps_a_users_file_and_says_so_in_one_line(tmp_path, capsys):
    from conftest import write_flickr_like
    from stitch.apps.cli import main

    source = write_flickr_like(tmp_path / "data.npz", _pairs())
    target = tmp_path / "DIR"
    target.mkdir()
    (target / MANIFEST).write_text("{}")
    (target / "thesis.tex").write_text("keep me")
    assert main(["convert", str(source), str(target), "--force"]) != 0
    err = capsys.readouterr().err.strip()
    assert "does not validate" in err and "Traceback" not in err and len(err.splitlines()) == 1
    assert (target / "thesis.tex").read_text() == "keep me"
    (target / MANIFEST).unlink()
    assert main(["convert", str(source), str(target / "out")]) == 0
    for name in (target / "out").iterdir():  # a real stitch folder, then a user's file put into it
        name.rename(target / name.name)
    (target / "out").rmdir()
    assert main(["convert", str(source), str(target), "--force"]) != 0
    assert "stitch did not write (thesis.tex)" in capsys.readouterr().err
    assert (target / "thesis.tex").read_text() == "keep me"

"""A saved index and its rescorer are untrusted input: NaN/Inf vectors, index.json values a build
would not write, and rescorer state beyond the rescorer's own keys are refused in one line naming the file."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stitch.retrieval.hubness import build_rescorer
from stitch.retrieval.index import IndexFileError, build_index, load_index
from stitch.retrieval.search import RERANK_FILE, RERANK_META, load_rescorer, save_rescorer


def _gallery(n: int = 200, d: int = 8) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, d)).astype(np.float32)


def test_a_nan_in_saved_exact_vectors_is_refused_naming_file_and_row(tmp_path):
    from safetensors.numpy import load_file, save_file

    folder = build_index(_gallery(), "exact").save(tmp_path / "i")
    vectors = load_file(str(folder / "vectors.safetensors"))["vectors"]
    vectors[37, 2] = np.nan
    save_file({"vectors": vectors}, str(folder / "vectors.safetensors"))
    with pytest.raises(IndexFileError, match=r"vectors.safetensors: vector row 37 holds NaN/Inf"):
        load_index(folder)


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_a_nan_in_a_saved_faiss_index_is_refused(tmp_path, kind):
    faiss = pytest.importorskip("faiss")
    gallery = _gallery()
    folder = build_index(gallery, kind).save(tmp_path / "i")
    tampered = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    tampered[11] = np.inf
    index = faiss.IndexFlatIP(8) if kind == "flat" else faiss.IndexHNSWFlat(8, 32, faiss.METRIC_INNER_PRODUCT)
    index.add(tampered)
    faiss.write_index(index, str(folder / "index.faiss"))
    with pytest.raises(IndexFileError, match=r"index.faiss: vector row 11 holds NaN/Inf"):
        load_index(folder)


def test_a_clean_ivf_index_still_loads_and_searches_as_saved(tmp_path):
    pytest.importorskip("faiss")
    gallery = _gallery(2000)
    built = build_index(gallery, "ivf", nlist=8)
    again = load_index(built.save(tmp_path / "i"))
    assert np.array_equal(built.search(gallery[:20], 5)[1], again.search(gallery[:20], 5)[1])


INDEX_JSON_EDITS = {
    "names a string": (lambda m: m.update(names="abc"), r"names must be a non-empty list of strings, got 'abc'"),
    "names of numbers": (lambda m: m.update(names=list(range(200))), r"names must be a non-empty list of strings"),
    "dim a string": (lambda m: m.update(dim="8"), r"dim must be a whole number >= 1, got '8'"),
    "unknown kind": (lambda m: m.update(kind="lsh"), r"kind must be one of"),
    "unknown top-level key": (lambda m: m.update(owner="me"), r"unknown key\(s\) \['owner'\]"),
    "missing params": (lambda m: m.pop("params"), r"missing key\(s\) \['params'\]"),
    "params a list": (lambda m: m.update(params=[1]), r"params and meta must be JSON objects"),
    "unknown parameter": (lambda m: m.update(params={"nprobe": 3}), r"unknown parameter\(s\) \['nprobe'\] for exact"),
}


@pytest.mark.parametrize("case", sorted(INDEX_JSON_EDITS))
def test_index_json_is_checked_like_a_build(tmp_path, case):
    folder = build_index(_gallery(), "exact").save(tmp_path / "i")
    meta = json.loads((folder / "index.json").read_text())
    change, message = INDEX_JSON_EDITS[case]
    change(meta)
    (folder / "index.json").write_text(json.dumps(meta))
    with pytest.raises(IndexFileError, match=message) as err:
        load_index(folder)
    assert "index.json" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("value", [0, 1 << 21, 2.5, "32", True])
def test_faiss_parameters_read_back_use_the_build_bounds(tmp_path, value):
    pytest.importorskip("faiss")
    folder = build_index(_gallery(), "hnsw").save(tmp_path / "i")
    meta = json.loads((folder / "index.json").read_text())
    meta["params"]["ef_search"] = value
    (folder / "index.json").write_text(json.dumps(meta))
    with pytest.raises(IndexFileError, match=r"index.json: index parameter ef_search must be"):
        load_index(folder)


def test_index_json_repeating_a_key_is_refused(tmp_path):
    folder = build_index(_gallery(), "exact").save(tmp_path / "i")
    text = (folder / "index.json").read_text()
    (folder / "index.json").write_text(text.replace('"dim": 8', '"dim": 8, "dim": 8', 1))
    with pytest.raises(IndexFileError, match=r"index.json: key 'dim' appears twice"):
        load_index(folder)


# -- the rescorer saved beside an index ---------------------------------------------------------------------


def _fitted(name: str, **params):
    gen = torch.Generator().manual_seed(0)
    bank = F.normalize(torch.randn(50, 8, generator=gen), dim=1)
    gallery = F.normalize(torch.randn(30, 8, generator=gen), dim=1)
    return build_rescorer(name, **params).fit(bank, gallery), gallery


@pytest.mark.parametrize("name", ["csls", "is", "qbnorm", "dbnorm", "center", "whiten"])
def test_a_saved_rescorer_restores_to_the_same_scores(tmp_path, name):
    rescorer, gallery = _fitted(name)
    save_rescorer(rescorer, tmp_path)
    back = load_rescorer(tmp_path, n=30)
    queries, scores = F.normalize(torch.randn(4, 8), dim=1), torch.rand(4, 30)
    assert torch.equal(back.queries(queries), rescorer.queries(queries))
    assert torch.equal(back.gallery(gallery), rescorer.gallery(gallery))
    assert torch.equal(back.adjust(scores), rescorer.adjust(scores))


def _tamper_state(folder, change) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(str(folder / RERANK_FILE))
    change(state)
    save_file(state, str(folder / RERANK_FILE))


STATE_EDITS = {
    "scale set from the file": (lambda s: s.update(scale=torch.tensor(-1.0)), r"unknown key\(s\) \['scale'\]"),
    "a statistic missing": (lambda s: s.pop("log_norm"), r"lacks \['log_norm'\]"),
    "NaN offset": (lambda s: s["offset"].__setitem__(7, float("nan")), r"key 'offset' holds NaN/Inf \(row 7\)"),
    "wrong length": (lambda s: s.update(offset=s["offset"][:20]), r"key 'offset' has shape \(20,\); expected 30"),
    "wrong dtype": (lambda s: s.update(offset=s["offset"].long()), r"key 'offset' must be a 1-d float tensor"),
}


@pytest.mark.parametrize("case", sorted(STATE_EDITS))
def test_tampered_rescorer_state_is_refused_naming_file_and_key(tmp_path, case):
    save_rescorer(_fitted("is")[0], tmp_path)
    change, message = STATE_EDITS[case]
    _tamper_state(tmp_path, change)
    with pytest.raises(IndexFileError, match=message) as err:
        load_rescorer(tmp_path, n=30)
    assert RERANK_FILE in str(err.value) and "\n" not in str(err.value)


META_EDITS = {
    "negative beta": ({"name": "is", "params": {"beta": -1.0}}, r"beta must be a number in"),
    "scale as a parameter": ({"name": "is", "params": {"scale": -1.0}}, r"rerank.json is corrupt"),
    "extra key": ({"name": "is", "params": {}, "scale": -1}, r"rerank.json is corrupt: expected"),
    "params a list": ({"name": "is", "params": [20]}, r"rerank.json is corrupt: expected"),
}


@pytest.mark.parametrize("case", sorted(META_EDITS))
def test_tampered_rescorer_settings_are_refused(tmp_path, case):
    save_rescorer(_fitted("is")[0], tmp_path)
    meta, message = META_EDITS[case]
    (tmp_path / RERANK_META).write_text(json.dumps(meta))
    with pytest.raises(IndexFileError, match=message):
        load_rescorer(tmp_path, n=30)

"""Index kinds are registry entries that build through ``faiss.index_factory``: every kind gives the results
the kind-by-kind builder gave (captured from it in ``fixtures/index_v1/results.npz``), exact kinds equal
numpy brute force and approximate ones reach their recall; ``index.json`` stores the factory string, which
is checked like untrusted input; folders written before the factory string was stored still load.

``fixtures/index_v1`` was written by the previous version (``index.json`` without ``format``/``factory``):
``results.npz`` holds its top-10 ids and scores for each case of ``CASES`` and its top-5 of the two saved
folders ``ivfpq`` and ``exact`` (built from ``data(seed=4, n=400, d=16, centres=8)``, queried with
``data(seed=5, n=10, d=16, centres=8)``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import brute_top_k, clustered
from stitch.bounds import Bound
from stitch.registries import INDEX_KINDS
from stitch.retrieval.index import (
    DEFAULT_PARAMS,
    INDEX_FORMAT,
    IndexFileError,
    build_index,
    check_request,
    load_index,
)
from stitch.retrieval.index_kinds import PARAM_BOUNDS, IndexKind

V1 = Path(__file__).parent / "fixtures" / "index_v1"
CASES = {
    "exact": ("exact", {}),
    "flat": ("flat", {}),
    "ivf": ("ivf", {"nlist": 32, "nprobe": 4}),
    "ivf_default": ("ivf", {}),  # nlist lowered to what 3000 training rows carry (76)
    "hnsw": ("hnsw", {"m": 16, "ef_construction": 40, "ef_search": 16}),
    "ivfpq": ("ivfpq", {"nlist": 32, "nprobe": 4, "m": 8, "nbits": 6}),
    "ivfpq_norefine": ("ivfpq", {"nlist": 32, "nprobe": 4, "m": 8, "nbits": 5, "refine_factor": 0}),
}
FACTORIES = {
    "exact": None,
    "flat": "Flat",
    "ivf": "IVF32,Flat",
    "ivf_default": "IVF76,Flat",
    "hnsw": "HNSW16",
    "ivfpq": "IVF32,PQ8x6np,RFlat",
    "ivfpq_norefine": "IVF32,PQ8x5np",
}


def data(seed=0, n=3000, d=32, centres=40):
    return clustered(n, d, centres, seed)


def brute(gallery, queries, k):
    return brute_top_k(gallery, queries, k)


def recall(ids, truth):
    return np.mean([len(set(a) & set(b)) / truth.shape[1] for a, b in zip(ids, truth)])


@pytest.fixture(scope="module")
def before():
    with np.load(V1 / "results.npz", allow_pickle=False) as saved:
        return dict(saved)


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_kind_gives_the_results_the_previous_builder_gave(tmp_path, before, case):
    kind, params = CASES[case]
    if kind != "exact":
        pytest.importorskip("faiss")
    index = build_index(data(), kind, seed=3, **params)
    scores, ids = index.search(data(seed=1, n=40), 10)
    assert np.array_equal(ids, before[f"{case}_ids"])
    assert np.allclose(scores, before[f"{case}_scores"], atol=1e-6)
    assert index.factory == FACTORIES[case]
    saved = json.loads((index.save(tmp_path / "i") / "index.json").read_text())
    assert saved["format"] == INDEX_FORMAT and saved["factory"] == FACTORIES[case]
    again = load_index(tmp_path / "i").search(data(seed=1, n=40), 10)
    assert np.array_equal(again[1], ids) and np.array_equal(again[0], scores)


@pytest.mark.parametrize("kind", ["exact", "flat"])
def test_exact_kinds_equal_numpy_brute_force(kind):
    if kind != "exact":
        pytest.importorskip("faiss")
    gallery, queries = data(), data(seed=1, n=40)
    scores, ids = build_index(gallery, kind).search(queries, 10)
    truth_scores, truth_ids = brute(gallery, queries, 10)
    assert recall(ids, truth_ids) == 1.0
    assert np.allclose(scores, truth_scores, atol=1e-5)


@pytest.mark.parametrize(
    ("kind", "params"),
    [
        ("ivf", {"nlist": 32, "nprobe": 16}),
        ("hnsw", {"m": 16, "ef_search": 128}),
        ("ivfpq", {"nlist": 32, "nprobe": 16, "m": 8, "nbits": 6}),
    ],
)
def test_approximate_kinds_find_the_true_neighbours(kind, params):
    pytest.importorskip("faiss")
    gallery, queries = data(), data(seed=1, n=40)
    _, ids = build_index(gallery, kind, **params).search(queries, 10)
    assert recall(ids, brute(gallery, queries, 10)[1]) >= 0.9


@pytest.mark.parametrize("name", ["ivfpq", "exact"])
def test_a_folder_written_before_the_factory_string_was_stored_loads_as_it_searched(tmp_path, before, name):
    if name != "exact":
        pytest.importorskip("faiss")
    folder = shutil.copytree(V1 / name, tmp_path / name)
    assert not {"format", "factory"} & set(json.loads((folder / "index.json").read_text()))
    index = load_index(folder)
    scores, ids = index.search(data(seed=5, n=10, d=16, centres=8), 5)
    assert np.array_equal(ids, before[f"folder_{name}_ids"])
    assert np.allclose(scores, before[f"folder_{name}_scores"], atol=1e-6)
    assert index.factory == {"ivfpq": "IVF8,PQ4x4np,RFlat", "exact": None}[name]
    resaved = json.loads((index.save(tmp_path / "again") / "index.json").read_text())
    assert resaved["format"] == INDEX_FORMAT and resaved["factory"] == index.factory


def _old_layout(folder: Path) -> None:
    """Rewrite ``index.json`` in format 1's shape: no ``format``, no ``factory``."""
    meta = json.loads((folder / "index.json").read_text())
    old = {key: meta[key] for key in ("kind", "dim", "params", "names", "meta")}
    (folder / "index.json").write_text(json.dumps(old))


@pytest.mark.parametrize("case", ["flat", "ivf_default", "hnsw", "ivfpq"])
def test_an_old_layout_index_json_loads_and_searches_the_same(tmp_path, case):
    pytest.importorskip("faiss")
    kind, params = CASES[case]
    gallery, queries = data(n=1200), data(seed=1, n=20)
    built = build_index(gallery, kind, seed=3, **params)
    folder = built.save(tmp_path / "i")
    _old_layout(folder)
    again = load_index(folder)
    assert np.array_equal(again.search(queries, 10)[1], built.search(queries, 10)[1])
    assert again.factory == built.factory and again.params == built.params


def _tamper(folder: Path, **changes) -> None:
    meta = json.loads((folder / "index.json").read_text())
    for key, value in changes.items():
        if value is _DROP:
            meta.pop(key)
        else:
            meta[key] = value
    (folder / "index.json").write_text(json.dumps(meta))


_DROP = object()
FACTORY_EDITS = {
    "another kind's string": ("ivfpq", {"factory": "IVF8,Flat"}, r"factory 'IVF8,Flat' is not what kind 'ivfpq'"),
    "another setting": ("hnsw", {"factory": "HNSW64"}, r"factory 'HNSW64' is not what kind 'hnsw'"),
    "a FAISS string of its own": (
        "flat",
        {"factory": "PCA16,IVF4096,Flat"},
        r"factory 'PCA16,IVF4096,Flat' is not what kind 'flat' with these parameters makes \('Flat'\)",
    ),
    "a string for exact": (
        "exact",
        {"factory": "Flat"},
        r"factory 'Flat' is not what kind 'exact' with these parameters makes \(None\)",
    ),
    "not a string": ("flat", {"factory": ["Flat"]}, r"factory \['Flat'\] is not what kind"),
    "lists the build did not choose": ("ivf", {"meta": {"nlist": 9}}, r"factory 'IVF4,Flat' is not what kind"),
    "lists out of bounds": ("ivf", {"meta": {"nlist": 0}}, r"index.json: meta nlist must be in \[1, 1048576\]"),
    "factory missing in format 2": ("flat", {"factory": _DROP}, r"missing key\(s\) \['factory'\] \(index format 2\)"),
    "factory in format 1": ("flat", {"format": _DROP}, r"unknown key\(s\) \['factory'\].*\(index format 1\)"),
    "a newer format": ("flat", {"format": 3}, r"index format 3 is newer than this stitch reads \(2\)"),
    "format a string": ("flat", {"format": "2"}, r"format must be a whole number >= 1, got '2'"),
}


@pytest.mark.parametrize("case", sorted(FACTORY_EDITS))
def test_the_stored_factory_string_is_checked_like_untrusted_input(tmp_path, case):
    kind, changes, message = FACTORY_EDITS[case]
    if kind != "exact":
        pytest.importorskip("faiss")
    params = {"ivf": {"nlist": 4}, "ivfpq": {"nlist": 4, "m": 4, "nbits": 4}}.get(kind, {})
    folder = build_index(data(n=400, d=16), kind, **params).save(tmp_path / "i")
    _tamper(folder, **changes)
    with pytest.raises(IndexFileError, match=message) as err:
        load_index(folder)
    assert "index.json" in str(err.value) and "\n" not in str(err.value)


def test_a_faiss_file_unlike_its_factory_string_is_refused(tmp_path):
    """The kind and settings in index.json decide the search-time parameters: a FAISS file of another
    structure (here a flat index where an HNSW graph belongs) is refused in one line, not searched."""
    pytest.importorskip("faiss")
    gallery = data(n=400, d=16)
    hnsw = build_index(gallery, "hnsw", m=8).save(tmp_path / "hnsw")
    flat = build_index(gallery, "flat").save(tmp_path / "flat")
    shutil.copy(flat / "index.faiss", hnsw / "index.faiss")
    with pytest.raises(IndexFileError, match=r"index.faiss does not hold the HNSW8 index index.json describes"):
        load_index(hnsw)


def test_every_kind_is_a_registry_entry_with_bounded_settings_and_a_factory_faiss_takes():
    faiss = pytest.importorskip("faiss")
    for name in INDEX_KINDS.names():
        kind = INDEX_KINDS.get(name)
        assert isinstance(kind, IndexKind) and DEFAULT_PARAMS[name] == dict(kind.defaults)
        for key, value in kind.defaults.items():
            assert isinstance(PARAM_BOUNDS[key], Bound) and PARAM_BOUNDS[key].holds(value)
        kind.check_settings(name, dict(kind.defaults), IndexFileError)
        factory = kind.factory(kind.defaults)
        assert (factory is None) == (kind.store == "vectors")
        if factory is not None:
            index = faiss.index_factory(64, factory, faiss.METRIC_INNER_PRODUCT)
            assert index.metric_type == faiss.METRIC_INNER_PRODUCT and index.is_trained != kind.trains


def test_ivfpq_needs_m_to_divide_the_dimension_before_any_work():
    with pytest.raises(IndexFileError, match=r"ivfpq needs the dimension \(30\) divisible by m \(32\)"):
        check_request("ivfpq", {}, 1000, 30)

"""Indexes: exact equals brute force, save -> load -> search is identical, approximate ~ exact."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import brute_top_k, clustered
from stitch.retrieval.index import IndexFileError, build_index, knn_classify, knn_regress, load_index


def brute(gallery, queries, k):
    return brute_top_k(gallery, queries, k)[1]


def test_exact_equals_brute_force():
    gallery, queries = clustered(), clustered(50, seed=1)
    _, ids = build_index(gallery, "exact").search(queries, 10, chunk=7)
    assert np.array_equal(ids, brute(gallery, queries, 10))


@pytest.mark.parametrize("kind", ["exact", "flat", "ivf", "hnsw", "ivfpq"])
def test_save_load_search_round_trip(tmp_path, kind):
    pytest.importorskip("faiss") if kind != "exact" else None
    gallery, queries = clustered(), clustered(60, seed=2)
    params = {"ivf": {"nlist": 32}, "ivfpq": {"nlist": 32, "m": 8}}.get(kind, {})
    index = build_index(gallery, kind, names=[f"img{i}" for i in range(len(gallery))], **params)
    before = index.search(queries, 10)
    index.save(tmp_path / "idx")
    with pytest.raises(FileExistsError):
        index.save(tmp_path / "idx")
    again = load_index(tmp_path / "idx")
    after = again.search(queries, 10)
    assert np.array_equal(before[1], after[1]) and np.allclose(before[0], after[0])
    assert again.names[5] == "img5" and again.params == index.params
    # approximate results against exact
    truth = brute(gallery, queries, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(after[1], truth)])
    assert recall >= (1.0 if kind in ("exact", "flat") else 0.9)


def test_bad_index_input():
    with pytest.raises(IndexFileError, match="NaN"):
        build_index(np.array([[1.0, np.nan]]), "exact")
    with pytest.raises(IndexFileError, match="index kind must be one of"):
        build_index(np.eye(3), "lsh")
    with pytest.raises(IndexFileError, match="unknown parameter"):
        build_index(np.eye(3), "hnsw", nprobe=3)
    index = build_index(np.eye(3), "exact")
    with pytest.raises(IndexFileError, match=r"queries must be \(n, 3\)"):
        index.search(np.ones((2, 4)))


def test_load_refuses_a_corrupt_folder(tmp_path):
    with pytest.raises(IndexFileError, match="index.json is missing"):
        load_index(tmp_path)
    build_index(np.eye(4), "exact").save(tmp_path / "i")
    (tmp_path / "i" / "vectors.safetensors").write_bytes(b"garbage")
    with pytest.raises(IndexFileError, match="cannot be read"):
        load_index(tmp_path / "i")


def test_knn_label_transfer_matches_brute_force():
    rng = np.random.default_rng(0)
    gallery, queries = clustered(500), clustered(40, seed=3)
    labels = rng.integers(0, 4, len(gallery))
    targets = rng.standard_normal((len(gallery), 2))
    index = build_index(gallery, "exact")
    nearest = brute(gallery, queries, 5)
    expected_reg = targets[nearest].mean(1)
    assert np.allclose(knn_regress(index, targets, queries, k=5), expected_reg)
    predicted = knn_classify(index, labels, queries, k=5)
    for row, pred in zip(labels[nearest], predicted):
        counts = np.bincount(row, minlength=4)
        assert counts[pred] == counts.max()


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_a_saved_index_loads_after_faiss_torch_utils_patched_faiss(tmp_path, kind):
    """pytorch-metric-learning imports faiss.contrib.torch_utils, which makes FAISS's Python wrappers return
    torch tensors; loading (and its NaN check) must still read the stored vectors, and still find a NaN."""
    pytest.importorskip("faiss")
    import subprocess
    import sys

    gallery = clustered()
    build_index(gallery, kind, **({"nlist": 16} if kind == "ivf" else {})).save(tmp_path / "idx")
    code = (
        "import faiss.contrib.torch_utils\n"
        "from stitch.retrieval.index import load_index\n"
        f"index = load_index({str(tmp_path / 'idx')!r})\n"
        "print(len(index))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == str(len(gallery))

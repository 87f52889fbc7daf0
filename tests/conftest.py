"""Shared fixtures: small synthetic data made here, and the real data in ../shared when present."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
FLICKR = SHARED / "data" / "flickr8k" / "flickr8k.npz"
FORMATS = SHARED / "formats"


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is absent: the shared data folder must sit beside the repo as ../shared")
    return path


@pytest.fixture
def flickr_path() -> Path:
    return need(FLICKR)


@pytest.fixture
def formats_dir() -> Path:
    return need(FORMATS)


@pytest.fixture(scope="session")
def small_data():
    from stitch.data import make_synthetic

    return make_synthetic(n_images=300, captions_per_image=3, text_dim=24, image_dim=40, latent_dim=8, seed=1)


def write_flickr_like(path: Path, data, **replace) -> Path:
    """Save a dataset in the Flickr8k npz layout, with keys optionally replaced or removed (None)."""
    arrays = {
        "captions/embeddings": data.captions,
        "captions/image_index": data.caption_image,
        "captions/ids": data.caption_ids,
        "images/embeddings": data.images,
        "images/names": data.image_names,
        "images/split": data.image_split,
    }
    for key, value in replace.items():
        key = key.replace("__", "/")
        if value is None:
            arrays.pop(key, None)
        else:
            arrays[key] = value
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


@pytest.fixture(scope="session")
def fused_flickr_run(tmp_path_factory):
    """The fused recipe trained once on the real Flickr8k train split (slow: ~8 minutes on 2 idle cores)."""
    from stitch import api
    from stitch.recipes import recipe_overrides

    data = api.load(need(FLICKR))
    run = tmp_path_factory.mktemp("flickr") / "fused"
    api.train(data, None, out=run, overrides=recipe_overrides("fused"), progress=False)
    return run


@pytest.fixture(scope="session")
def default_flickr_run(fused_flickr_run):
    """The default recipe on Flickr8k: the fused run's first member, which is trained with the default
    config and seed unchanged (only the ensemble block is dropped; its dev figures equal a lone `stitch
    train`'s, 0.2102 / 0.3458 plain cosine both ways), so the suite trains the default once, not twice."""
    from stitch.training.ensemble import read_ensemble

    members, _, _ = read_ensemble(fused_flickr_run)
    return members[0]


# Texts that stress a text encoder: a repeat (grouping by length must not mix rows), a long one (truncation),
# an empty one and non-Latin scripts.
EDGE_TEXTS = [
    "a dog",
    "Two children in red jackets play on a snowy hill while their father watches from the car park .",
    "word " * 400,  # truncated at the model's 256 tokens
    "",
    "Ein Hund läuft über die Wiese — 犬が走る",
    "a dog",
]

WORDS = "dog cat child man woman ball grass beach water snow red blue runs jumps sits plays on in the a".split()


def write_text_pairs(path: Path, n_images: int = 120, per: int = 3, seed: int = 1) -> dict:
    """A small Flickr-layout file with made-up caption texts (random embeddings) for re-encoding tests;
    the first 90 images are train, the rest dev. Returns the arrays written."""
    rng = np.random.default_rng(seed)
    texts = np.array([" ".join(rng.choice(WORDS, 6)) for _ in range(n_images * per)])
    arrays = {
        "captions/embeddings": rng.standard_normal((len(texts), 8)).astype(np.float32),
        "captions/text": texts,
        "captions/image_index": np.repeat(np.arange(n_images), per),
        "images/embeddings": rng.standard_normal((n_images, 16)).astype(np.float32),
        "images/names": np.array([f"img{i}.jpg" for i in range(n_images)]),
        "images/split": np.where(np.arange(n_images) < 90, "train", "dev"),
    }
    np.savez(path, **arrays)
    return arrays


def assert_served_top10_equals_evaluation(data_path: Path, tmp_path: Path) -> None:
    """Train a ridge run on ``data_path``, serve it (the run records its text encoder) and check that the first
    20 dev caption texts get exactly the top 10 evaluation scores on the embeddings that encoder produced."""
    from fastapi.testclient import TestClient

    from stitch import api
    from stitch.apps.service.app import build_app
    from stitch.apps.service.config import ServeConfig

    data = api.load(data_path)
    run = tmp_path / "run"
    api.train(data, None, out=run, overrides=["model.name=ridge", "inference.bank_size=64"], progress=False)
    (tmp_path / "img").mkdir()
    client = TestClient(build_app(ServeConfig(run, data_path, tmp_path / "img", split="dev")))
    dev = data.split("dev")
    scorer = api.open(run).scorer()
    q, g = scorer.embed_queries(dev.captions[:20]), scorer.embed_gallery(dev.images)
    scorer.fit(g)
    expected = scorer.scores(scorer.prepare_queries(q), scorer.prepare_gallery(g)).topk(10, dim=1).indices
    for text, top in zip(dev.caption_texts[:20], expected.tolist()):
        hits = client.get("/search", params={"q": str(text), "k": 10}).json()["results"]
        assert [h["name"] for h in hits] == [str(dev.image_names[i]) for i in top]


def clustered(n: int = 4000, d: int = 32, centres: int = 40, seed: int = 0) -> np.ndarray:
    """Vectors around ``centres`` random centres: neighbours an approximate index can find."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, d))
    return (c[rng.integers(0, centres, n)] + 0.4 * rng.standard_normal((n, d))).astype(np.float32)


def brute_top_k(gallery: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(scores, ids)`` of the top ``k`` by cosine, in numpy: what an index must return."""
    g = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    scores = q @ g.T
    ids = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, ids, axis=1), ids

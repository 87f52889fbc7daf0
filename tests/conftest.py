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
def default_flickr_run(tmp_path_factory):
    """The default recipe trained once on the real Flickr8k train split (slow: minutes on 2 cores)."""
    from stitch import api

    data = api.load(need(FLICKR))
    run = tmp_path_factory.mktemp("flickr") / "default"
    api.train(data, None, out=run, progress=False)
    return run

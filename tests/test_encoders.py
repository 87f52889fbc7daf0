"""Encoders reproduce the shared embeddings; stitch encode is resumable and skips broken images."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from conftest import EDGE_TEXTS, FLICKR, need
from stitch.data import DataError, load_pairs

pytest.importorskip("sentence_transformers")


@pytest.fixture(scope="module")
def flickr_npz():
    return np.load(need(FLICKR), allow_pickle=False)


@pytest.fixture(scope="module")
def minilm():
    from stitch.encoders import text_encoder

    return text_encoder("minilm")


def test_minilm_reproduces_the_shared_caption_embeddings(flickr_npz, minilm):
    rows = np.arange(0, 35455, 709)  # 51 captions across the file
    ours = minilm.encode([str(t) for t in flickr_npz["captions/text"][rows]])
    assert np.abs(ours - flickr_npz["captions/embeddings"][rows]).max() < 1e-5


def test_lean_text_path_matches_sentence_transformers(minilm):
    texts = EDGE_TEXTS
    assert minilm._lean is not None  # MiniLM is transformer + mean pooling + normalise
    ours = minilm.encode(texts)
    theirs = minilm.model.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
    assert ours.shape == (6, 384) and np.abs(ours - theirs).max() < 1e-5
    assert np.allclose(ours[0], ours[5])  # grouping by length does not mix rows up


def test_bf16_text_encoding_stays_close(flickr_npz):
    from stitch.encoders import text_encoder

    rows = np.arange(3, 35455, 1409)
    fast = text_encoder("minilm", precision="bf16").encode([str(t) for t in flickr_npz["captions/text"][rows]])
    cosine = (fast * flickr_npz["captions/embeddings"][rows]).sum(1)
    assert cosine.min() > 0.999
    with pytest.raises(ValueError, match="precision"):
        text_encoder("minilm", precision="fp8")


def _all_partitions(n: int, max_group: int):
    if n == 0:
        yield []
        return
    for size in range(1, min(n, max_group) + 1):
        for rest in _all_partitions(n - size, max_group):
            yield [size, *rest]


@pytest.mark.parametrize("seed", range(6))
def test_padding_groups_are_optimal_against_brute_force(seed):
    from stitch.encoders.text import padding_groups

    rng = np.random.default_rng(seed)
    lengths = np.sort(rng.integers(3, 60, size=int(rng.integers(1, 10))))
    max_group, call_cost = int(rng.integers(1, 6)), int(rng.integers(0, 80))

    def cost(sizes):
        total, start = 0, 0
        for size in sizes:
            total += size * lengths[start + size - 1] + call_cost
            start += size
        return total

    groups = padding_groups(lengths, max_group, call_cost)
    sizes = [g.stop - g.start for g in groups]
    assert groups[0].start == 0 and groups[-1].stop == len(lengths)
    assert all(a.stop == b.start for a, b in zip(groups, groups[1:])) and max(sizes) <= max_group
    assert cost(sizes) == min(cost(p) for p in _all_partitions(len(lengths), max_group))


def test_tflite_mobilenet_on_thumbnails_is_close_to_the_shared_image_embeddings(flickr_npz):
    pytest.importorskip("ai_edge_litert")
    from PIL import Image

    from conftest import SHARED
    from stitch.encoders import image_encoder

    encoder = image_encoder(f"tflite:{need(SHARED / 'models' / 'mobilenet_v1_embedding.tflite')}")
    rows = np.arange(0, 7091, 355)
    folder = SHARED / "data" / "flickr8k" / "images"
    ours = encoder.encode([Image.open(folder / n) for n in flickr_npz["images/names"][rows]])
    ref = flickr_npz["images/embeddings"][rows]
    cos = (ours * ref).sum(1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(ref, axis=1))
    # the shared embeddings came from full-size pictures; the thumbnails are at most 160 px
    assert cos.mean() > 0.85 and cos.min() > 0.75


@pytest.fixture
def small_folder(tmp_path, flickr_npz):
    from conftest import SHARED

    folder = tmp_path / "pics"
    folder.mkdir()
    names = [str(n) for n in flickr_npz["images/names"][:5]]
    for name in names:
        shutil.copy(SHARED / "data" / "flickr8k" / "images" / name, folder / name)
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    texts = flickr_npz["captions/text"]
    lines = ["image,caption"]
    for i, name in enumerate(names):
        lines += [f'{name},"{texts[5 * i + j]}"' for j in range(2)]
    lines.append("broken.jpg,a caption of a broken file")
    lines.append("missing.jpg,a caption of a missing file")
    (tmp_path / "captions.csv").write_text("\n".join(lines) + "\n")
    return tmp_path, names


def test_encode_builds_a_dataset_and_lists_skipped_images(small_folder, flickr_npz):
    from conftest import SHARED
    from stitch.encoders.encode import encode_dataset

    root, names = small_folder
    model = SHARED / "models" / "mobilenet_v1_embedding.tflite"
    out = encode_dataset(root / "d.npz", root / "captions.csv", root / "pics", "minilm", f"tflite:{model}", chunk=2)
    data = load_pairs(out)
    assert list(data.image_names) == names and data.n_captions == 10
    assert data.encoders == {"text": "minilm", "image": f"tflite:{model}"}
    assert np.allclose(data.captions[0], flickr_npz["captions/embeddings"][0], atol=1e-5)
    assert set((root / "d.npz.skipped.txt").read_text().split()) == {"broken.jpg", "missing.jpg"}
    assert not (root / "d.npz.parts").exists()
    with pytest.raises(FileExistsError):
        encode_dataset(root / "d.npz", root / "captions.csv")


def test_encode_resumes_without_redoing_finished_chunks(small_folder, monkeypatch):
    from stitch.encoders import text as text_module
    from stitch.encoders.encode import encode_dataset

    root, _ = small_folder
    calls = {"n": 0}
    original = text_module.TextEncoder.encode

    def flaky(self, texts):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # interrupted after two chunks
        return original(self, texts)

    monkeypatch.setattr(text_module.TextEncoder, "encode", flaky)
    with pytest.raises(KeyboardInterrupt):
        encode_dataset(root / "q.npz", root / "captions.csv", chunk=4)
    assert len(list((root / "q.npz.parts").glob("captions-*.npy"))) == 2
    calls["n"] = 10
    encode_dataset(root / "q.npz", root / "captions.csv", chunk=4)
    assert calls["n"] == 11  # only the last of three chunks was encoded again
    queries = np.load(root / "q.npz")
    assert len(queries["captions/embeddings"]) == 12


def test_encode_bad_input(tmp_path):
    from stitch.encoders.encode import encode_dataset, read_captions

    (tmp_path / "c.csv").write_text("image,caption\na.jpg,\n")
    with pytest.raises(DataError, match="without image or caption"):
        read_captions(tmp_path / "c.csv")
    with pytest.raises(DataError, match="image encoder"):
        encode_dataset(tmp_path / "o.npz", images=tmp_path)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_hugging_face_vision_encoder_from_a_local_folder(tmp_path, pooling):
    """A tiny ViT saved locally (no download): CLS and mean pooling are what the model computes."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from PIL import Image

    from stitch.encoders import image_encoder

    config = transformers.ViTConfig(
        image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    )
    torch.manual_seed(0)
    model = transformers.ViTModel(config)
    model.save_pretrained(tmp_path / "vit")
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path / "vit")
    encoder = image_encoder(f"hf:{tmp_path / 'vit'}#{pooling}")
    pictures = [Image.new("RGB", (40, 30), color) for color in ("red", "navy")]
    got = encoder.encode(pictures)
    batch = encoder.processor(images=pictures, return_tensors="pt")
    with torch.no_grad():
        hidden = model.eval()(**batch).last_hidden_state
    expected = hidden[:, 0] if pooling == "cls" else hidden[:, 1:].mean(1)
    assert got.shape == (2, 16) and np.allclose(got, expected.numpy(), atol=1e-5)
    assert not np.allclose(got[0], got[1])


def test_image_encoder_kinds_come_from_their_registry(tmp_path):
    from stitch.encoders.image import image_encoder
    from stitch.errors import UsageError
    from stitch.registries import IMAGE_ENCODERS

    for spec in ("clip:/models/x", "tflite", "/models/x.tflite"):
        with pytest.raises(UsageError, match="unknown image encoder") as caught:
            image_encoder(spec)
        assert all(f"{kind}:" in str(caught.value) for kind in IMAGE_ENCODERS.names())
    with pytest.raises(UsageError, match="does not exist"):  # dispatched to the TFLite kind
        image_encoder(f"tflite:{tmp_path / 'missing.tflite'}")
    with pytest.raises(UsageError, match="pooling must be cls or mean"):  # to the Hugging Face kind
        image_encoder(f"hf:{tmp_path}#max")

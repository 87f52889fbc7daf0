"""Runs and exports are untrusted input too (issue 24): a run evaluates its own seeded split, an export loads
without running code from its folder, and a failed training leaves a folder a re-run can use."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from conftest import FORMATS, need, write_flickr_like
from stitch import api
from stitch.cli import main
from stitch.data import DataError, make_synthetic
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

"""The CLI surface other tools rely on, driven end to end on small data."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import write_flickr_like
from stitch.apps.cli import main
from stitch.outputs.submission import read_csv_submission


@pytest.fixture
def data_file(tmp_path, small_data):
    return write_flickr_like(tmp_path / "data.npz", small_data)


@pytest.fixture
def trained_run(tmp_path, data_file):
    run = tmp_path / "run"
    assert (
        main(["train", "--data", str(data_file), "--out", str(run), "--quiet", "model.hidden=32", "optim.epochs=2"])
        == 0
    )
    return run


def test_evaluate_json_has_the_promised_keys(trained_run, data_file, capsys, small_data):
    capsys.readouterr()
    assert main(["evaluate", "--run", str(trained_run), "--data", str(data_file), "--split", "dev", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("recall@1", "recall@5", "recall@10", "mrr", "ndcg@10", "median_rank", "gallery", "queries", "protocol"):
        assert key in out
    assert out["gallery"] == int((small_data.image_split == "dev").sum())
    assert out["queries"] == 3 * out["gallery"]
    assert "text->image" in out["protocol"] and "full gallery" in out["protocol"]


def test_evaluate_table_names_protocol_and_sizes(trained_run, data_file, capsys):
    capsys.readouterr()
    whole_file = ["evaluate", "--run", str(trained_run), "--data", str(data_file), "--protocol", "kaggle100"]
    assert main(whole_file) == 2  # the whole file holds the run's training captions: refused without a word
    assert "query bank" in capsys.readouterr().err
    assert main([*whole_file, "--allow-train-overlap"]) == 0
    text = capsys.readouterr().out
    assert "kaggle100+is (900 queries, gallery of 100 images)" in text and "99 seeded random" in text
    assert "WARNING" in text and "flattered" in text
    assert "rescored with is" in text  # the run's default hubness-aware scoring is named


def test_predict_csv_rows_ids_and_no_overwrite(tmp_path, trained_run, data_file, capsys):
    out = tmp_path / "sub.csv"
    assert main(["predict", "--run", str(trained_run), "--data", str(data_file), "--out", str(out)]) == 0
    ids, rows = read_csv_submission(out)
    data = np.load(data_file)
    assert len(ids) == len(data["captions/ids"]) and ids[0] == data["captions/ids"][0]
    assert rows.shape == (len(ids), data["images/embeddings"].shape[1])
    before = out.read_bytes()
    assert main(["predict", "--run", str(trained_run), "--data", str(data_file), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert out.read_bytes() == before
    assert main(["predict", "--run", str(trained_run), "--data", str(data_file), "--out", str(out), "--force"]) == 0


def test_predictions_live_in_raw_image_space(tmp_path, trained_run, data_file, small_data):
    from stitch import api

    pred = api.predict(trained_run, small_data.captions, target="point")
    truth = small_data.images[small_data.caption_image]
    # de-standardised predictions sit on the images' scale, and point at their own image
    assert abs(pred.mean() - small_data.images.mean()) < 0.5 * small_data.images.std()
    cos = (pred * truth).sum(1) / (np.linalg.norm(pred, axis=1) * np.linalg.norm(truth, axis=1))
    assert cos.mean() > 0.5
    # the default output is a direction: the unit z-space prediction divided by the image std
    direction = api.predict(trained_run, small_data.captions)
    std = api.open(trained_run).model.space.std.numpy()
    assert np.allclose(np.linalg.norm(direction * std, axis=1), 1, atol=1e-5)


def test_predict_pt_layout_reloads_safely(tmp_path, trained_run, formats_dir):
    # a run trained on the challenge's own train.pt, then predicting its test.pt
    run = tmp_path / "ptrun"
    assert (
        main(
            [
                "train",
                "--data",
                str(formats_dir / "challenge_pt" / "train.pt"),
                "--out",
                str(run),
                "--quiet",
                "model.name=ridge",
            ]
        )
        == 0
    )
    out = tmp_path / "sub.pt"
    assert (
        main(["predict", "--run", str(run), "--data", str(formats_dir / "challenge_pt" / "test.pt"), "--out", str(out)])
        == 0
    )
    body = torch.load(out, weights_only=True)
    assert body["img_embd"].shape == (300, 1024) and len(body["captions_text"]) == 300


def test_kaggle_csv_matches_the_sample_layout(tmp_path, formats_dir):
    run = tmp_path / "aml"
    assert (
        main(
            [
                "train",
                "--data",
                str(formats_dir / "aml2025" / "train.npz"),
                "--out",
                str(run),
                "--quiet",
                "model.name=ridge",
            ]
        )
        == 0
    )
    out = tmp_path / "sub.csv"
    assert (
        main(
            ["predict", "--run", str(run), "--data", str(formats_dir / "aml2025" / "test.clean.npz"), "--out", str(out)]
        )
        == 0
    )
    ours_ids, ours = read_csv_submission(out)
    sample_ids, sample = read_csv_submission(formats_dir / "aml2025" / "sample_submission.csv")
    assert ours.shape[1] == sample.shape[1]
    assert list(ours_ids[: len(sample_ids)]) == list(sample_ids)
    assert out.read_text().splitlines()[0] == "id,embedding"


def test_bad_input_exits_2_with_a_clear_message(tmp_path, capsys):
    np.savez(tmp_path / "bad.npz", **{"captions/embeddings": np.ones((3, 2), np.float32)})
    assert main(["train", "--data", str(tmp_path / "bad.npz"), "--out", str(tmp_path / "r")]) == 2
    assert "keys found" in capsys.readouterr().err
    assert main(["train", "--data", str(tmp_path / "bad.npz"), "optim.lrr=1"]) == 2


def test_help_is_fast_and_imports_no_torch():
    code = "import sys; from stitch.apps.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_quick_demo_is_labelled_synthetic_and_the_default_beats_ridge(capsys, tmp_path):
    from stitch.apps.demo import run_demo

    results = run_demo(out=tmp_path / "demo", quick=True)
    out = capsys.readouterr().out
    assert "SYNTHETIC" in out and "full gallery of" in out and "MRR submitted" in out
    assert results["default (resmlp + InfoNCE)"]["mrr"] > results["ridge"]["mrr"]
    # the runs it announces are there to open afterwards, each with its model card
    assert f"The runs are in {tmp_path / 'demo'}/" in out and (tmp_path / "demo" / "default" / "README.md").exists()


def test_q_after_a_subcommand_means_what_it_means_before_one():
    from stitch.apps.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["train", "-q", "--data", "x"]).quiet
    assert parser.parse_args(["index", "build", "-q", "--run", "r", "--out", "o"]).quiet
    assert parser.parse_args(["-q", "recipes"]).silent and not parser.parse_args(["recipes"]).quiet

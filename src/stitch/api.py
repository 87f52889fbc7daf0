"""The Python API the CLI is a thin layer on: load, train, evaluate, predict, index and search.

Every function that uses a trained model takes a run as a :class:`~stitch.training.Run`, a
:class:`~stitch.training.TrainResult` or a run (or ensemble) folder; :func:`open` is the one place that
resolves them."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stitch.data import DataError, PairedEmbeddings, Queries, load_pairs, load_queries, read_npy_triplet
from stitch.data.dedupe import merge_duplicate_texts as merge_duplicates
from stitch.data.dedupe import row_hashes
from stitch.data.pairs import Pairs
from stitch.data.sharded import ShardedPairs
from stitch.data.splits import SEEDED_SPLIT, select_split
from stitch.errors import UsageError
from stitch.options import EvalOptions, IndexOptions
from stitch.outputs import submission
from stitch.recipes import recipe_overrides
from stitch.retrieval.answers import Answer
from stitch.retrieval.evaluate import AS_SUBMITTED, DirectionReport, evaluate_embeddings
from stitch.retrieval.graded import graded_reports
from stitch.training import Run, TrainConfig, TrainResult, load_config, open_run
from stitch.training import train as _train
from stitch.training.device import resolve_device
from stitch.training.ensemble import is_ensemble_folder, train_ensemble
from stitch.training.run import RunInfo
from stitch.translators import image_space_rows
from stitch.translators.base import check_target

logger = logging.getLogger(__name__)

RunLike = Run | TrainResult | str | Path


@dataclass
class SplitReport(DirectionReport):
    """A direction's figures and the images they were scored on (``split``: every image, the data's own
    split, or the run's own seeded train/dev split)."""

    split: str = ""


def load(
    path: str | Path | None = None,
    captions: str | Path | None = None,
    images: str | Path | None = None,
    index: str | Path | None = None,
    **kwargs,
) -> PairedEmbeddings:
    """A paired dataset from one file (npz/pt, layout detected) or three ``.npy`` files."""
    if path is not None:
        if kwargs.get("image_key"):
            _check_keyed_layout(path)
        return load_pairs(path, **kwargs)
    if captions is None or images is None or index is None:
        raise UsageError("give a data file, or all three of captions, images and index .npy files")
    return read_npy_triplet(captions, images, index, **kwargs)


def convert(
    source: str | Path,
    out: str | Path,
    shard_rows: int = 262_144,
    dtype: str = "float16",
    image_key: str | None = None,
    force: bool = False,
) -> Path:
    """Write any supported paired layout as stitch's sharded layout (whole images per shard, memory-mapped
    when read back), so large data is prepared once and then streamed."""
    from stitch.data.sharded import write_sharded

    if image_key:
        _check_keyed_layout(source)
    opened = load_pairs(source, image_key=image_key) if image_key else load_pairs(source)
    return write_sharded(ShardedPairs.of(opened, str(source)), out, shard_rows, dtype, force)


def _check_keyed_layout(source: str | Path) -> None:
    """``image_key`` groups rows of the on-disk layouts only; other files say which rows are one image."""
    from stitch.data.layouts import detect_layout

    if detect_layout(source) is None:
        raise DataError(f"{source}: --image-key groups the rows of a clip-retrieval, table or datasets layout only")


def train(
    data: PairedEmbeddings,
    config: TrainConfig | str | Path | None = None,
    out: str | Path | None = None,
    overrides: list[str] | dict | None = None,
    recipe: str | None = None,
    **kwargs,
) -> TrainResult:
    """Train a translator; ``config`` is a TrainConfig, a YAML path, or None for the default recipe;
    ``recipe`` names a recipe (``stitch recipes``) whose settings come before ``overrides``. Without ``out``
    the run stays in memory (the result holds it); with it, the folder holds everything to reopen it.

    With ``resume=True`` and no config or overrides, the run continues with its own config."""
    if recipe is not None:
        if isinstance(overrides, dict):
            raise UsageError("with recipe=, give overrides as a list of key=value strings")
        overrides = [*recipe_overrides(recipe), *(overrides or [])]
    resuming_as_is = kwargs.get("resume") and config is None and not overrides
    if not isinstance(config, TrainConfig) and not resuming_as_is:
        config = load_config(config, overrides)
    named = config if config is not None else _own_config(out)
    if named is not None and named.loss.teacher and "teacher" not in kwargs:
        kwargs["teacher"] = open(named.loss.teacher).model  # distilled from (loss.teacher)
    if (config is not None and config.ensemble.active) or (kwargs.get("resume") and is_ensemble_folder(out)):
        kwargs.pop("force_config", None)
        return train_ensemble(data, config, out, **kwargs)
    return _train(data, config, run_dir=out, **kwargs)


def _own_config(out: str | Path | None) -> TrainConfig | None:
    """The config a run folder records (what ``--resume`` continues with), if it is a single run."""
    if out is None or not (Path(out) / "config.json").exists():
        return None
    return RunInfo.read(Path(out)).config


def open(run: RunLike, device: str | torch.device = "cpu") -> Run:  # noqa: A001 - stitch.open(run), like a file
    """The run behind ``run`` (a Run, a TrainResult, or a run or ensemble folder), model on ``device``."""
    if isinstance(run, TrainResult):
        run = run.run
    if isinstance(run, Run):
        run.model.to(device).eval()
        return run
    return open_run(run, device)


def _check_dims(run: Run, text_dim: int, image_dim: int | None = None) -> None:
    model = run.model
    if text_dim != model.text_dim:
        raise UsageError(f"the run translates {model.text_dim}-d captions, but the data has {text_dim}-d captions")
    if image_dim is not None and image_dim != model.image_dim:
        raise UsageError(f"the run predicts {model.image_dim}-d images, but the data has {image_dim}-d images")


def evaluate(
    run: RunLike,
    data: PairedEmbeddings,
    split: str | None = None,
    protocol: str = "full",
    as_submitted: bool = False,
    options: EvalOptions | None = None,
    **settings: Any,
) -> list[DirectionReport]:
    """Retrieval metrics of a run on ``data`` (or its split ``split``), gallery = its images.

    ``split`` ``"dev"``/``"train"`` of a run that drew a seeded split (data without a train/dev column) are
    the run's own images again, when ``data`` is the data it split; each report's ``split`` says which.

    ``merge_duplicate_texts``: identical caption texts of the evaluated images become one query relevant to
    all their images (see :mod:`stitch.data.dedupe`), so a text on several pictures is not scored as wrong.

    Text->image scores use the run's scoring (its ``inference`` config, with the training captions it
    kept as query bank) unless ``rerank`` names another method or ``"none"``. ``bank`` (raw caption
    embeddings) replaces the run's bank. ``as_submitted`` scores what :func:`predict` gives instead, the way
    a competition grader does (unit vector against unit raw image, :mod:`stitch.retrieval.graded`): the
    figure a submission of these captions would get. Evaluated data whose captions are in the query bank
    (training captions) for more than 1% of its rows is refused unless ``allow_train_overlap``: its figures
    would be flattered. Below that, identical caption texts on other images match bank rows; every report
    counts them (``train_overlap``) so the CLI can say so.

    ``settings`` are :class:`EvalOptions`' fields by name (``evaluate(run, data, rerank="none")``), applied
    over ``options``.
    """
    o = replace(options or EvalOptions(), **settings)
    dev = resolve_device(o.device)
    opened = open(run, dev)
    data, overlap, scored = _evaluated(opened, data, split, o)
    if as_submitted:
        predictions = _image_space(opened, data.captions, dev, "direction")
        reports = graded_reports(predictions, data.images, data.relevant, protocol, o.chunk, o.seed, dev)
    else:
        scorer = opened.scorer(o.rerank, o.rerank_params, o.bank, dev)
        q, g = scorer.embed_queries(data.captions), scorer.embed_gallery(data.images)
        reports = evaluate_embeddings(q, g, data.relevant, protocol, o.chunk, o.seed, dev, scorer)
    for report in reports:
        report.train_overlap = overlap
    return [SplitReport(**asdict(report), split=scored) for report in reports]


def scorings(
    run: RunLike,
    data: PairedEmbeddings,
    split: str | None = None,
    protocol: str = "full",
    own: DirectionReport | None = None,
    options: EvalOptions | None = None,
    **settings: Any,
) -> dict[str, DirectionReport]:
    """Text->image figures of one run under each scoring a user meets, by name: ``own`` (the run's scoring;
    pass it when already computed), ``cosine`` (plain cosine in the run's space, when the run rescores) and,
    for runs with image-space predictions, ``as submitted`` (what a grader gives its submission). Side by
    side they show what a submission keeps of the model. ``options``/``settings`` as :func:`evaluate` takes
    them (the run's own scoring; the cosine row sets ``rerank="none"``)."""
    o = replace(options or EvalOptions(), **settings)
    opened = open(run, resolve_device(o.device))
    out = {"own": own if own is not None else evaluate(opened, data, split, protocol, options=o)[0]}
    if out["own"].protocol.partition("+")[2]:
        out["cosine"] = evaluate(opened, data, split, protocol, options=replace(o, rerank="none"))[0]
    if opened.model.has_image_space:
        out[AS_SUBMITTED] = evaluate(opened, data, split, protocol, as_submitted=True, options=o)[0]
    return out


def _evaluated(opened: Run, data, split, options: EvalOptions):
    """The evaluated rows of ``data`` (its split, duplicates merged if asked), checked against the run, and
    how many of its captions are in the run's query bank (refused above 1% unless allowed)."""
    # sharded data: only the evaluated split is read into memory; train/dev of a run that drew its own
    # seeded split are those images again (config.json records it), on data without a split column too
    where = f"{opened.path / 'config.json'}" if opened.path is not None else "the in-memory run"
    data, scored = select_split(data, split, opened.info.meta.get(SEEDED_SPLIT), where)
    logger.info("evaluating %s", scored)
    if options.merge_duplicate_texts:
        data, merged = merge_duplicates(data)
        logger.info("merged duplicate texts: %s", merged.describe())
    _check_dims(opened, data.text_dim, data.image_dim)
    query_bank = options.bank if options.bank is not None else opened.bank
    overlap = _overlap(query_bank, data.captions)
    # a held-out set shares a few identical texts with training (Flickr8k dev: 17 of 5,000); more than 1%
    # means the evaluated data holds the run's training captions
    if overlap > 0.01 * data.n_captions and not options.allow_train_overlap:
        raise DataError(
            f"{overlap} of the {data.n_captions} evaluated captions are in the run's query bank (its training "
            "captions): evaluate a held-out split (e.g. --split dev) or pass --allow-train-overlap to score them "
            "knowingly"
        )
    return data, overlap, scored


def _overlap(bank: np.ndarray | None, captions: np.ndarray) -> int:
    """Evaluated caption rows that are also bank rows (exact float32 copies)."""
    if bank is None or len(captions) == 0:
        return 0
    return int(np.isin(row_hashes(captions), row_hashes(bank)).sum())


def predict(
    run: RunLike, queries: Queries | np.ndarray, device: str = "auto", target: str = "direction"
) -> np.ndarray:
    """One raw image-space vector per query row: by default the direction a grader ranks as the model does
    (what a submission should hold); ``target="point"`` gives the predicted image feature itself."""
    dev = resolve_device(device)
    opened = open(run, dev)
    rows = queries.embeddings if isinstance(queries, Queries) else Queries(np.asarray(queries)).embeddings
    _check_dims(opened, rows.shape[1])
    return _image_space(opened, rows, dev, target)


def _image_space(opened: Run, rows: np.ndarray, device, target: str) -> np.ndarray:
    return image_space_rows(opened.model, rows, device, target).cpu().numpy()


def write_submission(
    run: RunLike,
    queries_path: str | Path,
    out: str | Path,
    fmt: str | None = None,
    force: bool = False,
    target: str = "direction",
) -> Path:
    """Translate a queries file and write the submission in the competition's layout; ``target`` says what
    the vectors are (see :func:`predict`; a ``.pt`` file records it under ``prediction``)."""
    fmt = submission.format_for(out, fmt)
    check_target(target)
    submission.ensure_writable(out, force)  # fail before any work if the output exists
    queries = load_queries(queries_path)
    predictions = predict(run, queries, target=target)
    if fmt == "csv":
        return submission.write_csv(out, queries, predictions, force=force)
    return submission.write_pt(out, queries, predictions, force=force, prediction=target)


def gallery_index(
    run: RunLike,
    data: Pairs,
    split: str | None = None,
    kind: str = "exact",
    params: dict | None = None,
    options: IndexOptions | None = None,
    **settings: Any,
):
    """``(run, index, scorer)``: an index over the images of ``data`` (or its split) in the run's scoring
    space, with the run's scoring (or ``rerank``) fitted on that gallery.

    ``data`` in memory or on disk (a sharded folder, memory-mapped) takes the same path: the gallery is read,
    embedded and indexed ``chunk`` images at a time (see :mod:`stitch.retrieval.search`); ``seed`` picks the
    IVF training sample. Items are named by the data's image names, else by their row numbers in ``data``.
    ``settings`` are :class:`IndexOptions`' fields by name, applied over ``options``."""
    from stitch.retrieval.search import gallery_images, index_gallery

    o = replace(options or IndexOptions(), **settings)
    dev = resolve_device(o.device)
    opened = open(run, dev)
    _check_dims(opened, data.text_dim, data.image_dim)
    gallery = gallery_images(data, split or None)
    scorer = opened.scorer(o.rerank, o.rerank_params, None, dev)
    index = index_gallery(scorer, gallery, kind, params, seed=o.seed, chunk=o.chunk)
    return opened, index, scorer


def build_index(
    run: RunLike,
    data: Pairs,
    out: str | Path,
    split: str | None = None,
    kind: str = "exact",
    params: dict | None = None,
    options: IndexOptions | None = None,
    **settings: Any,
) -> Path:
    """Index the gallery images of ``data`` (or its split) in the run's scoring space, saved to ``out``
    with the id of the run it serves. ``data`` may be a sharded folder larger than RAM (see
    :func:`gallery_index`); ``settings`` are :class:`IndexOptions`' fields by name."""
    from stitch.retrieval.search import save_gallery_index

    o = replace(options or IndexOptions(), **settings)
    opened = open(run)
    if opened.path is not None and Path(out).resolve() == opened.path.resolve():
        raise UsageError(f"{out} is the run folder itself: give the index a folder of its own")
    opened, index, scorer = gallery_index(opened, data, split, kind, params, o)
    return save_gallery_index(out, index, scorer, opened.run_id, o.force)


def open_searcher(
    run: RunLike,
    data: PairedEmbeddings | None = None,
    split: str | None = None,
    index_dir: str | Path | None = None,
    candidates: int = 100,
):
    """A :class:`~stitch.retrieval.search.Searcher` over a saved index (built for this run), or an
    exact one built now over ``data``'s images."""
    from stitch.retrieval.search import Searcher

    opened = open(run, "cpu")
    if index_dir is not None:
        return Searcher.open(opened.model, index_dir, opened.run_id, candidates)
    if data is None:
        raise UsageError("give an index folder or the data whose images form the gallery")
    _, index, scorer = gallery_index(opened, data, split, device="cpu")
    return Searcher(scorer, index, candidates=len(index))


def search_rows(searcher, rows, k: int = 10) -> list[Answer]:
    """The top ``k`` of ``searcher`` for raw caption embedding ``rows`` (a list of vectors or an array)."""
    rows = np.asarray(rows, dtype=np.float32)
    return [Answer("embedding", hits) for hits in searcher.search(rows, k)]


def search_file(searcher, path: str | Path, rows: slice = slice(0, 5), k: int = 10) -> list[Answer]:
    """The top ``k`` of ``searcher`` for the queries ``rows`` of a query file, labelled by their texts (else
    their row ids); when the file is paired data naming its images, each answer knows its relevant images."""
    queries = load_queries(path)
    picked = np.arange(len(queries))[rows]
    if len(picked) == 0:
        raise UsageError(f"rows {rows.start}:{rows.stop} select none of the {len(queries)} queries in {path}")
    labels = [str(queries.texts[i]) if queries.texts is not None else str(queries.row_ids[i]) for i in picked]
    relevant = _relevant_names(path, picked)
    found = searcher.search(queries.embeddings[picked], k)
    marks = relevant or [None] * len(picked)
    return [Answer(label, hits, known) for label, hits, known in zip(labels, found, marks)]


def _relevant_names(path: str | Path, picked: np.ndarray) -> list[frozenset[str]] | None:
    """Names of the images relevant to each picked query when the query file is paired data that names its
    images; None for a query-only file."""
    try:
        data = load_pairs(path, allow_images_without_captions=True)
    except DataError:
        return None  # a query-only file: nothing says which images are relevant
    if data.image_names is None:
        return None
    return [frozenset(data.image_names[data.relevant.row(i)].tolist()) for i in picked]

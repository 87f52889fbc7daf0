"""Commands that use runs: evaluate, index build, search, predict, serve, report, export, encode.

Each is one call into :mod:`stitch.api` or an application, and prints what it returns.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from stitch import registries
from stitch.apps.cli.declare import Opt, command, option
from stitch.apps.cli.sources import DataSource
from stitch.apps.service.config import ServeConfig
from stitch.errors import UsageError
from stitch.options import EvalOptions, IndexOptions

RUN = Opt("run folder")


@command("evaluate")
def evaluate(
    run: Annotated[str, RUN],
    source: DataSource,
    split: Annotated[
        str | None, Opt("evaluate only on this split of the file (e.g. dev; a run's own seeded split)")
    ] = None,
    protocol: Annotated[str, Opt(choices=registries.PROTOCOLS.names)] = "full",
    as_submitted: Annotated[
        bool, Opt("score the run's predicted vectors against the raw images as a competition grader does")
    ] = False,
    options: EvalOptions | None = None,
    json: Annotated[bool, Opt("print one JSON object")] = False,  # noqa: A002 - the option's name
    update_card: Annotated[
        bool,
        Opt(
            "add the text->image figures to the run's model card (README.md), one row per data, split, protocol "
            "and scoring (the same again replaces its row)"
        ),
    ] = False,
) -> int:
    """retrieval metrics of a run on a data file"""
    from stitch import api
    from stitch.retrieval.evaluate import format_reports, format_scorings, summary_json

    o = options or EvalOptions()
    data = source.load()
    opened = api.open(run)  # once: the evaluation and the scorings table share it
    reports = api.evaluate(opened, data, split=split, protocol=protocol, as_submitted=as_submitted, options=o)
    if json:
        _print_json({**summary_json(reports), "split": reports[0].split})
    else:
        print(f"evaluating {run} on {source.name}: {reports[0].split}")
        if o.merge_duplicate_texts:
            print("identical caption texts merged: each is one query relevant to all of its images")
        print(format_reports(reports))
        if not as_submitted and not o.merge_duplicate_texts:  # own scoring, plain cosine and as graded, side by side
            print(format_scorings(api.scorings(opened, data, split, protocol, own=reports[0], options=o), opened.model))
        if reports[0].train_overlap:
            print(
                f"WARNING: {reports[0].train_overlap} evaluated captions equal captions in the run's query bank "
                "(training captions, or identical texts of other images): their scores are flattered"
            )
    if update_card:
        from stitch.training.card import add_scores

        card = add_scores(run, source.name, split, reports, o.merge_duplicate_texts)
        if not json:
            print(f"model card updated: {card}")
    return 0


def _print_json(body: dict) -> None:
    import json as json_module

    print(json_module.dumps(body, allow_nan=False))


@command("index build")
def index_build(
    run: Annotated[str, RUN],
    source: DataSource,
    out: Annotated[str, Opt("index folder")],
    split: Annotated[str | None, Opt("index only this split's images (e.g. dev)")] = None,
    kind: Annotated[str, Opt(choices=registries.INDEX_KINDS.names)] = "exact",
    param: Annotated[dict | None, Opt("index parameters, e.g. nlist=1024 nprobe=32")] = None,
    options: IndexOptions | None = None,
) -> int:
    """index the images of a data file (or one split) in the run's space"""
    from stitch import api

    folder = api.build_index(run, source.load(), out, split=split, kind=kind, params=param, options=options)
    print(f"wrote {kind} index to {folder}")
    return 0


@command("search")
def search(
    run: Annotated[str, RUN],
    index_dir: Annotated[str, Opt("index folder from `stitch index build` (required)", renamed_from=("--index",))],
    queries: Annotated[
        str | None, Opt("queries file (.npz/.pt/.npy with caption embeddings)", renamed_from=("--query-file",))
    ] = None,
    rows: Annotated[str, Opt("rows of the query file, as START:STOP or one row number")] = "0:5",
    embedding: Annotated[str | None, Opt("one raw caption embedding as a JSON list")] = None,
    k: Annotated[int, Opt("results per query")] = 10,
    candidates: Annotated[int, Opt("candidates rescored when the index has a rescorer")] = 100,
    json: Annotated[bool, Opt("one JSON line per query")] = False,  # noqa: A002 - the option's name
) -> int:
    """search an index with queries from a file or a raw embedding"""
    from stitch import api

    if embedding is None and queries is None:
        raise UsageError("give queries: --queries FILE (with --rows) or --embedding '[...]'")
    searcher = api.open_searcher(run, index_dir=index_dir, candidates=candidates)
    if embedding is not None:
        answers = api.search_rows(searcher, _parse_embedding(embedding), k)
    else:
        answers = api.search_file(searcher, queries, _slice(rows), k)
    for answer in answers:
        if json:
            _print_json(answer.to_json())
        else:
            print("\n".join(answer.lines()))
    return 0


def _parse_embedding(text: str) -> list[list[float]]:
    try:
        return [json.loads(text)]
    except json.JSONDecodeError as err:
        raise UsageError(f"--embedding is not a JSON list of numbers: {err}") from None


def _slice(text: str) -> slice:
    try:
        parts = [int(p) if p else None for p in text.split(":")]
    except ValueError:
        raise UsageError(f"--rows takes START:STOP or one row number, got {text!r}") from None
    return slice(*parts) if len(parts) > 1 else slice(parts[0], parts[0] + 1)


@command("predict")
def predict(
    run: Annotated[str, RUN],
    queries: Annotated[
        str, Opt("queries file (.npz with captions/embeddings, .pt, .npy; required)", renamed_from=("--data",))
    ],
    out: Annotated[str, Opt("the submission file (.csv or .pt)")],
    format: Annotated[str | None, Opt("default: from --out's suffix", choices=("csv", "pt"))] = None,  # noqa: A002
    target: Annotated[
        str,
        Opt(
            "direction (default): what a grader ranks as the model does; point: the predicted image feature",
            choices=registries.IMAGE_TARGETS,
        ),
    ] = "direction",
    force: Annotated[bool, Opt("overwrite --out if it exists")] = False,
) -> int:
    """translate a queries file into a submission"""
    from stitch import api

    opened = api.open(run)
    path = api.write_submission(opened, queries, out, fmt=format, force=force, target=target)
    exact = opened.model.exact_submission
    how = {
        "point": "predicted image features (regression points): a grader's cosine does not rank as the model does",
        "direction": "directions a grader's cosine with raw images ranks "
        + ("exactly as the model does" if exact else "as close as one vector can to the model's own ranking"),
    }[target]
    print(f"wrote {path}: {how}")
    return 0


@command("serve")
def serve(config: ServeConfig) -> int:
    """a search service and web page over a run's gallery"""
    from stitch.apps.service.threads import prefer_passive_waiting

    prefer_passive_waiting()  # before torch loads: OpenMP reads it once
    from stitch.apps.service.app import serve as run_service

    run_service(config)
    return 0


@command("report")
def report(
    run: Annotated[str, RUN],
    data: Annotated[str, Opt("data file scored (its split --split)")],
    split: Annotated[str, Opt("split to report on (default dev; 'none' for the whole file)")] = "dev",
    image_dir: Annotated[
        str | None,
        Opt("thumbnail folder: adds retrieval grids of the best and worst queries", renamed_from=("--images",)),
    ] = None,
    projection: Annotated[str, Opt(choices=registries.PROJECTIONS.names)] = "tsne",
    out: Annotated[str | None, Opt("the HTML file (default: RUN/report.html)")] = None,
    force: Annotated[bool, Opt("replace an earlier report at --out")] = False,
    quiet: bool = False,
) -> int:
    """a self-contained HTML report of what a run learned"""
    from stitch.apps.report import build_report

    scored = None if split == "none" else split
    page = out or Path(run) / "report.html"
    path = build_report(
        run, data, page, split=scored, images_dir=image_dir, projection=projection, force=force, progress=not quiet
    )
    print(f"wrote {path}")
    return 0


@command("export")
def export(
    run: Annotated[str, Opt("run or ensemble folder", positional=True)],
    out: Annotated[
        str, Opt("folder to write (refused if it exists, unless --force and it is an export)", positional=True)
    ],
    format: Annotated[str, Opt(choices=("sentence-transformers",))] = "sentence-transformers",  # noqa: A002
    text_model: Annotated[str | None, Opt("minilm | st:/path (default: the text encoder the run records)")] = None,
    force: Annotated[bool, Opt("replace an earlier export in OUT")] = False,
) -> int:
    """write a run as a model another toolkit loads (text model + translator)"""
    from stitch.apps.export import export_sentence_transformers

    path = export_sentence_transformers(run, out, text_model=text_model, force=force)
    print(f"wrote {path}; load it with stitch.apps.export.load_export({str(path)!r}), which checks modules.json")
    print("(SentenceTransformer(..., trust_remote_code=True) loads it too, but imports whatever modules.json names)")
    return 0


@dataclass(frozen=True)
class Encoders:
    """Which encoders embed raw captions and pictures, and on which device."""

    text_encoder: str = field(default="minilm", metadata=option(registries.TEXT_ENCODERS.help()))
    image_encoder: str | None = field(default=None, metadata=option(registries.IMAGE_ENCODERS.help()))
    device: str = field(default="cpu", metadata=option("device of the encoders (cpu, cuda, cuda:N)"))


@command("encode")
def encode(
    out: Annotated[str, Opt("output .npz (resumes from OUT.parts/ if interrupted)")],
    encoders: Encoders,
    captions: Annotated[str | None, Opt("Kaggle image,caption CSV, or a text file with one caption per line")] = None,
    image_dir: Annotated[str | None, Opt("folder of pictures", renamed_from=("--images",))] = None,
    from_data: Annotated[
        str | None, Opt("embed the caption texts of this npz again (same images, split and ids)")
    ] = None,
    chunk: Annotated[int, Opt("items per resumable chunk")] = 256,
    force: Annotated[bool, Opt("replace --out if it exists")] = False,
) -> int:
    """embed raw captions and/or an image folder into a stitch dataset"""
    from stitch.encoders.encode import encode_dataset, reencode_captions

    e = encoders
    if from_data is not None:
        path = reencode_captions(from_data, out, e.text_encoder, force=force, device=e.device)
    else:
        path = encode_dataset(
            out, captions=captions, images=image_dir, text_spec=e.text_encoder, image_spec=e.image_encoder,
            chunk=chunk, force=force, device=e.device,
        )  # fmt: skip
    print(f"wrote {path}")
    return 0


@command("distill-encoder")
def distill_encoder(
    out: Annotated[str, Opt("folder of the static encoder (use as static:OUT)")],
    teacher: Annotated[str, Opt("minilm | st:/path/to/sentence-transformer")] = "minilm",
    pca_dims: Annotated[int, Opt("dimension of the static embeddings")] = 256,
    force: Annotated[bool, Opt("replace an existing encoder folder in --out")] = False,
) -> int:
    """distil a fast static query encoder (model2vec) from a text model"""
    from stitch.encoders.static import distill_encoder as distill

    path = distill(teacher, out, pca_dims, force)
    print(f"wrote {path}; use it as --text-encoder static:{path}")
    return 0

"""The ``stitch`` command: a thin layer over :mod:`stitch.api`. Heavy imports happen inside handlers."""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
from pathlib import Path

from stitch import registries
from stitch.errors import UsageError


def _add_data_args(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument(
        "--data",
        help="paired data: .npz (Flickr8k or AML layout), .pt dict, a query/item folder, or a folder on disk "
        "(stitch sharded, clip-retrieval embeddings, Parquet/Arrow tables, Hugging Face datasets)",
    )
    parser.add_argument("--captions", help="captions .npy (with --images and --index instead of --data)")
    parser.add_argument("--images", help="images .npy")
    parser.add_argument("--index", help="caption->image index .npy (int)")


def _load_data(args):
    from stitch import api

    if args.data is None and args.captions is None:
        raise UsageError("give --data FILE, or --captions X.npy --images Y.npy --index Z.npy")
    keyed = {"image_key": args.image_key} if getattr(args, "image_key", None) else {}
    return api.load(args.data, captions=args.captions, images=args.images, index=args.index, **keyed)


IMAGE_KEY_HELP = "column whose equal values are one image (rows of clip-retrieval/tables/datasets)"


def cmd_train(args) -> int:
    if args.nproc:
        return _relaunch_under_torchrun(args.nproc)
    from stitch import api
    from stitch.packaged import resolve
    from stitch.recipes import recipe_overrides

    config = None if args.config is None else resolve(args.config, "config")
    pools = [f"semi.unpaired_{side}={path}" for side, path in _pool_args(args) if path]
    overrides = [*(recipe_overrides(args.recipe) if args.recipe else []), *pools, *args.overrides]
    if args.print_config:
        from stitch.training import load_config

        print(load_config(config, overrides).to_yaml(), end="")
        return 0
    data = _load_data(args)
    out = args.out or _default_run_dir()
    result = api.train(
        data,
        config,
        out=out,
        overrides=overrides,
        resume=args.resume,
        force=args.force,
        force_config=args.force_config,
        progress=not args.quiet,
        data_source=str(args.data or args.captions),
    )
    from stitch.retrieval.evaluate import format_reports

    if os.environ.get("RANK", "0") == "0":  # under torchrun, one rank reports
        print(f"run: {out}")
        if result.members:
            best = ", ".join(str(m.best_epoch) for m in result.members)
            print(f"split: {result.split}; {len(result.members)} members averaged (best epochs {best})")
        else:
            print(f"split: {result.split}; best epoch {result.best_epoch}")
        print(format_reports(result.dev_reports))
    return 0


def _relaunch_under_torchrun(nproc: int) -> int:
    """``stitch train --nproc N ...``: the same command under torchrun (PyTorch's launcher, which watches the
    workers and stops the job when one dies), N processes on this machine. Every rank needs the same
    run folder, so ``--out`` is required."""
    import subprocess

    argv = sys.argv[1:]
    if "--out" not in argv and not any(a.startswith("--out=") for a in argv):
        raise UsageError("--nproc needs --out: every process must write to (rank 0) and read the same run folder")
    kept = _without_option(argv, "--nproc")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    return subprocess.call([*command, "-m", "stitch", *kept])


def _without_option(argv: list[str], name: str) -> list[str]:
    """``argv`` without ``name VALUE`` / ``name=VALUE``."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == name:
            skip = True
        elif not arg.startswith(name + "="):
            kept.append(arg)
    return kept


def cmd_convert(args) -> int:
    from stitch import api

    out = api.convert(
        args.source,
        args.out,
        shard_rows=args.shard_rows,
        dtype=args.dtype,
        image_key=args.image_key,
        force=args.force,
    )
    opened = api.load(out)
    print(
        f"wrote {opened.n_captions} captions of {opened.n_images} images in {len(opened.shards)} shard(s) "
        f"({args.dtype}) to {out}"
    )
    return 0


def _default_run_dir() -> str:
    import time

    return str(Path("runs") / time.strftime("%Y%m%d-%H%M%S"))


def cmd_evaluate(args) -> int:
    from stitch import api
    from stitch.retrieval.evaluate import format_reports, summary_json

    data = _load_data(args)
    reports = api.evaluate(
        args.run,
        data,
        split=args.split,
        protocol=args.protocol,
        chunk=args.chunk,
        seed=args.seed,
        rerank=args.rerank,
        rerank_params=_params(args.rerank_param),
        allow_train_overlap=args.allow_train_overlap,
        merge_duplicate_texts=args.merge_duplicate_texts,
        as_submitted=args.as_submitted,
    )
    if args.json:
        print(json.dumps({**summary_json(reports), "split": reports[0].split}, allow_nan=False))
    else:
        print(f"evaluating {args.run} on {args.data or args.captions}: {reports[0].split}")
        if args.merge_duplicate_texts:
            print("identical caption texts merged: each is one query relevant to all of its images")
        print(format_reports(reports))
        if not args.as_submitted and not args.merge_duplicate_texts:
            _print_scorings(args, data, reports[0])
        if reports[0].train_overlap:
            print(
                f"WARNING: {reports[0].train_overlap} evaluated captions equal captions in the run's query bank "
                "(training captions, or identical texts of other images): their scores are flattered"
            )
    if args.update_card:
        from stitch.training.card import add_scores

        card = add_scores(args.run, args.data or args.captions, args.split, reports, args.merge_duplicate_texts)
        if not args.json:
            print(f"model card updated: {card}")
    return 0


def _print_scorings(args, data, own) -> None:
    """The run's text->image figures under its own scoring, plain cosine and as a grader scores its
    submission, side by side (a run without image-space predictions says it cannot be submitted)."""
    from stitch import api
    from stitch.retrieval.evaluate import format_scorings

    opened = api.open(args.run)
    table = api.scorings(
        opened, data, args.split, args.protocol, seed=args.seed, chunk=args.chunk,
        allow_train_overlap=args.allow_train_overlap, own=own,
    )  # fmt: skip
    print(format_scorings(table, opened.model))


def _params(pairs: list[str] | None) -> dict:
    """``["k=10", "beta=20"]`` -> ``{"k": 10, "beta": 20}``, read as config overrides are."""
    from stitch.training.config import parse_pairs

    out = parse_pairs(pairs or [], "parameter", "nprobe=32")
    return {key: _number_or_text(value) for key, value in out.items()}


def _number_or_text(value: object) -> object:
    """YAML 1.1 reads ``1e9`` as a string; numbers are what parameters take."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def cmd_index_build(args) -> int:
    from stitch import api

    data = _load_data(args)
    folder = api.build_index(
        args.run,
        data,
        args.out,
        split=args.split,
        kind=args.kind,
        params=_params(args.param),
        rerank=args.rerank,
        rerank_params=_params(args.rerank_param),
        force=args.force,
    )
    print(f"wrote {args.kind} index to {folder}")
    return 0


def cmd_search(args) -> int:
    import numpy as np

    from stitch import api
    from stitch.data import load_queries

    if args.embedding is None and args.queries is None:
        raise UsageError("give queries: --queries FILE (with --rows) or --embedding '[...]'")
    index_dir = _required(args, "index_dir", "--index-dir")
    searcher = api.open_searcher(args.run, index_dir=index_dir, candidates=args.candidates)
    relevant = None  # names of the images relevant to each query, when the query file says
    if args.embedding is not None:
        rows, labels = np.array([json.loads(args.embedding)], dtype=np.float32), ["embedding"]
    else:
        queries = load_queries(args.queries)
        picked = np.arange(len(queries))[_slice(args.rows)]
        if len(picked) == 0:
            raise UsageError(f"--rows {args.rows} selects none of the {len(queries)} queries in {args.queries}")
        rows = queries.embeddings[picked]
        labels = [str(queries.texts[i]) if queries.texts is not None else str(queries.row_ids[i]) for i in picked]
        relevant = _relevant_names(args.queries, picked)
    for i, (label, hits) in enumerate(zip(labels, searcher.search(rows, args.k))):
        known = None if relevant is None else relevant[i]
        if args.json:
            found = [{"name": h.name, "score": h.score} for h in hits]
            for hit in found if known is not None else []:
                hit["relevant"] = hit["name"] in known
            print(json.dumps({"query": label, "hits": found}))
        else:
            print(f"# {label}" + ("" if known is None else "  (* relevant, from the query file)"))
            for rank, hit in enumerate(hits, 1):
                mark = " *" if known is not None and hit.name in known else ""
                print(f"{rank:>4}  {hit.score:>9.4f}  {hit.name}{mark}")
    return 0


def _relevant_names(path: str, picked) -> list[set[str]] | None:
    """Names of the images relevant to each picked query when the query file is paired data that names its
    images (so hits can be flagged); None for a query-only file."""
    from stitch.data import DataError, load_pairs

    try:
        data = load_pairs(path, allow_images_without_captions=True)
    except DataError:
        return None  # a query-only file: nothing says which images are relevant
    if data.image_names is None:
        return None
    return [set(data.image_names[data.relevant.row(i)].tolist()) for i in picked]


def _slice(text: str) -> slice:
    parts = [int(p) if p else None for p in text.split(":")]
    return slice(*parts) if len(parts) > 1 else slice(parts[0], parts[0] + 1)


def cmd_predict(args) -> int:
    from stitch import api

    queries = _required(args, "queries", "--queries")
    opened = api.open(args.run)
    path = api.write_submission(opened, queries, args.out, fmt=args.format, force=args.force, target=args.target)
    exact = opened.model.exact_submission
    how = {
        "point": "predicted image features (regression points): a grader's cosine does not rank as the model does",
        "direction": "directions a grader's cosine with raw images ranks "
        + ("exactly as the model does" if exact else "as close as one vector can to the model's own ranking"),
    }[args.target]
    print(f"wrote {path}: {how}")
    return 0


def cmd_ensemble(args) -> int:
    from stitch.training.ensemble import write_ensemble

    weights = [float(w) for w in args.weights] if args.weights else None
    out = write_ensemble(args.out, args.runs, weights, args.force, args.combine)
    print(f"wrote ensemble of {len(args.runs)} runs ({args.combine}) to {out}")
    return 0


def cmd_bench(args) -> int:
    from stitch.apps.bench import run_bench

    data = _load_data(args)
    run_bench(
        data,
        args.out,
        methods=args.methods,
        extra_overrides=args.overrides,
        reuse=not args.retrain,
        progress=not args.quiet,
    )
    return 0


def cmd_curve(args) -> int:
    from stitch.apps.curve import DEFAULT_SIZES, CurveSettings, learning_curve

    data = _load_data(args).select(None)
    sizes = tuple(args.sizes or DEFAULT_SIZES)
    settings = CurveSettings(sizes, args.seed, tuple(args.overrides), args.unpaired)
    learning_curve(data, args.methods, args.out, settings, not args.quiet, args.force)
    print(f"wrote {Path(args.out) / 'curve.csv'} and {Path(args.out) / 'curve.png'}")
    return 0


def cmd_metric(args) -> int:
    from stitch.apps.metric_learning.run import run_metric_learning
    from stitch.apps.metric_learning.train import EmbeddingConfig

    config = EmbeddingConfig(loss=args.loss, miner=args.miner, margin=args.margin, epochs=args.epochs, seed=args.seed)
    run_metric_learning(
        args.data,
        config,
        out=args.out,
        k=args.k,
        test_fraction=args.test_fraction,
        projection=args.projection,
        force=args.force,
    )
    return 0


def cmd_encode(args) -> int:
    from stitch.encoders.encode import encode_dataset, reencode_captions

    if args.from_data is not None:
        path = reencode_captions(args.from_data, args.out, args.text_encoder, force=args.force, device=args.device)
        print(f"wrote {path}")
        return 0
    path = encode_dataset(
        args.out,
        captions=args.captions,
        images=args.image_dir,
        text_spec=args.text_encoder,
        image_spec=args.image_encoder,
        chunk=args.chunk,
        force=args.force,
        device=args.device,
    )
    print(f"wrote {path}")
    return 0


def cmd_serve(args) -> int:
    from stitch.apps.service.threads import prefer_passive_waiting

    prefer_passive_waiting()  # before torch loads: OpenMP reads it once
    from stitch.apps.service.app import serve
    from stitch.apps.service.config import Limits, ServeConfig

    def given(**options) -> dict:  # the options given; the config keeps its own defaults for the others
        return {name: value for name, value in options.items() if value is not None}

    limits = Limits(
        **given(
            max_body_bytes=args.max_body_bytes,
            body_timeout_s=args.body_timeout,
            header_timeout_s=args.header_timeout,
            keep_alive_s=args.keep_alive,
        )
    )
    config = ServeConfig(
        args.run,
        args.data,
        _required(args, "image_dir", "--image-dir"),
        limits=limits,
        **given(
            split=args.split,
            index=args.index_dir,
            text_encoder=args.text_encoder,
            text_precision=args.text_precision,
            host=args.host,
            port=args.port,
            cors_origins=args.cors_origin,
            regather_ms=args.regather_ms,
        ),
    )  # every setting checked here, once, before anything loads
    serve(config)
    return 0


def cmd_tune(args) -> int:
    from stitch.apps.tuning import confirm, load_space, tune
    from stitch.packaged import resolve

    space = load_space(resolve(args.space, "space"))
    if args.print_space:
        import dataclasses

        import yaml

        print(yaml.safe_dump(dataclasses.asdict(space), sort_keys=False), end="")
        return 0
    data = _load_data(args)
    study = tune(
        data,
        space,
        args.out,
        storage=args.storage,
        study_name=args.study,
        trials=args.trials,
        timeout=args.timeout,
        n_jobs=args.n_jobs,
        seed=args.seed,
        keep_runs=args.keep_runs,
    )
    states = [t.state.name for t in study.trials]
    print(
        f"study {args.study}: {states.count('COMPLETE')} complete, {states.count('PRUNED')} pruned, "
        f"{states.count('FAIL')} failed"
    )
    if states.count("COMPLETE"):
        print(f"best dev value {study.best_value:.4f}: {study.best_params}")
        print(f"train-ready config: {Path(args.out) / 'best.yaml'}; trial table: {Path(args.out) / 'trials.csv'}")
        if args.confirm_seeds:
            print(f"retraining the default and the best trial with {args.confirm_seeds} new seeds each ...")
            result = confirm(data, space, study, args.out, args.confirm_seeds)
            for name, values in result.scores.items():
                print(f"  {name:<12} dev {space.objective} " + " ".join(f"{v:.4f}" for v in values))
            verdict = "beats the default on every seed" if result.beats_default else "does not clearly beat the default"
            print(f"  {result.winner} {verdict} (mean Δ {result.gap:+.4f}); {Path(args.out) / 'confirm.csv'}")
    return 0


def cmd_report(args) -> int:
    from stitch.apps.report import build_report

    split = None if args.split == "none" else args.split
    path = build_report(
        args.run,
        args.data,
        args.out or Path(args.run) / "report.html",
        split=split,
        images_dir=args.image_dir,
        projection=args.projection,
        force=args.force,
    )
    print(f"wrote {path}")
    return 0


def cmd_recipes(args) -> int:
    from stitch.packaged import packaged_names
    from stitch.recipes import RECIPES

    print("recipes (stitch train --recipe NAME, stitch bench --methods NAME ...):")
    for recipe in RECIPES.values():
        first = f"  {recipe.name:<14} "
        print("\n".join(textwrap.wrap(recipe.notes, width=100, initial_indent=first, subsequent_indent=" " * 17)))
    print(f"shipped configs (--config NAME): {', '.join(packaged_names('config'))}")
    print(f"tuning spaces (stitch tune --space NAME): {', '.join(packaged_names('space'))}")
    return 0


def cmd_completion(args) -> int:
    """A bash completion script from the parser itself: ``eval "$(stitch completion)"``."""
    commands = _subcommands(build_parser())
    cases = "".join(f'    {name}) opts="{" ".join(options)}";;\n' for name, options in commands.items())
    print(
        "_stitch() {\n"
        "  local cur=${COMP_WORDS[COMP_CWORD]} opts\n"
        '  if [ "$COMP_CWORD" -eq 1 ]; then opts="' + " ".join(commands) + '"; else\n'
        '  case "${COMP_WORDS[1]}" in\n' + cases + "  esac; fi\n"
        '  COMPREPLY=( $(compgen -W "$opts" -- "$cur") )\n'
        "}\n"
        "complete -o default -F _stitch stitch"
    )
    return 0


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, list[str]]:
    """Each subcommand's visible options (``index build`` as ``index``: its own subcommands and options)."""
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    out = {}
    for name, sub in action.choices.items():
        options = [o for a in sub._actions if a.help != argparse.SUPPRESS for o in a.option_strings]
        nested = [a for a in sub._actions if isinstance(a, argparse._SubParsersAction)]
        out[name] = [*(list(nested[0].choices) if nested else []), *options]
    return out


def cmd_distill_encoder(args) -> int:
    from stitch.encoders.static import distill_encoder

    path = distill_encoder(args.teacher, args.out, args.pca_dims, args.force)
    print(f"wrote {path}; use it as --text-encoder static:{path}")
    return 0


def cmd_export(args) -> int:
    from stitch.apps.export import export_sentence_transformers

    path = export_sentence_transformers(args.run, args.out, text_model=args.text_model, force=args.force)
    print(f"wrote {path}; load it with stitch.apps.export.load_export({str(path)!r}), which checks modules.json")
    print("(SentenceTransformer(..., trust_remote_code=True) loads it too, but imports whatever modules.json names)")
    return 0


def cmd_demo(args) -> int:
    from stitch.apps.demo import run_demo

    run_demo(out=args.out, quick=args.quick)
    return 0


def _add_rerank_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--rerank",
        choices=registries.RESCORERS.names(),
        help="hubness-aware scoring, with the file's train captions as query bank",
    )
    parser.add_argument("--rerank-param", nargs="*", metavar="NAME=VALUE", help="e.g. beta=20 or k=10")


def _pool_args(args) -> list[tuple[str, str | None]]:
    """The unpaired pools named on the command line, as ``semi.unpaired_*`` settings take them."""
    return [("captions", args.unpaired_captions), ("images", args.unpaired_images)]


def _parser_train(sub) -> None:
    p = sub.add_parser("train", help="train a translator (default recipe unless --config)")
    _add_data_args(p)
    p.add_argument("--image-key", help=IMAGE_KEY_HELP)
    p.add_argument("--config", help="YAML config: a path, or a shipped config's name (stitch recipes lists them)")
    p.add_argument("--recipe", help="a named recipe (stitch recipes lists them); overrides come after it")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    p.add_argument(
        "--unpaired-captions",
        help="caption embeddings with no image (.npy, a query file or a paired file's captions) for the recipes "
        "that use unpaired pools (self-learning, zero-pair); a row equal to a dev row is refused",
    )
    p.add_argument("--unpaired-images", help="image embeddings with no caption (.npy or a paired file's images)")
    p.add_argument("--out", help="run folder (default runs/<time>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last epoch")
    p.add_argument("--force", action="store_true", help="replace an existing run in --out")
    p.add_argument(
        "--force-config", action="store_true", help="with --resume: continue with a config that differs from the run's"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--nproc",
        type=int,
        default=0,
        help="data-parallel processes on this machine: relaunches this command under torchrun (needs --out)",
    )
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. optim.lr=1e-3 model.name=mlp")
    p.set_defaults(func=cmd_train)


def _parser_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="retrieval metrics of a run on a data file")
    p.add_argument("--run", required=True, help="run folder")
    _add_data_args(p)
    p.add_argument("--image-key", help=IMAGE_KEY_HELP)
    p.add_argument("--split", help="evaluate only on this split of the file (e.g. dev; a run's own seeded split)")
    p.add_argument("--protocol", choices=registries.PROTOCOLS.names(), default="full")
    p.add_argument("--chunk", type=int, default=1024, help="queries scored at once (memory ~ chunk x gallery)")
    p.add_argument("--seed", type=int, default=0, help="seed of the kaggle100 candidates")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--as-submitted",
        action="store_true",
        help="score the run's predicted vectors against the raw images as a competition grader does",
    )
    p.add_argument(
        "--allow-train-overlap",
        action="store_true",
        help="score captions that are in the run's query bank (training captions) instead of refusing",
    )
    p.add_argument(
        "--merge-duplicate-texts",
        action="store_true",
        help="score identical caption texts as one query relevant to all their images (needs caption texts)",
    )
    p.add_argument(
        "--update-card",
        action="store_true",
        help="add the text->image figures to the run's model card (README.md), one row per data, split, protocol "
        "and scoring (the same again replaces its row)",
    )
    _add_rerank_args(p)
    p.set_defaults(func=cmd_evaluate)


def _parser_index(sub) -> None:
    p = sub.add_parser("index", help="build a nearest-neighbour index over a run's gallery")
    isub = p.add_subparsers(dest="index_command", required=True)
    b = isub.add_parser("build", help="index the images of a data file (or one split) in the run's space")
    b.add_argument("--run", required=True)
    _add_data_args(b)
    b.add_argument("--split", help="index only this split's images (e.g. dev)")
    b.add_argument("--kind", choices=registries.INDEX_KINDS.names(), default="exact")
    b.add_argument("--param", nargs="*", metavar="NAME=VALUE", help="index parameters, e.g. nlist=1024 nprobe=32")
    b.add_argument("--out", required=True, help="index folder")
    b.add_argument("--force", action="store_true")
    _add_rerank_args(b)
    b.set_defaults(func=cmd_index_build)


def _parser_search(sub) -> None:
    p = sub.add_parser("search", help="search an index with queries from a file or a raw embedding")
    p.add_argument("--run", required=True)
    p.add_argument("--index-dir", help="index folder from `stitch index build` (required)")
    p.add_argument("--queries", help="queries file (.npz/.pt/.npy with caption embeddings)")
    _renamed(p, "--index", "--index-dir", "index_dir")
    _renamed(p, "--query-file", "--queries", "queries")
    p.add_argument("--rows", default="0:5", help="rows of the query file, as START:STOP or one row number")
    p.add_argument("--embedding", help="one raw caption embedding as a JSON list")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--candidates", type=int, default=100, help="candidates rescored when the index has a rescorer")
    p.add_argument("--json", action="store_true", help="one JSON line per query")
    p.set_defaults(func=cmd_search)


def _parser_predict(sub) -> None:
    p = sub.add_parser("predict", help="translate a queries file into a submission")
    p.add_argument("--run", required=True)
    p.add_argument("--queries", help="queries file (.npz with captions/embeddings, .pt, .npy; required)")
    _renamed(p, "--data", "--queries", "queries")
    p.add_argument("--out", required=True)
    p.add_argument("--format", choices=("csv", "pt"), help="default: from --out's suffix")
    p.add_argument(
        "--target",
        choices=registries.IMAGE_TARGETS,
        default="direction",
        help="direction (default): what a grader ranks as the model does; point: the predicted image feature",
    )
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.set_defaults(func=cmd_predict)


def _parser_ensemble(sub) -> None:
    p = sub.add_parser("ensemble", help="combine several runs (seeds, folds or recipes) into one predictor folder")
    p.add_argument("runs", nargs="+", help="run folders (average: scoring in one space, e.g. the same data split)")
    p.add_argument("--out", required=True, help="ensemble folder (usable as --run anywhere)")
    p.add_argument("--weights", nargs="*", help="one weight per run (default equal)")
    p.add_argument(
        "--combine",
        choices=["average", "score"],
        default="average",
        help="average: mean unit translation (one space; submittable); score: weighted mean of the runs' cosine "
        "scores (any recipes or spaces, e.g. dual heads with a translator; search and evaluate only)",
    )
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_ensemble)


def _parser_bench(sub) -> None:
    p = sub.add_parser("bench", help="train named recipes on one split and write a leaderboard")
    _add_data_args(p)
    p.add_argument("--methods", nargs="*", help="recipe names (default: all; see stitch.recipes)")
    p.add_argument("--out", default="bench", help="folder for runs/, leaderboard.md/.csv/.png")
    p.add_argument("--retrain", action="store_true", help="retrain methods that already have a finished run")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("overrides", nargs="*", help="overrides applied to every method (e.g. optim.epochs=2)")
    p.set_defaults(func=cmd_bench)


def _parser_curve(sub) -> None:
    p = sub.add_parser("curve", help="quality against the number of training pairs, one line per recipe")
    _add_data_args(p)
    p.add_argument("--methods", nargs="+", required=True, help="recipe names (stitch recipes lists them)")
    p.add_argument(
        "--sizes",
        nargs="+",
        type=int,
        help="training captions per point (whole images); 0 = all (default: 250 1000 4000 16000 0)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the nested image subsets")
    p.add_argument(
        "--unpaired",
        nargs="?",
        const="same",
        default="same",
        metavar="same|disjoint",
        help="pools for the methods that use them (self-learning, zero-pair): the rest of the training images, "
        "captions and images of the same pictures (same) or captions and images of different halves (disjoint)",
    )
    p.add_argument("--out", required=True, help="folder for curve.csv and curve.png")
    p.add_argument("--force", action="store_true", help="replace an existing curve in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("overrides", nargs="*", help="config overrides applied to every method")
    p.set_defaults(func=cmd_curve)


def _parser_metric(sub) -> None:
    p = sub.add_parser("metric", help="classic metric learning on labelled vectors (siamese / triplet)")
    p.add_argument("--data", default="digits", help="'digits' (scikit-learn's bundled set) or an npz with x, labels")
    p.add_argument("--loss", choices=("triplet", "contrastive"), default="triplet")
    p.add_argument("--miner", choices=registries.MINERS.names(), default="semihard")
    p.add_argument("--margin", type=float, default=0.2)
    p.add_argument("--epochs", type=int, default=150)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--k", type=int, default=5, help="neighbours for kNN classification / regression")
    p.add_argument("--test-fraction", type=float, default=0.5)
    p.add_argument("--projection", choices=(*registries.PROJECTIONS.names(), "none"), default="tsne")
    p.add_argument("--out", help="folder for the weights, metrics.json and the t-SNE plot")
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_metric)


def _parser_encode(sub) -> None:
    p = sub.add_parser("encode", help="embed raw captions and/or an image folder into a stitch dataset")
    p.add_argument("--captions", help="Kaggle image,caption CSV, or a text file with one caption per line")
    p.add_argument("--image-dir", help="folder of pictures")
    _renamed(p, "--images", "--image-dir", "image_dir")
    p.add_argument(
        "--text-encoder",
        default="minilm",
        help="minilm | st:/path | onnx:minilm | static:/path (stitch distill-encoder)",
    )
    p.add_argument("--from-data", help="embed the caption texts of this npz again (same images, split and ids)")
    p.add_argument("--image-encoder", help="tflite:/path/model.tflite | hf:/path/to/model[#cls|#mean]")
    p.add_argument("--out", required=True, help="output .npz (resumes from OUT.parts/ if interrupted)")
    p.add_argument("--chunk", type=int, default=256, help="items per resumable chunk")
    p.add_argument("--device", default="cpu")
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_encode)


def _parser_serve(sub) -> None:
    p = sub.add_parser("serve", help="a search service and web page over a run's gallery")
    p.add_argument("--run", required=True)
    p.add_argument("--data", required=True, help="data file whose images form the gallery")
    p.add_argument("--image-dir", help="folder of the gallery's pictures (served read-only; required)")
    _renamed(p, "--images", "--image-dir", "image_dir")
    p.add_argument("--split", help="serve only this split's images (e.g. dev)")
    p.add_argument("--index-dir", help="a prebuilt index folder (stitch index build); default: exact, built at start")
    _renamed(p, "--index", "--index-dir", "index_dir")
    p.add_argument("--text-encoder", help="override the text encoder the data records (e.g. minilm)")
    p.add_argument(
        "--text-precision",
        choices=("fp32", "bf16"),
        help="query encoding precision on CPU: fp32 reproduces the data's embeddings; bf16 is ~1.3x faster, not exact",
    )
    # no defaults here: an option not given keeps ServeConfig's (stitch.apps.service.config)
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument(
        "--max-body-bytes", type=int, help="413 above this request size (default 64 KiB, more for wide embeddings)"
    )
    p.add_argument("--body-timeout", type=float, help="seconds a request body may take (408 after)")
    p.add_argument("--header-timeout", type=float, help="seconds a request head may take (closed after)")
    p.add_argument("--keep-alive", type=float, help="seconds an idle kept-alive connection stays open")
    p.add_argument(
        "--regather-ms",
        type=float,
        help="under steady load, how long a batch may wait for the callers just answered to send again, so they "
        "share one batch (0: never wait; a lone caller never waits)",
    )
    p.add_argument(
        "--cors-origin",
        action="append",
        metavar="ORIGIN",
        help="let pages from ORIGIN (scheme://host[:port], '*' for any) call the service; repeatable; default none",
    )
    p.set_defaults(func=cmd_serve)


def _parser_tune(sub) -> None:
    p = sub.add_parser("tune", help="Optuna search over a recipe space on the dev split")
    _add_data_args(p)
    p.add_argument("--space", required=True, help="search space: a shipped name (default, heads) or a YAML path")
    p.add_argument("--print-space", action="store_true", help="print the resolved search space and exit")
    p.add_argument("--out", default="tune", help="folder for best.yaml, trials.csv and the default SQLite study")
    p.add_argument("--storage", help="SQLAlchemy URL of the study (default sqlite:///OUT/study.db)")
    p.add_argument("--study", default="stitch", help="study name (resume by running the same command again)")
    p.add_argument("--trials", type=int, default=20, help="finished + pruned trials wanted in all")
    p.add_argument("--timeout", type=float, help="stop starting new trials after this many seconds")
    p.add_argument("--n-jobs", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keep-runs", action="store_true", help="keep every trial's run folder under OUT/runs")
    p.add_argument(
        "--confirm-seeds",
        type=int,
        default=0,
        metavar="N",
        help="after the study, retrain the default and the best trial with N new seeds each (confirm.csv)",
    )
    p.set_defaults(func=cmd_tune)


def _parser_report(sub) -> None:
    p = sub.add_parser("report", help="a self-contained HTML report of what a run learned")
    p.add_argument("--run", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="dev", help="split to report on (default dev; 'none' for the whole file)")
    p.add_argument("--image-dir", help="thumbnail folder: adds retrieval grids of the best and worst queries")
    _renamed(p, "--images", "--image-dir", "image_dir")
    p.add_argument("--projection", choices=registries.PROJECTIONS.names(), default="tsne")
    p.add_argument("--out", help="the HTML file (default: RUN/report.html)")
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_report)


def _parser_completion(sub) -> None:
    p = sub.add_parser("completion", help='print a bash completion script: eval "$(stitch completion)"')
    p.set_defaults(func=cmd_completion)


def _parser_distill_encoder(sub) -> None:
    p = sub.add_parser("distill-encoder", help="distil a fast static query encoder (model2vec) from a text model")
    p.add_argument("--teacher", default="minilm", help="minilm | st:/path/to/sentence-transformer")
    p.add_argument("--out", required=True, help="folder of the static encoder (use as static:OUT)")
    p.add_argument("--pca-dims", type=int, default=256, help="dimension of the static embeddings")
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_distill_encoder)


def _parser_export(sub) -> None:
    p = sub.add_parser("export", help="write a run as a model another toolkit loads (text model + translator)")
    p.add_argument("--format", choices=["sentence-transformers"], default="sentence-transformers")
    p.add_argument("run", help="run or ensemble folder")
    p.add_argument("out", help="folder to write (refused if it exists, unless --force and it is an export)")
    p.add_argument("--text-model", help="minilm | st:/path (default: the text encoder the run records)")
    p.add_argument("--force", action="store_true", help="replace an earlier export in OUT")
    p.set_defaults(func=cmd_export)


def _parser_recipes(sub) -> None:
    p = sub.add_parser("recipes", help="list the named recipes, shipped configs and tuning spaces")
    p.set_defaults(func=cmd_recipes)


def _parser_convert(sub) -> None:
    p = sub.add_parser(
        "convert",
        help="write any supported data layout as stitch's sharded layout (memory-mapped, read on demand)",
    )
    p.add_argument("source", help="a paired file or folder (npz, .pt, clip-retrieval, Parquet/Arrow, HF datasets)")
    p.add_argument("out", help="output folder (refused if it exists, unless --force)")
    p.add_argument("--shard-rows", type=int, default=262_144, help="captions per shard, at most (whole images)")
    p.add_argument("--dtype", choices=["float16", "float32"], default="float16", help="embedding precision on disk")
    p.add_argument("--image-key", help=IMAGE_KEY_HELP)
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    p.set_defaults(func=cmd_convert)


def _parser_demo(sub) -> None:
    p = sub.add_parser("demo", help="train and evaluate the default recipe on built-in synthetic data")
    p.add_argument("--out", help="keep the demo run in this folder (default: runs/demo)")
    p.add_argument("--quick", action="store_true", help="a smaller dataset, seconds instead of minutes")
    p.set_defaults(func=cmd_demo)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="stitch", description="Learn translators between embedding spaces and search across them.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log lines (debug)")
    parser.add_argument("-q", "--silent", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command")
    for add in (
        _parser_train,
        _parser_convert,
        _parser_evaluate,
        _parser_index,
        _parser_search,
        _parser_predict,
        _parser_ensemble,
        _parser_bench,
        _parser_curve,
        _parser_metric,
        _parser_encode,
        _parser_serve,
        _parser_tune,
        _parser_report,
        _parser_distill_encoder,
        _parser_export,
        _parser_recipes,
        _parser_completion,
        _parser_demo,
    ):
        add(sub)
    for command in sub.choices.values():
        _quiet_everywhere(command)
    return parser


def _quiet_everywhere(command: argparse.ArgumentParser) -> None:
    """``-q`` after a subcommand means what it means before one (warnings and errors only, no progress bars),
    so ``stitch train -q`` and ``stitch -q train`` are the same; ``--quiet`` is its long form."""
    nested = [a for a in command._actions if isinstance(a, argparse._SubParsersAction)]
    if nested:
        for inner in nested[0].choices.values():
            _quiet_everywhere(inner)
        return
    for action in command._actions:
        if "--quiet" in action.option_strings:
            if "-q" not in action.option_strings:
                action.option_strings.insert(0, "-q")
                command._option_string_actions["-q"] = action
            action.help = "warnings and errors only, no progress bars"
            return
    command.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only, no progress bars")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from stitch import __version__

        print(__version__)
        return 0
    if args.command is None:
        parser.print_help()
        return 2
    args.quiet = getattr(args, "quiet", False) or args.silent
    _configure_logging(args.verbose, args.quiet)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - the boundary: anticipated errors become one line
        from stitch.apps.boundary import one_line

        message = one_line(err)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2


QUIET_LOGGERS = ("faiss", "faiss.loader", "transformers", "sentence_transformers", "httpx", "datasets")


def _configure_logging(verbose: int, silent: bool) -> None:
    import logging

    level = logging.WARNING if silent else logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr)
    if not verbose:  # third-party loaders' chatter (FAISS's CPU-feature probing, model load reports)
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)


class _Parser(argparse.ArgumentParser):
    """Argument errors in one line (with where to look), exit code 2."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


class _Deprecated(argparse.Action):
    """An old spelling of an option: still works for one release, with a warning naming the new one."""

    def __init__(self, option_strings, dest, new: str = "", **kwargs) -> None:
        super().__init__(option_strings, dest, **kwargs)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(f"warning: {option_string} is deprecated in {parser.prog}; use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def _renamed(parser: argparse.ArgumentParser, old: str, new: str, dest: str) -> None:
    parser.add_argument(old, dest=dest, action=_Deprecated, new=new, help=argparse.SUPPRESS)


def _required(args, dest: str, flag: str) -> object:
    value = getattr(args, dest)
    if value is None:
        raise UsageError(f"{flag} is required")
    return value


if __name__ == "__main__":
    sys.exit(main())
